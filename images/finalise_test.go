package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// The layout of a data path in miniature, for the preparation of image 9:
// links that escape the work directory aim at the other entries.
const (
	workRel     = "image_snapshots/9.work"
	otherImage  = "image_snapshots/2/base/16384/16396" // another image's relation
	otherInst   = "instances/7/base/16384/16396"       // another user's instance's relation
	besideWork  = "image_snapshots/x"                  // where pgdata/x -> ../x lands after the move up
	hostSecret  = "etc/secret"                         // stands for the host's files
	outsideWAL  = "wal"                                // an empty directory outside
	victimAtime = 2001
)

// dataPath lays out root with the victims and an empty work directory.
func dataPath(t *testing.T) (root, work string) {
	t.Helper()
	root = t.TempDir()
	for _, f := range []string{otherImage, otherInst, besideWork, hostSecret} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("lc_messages = 'victim "+f+"'\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// atime before mtime: with relatime, any read moves atime.
		if err := os.Chtimes(p, time.Date(victimAtime, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(victimAtime+1, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{outsideWAL, workRel} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return root, filepath.Join(root, workRel)
}

// entry is what the test knows of one path outside the work directory.
type entry struct {
	mode         fs.FileMode
	mtime, atime time.Time
}

// outside records every path under root but outside work, without reading
// any file (so without moving atimes).
func outside(t *testing.T, root, work string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if p == work {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		out[p] = entry{mode: fi.Mode(), mtime: fi.ModTime(), atime: time.Unix(st.Atim.Unix())}
		return nil
	})
	return out
}

// checkUntouched fails unless everything outside work is as before: no new
// or removed entries, nothing written (mtime, content) and no file read
// (atime).
func checkUntouched(t *testing.T, root, work string, before map[string]entry) {
	t.Helper()
	after := outside(t, root, work)
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			t.Errorf("%s was removed", p)
		case a.mode != b.mode || !a.mtime.Equal(b.mtime):
			t.Errorf("%s was changed: %v %v, was %v %v", p, a.mode, a.mtime, b.mode, b.mtime)
		case b.mode.IsRegular() && !a.atime.Equal(b.atime):
			t.Errorf("%s was read (atime %v, was %v)", p, a.atime, b.atime)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created outside the work directory", p)
		}
	}
	for _, f := range []string{otherImage, otherInst, besideWork, hostSecret} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil || string(b) != "lc_messages = 'victim "+f+"'\n" {
			t.Errorf("%s holds %q (%v)", f, b, err)
		}
	}
}

// tm is one member of a test tarball.
type tm struct {
	name, body, link string
	typ              byte
}

func reg(name, body string) tm { return tm{name: name, body: body, typ: tar.TypeReg} }
func sym(name, to string) tm   { return tm{name: name, link: to, typ: tar.TypeSymlink} }
func hard(name, to string) tm  { return tm{name: name, link: to, typ: tar.TypeLink} }

// dataDir is a small data directory under prefix ("" or "pgdata/"): enough
// for preparation, which looks for PG_VERSION and rewrites the configuration.
func dataDir(prefix string) []tm {
	return []tm{
		reg(prefix+"PG_VERSION", "15\n"),
		reg(prefix+"global/pg_control", "control"),
		reg(prefix+"base/16384/16396", "own relation"),
		reg(prefix+"postgresql.conf", "port = 5433\nlc_messages = 'C'\n"),
		reg(prefix+"pg_hba.conf", "host all all all trust\n"),
		reg(prefix+"pg_ident.conf", ""),
		reg(prefix+"standby.signal", ""),
	}
}

func tarball(t *testing.T, members []tm) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: 0o600, Size: int64(len(m.body))}
		if m.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(m.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipOf(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// plant makes the members directly in work, as a data directory copied into
// the upload would arrive; hard links name paths relative to root.
func plant(t *testing.T, root, work string, members []tm) {
	t.Helper()
	for _, m := range members {
		p := filepath.Join(work, m.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		var err error
		switch m.typ {
		case tar.TypeReg:
			err = os.WriteFile(p, []byte(m.body), 0o600)
		case tar.TypeSymlink:
			err = os.Symlink(m.link, p)
		case tar.TypeLink:
			err = os.Link(filepath.Join(root, m.link), p)
		case tar.TypeFifo:
			err = syscall.Mkfifo(p, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPrepareDataRefusesLinks plants links of every kind, in tarballs and in
// data directories copied into the upload, nested under pgdata/ (moved up a
// level by preparation) and not: each upload is refused with a clear message,
// and nothing outside the work directory is read, written or created.
func TestPrepareDataRefusesLinks(t *testing.T) {
	nested := func(extra ...tm) []tm { return append(dataDir("pgdata/"), extra...) }
	flat := func(extra ...tm) []tm { return append(dataDir(""), extra...) }
	// without drops the data directory's own member name, so that a link
	// can take its place.
	without := func(ms []tm, name string) []tm {
		var out []tm
		for _, m := range ms {
			if m.name != name {
				out = append(out, m)
			}
		}
		return out
	}
	type upload struct {
		files   map[string][]byte // archives in the upload, by name
		planted []tm              // or a tree copied in
	}
	tarUp := func(ms []tm) upload { return upload{files: map[string][]byte{"base.tar": tarball(t, ms)}} }
	tests := []struct {
		name   string
		up     func(root string) upload
		reason string
	}{
		// In tarballs.
		{"tar: nested config link escaping after the move", func(string) upload {
			return tarUp(append(without(nested(), "pgdata/pg_ident.conf"), sym("pgdata/pg_ident.conf", "../x")))
		}, "symbolic links are not allowed"},
		{"tar: nested relation link into another image", func(string) upload {
			return tarUp(append(without(nested(), "pgdata/base/16384/16396"), sym("pgdata/base/16384/16396", "../../../2/base/16384/16396")))
		}, "symbolic links are not allowed"},
		{"tar: relation link into another instance", func(string) upload {
			return tarUp(append(without(flat(), "base/16384/16396"), sym("base/16384/16396", "../../../../instances/7/base/16384/16396")))
		}, "symbolic links are not allowed"},
		{"tar.gz: nested standby.signal link", func(string) upload {
			return upload{files: map[string][]byte{"base.tar.gz": gzipOf(t, tarball(t,
				append(without(nested(), "pgdata/standby.signal"), sym("pgdata/standby.signal", "../x"))))}}
		}, "symbolic links are not allowed"},
		{"tar: absolute config link", func(root string) upload {
			return tarUp(append(without(flat(), "postgresql.conf"), sym("postgresql.conf", filepath.Join(root, hostSecret))))
		}, "symbolic links are not allowed"},
		{"tar: config link inside the tree", func(string) upload {
			return tarUp(append(without(flat(), "pg_hba.conf"), sym("pg_hba.conf", "global/pg_control")))
		}, "symbolic links are not allowed"},
		{"tar: tablespace link", func(string) upload {
			return tarUp(append(flat(), sym("pg_tblspc/16385", "/srv/tablespace")))
		}, "tablespaces"},
		{"pg_wal.tar: link in the WAL", func(string) upload {
			return upload{files: map[string][]byte{
				"base.tar":   tarball(t, nested()),
				"pg_wal.tar": tarball(t, []tm{reg("000000010000000000000001", "wal"), sym("archive_status/000000010000000000000001.done", "../../../x")}),
			}}
		}, "symbolic links are not allowed"},
		{"pg_wal.tar: segment link into another instance", func(string) upload {
			return upload{files: map[string][]byte{
				"base.tar":   tarball(t, flat()),
				"pg_wal.tar": tarball(t, []tm{sym("000000010000000000000001", "../../../instances/7/base/16384/16396")}),
			}}
		}, "symbolic links are not allowed"},
		{"tar: hard link out of the upload", func(string) upload {
			return tarUp(append(without(nested(), "pgdata/pg_hba.conf"), hard("pgdata/pg_hba.conf", "../x")))
		}, "hard links are not allowed"},
		{"tar: hard link inside the tree", func(string) upload {
			return tarUp(append(without(flat(), "pg_hba.conf"), hard("pg_hba.conf", "global/pg_control")))
		}, "hard links are not allowed"},
		// Data directories copied into the upload.
		{"copied: nested config link escaping after the move", func(string) upload {
			return upload{planted: append(without(nested(), "pgdata/pg_ident.conf"), sym("pgdata/pg_ident.conf", "../x"))}
		}, `symbolic link, "pg_ident.conf" -> "../x"`},
		{"copied: nested relation link into another image", func(string) upload {
			return upload{planted: append(without(nested(), "pgdata/base/16384/16396"), sym("pgdata/base/16384/16396", "../../../2/base/16384/16396"))}
		}, "a link could reach files outside the image"},
		{"copied: relation link into another instance", func(string) upload {
			return upload{planted: append(without(flat(), "base/16384/16396"), sym("base/16384/16396", "../../../../instances/7/base/16384/16396"))}
		}, "symbolic link"},
		{"copied: absolute config link", func(root string) upload {
			return upload{planted: append(without(flat(), "pg_hba.conf"), sym("pg_hba.conf", filepath.Join(root, hostSecret)))}
		}, "symbolic link"},
		{"copied: relative postgresql.conf link", func(string) upload {
			return upload{planted: append(without(nested(), "pgdata/postgresql.conf"), sym("pgdata/postgresql.conf", "../../etc/secret"))}
		}, "symbolic link"},
		{"copied: pg_wal kept elsewhere", func(root string) upload {
			return upload{planted: append(flat(), sym("pg_wal", filepath.Join(root, outsideWAL)))}
		}, "initdb --waldir"},
		{"copied: pg_wal link, then pg_wal.tar", func(root string) upload {
			return upload{planted: append(flat(), sym("pg_wal", "../../"+outsideWAL)),
				files: map[string][]byte{"pg_wal.tar": tarball(t, []tm{reg("000000010000000000000001", "wal")})}}
		}, "symbolic link or not a directory"},
		{"copied: hard link to a file outside", func(string) upload {
			return upload{planted: append(without(nested(), "pgdata/pg_hba.conf"), hard("pgdata/pg_hba.conf", besideWork))}
		}, "hard link"},
		{"copied: two names for one file", func(string) upload {
			return upload{planted: append(flat(), hard("base/16384/16397", workRel+"/base/16384/16396"))}
		}, "hard link"},
		{"copied: fifo", func(string) upload {
			return upload{planted: append(without(flat(), "postgresql.conf"), tm{name: "postgresql.conf", typ: tar.TypeFifo})}
		}, "neither a file nor a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root, work := dataPath(t)
			up := tc.up(root)
			plant(t, root, work, up.planted)
			for name, b := range up.files {
				if err := os.WriteFile(filepath.Join(work, name), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := outside(t, root, work)
			s := New(Options{})
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err := s.prepareData(ctx, work)
			if err == nil {
				// What finalise would do next.
				err = writePrivateConfig(work)
				t.Errorf("preparation accepted the upload (config: %v)", err)
			} else if draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("got %v (kind %d), want an unprocessable error saying %q", err, draupnir.KindOf(err), tc.reason)
			}
			checkUntouched(t, root, work, before)
		})
	}
}

// TestPrepareDataNested: a clean upload under pgdata/ is moved up a level and
// prepared, with the WAL archive in its pg_wal.
func TestPrepareDataNested(t *testing.T) {
	root, work := dataPath(t)
	os.WriteFile(filepath.Join(work, "base.tar"), tarball(t, dataDir("pgdata/")), 0o600)
	os.WriteFile(filepath.Join(work, "pg_wal.tar.gz"), gzipOf(t, tarball(t, []tm{reg("000000010000000000000001", "wal")})), 0o600)
	before := outside(t, root, work)
	s := New(Options{})
	defer s.Close()
	if err := s.prepareData(context.Background(), work); err != nil {
		t.Fatal(err)
	}
	if err := writePrivateConfig(work); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"PG_VERSION", "base/16384/16396", "pg_wal/000000010000000000000001"} {
		if _, err := os.Lstat(filepath.Join(work, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"pgdata", "base.tar", "pg_wal.tar.gz", "standby.signal"} {
		if _, err := os.Lstat(filepath.Join(work, p)); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(work, "postgresql.conf")); !strings.Contains(string(b), "lc_messages = 'C'") || strings.Contains(string(b), "port = 5433") {
		t.Errorf("postgresql.conf does not carry lc_messages alone:\n%s", b)
	}
	checkUntouched(t, root, work, before)
}

// TestWritePrivateConfigReplacesLinks: configuration files that are links,
// symbolic (absolute, relative, dangling) or hard, are replaced by files of
// their own and the files removed are unlinked, never written or read
// through: what the links point at stays as it was.
func TestWritePrivateConfigReplacesLinks(t *testing.T) {
	root, work := dataPath(t)
	plant(t, root, work, []tm{
		reg("PG_VERSION", "15\n"),
		sym("postgresql.conf", filepath.Join(root, hostSecret)),
		sym("postgresql.auto.conf", "../2/base/16384/16396"),
		hard("pg_hba.conf", besideWork),
		sym("pg_ident.conf", "../../new"), // dangling: writing through would create it
		sym("standby.signal", "../../"+otherInst),
		hard("recovery.signal", otherImage),
		sym(".draupnir-pg_hba.conf.tmp", "../x"), // in the way of a temporary name
	})
	before := outside(t, root, work)
	if err := writePrivateConfig(work); err != nil {
		t.Fatal(err)
	}
	checkUntouched(t, root, work, before)
	for _, name := range []string{"postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"} {
		fi, err := os.Lstat(filepath.Join(work, name))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Nlink != 1 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v with %d names, want a regular 0600 file of its own", name, fi.Mode(), fi.Sys().(*syscall.Stat_t).Nlink)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(work, "postgresql.conf")); strings.Contains(string(b), "victim") {
		t.Errorf("postgresql.conf carried a line read through its link:\n%s", b)
	}
	ents, _ := os.ReadDir(work)
	for _, e := range ents {
		switch e.Name() {
		case "PG_VERSION", "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf":
		default:
			t.Errorf("%s is left in the data directory", e.Name())
		}
	}
	// A directory in the place of a file is the upload's fault.
	if err := os.Remove(filepath.Join(work, "pg_hba.conf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(work, "pg_hba.conf"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writePrivateConfig(work); draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), "pg_hba.conf is a directory") {
		t.Errorf("pg_hba.conf a directory: got %v, want an unprocessable error", err)
	}
}
