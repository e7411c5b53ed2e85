package instances

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/mock"
	"github.com/draupnir-db/draupnir/supervisor"
)

// fakeStore is the instances table in memory. fail, keyed by method name,
// makes a method return an error.
type fakeStore struct {
	mu     sync.Mutex
	rows   map[int64]*draupnir.Instance
	dead   map[int64]*draupnir.Tombstone
	claims map[int64]draupnir.Tombstone // the rules that claimed rows
	next   int64
	ready  map[int64]string // ready images and their databases
	fail   map[string]error
	// ownerLocks counts lockOwner calls.
	ownerLocks int
	// node is the node the store serves: listAll lists its rows, and
	// insert makes rows of it.
	node string
}

func newFakeStore(ready map[int64]string) *fakeStore {
	return &fakeStore{rows: map[int64]*draupnir.Instance{}, dead: map[int64]*draupnir.Tombstone{},
		claims: map[int64]draupnir.Tombstone{}, ready: ready, fail: map[string]error{}}
}

func (f *fakeStore) failing(method string) error { return f.fail[method] }

// row returns a copy of instance id's row, or nil.
func (f *fakeStore) row(id int64) *draupnir.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.rows[id]; r != nil {
		c := *r
		return &c
	}
	return nil
}

// add puts a row in the table, as one left by an earlier run.
func (f *fakeStore) add(in draupnir.Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in.Database = f.ready[in.ImageID]
	f.rows[in.ID] = &in
	f.next = max(f.next, in.ID)
}

func (f *fakeStore) get(ctx context.Context, id int64) (*draupnir.Instance, error) {
	if err := f.failing("get"); err != nil {
		return nil, err
	}
	if r := f.row(id); r != nil {
		return r, nil
	}
	return nil, notFound(id)
}

func (f *fakeStore) listWhere(keep func(*draupnir.Instance) bool) []*draupnir.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Instance
	for _, r := range f.rows {
		if keep(r) {
			c := *r
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *draupnir.Instance) int { return int(a.ID - b.ID) })
	return out
}

func (f *fakeStore) listAll(ctx context.Context) ([]*draupnir.Instance, error) {
	return f.listWhere(func(r *draupnir.Instance) bool { return r.Node == f.node }), f.failing("listAll")
}

func (f *fakeStore) unplaced(ctx context.Context) ([]int64, error) {
	var ids []int64
	for _, r := range f.listWhere(func(r *draupnir.Instance) bool { return r.Node == "" }) {
		ids = append(ids, r.ID)
	}
	return ids, f.failing("unplaced")
}

func (f *fakeStore) adopt(ctx context.Context, id int64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.Node != "" {
		return false, f.failing("adopt")
	}
	r.Node = f.node
	return true, f.failing("adopt")
}

func (f *fakeStore) listOwned(ctx context.Context, owner *string) ([]*draupnir.Instance, error) {
	return f.listWhere(func(r *draupnir.Instance) bool {
		return r.Owner != "" && (owner == nil || r.Owner == *owner)
	}), f.failing("listOwned")
}

// listOfImage ignores here: the fake holds one node's instances.
func (f *fakeStore) listOfImage(ctx context.Context, imageID int64, here bool) ([]*draupnir.Instance, error) {
	return f.listWhere(func(r *draupnir.Instance) bool {
		return r.ImageID == imageID && r.State != draupnir.InstanceCreating && r.State != draupnir.InstanceResetting
	}), f.failing("listOfImage")
}

// lockOwner counts the locks taken; the fake serves one node, whose
// portMu is lock enough.
func (f *fakeStore) lockOwner(ctx context.Context, owner string) (func(), error) {
	if err := f.failing("lockOwner"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ownerLocks++
	return func() {}, nil
}

func (f *fakeStore) usage(ctx context.Context, min, max int) (int, int, error) {
	all := f.listWhere(func(*draupnir.Instance) bool { return true })
	return len(all), max - min + 1 - len(all), f.failing("usage")
}

// freePort is the lowest port of [min, max] that no row holds and that is
// not in skip, or 0. f.mu must be held.
func (f *fakeStore) freePort(min, max int, skip []int32) int {
	for p := min; p <= max; p++ {
		taken := slices.Contains(skip, int32(p))
		for _, r := range f.rows {
			taken = taken || r.Port == p
		}
		if !taken {
			return p
		}
	}
	return 0
}

func (f *fakeStore) nextID(ctx context.Context) (int64, error) {
	if err := f.failing("nextID"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	return f.next, nil
}

func (f *fakeStore) insert(ctx context.Context, id, imageID int64, owner, username, password string, min, max int, skip []int32, expires time.Time) (*draupnir.Instance, error) {
	if err := f.failing("insert"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ready[imageID]; !ok {
		return nil, fmt.Errorf("insert or update on table \"instances\" violates foreign key constraint")
	}
	port := f.freePort(min, max, skip)
	if port == 0 {
		return nil, nil
	}
	r := &draupnir.Instance{ID: id, ImageID: imageID, Owner: owner, State: draupnir.InstanceCreating,
		Port: port, Username: username, Password: password, Database: f.ready[imageID], ExpiresAt: expires, Node: f.node}
	f.rows[r.ID] = r
	c := *r
	return &c, nil
}

func (f *fakeStore) movePort(ctx context.Context, id int64, min, max int, skip []int32) (int, error) {
	if err := f.failing("movePort"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	port := f.freePort(min, max, skip)
	if port == 0 || f.rows[id] == nil {
		return 0, fmt.Errorf("moving instance %d to another port: no port", id)
	}
	f.rows[id].Port = port
	return port, nil
}

func (f *fakeStore) claimWarm(ctx context.Context, imageID int64, owner string, expires time.Time) (*draupnir.Instance, error) {
	if err := f.failing("claimWarm"); err != nil {
		return nil, err
	}
	warm := f.listWhere(func(r *draupnir.Instance) bool { return r.ImageID == imageID && r.State == draupnir.InstanceWarm })
	if len(warm) == 0 {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[warm[0].ID]
	r.Owner, r.State, r.ExpiresAt = owner, draupnir.InstanceRunning, expires
	c := *r
	return &c, nil
}

func (f *fakeStore) poolSizes(ctx context.Context) (map[int64]int, error) {
	if err := f.failing("poolSizes"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sizes := map[int64]int{}
	for id := range f.ready {
		sizes[id] = 0
	}
	for _, r := range f.rows {
		if _, ok := f.ready[r.ImageID]; ok && r.State == draupnir.InstanceWarm {
			sizes[r.ImageID]++
		}
	}
	return sizes, nil
}

func (f *fakeStore) setState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) error {
	if err := f.failing("setState"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.rows[id]; r != nil {
		r.State, r.Error = state, reason
	}
	return nil
}

func (f *fakeStore) setDone(ctx context.Context, id int64, state draupnir.InstanceState) error {
	if err := f.failing("setDone"); err != nil {
		return err
	}
	return f.setState(ctx, id, state, "")
}

func (f *fakeStore) setLiveState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.State == draupnir.InstanceDestroying || r.State == draupnir.InstanceResetting {
		return false, nil
	}
	r.State, r.Error = state, reason
	return true, nil
}

func (f *fakeStore) claimDestroy(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.State == draupnir.InstanceDestroying || r.State == draupnir.InstanceResetting {
		return false, nil
	}
	r.State = draupnir.InstanceDestroying
	f.claim(r, reason, detail)
	return true, nil
}

// claim records that rule reason claimed r; f.mu must be held.
func (f *fakeStore) claim(r *draupnir.Instance, reason draupnir.DestroyReason, detail string) {
	if reason != "" {
		f.claims[r.ID] = draupnir.Tombstone{ID: r.ID, ImageID: r.ImageID, Owner: r.Owner, Reason: reason, Detail: detail}
	}
}

func (f *fakeStore) claimReset(ctx context.Context, id, imageID int64) (bool, error) {
	if err := f.failing("claimReset"); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.Owner == "" || !slices.Contains([]draupnir.InstanceState{draupnir.InstanceRunning, draupnir.InstanceStopped, draupnir.InstanceFailed}, r.State) {
		return false, nil
	}
	r.State, r.ImageID, r.Error, r.Database = draupnir.InstanceResetting, imageID, "", f.ready[imageID]
	r.LastActiveAt = time.Now()
	return true, nil
}

func (f *fakeStore) delete(ctx context.Context, id int64) error {
	if err := f.failing("delete"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if t, ok := f.claims[id]; ok && t.Owner != "" {
		t.DestroyedAt = time.Now()
		f.dead[id] = &t
	}
	delete(f.rows, id)
	return nil
}

func (f *fakeStore) setLifetime(ctx context.Context, id int64, l lifetime) (*draupnir.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.State == draupnir.InstanceDestroying || r.Owner == "" {
		return nil, notFound(id)
	}
	if l.expiresAt != nil {
		r.ExpiresAt = *l.expiresAt
	}
	if l.protectedUntil != nil {
		r.ProtectedUntil = *l.protectedUntil
	}
	c := *r
	return &c, nil
}

// claimLapsed holds the same conditions as pgStore's query.
func (f *fakeStore) claimLapsed(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string, now, idleBefore time.Time) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rows[id]
	if r == nil || r.Owner == "" || r.Protected(now) {
		return false, nil
	}
	switch r.State {
	case draupnir.InstanceRunning, draupnir.InstanceStopped, draupnir.InstanceFailed:
	default:
		return false, nil
	}
	holds := false
	switch reason {
	case draupnir.ReasonExpired:
		holds = !r.ExpiresAt.IsZero() && !r.ExpiresAt.After(now)
	case draupnir.ReasonIdle:
		holds = !r.LastActiveAt.After(idleBefore)
	}
	if holds {
		r.State = draupnir.InstanceDestroying
		f.claim(r, reason, detail)
	}
	return holds, nil
}

func (f *fakeStore) tombstone(ctx context.Context, id int64) (*draupnir.Tombstone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dead[id], nil
}

func (f *fakeStore) tombstones(ctx context.Context, owner *string) ([]*draupnir.Tombstone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Tombstone
	for _, t := range f.dead {
		if owner == nil || t.Owner == *owner {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b *draupnir.Tombstone) int { return int(b.ID - a.ID) })
	return out, nil
}

func (f *fakeStore) pruneTombstones(ctx context.Context, before time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, t := range f.dead {
		if t.DestroyedAt.Before(before) {
			delete(f.dead, id)
		}
	}
	return nil
}

func (f *fakeStore) touch(ctx context.Context, id int64, t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.rows[id]; r != nil && r.LastActiveAt.Before(t) {
		r.LastActiveAt = t
	}
	return nil
}

func (f *fakeStore) countOwned(ctx context.Context, owner string) (int, error) {
	return len(f.listWhere(func(r *draupnir.Instance) bool { return r.Owner == owner })), nil
}

// fakeProc is a postgres that runs until it is stopped or crashes.
type fakeProc struct {
	pid     int
	dataDir string
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	stops   int
}

func (p *fakeProc) PID() int              { return p.pid }
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) exit()                 { p.once.Do(func() { close(p.done) }) }

func (p *fakeProc) Stop(ctx context.Context, mode supervisor.StopMode, timeout time.Duration) error {
	p.mu.Lock()
	p.stops++
	p.mu.Unlock()
	p.exit()
	return nil
}

func (p *fakeProc) stopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stops > 0
}

// fakePostgres is the supervisor: Start returns a fakeProc unless startErr
// says otherwise; Adopt returns what adoptable holds for a data directory.
type fakePostgres struct {
	mu        sync.Mutex
	startErr  func(spec supervisor.Spec) error
	specs     []supervisor.Spec
	procs     []*fakeProc
	adoptable map[string]*fakeProc
	stopDirs  []string
}

func (f *fakePostgres) Start(ctx context.Context, spec supervisor.Spec) (process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, spec)
	if f.startErr != nil {
		if err := f.startErr(spec); err != nil {
			return nil, err
		}
	}
	p := &fakeProc{pid: 1000 + len(f.specs), dataDir: spec.DataDir, done: make(chan struct{})}
	f.procs = append(f.procs, p)
	return p, nil
}

func (f *fakePostgres) Adopt(dataDir string) (process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.adoptable[dataDir]; p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("adopt postgres of %s: %w", dataDir, supervisor.ErrNotRunning)
}

func (f *fakePostgres) StopDataDir(ctx context.Context, dataDir string, mode supervisor.StopMode, timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopDirs = append(f.stopDirs, dataDir)
	if p := f.adoptable[dataDir]; p != nil {
		p.Stop(ctx, mode, timeout)
		delete(f.adoptable, dataDir)
	}
	return nil
}

func (f *fakePostgres) BinDir(major string) (string, error) {
	return "", errors.New("no postgres binaries in a unit test")
}

func (f *fakePostgres) UID() int { return os.Getuid() }
func (f *fakePostgres) GID() int { return os.Getgid() }

// started returns the specs of every start so far, and the processes of
// those that succeeded.
func (f *fakePostgres) started() ([]supervisor.Spec, []*fakeProc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.specs), slices.Clone(f.procs)
}

// fakeImages answers Ready from a map; an image not in it does not exist.
type fakeImages map[int64]*draupnir.ReadyImage

func (f fakeImages) Ready(ctx context.Context, id int64) (*draupnir.ReadyImage, error) {
	if im := f[id]; im != nil {
		return im, nil
	}
	return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
}

// SaveImage has req.Copy write into saved-N beside the parent's snapshot,
// N the instance, and returns image 100 with req's lineage.
func (f fakeImages) SaveImage(ctx context.Context, req draupnir.ImageSave) (*draupnir.Image, error) {
	parent := f[req.ParentImageID]
	if parent == nil {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", req.ParentImageID)
	}
	dst := filepath.Join(filepath.Dir(parent.Snapshot), fmt.Sprintf("saved-%d", req.FromInstanceID))
	if err := req.Copy(ctx, dst); err != nil {
		return nil, err
	}
	return &draupnir.Image{ID: 100, State: draupnir.ImageReady, Owner: req.Owner,
		ParentImageID: req.ParentImageID, FromInstanceID: req.FromInstanceID}, nil
}

// fakeErrImages answers Ready and SaveImage with an error.
type fakeErrImages struct{ err error }

func (f fakeErrImages) Ready(context.Context, int64) (*draupnir.ReadyImage, error) { return nil, f.err }
func (f fakeErrImages) SaveImage(context.Context, draupnir.ImageSave) (*draupnir.Image, error) {
	return nil, f.err
}

// roleCall is one call of prepareRole.
type roleCall struct {
	sockDir                       string
	port                          int
	superuser, db, role, password string
}

// env is a Service on fakes, with the fakes at hand.
type env struct {
	s       *Service
	store   *fakeStore
	pg      *fakePostgres
	vol     *mock.Btrfs
	images  fakeImages
	root    string
	mu      sync.Mutex
	roles   []roleCall
	roleErr error
	// pins says, per call of prepareRole, whether it was asked to pin the
	// limits; pinned is what it answers.
	pins    []bool
	pinned  bool
	warmUps int
	// checkpoints are the calls of checkpoint (role and password unset).
	checkpoints []roleCall
	copied      []string     // what copyTree copied
	taken       map[int]bool // ports another program holds
	// use is what probe answers for an instance, by port; no entry fails.
	use map[int]activity
}

const (
	testImage = 1
	minPort   = 40100
	maxPort   = 40109
)

// newEnv returns a Service on fakes with one ready image, testImage, whose
// snapshot exists. change, if given, adjusts the options first.
func newEnv(t *testing.T, change func(*Options)) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{
		store: newFakeStore(map[int64]string{testImage: "app"}),
		pg:    &fakePostgres{adoptable: map[string]*fakeProc{}},
		vol:   &mock.Btrfs{},
		root:  root,
		taken: map[int]bool{},
		use:   map[int]activity{},
	}
	snap := filepath.Join(root, "image_snapshots", "1")
	if err := e.vol.AddSubvolume(snap, true); err != nil {
		t.Fatal(err)
	}
	e.images = fakeImages{testImage: {ID: testImage, Database: "app", Snapshot: snap, Superuser: "postgres"}}
	for _, d := range []string{"instances", "keys"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	opts := Options{
		Images:       e.images,
		Dir:          filepath.Join(root, "instances"),
		KeysDir:      filepath.Join(root, "keys"),
		RunDir:       filepath.Join(root, "run"),
		MinPort:      minPort,
		MaxPort:      maxPort,
		Hostname:     "db.example.com",
		StartTimeout: time.Minute,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if change != nil {
		change(&opts)
	}
	e.store.node = opts.Node
	d := deps{
		postgres: e.pg,
		volumes:  e.vol,
		store:    e.store,
		prepareRole: func(ctx context.Context, sockDir string, port int, superuser, db, role, password string, pin bool) (bool, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.roles = append(e.roles, roleCall{sockDir, port, superuser, db, role, password})
			e.pins = append(e.pins, pin)
			return e.pinned, e.roleErr
		},
		warmUp: func(context.Context, string, int, string, string) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.warmUps++
		},
		probe: func(ctx context.Context, sockDir string, port int, superuser, db string) (activity, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			a, ok := e.use[port]
			if !ok {
				return activity{}, errors.New("connection refused")
			}
			return a, nil
		},
		checkpoint: func(ctx context.Context, sockDir string, port int, superuser, db string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.checkpoints = append(e.checkpoints, roleCall{sockDir: sockDir, port: port, superuser: superuser, db: db})
			return nil
		},
		copyTree: func(ctx context.Context, src, dst string) error {
			e.mu.Lock()
			e.copied = append(e.copied, src)
			e.mu.Unlock()
			return os.CopyFS(dst, os.DirFS(src))
		},
		portFree: func(port int) bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			return !e.taken[port]
		},
		restartWaits: []time.Duration{0, 0, 0, 0},
	}
	s, err := newService(opts, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	e.s = s
	return e
}

// eventually waits for cond, which work on other goroutines makes true.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("gave up waiting until %s", what)
}
