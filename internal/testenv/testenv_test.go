package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// skipRecorder is a testing.TB that records Skipf instead of ending the test.
type skipRecorder struct {
	testing.TB
	skipped string
}

func (r *skipRecorder) Helper()                          {}
func (r *skipRecorder) Skipf(format string, args ...any) { r.skipped = fmt.Sprintf(format, args...) }

// TestRequireRoot checks the branch the running user takes: root goes on,
// anyone else is skipped with a reason that starts "needs root:". The
// non-root branch runs in `go test ./...` as a normal user.
func TestRequireRoot(t *testing.T) {
	r := &skipRecorder{TB: t}
	RequireRoot(r)
	if os.Geteuid() == 0 {
		if r.skipped != "" {
			t.Errorf("root skipped: %s", r.skipped)
		}
	} else if !strings.HasPrefix(r.skipped, "needs root: ") {
		t.Errorf("uid %d: skip reason %q, want one starting \"needs root: \"", os.Geteuid(), r.skipped)
	}
}
