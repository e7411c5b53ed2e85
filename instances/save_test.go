package instances

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// A save checkpoints the running instance as the image's superuser, then
// hands the image service a copy of its data with its WAL, even when the
// WAL is a subvolume of its own that a snapshot leaves out; the instance
// keeps running, untouched.
func TestSave(t *testing.T) {
	for _, limit := range []int64{0, 4 << 30} {
		t.Run(map[bool]string{true: "WAL in the data directory", false: "WAL of its own"}[limit == 0], func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.DiskLimit = limit })
			if err := os.MkdirAll(filepath.Join(e.images[testImage].Snapshot, "pg_wal"), 0o700); err != nil {
				t.Fatal(err)
			}
			in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			written(t, e, in.ID)
			if err := os.WriteFile(filepath.Join(e.s.dir(in.ID), "pg_wal", "000000010000000000000001"), []byte("wal"), 0o600); err != nil {
				t.Fatal(err)
			}
			if wal, _ := e.vol.IsSubvolume(filepath.Join(e.s.dir(in.ID), "pg_wal")); wal != (limit != 0) {
				t.Fatalf("pg_wal a subvolume: %v with limit %d", wal, limit)
			}
			im, err := e.s.Save(context.Background(), alice, in.ID)
			if err != nil {
				t.Fatal(err)
			}
			if im.Owner != alice.Name || im.ParentImageID != testImage || im.FromInstanceID != in.ID {
				t.Errorf("saved %+v", im)
			}
			e.mu.Lock()
			cps := e.checkpoints
			e.mu.Unlock()
			if want := (roleCall{sockDir: e.s.sockDir(in.ID), port: in.Port, superuser: "postgres", db: "app"}); len(cps) != 1 || cps[0] != want {
				t.Errorf("checkpoints %+v, want one as %+v", cps, want)
			}
			e.mu.Lock()
			copied := e.copied
			e.mu.Unlock()
			if wantCopy := limit != 0; (len(copied) == 1 && copied[0] == filepath.Join(e.s.dir(in.ID), "pg_wal")) != wantCopy {
				t.Errorf("WAL copied from %v; want a copy of the WAL subvolume: %v", copied, wantCopy)
			}
			saved := filepath.Join(e.root, "image_snapshots", "saved-1")
			for _, f := range []string{"written", "pg_wal/000000010000000000000001"} {
				if _, err := os.Stat(filepath.Join(saved, f)); err != nil {
					t.Errorf("the copy lacks %s: %v", f, err)
				}
			}
			if specs, procs := e.pg.started(); len(specs) != 1 || procs[0].stopped() {
				t.Error("saving touched the instance's postgres")
			}
			if r := e.store.row(in.ID); r.State != draupnir.InstanceRunning {
				t.Errorf("instance %s after a save", r.State)
			}
		})
	}
}

// Only a running instance of one's own can be saved; a refusal copies
// nothing.
func TestSaveRefused(t *testing.T) {
	tests := []struct {
		name  string
		as    draupnir.Principal
		state draupnir.InstanceState
		kind  draupnir.Kind
		msg   string
	}{
		{name: "someone else's", as: draupnir.Principal{Name: "mallory@example.com"}, kind: draupnir.KindNotFound, msg: "does not exist"},
		{name: "stopped", state: draupnir.InstanceStopped, kind: draupnir.KindConflict, msg: "only a running instance"},
		{name: "failed", state: draupnir.InstanceFailed, kind: draupnir.KindConflict, msg: "only a running instance"},
		{name: "being reset", state: draupnir.InstanceResetting, kind: draupnir.KindConflict, msg: "only a running instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tt.state != "" {
				e.store.setState(context.Background(), in.ID, tt.state, "")
			}
			as := alice
			if tt.as.Name != "" {
				as = tt.as
			}
			_, err = e.s.Save(context.Background(), as, in.ID)
			if draupnir.KindOf(err) != tt.kind || !strings.Contains(draupnir.ClientMessage(err), tt.msg) {
				t.Fatalf("Save = %v, want kind %d saying %q", err, tt.kind, tt.msg)
			}
			if _, err := os.Stat(filepath.Join(e.root, "image_snapshots", "saved-1")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused save copied the data: %v", err)
			}
		})
	}
}

// OwnersOfImage names each owner of an image's instances once, and not the
// warm pool (nobody) nor other images' owners.
func TestOwnersOfImage(t *testing.T) {
	e := newEnv(t, nil)
	addOtherImage(t, e)
	for i, r := range []struct {
		image int64
		owner string
		state draupnir.InstanceState
	}{
		{testImage, "bob@example.com", draupnir.InstanceRunning},
		{testImage, alice.Name, draupnir.InstanceRunning},
		{testImage, alice.Name, draupnir.InstanceFailed},
		{testImage, "", draupnir.InstanceWarm},
		{otherImage, "carol@example.com", draupnir.InstanceRunning},
	} {
		e.store.add(draupnir.Instance{ID: int64(i + 1), ImageID: r.image, Owner: r.owner, State: r.state, Port: minPort + i})
	}
	got, err := e.s.OwnersOfImage(context.Background(), testImage)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{alice.Name, "bob@example.com"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("OwnersOfImage = %q, want %q", got, want)
	}
}
