package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/internal/demo"
)

// serveCmd runs the server until ctx ends (SIGINT, SIGTERM) or a listener
// fails: it opens the core, then the doors (HTTP, SSH), and on the way out
// closes them before the core. Instances keep running.
func serveCmd(ctx context.Context, configPath string, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	makeDemo := fs.Bool("demo", false, "create a small demo image (pgbench) if there are no images yet")
	readyFile := fs.String("ready-file", "", "create this file once every door listens (for scripts that wait for the server, e.g. make run)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	log, m, flush, err := newOps(cfg, stderr)
	if err != nil {
		return err
	}
	defer flush()
	defer func() {
		if err != nil { // start-up failures reach Sentry too
			log.Error("draupnir serve failed", "err", err)
		}
	}()
	if cfg.Environment == "test" {
		log.Warn("environment is test: the integration-test token is accepted")
	}
	c, err := openCore(ctx, cfg, log, true, m.ObserveRuleDestroy, m.ObserveRefresh)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	c.db.Watch(ctx)

	people, login, err := openPeople(ctx, cfg, c, log)
	if err != nil {
		return err
	}
	c.doorImages, c.doorInstances = c.observed(m)
	if err := m.CollectState(cascadingImages{c.images, c.instances}, ownInstances{c.instances, cfg.Node.Name}, log.With("component", "metrics")); err != nil {
		return err
	}
	handler := httpapi.New(httpapi.Options{
		Images:       c.doorImages,
		Instances:    c.doorInstances,
		Sources:      c.sources,
		Metrics:      m.Handler(),
		Requests:     m,
		Auth:         people,
		Login:        login,
		People:       people,
		Nodes:        c.doorNodes(),
		Forwards:     c.forwards(),
		Health:       c,
		Log:          log.With("component", "http"),
		MaxBodyBytes: cfg.HTTP.MaxBodyBytes,
	})
	var servers []*http.Server
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	listen := func(port int, useTLS bool) error {
		addr := net.JoinHostPort(cfg.HTTP.Address, strconv.Itoa(port))
		srv := &http.Server{
			Addr:              addr,
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       cfg.HTTP.ReadTimeout.Duration,
			WriteTimeout:      cfg.HTTP.WriteTimeout.Duration,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("http: %w", err)
		}
		if useTLS {
			cert, err := tls.LoadX509KeyPair(cfg.HTTP.TLSCertificate, cfg.HTTP.TLSPrivateKey)
			if err != nil {
				l.Close()
				return fmt.Errorf("http.tls_certificate/http.tls_private_key: %w", err)
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			l = tls.NewListener(l, srv.TLSConfig)
		}
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
		log.Info("http listening", "addr", l.Addr().String(), "tls", useTLS)
		return nil
	}
	if cfg.HTTP.InsecurePort != 0 {
		if err := listen(cfg.HTTP.InsecurePort, false); err != nil {
			return err
		}
	}
	if cfg.HTTP.Port != 0 && cfg.HTTP.TLSCertificate != "" {
		if err := listen(cfg.HTTP.Port, true); err != nil {
			return err
		}
	}
	stopSSH, err := startSSH(ctx, cfg, c, people, log)
	if err != nil {
		return err
	}
	if c.registry != nil {
		// Last: other nodes place instances here once it beats, and the
		// SSH door has made its host key by now.
		if err := c.registry.Register(ctx); err != nil {
			stopSSH(context.WithoutCancel(ctx))
			return err
		}
		c.registry.Start()
	}
	// Once registered: the other nodes list this one as a source.
	stopShipping := c.startShipping(ctx)
	defer stopShipping()
	if *makeDemo {
		go func() {
			err := demo.Make(ctx, demo.Options{
				Images:     c.images,
				Supervisor: c.sup,
				Dir:        c.paths.Data,
				RunDir:     c.paths.Run,
				Log:        log,
			})
			if err != nil {
				log.Error("could not make the demo image", "err", err)
			}
		}()
	}
	log.Info("draupnir serving", "version", draupnir.Version, "data_path", cfg.DataPath)
	if *readyFile != "" {
		// The waiter removes it before it starts the server.
		if err := os.WriteFile(*readyFile, nil, 0o644); err != nil {
			log.Error("could not create the ready file", "err", err)
		}
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down; instances keep running")
	case err = <-errc:
		log.Error("a listener failed; shutting down", "err", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(shutdownCtx)
	}
	stopSSH(shutdownCtx)
	wg.Wait()
	return err
}
