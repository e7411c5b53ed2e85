package images

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/saferoot"
)

// An open upload checks its image at every call, without the state
// database while nothing has begun since it was opened: a finalise or a
// destroy of the image closes it at once, and an open file holds a
// finalise off until it is closed.
func TestUploadChecksItsImage(t *testing.T) {
	const id = 7
	p := draupnir.Principal{Name: "uploader", Upload: true}
	s := New(Options{})
	defer s.Close()
	root, err := saferoot.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	u := &upload{s: s, ctx: context.Background(), id: id, epoch: s.uploadEpoch, root: root}
	defer u.Close()

	f, err := u.OpenFile("base.tar", os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("backup")); err != nil {
		t.Fatal(err)
	}
	_, err = s.Finalise(context.Background(), p, id)
	if draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("finalise with a file open: %v, want a conflict", err)
	}
	f.Close()
	if n := s.uploads[id]; n != 0 {
		t.Errorf("%d calls still counted in progress after the file closed", n)
	}
	if u.Written() != 6 {
		t.Errorf("written %d bytes, want 6", u.Written())
	}

	for _, tt := range []struct {
		name string
		set  func()
	}{
		{"finalising", func() { s.jobs[id] = &job{} }},
		{"destroying", func() { s.destroys[id] = true }},
	} {
		tt.set()
		if _, err := u.Stat("base.tar"); draupnir.KindOf(err) != draupnir.KindConflict {
			t.Errorf("%s: stat answered %v, want a conflict", tt.name, err)
		}
		if _, err := u.OpenFile("x", os.O_WRONLY|os.O_CREATE, 0o600); draupnir.KindOf(err) != draupnir.KindConflict {
			t.Errorf("%s: open answered %v, want a conflict", tt.name, err)
		}
		delete(s.jobs, id)
		delete(s.destroys, id)
	}
	if _, err := os.Stat(filepath.Join(root.Name(), "x")); err == nil {
		t.Error("a file was created while the image was closed")
	}
}

// The rules of every upload: private modes whatever the client asks,
// regular files only, no links followed, bytes counted, and a stream
// replaces what was there or, refused, leaves nothing.
func TestUploadRules(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	u, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	if err := u.Mkdir("d", 0o777, true); err != nil {
		t.Fatal(err)
	}
	f, err := u.OpenFile("d/f", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o4666)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("hello"), 10)
	f.Close()
	mode := fs.FileMode(0o777)
	if err := u.SetAttrs("d", draupnir.FileAttrs{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{"d": fs.ModeDir | 0o700, "d/f": 0o600} {
		if fi, err := os.Lstat(filepath.Join(dir, p)); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	if u.Written() != 5 {
		t.Errorf("written %d, want 5", u.Written())
	}
	if _, err := u.OpenFile("d", os.O_RDONLY, 0); draupnir.KindOf(err) != draupnir.KindInvalid {
		t.Errorf("opened a directory as a file: %v", err)
	}
	for _, name := range []string{"out/x", "out", "../x", "/etc/passwd"} {
		_, err := u.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o600)
		if !errors.Is(err, syscall.ELOOP) && !errors.Is(err, syscall.EXDEV) {
			t.Errorf("%s: %v, want a refusal", name, err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside: %v", ents)
	}

	// A stream replaces what was there; a refused one leaves nothing.
	backup := tarball(t, dataDir(""))
	sum, err := u.Extract(context.Background(), bytes.NewReader(backup))
	if err != nil || sum.Bytes != int64(len(backup)) {
		t.Fatalf("extract: %+v %v", sum, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "d")); err == nil {
		t.Error("the stream did not replace the earlier upload")
	}
	if _, err := os.Lstat(filepath.Join(dir, "PG_VERSION")); err != nil {
		t.Error(err)
	}
	if _, err := u.Extract(context.Background(), bytes.NewReader(gzipOf(t, tarball(t, []tm{reg("PG_VERSION", "15\n"), sym("x", "/etc")})))); draupnir.KindOf(err) != draupnir.KindUnprocessable {
		t.Errorf("a hostile stream: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused stream left %d entries", len(ents))
	}
}
