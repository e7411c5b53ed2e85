package datapath

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestLayout pins the names of the parts: servers already running keep
// their data under them, so a rename would lose it.
func TestLayout(t *testing.T) {
	l := Layout{Data: "/srv/draupnir", Run: "/run/draupnir"}
	for _, tt := range []struct {
		name, got, want string
	}{
		{"Uploads", l.Uploads(), "/srv/draupnir/image_uploads"},
		{"Snapshots", l.Snapshots(), "/srv/draupnir/image_snapshots"},
		{"Instances", l.Instances(), "/srv/draupnir/instances"},
		{"State", l.State(), "/srv/draupnir/state"},
		{"Keys", l.Keys(), "/srv/draupnir/keys"},
		{"Standbys", l.Standbys(), "/srv/draupnir/standbys"},
		{"StateSockets", l.StateSockets(), "/run/draupnir/state"},
		{"StandbySockets", l.StandbySockets(), "/run/draupnir/standbys"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s() = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

// TestAcquire makes a data path usable and checks what the postgres user
// and other local users may do in it, then that a second server is kept off
// the same data path and off the same run path, and that both are free again
// once released.
func TestAcquire(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	l := Layout{Data: filepath.Join(mnt, "a"), Run: filepath.Join(testenv.TempDir(t), "run")}
	other := Layout{Data: filepath.Join(mnt, "b"), Run: filepath.Join(testenv.TempDir(t), "run")}
	for _, d := range []string{l.Data, other.Data} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Parts left with the wrong modes, as by hand or by an older server,
	// are put right.
	if err := os.Mkdir(l.Instances(), 0o777); err != nil {
		t.Fatal(err)
	}
	lock, err := Acquire(l)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			lock.Release() // the mount cannot go while a lock file is open
		}
	})
	for _, tt := range []struct {
		dir  string
		mode fs.FileMode
	}{
		{l.Data, 0o711}, {l.Run, 0o711},
		{l.Uploads(), 0o711}, {l.Snapshots(), 0o711}, {l.Instances(), 0o711},
		{l.Standbys(), 0o711}, {l.StandbySockets(), 0o711},
		{l.Keys(), 0o700},
	} {
		st, err := os.Stat(tt.dir)
		if err != nil {
			t.Error(err)
			continue
		}
		if !st.IsDir() || st.Mode().Perm() != tt.mode {
			t.Errorf("%s: %v, want a directory %v", tt.dir, st.Mode(), tt.mode)
		}
	}

	for _, tt := range []struct {
		name string
		l    Layout
		want string
	}{
		{"same data path", Layout{Data: l.Data, Run: other.Run}, "already serving data_path " + l.Data},
		{"same run path", Layout{Data: other.Data, Run: l.Run}, "already using run_path " + l.Run},
	} {
		t.Run(tt.name, func(t *testing.T) {
			second, err := Acquire(tt.l)
			if err == nil {
				second.Release()
				t.Fatal("a second server took it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to say %q", err, tt.want)
			}
		})
	}
	// The refused second server let go of the data path it did get.
	third, err := Acquire(other)
	if err != nil {
		t.Fatalf("a free data path and run path after a refusal: %v", err)
	}
	third.Release()

	lock.Release()
	released = true
	again, err := Acquire(l)
	if err != nil {
		t.Fatalf("after Release: %v", err)
	}
	again.Release()
}

// TestAcquireNotBtrfs refuses a data path that is not on btrfs (or is not
// there at all) and says how to make one, without creating anything.
func TestAcquireNotBtrfs(t *testing.T) {
	dir := t.TempDir()
	for _, data := range []string{dir, filepath.Join(dir, "missing")} {
		l := Layout{Data: data, Run: filepath.Join(dir, "run")}
		if _, err := Acquire(l); err == nil || !strings.Contains(err.Error(), "draupnir setup --data-path "+data) {
			t.Errorf("Acquire(%s): %v, want a hint to run draupnir setup", data, err)
		}
		if _, err := os.Stat(l.Run); !os.IsNotExist(err) {
			t.Errorf("run path made for a refused data path: %v", err)
		}
	}
}
