package statedb

import (
	"context"
	"log/slog"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// backHandler logs to the test and tells when the watch says the cluster
// is back.
type backHandler struct {
	slog.Handler
	back chan struct{}
}

func (h backHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "the embedded state cluster is back" {
		h.back <- struct{}{}
	}
	return h.Handler.Handle(ctx, r)
}

// openEmbedded opens a fresh embedded state database in its own
// directories; back receives once each time the watch restarts it.
func openEmbedded(t *testing.T, ctx context.Context) (db *DB, back <-chan struct{}) {
	t.Helper()
	testenv.RequireRoot(t)
	h := backHandler{slog.NewTextHandler(t.Output(), nil), make(chan struct{}, 10)}
	log := slog.New(h)
	sup, err := supervisor.New("postgres", nil, log)
	if err != nil {
		t.Fatal(err)
	}
	sup.NoSync = true
	base := testenv.TempDir(t)
	dataDir := filepath.Join(base, "state")
	t.Cleanup(func() { testenv.KillPostgresUnder(dataDir) })
	db, err = Open(ctx, Options{
		Supervisor: sup,
		DataDir:    dataDir,
		SocketDir:  filepath.Join(base, "run"),
		Log:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return db, h.back
}

// TestOpenMigrates opens the embedded cluster, finds the schema in place,
// and checks that Close stops the cluster.
func TestOpenMigrates(t *testing.T) {
	ctx := context.Background()
	db, _ := openEmbedded(t, ctx)
	var n int
	if err := db.Pool().QueryRow(ctx, "SELECT count(*) FROM images").Scan(&n); err != nil {
		t.Fatalf("the images table after Open: %v", err)
	}
	cluster := db.cluster
	db.Close(ctx)
	if cluster.Alive() {
		t.Error("the embedded cluster still runs after Close")
	}
}

// TestWatchRestarts stops the embedded cluster's postmaster behind the
// server's back, as an operator (fast shutdown) or the OOM killer (SIGKILL)
// would, and checks that the watch brings it back and that the same pool
// works again, with no restart of anything else.
func TestWatchRestarts(t *testing.T) {
	for _, tt := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"stopped by hand", syscall.SIGINT},
		{"killed", syscall.SIGKILL},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			db, back := openEmbedded(t, ctx)
			defer db.Close(ctx)
			old := db.cluster
			db.Watch(ctx)
			if err := syscall.Kill(old.PID(), tt.sig); err != nil {
				t.Fatal(err)
			}
			<-old.Done()
			select {
			case <-back:
			case <-time.After(60 * time.Second):
				t.Fatal("the state cluster did not come back")
			}
			var one int
			if err := db.Pool().QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Errorf("the pool after the restart: %v", err)
			}
			db.stopWatch() // so that reading db.cluster does not race the watch
			db.stopWatch = nil
			if db.cluster == old || !db.cluster.Alive() {
				t.Errorf("cluster after the restart: pid %d alive %v (the old one was %d)", db.cluster.PID(), db.cluster.Alive(), old.PID())
			}
		})
	}
}
