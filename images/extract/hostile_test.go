package extract

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// hostileCase is an archive that must be refused. outside is an absolute
// path inside the test's sandbox but outside the extraction directory, for
// members that aim there.
type hostileCase struct {
	name    string
	archive func(t testing.TB, outside string) []byte
	want    draupnir.Kind
	reason  string // part of the error message
}

func hostileCorpus() []hostileCase {
	unprocessable := func(name, reason string, members ...member) hostileCase {
		return hostileCase{name: name, want: draupnir.KindUnprocessable, reason: reason,
			archive: func(t testing.TB, _ string) []byte { return tarOf(t, members...) }}
	}
	return []hostileCase{
		unprocessable("dotdot", "leaves the upload", file("../x", "evil")),
		unprocessable("dotdot-deep", "leaves the upload", file("../../x", "evil")),
		unprocessable("dotdot-inner", "leaves the upload", dirm("a"), file("a/../../x", "evil")),
		unprocessable("absolute-etc", "absolute", file("/etc/draupnir-extract-test", "evil")),
		{name: "absolute-sandbox", want: draupnir.KindUnprocessable, reason: "absolute",
			archive: func(t testing.TB, outside string) []byte { return tarOf(t, file(outside+"/x", "evil")) }},
		// Links of either kind: none is made, wherever it points.
		unprocessable("symlink-etc", "symbolic links are not allowed", symlink("etc", "/etc")),
		unprocessable("symlink-parent-then-write", "symbolic links are not allowed", symlink("l", ".."), file("l/x", "evil")),
		unprocessable("symlink-dot", "symbolic links are not allowed", symlink("l", ".")),
		unprocessable("symlink-inside", "symbolic links are not allowed", file("f", "x"), symlink("l", "f")),
		unprocessable("symlink-dangling", "symbolic links are not allowed", symlink("l", "nowhere")),
		unprocessable("symlink-up-two", "symbolic links are not allowed", dirm("a"), symlink("a/l", "../../x")),
		// Inside the upload as extracted, outside once pgdata/ is moved up.
		unprocessable("symlink-nested-config", "symbolic links are not allowed", dirm("pgdata"), file("pgdata/PG_VERSION", "15\n"),
			symlink("pgdata/pg_ident.conf", "../x")),
		unprocessable("symlink-other-instance", "symbolic links are not allowed", dirm("pgdata/base/16384"),
			symlink("pgdata/base/16384/16396", "../../../2/base/16384/16396")),
		unprocessable("symlink-config-absolute", "symbolic links are not allowed", symlink("postgresql.conf", "/etc/shadow")),
		unprocessable("symlink-tablespace", "tablespaces", dirm("pg_tblspc"), symlink("pg_tblspc/16385", "/srv/ts")),
		unprocessable("symlink-pg_wal", "initdb --waldir", symlink("pg_wal", "/srv/wal")),
		unprocessable("symlink-empty", "symbolic links are not allowed", symlink("l", "")),
		unprocessable("hardlink-etc-passwd", "hard links are not allowed", hardlink("p", "/etc/passwd")),
		unprocessable("hardlink-parent", "hard links are not allowed", hardlink("p", "../x")),
		unprocessable("hardlink-inside", "hard links are not allowed", file("f", "x"), hardlink("p", "f")),
		unprocessable("hardlink-missing", "hard links are not allowed", hardlink("p", "missing")),
		unprocessable("hardlink-config", "hard links are not allowed", dirm("base/1"), file("base/1/1259", "x"), hardlink("pg_hba.conf", "base/1/1259")),
		unprocessable("hardlink-self", "hard links are not allowed", file("f", "x"), hardlink("f", "f")),
		unprocessable("char-device", "device", member{name: "null", typ: tar.TypeChar, mode: 0o666}),
		unprocessable("block-device", "device", member{name: "sda", typ: tar.TypeBlock, mode: 0o666}),
		unprocessable("fifo", "fifo", member{name: "p", typ: tar.TypeFifo, mode: 0o666}),
		unprocessable("file-under-file", "not a directory", file("f", "x"), file("f/g", "y")),
		unprocessable("file-over-dir", "existing directory", dirm("d"), file("d", "x")),
		unprocessable("dot-as-file", "upload directory itself", file(".", "x")),
		unprocessable("long-component", "too long", file(strings.Repeat("a", 300), "x")),
		{name: "nul-in-name", want: draupnir.KindUnprocessable, reason: "invalid archive",
			archive: func(testing.TB, string) []byte { return paxNamed("a\x00/../../x") }},
		{name: "huge-name", want: draupnir.KindUnprocessable, reason: "longer than",
			archive: func(testing.TB, string) []byte { return paxNamed(strings.Repeat("a/", 50_000)) }},
		{name: "enormous-name", want: draupnir.KindUnprocessable, reason: "invalid archive",
			archive: func(testing.TB, string) []byte { return paxNamed(strings.Repeat("a", 2<<20)) }},
		{name: "unknown-type", want: draupnir.KindUnprocessable, reason: "unsupported member type",
			archive: func(testing.TB, string) []byte {
				return append(rawBlock("label", 'V', 0), make([]byte, 1024)...)
			}},
		{name: "truncated-in-file", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := tarOf(t, file("a", strings.Repeat("x", 5000)))
				return b[:512+3000]
			}},
		{name: "truncated-in-header", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := tarOf(t, file("a", "x"), file("b", "y"))
				return b[:1024+100]
			}},
		{name: "truncated-between-members", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := tarOf(t, file("a", strings.Repeat("x", 512)), file("b", "y"))
				return b[:1024]
			}},
		{name: "truncated-gzip", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := gzipped(t, tarOf(t, file("a", strings.Repeat("xyz", 10000))))
				return b[:len(b)/2]
			}},
		{name: "trailing-bomb", want: draupnir.KindUnprocessable, reason: "after the end of the tar archive",
			archive: func(t testing.TB, _ string) []byte {
				return gzipped(t, append(tarOf(t, file("a", "x")), make([]byte, maxTrailing+1)...))
			}},
		{name: "truncated-zstd", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := zstdOf(t, tarOf(t, file("a", strings.Repeat("xyz", 10000))))
				return b[:len(b)/2]
			}},
		{name: "truncated-lz4", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(t testing.TB, _ string) []byte {
				b := lz4Of(t, tarOf(t, file("a", strings.Repeat("xyz", 10000))))
				return b[:len(b)/2]
			}},
		{name: "empty", want: draupnir.KindUnprocessable, reason: "truncated archive",
			archive: func(testing.TB, string) []byte { return nil }},
		{name: "garbage", want: draupnir.KindUnprocessable, reason: "invalid archive",
			archive: func(testing.TB, string) []byte { return bytes.Repeat([]byte("not a tar archive\n"), 100) }},
		{name: "corrupt-gzip", want: draupnir.KindUnprocessable, reason: "invalid archive",
			archive: func(t testing.TB, _ string) []byte {
				b := gzipped(t, tarOf(t, file("a", strings.Repeat("xyz", 10000))))
				b[len(b)-5] ^= 0xff // the CRC
				return b
			}},
	}
}

func TestTarRefusesHostileArchives(t *testing.T) {
	for _, mode := range []struct {
		name     string
		walkOnly bool
	}{{"openat2", false}, {"walk", true}} {
		t.Run(mode.name, func(t *testing.T) {
			for _, tc := range hostileCorpus() {
				t.Run(tc.name, func(t *testing.T) {
					base, dir := sandbox(t)
					archive := tc.archive(t, filepath.Join(base, "parent"))
					_, err := Tar(context.Background(), bytes.NewReader(archive), dir,
						Options{UID: -1, GID: -1, walkOnly: mode.walkOnly})
					if err == nil {
						t.Fatal("extraction succeeded")
					}
					if k := draupnir.KindOf(err); k != tc.want {
						t.Errorf("error kind %d, want %d: %v", k, tc.want, err)
					}
					if !strings.Contains(err.Error(), tc.reason) {
						t.Errorf("error %q does not say %q", err, tc.reason)
					}
					checkConfined(t, base)
					if _, err := os.Lstat("/etc/draupnir-extract-test"); err == nil {
						t.Fatal("/etc/draupnir-extract-test was written")
					}
				})
			}
		})
	}
}

// TestTarRefusesPreexistingSymlinks covers links planted in the upload
// directory some other way than by the archive.
func TestTarRefusesPreexistingSymlinks(t *testing.T) {
	for _, walkOnly := range []bool{false, true} {
		for _, m := range []member{file("evil/x", "x"), dirm("evil/d"), dirm("evil/d/e"), file("evil", "x")} {
			base, dir := sandbox(t)
			outside := filepath.Join(base, "parent")
			if err := os.Symlink(outside, filepath.Join(dir, "evil")); err != nil {
				t.Fatal(err)
			}
			_, err := Tar(context.Background(), bytes.NewReader(tarOf(t, m)), dir, Options{UID: -1, GID: -1, walkOnly: walkOnly})
			if m.name == "evil" {
				// Replacing the link itself by a file is fine.
				if err != nil {
					t.Fatalf("walkOnly=%v: replacing a symlink by a file: %v", walkOnly, err)
				}
				if fi, err := os.Lstat(filepath.Join(dir, "evil")); err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("evil is not a regular file now: %v %v", fi, err)
				}
				continue
			}
			if draupnir.KindOf(err) != draupnir.KindUnprocessable {
				t.Errorf("walkOnly=%v %s: got %v, want an unprocessable error", walkOnly, m.name, err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("walkOnly=%v %s: written through the planted symlink: %v", walkOnly, m.name, ents)
			}
		}
	}
}

func TestTarLimits(t *testing.T) {
	many := []member{dirm("d")}
	for i := 0; i < 10; i++ {
		many = append(many, file("d/f"+strings.Repeat("x", i), "x"))
	}
	tests := []struct {
		name    string
		archive []byte
		opts    Options
		reason  string
	}{
		{"entries", tarOf(t, many...), Options{UID: -1, GID: -1, MaxEntries: 5}, "more than 5 members"},
		{"bytes", tarOf(t, file("a", "12345"), file("b", "67890")), Options{UID: -1, GID: -1, MaxBytes: 8}, "expands beyond 8 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base, dir := sandbox(t)
			_, err := Tar(context.Background(), bytes.NewReader(tc.archive), dir, tc.opts)
			if draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want an unprocessable error saying %q", err, tc.reason)
			}
			checkConfined(t, base)
		})
	}
	// Just at the limits passes.
	_, dir := sandbox(t)
	if _, err := Tar(context.Background(), bytes.NewReader(tarOf(t, many...)), dir, Options{UID: -1, GID: -1, MaxEntries: len(many)}); err != nil {
		t.Fatalf("at MaxEntries: %v", err)
	}
	_, dir = sandbox(t)
	if _, err := Tar(context.Background(), bytes.NewReader(tarOf(t, file("a", "12345"), file("b", "678"))), dir, Options{UID: -1, GID: -1, MaxBytes: 8}); err != nil {
		t.Fatalf("at MaxBytes: %v", err)
	}
}

// bomb is a gzip stream of a tar archive holding one file of size bytes of
// zeros, made lazily from repeated gzip members so it costs nothing to
// produce. Reading past cancelAfter members calls cancel.
type bomb struct {
	parts       [][]byte
	zeros       []byte // one gzip member of zeroChunk zeros
	left        int    // members of zeros still to emit
	emitted     int
	cancelAfter int
	cancel      func()
	cur         []byte
}

const zeroChunk = 1 << 20

func newBomb(t testing.TB, size int64) *bomb {
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	tw.Flush()
	return &bomb{
		parts: [][]byte{gzipped(t, hdr.Bytes())},
		zeros: gzipped(t, make([]byte, zeroChunk)),
		left:  int(size / zeroChunk),
	}
}

func (b *bomb) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		switch {
		case len(b.parts) > 0:
			b.cur, b.parts = b.parts[0], b.parts[1:]
		case b.left > 0:
			b.cur = b.zeros
			b.left--
			b.emitted++
			if b.cancel != nil && b.emitted == b.cancelAfter {
				b.cancel()
			}
		default:
			return 0, errors.New("bomb exhausted") // never reached in these tests
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

func TestTarGzipBomb(t *testing.T) {
	const size = 20 << 30 // 20 GiB of zeros in ~20 MiB of gzip, never all made
	t.Run("MaxBytes", func(t *testing.T) {
		base, dir := sandbox(t)
		b := newBomb(t, size)
		_, err := Tar(context.Background(), b, dir, Options{UID: -1, GID: -1, MaxBytes: 1 << 30})
		if draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), "expands beyond") || !errors.Is(err, ErrTooLarge) {
			t.Fatalf("got %v, want the size limit error (ErrTooLarge)", err)
		}
		if b.emitted > 1 {
			t.Errorf("read %d MiB of zeros before refusing; the header alone should do", b.emitted)
		}
		checkConfined(t, base)
	})
	t.Run("cancel", func(t *testing.T) {
		base, dir := sandbox(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b := newBomb(t, size)
		b.cancel, b.cancelAfter = cancel, 4
		st, err := Tar(ctx, b, dir, Options{UID: -1, GID: -1})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if st.Bytes > 8*zeroChunk {
			t.Errorf("wrote %d bytes after cancellation at ~4 MiB", st.Bytes)
		}
		checkConfined(t, base)
	})
}
