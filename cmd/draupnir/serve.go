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
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/images"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/migrations"
	"github.com/draupnir-db/draupnir/supervisor"
)

// core is the part of the server every door shares.
type core struct {
	cfg       *config.Config
	log       *slog.Logger
	sup       *supervisor.Supervisor
	state     *supervisor.Process // the embedded state cluster, if any
	pool      *pgxpool.Pool
	images    *images.Service
	instances *instances.Service
	lock      *os.File // held while the server runs
	runLock   *os.File // the same, on run_path
	// doorImages and doorInstances are the services as the doors see
	// them: measured.
	doorImages    imageService
	doorInstances draupnir.InstanceService
}

// cascadingImages is the image service as the doors use it: destroying an
// image destroys its instances first. The instance service depends on the
// image service (it makes instances of ready images), so the cascade is
// wired here rather than held by the image service.
type cascadingImages struct {
	*images.Service
	instances *instances.Service
}

func (c cascadingImages) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	return c.Service.Destroy(ctx, p, id, c.instances)
}

// openCore checks the data path, brings up the state database and migrates
// it. With services false it stops there (draupnir migrate).
func openCore(ctx context.Context, cfg *config.Config, log *slog.Logger, services bool) (*core, error) {
	ok, err := btrfs.IsBtrfs(cfg.DataPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("data_path %s: %w", cfg.DataPath, err)
	}
	if !ok {
		return nil, fmt.Errorf("data_path %s is not on a btrfs filesystem; run `draupnir setup --data-path %s` to loop-mount one there", cfg.DataPath, cfg.DataPath)
	}
	// Modes below are meant as written, whatever umask the server got.
	syscall.Umask(0o022)
	// One server per data path: a second one would fight the first over
	// instances and, on its way out, stop the state cluster they share.
	lock, err := os.OpenFile(filepath.Join(cfg.DataPath, "draupnir.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data_path: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another draupnir is already serving data_path %s", cfg.DataPath)
	}
	for _, d := range []string{cfg.UploadsDir(), cfg.SnapshotsDir(), cfg.InstancesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		// The postgres user must reach the snapshots inside.
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.KeysDir(), 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.RunPath, 0o755); err != nil {
		return nil, fmt.Errorf("run_path: %w", err)
	}
	// The postgres user must reach the data path and the run path; keep both
	// traversable but not listable by others.
	for _, d := range []string{cfg.DataPath, cfg.RunPath} {
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, err
		}
	}
	// One server per run path too: two servers on different data paths but
	// the same (default) run_path would share socket directories, the
	// instances' TLS files and the state cluster's socket.
	runLock, err := os.OpenFile(filepath.Join(cfg.RunPath, "draupnir.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("run_path: %w", err)
	}
	if err := syscall.Flock(int(runLock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		runLock.Close()
		lock.Close()
		return nil, fmt.Errorf("another draupnir is already using run_path %s; give each server its own run_path", cfg.RunPath)
	}
	sup, err := supervisor.New(cfg.Instances.PostgresUser, cfg.Postgres.BinDirs, log)
	if err != nil {
		runLock.Close()
		lock.Close()
		return nil, err
	}
	c := &core{cfg: cfg, log: log, sup: sup, lock: lock, runLock: runLock}
	url := cfg.DatabaseURL
	if cfg.Embedded() {
		url, c.state, err = sup.StateCluster(ctx, cfg.StateDir(), filepath.Join(cfg.RunPath, "state"))
		if err != nil {
			return nil, err
		}
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database_url: %w", err)
	}
	pcfg.MaxConns = 16
	c.pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("connecting to the state database: %w", err)
	}
	applied, err := migrations.Apply(ctx, c.pool)
	if err != nil {
		c.Close(ctx)
		return nil, err
	}
	if len(applied) > 0 {
		log.Info("state database migrated", "applied", applied)
	}
	if !services {
		return c, nil
	}
	c.images = images.New(images.Options{
		Pool:              c.pool,
		Supervisor:        sup,
		UploadsDir:        cfg.UploadsDir(),
		SnapshotsDir:      cfg.SnapshotsDir(),
		RunDir:            cfg.RunPath,
		SuperuserAccess:   cfg.Instances.SuperuserAccess,
		ScriptAsSuperuser: cfg.Images.ScriptAsSuperuser,
		KeepUploads:       cfg.Images.KeepUploads,
		Log:               log,
	})
	if major, err := sup.NewestMajor(); err == nil {
		c.images.WarmUp(major)
	}
	c.instances, err = instances.New(instances.Options{
		Pool:            c.pool,
		Supervisor:      sup,
		Images:          c.images,
		Dir:             cfg.InstancesDir(),
		KeysDir:         cfg.KeysDir(),
		RunDir:          cfg.RunPath,
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
	if c.pool != nil {
		c.pool.Close()
	}
	if c.state != nil {
		if err := c.state.Stop(ctx, supervisor.Fast, 30*time.Second); err != nil {
			c.log.Error("stopping the state cluster", "err", err)
		}
	}
	c.runLock.Close()
	c.lock.Close()
}

// Check backs GET /health_check: the state database answers and the data
// path is there.
func (c *core) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.pool.Ping(ctx); err != nil {
		return draupnir.Errorf(draupnir.KindUnavailable, "the state database does not answer")
	}
	if ok, _ := btrfs.IsBtrfs(c.cfg.DataPath); !ok {
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
	log := newLogger(stderr, cfg.Environment)
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
	demo := fs.Bool("demo", false, "create a small demo image (pgbench) if there are no images yet")
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
	// Deferred after Close, so it runs first: the watch ends before the
	// state cluster is stopped.
	defer c.watchState(ctx)()

	people, login, err := openPeople(ctx, cfg, c, log)
	if err != nil {
		return err
	}
	c.doorImages, c.doorInstances = c.observed(m)
	if err := m.CollectState(cascadingImages{c.images, c.instances}, c.instances, log.With("component", "metrics")); err != nil {
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
	if *demo {
		go func() {
			if err := makeDemoImage(ctx, c, log); err != nil {
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
