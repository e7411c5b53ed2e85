package images

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/mock"
	"github.com/draupnir-db/draupnir/supervisor"
)

// fakeStore is the images table in memory. failures, keyed by method name,
// are returned by that method's next calls, one each.
type fakeStore struct {
	mu       sync.Mutex
	rows     map[int64]*row
	failures map[string][]error
	calls    map[string]int
	node     string // whose images adopt makes them
}

func newFakeStore() *fakeStore {
	return &fakeStore{rows: map[int64]*row{}, failures: map[string][]error{}, calls: map[string]int{}}
}

// call counts a call of method and returns its next failure, if any.
// f.mu must be held.
func (f *fakeStore) call(method string) error {
	f.calls[method]++
	if q := f.failures[method]; len(q) > 0 {
		f.failures[method] = q[1:]
		return q[0]
	}
	return nil
}

func (f *fakeStore) failNext(method string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[method] = append(f.failures[method], errs...)
}

func (f *fakeStore) add(r row) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows[r.ID] = &r
}

// row returns a copy of image id's row, or nil.
func (f *fakeStore) row(id int64) *row {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.rows[id]; r != nil {
		c := *r
		return &c
	}
	return nil
}

func (f *fakeStore) get(ctx context.Context, id int64) (*row, error) {
	f.mu.Lock()
	err := f.call("get")
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r := f.row(id); r != nil {
		return r, nil
	}
	return nil, notFound(id)
}

func (f *fakeStore) listAll(ctx context.Context) ([]*row, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("listAll"); err != nil {
		return nil, err
	}
	var out []*row
	for _, r := range f.rows {
		c := *r
		out = append(out, &c)
	}
	slices.SortFunc(out, func(a, b *row) int { return int(a.ID - b.ID) })
	return out, nil
}

func (f *fakeStore) insert(ctx context.Context, source string, backedUpAt time.Time, script string) (*row, error) {
	return nil, errors.New("the fake store makes no images")
}

func (f *fakeStore) insertSaved(ctx context.Context, owner string, parent, instanceID int64) (*row, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("insertSaved"); err != nil {
		return nil, err
	}
	p := f.rows[parent]
	if p == nil || p.State != draupnir.ImageReady {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is not ready", parent)
	}
	var id int64
	for k := range f.rows {
		id = max(id, k)
	}
	r := *p
	r.ID, r.State, r.Owner, r.ParentImageID, r.FromInstanceID = id+1, draupnir.ImageFinalising, owner, parent, instanceID
	r.AnonymisationScript = ""
	f.rows[r.ID] = &r
	c := r
	return &c, nil
}

func (f *fakeStore) transition(ctx context.Context, id int64, from []draupnir.ImageState, to draupnir.ImageState) (*row, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("transition"); err != nil {
		return nil, false, err
	}
	r := f.rows[id]
	if r == nil {
		return nil, false, notFound(id)
	}
	if !slices.Contains(from, r.State) {
		c := *r
		return &c, false, nil
	}
	r.State = to
	c := *r
	return &c, true, nil
}

func (f *fakeStore) startUpload(ctx context.Context, id int64) (*row, bool, error) {
	return f.transition(ctx, id, []draupnir.ImageState{draupnir.ImageCreated, draupnir.ImageUploading, draupnir.ImageFailed}, draupnir.ImageUploading)
}

func (f *fakeStore) fail(ctx context.Context, id int64, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("fail"); err != nil {
		return err
	}
	if r := f.rows[id]; r != nil {
		r.State, r.Error = draupnir.ImageFailed, reason
	}
	return nil
}

func (f *fakeStore) ready(ctx context.Context, id int64, size int64, version, database, superuser string) (*row, error) {
	return nil, errors.New("the fake store readies no images")
}

func (f *fakeStore) update(ctx context.Context, id int64, patch draupnir.ImagePatch) (*row, error) {
	return nil, errors.New("the fake store changes no images")
}

func (f *fakeStore) adopt(ctx context.Context, id int64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("adopt"); err != nil {
		return false, err
	}
	r := f.rows[id]
	if r == nil || r.Node != "" {
		return false, nil
	}
	r.Node = f.node
	return true, nil
}

func (f *fakeStore) delete(ctx context.Context, id int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("delete"); err != nil {
		return err
	}
	delete(f.rows, id)
	return nil
}

// fakePostgres is a supervisor that records what it is asked to stop and
// starts nothing.
type fakePostgres struct {
	mu       sync.Mutex
	stopDirs []string
}

var errNoPostgres = errors.New("no postgres in a unit test")

func (f *fakePostgres) Start(context.Context, supervisor.Spec) (*supervisor.Process, error) {
	return nil, errNoPostgres
}

func (f *fakePostgres) StopDataDir(ctx context.Context, dataDir string, mode supervisor.StopMode, timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopDirs = append(f.stopDirs, dataDir)
	return nil
}

func (f *fakePostgres) stopped() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.stopDirs)
}

func (f *fakePostgres) BinDir(string) (string, error) { return "", errNoPostgres }
func (f *fakePostgres) Chown(string) error            { return errNoPostgres }
func (f *fakePostgres) Command(ctx context.Context, name string, args ...string) *osexec.Cmd {
	return osexec.CommandContext(ctx, "false")
}
func (f *fakePostgres) PSQL(context.Context, string, string, int, string, string, string) (string, error) {
	return "", errNoPostgres
}
func (f *fakePostgres) InitDB(context.Context, string, string) error { return errNoPostgres }

// env is a Service on fakes, with the fakes at hand.
type env struct {
	s     *Service
	store *fakeStore
	pg    *fakePostgres
	vol   *mock.Btrfs
}

var uploader = draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	opts := Options{
		UploadsDir:   filepath.Join(root, "image_uploads"),
		SnapshotsDir: filepath.Join(root, "image_snapshots"),
		RunDir:       filepath.Join(root, "run"),
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, d := range []string{opts.UploadsDir, opts.SnapshotsDir, opts.RunDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{store: newFakeStore(), pg: &fakePostgres{}, vol: &mock.Btrfs{}}
	e.s = newService(opts, deps{postgres: e.pg, volumes: e.vol, store: e.store})
	t.Cleanup(e.s.Close)
	return e
}

// image adds a row for image id in state, with the subvolumes named: any of
// "upload", "snapshot" and "work".
func (e *env) image(t *testing.T, id int64, state draupnir.ImageState, subvols ...string) {
	t.Helper()
	e.store.add(row{Image: draupnir.Image{ID: id, State: state, Database: "app"}, Superuser: "postgres"})
	for _, sv := range subvols {
		path := map[string]string{"upload": e.s.uploadDir(id), "snapshot": e.s.SnapshotDir(id), "work": e.s.workDir(id)}[sv]
		if err := e.vol.AddSubvolume(path, sv == "snapshot"); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) exists(path string) bool {
	ok, _ := e.vol.IsSubvolume(path)
	return ok
}
