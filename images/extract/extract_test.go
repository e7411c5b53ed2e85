package extract

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

func TestIsArchive(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"base.tar", true},
		{"base.tar.gz", true},
		{"BASE.TAR.GZ", true},
		{"b.tgz", true},
		{"b.tar.zst", true},
		{"b.tar.zstd", true},
		{"b.tar.lz4", true},
		{"b.tar.bz2", true},
		{"b.tbz2", true},
		{"b.tar.xz", false},
		{"PG_VERSION", false},
		{"base.tar.gz.part", false},
		{"tar", false},
		{".tar", false},
		{"b.gz", false},
	}
	for _, tc := range tests {
		if got := IsArchive(tc.name); got != tc.want {
			t.Errorf("IsArchive(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestDecompress(t *testing.T) {
	plain := tarOf(t, file("a", strings.Repeat("hello ", 1000)))
	var zst, lz bytes.Buffer
	zw, _ := zstd.NewWriter(&zst)
	zw.Write(plain)
	zw.Close()
	lw := lz4.NewWriter(&lz)
	lw.Write(plain)
	lw.Close()
	bz, err := exec.Command("sh", "-c", "printf hello | bzip2").Output()
	if err != nil {
		t.Fatalf("bzip2: %v", err)
	}
	tests := []struct {
		name       string
		in, want   []byte
		wantErrKnd draupnir.Kind
	}{
		{"plain", plain, plain, 0},
		{"gzip", gzipped(t, plain), plain, 0},
		{"gzip-concatenated", append(gzipped(t, plain[:100]), gzipped(t, plain[100:])...), plain, 0},
		{"zstd", zst.Bytes(), plain, 0},
		{"lz4", lz.Bytes(), plain, 0},
		{"bzip2", bz, []byte("hello"), 0},
		{"tiny", []byte("ab"), []byte("ab"), 0},
		{"empty", nil, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := Decompress(bytes.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
	// A gzip magic with a broken header is the archive's fault.
	_, err = Decompress(bytes.NewReader([]byte{0x1f, 0x8b, 0, 0, 0}))
	if draupnir.KindOf(err) != draupnir.KindUnprocessable {
		t.Fatalf("broken gzip header: got %v, want an unprocessable error", err)
	}
}

// TestTarValid extracts an archive that uses every supported member type and
// compares the result with GNU tar's, modes apart: those are private.
func TestTarValid(t *testing.T) {
	testenv.RequireRoot(t)
	uid, gid := testenv.PostgresUser(t)
	archive := tarOf(t,
		member{name: "./", typ: tar.TypeDir, mode: 0o700},
		member{name: "d/", typ: tar.TypeDir, mode: 0o750},
		member{name: "d/secret", typ: tar.TypeReg, mode: 0o600, body: "s"},
		member{name: "d/setuid", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\n"},
		member{name: "d/sticky/", typ: tar.TypeDir, mode: 0o1777},
		member{name: "d/open", typ: tar.TypeReg, mode: 0o666, body: "umask must not apply"},
		file("implicit/parent/f", "parents made on the way"),
		file("empty", ""),
		file("big", strings.Repeat("0123456789abcdef", 200_000)), // several copy buffers
	)
	for _, walkOnly := range []bool{false, true} {
		ref := testenv.TempDir(t)
		cmd := exec.Command("tar", "-x", "-C", ref)
		cmd.Stdin = bytes.NewReader(archive)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tar -x: %v\n%s", err, out)
		}
		private(t, ref)

		base, dir := sandbox(t)
		st, err := Tar(context.Background(), bytes.NewReader(archive), dir, Options{UID: uid, GID: gid, walkOnly: walkOnly})
		if err != nil {
			t.Fatal(err)
		}
		sameTree(t, tree(t, dir), tree(t, ref))
		checkOwner(t, dir, uid, gid)
		checkConfined(t, base)
		if want := (Stats{Bytes: 1 + 10 + 20 + 23 + 16*200_000, Files: 6, Dirs: 2}); st != want {
			t.Errorf("stats %+v, want %+v", st, want)
		}
		if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
			t.Errorf("the target directory's mode changed to %v", fi.Mode())
		}
	}
}

// TestTarReplaces re-extracts over an earlier, partial extraction: files are
// replaced, not written into, so an inode linked elsewhere stays untouched,
// and a symlink left there is replaced rather than written through.
func TestTarReplaces(t *testing.T) {
	base, dir := sandbox(t)
	outsideFile := filepath.Join(base, "keep")
	if err := os.WriteFile(outsideFile, []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(outsideFile, filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "partial"), []byte("partial upload, longer than the real one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../keep", filepath.Join(dir, "s")); err != nil {
		t.Fatal(err)
	}
	archive := tarOf(t, file("f", "new"), file("partial", "whole"), file("s", "mine"), dirm("d"), dirm("d"))
	if _, err := Tar(context.Background(), bytes.NewReader(archive), dir, Options{UID: -1, GID: -1}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"f": "new", "partial": "whole", "s": "mine"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s holds %q, want %q", name, b, want)
		}
	}
	if b, _ := os.ReadFile(outsideFile); string(b) != "original" {
		t.Errorf("a hard link's other name was written through: %q", b)
	}
	// Again, in full: a re-upload.
	if _, err := Tar(context.Background(), bytes.NewReader(archive), dir, Options{UID: -1, GID: -1}); err != nil {
		t.Fatalf("second extraction: %v", err)
	}
}

// TestTarDiskFull fills a small tmpfs.
func TestTarDiskFull(t *testing.T) {
	testenv.RequireRoot(t)
	mnt := testenv.TempDir(t)
	testenv.Run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "draupnir-test", mnt)
	t.Cleanup(func() { testenv.Run(t, "umount", mnt) })
	archive := tarOf(t, file("big", strings.Repeat("x", 4<<20)))
	_, err := Tar(context.Background(), bytes.NewReader(archive), mnt, Options{UID: -1, GID: -1})
	if draupnir.KindOf(err) != draupnir.KindInsufficientStorage || !strings.Contains(err.Error(), `"big"`) {
		t.Fatalf("got %v, want an insufficient storage error naming the member", err)
	}
}

func TestTarCanceled(t *testing.T) {
	_, dir := sandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Tar(ctx, bytes.NewReader(tarOf(t, file("a", "x"))), dir, Options{UID: -1, GID: -1})
	if err != context.Canceled {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a canceled extraction wrote %v", ents)
	}
}
