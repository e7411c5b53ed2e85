package btrfs

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// unmountAtCleanup unmounts every mount stacked on dir when the test ends,
// whether or not the test unmounted it itself.
func unmountAtCleanup(t *testing.T, dir string) {
	t.Helper()
	t.Cleanup(func() {
		for i := 0; i < 10; i++ {
			err := unix.Unmount(dir, 0)
			if errors.Is(err, unix.EBUSY) {
				err = unix.Unmount(dir, unix.MNT_DETACH)
			}
			if err != nil {
				return // EINVAL: not (or no longer) a mount point
			}
		}
	})
}

// mountsAt counts the mounts whose mount point is dir.
func mountsAt(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == dir {
			n++
		}
	}
	return n
}

// loopDevicesOf lists the loop devices backed by image.
func loopDevicesOf(t *testing.T, image string) string {
	t.Helper()
	out, err := exec.Command("losetup", "-j", image).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -j %s: %v\n%s", image, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestSetupLoop(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	base := testenv.TempDir(t)
	dir := filepath.Join(base, "var lib", "draupnir") // missing, and with a space
	image := filepath.Join(base, "draupnir.img")
	unmountAtCleanup(t, dir)
	const size = 256 << 20

	hint, err := SetupLoop(ctx, dir, image, size)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := IsBtrfs(dir); err != nil || !ok {
		t.Fatalf("IsBtrfs(%s) = %v, %v after SetupLoop", dir, ok, err)
	}
	wantLine := image + " " + strings.ReplaceAll(dir, " ", `\040`) + " btrfs loop,nofail 0 0"
	if !strings.Contains(hint, "/etc/fstab") || !strings.Contains(hint, wantLine) {
		t.Errorf("hint %q lacks the fstab line %q", hint, wantLine)
	}
	var st unix.Stat_t
	if err := unix.Stat(image, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 >= size {
		t.Errorf("image is %d bytes with %d allocated, want %d bytes, sparse", st.Size, st.Blocks*512, size)
	}
	if st.Mode&0o077 != 0 {
		t.Errorf("image mode %o is readable by others", st.Mode&0o777)
	}
	sv := filepath.Join(dir, "image_snapshots")
	if err := CreateSubvolume(sv); err != nil {
		t.Fatal(err)
	}
	writeSynced(t, filepath.Join(sv, "marker"), []byte("keep me"))

	// Idempotent: a second call finds the mount and changes nothing.
	hint2, err := SetupLoop(ctx, dir, image, size)
	if err != nil {
		t.Fatalf("second SetupLoop: %v", err)
	}
	if hint2 != hint {
		t.Errorf("second SetupLoop hint = %q, want %q", hint2, hint)
	}
	if n := mountsAt(t, dir); n != 1 {
		t.Fatalf("%d mounts at %s after a second SetupLoop, want 1", n, dir)
	}

	if err := Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsBtrfs(dir); err != nil || ok {
		t.Fatalf("IsBtrfs = %v, %v after Unmount", ok, err)
	}
	// The loop device goes with the mount (autoclear), possibly a moment later.
	for i := 0; loopDevicesOf(t, image) != ""; i++ {
		if i == 100 {
			t.Fatalf("loop device still attached after Unmount: %s", loopDevicesOf(t, image))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Setting up again mounts the existing image without formatting it.
	if _, err := SetupLoop(ctx, dir, image, size); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(sv, "marker")); err != nil || string(got) != "keep me" {
		t.Fatalf("data lost across SetupLoop: %q, %v", got, err)
	}
	if err := Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
}

func TestSetupLoopAlreadyBtrfs(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.Btrfs(t, 1<<30)
	image := filepath.Join(testenv.TempDir(t), "unused.img")
	for _, dir := range []string{mnt, filepath.Join(mnt, "sub", "dir")} {
		hint, err := SetupLoop(ctx, dir, image, 256<<20)
		if err != nil {
			t.Fatalf("SetupLoop(%s): %v", dir, err)
		}
		if !strings.Contains(hint, "already on btrfs") {
			t.Errorf("hint %q does not say the directory is already btrfs", hint)
		}
		if n := mountsAt(t, dir); dir == mnt && n != 1 {
			t.Errorf("%d mounts at %s, want 1", n, dir)
		}
	}
	if _, err := os.Stat(image); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SetupLoop on btrfs created the image: %v", err)
	}
}

func TestSetupLoopFormatsEmptyImage(t *testing.T) {
	// A sparse file left by an attempt that failed before mkfs holds no data,
	// so formatting it loses nothing.
	testenv.RequireRoot(t)
	ctx := context.Background()
	base := testenv.TempDir(t)
	dir, image := filepath.Join(base, "data"), filepath.Join(base, "img")
	unmountAtCleanup(t, dir)
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 256<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := SetupLoop(ctx, dir, image, 256<<20); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsBtrfs(dir); err != nil || !ok {
		t.Fatalf("IsBtrfs = %v, %v", ok, err)
	}
	if err := Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
}

func TestSetupLoopRefuses(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	noSetup := func(t *testing.T, dir, image string) {}
	tests := []struct {
		name       string
		setup      func(t *testing.T, dir, image string)
		imageInDir bool  // place the image inside the mount directory
		size       int64 // 0: 256 MiB
		wantMsg    string
	}{
		{name: "image holds other data", setup: func(t *testing.T, dir, image string) {
			if err := os.WriteFile(image, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(image, 2<<20); err != nil {
				t.Fatal(err)
			}
		}, wantMsg: "refusing to format"},
		{name: "image is a directory", setup: func(t *testing.T, dir, image string) {
			if err := os.Mkdir(image, 0o700); err != nil {
				t.Fatal(err)
			}
		}, wantMsg: "not a regular file"},
		{name: "directory not empty", setup: func(t *testing.T, dir, image string) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantMsg: "not empty"},
		{name: "image inside the directory", setup: noSetup, imageInDir: true, wantMsg: "must not be inside"},
		{name: "image too small for btrfs", setup: noSetup, size: 1 << 20, wantMsg: "mkfs.btrfs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := testenv.TempDir(t)
			dir, image := filepath.Join(base, "data"), filepath.Join(base, "img")
			if tt.imageInDir {
				image = filepath.Join(dir, "img")
			}
			size := tt.size
			if size == 0 {
				size = 256 << 20
			}
			unmountAtCleanup(t, dir)
			tt.setup(t, dir, image)
			before, beforeErr := os.ReadFile(image)

			_, err := SetupLoop(ctx, dir, image, size)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("SetupLoop = %v, want an error containing %q", err, tt.wantMsg)
			}
			if n := mountsAt(t, dir); n != 0 {
				t.Fatalf("SetupLoop failed but mounted %s", dir)
			}
			after, afterErr := os.ReadFile(image)
			if !bytes.Equal(before, after) || (beforeErr == nil) != (afterErr == nil) {
				t.Fatalf("SetupLoop failed but changed the image (before: %v, after: %v)", beforeErr, afterErr)
			}
		})
	}
}

func TestUnmountNotMounted(t *testing.T) {
	testenv.RequireRoot(t) // umount2 says EPERM before EINVAL to anyone else
	dir := testenv.TempDir(t)
	err := Unmount(context.Background(), dir)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Unmount(not a mount point) = %v, want EINVAL naming the path", err)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1048576", 1 << 20, false},
		{"0", 0, false},
		{"512M", 512 << 20, false},
		{"20G", 20 << 30, false},
		{"1T", 1 << 40, false},
		{"2P", 2 << 50, false},
		{"4k", 4 << 10, false},
		{"20g", 20 << 30, false},
		{"20GB", 20 << 30, false},
		{"20GiB", 20 << 30, false},
		{"20gib", 20 << 30, false},
		{" 20 G ", 20 << 30, false},
		{"100B", 100, false},
		{"", 0, true},
		{"G", 0, true},
		{"-1G", 0, true},
		{"1.5G", 0, true},
		{"20X", 0, true},
		{"20GG", 0, true},
		{"20iB", 0, true},
		{"8192P", 0, true},               // overflows int64
		{"9223372036854775808", 0, true}, // MaxInt64+1
		{"9223372036854775807", 1<<63 - 1, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d (error: %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestMountEscapes(t *testing.T) {
	tests := []struct{ raw, escaped string }{
		{"/var/lib/draupnir", "/var/lib/draupnir"},
		{"/a b/c\td", `/a\040b/c\011d`},
		{`/back\slash#x`, `/back\134slash\043x`},
	}
	for _, tt := range tests {
		if got := escapeMount(tt.raw); got != tt.escaped {
			t.Errorf("escapeMount(%q) = %q, want %q", tt.raw, got, tt.escaped)
		}
		if got := unescapeMount(tt.escaped); got != tt.raw {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.escaped, got, tt.raw)
		}
	}
	if got := unescapeMount(`/trailing\04`); got != `/trailing\04` {
		t.Errorf("unescapeMount of a short escape = %q", got)
	}
}
