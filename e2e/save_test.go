package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// TestSave: a running instance saved as an image keeps running; the new
// image is ready, owned by its saver, records its lineage, was shut down
// cleanly and holds none of the instance's server files; its instances see
// the saved rows, with passwords of their own. With a disk limit the WAL
// is a subvolume of its own, which the copy must catch too: the rows
// written just before the save are in it.
func TestSave(t *testing.T) {
	for _, extra := range []string{"", `disk_limit = "2GiB"`} {
		t.Run("config "+extra, func(t *testing.T) {
			s := startServer(t, extra)
			logOnFailure(t, s)
			src := newSource(t)
			b := src.BaseBackup(t, "-z", "-X", "stream")
			im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz"))
			ctx := context.Background()
			user := s.user()

			in, err := user.Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mustPSQL(t, in, "DELETE FROM customers WHERE id <= 10; CREATE TABLE notes (n text); INSERT INTO notes VALUES ('mine')")
			saved, err := user.Instances().Save(ctx, draupnir.Principal{}, in.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !saved.Ready() || saved.ParentImageID != im.ID || saved.FromInstanceID != in.ID ||
				saved.Owner != "integration-test@draupnir.test" || saved.Database != im.Database {
				t.Fatalf("saved image %+v", saved)
			}
			// The instance kept running, and its data.
			if n := mustPSQL(t, in, "SELECT count(*) FROM customers"); n != "990" {
				t.Errorf("the saved instance has %s customers", n)
			}
			if got, err := user.Images().Get(ctx, draupnir.Principal{}, saved.ID); err != nil || got.FromInstanceID != in.ID || got.ParentImageID != im.ID {
				t.Errorf("GET the saved image: %v %+v", err, got)
			}

			snap := filepath.Join(s.layout().Snapshots(), strconv.FormatInt(saved.ID, 10))
			for _, f := range []string{"postmaster.pid", "postmaster.opts", "draupnir.log", "draupnir-finalise.log"} {
				if _, err := os.Stat(filepath.Join(snap, f)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the saved image holds %s: %v", f, err)
				}
			}
			bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_controldata")
			if len(bins) == 0 {
				t.Fatal("no pg_controldata")
			}
			out, err := exec.Command(bins[len(bins)-1], snap).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Database cluster state:               shut down\n") {
				t.Errorf("the saved image was not shut down cleanly: %v\n%s", err, out)
			}

			of, err := user.Instances().Create(ctx, draupnir.Principal{}, saved.ID, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if of.Password == in.Password {
				t.Error("an instance of the saved image has the saved instance's password")
			}
			if got := mustPSQL(t, of, "SELECT count(*) FROM customers; SELECT n FROM notes"); got != "990\nmine" {
				t.Errorf("an instance of the saved image sees %q, want the saved rows", got)
			}
			// The old password opens neither the copy's role nor anything else.
			stale := *of
			stale.Password = in.Password
			if _, err := psql(t, &stale, "SELECT 1"); err == nil {
				t.Error("the saved instance's password opens an instance of the saved image")
			}
			// The new image's instance log says it started without
			// replaying WAL: it was shut down cleanly.
			ilog, _ := os.ReadFile(filepath.Join(s.layout().Instances(), strconv.FormatInt(of.ID, 10), "draupnir.log"))
			if strings.Contains(string(ilog), "redo starts") || strings.Contains(string(ilog), "not properly shut down") {
				t.Errorf("an instance of the saved image ran recovery:\n%s", ilog)
			}
			if _, err := user.Instances().Reset(ctx, draupnir.Principal{}, of.ID, im.ID); err != nil {
				t.Errorf("resetting an instance of the saved image to its parent: %v", err)
			}
			if n := mustPSQL(t, of, "SELECT count(*) FROM customers"); n != "1000" {
				t.Errorf("%s customers after resetting to the parent", n)
			}
		})
	}
}

// TestSaveHostileSettings: the instance's user owns its databases and may
// plant settings and objects for the sessions the service opens as
// superuser, to save it, and to set passwords in instances of the saved
// image. The save, creates of the saved image and a reset to it still
// work, and nothing planted ran.
func TestSaveHostileSettings(t *testing.T) {
	s := startServer(t, "")
	logOnFailure(t, s)
	src := newSource(t)
	b := src.BaseBackup(t, "-z", "-X", "stream")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz"))
	ctx := context.Background()
	user := s.user()
	in, err := user.Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustPSQL(t, in, `CREATE TABLE trap (who text, at timestamptz DEFAULT now());
		CREATE SCHEMA evil;
		CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS $$ INSERT INTO public.trap (who) VALUES (current_user) RETURNING 'x' $$;
		CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE sql AS $$ INSERT INTO public.trap (who) VALUES (current_user) RETURNING true $$;
		CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq);
		ALTER DATABASE shop SET search_path = evil, public, pg_catalog;
		ALTER DATABASE shop SET default_transaction_read_only = on;
		ALTER DATABASE shop SET statement_timeout = '1ms';
		ALTER DATABASE shop SET lock_timeout = '1ms'`)
	// The user's own sessions from here on override what they planted.
	free := "PGOPTIONS=-c default_transaction_read_only=off -c statement_timeout=0 -c search_path=public"
	saved, err := user.Instances().Save(ctx, draupnir.Principal{}, in.ID)
	if err != nil {
		t.Fatalf("saving an instance with planted settings: %v", err)
	}
	of, err := user.Instances().Create(ctx, draupnir.Principal{}, saved.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatalf("an instance of the saved image: %v", err)
	}
	if _, err := user.Instances().Reset(ctx, draupnir.Principal{}, in.ID, saved.ID); err != nil {
		t.Fatalf("resetting to the saved image: %v", err)
	}
	for _, x := range []*draupnir.Instance{in, of} {
		out, err := psql(t, x, "SELECT count(*) FROM trap", free)
		if err != nil || out != "0" {
			t.Errorf("instance %d: a planted function ran in the service's sessions: %v %s", x.ID, err, out)
		}
	}
}

// TestSavePermissions: a user saves and destroys only their own; the
// upload principal may do anything; a user never destroys an image someone
// else saved or uploaded. With a warm pool, saved images get none.
func TestSavePermissions(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "warm_pool = 1", keys)
	logOnFailure(t, s)
	src := newSource(t)
	b := src.BaseBackup(t, "-z", "-X", "stream")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz"))
	ctx := context.Background()

	in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	attacker := func(args ...string) (string, error) {
		// Logging in as "upload": the key, not the name, says who it is.
		out, err := s.ssh(t, keys, keys.attacker, "ssh", append([]string{"upload@127.0.0.1"}, args...)...).CombinedOutput()
		return string(out), err
	}
	// The attacker (another user) can neither save nor reset the user's
	// instance, nor destroy the uploaded image.
	for _, args := range [][]string{
		{"instances", "save", strconv.FormatInt(in.ID, 10)},
		{"instances", "reset", strconv.FormatInt(in.ID, 10)},
	} {
		if out, err := attacker(args...); err == nil || !strings.Contains(out, "does not exist") {
			t.Errorf("attacker %v: %v %s", args, err, out)
		}
	}
	if out, err := attacker("images", "destroy", strconv.FormatInt(im.ID, 10), "--yes"); err == nil || !strings.Contains(out, "only the upload principal") {
		t.Errorf("attacker destroyed the uploaded image: %v %s", err, out)
	}

	saved, err := s.user().Instances().Save(ctx, draupnir.Principal{}, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	// A create takes the parent's warm instance, and the refill that
	// follows tops up every image that has a pool: not the saved one.
	onDisk := func() int {
		ents, _ := os.ReadDir(s.layout().Instances())
		return len(ents)
	}
	second, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the parent's pool to refill", func() bool { return onDisk() >= 3 })
	for range 20 {
		if n := onDisk(); n != 3 {
			t.Fatalf("%d instances on disk; want 3: two of the user's and the parent's warm one", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, second.ID); err != nil {
		t.Fatal(err)
	}
	// The attacker sees the saved image (images are shared) but cannot
	// destroy it.
	if out, err := attacker("images", "destroy", strconv.FormatInt(saved.ID, 10), "--yes"); err == nil || !strings.Contains(out, "only the upload principal") {
		t.Errorf("attacker destroyed the user's saved image: %v %s", err, out)
	}
	if _, err := s.user().Images().Get(ctx, draupnir.Principal{}, saved.ID); err != nil {
		t.Fatalf("the saved image is gone after the attacker's try: %v", err)
	}
	// While another user has an instance of it, its owner cannot destroy
	// it: that would destroy the other's instance.
	theirs, err := s.upload().Instances().Create(ctx, draupnir.Principal{}, saved.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.user().Images().Destroy(ctx, draupnir.Principal{}, saved.ID); !errors.Is(err, draupnir.ErrConflict) {
		t.Errorf("destroying a saved image another user has an instance of: %v, want a conflict", err)
	}
	mustPSQL(t, theirs, "SELECT 1")
	if err := s.upload().Instances().Destroy(ctx, draupnir.Principal{}, theirs.ID); err != nil {
		t.Fatal(err)
	}
	// The user may not destroy the uploaded image, only their own.
	if err := s.user().Images().Destroy(ctx, draupnir.Principal{}, im.ID); !errors.Is(err, draupnir.ErrForbidden) {
		t.Errorf("the user destroying the uploaded image: %v, want forbidden", err)
	}
	if err := s.user().Images().Destroy(ctx, draupnir.Principal{}, saved.ID); err != nil {
		t.Errorf("the user destroying their saved image: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.layout().Snapshots(), strconv.FormatInt(saved.ID, 10))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the destroyed image's snapshot is still there: %v", err)
	}
	// The upload principal saves anyone's instance, and destroys it.
	bySaver, err := s.upload().Instances().Save(ctx, draupnir.Principal{}, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if bySaver.Owner != draupnir.UploadPrincipal {
		t.Errorf("saved by the upload principal, owned by %q", bySaver.Owner)
	}
	if err := s.upload().Images().Destroy(ctx, draupnir.Principal{}, bySaver.ID); err != nil {
		t.Errorf("the upload principal destroying a saved image: %v", err)
	}
}
