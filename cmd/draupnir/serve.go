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
	"syscall"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/datapath"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/images"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/internal/demo"
	"github.com/draupnir-db/draupnir/internal/logging"
	"github.com/draupnir-db/draupnir/statedb"
	"github.com/draupnir-db/draupnir/supervisor"
)

// core is the part of the server every door shares.
type core struct {
	cfg       *config.Config
	paths     datapath.Layout
	log       *slog.Logger
	sup       *supervisor.Supervisor
	db        *statedb.DB
	images    *images.Service
	instances *instances.Service
	lock      *datapath.Lock // the data path and run path, held while the server runs
	// doorImages and doorInstances are the services as the doors see
	// them: measured.
	doorImages    imageService
	doorInstances instanceService
}

// openCore takes the data path, brings up the state database and migrates
// it. With services false it stops there (draupnir migrate).
func openCore(ctx context.Context, cfg *config.Config, log *slog.Logger, services bool) (*core, error) {
	// Modes below are meant as written, whatever umask the server got.
	syscall.Umask(0o022)
	paths := datapath.Layout{Data: cfg.DataPath, Run: cfg.RunPath}
	lock, err := datapath.Acquire(paths)
	if err != nil {
		return nil, err
	}
	sup, err := supervisor.New(cfg.Instances.PostgresUser, cfg.Postgres.BinDirs, log)
	if err != nil {
		lock.Release()
		return nil, err
	}
	c := &core{cfg: cfg, paths: paths, log: log, sup: sup, lock: lock}
	c.db, err = statedb.Open(ctx, statedb.Options{
		URL:        cfg.DatabaseURL,
		Supervisor: sup,
		DataDir:    paths.State(),
		SocketDir:  paths.StateSockets(),
		Log:        log,
	})
	if err != nil {
		c.Close(ctx)
		return nil, err
	}
	if !services {
		return c, nil
	}
	c.images = images.New(images.Options{
		Pool:              c.db.Pool(),
		Supervisor:        sup,
		UploadsDir:        paths.Uploads(),
		SnapshotsDir:      paths.Snapshots(),
		RunDir:            paths.Run,
		SuperuserAccess:   cfg.Instances.SuperuserAccess,
		ScriptAsSuperuser: cfg.Images.ScriptAsSuperuser,
		KeepUploads:       cfg.Images.KeepUploads,
		Log:               log,
	})
	if major, err := sup.NewestMajor(); err == nil {
		c.images.WarmUp(major)
	}
	c.instances, err = instances.New(instances.Options{
		Pool:            c.db.Pool(),
		Supervisor:      sup,
		Images:          c.images,
		Dir:             paths.Instances(),
		KeysDir:         paths.Keys(),
		RunDir:          paths.Run,
		MinPort:         cfg.Instances.MinPort,
		MaxPort:         cfg.Instances.MaxPort,
		ListenAddresses: cfg.Instances.ListenAddresses,
		Hostname:        cfg.PublicHostname,
		Settings:        cfg.Instances.Settings,
		StartTimeout:    cfg.Instances.StartTimeout.Duration,
		WarmPool:        cfg.Instances.WarmPool,
		DiskLimit:       int64(cfg.Instances.DiskLimit),
		Log:             log,
	})
	if err != nil {
		c.Close(ctx)
		return nil, err
	}
	c.images.SetInstances(c.instances)
	if err := c.images.Reconcile(ctx); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("reconciling images: %w", err)
	}
	if err := c.instances.Reconcile(ctx); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("reconciling instances: %w", err)
	}
	c.instances.StartPool()
	return c, nil
}

// Close stops the services and the state cluster; instances keep running.
func (c *core) Close(ctx context.Context) {
	if c.images != nil {
		c.images.Close()
	}
	if c.instances != nil {
		c.instances.Close()
	}
	if c.db != nil {
		c.db.Close(ctx)
	}
	c.lock.Release()
}

// Check backs GET /health_check: the state database answers and the data
// path is there.
func (c *core) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.db.Pool().Ping(ctx); err != nil {
		return draupnir.Errorf(draupnir.KindUnavailable, "the state database does not answer")
	}
	if ok, _ := btrfs.IsBtrfs(c.paths.Data); !ok {
		return draupnir.Errorf(draupnir.KindUnavailable, "the data path is not usable")
	}
	return nil
}

func migrateCmd(ctx context.Context, configPath string, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.Environment)
	c, err := openCore(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	fmt.Fprintln(stdout, "the state database is up to date")
	return nil
}

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
	c, err := openCore(ctx, cfg, log, true)
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
	if err := m.CollectState(c.images, c.instances, log.With("component", "metrics")); err != nil {
		return err
	}
	handler := httpapi.New(httpapi.Options{
		Images:       c.doorImages,
		Instances:    c.doorInstances,
		Metrics:      m.Handler(),
		Requests:     m,
		Auth:         people,
		Login:        login,
		People:       people,
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
