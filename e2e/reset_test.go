package e2e

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestReset: a reset brings back what the owner deleted, on the same port
// with the same password, dropping the connections it had; a reset to
// another image moves the instance to that image's data; a refused reset
// changes nothing.
func TestReset(t *testing.T) {
	s := startServer(t, "")
	logOnFailure(t, s)
	src := newSource(t)
	b := src.BaseBackup(t, "-z", "-X", "stream")
	files := []string{filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz")}
	im := s.readyImage(t, anonymise, files...)
	smaller := s.readyImage(t, anonymise+"\nDELETE FROM customers WHERE id > 500;", files...)
	ctx := context.Background()
	user := s.user().Instances()

	in, err := user.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{TTL: 8 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// A reset keeps the instance's lifetime: its expiry and protection.
	protectFor := 2 * time.Hour
	if in, err = user.Update(ctx, draupnir.Principal{}, in.ID, draupnir.InstancePatch{ProtectFor: &protectFor}); err != nil {
		t.Fatal(err)
	}
	if in.ExpiresAt.IsZero() || in.ProtectedUntil.IsZero() {
		t.Fatalf("created with a ttl and protected, yet %+v", in)
	}
	mustPSQL(t, in, "DELETE FROM customers WHERE id <= 10; CREATE TABLE notes (n text)")
	// A session that the reset must end.
	held := exec.Command("psql", "-X", "-q", "-At", "-p", strconv.Itoa(in.Port), "-U", in.Username, "-d", in.Database,
		"-c", "SELECT pg_sleep(120)")
	held.Env = append(held.Environ(), "PGHOST=127.0.0.1", "PGPASSWORD="+in.Password, "PGSSLMODE=require")
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	heldDone := make(chan error, 1)
	go func() { heldDone <- held.Wait() }()
	t.Cleanup(func() { held.Process.Kill() })
	// Wait until the session is in: pg_stat_activity shows it.
	for i := 0; ; i++ {
		if mustPSQL(t, in, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'") == "1" {
			break
		}
		if i == 100 {
			t.Fatal("the held session never started")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Times travel in whole seconds: let the reset's fall in a later one.
	time.Sleep(time.Until(in.LastActiveAt.Add(time.Second)))
	got, err := user.Reset(ctx, draupnir.Principal{}, in.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != in.ID || got.Port != in.Port || got.Username != in.Username || got.Password != in.Password ||
		got.ImageID != im.ID || got.State != draupnir.InstanceRunning {
		t.Fatalf("reset answered %+v; the instance was %+v", got, in)
	}
	if !got.ExpiresAt.Equal(in.ExpiresAt) || !got.ProtectedUntil.Equal(in.ProtectedUntil) {
		t.Errorf("reset changed the lifetime: expires %v, protected until %v; was %v, %v",
			got.ExpiresAt, got.ProtectedUntil, in.ExpiresAt, in.ProtectedUntil)
	}
	// A reset is use: idle clean-up counts from it, not from the create.
	if !got.LastActiveAt.After(in.LastActiveAt) {
		t.Errorf("last active at %v after the reset, the same as before (%v)", got.LastActiveAt, in.LastActiveAt)
	}
	// The answer comes when postgres accepts connections: no retry here.
	if n := mustPSQL(t, in, "SELECT count(*) FROM customers"); n != "1000" {
		t.Errorf("%s customers after the reset, want the image's 1000", n)
	}
	if _, err := psql(t, in, "SELECT * FROM notes"); err == nil {
		t.Error("a table made before the reset survived it")
	}
	select {
	case err := <-heldDone:
		if err == nil {
			t.Error("the held session ended without an error")
		}
	case <-time.After(30 * time.Second):
		t.Error("the held session survived the reset")
	}

	t.Run("to another image", func(t *testing.T) {
		got, err := user.Reset(ctx, draupnir.Principal{}, in.ID, smaller.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ImageID != smaller.ID || got.Port != in.Port || got.Password != in.Password {
			t.Errorf("reset to image %d answered %+v", smaller.ID, got)
		}
		if n := mustPSQL(t, in, "SELECT count(*) FROM customers"); n != "500" {
			t.Errorf("%s customers after the reset to image %d, want 500", n, smaller.ID)
		}
		if list, _ := user.List(ctx, draupnir.Principal{}); len(list) != 1 || list[0].ImageID != smaller.ID {
			t.Errorf("list after the reset: %+v", list)
		}
	})

	t.Run("refused resets change nothing", func(t *testing.T) {
		mustPSQL(t, in, "CREATE TABLE kept (n int)")
		pending, err := s.upload().Images().Create(ctx, draupnir.Principal{}, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			image int64
			want  error
		}{{pending.ID, draupnir.ErrConflict}, {999999, draupnir.ErrNotFound}} {
			if _, err := user.Reset(ctx, draupnir.Principal{}, in.ID, tt.image); !errors.Is(err, tt.want) {
				t.Errorf("reset to image %d: %v, want %v", tt.image, err, tt.want)
			}
		}
		if _, err := user.Reset(ctx, draupnir.Principal{}, 999999, 0); !errors.Is(err, draupnir.ErrNotFound) {
			t.Errorf("reset of a missing instance: %v, want not found", err)
		}
		mustPSQL(t, in, "SELECT * FROM kept")
	})

	t.Run("a reset that fails can be retried", func(t *testing.T) {
		dir := filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))
		testenv.Run(t, "chattr", "+i", dir) // btrfs refuses to delete it now
		defer exec.Command("chattr", "-i", dir).Run()
		if _, err := user.Reset(ctx, draupnir.Principal{}, in.ID, 0); err == nil {
			t.Fatal("resetting an immutable instance directory succeeded")
		}
		got, err := user.Get(ctx, draupnir.Principal{}, in.ID)
		if err != nil || got.State != draupnir.InstanceFailed || !strings.Contains(got.Error, "reset") {
			t.Fatalf("after a failed reset: %v %+v; want failed with the reason", err, got)
		}
		testenv.Run(t, "chattr", "-i", dir)
		if got, err = user.Reset(ctx, draupnir.Principal{}, in.ID, smaller.ID); err != nil || got.State != draupnir.InstanceRunning {
			t.Fatalf("resetting again: %v %+v", err, got)
		}
		if n := mustPSQL(t, in, "SELECT count(*) FROM customers"); n != "500" {
			t.Errorf("%s customers after the retried reset", n)
		}
	})

	t.Run("a restarted server keeps a reset instance", func(t *testing.T) {
		s.stop(syscall.SIGKILL)
		s.start()
		if n := mustPSQL(t, in, "SELECT count(*) FROM customers"); n != "500" {
			t.Errorf("%s customers after a restart", n)
		}
		if strings.Contains(s.logs(), in.Password) {
			t.Error("the server log holds the instance's password")
		}
	})
}
