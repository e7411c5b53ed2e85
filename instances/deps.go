package instances

import (
	"context"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

// deps are what the service reaches outside its own logic: postgres through
// the supervisor, btrfs, the state database, and the instance's own
// postgres over its private socket. New gives it the real ones; the tests
// give it fakes, so that the lifecycle logic runs quickly and without root.
type deps struct {
	postgres postgres
	volumes  volumes
	store    store
	// prepareRole gives a started instance's role its password and, with
	// pin, pins its limits, reporting whether there was anything to pin;
	// warmUp logs in once, to load the caches.
	prepareRole func(ctx context.Context, sockDir string, port int, superuser, db, role, password string, pin bool) (pinned bool, err error)
	warmUp      func(ctx context.Context, sockDir string, port int, role, db string)
	// probe reads a running instance's use from its own statistics.
	probe func(ctx context.Context, sockDir string, port int, superuser, db string) (activity, error)
	// checkpoint runs CHECKPOINT in a running instance; copyTree copies a
	// directory's files into another (a save's WAL).
	checkpoint func(ctx context.Context, sockDir string, port int, superuser, db string) error
	copyTree   func(ctx context.Context, src, dst string) error
	// portFree reports whether no other program listens on a port.
	portFree func(port int) bool
	// restartWaits space out the restarts of a postgres that keeps dying.
	restartWaits []time.Duration
}

func realDeps(opts Options) deps {
	return deps{
		postgres:     supervised{opts.Supervisor},
		volumes:      btrfs.FS{},
		store:        pgStore{pool: opts.Pool, node: opts.Node},
		prepareRole:  prepareRole,
		warmUp:       warmUp,
		probe:        probe,
		checkpoint:   checkpoint,
		copyTree:     copyTree,
		portFree:     portFree,
		restartWaits: []time.Duration{0, time.Second, 5 * time.Second, 30 * time.Second},
	}
}

// postgres is what the service needs of the supervisor.
type postgres interface {
	Start(ctx context.Context, spec supervisor.Spec) (process, error)
	Adopt(dataDir string) (process, error)
	StopDataDir(ctx context.Context, dataDir string, mode supervisor.StopMode, timeout time.Duration) error
	BinDir(major string) (string, error)
	UID() int
	GID() int
}

// process is an instance's running postgres.
type process interface {
	PID() int
	Done() <-chan struct{}
	Stop(ctx context.Context, mode supervisor.StopMode, timeout time.Duration) error
}

// supervised is the supervisor as a postgres: its processes are
// *supervisor.Process.
type supervised struct{ *supervisor.Supervisor }

func (s supervised) Start(ctx context.Context, spec supervisor.Spec) (process, error) {
	p, err := s.Supervisor.Start(ctx, spec)
	if err != nil {
		return nil, err // not a nil *Process in a non-nil process
	}
	return p, nil
}

func (s supervised) Adopt(dataDir string) (process, error) {
	p, err := s.Supervisor.Adopt(dataDir)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// volumes is what the service needs of btrfs (btrfs.FS).
type volumes interface {
	Snapshot(src, dst string, readOnly bool) error
	Delete(path string) error
	IsSubvolume(path string) (bool, error)
	ConvertToSubvolume(path string) error
	LimitExclusive(path string, max int64) error
	RemoveStaleQgroups(path string) (int, error)
	Quota(path string) (btrfs.QuotaMode, error)
	EnableQuota(path string, mode btrfs.QuotaMode) (btrfs.QuotaMode, error)
	SimpleQuotaSupported() bool
}

// store is the instances table (pgStore).
type store interface {
	get(ctx context.Context, id int64) (*draupnir.Instance, error)
	// listAll returns every instance of this node, the warm pool's and
	// those being created or destroyed too.
	listAll(ctx context.Context) ([]*draupnir.Instance, error)
	// listOwned returns the instances somebody owns: owner's, or with
	// owner nil everybody's.
	listOwned(ctx context.Context, owner *string) ([]*draupnir.Instance, error)
	// listOfImage returns the instances of an image that are not being
	// created or reset: of this node only, if here.
	listOfImage(ctx context.Context, imageID int64, here bool) ([]*draupnir.Instance, error)
	// nextID reserves a new instance's id, for insert.
	nextID(ctx context.Context) (int64, error)
	// insert and claimWarm take the new instance's expiry (zero: none).
	insert(ctx context.Context, id, imageID int64, owner, username, password string, min, max int, skip []int32, expires time.Time) (*draupnir.Instance, error)
	movePort(ctx context.Context, id int64, min, max int, skip []int32) (int, error)
	claimWarm(ctx context.Context, imageID int64, owner string, expires time.Time) (*draupnir.Instance, error)
	poolSizes(ctx context.Context) (map[int64]int, error)
	setState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) error
	// setDone is setState at the end of a create or reset: its commit
	// need not be durable, as a lost one leaves the instance creating or
	// resetting, which Reconcile finishes.
	setDone(ctx context.Context, id int64, state draupnir.InstanceState) error
	setLiveState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) (bool, error)
	// claimDestroy marks instance id as being destroyed; a rule gives its
	// reason and, in words, detail, and delete then leaves a tombstone.
	claimDestroy(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string) (bool, error)
	claimReset(ctx context.Context, id, imageID int64) (bool, error)
	delete(ctx context.Context, id int64) error
	setLifetime(ctx context.Context, id int64, l lifetime) (*draupnir.Instance, error)
	// claimLapsed is claimDestroy for the sweeper: only if rule reason
	// holds at now and the instance is not protected.
	claimLapsed(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string, now, idleBefore time.Time) (bool, error)
	countOwned(ctx context.Context, owner string) (int, error)
	// unplaced returns the ids of the instances of no node; adopt makes
	// one of them this node's, unless another node did first.
	unplaced(ctx context.Context) ([]int64, error)
	adopt(ctx context.Context, id int64) (bool, error)
	// lockOwner holds owner's lock, shared by every node, until release.
	lockOwner(ctx context.Context, owner string) (release func(), err error)
	// usage returns how many instances this node has and how many ports
	// of [min, max] they leave free.
	usage(ctx context.Context, min, max int) (count, freePorts int, err error)
	// touch records that instance id was seen in use at t.
	touch(ctx context.Context, id int64, t time.Time) error
	// tombstone returns instance id's tombstone, nil if it has none.
	tombstone(ctx context.Context, id int64) (*draupnir.Tombstone, error)
	tombstones(ctx context.Context, owner *string) ([]*draupnir.Tombstone, error)
	pruneTombstones(ctx context.Context, before time.Time) error
}

// lifetime is a change of an instance's expiry and protection: nil leaves
// a field as it is, a zero time clears it.
type lifetime struct {
	expiresAt, protectedUntil *time.Time
}
