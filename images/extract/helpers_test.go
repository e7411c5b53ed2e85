package extract

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// member is one entry of a test archive.
type member struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	size       int64 // header size when body is empty and size is set (truncation tests)
}

func file(name, body string) member {
	return member{name: name, typ: tar.TypeReg, mode: 0o644, body: body}
}
func dirm(name string) member { return member{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) member {
	return member{name: name, typ: tar.TypeSymlink, link: to, mode: 0o777}
}
func hardlink(name, to string) member {
	return member{name: name, typ: tar.TypeLink, link: to, mode: 0o644}
}

// tarOf builds an archive of members, with the end-of-archive marker.
func tarOf(t testing.TB, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: m.mode, Format: tar.FormatPAX}
		if m.typ == tar.TypeReg {
			hdr.Size = int64(len(m.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("writing header %q: %v", m.name, err)
		}
		if _, err := tw.Write([]byte(m.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawBlock builds a 512-byte ustar header by hand, for headers archive/tar's
// writer refuses to produce.
func rawBlock(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "00000000000\x00")
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// paxRecord formats one "len key=value\n" PAX record.
func paxRecord(key, value string) string {
	rest := " " + key + "=" + value + "\n"
	n := len(rest)
	for {
		l := len(strconv.Itoa(n)) + len(rest)
		if l == n {
			break
		}
		n = l
	}
	return strconv.Itoa(n) + rest
}

// paxNamed builds an archive whose single file's name comes from a raw PAX
// record (which may hold a NUL or be huge).
func paxNamed(name string) []byte {
	rec := paxRecord("path", name)
	var out []byte
	out = append(out, rawBlock("PaxHeaders/x", 'x', int64(len(rec)))...)
	out = append(out, pad([]byte(rec))...)
	out = append(out, rawBlock("placeholder", '0', 1)...)
	out = append(out, pad([]byte("x"))...)
	return append(out, make([]byte, 1024)...)
}

func zstdOf(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func lz4Of(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := lz4.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sandbox makes base/parent/dir and returns base and dir: anything the
// extraction writes outside dir shows up in base or parent.
func sandbox(t testing.TB) (base, dir string) {
	t.Helper()
	base = t.TempDir()
	dir = filepath.Join(base, "parent", "dir")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return base, dir
}

// checkConfined fails the test if anything exists under base but outside
// base/parent/dir, or if dir holds a link of either kind.
func checkConfined(t testing.TB, base string) {
	t.Helper()
	for _, p := range []string{base, filepath.Join(base, "parent")} {
		ents, err := os.ReadDir(p)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{base: "parent", filepath.Join(base, "parent"): "dir"}[p]
		if len(ents) != 1 || ents[0].Name() != want {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("written outside the extraction directory: %s holds %q", p, names)
		}
	}
	dir := filepath.Join(base, "parent", "dir")
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			t.Fatalf("extraction left a symbolic link: %s", p)
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() && fi.Sys().(*syscall.Stat_t).Nlink != 1 {
			t.Fatalf("extraction left a hard link: %s has %d names", p, fi.Sys().(*syscall.Stat_t).Nlink)
		}
		return nil
	})
}

// node describes one path of an extracted tree.
type node struct {
	Type fs.FileMode
	Perm fs.FileMode
	Size int64
	Hash string // content hash of files, target of symlinks
}

// tree describes every path under dir.
func tree(t testing.TB, dir string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		n := node{Type: fi.Mode().Type(), Perm: fi.Mode().Perm()}
		switch {
		case fi.Mode().IsRegular():
			n.Size = fi.Size()
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			n.Hash = hex.EncodeToString(sum[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Hash, _ = os.Readlink(p)
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTree fails the test unless got and want describe the same tree.
func sameTree(t testing.TB, got, want map[string]node) {
	t.Helper()
	if len(want) == 0 {
		t.Fatal("reference tree is empty")
	}
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing", p)
		} else if g != w {
			t.Errorf("%s: got %+v, want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: extra", p)
		}
	}
}

// private gives everything under dir (but not dir) the modes Tar gives:
// GNU tar's reference trees keep the archive's.
func private(t testing.TB, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case p == dir || d.Type()&fs.ModeSymlink != 0:
			return nil
		case d.IsDir():
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkOwner fails the test unless everything under dir belongs to uid:gid.
func checkOwner(t testing.TB, dir string, uid, gid int) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		return nil
	})
}
