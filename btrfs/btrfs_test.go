package btrfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// newSubvolume creates a subvolume at path holding the given files.
func newSubvolume(t testing.TB, path string, files map[string][]byte) {
	t.Helper()
	if err := CreateSubvolume(path); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		p := filepath.Join(path, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestStructSizes(t *testing.T) {
	// The ioctl numbers encode the struct size; a wrong size means the kernel
	// rejects the call (or, worse, reads past the struct).
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"BTRFS_IOC_SUBVOL_CREATE", iocSubvolCreate, 0x5000940e},
		{"BTRFS_IOC_SNAP_DESTROY", iocSnapDestroy, 0x5000940f},
		{"BTRFS_IOC_SNAP_CREATE_V2", iocSnapCreateV2, 0x50009417},
		{"BTRFS_IOC_SUBVOL_GETFLAGS", iocSubvolGetflags, 0x80089419},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestCreateSubvolume(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	other := testenv.TempDir(t) // not btrfs
	if err := os.Mkdir(filepath.Join(mnt, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	newSubvolume(t, filepath.Join(mnt, "exists"), nil)

	tests := []struct {
		name    string
		path    string
		wantErr error // nil: must succeed
	}{
		{"top level", filepath.Join(mnt, "a"), nil},
		{"inside a plain directory", filepath.Join(mnt, "plain", "b"), nil},
		{"trailing slash", filepath.Join(mnt, "c") + "/", nil},
		{"already exists", filepath.Join(mnt, "exists"), fs.ErrExist},
		{"parent missing", filepath.Join(mnt, "missing", "d"), fs.ErrNotExist},
		{"name too long", filepath.Join(mnt, strings.Repeat("n", 256)), unix.ENAMETOOLONG},
		{"name far too long for the struct", filepath.Join(mnt, strings.Repeat("n", 5000)), unix.ENAMETOOLONG},
		{"dot dot", filepath.Join(mnt, "plain") + "/..", unix.EINVAL},
		{"not btrfs", filepath.Join(other, "e"), unix.ENOTTY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CreateSubvolume(tt.path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("CreateSubvolume(%s) = %v, want %v", tt.path, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "btrfs create subvolume "+tt.path) {
					t.Errorf("error %q does not name the operation and path", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := IsSubvolume(tt.path); err != nil || !ok {
				t.Fatalf("IsSubvolume(%s) = %v, %v after create", tt.path, ok, err)
			}
			if ents, err := os.ReadDir(tt.path); err != nil || len(ents) != 0 {
				t.Fatalf("new subvolume not empty: %v, %v", ents, err)
			}
			if ro, err := IsReadOnly(tt.path); err != nil || ro {
				t.Fatalf("IsReadOnly = %v, %v, want false", ro, err)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	src := filepath.Join(mnt, "src")
	content := randomBytes(t, 64<<10)
	newSubvolume(t, src, map[string][]byte{"data": content, "dir/file": []byte("x")})
	if err := os.Mkdir(filepath.Join(mnt, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	newSubvolume(t, filepath.Join(mnt, "taken"), nil)

	tests := []struct {
		name     string
		src, dst string
		readOnly bool
		wantErr  error
	}{
		{name: "writable", src: src, dst: filepath.Join(mnt, "rw")},
		{name: "read-only", src: src, dst: filepath.Join(mnt, "ro"), readOnly: true},
		{name: "into a plain directory", src: src, dst: filepath.Join(mnt, "plain", "snap")},
		{name: "destination exists", src: src, dst: filepath.Join(mnt, "taken"), wantErr: fs.ErrExist},
		{name: "destination is a plain directory", src: src, dst: filepath.Join(mnt, "plain"), wantErr: fs.ErrExist},
		{name: "source missing", src: filepath.Join(mnt, "nope"), dst: filepath.Join(mnt, "x1"), wantErr: fs.ErrNotExist},
		{name: "source not a subvolume", src: filepath.Join(mnt, "plain"), dst: filepath.Join(mnt, "x2"), wantErr: unix.EINVAL},
		{name: "source a directory inside a subvolume", src: filepath.Join(src, "dir"), dst: filepath.Join(mnt, "x3"), wantErr: unix.EINVAL},
		{name: "destination parent missing", src: src, dst: filepath.Join(mnt, "nope", "x4"), wantErr: fs.ErrNotExist},
		{name: "name too long", src: src, dst: filepath.Join(mnt, strings.Repeat("n", 256)), wantErr: unix.ENAMETOOLONG},
		{name: "name longer than the struct", src: src, dst: filepath.Join(mnt, strings.Repeat("n", 4100)), wantErr: unix.ENAMETOOLONG},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Snapshot(tt.src, tt.dst, tt.readOnly)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Snapshot = %v, want %v", err, tt.wantErr)
				}
				if want := "btrfs snapshot " + tt.src + " -> " + tt.dst + ": "; !strings.HasPrefix(err.Error(), want) {
					t.Errorf("error %q does not start with %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(tt.dst, "data"))
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("snapshot content differs (err %v)", err)
			}
			if ok, err := IsSubvolume(tt.dst); err != nil || !ok {
				t.Fatalf("IsSubvolume = %v, %v", ok, err)
			}
			ro, err := IsReadOnly(tt.dst)
			if err != nil || ro != tt.readOnly {
				t.Fatalf("IsReadOnly = %v, %v, want %v", ro, err, tt.readOnly)
			}
			err = os.WriteFile(filepath.Join(tt.dst, "new"), []byte("y"), 0o644)
			if tt.readOnly {
				if !errors.Is(err, unix.EROFS) {
					t.Fatalf("write into read-only snapshot: %v, want EROFS", err)
				}
				if err := os.Remove(filepath.Join(tt.dst, "data")); !errors.Is(err, unix.EROFS) {
					t.Fatalf("remove from read-only snapshot: %v, want EROFS", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("write into writable snapshot: %v", err)
			}
			if _, err := os.Stat(filepath.Join(src, "new")); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("a write into the snapshot shows in the source: %v", err)
			}
		})
	}
	if ro, err := IsReadOnly(src); err != nil || ro {
		t.Errorf("source became read-only: %v, %v", ro, err)
	}
}

func TestSnapshotOfReadOnly(t *testing.T) {
	// The instance path: a writable snapshot of a read-only image snapshot.
	mnt := testenv.Btrfs(t, 1<<30)
	newSubvolume(t, filepath.Join(mnt, "upload"), map[string][]byte{"PG_VERSION": []byte("15\n")})
	if err := Snapshot(filepath.Join(mnt, "upload"), filepath.Join(mnt, "image"), true); err != nil {
		t.Fatal(err)
	}
	inst := filepath.Join(mnt, "instance")
	if err := Snapshot(filepath.Join(mnt, "image"), inst, false); err != nil {
		t.Fatal(err)
	}
	if ro, err := IsReadOnly(inst); err != nil || ro {
		t.Fatalf("IsReadOnly(instance) = %v, %v, want false", ro, err)
	}
	if err := os.WriteFile(filepath.Join(inst, "postmaster.pid"), []byte("1"), 0o600); err != nil {
		t.Fatalf("write into writable snapshot of a read-only one: %v", err)
	}
}

func TestDelete(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	// Each setup gets a fresh directory and returns the path to delete.
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) string
		wantErr error // nil: must succeed and leave nothing behind
	}{
		{"empty subvolume", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "sv")
			newSubvolume(t, p, nil)
			return p
		}, nil},
		{"nested content", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "sv")
			newSubvolume(t, p, map[string][]byte{"a/b/c/d": randomBytes(t, 1<<20), "base/1/2": []byte("x")})
			return p
		}, nil},
		{"read-only snapshot", func(t *testing.T, dir string) string {
			src, p := filepath.Join(dir, "src"), filepath.Join(dir, "ro")
			newSubvolume(t, src, map[string][]byte{"a/b": []byte("x")})
			if err := Snapshot(src, p, true); err != nil {
				t.Fatal(err)
			}
			return p
		}, nil},
		{"nested subvolumes", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "sv")
			newSubvolume(t, p, map[string][]byte{"dir/f": []byte("x")})
			newSubvolume(t, filepath.Join(p, "inner"), map[string][]byte{"f": []byte("y")})
			newSubvolume(t, filepath.Join(p, "dir", "deeper"), nil)
			newSubvolume(t, filepath.Join(p, "inner", "innermost"), nil)
			return p
		}, nil},
		{"missing", func(t *testing.T, dir string) string { return filepath.Join(dir, "missing") }, nil},
		{"parent missing", func(t *testing.T, dir string) string { return filepath.Join(dir, "gone", "missing") }, nil},
		{"plain directory", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "plain")
			if err := os.MkdirAll(filepath.Join(p, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			return p
		}, unix.EINVAL},
		{"directory inside a subvolume", func(t *testing.T, dir string) string {
			newSubvolume(t, filepath.Join(dir, "sv"), map[string][]byte{"inner/f": []byte("x")})
			return filepath.Join(dir, "sv", "inner")
		}, unix.EINVAL},
		{"regular file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "file")
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}, unix.EINVAL},
		{"symlink to a subvolume", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "link")
			newSubvolume(t, filepath.Join(dir, "target"), nil)
			if err := os.Symlink("target", p); err != nil {
				t.Fatal(err)
			}
			return p
		}, unix.EINVAL},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(mnt, fmt.Sprintf("case%d", i))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			p := tt.setup(t, dir)
			err := Delete(p)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Delete = %v, want %v", err, tt.wantErr)
				}
				if want := "btrfs delete subvolume " + p + ": "; !strings.HasPrefix(err.Error(), want) {
					t.Errorf("error %q does not start with %q", err, want)
				}
				if _, err := os.Lstat(p); err != nil {
					t.Fatalf("Delete failed but removed the path: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("path still there after Delete: %v", err)
			}
			if err := Delete(p); err != nil {
				t.Fatalf("second Delete is not idempotent: %v", err)
			}
		})
	}
}

func TestIsSubvolume(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	other := testenv.TempDir(t)
	newSubvolume(t, filepath.Join(mnt, "sv"), map[string][]byte{"dir/file": []byte("x")})
	if err := os.Symlink("sv", filepath.Join(mnt, "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		want    bool
		wantErr error
	}{
		{mnt, true, nil}, // the top-level subvolume
		{filepath.Join(mnt, "sv"), true, nil},
		{filepath.Join(mnt, "sv", "dir"), false, nil},
		{filepath.Join(mnt, "sv", "dir", "file"), false, nil},
		{filepath.Join(mnt, "link"), false, nil},
		{other, false, nil},
		{filepath.Join(mnt, "missing"), false, fs.ErrNotExist},
	}
	for _, tt := range tests {
		got, err := IsSubvolume(tt.path)
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("IsSubvolume(%s) = %v, %v, want %v, %v", tt.path, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestIsReadOnly(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	newSubvolume(t, filepath.Join(mnt, "rw"), map[string][]byte{"dir/f": nil})
	if err := Snapshot(filepath.Join(mnt, "rw"), filepath.Join(mnt, "ro"), true); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		want    bool
		wantErr error
	}{
		{filepath.Join(mnt, "rw"), false, nil},
		{filepath.Join(mnt, "ro"), true, nil},
		{filepath.Join(mnt, "rw", "dir"), false, unix.EINVAL},
		{filepath.Join(mnt, "missing"), false, fs.ErrNotExist},
	}
	for _, tt := range tests {
		got, err := IsReadOnly(tt.path)
		if !errors.Is(err, tt.wantErr) || got != tt.want {
			t.Errorf("IsReadOnly(%s) = %v, %v, want %v, %v", tt.path, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestIsBtrfs(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	newSubvolume(t, filepath.Join(mnt, "sv"), map[string][]byte{"f": nil})
	tests := []struct {
		path    string
		want    bool
		wantErr bool
	}{
		{mnt, true, false},
		{filepath.Join(mnt, "sv", "f"), true, false},
		{testenv.TempDir(t), false, false},
		{"/proc", false, false},
		{filepath.Join(mnt, "missing"), false, true},
	}
	for _, tt := range tests {
		got, err := IsBtrfs(tt.path)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("IsBtrfs(%s) = %v, %v, want %v (error: %v)", tt.path, got, err, tt.want, tt.wantErr)
		}
	}
}

// writeSynced writes a file and flushes it, so that its extents exist for
// btrfs filesystem du to count.
func writeSynced(t testing.TB, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestUsage(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.Btrfs(t, 1<<30)
	src := filepath.Join(mnt, "src")
	newSubvolume(t, src, nil)
	const size = 4 << 20
	writeSynced(t, filepath.Join(src, "data"), randomBytes(t, size))

	total, excl, err := Usage(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if total != size || excl != size {
		t.Fatalf("Usage(src) = %d, %d, want %d, %d", total, excl, size, size)
	}

	snap := filepath.Join(mnt, "snap")
	if err := Snapshot(src, snap, false); err != nil {
		t.Fatal(err)
	}
	total, excl, err = Usage(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if total != size || excl != 0 {
		t.Fatalf("Usage(fresh snapshot) = %d, %d, want %d, 0", total, excl, size)
	}

	writeSynced(t, filepath.Join(snap, "more"), randomBytes(t, 1<<20))
	total, excl, err = Usage(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if total != size+1<<20 || excl != 1<<20 {
		t.Fatalf("Usage(snapshot after 1 MiB write) = %d, %d, want %d, %d", total, excl, size+1<<20, 1<<20)
	}

	if _, _, err := Usage(ctx, filepath.Join(mnt, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Usage(missing) = %v, want an error naming the path", err)
	}
}

func TestParseDu(t *testing.T) {
	tests := []struct {
		out         string
		total, excl int64
		wantErr     bool
	}{
		{"     Total   Exclusive  Set shared  Filename\n   4194304           0     4194304  /mnt/snap\n", 4194304, 0, false},
		{"     Total   Exclusive  Set shared  Filename\n        12          12           0  /mnt/with space\n", 12, 12, false},
		{"", 0, 0, true},
		{"     Total   Exclusive  Set shared  Filename\n", 0, 0, true},
		{"     Total   Exclusive  Set shared  Filename\n  4.00MiB  0.00B  4.00MiB  /x\n", 0, 0, true},
	}
	for _, tt := range tests {
		total, excl, err := parseDu([]byte(tt.out))
		if (err != nil) != tt.wantErr || total != tt.total || excl != tt.excl {
			t.Errorf("parseDu(%q) = %d, %d, %v, want %d, %d (error: %v)", tt.out, total, excl, err, tt.total, tt.excl, tt.wantErr)
		}
	}
}

func BenchmarkSnapshot(b *testing.B) {
	mnt := testenv.Btrfs(b, 1<<30)
	src := filepath.Join(mnt, "src")
	newSubvolume(b, src, map[string][]byte{"data": randomBytes(b, 1<<20)})
	dst := filepath.Join(mnt, "dst")
	for b.Loop() {
		if err := Snapshot(src, dst, false); err != nil {
			b.Fatal(err)
		}
		if err := Delete(dst); err != nil {
			b.Fatal(err)
		}
	}
}
