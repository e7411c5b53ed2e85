package instances

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

// A postgres that dies is restarted, up to len(restartWaits) times; then its
// instance is failed with the reason. A warm instance comes back warm, and
// one being destroyed is left to its destroy.
func TestCrashRestart(t *testing.T) {
	boom := errors.New("the data directory is damaged")
	tests := []struct {
		name      string
		warm      bool
		failures  int // restarts that fail before one succeeds; -1: all do
		destroy   bool
		wantState draupnir.InstanceState
		wantStart int
	}{
		{name: "restarted", wantState: draupnir.InstanceRunning, wantStart: 2},
		{name: "restarted after two failed attempts", failures: 2, wantState: draupnir.InstanceRunning, wantStart: 4},
		{name: "failed after the last attempt", failures: -1, wantState: draupnir.InstanceFailed, wantStart: 5},
		{name: "a warm one comes back warm", warm: true, wantState: draupnir.InstanceWarm, wantStart: 2},
		{name: "being destroyed", destroy: true, wantState: draupnir.InstanceDestroying, wantStart: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			state := draupnir.InstanceRunning
			if tt.warm {
				state = draupnir.InstanceWarm
			}
			in, err := e.s.create(context.Background(), testImage, map[bool]draupnir.Principal{false: alice, true: {}}[tt.warm], state, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if tt.failures != 0 {
				n := 0
				e.pg.startErr = func(supervisor.Spec) error {
					if n++; tt.failures < 0 || n <= tt.failures {
						return boom
					}
					return nil
				}
			}
			if tt.destroy {
				e.store.claimDestroy(context.Background(), in.ID, "", "")
			}
			_, procs := e.pg.started()
			crashed := procs[0]
			crashed.exit() // nobody asked it to stop
			live := tt.wantState == draupnir.InstanceRunning || tt.wantState == draupnir.InstanceWarm
			var tr *tracked
			eventually(t, "the recovery settles", func() bool {
				specs, _ := e.pg.started()
				e.s.mu.Lock()
				tr = e.s.procs[in.ID]
				e.s.mu.Unlock()
				watched := tr != nil && tr.proc != crashed
				return len(specs) == tt.wantStart && e.store.row(in.ID).State == tt.wantState &&
					watched == live && (live || tr == nil)
			})
			r := e.store.row(in.ID)
			if tt.wantState == draupnir.InstanceFailed && !strings.Contains(r.Error, boom.Error()) {
				t.Errorf("failed with %q, want the start's error", r.Error)
			}
			if live {
				// The restarted postgres is watched in turn.
				tr.proc.(*fakeProc).exit()
				eventually(t, "a second restart", func() bool {
					specs, _ := e.pg.started()
					return len(specs) == tt.wantStart+1
				})
			}
		})
	}
}

// A deliberate stop is no crash.
func TestDestroyIsNoCrash(t *testing.T) {
	e := newEnv(t, nil)
	in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Destroy(context.Background(), alice, in.ID); err != nil {
		t.Fatal(err)
	}
	e.s.Close() // waits for the watcher, which must not restart it
	if specs, _ := e.pg.started(); len(specs) != 1 {
		t.Errorf("%d starts, want 1", len(specs))
	}
	if e.store.row(in.ID) != nil {
		t.Errorf("the row survives its destroy")
	}
	if ok, _ := e.vol.IsSubvolume(e.s.dir(in.ID)); ok {
		t.Errorf("the snapshot survives its destroy")
	}
}

func TestDestroy(t *testing.T) {
	bob := draupnir.Principal{Name: "bob@example.com"}
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	tests := []struct {
		name     string
		p        draupnir.Principal
		state    draupnir.InstanceState
		owner    string
		wantKind draupnir.Kind
		gone     bool
	}{
		{name: "the owner's", p: alice, state: draupnir.InstanceRunning, owner: alice.Name, gone: true},
		{name: "by the upload principal", p: upload, state: draupnir.InstanceFailed, owner: alice.Name, gone: true},
		{name: "someone else's", p: bob, state: draupnir.InstanceRunning, owner: alice.Name, wantKind: draupnir.KindNotFound},
		{name: "a warm one", p: upload, state: draupnir.InstanceWarm, owner: "", wantKind: draupnir.KindNotFound},
		{name: "still being created", p: alice, state: draupnir.InstanceCreating, owner: alice.Name, wantKind: draupnir.KindConflict},
		{name: "already being destroyed", p: alice, state: draupnir.InstanceDestroying, owner: alice.Name, wantKind: draupnir.KindConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.store.add(draupnir.Instance{ID: 5, ImageID: testImage, Owner: tt.owner, State: tt.state, Port: minPort})
			if err := e.vol.AddSubvolume(e.s.dir(5), false); err != nil {
				t.Fatal(err)
			}
			err := e.s.Destroy(context.Background(), tt.p, 5)
			if tt.gone {
				if err != nil {
					t.Fatal(err)
				}
				if e.store.row(5) != nil || len(e.vol.Subvolumes()) != 1 {
					t.Errorf("left behind: row %+v, subvolumes %v", e.store.row(5), e.vol.Subvolumes())
				}
				if len(e.pg.stopDirs) != 1 || e.pg.stopDirs[0] != e.s.dir(5) {
					t.Errorf("stopped %v, want the instance's postgres", e.pg.stopDirs)
				}
				return
			}
			if draupnir.KindOf(err) != tt.wantKind {
				t.Fatalf("got %v, want kind %v", err, tt.wantKind)
			}
			if r := e.store.row(5); r == nil || r.State != tt.state {
				t.Errorf("a refused destroy changed the row: %+v", r)
			}
		})
	}
	t.Run("a failed teardown leaves it failed, to destroy again", func(t *testing.T) {
		e := newEnv(t, nil)
		e.store.add(draupnir.Instance{ID: 5, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceRunning, Port: minPort})
		e.vol.AddSubvolume(e.s.dir(5), false)
		e.vol.Fail = func(op, path string) error {
			if op == "Delete" {
				return errors.New("device busy")
			}
			return nil
		}
		if err := e.s.Destroy(context.Background(), alice, 5); err == nil {
			t.Fatal("destroy succeeded")
		}
		if r := e.store.row(5); r == nil || r.State != draupnir.InstanceFailed || !strings.Contains(r.Error, "destroy it again") {
			t.Errorf("row %+v, want failed", r)
		}
		e.vol.Fail = nil
		if err := e.s.Destroy(context.Background(), alice, 5); err != nil || e.store.row(5) != nil {
			t.Errorf("destroying again: %v", err)
		}
	})
}

// Destroying an image's instances leaves those being created to finish:
// the image's row cannot go while they refer to it, so its destroy answers
// a conflict instead of failing them half-way.
func TestDestroyAllOfImage(t *testing.T) {
	e := newEnv(t, nil)
	rows := []draupnir.Instance{
		{ID: 1, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceRunning, Port: minPort},
		{ID: 2, ImageID: testImage, Owner: "", State: draupnir.InstanceWarm, Port: minPort + 1},
		{ID: 3, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceCreating, Port: minPort + 2},
		{ID: 4, ImageID: 2, Owner: alice.Name, State: draupnir.InstanceRunning, Port: minPort + 3},
		{ID: 5, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceFailed, Port: minPort + 4},
	}
	for _, r := range rows {
		e.store.add(r)
		e.vol.AddSubvolume(e.s.dir(r.ID), false)
	}
	if err := e.s.DestroyAllOfImage(context.Background(), testImage); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int64]bool{1: false, 2: false, 3: true, 4: true, 5: false} {
		if got := e.store.row(id) != nil; got != want {
			t.Errorf("instance %d survives: %v, want %v", id, got, want)
		}
		if got, _ := e.vol.IsSubvolume(e.s.dir(id)); got != want {
			t.Errorf("snapshot of instance %d survives: %v, want %v", id, got, want)
		}
	}
}

// Reconcile brings what runs in line with the rows.
func TestReconcile(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	type inst struct {
		row      draupnir.Instance
		subvol   bool
		adopt    string // "current", "stale" or "" (not running)
		startErr bool
	}
	insts := []inst{
		{row: draupnir.Instance{ID: 1, Owner: alice.Name, State: draupnir.InstanceCreating}, subvol: true},
		{row: draupnir.Instance{ID: 2, Owner: alice.Name, State: draupnir.InstanceDestroying}, subvol: true, adopt: "current"},
		{row: draupnir.Instance{ID: 3, Owner: alice.Name, State: draupnir.InstanceRunning}},
		{row: draupnir.Instance{ID: 4, Owner: alice.Name, State: draupnir.InstanceRunning}, subvol: true, adopt: "current"},
		{row: draupnir.Instance{ID: 5, Owner: alice.Name, State: draupnir.InstanceRunning}, subvol: true, adopt: "stale"},
		{row: draupnir.Instance{ID: 6, Owner: alice.Name, State: draupnir.InstanceStopped}, subvol: true},
		{row: draupnir.Instance{ID: 7, Owner: "", State: draupnir.InstanceWarm}, subvol: true},
		{row: draupnir.Instance{ID: 8, Owner: alice.Name, State: draupnir.InstanceRunning}, subvol: true, startErr: true},
	}
	adopted := map[int64]*fakeProc{}
	for i, in := range insts {
		in.row.ImageID, in.row.Port = testImage, minPort+i
		e.store.add(in.row)
		dir := e.s.dir(in.row.ID)
		if in.subvol {
			if err := e.vol.AddSubvolume(dir, false); err != nil {
				t.Fatal(err)
			}
		}
		if in.adopt != "" {
			p := &fakeProc{pid: 500 + i, dataDir: dir, done: make(chan struct{})}
			e.pg.adoptable[dir] = p
			adopted[in.row.ID] = p
			opts := ""
			for k, v := range e.s.settings(in.row.ID, dir) {
				if in.adopt == "stale" && k == "hba_file" {
					v = "/old/pg_hba.conf"
				}
				opts += ` "-c" "` + k + "=" + v + `"`
			}
			if err := os.WriteFile(filepath.Join(dir, "postmaster.opts"), []byte("postgres"+opts+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.pg.startErr = func(spec supervisor.Spec) error {
		if spec.DataDir == e.s.dir(8) {
			return errors.New("no such file: PG_VERSION")
		}
		return nil
	}
	orphan := filepath.Join(e.s.opts.Dir, "99")
	e.vol.AddSubvolume(orphan, false)

	if err := e.s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	specs, _ := e.pg.started()
	startedDir := map[string]bool{}
	for _, sp := range specs {
		startedDir[sp.DataDir] = true
	}
	tests := []struct {
		id      int64
		state   draupnir.InstanceState // "" for gone
		started bool
		stopped bool // the adopted postgres was stopped
	}{
		{id: 1},
		{id: 2, stopped: true},
		{id: 3, state: draupnir.InstanceFailed},
		{id: 4, state: draupnir.InstanceRunning},
		{id: 5, state: draupnir.InstanceRunning, started: true, stopped: true},
		{id: 6, state: draupnir.InstanceRunning, started: true},
		{id: 7, state: draupnir.InstanceWarm, started: true},
		{id: 8, state: draupnir.InstanceFailed, started: true},
	}
	for _, tt := range tests {
		r := e.store.row(tt.id)
		switch {
		case tt.state == "" && r != nil:
			t.Errorf("instance %d: row %+v survives", tt.id, r)
		case tt.state != "" && (r == nil || r.State != tt.state):
			t.Errorf("instance %d: row %+v, want %s", tt.id, r, tt.state)
		}
		if got := startedDir[e.s.dir(tt.id)]; got != tt.started {
			t.Errorf("instance %d: started %v, want %v", tt.id, got, tt.started)
		}
		if p := adopted[tt.id]; p != nil && p.stopped() != tt.stopped {
			t.Errorf("instance %d: adopted postgres stopped %v, want %v", tt.id, p.stopped(), tt.stopped)
		}
	}
	e.s.mu.Lock()
	for _, id := range []int64{4, 5, 6, 7} {
		if e.s.procs[id] == nil {
			t.Errorf("instance %d is not watched", id)
		}
	}
	e.s.mu.Unlock()
	if ok, _ := e.vol.IsSubvolume(orphan); ok {
		t.Errorf("the orphaned subvolume survives")
	}
	if !contains(e.pg.stopDirs, orphan) {
		t.Errorf("the orphan's postgres was not stopped before its subvolume went: %v", e.pg.stopDirs)
	}
	if r := e.store.row(8); !strings.Contains(r.Error, "could not restart postgres") {
		t.Errorf("instance 8 failed with %q", r.Error)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
