// Package instances owns the lifecycle of instances: a writable btrfs
// snapshot of a ready image with its own postgres on its own port, a fresh
// password for the instance role, reset to an image's data, copies of its
// data for the image service to save as a new image, and destruction. It
// confines each one: over the network only the instance role logs in
// (failed logins slowed down by auth_delay), and a btrfs quota and
// temp_file_limit keep one instance from filling the disk the others share.
// It ends instances by rule: a sweeper destroys those past their expiry or
// unused for the idle timeout (judged from each instance's own statistics),
// never a protected one nor one being reset, and leaves a tombstone saying
// why; it caps how many a user may have. It keeps what runs in line with
// what the state database says, at start-up (Reconcile) and while running
// (a postgres that dies is restarted). On a node of a cluster it does all
// that for its own node's instances only (ports are per node), lists
// everyone's with their node's host, and answers a call about another
// node's instance with a *draupnir.ElsewhereError for the doors to forward.
package instances

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/diskspace"
	"github.com/draupnir-db/draupnir/supervisor"
)

// Images is what instances need of the image service: the ready images
// instances are made of, and new images saved from instances.
type Images interface {
	Ready(ctx context.Context, id int64) (*draupnir.ReadyImage, error)
	draupnir.ImageSaver
}

// Cluster is what the service needs to know of the other nodes of a
// cluster (*nodes.Registry): where their instances are reached, and which
// nodes are down.
type Cluster interface {
	List(ctx context.Context) ([]*draupnir.Node, error)
}

// Options configures a Service.
type Options struct {
	// Node is this node's name in a cluster, empty for a single node: the
	// service runs, pools, sweeps and allocates ports for its own node's
	// instances only, and answers about another node's with a
	// *draupnir.ElsewhereError.
	Node string
	// Cluster, with Node, tells the other nodes' instances' host names
	// and CA certificates, and whether their nodes are down.
	Cluster         Cluster
	Pool            *pgxpool.Pool
	Supervisor      *supervisor.Supervisor
	Images          Images
	Dir             string // data_path/instances
	KeysDir         string // data_path/keys: the instance CA lives there
	RunDir          string // short directory for unix sockets and the shared pg_hba.conf
	MinPort         int
	MaxPort         int
	ListenAddresses string
	Hostname        string
	Settings        map[string]string // extra postgresql settings
	// DiskLimit is how many bytes each instance may write beyond what it
	// shares with its image (a btrfs qgroup limit); 0 means no limit.
	DiskLimit    int64
	StartTimeout time.Duration
	WarmPool     int // started, unassigned instances to keep per ready image
	// DefaultTTL is the lifetime of an instance created without a ttl and
	// MaxTTL the longest a create or an extension may ask for; 0 means
	// none and no cap.
	DefaultTTL, MaxTTL time.Duration
	// MaxProtection is the longest protection one change may ask for; 0
	// means no cap.
	MaxProtection time.Duration
	// MaxPerUser is how many instances one user may have; 0 means no limit.
	MaxPerUser int
	// IdleTimeout destroys an instance without a client connection or a
	// finished transaction for that long; 0 turns idle clean-up off.
	// IdleConnectionTimeout, if not 0, counts a connection idle that long
	// as none.
	IdleTimeout, IdleConnectionTimeout time.Duration
	// SweepInterval is how often expired instances are looked for
	// (default 15 seconds).
	SweepInterval time.Duration
	// TombstoneDays is how long the reason an instance was destroyed by
	// a rule is kept for its owner.
	TombstoneDays int
	// Destroyed, if set, is told of every destroy by a rule (for metrics).
	Destroyed func(draupnir.DestroyReason)
	Log       *slog.Logger
}

// Service manages instances.
type Service struct {
	deps
	opts  Options
	log   *slog.Logger
	hba   string
	tls   *certs
	quota btrfs.QuotaMode // of the data path's filesystem

	libMu     sync.Mutex
	authDelay map[string]bool // PostgreSQL major version → has auth_delay

	// pinless are the images whose data a fresh instance showed to hold
	// nothing for pinLimits to undo. Images are read-only, so every other
	// fresh instance of them holds nothing either.
	pinMu   sync.Mutex
	pinless map[int64]bool

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	portMu sync.Mutex // serialises port allocation within this server

	// samples are the last activity samples of the running instances,
	// used by the sweeper's goroutine only.
	samples map[int64]activity

	mu    sync.Mutex
	procs map[int64]*tracked

	// poolMu keeps refills and image destruction apart, so no warm
	// instance is made of an image being destroyed.
	poolMu     sync.Mutex
	refillWake chan struct{}
}

// tracked is a postgres the service watches.
type tracked struct {
	proc     process
	stopping bool // set before a deliberate stop, so its exit is no crash
}

// New prepares the run directory and returns a Service.
func New(opts Options) (*Service, error) {
	return newService(opts, realDeps(opts))
}

func newService(opts Options, d deps) (*Service, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = 15 * time.Second
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if err := os.MkdirAll(opts.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", opts.RunDir, err)
	}
	// The file is named after its rules, so that a postgres started with
	// other rules has another hba_file on its command line, and Reconcile
	// restarts it.
	rules := hbaRules(draupnir.InstanceRole)
	sum := sha256.Sum256([]byte(rules))
	hba := filepath.Join(opts.RunDir, fmt.Sprintf("instance_pg_hba.%x.conf", sum[:8]))
	if err := os.WriteFile(hba, []byte(rules), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", hba, err)
	}
	old, _ := filepath.Glob(filepath.Join(opts.RunDir, "instance_pg_hba*.conf"))
	for _, f := range old {
		if f != hba {
			os.Remove(f) // the postgres still using it restarts at Reconcile
		}
	}
	// WriteFile keeps the mode of an existing file; postgres must read it.
	if err := os.Chmod(hba, 0o644); err != nil {
		return nil, err
	}
	if opts.DiskLimit < 0 {
		return nil, fmt.Errorf("negative disk limit %d", opts.DiskLimit)
	}
	quota, err := enableQuotas(d.volumes, opts.Dir, opts.DiskLimit)
	if err != nil {
		return nil, err
	}
	if quota == btrfs.QuotaFull && opts.DiskLimit > 0 {
		opts.Log.Warn("per-instance disk limits use full btrfs qgroups (this kernel has no simple quotas, or they were on already): every transaction commit pays for the accounting; see docs/operations.md")
	}
	tls, err := issueServerCert(opts.KeysDir, filepath.Join(opts.RunDir, "tls"), certNames(opts.Hostname),
		d.postgres.UID(), d.postgres.GID())
	if err != nil {
		return nil, fmt.Errorf("preparing the instances' TLS certificate: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	return &Service{
		deps:   d,
		opts:   opts,
		log:    opts.Log.With("component", "instances"),
		hba:    hba,
		tls:    tls,
		quota:  quota,
		base:   base,
		cancel: cancel,
		procs:  map[int64]*tracked{},

		samples: map[int64]activity{},

		authDelay: map[string]bool{},
		pinless:   map[int64]bool{},
		// One pending wake-up is enough: a refill tops up every image.
		refillWake: make(chan struct{}, 1),
	}, nil
}

// Close stops watching the instances; their postgres processes keep running
// and are adopted by the next server.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
}

func (s *Service) dir(id int64) string { return filepath.Join(s.opts.Dir, strconv.FormatInt(id, 10)) }
func (s *Service) sockDir(id int64) string {
	return filepath.Join(s.opts.RunDir, strconv.FormatInt(id, 10))
}

// decorate adds to one of this node's instances what the row does not
// hold: where users reach it and the CA that signed its certificate.
func (s *Service) decorate(in *draupnir.Instance) *draupnir.Instance {
	in.Hostname = s.opts.Hostname
	in.CACertificate = s.tls.caPEM
	return in
}

// CACertificate is the PEM certificate of the CA that signs this node's
// instances' server certificates.
func (s *Service) CACertificate() string { return s.tls.caPEM }

// decorateAll decorates instances of any node: another node's get that
// node's advertised host and CA, and read unavailable while it is down.
func (s *Service) decorateAll(ctx context.Context, list []*draupnir.Instance) error {
	var nodes map[string]*draupnir.Node
	for _, in := range list {
		if in.Node == s.opts.Node {
			s.decorate(in)
			continue
		}
		if nodes == nil {
			if s.opts.Cluster == nil {
				return fmt.Errorf("instance %d is on node %q, but this server is no node of a cluster", in.ID, in.Node)
			}
			all, err := s.opts.Cluster.List(ctx)
			if err != nil {
				return err
			}
			nodes = map[string]*draupnir.Node{}
			for _, n := range all {
				nodes[n.Name] = n
			}
		}
		n := nodes[in.Node]
		if n == nil {
			// Its node was removed with the instance still there.
			in.State, in.Error = draupnir.InstanceUnavailable, fmt.Sprintf("its node %s is no longer in the cluster", in.Node)
			continue
		}
		in.Hostname, in.CACertificate = n.AdvertiseHost, n.CACertificate
		if n.Down {
			in.State, in.Error = draupnir.InstanceUnavailable, fmt.Sprintf("its node %s is down; it answers again when the node is back", in.Node)
		}
	}
	return nil
}

// elsewhere is nil for one of this node's instances, and for another
// node's the *draupnir.ElsewhereError that sends the caller there.
func (s *Service) elsewhere(ctx context.Context, in *draupnir.Instance) error {
	if in.Node == s.opts.Node {
		return nil
	}
	if err := s.decorateAll(ctx, []*draupnir.Instance{in}); err != nil {
		return err
	}
	return &draupnir.ElsewhereError{Node: in.Node, Instance: in}
}

// List returns p's instances, on every node; the upload principal sees
// all.
func (s *Service) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error) {
	var list []*draupnir.Instance
	var err error
	if p.Upload {
		list, err = s.store.listOwned(ctx, nil)
	} else {
		list, err = s.store.listOwned(ctx, &p.Name)
	}
	if err != nil {
		return nil, err
	}
	if err := s.decorateAll(ctx, list); err != nil {
		return nil, err
	}
	return list, nil
}

// Usage is this node's share of the instances: how many it has (warm ones
// too) and how many ports of its range they leave free.
func (s *Service) Usage(ctx context.Context) (count, freePorts int, err error) {
	return s.store.usage(ctx, s.opts.MinPort, s.opts.MaxPort)
}

// Get returns instance id if p may see it; someone else's is not found.
func (s *Service) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error) {
	in, err := s.store.get(ctx, id)
	if draupnir.KindOf(err) == draupnir.KindNotFound {
		return nil, s.gone(ctx, p, id, err)
	}
	if err != nil {
		return nil, err
	}
	if !p.CanSee(in.Owner) || in.Owner == "" {
		return nil, notFound(id)
	}
	if err := s.elsewhere(ctx, in); err != nil {
		return nil, err
	}
	return s.decorate(in), nil
}

// Create makes an instance of image imageID for p and returns once its
// postgres accepts connections. Any failure undoes every step.
func (s *Service) Create(ctx context.Context, p draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	if p.Name == "" {
		return nil, draupnir.Errorf(draupnir.KindUnauthorized, "no principal")
	}
	expires, notices, err := s.expiry(time.Now(), opts.TTL, true)
	if err != nil {
		return nil, err
	}
	if s.opts.WarmPool > 0 {
		in, err := s.claimWarm(ctx, imageID, p, expires)
		if err != nil {
			return nil, err
		}
		if in != nil {
			in.Notice = strings.Join(notices, "; ")
			// Refill a moment later: starting the replacement right away
			// competes with the owner's first connection for the CPU.
			time.AfterFunc(refillDelay, s.refill)
			s.log.Info("instance created from the warm pool", "instance", in.ID, "image", imageID, "owner", p.Name, "port", in.Port)
			return s.decorate(in), nil
		}
	}
	in, err := s.create(ctx, imageID, p, draupnir.InstanceRunning, expires)
	if err != nil {
		return nil, err
	}
	in.Notice = strings.Join(notices, "; ")
	return in, nil
}

// create makes an instance of image imageID for p from scratch and
// leaves it in state (running, or warm for the pool, owned by nobody),
// to expire at expires (zero: never).
//
// Only what must come first does: the id is reserved, then the image's
// snapshot is taken while the row (quota, port) is written, and the row
// says running once postgres runs with the role's password set, in a commit
// that does not wait for the disk. A crash at any point leaves a row that
// says creating, or none, and Reconcile removes the rest.
func (s *Service) create(ctx context.Context, imageID int64, p draupnir.Principal, state draupnir.InstanceState, expires time.Time) (_ *draupnir.Instance, err error) {
	owner := p.Name
	password, err := newPassword()
	if err != nil {
		return nil, err
	}
	id, err := s.store.nextID(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With("instance", id, "image", imageID, "owner", owner)
	dir := s.dir(id)
	type snapshot struct {
		im  *draupnir.ReadyImage
		err error // nil: dir is a snapshot of im
	}
	snapped := make(chan snapshot, 1)
	go func() {
		im, err := s.snapshotImage(ctx, imageID, dir)
		snapped <- snapshot{im, err}
	}()
	in, err := s.allocate(ctx, id, imageID, p, draupnir.InstanceRole, password, expires)
	snap := <-snapped
	var proc process
	defer func() {
		if err == nil {
			return
		}
		log.Warn("instance create failed; undoing it", "err", err)
		cleanup := context.WithoutCancel(ctx)
		if proc != nil {
			s.untrack(id)
			proc.Stop(cleanup, supervisor.Immediate, 10*time.Second)
		}
		if snap.err == nil {
			if derr := s.deleteSnapshot(dir); derr != nil {
				log.Error("could not delete the snapshot of a failed create", "err", derr)
			}
		}
		os.RemoveAll(s.sockDir(id))
		if in != nil {
			if derr := s.store.delete(cleanup, id); derr != nil {
				log.Error("could not delete the row of a failed create", "err", derr)
			}
		}
	}()
	// The image's refusal (missing, not ready) says more than the row's.
	if snap.err != nil {
		return nil, snap.err
	}
	if err != nil {
		return nil, err
	}
	im := snap.im
	if err := s.separateWAL(id); err != nil {
		return nil, err
	}
	if err := s.limitDisk(id); err != nil {
		return nil, err
	}
	skip := []int32{}
	for attempt := 0; ; attempt++ {
		proc, err = s.start(ctx, id, in.Port)
		if err == nil || !errors.Is(err, supervisor.ErrPortInUse) || attempt >= 5 {
			break
		}
		log.Warn("port taken by another program; moving to another", "port", in.Port)
		skip = append(skip, int32(in.Port))
		s.portMu.Lock()
		in.Port, err = s.freePort(ctx, id, skip)
		s.portMu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, fmt.Errorf("starting postgres for instance %d: %w", id, err)
	}
	if err := s.giveRole(ctx, in, im, password); err != nil {
		return nil, err
	}
	if state == draupnir.InstanceWarm {
		// Pay the first login's cache loading now rather than in the
		// owner's first connection.
		s.warmUp(ctx, s.sockDir(id), in.Port, in.Username, im.Database)
	}
	if err := s.store.setDone(ctx, id, state); err != nil {
		return nil, err
	}
	in.State = state
	in.Database = im.Database
	s.track(id, proc)
	log.Info("instance created", "port", in.Port, "state", state)
	return s.decorate(in), nil
}

// snapshotImage makes dir a writable snapshot of ready image imageID, if
// the disk has room for a new instance, and returns the image.
func (s *Service) snapshotImage(ctx context.Context, imageID int64, dir string) (*draupnir.ReadyImage, error) {
	im, err := s.opts.Images.Ready(ctx, imageID)
	if err != nil {
		return nil, err
	}
	// A new instance on a full disk could not write, and would eat into
	// the room the state database and the running instances need.
	if err := diskspace.Ensure(s.opts.Dir); err != nil {
		return nil, err
	}
	if err := s.volumes.Snapshot(im.Snapshot, dir, false); err != nil {
		return nil, draupnir.StorageError(fmt.Errorf("snapshotting image %d: %w", imageID, err))
	}
	return im, nil
}

// giveRole sets the password of instance in's role in its fresh snapshot
// of image im, and pins its limits unless an earlier instance of im showed
// there is nothing to pin: that check costs a create several milliseconds
// of cold catalog reads, and images finalised now never need it.
func (s *Service) giveRole(ctx context.Context, in *draupnir.Instance, im *draupnir.ReadyImage, password string) error {
	s.pinMu.Lock()
	pin := !s.pinless[im.ID]
	s.pinMu.Unlock()
	pinned, err := s.prepareRole(ctx, s.sockDir(in.ID), in.Port, im.Superuser, im.Database, in.Username, password, pin)
	if err != nil {
		return err
	}
	if pin && !pinned {
		s.pinMu.Lock()
		s.pinless[im.ID] = true
		s.pinMu.Unlock()
	}
	return nil
}

// allocate inserts the row of instance id, of p, with a free port, within
// p's quota.
func (s *Service) allocate(ctx context.Context, id, imageID int64, p draupnir.Principal, username, password string, expires time.Time) (*draupnir.Instance, error) {
	// The lock also makes the count and the insert one step, so that
	// concurrent creates cannot all pass the quota.
	unlock, err := s.lockQuota(ctx, p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.checkQuota(ctx, p); err != nil {
		return nil, err
	}
	in, err := s.store.insert(ctx, id, imageID, p.Name, username, password, s.opts.MinPort, s.opts.MaxPort, []int32{}, expires)
	if err != nil {
		return nil, err
	}
	if in == nil {
		return nil, draupnir.Errorf(draupnir.KindUnavailable, "no free port in the instance range %d-%d; destroy instances or widen instances.min_port/max_port",
			s.opts.MinPort, s.opts.MaxPort)
	}
	if !s.portFree(in.Port) {
		// Another program holds it: keep the row, take the next port.
		port, err := s.freePort(ctx, in.ID, []int32{int32(in.Port)})
		if err != nil {
			s.store.delete(context.WithoutCancel(ctx), in.ID)
			return nil, err
		}
		in.Port = port
	}
	return in, nil
}

// freePort moves instance id to a free port not in skip and not held by
// another program. portMu must be held.
func (s *Service) freePort(ctx context.Context, id int64, skip []int32) (int, error) {
	for attempt := 0; attempt < 20; attempt++ {
		port, err := s.store.movePort(ctx, id, s.opts.MinPort, s.opts.MaxPort, skip)
		if err != nil {
			return 0, draupnir.Errorf(draupnir.KindUnavailable, "no free port in the instance range %d-%d", s.opts.MinPort, s.opts.MaxPort)
		}
		if s.portFree(port) {
			return port, nil
		}
		skip = append(skip, int32(port))
	}
	return 0, draupnir.Errorf(draupnir.KindUnavailable, "no free port in the instance range %d-%d", s.opts.MinPort, s.opts.MaxPort)
}

// portFree reports whether nothing listens on port. Postgres may still lose
// a race for it; Create then moves on.
func portFree(port int) bool {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// start runs the postgres of instance id on port and waits until it accepts
// connections.
func (s *Service) start(ctx context.Context, id int64, port int) (process, error) {
	settings := s.settings(id, s.dir(id))
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	return s.postgres.Start(ctx, supervisor.Spec{
		DataDir:         s.dir(id),
		SocketDir:       s.sockDir(id),
		Port:            port,
		ListenAddresses: s.opts.ListenAddresses,
		Settings:        settings,
		LogFile:         filepath.Join(s.dir(id), "draupnir.log"),
	})
}

// prepareRole gives the instance role its password, as a SCRAM verifier,
// and, with pin, undoes what the source planted against the instance's
// limits, reporting whether there was any. The password is committed
// synchronously: the instance runs with synchronous_commit off, and a
// password lost in a crash would lock the owner out.
func prepareRole(ctx context.Context, sockDir string, port int, superuser, db, role, password string, pin bool) (pinned bool, err error) {
	verifier, err := scramVerifier(password)
	if err != nil {
		return false, err
	}
	conn, err := superuserConn(ctx, sockDir, port, superuser, db)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if pin {
		if pinned, err = pinLimits(ctx, conn); err != nil {
			return false, err
		}
	}
	// The verifier holds only base64 characters, '$' and ':'.
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), verifier),
		pgx.QueryExecModeSimpleProtocol); err != nil {
		return false, fmt.Errorf("setting the instance role's password: %w", err)
	}
	return pinned, nil
}

// superuserConn connects to an instance as its superuser over its private
// socket. The data is the instance user's, who may have planted functions
// and operators, or settings to make our sessions fail: the session pins
// search_path (callers use only schema-qualified built-ins) and overrides
// what they may have set with ALTER DATABASE … SET. Commits are
// synchronous: instances run with synchronous_commit off, and what the
// service sets must survive a crash.
func superuserConn(ctx context.Context, sockDir string, port int, superuser, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = sockDir, uint16(port), superuser, db
	// Sent at connection start, these win over what the data's owner may
	// have set with ALTER DATABASE … SET (an instance of an image saved
	// from an instance carries its user's).
	cfg.RuntimeParams = map[string]string{
		"application_name":                    "draupnir",
		"synchronous_commit":                  "on",
		"search_path":                         "pg_catalog, pg_temp",
		"default_transaction_read_only":       "off",
		"statement_timeout":                   "0",
		"lock_timeout":                        "0",
		"idle_in_transaction_session_timeout": "0",
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the instance as its superuser: %w", err)
	}
	return conn, nil
}

// warmUp logs in once as the instance role on the private socket; a failure
// only means the owner's first connection pays for it.
func warmUp(ctx context.Context, sockDir string, port int, role, db string) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = sockDir, uint16(port), role, db
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return
	}
	conn.Exec(ctx, "SELECT 1")
	conn.Close(context.WithoutCancel(ctx))
}

// Destroy stops instance id and deletes its snapshot and row.
func (s *Service) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	in, err := s.store.get(ctx, id)
	if err != nil {
		return err
	}
	if !p.CanSee(in.Owner) || in.Owner == "" {
		return notFound(id)
	}
	if err := s.elsewhere(ctx, in); err != nil {
		return err
	}
	// Tearing it down under its create or reset would fail that half-way.
	// Creating only moves on, and claimDestroy refuses an instance whose
	// reset began since, so this check cannot go stale.
	switch in.State {
	case draupnir.InstanceCreating:
		return draupnir.Errorf(draupnir.KindConflict, "instance %d is still being created; destroy it when that ends", id)
	case draupnir.InstanceResetting:
		return draupnir.Errorf(draupnir.KindConflict, "instance %d is being reset; destroy it when that ends", id)
	}
	ok, err := s.store.claimDestroy(ctx, id, "", "")
	if err != nil {
		return err
	}
	if !ok {
		return draupnir.Errorf(draupnir.KindConflict, "instance %d is already being destroyed, or being reset", id)
	}
	ctx = context.WithoutCancel(ctx)
	if err := s.teardown(ctx, id); err != nil {
		// Out of "destroying", so that the owner can try again at once
		// rather than after the next restart's reconcile.
		s.store.setState(ctx, id, draupnir.InstanceFailed, fmt.Sprintf("destroying it failed: %v; destroy it again", err))
		return err
	}
	return nil
}

// OwnersOfImage returns who owns instances of image imageID (the warm
// pool's are nobody's), each once, sorted.
func (s *Service) OwnersOfImage(ctx context.Context, imageID int64) ([]string, error) {
	list, err := s.store.listOfImage(ctx, imageID, false)
	if err != nil {
		return nil, err
	}
	var owners []string
	for _, in := range list {
		if in.Owner != "" && !slices.Contains(owners, in.Owner) {
			owners = append(owners, in.Owner)
		}
	}
	slices.Sort(owners)
	return owners, nil
}

// DestroyAllOfImage destroys every instance of image imageID.
func (s *Service) DestroyAllOfImage(ctx context.Context, imageID int64) error {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	// Creates in flight are left to finish: the image's row cannot go while
	// they refer to it, so its destroy answers a conflict to retry instead
	// of failing them half-way. Only this node's instances can be torn
	// down here; another node's keep the image's row from going.
	list, err := s.store.listOfImage(ctx, imageID, true)
	if err != nil {
		return err
	}
	var errs []error
	for _, in := range list {
		ok, err := s.store.claimDestroy(ctx, in.ID, draupnir.ReasonImageDestroy,
			fmt.Sprintf("its image %d was destroyed", imageID))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			// Another destroy has it, or a reset began since the list (and
			// may be moving it to another image): theirs to finish. One
			// still of this image keeps the image's row from going.
			continue
		}
		if err := s.teardown(context.WithoutCancel(ctx), in.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		if in.Owner != "" { // the warm pool's are nobody's loss
			s.destroyedBy(in, draupnir.ReasonImageDestroy, fmt.Sprintf("its image %d was destroyed", imageID))
		}
	}
	return errors.Join(errs...)
}

// teardown stops the postgres of instance id (immediately: its data is about
// to go), deletes the snapshot and socket directory, then the row (which
// leaves a tombstone if a rule claimed it).
func (s *Service) teardown(ctx context.Context, id int64) error {
	dir := s.dir(id)
	if t := s.untrack(id); t != nil {
		if err := t.proc.Stop(ctx, supervisor.Immediate, 10*time.Second); err != nil {
			return fmt.Errorf("stopping instance %d: %w", id, err)
		}
	} else if err := s.postgres.StopDataDir(ctx, dir, supervisor.Immediate, 10*time.Second); err != nil {
		return fmt.Errorf("stopping instance %d: %w", id, err)
	}
	if err := s.deleteSnapshot(dir); err != nil {
		return fmt.Errorf("deleting the snapshot of instance %d: %w", id, err)
	}
	os.RemoveAll(s.sockDir(id))
	// Its own qgroup usually lingers until btrfs has freed its extents;
	// this sweeps those of earlier destroys.
	s.removeStaleQgroups()
	if err := s.store.delete(ctx, id); err != nil {
		return err
	}
	s.log.Info("instance destroyed", "instance", id)
	return nil
}

// destroyedBy logs and counts that rule reason destroyed in.
func (s *Service) destroyedBy(in *draupnir.Instance, reason draupnir.DestroyReason, detail string) {
	s.log.Info("instance destroyed by a rule", "instance", in.ID, "owner", in.Owner, "rule", reason, "why", detail)
	if s.opts.Destroyed != nil {
		s.opts.Destroyed(reason)
	}
}
