package images

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	// Marked uploading already: the state database is not asked again.
	u := &upload{s: s, ctx: context.Background(), id: id, epoch: s.uploadEpoch, writing: true, root: root}
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

// notABackup looks at names only, and only at the top of the upload and one
// directory down: enough to tell a backup from the mistakes new users make.
func TestNotABackup(t *testing.T) {
	tests := []struct {
		name  string
		files []string // directories end in "/"
		want  string   // "" if it may be a backup
	}{
		{"pg_basebackup -Ft -X stream", []string{"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}, ""},
		{"a single tarball", []string{"backup.tar.zst"}, ""},
		{"a data directory", []string{"PG_VERSION", "base/", "global/"}, ""},
		{"a data directory one level down", []string{"pgdata/", "pgdata/PG_VERSION"}, ""},
		{"a tablespace archive is left for finalise", []string{"16385.tar"}, ""},
		{"nothing", nil, "nothing has been uploaded"},
		{"only the WAL", []string{"pg_wal.tar.gz"}, "the upload holds only pg_wal.tar.gz, the WAL"},
		{"only the WAL, two of them", []string{"pg_wal.tar", "PG_WAL.TAR.GZ"}, "the upload holds only PG_WAL.TAR.GZ, pg_wal.tar"},
		{"scp -r of the backup's directory", []string{"backup/", "backup/base.tar.gz"}, "a directory, backup/, with no PG_VERSION in it, so it is not a data directory (scp -r the one that holds PG_VERSION). It holds base.tar.gz"},
		{"scp -r of a directory above the data directory", []string{"srv/", "srv/pgdata/", "srv/pgdata/PG_VERSION"}, "a directory, srv/, with no PG_VERSION"},
		{"a dump", []string{"shop.dump"}, "no archive (.tar, .tar.gz…) other than the WAL and no PG_VERSION at its top or one directory down among shop.dump"},
		{"a directory named like an archive", []string{"base.tar/"}, "a directory, base.tar/"},
		{"WAL beside a stray directory", []string{"pg_wal.tar.gz", "x/"}, "among pg_wal.tar.gz, x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				var err error
				if strings.HasSuffix(f, "/") {
					err = os.MkdirAll(filepath.Join(dir, f), 0o700)
				} else {
					err = os.WriteFile(filepath.Join(dir, f), nil, 0o600)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			got := notABackup(dir, ents)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// errReader fails after its bytes, as a connection that breaks mid-upload.
type errReader struct{ r *bytes.Reader }

func (e errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// An upload by name adds a file or replaces the one of that name, and says
// which; a broken stream leaves the earlier file as it was.
func TestUploadStore(t *testing.T) {
	dir := t.TempDir()
	u, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ctx := context.Background()
	store := func(name, body string, replace bool) draupnir.UploadSummary {
		t.Helper()
		sum, err := u.Store(ctx, name, strings.NewReader(body), replace)
		if err != nil {
			t.Fatalf("store %s: %v", name, err)
		}
		if sum.Name != name || sum.Bytes != int64(len(body)) {
			t.Errorf("store %s: %+v", name, sum)
		}
		return sum
	}
	content := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return string(b)
	}
	check := func(what string, sum draupnir.UploadSummary, replaced, holds []string) {
		t.Helper()
		if !slices.Equal(sum.Replaced, replaced) || !slices.Equal(sum.Holds, holds) {
			t.Errorf("%s: replaced %q, holds %q; want %q, %q", what, sum.Replaced, sum.Holds, replaced, holds)
		}
	}

	check("the first file", store("base.tar.gz", "base 1", false), nil, []string{"base.tar.gz"})
	check("the WAL beside it", store("pg_wal.tar.gz", "wal", false), nil, []string{"base.tar.gz", "pg_wal.tar.gz"})
	check("the base again", store("base.tar.gz", "base 2", false), []string{"base.tar.gz"}, []string{"base.tar.gz", "pg_wal.tar.gz"})
	if content("base.tar.gz") != "base 2" || content("pg_wal.tar.gz") != "wal" {
		t.Errorf("after replacing the base: %q, %q", content("base.tar.gz"), content("pg_wal.tar.gz"))
	}

	// A stream that breaks keeps the earlier file, and leaves no part.
	if _, err := u.Store(ctx, "base.tar.gz", errReader{bytes.NewReader([]byte("base 3, cut"))}, false); err == nil {
		t.Error("a broken stream was stored")
	}
	if content("base.tar.gz") != "base 2" {
		t.Errorf("a broken stream changed the earlier file: %q", content("base.tar.gz"))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("left behind: %v", ents)
	}

	for _, name := range []string{"", ".", "..", "../x.tar", "a/b.tar", "notes.txt", ".tar", "x.tar\x00", strings.Repeat("a", 300) + ".tar"} {
		if _, err := u.Store(ctx, name, strings.NewReader("x"), false); draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Errorf("stored as %q: %v", name, err)
		}
	}
	check("--replace", store("backup.tar", "all", true), []string{"base.tar.gz", "pg_wal.tar.gz"}, []string{"backup.tar"})
	if u.Written() != 0 {
		t.Errorf("stores counted as written files: %d", u.Written())
	}
}
