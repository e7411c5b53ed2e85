package images

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// A backup whose bootstrap superuser is not "postgres" is asked for its
// name in single-user mode, and its postgres is running again afterwards.
func TestFindSuperuserNotPostgres(t *testing.T) {
	testenv.RequireRoot(t)
	sup, err := supervisor.New("postgres", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := testenv.TempDir(t)
	dir := filepath.Join(base, "data")
	bin := testenv.BinDir(t)
	uid, gid := testenv.PostgresUser(t)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	testenv.AsPostgres(t, filepath.Join(bin, "initdb"), "-D", dir, "-A", "trust", "-U", "boss", "--no-sync")
	t.Cleanup(func() { testenv.KillPostgresUnder(dir) })
	spec := supervisor.Spec{DataDir: dir, SocketDir: filepath.Join(base, "sock"), Port: privatePort,
		Settings: map[string]string{"fsync": "off"}, LogFile: filepath.Join(base, "postgres.log")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	proc, err := sup.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if proc != nil {
			proc.Stop(context.Background(), supervisor.Immediate, 5*time.Second)
		}
	}()
	s := New(Options{Supervisor: sup})
	defer s.Close()
	got, err := s.findSuperuser(ctx, spec.SocketDir, bin, dir, &proc, spec)
	if err != nil {
		t.Fatal(err)
	}
	if got != "boss" {
		t.Errorf("superuser %q, want boss", got)
	}
	if proc == nil || !proc.Alive() {
		t.Fatal("postgres is not running again after the single-user query")
	}
	if _, err := listDatabases(ctx, spec.SocketDir, got); err != nil {
		t.Errorf("cannot connect as %s afterwards: %v", got, err)
	}
}
