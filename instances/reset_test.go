package instances

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

const otherImage = 2

// addOtherImage gives e a second ready image, otherImage, whose snapshot
// holds a file named "other" and a pg_wal directory.
func addOtherImage(t *testing.T, e *env) {
	t.Helper()
	snap := filepath.Join(e.root, "image_snapshots", "2")
	if err := e.vol.AddSubvolume(snap, true); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snap, "other"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(snap, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	e.images[otherImage] = &draupnir.ReadyImage{ID: otherImage, Database: "shop", Snapshot: snap, Superuser: "admin"}
	e.store.mu.Lock()
	e.store.ready[otherImage] = "shop"
	e.store.mu.Unlock()
}

// written marks the data of instance id as changed by its owner.
func written(t *testing.T, e *env, id int64) string {
	t.Helper()
	f := filepath.Join(e.s.dir(id), "written")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// A reset replaces the data with the image's, on the same port with the
// same credentials and owner, restarted; the disk limit applies to the new
// data as at create; the old postgres is stopped and no longer watched.
func TestReset(t *testing.T) {
	const limit = 4 << 30
	tests := []struct {
		name      string
		image     int64
		wantImage int64
		wantDB    string
		wantSuper string
	}{
		{name: "to its own image", wantImage: testImage, wantDB: "app", wantSuper: "postgres"},
		{name: "to its own image named", image: testImage, wantImage: testImage, wantDB: "app", wantSuper: "postgres"},
		{name: "to another image", image: otherImage, wantImage: otherImage, wantDB: "shop", wantSuper: "admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.DiskLimit = limit })
			addOtherImage(t, e)
			if err := os.Mkdir(filepath.Join(e.images[testImage].Snapshot, "pg_wal"), 0o700); err != nil {
				t.Fatal(err)
			}
			in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mark := written(t, e, in.ID)
			_, procs := e.pg.started()
			old := procs[0]

			got, err := e.s.Reset(context.Background(), alice, in.ID, tt.image)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != in.ID || got.Port != in.Port || got.Username != in.Username || got.Password != in.Password ||
				got.Owner != alice.Name || got.ImageID != tt.wantImage || got.Database != tt.wantDB || got.State != draupnir.InstanceRunning {
				t.Errorf("reset gave %+v; made %+v", got, in)
			}
			if _, err := os.Stat(mark); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("what the owner wrote survived the reset: %v", err)
			}
			_, err = os.Stat(filepath.Join(e.s.dir(in.ID), "other"))
			if isOther := err == nil; isOther != (tt.wantImage == otherImage) {
				t.Errorf("data of image %d after a reset to %d", map[bool]int{true: otherImage, false: testImage}[isOther], tt.wantImage)
			}
			if !old.stopped() {
				t.Error("the old postgres still runs")
			}
			specs, procs := e.pg.started()
			if len(specs) != 2 || specs[1].Port != in.Port || specs[1].DataDir != e.s.dir(in.ID) {
				t.Errorf("starts %+v, want a second one on port %d", specs, in.Port)
			}
			e.s.mu.Lock()
			tr := e.s.procs[in.ID]
			e.s.mu.Unlock()
			if tr == nil || tr.proc != procs[1] {
				t.Error("the new postgres is not watched")
			}
			e.mu.Lock()
			last := e.roles[len(e.roles)-1]
			e.mu.Unlock()
			if want := (roleCall{e.s.sockDir(in.ID), in.Port, tt.wantSuper, tt.wantDB, in.Username, in.Password}); last != want {
				t.Errorf("role prepared with %+v, want %+v", last, want)
			}
			if got, ok := e.vol.Limit(e.s.dir(in.ID)); !ok || got != limit {
				t.Errorf("data limit %d (set %v) after the reset, want %d", got, ok, limit)
			}
			if got, ok := e.vol.Limit(filepath.Join(e.s.dir(in.ID), "pg_wal")); !ok || got != walLimit(limit) {
				t.Errorf("WAL limit %d (set %v) after the reset, want %d", got, ok, walLimit(limit))
			}
			if subs := e.vol.Subvolumes(); len(subs) != 4 { // two images, the instance and its WAL
				t.Errorf("subvolumes after the reset: %v", subs)
			}
			if r := e.store.row(in.ID); r.State != draupnir.InstanceRunning || r.ImageID != tt.wantImage {
				t.Errorf("row %+v after the reset", r)
			}
		})
	}
}

// A reset that cannot be done changes nothing: the instance keeps its data
// and its running postgres.
func TestResetRefused(t *testing.T) {
	tests := []struct {
		name  string
		as    draupnir.Principal
		id    func(in *draupnir.Instance) int64
		image int64
		state draupnir.InstanceState // set on the row first, if any
		owner *string
		kind  draupnir.Kind
		msg   string
	}{
		{name: "someone else's", as: draupnir.Principal{Name: "mallory@example.com"}, kind: draupnir.KindNotFound, msg: "does not exist"},
		{name: "missing", id: func(*draupnir.Instance) int64 { return 99 }, kind: draupnir.KindNotFound, msg: "instance 99 does not exist"},
		{name: "a warm one", owner: new(string), as: draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, kind: draupnir.KindNotFound},
		{name: "no such image", image: 7, kind: draupnir.KindNotFound, msg: "image 7 does not exist"},
		{name: "being created", state: draupnir.InstanceCreating, kind: draupnir.KindConflict, msg: "try again"},
		{name: "being destroyed", state: draupnir.InstanceDestroying, kind: draupnir.KindConflict, msg: "try again"},
		{name: "being reset", state: draupnir.InstanceResetting, kind: draupnir.KindConflict, msg: "try again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mark := written(t, e, in.ID)
			e.store.mu.Lock()
			if tt.state != "" {
				e.store.rows[in.ID].State = tt.state
			}
			if tt.owner != nil {
				e.store.rows[in.ID].Owner = *tt.owner
			}
			e.store.mu.Unlock()
			as, id := alice, in.ID
			if tt.as.Name != "" {
				as = tt.as
			}
			if tt.id != nil {
				id = tt.id(in)
			}
			_, err = e.s.Reset(context.Background(), as, id, tt.image)
			if draupnir.KindOf(err) != tt.kind || !strings.Contains(draupnir.ClientMessage(err), tt.msg) {
				t.Fatalf("Reset = %v (kind %d), want kind %d saying %q", err, draupnir.KindOf(err), tt.kind, tt.msg)
			}
			if _, err := os.Stat(mark); err != nil {
				t.Errorf("a refused reset lost the data: %v", err)
			}
			if specs, procs := e.pg.started(); len(specs) != 1 || procs[0].stopped() {
				t.Error("a refused reset touched the postgres")
			}
			if r := e.store.row(in.ID); r.ImageID != testImage || (tt.state == "" && r.State != draupnir.InstanceRunning) {
				t.Errorf("a refused reset changed the row: %+v", r)
			}
		})
	}
}

// A reset whose new postgres does not start fails the instance with the
// reason; another reset then brings it back.
func TestResetFailsThenRecovers(t *testing.T) {
	e := newEnv(t, nil)
	in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("no shared memory")
	e.pg.startErr = func(supervisor.Spec) error { return boom }
	if _, err := e.s.Reset(context.Background(), alice, in.ID, 0); !errors.Is(err, boom) {
		t.Fatalf("Reset = %v, want the start's error", err)
	}
	if r := e.store.row(in.ID); r.State != draupnir.InstanceFailed || !strings.Contains(r.Error, boom.Error()) || !strings.Contains(r.Error, "reset") {
		t.Errorf("row after a failed reset: %+v", r)
	}
	e.pg.startErr = nil
	got, err := e.s.Reset(context.Background(), alice, in.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != draupnir.InstanceRunning || got.Error != "" || got.Port != in.Port {
		t.Errorf("second reset gave %+v", got)
	}
}

// A destroy is refused while a reset runs, and a crash recovery leaves a
// resetting instance to its reset.
func TestResettingIsLeftAlone(t *testing.T) {
	e := newEnv(t, nil)
	in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := e.store.claimReset(context.Background(), in.ID, testImage); !ok || err != nil {
		t.Fatalf("claimReset = %v, %v", ok, err)
	}
	if err := e.s.Destroy(context.Background(), alice, in.ID); !errors.Is(err, draupnir.ErrConflict) {
		t.Errorf("Destroy while resetting = %v, want a conflict", err)
	}
	if ok, _ := e.store.setLiveState(context.Background(), in.ID, draupnir.InstanceRunning, ""); ok {
		t.Error("a crash recovery overwrote the resetting state")
	}
	if list, _ := e.store.listOfImage(context.Background(), testImage, true); len(list) != 0 {
		t.Errorf("an image destroy would tear down a resetting instance: %v", list)
	}
}

// A server that died mid-reset finishes the reset at the next start,
// whichever step it reached: the postgres still running on the old data,
// the data gone, or the new data in place without its password.
func TestReconcileFinishesReset(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, e *env, dir string)
	}{
		{name: "old data, postgres running", prepare: func(t *testing.T, e *env, dir string) {
			e.pg.adoptable[dir] = &fakeProc{pid: 77, dataDir: dir, done: make(chan struct{})}
		}},
		{name: "data deleted", prepare: func(t *testing.T, e *env, dir string) {
			if err := e.vol.Delete(dir); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "new data in place", prepare: func(t *testing.T, e *env, dir string) {
			if err := e.vol.Delete(dir); err != nil {
				t.Fatal(err)
			}
			if err := e.vol.Snapshot(e.images[otherImage].Snapshot, dir, false); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.DiskLimit = 1 << 30 })
			addOtherImage(t, e)
			dir := filepath.Join(e.root, "instances", "5")
			if err := e.vol.Snapshot(e.images[testImage].Snapshot, dir, false); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "written"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			e.store.add(draupnir.Instance{ID: 5, ImageID: otherImage, Owner: alice.Name, State: draupnir.InstanceResetting,
				Port: minPort + 3, Username: draupnir.InstanceRole, Password: "secret"})
			tt.prepare(t, e, dir)
			adopted := e.pg.adoptable[dir]

			if err := e.s.Reconcile(context.Background()); err != nil {
				t.Fatal(err)
			}
			if adopted != nil && !adopted.stopped() {
				t.Error("the postgres on the old data still runs")
			}
			if _, err := os.Stat(filepath.Join(dir, "written")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the old data survived: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "other")); err != nil {
				t.Errorf("not the target image's data: %v", err)
			}
			r := e.store.row(5)
			if r.State != draupnir.InstanceRunning || r.Port != minPort+3 || r.Password != "secret" {
				t.Errorf("row after reconcile: %+v", r)
			}
			e.mu.Lock()
			roles := e.roles
			e.mu.Unlock()
			if want := (roleCall{e.s.sockDir(5), minPort + 3, "admin", "shop", draupnir.InstanceRole, "secret"}); len(roles) != 1 || roles[0] != want {
				t.Errorf("roles prepared %+v, want %+v", roles, want)
			}
			if got, ok := e.vol.Limit(dir); !ok || got != 1<<30 {
				t.Errorf("disk limit %d (set %v) after the finished reset", got, ok)
			}
		})
	}
}
