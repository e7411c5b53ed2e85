package sshd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/draupnir-db/draupnir"
)

// checkPrivate fails unless everything below root (root itself is the
// upload directory, which the images service makes) belongs to root and is
// closed to group and others: 0700 directories and 0600 files.
func checkPrivate(t *testing.T, root string) {
	t.Helper()
	n := 0
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if p == root {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			t.Fatal(err)
		}
		n++
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		// The server runs as root; these tests run as whoever runs them.
		uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != want {
			t.Errorf("%s: %v owned by %d:%d, want %v owned by %d:%d (the server's user)", p, fi.Mode(), st.Uid, st.Gid, want, uid, gid)
		}
		return nil
	})
	if n == 0 {
		t.Errorf("nothing uploaded under %s", root)
	}
}

func TestSCPUpload(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "base.tar")
	sum := randomFile(t, src, 100<<20)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(src, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o640); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		flags  []string
		target string
		image  int64
		dest   string // below the image's dir
	}{
		{"sftp mode into dir", nil, "/draupnir/image_uploads/1", 1, "base.tar"},
		{"sftp mode preserve, new name", []string{"-p"}, "/draupnir/image_uploads/2/renamed.tar", 2, "renamed.tar"},
		{"legacy into dir", []string{"-O"}, "/draupnir/image_uploads/1/", 1, "base.tar"},
		{"legacy preserve, relative target", []string{"-O", "-p"}, "draupnir/image_uploads/2/legacy.tar", 2, "legacy.tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := filepath.Join(e.uploads.dir(tt.image), tt.dest)
			os.Remove(dest)
			r := e.scp("upload", tt.flags, tt.target, src)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("scp exited %d: %q", r.code, r.stderr)
			}
			if got := fileSum(t, dest); got != sum {
				t.Fatalf("checksum of upload %s, want %s", got, sum)
			}
			if len(tt.flags) > 0 && tt.flags[len(tt.flags)-1] == "-p" {
				fi, err := os.Stat(dest)
				if err != nil {
					t.Fatal(err)
				}
				// The source's owner bits, never the group's.
				if !fi.ModTime().Equal(mtime) || fi.Mode().Perm() != 0o600 {
					t.Errorf("scp -p: got mtime %v mode %v, want %v %v", fi.ModTime(), fi.Mode().Perm(), mtime, os.FileMode(0o600))
				}
			}
			checkPrivate(t, e.uploads.dir(tt.image))
		})
	}
}

// makeTree creates a small data-directory-like tree.
func makeTree(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"base/1", "base/5", "global", "pg_wal/archive_status", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	randomFile(t, filepath.Join(root, "base/1/1259"), 3<<20+17)
	randomFile(t, filepath.Join(root, "base/5/2608"), 8192)
	randomFile(t, filepath.Join(root, "global/pg_control"), 8192)
	randomFile(t, filepath.Join(root, "pg_wal/000000010000000000000001"), 1<<20)
	mustWrite(t, filepath.Join(root, "PG_VERSION"), []byte("15\n"))
	mustWrite(t, filepath.Join(root, "empty file"), nil)
}

func TestSCPRecursive(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "pgdata")
	makeTree(t, src)
	want := treeSums(t, src)
	for _, tt := range []struct {
		name  string
		flags []string
		image int64
	}{
		{"sftp mode", []string{"-r"}, 1},
		{"legacy", []string{"-O", "-r", "-p"}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.scp("upload", tt.flags, "/draupnir/image_uploads/"+map[int64]string{1: "1", 2: "2"}[tt.image], src)
			if r.code != 0 {
				t.Fatalf("scp exited %d: %s", r.code, r.stderr)
			}
			got := treeSums(t, filepath.Join(e.uploads.dir(tt.image), "pgdata"))
			if !maps.Equal(got, want) {
				t.Errorf("uploaded tree differs:\n got %v\nwant %v", got, want)
			}
			checkPrivate(t, e.uploads.dir(tt.image))
		})
	}
}

func TestSFTPBatch(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "backup.tar.gz")
	sum := randomFile(t, src, 5<<20)
	r := e.sftp("upload", strings.Join([]string{
		"ls /",
		"ls /draupnir",
		"cd /draupnir/image_uploads/1",
		"mkdir wal",
		"put " + src,
		"put " + src + " wal/second.gz",
		// sftp sends the unnormalised path after cd.
		"cd ../2",
		"put " + src + " ../1/third.gz",
		"cd /draupnir/image_uploads/1",
		"ls -l",
		"ls wal",
		"rename third.gz wal/third.gz",
		// Modes a client asks for keep only the owner's bits.
		"chmod 644 wal/second.gz",
		"chmod 755 wal",
		"mkdir open",
		"chmod 777 open",
		"get backup.tar.gz " + filepath.Join(e.dir, "back.gz"),
	}, "\n")+"\n")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("sftp exited %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	dir := e.uploads.dir(1)
	for _, p := range []string{"backup.tar.gz", "wal/second.gz", "wal/third.gz"} {
		if got := fileSum(t, filepath.Join(dir, p)); got != sum {
			t.Errorf("%s: checksum %s, want %s", p, got, sum)
		}
	}
	if got := fileSum(t, filepath.Join(e.dir, "back.gz")); got != sum {
		t.Errorf("downloaded copy differs")
	}
	checkPrivate(t, dir)
	for _, want := range []string{"draupnir", "image_uploads", "backup.tar.gz", "second.gz"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("sftp output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestSFTPReasons checks that OpenSSH's scp (SFTP mode) and sftp print why
// the server refused, not only the status code's fixed text.
func TestSFTPReasons(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "base.tar.gz")
	randomFile(t, src, 1000)
	img1 := e.uploads.dir(1)
	if err := os.MkdirAll(img1, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(img1, "lnk")); err != nil {
		t.Fatal(err)
	}
	up := "/draupnir/image_uploads/"
	tests := []struct {
		name string
		run  func() result
		want string
	}{
		{"scp into a ready image", func() result { return e.scp("upload", nil, up+"3", src) }, "image 3 is ready; uploads are closed"},
		{"scp to a file of a ready image", func() result { return e.scp("upload", nil, up+"3/x", src) }, "image 3 is ready; uploads are closed"},
		{"scp into an unknown image", func() result { return e.scp("upload", nil, up+"9", src) }, "image 9 not found"},
		{"scp outside the uploads", func() result { return e.scp("upload", nil, "/tmp/x", src) }, "uploads go to /draupnir/image_uploads/<image id>"},
		{"scp with a user key", func() result { return e.scp("alice", nil, up+"1", src) }, "only the upload principal may write images"},
		{"scp onto a symlink", func() result { return e.scp("upload", nil, up+"1/lnk", src) }, "symbolic links are not followed"},
		{"sftp put into a ready image", func() result { return e.sftp("upload", "put "+src+" "+up+"3/x\n") }, "image 3 is ready; uploads are closed"},
		{"sftp mkdir in a ready image", func() result { return e.sftp("upload", "mkdir "+up+"3/d\n") }, "image 3 is ready; uploads are closed"},
		{"sftp ls of an unknown image", func() result { return e.sftp("upload", "ls "+up+"9\n") }, "image 9 not found"},
		{"sftp symlink", func() result { return e.sftp("upload", "symlink /etc/passwd "+up+"1/s\n") }, "links cannot be created"},
		{"sftp put as a user", func() result { return e.sftp("alice", "put "+src+" "+up+"1/x\n") }, "only the upload principal may write images"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.run()
			if r.code == 0 {
				t.Fatalf("succeeded; stderr %q", r.stderr)
			}
			if !strings.Contains(r.stderr, "draupnir: ") || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q lacks %q", r.stderr, tt.want)
			}
		})
	}
	// Other clients (WinSCP, FileZilla…) show the status message: it is
	// the reason too, with the code for its kind.
	h := &sftpHandler{ns: &namespace{log: slog.New(slog.DiscardHandler)}}
	err := h.fail("open", up+"3/x", draupnir.Errorf(draupnir.KindConflict, "image 3 is ready; uploads are closed"))
	if err.Error() != "image 3 is ready; uploads are closed" || !errors.Is(err, sftp.ErrSSHFxPermissionDenied) {
		t.Errorf("status error %q (%#v)", err, err)
	}
}

// TestUploadCommand: "images upload N" is a command of the command tree,
// like every command line but scp's, and the door hands it the bytes on
// stdin unchanged and its exit status back.
func TestUploadCommand(t *testing.T) {
	run := func(ctx context.Context, p draupnir.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
		h := sha256.New()
		n, err := io.Copy(h, stdin)
		if err != nil || !p.Upload {
			fmt.Fprintln(stderr, "draupnir: refused")
			return 1
		}
		fmt.Fprintf(stdout, "%q %d %x\n", args, n, h.Sum(nil))
		return 0
	}
	e := newEnv(t, func(o *Options) { o.Commands = run })
	src := filepath.Join(e.dir, "backup.tar.gz")
	sum := randomFile(t, src, 4<<20)
	for _, tt := range []struct {
		who    string
		code   int
		stdout string
	}{
		{"upload", 0, fmt.Sprintf("%q %d %s\n", []string{"images", "upload", "1"}, 4<<20, sum)},
		{"alice", 1, ""},
	} {
		f, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		r := e.ssh(tt.who, f, nil, "images", "upload", "1")
		f.Close()
		if r.code != tt.code || r.stdout != tt.stdout {
			t.Errorf("as %s: exit %d, stdout %q; want %d, %q (stderr %q)", tt.who, r.code, r.stdout, tt.code, tt.stdout, r.stderr)
		}
	}
	if n := listAll(t, e.uploads.dir(1)); len(n) != 0 {
		t.Errorf("the door wrote %v itself", n)
	}
}
