package main

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/datapath"
	"github.com/draupnir-db/draupnir/images"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/nodes"
	"github.com/draupnir-db/draupnir/replicate"
	"github.com/draupnir-db/draupnir/sources"
	"github.com/draupnir-db/draupnir/standby"
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
	sources   *sources.Service
	standbys  *standby.Manager // nil without follow-mode sources
	lock      *datapath.Lock   // the data path and run path, held while the server runs
	// registry is the cluster's membership and signer signs and checks
	// the calls nodes forward to each other; both nil on a single node.
	registry *nodes.Registry
	signer   *nodes.Signer
	// replicator ships images to this node of a cluster; nil on a single
	// node.
	replicator *replicate.Replicator
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

// openCore takes the data path, brings up the state database and migrates
// it. With services false it stops there (draupnir migrate). destroyed, if
// not nil, is told of every instance a rule destroys, and refreshed of how
// every refresh of a source ends (for metrics).
func openCore(ctx context.Context, cfg *config.Config, log *slog.Logger, services bool, destroyed func(draupnir.DestroyReason),
	refreshed func(source string, err error)) (*core, error) {
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
	if err := cfg.CheckSourceFiles(); err != nil {
		c.Close(ctx)
		return nil, err
	}
	hostname := cfg.PublicHostname
	var cluster instances.Cluster // a nil interface on a single node
	if cfg.Node.Name != "" {
		if cfg.Node.AdvertiseHost != "" {
			hostname = cfg.Node.AdvertiseHost
		}
		c.registry = c.newRegistry(hostname)
		c.signer = nodes.NewSigner(cfg.Node.Name, []byte(cfg.Cluster.Secret))
		cluster = c.registry
	}
	c.images = images.New(images.Options{
		Node:              cfg.Node.Name,
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
		Node:                  cfg.Node.Name,
		Cluster:               cluster,
		Pool:                  c.db.Pool(),
		Supervisor:            sup,
		Images:                c.images,
		Dir:                   paths.Instances(),
		KeysDir:               paths.Keys(),
		RunDir:                paths.Run,
		MinPort:               cfg.Instances.MinPort,
		MaxPort:               cfg.Instances.MaxPort,
		ListenAddresses:       cfg.Instances.ListenAddresses,
		Hostname:              hostname,
		Settings:              cfg.Instances.Settings,
		StartTimeout:          cfg.Instances.StartTimeout.Duration,
		WarmPool:              cfg.Instances.WarmPool,
		DiskLimit:             int64(cfg.Instances.DiskLimit),
		DefaultTTL:            cfg.Instances.DefaultTTL.Duration,
		MaxTTL:                cfg.Instances.MaxTTL.Duration,
		MaxProtection:         cfg.Instances.MaxProtection.Duration,
		MaxPerUser:            cfg.Instances.MaxPerUser,
		IdleTimeout:           cfg.Instances.IdleTimeout.Duration,
		IdleConnectionTimeout: cfg.Instances.IdleConnectionTimeout.Duration,
		SweepInterval:         cfg.Instances.SweepInterval.Duration,
		TombstoneDays:         cfg.Instances.TombstoneDays,
		Destroyed:             destroyed,
		Log:                   log,
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
	// After the images' reconcile: the images this node made must be its
	// own before their ready copies are recorded.
	if c.replicator, err = c.newReplicator(ctx); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("image shipping: %w", err)
	}
	c.instances.StartPool()
	c.instances.StartSweeper()
	if c.standbys, err = startStandbys(ctx, cfg, paths, sup, log); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("starting the standbys of followed sources: %w", err)
	}
	var follower sources.Follower
	if c.standbys != nil {
		follower = followers{c.standbys}
	}
	c.sources, err = sources.New(sources.Options{
		Sources:   cfg.Sources,
		Images:    c.images,
		Instances: c.instances,
		Pool:      c.db.Pool(),
		Node:      cfg.Node.Name,
		Postgres:  sup,
		RunDir:    paths.Run,
		Follower:  follower,
		Refreshed: refreshed,
		Log:       log,
	})
	if err == nil {
		err = c.sources.Start(ctx)
	}
	if err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("starting the sources: %w", err)
	}
	return c, nil
}

// Close stops the services and the state cluster; instances keep running.
func (c *core) Close(ctx context.Context) {
	if c.sources != nil { // its refreshes use the images and the standbys
		c.sources.Close()
	}
	if c.standbys != nil { // the standbys themselves keep running
		c.standbys.Close()
	}
	if c.registry != nil {
		c.registry.Close()
	}
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
