package images

import (
	"context"
	osexec "os/exec"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

// deps are what the service reaches outside its own logic: postgres through
// the supervisor, btrfs and the state database. New gives it the real ones;
// the tests give it fakes, so that the lifecycle logic runs quickly and
// without root.
type deps struct {
	postgres postgres
	volumes  volumes
	store    store
	// copies is nil for a single node.
	copies copies
}

func realDeps(opts Options) deps {
	st := pgStore{pool: opts.Pool, node: opts.Node}
	d := deps{volumes: btrfs.FS{}, store: st}
	if opts.Node != "" {
		d.copies = st
	}
	if opts.Supervisor != nil {
		// Not a nil *Supervisor in a non-nil postgres.
		d.postgres = opts.Supervisor
	}
	return d
}

// postgres is what the service needs of the supervisor to boot a backup
// privately and run its tools (*supervisor.Supervisor).
type postgres interface {
	Start(ctx context.Context, spec supervisor.Spec) (*supervisor.Process, error)
	StopDataDir(ctx context.Context, dataDir string, mode supervisor.StopMode, timeout time.Duration) error
	BinDir(major string) (string, error)
	Chown(root string) error
	Command(ctx context.Context, name string, args ...string) *osexec.Cmd
	PSQL(ctx context.Context, bin, socketDir string, port int, user, db, script string) (string, error)
	InitDB(ctx context.Context, major, dataDir string) error
}

// volumes is what the service needs of btrfs (btrfs.FS) to freeze and
// delete images.
type volumes interface {
	Snapshot(src, dst string, readOnly bool) error
	Delete(path string) error
	IsSubvolume(path string) (bool, error)
}

// store is the images table (pgStore).
type store interface {
	get(ctx context.Context, id int64) (*row, error)
	listAll(ctx context.Context) ([]*row, error)
	insert(ctx context.Context, source string, backedUpAt time.Time, script string) (*row, error)
	// insertSaved registers an image being saved from an instance of
	// image parent (which must be ready), finalising, with the parent's
	// database and superuser.
	insertSaved(ctx context.Context, owner string, parent, instanceID int64) (*row, error)
	// transition moves image id from one of the states in from to state
	// to, atomically. When the image is in another state it returns the
	// image as it is, with ok false.
	transition(ctx context.Context, id int64, from []draupnir.ImageState, to draupnir.ImageState) (r *row, ok bool, err error)
	// startUpload marks image id uploading if it accepts uploads, and
	// returns it as it is, with ok false, if it does not.
	startUpload(ctx context.Context, id int64) (r *row, ok bool, err error)
	fail(ctx context.Context, id int64, reason string) error
	ready(ctx context.Context, id int64, size int64, version, database, superuser string) (*row, error)
	update(ctx context.Context, id int64, patch draupnir.ImagePatch) (*row, error)
	delete(ctx context.Context, id int64) error
	// adopt makes image id, of no node, this node's, unless another node
	// did first.
	adopt(ctx context.Context, id int64) (bool, error)
}

// copies are the images' copies on the nodes of a cluster (pgStore).
type copies interface {
	copies(ctx context.Context, ids []int64) (map[int64][]draupnir.ImageCopy, error)
	readyHere(ctx context.Context, id int64) (bool, error)
	markDestroying(ctx context.Context, id int64) (int64, error)
}
