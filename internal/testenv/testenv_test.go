package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestBtrfsAndSourceCluster(t *testing.T) {
	mnt := Btrfs(t, 1<<30)
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != 0x9123683e {
		t.Fatalf("%s is not btrfs (magic %#x)", mnt, st.Type)
	}
	src := SourceCluster(t, "CREATE DATABASE app; ")
	src.SQL(t, "app", "CREATE TABLE t AS SELECT generate_series(1,100) AS n")
	if got := src.SQL(t, "app", "SELECT count(*) FROM t"); got != "100\n" {
		t.Fatalf("count = %q", got)
	}
	dir := src.BaseBackup(t, "-z")
	for _, f := range []string{"base.tar.gz", "pg_wal.tar.gz"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
}
