package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

var alice = draupnir.Principal{Name: "alice@example.com"}

func TestCreate(t *testing.T) {
	e := newEnv(t, nil)
	in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if in.State != draupnir.InstanceRunning || in.Owner != alice.Name || in.Database != "app" ||
		in.Username != draupnir.InstanceRole || in.Port != minPort || in.Hostname != "db.example.com" || in.CACertificate == "" {
		t.Errorf("created %+v", in)
	}
	if r := e.store.row(in.ID); r == nil || r.State != draupnir.InstanceRunning {
		t.Errorf("row is %+v, want running", r)
	}
	if ok, _ := e.vol.IsSubvolume(e.s.dir(in.ID)); !ok || e.vol.ReadOnly(e.s.dir(in.ID)) {
		t.Errorf("no writable snapshot at %s: %v", e.s.dir(in.ID), e.vol.Subvolumes())
	}
	specs, procs := e.pg.started()
	if len(specs) != 1 || specs[0].DataDir != e.s.dir(in.ID) || specs[0].Port != in.Port ||
		specs[0].Settings["hba_file"] != e.s.hba || specs[0].Settings["ssl"] != "on" {
		t.Errorf("started %+v", specs)
	}
	want := roleCall{e.s.sockDir(in.ID), in.Port, "postgres", "app", draupnir.InstanceRole, in.Password}
	if len(e.roles) != 1 || e.roles[0] != want || len(in.Password) < 20 {
		t.Errorf("role prepared as %+v, want %+v", e.roles, want)
	}
	if e.warmUps != 0 {
		t.Errorf("an instance for a user was warmed up %d times; its owner's login does that", e.warmUps)
	}
	e.s.mu.Lock()
	tr := e.s.procs[in.ID]
	e.s.mu.Unlock()
	if tr == nil || tr.proc != procs[0] {
		t.Errorf("the instance's postgres is not watched")
	}
	if _, err := e.s.Create(context.Background(), draupnir.Principal{}, testImage, draupnir.CreateOptions{}); draupnir.KindOf(err) != draupnir.KindUnauthorized {
		t.Errorf("create without a principal: %v", err)
	}
}

// A create that fails at any step undoes every step before it: no row, no
// snapshot, no socket directory, no postgres left running.
func TestCreateUndo(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		image    int64
		setup    func(e *env)
		wantKind draupnir.Kind
		started  bool // postgres was started, and must be stopped
	}{
		{name: "no such image", image: 2, wantKind: draupnir.KindNotFound},
		{name: "image not ready", image: testImage, wantKind: draupnir.KindConflict, setup: func(e *env) {
			e.s.opts.Images = fakeErrImages{draupnir.Errorf(draupnir.KindConflict, "image 1 is being destroyed")}
		}},
		{name: "no free port", image: testImage, wantKind: draupnir.KindUnavailable, setup: func(e *env) {
			for p := minPort; p <= maxPort; p++ {
				e.store.add(draupnir.Instance{ID: int64(100 + p - minPort), ImageID: testImage, Owner: "bob", Port: p, State: draupnir.InstanceRunning})
			}
		}},
		{name: "snapshot fails", image: testImage, wantKind: draupnir.KindInternal, setup: func(e *env) {
			e.vol.Fail = func(op, path string) error {
				if op == "Snapshot" {
					return boom
				}
				return nil
			}
		}},
		{name: "disk full at the snapshot", image: testImage, wantKind: draupnir.KindInsufficientStorage, setup: func(e *env) {
			e.vol.Fail = func(op, path string) error {
				if op == "Snapshot" {
					return fmt.Errorf("snapshot: %w", unix.ENOSPC)
				}
				return nil
			}
		}},
		{name: "postgres does not start", image: testImage, wantKind: draupnir.KindInternal, setup: func(e *env) {
			e.pg.startErr = func(supervisor.Spec) error { return boom }
		}},
		{name: "the role cannot be prepared", image: testImage, wantKind: draupnir.KindInternal, started: true, setup: func(e *env) {
			e.roleErr = boom
		}},
		{name: "no id can be reserved", image: testImage, wantKind: draupnir.KindInternal, setup: func(e *env) {
			e.store.fail["nextID"] = boom
		}},
		{name: "the row cannot be written", image: testImage, wantKind: draupnir.KindInternal, setup: func(e *env) {
			e.store.fail["insert"] = boom
		}},
		{name: "the row cannot be written and the image is gone", image: 2, wantKind: draupnir.KindNotFound, setup: func(e *env) {
			e.store.fail["insert"] = boom
		}},
		{name: "over the quota", image: testImage, wantKind: draupnir.KindQuotaExceeded, setup: func(e *env) {
			e.s.opts.MaxPerUser = 1
			e.store.add(draupnir.Instance{ID: 50, ImageID: testImage, Owner: alice.Name, Port: maxPort, State: draupnir.InstanceRunning})
		}},
		{name: "the state cannot be recorded", image: testImage, wantKind: draupnir.KindInternal, started: true, setup: func(e *env) {
			e.store.fail["setDone"] = boom
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tt.setup != nil {
				tt.setup(e)
			}
			before := e.store.listWhere(func(*draupnir.Instance) bool { return true })
			_, err := e.s.Create(context.Background(), alice, tt.image, draupnir.CreateOptions{})
			if err == nil || draupnir.KindOf(err) != tt.wantKind {
				t.Fatalf("got %v (kind %v), want kind %v", err, draupnir.KindOf(err), tt.wantKind)
			}
			if after := e.store.listWhere(func(*draupnir.Instance) bool { return true }); len(after) != len(before) {
				t.Errorf("rows left behind: %d before, %d after", len(before), len(after))
			}
			if subs := e.vol.Subvolumes(); len(subs) != 1 {
				t.Errorf("subvolumes left behind: %v", subs)
			}
			if ents, _ := os.ReadDir(e.s.opts.RunDir); slices.ContainsFunc(ents, func(d os.DirEntry) bool { return d.IsDir() && d.Name() != "tls" }) {
				t.Errorf("socket directory left behind in %s: %v", e.s.opts.RunDir, ents)
			}
			_, procs := e.pg.started()
			if tt.started != (len(procs) == 1) {
				t.Fatalf("%d postgres started, want started %v", len(procs), tt.started)
			}
			for _, p := range procs {
				if !p.stopped() {
					t.Errorf("the postgres of a failed create still runs")
				}
			}
			e.s.mu.Lock()
			watched := len(e.s.procs)
			e.s.mu.Unlock()
			if watched != 0 {
				t.Errorf("%d processes still watched", watched)
			}
		})
	}
}

// A port another program holds is skipped, whether the service sees it
// before the start or postgres finds it taken.
func TestCreatePortTaken(t *testing.T) {
	t.Run("seen before the start", func(t *testing.T) {
		e := newEnv(t, nil)
		e.taken[minPort] = true
		in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if in.Port != minPort+1 || e.store.row(in.ID).Port != minPort+1 {
			t.Errorf("port %d, want %d", in.Port, minPort+1)
		}
	})
	t.Run("found by postgres", func(t *testing.T) {
		e := newEnv(t, nil)
		e.pg.startErr = func(spec supervisor.Spec) error {
			if spec.Port < minPort+2 {
				return fmt.Errorf("start: %w", supervisor.ErrPortInUse)
			}
			return nil
		}
		in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		specs, _ := e.pg.started()
		if in.Port != minPort+2 || e.store.row(in.ID).Port != minPort+2 || len(specs) != 3 {
			t.Errorf("port %d after %d starts, want %d after 3", in.Port, len(specs), minPort+2)
		}
	})
	t.Run("every port taken", func(t *testing.T) {
		e := newEnv(t, nil)
		e.pg.startErr = func(supervisor.Spec) error { return supervisor.ErrPortInUse }
		_, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
		if specs, _ := e.pg.started(); !errors.Is(err, supervisor.ErrPortInUse) || len(specs) != 6 {
			t.Fatalf("got %v after %d starts, want the port in use after 6", err, len(specs))
		}
		if rows := e.store.listWhere(func(*draupnir.Instance) bool { return true }); len(rows) != 0 {
			t.Errorf("rows left behind: %v", rows)
		}
	})
}

// With a disk limit, an instance's data and its WAL get limits of their
// own, on simple quotas where the kernel has them.
func TestCreateLimitsDisk(t *testing.T) {
	const limit = 4 << 30
	for _, simple := range []bool{true, false} {
		t.Run(fmt.Sprintf("simple quotas %v", simple), func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.DiskLimit = limit })
			want := btrfs.QuotaFull
			if simple {
				want = btrfs.QuotaSimple
			}
			// newEnv turned quotas on already: as on a fresh filesystem,
			// with or without simple quotas, make the service again.
			e.vol.Simple, e.vol.Mode = simple, btrfs.QuotaOff
			s, err := newService(e.s.opts, e.s.deps)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			e.s = s
			if e.s.quota != want {
				t.Fatalf("quota mode %q, want %q", e.s.quota, want)
			}
			if err := os.Mkdir(filepath.Join(e.images[testImage].Snapshot, "pg_wal"), 0o700); err != nil {
				t.Fatal(err)
			}
			in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			wal := filepath.Join(e.s.dir(in.ID), "pg_wal")
			if got, ok := e.vol.Limit(e.s.dir(in.ID)); !ok || got != limit {
				t.Errorf("data limit %d (set %v), want %d", got, ok, limit)
			}
			if got, ok := e.vol.Limit(wal); !ok || got != walLimit(limit) {
				t.Errorf("WAL limit %d (set %v), want %d", got, ok, walLimit(limit))
			}
			if got := e.s.settings(in.ID, e.s.dir(in.ID))["temp_file_limit"]; got != tempFileLimit(limit) {
				t.Errorf("temp_file_limit %q, want %q", got, tempFileLimit(limit))
			}
			if err := e.s.Destroy(context.Background(), alice, in.ID); err != nil {
				t.Fatal(err)
			}
			if subs := e.vol.Subvolumes(); len(subs) != 1 {
				t.Errorf("left behind: %v", subs)
			}
		})
	}
}

// The check for limits planted in an image's data runs on its instances
// until one shows it has nothing to undo; then, the image being read-only,
// no later create or reset of it pays for the check again. An image whose
// instances had something to undo is checked every time.
func TestPinLimitsOncePerImage(t *testing.T) {
	ctx := context.Background()
	for _, planted := range []bool{false, true} {
		t.Run(fmt.Sprintf("planted %v", planted), func(t *testing.T) {
			e := newEnv(t, nil)
			e.pinned = planted
			var ins []*draupnir.Instance
			for range 3 {
				in, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				ins = append(ins, in)
			}
			if _, err := e.s.Reset(ctx, alice, ins[0].ID, 0); err != nil {
				t.Fatal(err)
			}
			want := []bool{true, planted, planted, planted}
			if !slices.Equal(e.pins, want) {
				t.Errorf("pinned on the creates and the reset: %v, want %v", e.pins, want)
			}
		})
	}
	t.Run("a failed check proves nothing", func(t *testing.T) {
		e := newEnv(t, nil)
		e.roleErr = errors.New("boom")
		if _, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{}); err == nil {
			t.Fatal("create succeeded although its role could not be prepared")
		}
		e.roleErr = nil
		if _, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if want := []bool{true, true}; !slices.Equal(e.pins, want) {
			t.Errorf("pinned %v, want %v", e.pins, want)
		}
	})
}
