package saferoot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// tree lays out a root with the traps: links that stay inside (which
// os.Root would follow), links that leave, and a mount point.
func tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("host"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "f"), []byte("f"), 0o600))
	must(os.Mkdir(filepath.Join(dir, "d"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "d", "g"), []byte("g"), 0o600))
	must(os.Symlink("d", filepath.Join(dir, "ld")))
	must(os.Symlink("f", filepath.Join(dir, "lf")))
	must(os.Symlink(outside, filepath.Join(dir, "out")))
	must(os.Symlink("missing", filepath.Join(dir, "dangling")))
	if os.Geteuid() == 0 {
		must(os.Mkdir(filepath.Join(dir, "mnt"), 0o700))
		testenv.Run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", filepath.Join(dir, "mnt"))
		t.Cleanup(func() { unix.Unmount(filepath.Join(dir, "mnt"), unix.MNT_DETACH) })
		must(os.WriteFile(filepath.Join(dir, "mnt", "x"), []byte("x"), 0o600))
	}
	return dir
}

func TestRootRefuses(t *testing.T) {
	for _, walk := range []bool{false, true} {
		name := "openat2"
		if walk {
			name = "walk"
		}
		t.Run(name, func(t *testing.T) {
			dir := tree(t)
			r, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if walk {
				r.WalkOnly()
			}
			rd := os.O_RDONLY
			create := os.O_WRONLY | os.O_CREATE
			tests := []struct {
				name string
				op   func() error
				want error // nil: must succeed
			}{
				{"a file", func() error { return openClose(r, "f", rd) }, nil},
				{"a nested file", func() error { return openClose(r, "d/g", rd) }, nil},
				{"a name cleaned inside", func() error { return openClose(r, "./d/../f", rd) }, nil},
				{"the root itself", func() error { return openClose(r, "", rd) }, nil},
				{"a link to a file inside", func() error { return openClose(r, "lf", rd) }, unix.ELOOP},
				{"through a link to a directory inside", func() error { return openClose(r, "ld/g", rd) }, unix.ELOOP},
				{"through a link outside", func() error { return openClose(r, "out/secret", rd) }, unix.ELOOP},
				{"creating through a link", func() error { return openClose(r, "ld/new", create) }, unix.ELOOP},
				{"creating on a dangling link", func() error { return openClose(r, "dangling", create) }, unix.ELOOP},
				{"dot-dot", func() error { return openClose(r, "../x", rd) }, unix.EXDEV},
				{"dot-dot after a directory", func() error { return openClose(r, "d/../../x", rd) }, unix.EXDEV},
				{"an absolute name", func() error { return openClose(r, "/etc/passwd", rd) }, unix.EXDEV},
				{"a NUL byte", func() error { return openClose(r, "f\x00", rd) }, unix.EINVAL},
				{"mkdir through a link", func() error { return r.Mkdir("ld/x", 0o700) }, unix.ELOOP},
				{"mkdir -p through a link", func() error { fd, err := r.MkdirAll("ld/x/y", 0o700, nil); unix.Close(fd); return err }, unix.ELOOP},
				{"mkdir -p", func() error { fd, err := r.MkdirAll("d/x/y", 0o700, nil); unix.Close(fd); return err }, nil},
				{"remove through a link", func() error { return r.Remove("ld/g") }, unix.ELOOP},
				{"rename into a link", func() error { return r.Rename("f", "ld/f", false) }, unix.ELOOP},
				{"rename out of a link", func() error { return r.Rename("ld/g", "g", false) }, unix.ELOOP},
				{"rename onto an existing name", func() error { return r.Rename("d/g", "f", false) }, unix.EEXIST},
				{"list through a link", func() error { _, err := r.ReadDir("ld"); return err }, unix.ELOOP},
				{"stat through a link", func() error { _, err := r.Lstat("out/secret"); return err }, unix.ELOOP},
			}
			if os.Geteuid() == 0 {
				tests = append(tests, []struct {
					name string
					op   func() error
					want error
				}{
					{"into a mount", func() error { return openClose(r, "mnt/x", rd) }, unix.EXDEV},
					{"a mount point", func() error { return openClose(r, "mnt", rd) }, unix.EXDEV},
					{"mkdir -p into a mount", func() error { fd, err := r.MkdirAll("mnt/y", 0o700, nil); unix.Close(fd); return err }, unix.EXDEV},
				}...)
			}
			for _, tt := range tests {
				err := tt.op()
				if tt.want == nil && err != nil {
					t.Errorf("%s: %v", tt.name, err)
				}
				if tt.want != nil && !errors.Is(err, tt.want) {
					t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
				}
			}
			// Nothing was made or removed through a link.
			for _, p := range []string{"d/new", "d/x/y", "missing", "d/f"} {
				if _, err := os.Lstat(filepath.Join(dir, p)); (p == "d/x/y") != (err == nil) {
					t.Errorf("%s: %v", p, err)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "d", "g")); err != nil {
				t.Errorf("d/g was removed through the link: %v", err)
			}
			// A link itself can be described, never followed.
			if fi, err := r.Lstat("lf"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("lstat of a link: %v %v", fi, err)
			}
		})
	}
}

func openClose(r *Root, name string, flags int) error {
	f, err := r.OpenFile(name, flags, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func TestOpenRefusesALinkAsRoot(t *testing.T) {
	dir := tree(t)
	if _, err := Open(filepath.Join(dir, "ld")); !errors.Is(err, unix.ELOOP) {
		t.Errorf("opened a link as the root: %v", err)
	}
}
