package extract

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/pierrec/lz4/v4"
)

// TestTarBaseBackup extracts real pg_basebackup -Ft archives, plain and in
// every supported compression, and compares each result with GNU tar's.
func TestTarBaseBackup(t *testing.T) {
	testenv.RequireRoot(t)
	uid, gid := testenv.PostgresUser(t)
	src := testenv.SourceCluster(t, "CREATE DATABASE app")
	src.SQL(t, "app", "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
	plain := src.BaseBackup(t)
	gz := src.BaseBackup(t, "-z")

	work := testenv.TempDir(t)
	baseTar := filepath.Join(plain, "base.tar")
	testenv.Run(t, "zstd", "-q", "-o", filepath.Join(work, "base.tar.zst"), baseTar)
	testenv.Run(t, "sh", "-c", "bzip2 -c < "+baseTar+" > "+filepath.Join(work, "base.tar.bz2"))
	writeLZ4(t, baseTar, filepath.Join(work, "base.tar.lz4"))

	reference := func(archive string) map[string]node {
		ref := testenv.TempDir(t)
		testenv.Run(t, "tar", "-x", "-f", archive, "-C", ref)
		return tree(t, ref)
	}
	plainRef := reference(baseTar)
	tests := []struct {
		name    string
		archive string
		ref     map[string]node
	}{
		{"plain", baseTar, plainRef},
		{"gzip", filepath.Join(gz, "base.tar.gz"), reference(filepath.Join(gz, "base.tar.gz"))},
		{"zstd", filepath.Join(work, "base.tar.zst"), plainRef},
		{"lz4", filepath.Join(work, "base.tar.lz4"), plainRef},
		{"bzip2", filepath.Join(work, "base.tar.bz2"), plainRef},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.TempDir(t)
			st := extractFile(t, tc.archive, dir, Options{UID: uid, GID: gid})
			got := tree(t, dir)
			sameTree(t, got, tc.ref)
			checkOwner(t, dir, uid, gid)
			if n, ok := got["PG_VERSION"]; !ok || n.Size == 0 {
				t.Fatal("PG_VERSION is missing")
			}
			if n := got["global/pg_control"]; n.Perm != 0o600 {
				t.Errorf("global/pg_control has mode %v, want 0600", n.Perm)
			}
			if st.Files == 0 || st.Dirs == 0 || st.Bytes < 1<<20 {
				t.Errorf("implausible stats %+v", st)
			}
		})
	}

	// The WAL archive goes into pg_wal, as finalise will do.
	dir := testenv.TempDir(t)
	extractFile(t, baseTar, dir, Options{UID: uid, GID: gid})
	extractFile(t, filepath.Join(plain, "pg_wal.tar"), filepath.Join(dir, "pg_wal"), Options{UID: uid, GID: gid})
	segs, _ := filepath.Glob(filepath.Join(dir, "pg_wal", "0000000*"))
	if len(segs) == 0 {
		t.Fatal("no WAL segment extracted into pg_wal")
	}
	checkOwner(t, dir, uid, gid)
}

func extractFile(t *testing.T, archive, dir string, opts Options) Stats {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := Tar(context.Background(), f, dir, opts)
	if err != nil {
		t.Fatalf("extracting %s: %v", archive, err)
	}
	return st
}

func writeLZ4(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	zw := lz4.NewWriter(out)
	if _, err := io.Copy(zw, in); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	// Check the file really is an lz4 frame the CLI reads too.
	if out, err := exec.Command("lz4", "-t", to).CombinedOutput(); err != nil {
		t.Fatalf("lz4 -t: %v\n%s", err, out)
	}
}
