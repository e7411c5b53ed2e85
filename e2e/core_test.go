package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestImageFormats makes a ready image of each upload shape the issue names
// and checks that an instance of it answers with the anonymised data.
func TestImageFormats(t *testing.T) {
	s := startServer(t, "")
	src := newSource(t)
	gz := src.BaseBackup(t, "-z", "-X", "stream")
	plain := src.BaseBackup(t, "-X", "stream")
	fetch := src.BaseBackup(t, "-X", "fetch") // one base.tar holding the WAL too
	zst := filepath.Join(testenv.TempDir(t), "backup.tar.zst")
	testenv.Run(t, "zstd", "-q", "-o", zst, filepath.Join(fetch, "base.tar"))
	// An extracted data directory, as `scp -r datadir` leaves it.
	extracted := filepath.Join(testenv.TempDir(t), "pgdata")
	os.Mkdir(extracted, 0o700)
	testenv.Run(t, "tar", "-xf", filepath.Join(fetch, "base.tar"), "-C", extracted)

	cases := []struct {
		name  string
		files []string
	}{
		{"pg_basebackup -Ft -z", []string{filepath.Join(gz, "base.tar.gz"), filepath.Join(gz, "pg_wal.tar.gz")}},
		{"pg_basebackup -Ft", []string{filepath.Join(plain, "base.tar"), filepath.Join(plain, "pg_wal.tar")}},
		{"tar.zst", []string{zst}},
		{"extracted data directory", []string{extracted}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im := s.readyImage(t, anonymise, c.files...)
			if im.PostgresVersion == "" || im.SizeBytes == 0 {
				t.Errorf("ready image lacks version or size: %+v", im)
			}
			ro, err := btrfs.IsReadOnly(filepath.Join(s.layout().Snapshots(), strconv.FormatInt(im.ID, 10)))
			if err != nil || !ro {
				t.Fatalf("image snapshot read-only = %v, %v", ro, err)
			}
			in, err := s.user().Instances().Create(context.Background(), draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if in.Database != "shop" || in.Username == "" || in.Password == "" {
				t.Errorf("instance credentials: %+v", in)
			}
			if got := mustPSQL(t, in, "SELECT count(*) FROM secret_tokens"); got != "0" {
				t.Errorf("secret_tokens has %s rows in an instance; the script should have emptied it", got)
			}
			if got := mustPSQL(t, in, "SELECT count(*) FROM customers WHERE email LIKE '%@real.example'"); got != "0" {
				t.Errorf("%s real emails survived anonymisation", got)
			}
			if err := s.user().Instances().Destroy(context.Background(), draupnir.Principal{}, in.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestInstances checks isolation between instances, the user's powers over
// the data, the limits of the instance role, disk use and destruction.
func TestInstances(t *testing.T) {
	s := startServer(t, "")
	src := newSource(t)
	b := src.BaseBackup(t, "-z", "-X", "stream")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz"))
	ctx := context.Background()

	var ins []*draupnir.Instance
	for i := 0; i < 3; i++ {
		in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if in.State != draupnir.InstanceRunning || in.Port < s.minPort || in.Port >= s.minPort+instancePorts {
			t.Fatalf("instance %+v: want running on a port of the range", in)
		}
		ins = append(ins, in)
	}
	if ins[0].Password == ins[1].Password {
		t.Fatal("two instances share a password")
	}

	t.Run("writes are private to an instance", func(t *testing.T) {
		mustPSQL(t, ins[0], "DELETE FROM customers WHERE id <= 10; CREATE TABLE notes (n text); INSERT INTO notes VALUES ('mine')")
		if got := mustPSQL(t, ins[0], "SELECT count(*) FROM customers"); got != "990" {
			t.Errorf("instance 0 has %s customers after deleting 10 of 1000", got)
		}
		for _, other := range ins[1:] {
			if got := mustPSQL(t, other, "SELECT count(*) FROM customers"); got != "1000" {
				t.Errorf("instance %d sees %s customers: a write leaked", other.ID, got)
			}
			if _, err := psql(t, other, "SELECT * FROM notes"); err == nil {
				t.Errorf("instance %d sees a table created in another", other.ID)
			}
		}
	})

	t.Run("the role can change what users expect", func(t *testing.T) {
		mustPSQL(t, ins[1], `ALTER TABLE customers ADD COLUMN name text;
			UPDATE customers SET name = 'x'; INSERT INTO customers (email) VALUES ('new@example.com');
			INSERT INTO audit (what) VALUES ('by the user'); DROP TABLE secret_tokens;
			CREATE INDEX ON customers (email); TRUNCATE audit`)
	})

	t.Run("large objects are the role's", func(t *testing.T) {
		// The superuser made it in the source, as pg_dump/lo_import jobs do.
		if got := mustPSQL(t, ins[1], "SELECT convert_from(lo_get(90001), 'UTF8')"); got != "a large object" {
			t.Errorf("large object reads %q", got)
		}
		mustPSQL(t, ins[1], "SELECT lo_put(90001, 0, 'A'); SELECT lo_unlink(90001)")
	})

	t.Run("the role cannot reach the host", func(t *testing.T) {
		for _, sql := range []string{
			"COPY (SELECT 1) TO PROGRAM 'id'",
			"SELECT pg_read_file('/etc/passwd')",
			"ALTER SYSTEM SET work_mem = '1GB'",
			"CREATE ROLE boss SUPERUSER",
			"SET ROLE app; COPY (SELECT 1) TO PROGRAM 'id'",
			"SET ROLE admins", // a superuser role the application role was in
			"SET ROLE postgres",
			"CREATE ROLE x; GRANT pg_execute_server_program TO x",
		} {
			if out, err := psql(t, ins[2], sql); err == nil {
				t.Errorf("%q succeeded for the instance role: %s", sql, out)
			}
		}
	})

	t.Run("credentials are checked", func(t *testing.T) {
		wrong := *ins[0]
		wrong.Password = "not-the-password"
		if _, err := psql(t, &wrong, "SELECT 1"); err == nil {
			t.Error("a wrong password was accepted")
		}
		cross := *ins[0]
		cross.Password = ins[1].Password
		if _, err := psql(t, &cross, "SELECT 1"); err == nil {
			t.Error("instance 1's password opened instance 0")
		}
		super := *ins[0]
		super.Username, super.Password = "postgres", ""
		if _, err := psql(t, &super, "SELECT 1"); err == nil {
			t.Error("the superuser got in over TCP without a password")
		}
	})

	t.Run("TLS is required and verifiable", func(t *testing.T) {
		in := ins[0]
		if !strings.Contains(in.CACertificate, "BEGIN CERTIFICATE") {
			t.Fatalf("instance has no CA certificate: %q", in.CACertificate)
		}
		ca := filepath.Join(testenv.TempDir(t), "ca.pem")
		os.WriteFile(ca, []byte(in.CACertificate), 0o600)
		if got := mustPSQL(t, in, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "t" {
			t.Errorf("connection not encrypted: ssl = %q", got)
		}
		// verify-full checks the certificate chain and that it names the host.
		if out, err := psql(t, in, "SELECT 1", "PGSSLMODE=verify-full", "PGSSLROOTCERT="+ca, "PGHOST=localhost"); err != nil {
			t.Errorf("verify-full with the returned CA: %v %s", err, out)
		}
		if out, err := psql(t, in, "SELECT 1", "PGSSLMODE=disable"); err == nil {
			t.Errorf("an unencrypted connection was accepted: %s", out)
		}
	})

	t.Run("a fresh instance uses almost no disk", func(t *testing.T) {
		fresh, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		syscall.Sync()
		total, exclusive, err := btrfs.Usage(ctx, filepath.Join(s.layout().Instances(), strconv.FormatInt(fresh.ID, 10)))
		if err != nil {
			t.Fatal(err)
		}
		if total < 10<<20 || exclusive > 2<<20 {
			t.Errorf("fresh instance: %d bytes referenced, %d exclusive; want ≥ 10 MiB shared and ≤ 2 MiB exclusive", total, exclusive)
		}
	})

	t.Run("others cannot see or destroy an instance", func(t *testing.T) {
		other := s.upload() // sees all instances, but a stranger would not
		if _, err := other.Instances().Get(ctx, draupnir.Principal{}, ins[0].ID); err != nil {
			t.Errorf("the upload principal cannot see instance %d: %v", ins[0].ID, err)
		}
		if _, err := s.user().Instances().Get(ctx, draupnir.Principal{}, 999999); !errors.Is(err, draupnir.ErrNotFound) {
			t.Errorf("unknown instance: %v, want not found", err)
		}
	})

	t.Run("secrets stay out of the logs", func(t *testing.T) {
		caKey, err := os.ReadFile(filepath.Join(s.layout().Keys(), "instance-ca.key"))
		if err != nil {
			t.Fatal(err)
		}
		keyBody := strings.Split(strings.TrimSpace(string(caKey)), "\n")[1]
		logs := map[string]string{"server": s.logs()}
		for _, in := range ins {
			b, _ := os.ReadFile(filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10), "draupnir.log"))
			logs["instance "+strconv.FormatInt(in.ID, 10)] = string(b)
		}
		for name, log := range logs {
			if strings.Contains(log, keyBody) {
				t.Errorf("the %s log holds the instance CA's key", name)
			}
			for _, in := range ins {
				if strings.Contains(log, in.Password) {
					t.Errorf("the %s log holds instance %d's password", name, in.ID)
				}
			}
			if strings.Contains(log, sharedSecret) {
				t.Errorf("the %s log holds the shared secret", name)
			}
		}
	})

	t.Run("a destroy that fails can be retried", func(t *testing.T) {
		in := ins[1]
		dir := filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))
		testenv.Run(t, "chattr", "+i", dir) // btrfs refuses to delete it now
		defer exec.Command("chattr", "-i", dir).Run()
		if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err == nil {
			t.Fatal("destroying an immutable instance directory succeeded")
		}
		got, err := s.user().Instances().Get(ctx, draupnir.Principal{}, in.ID)
		if err != nil || got.State != draupnir.InstanceFailed || got.Error == "" {
			t.Fatalf("after a failed destroy: %v %+v; want failed with the reason", err, got)
		}
		testenv.Run(t, "chattr", "-i", dir)
		if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
			t.Fatalf("destroying again: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the instance directory survived: %v", err)
		}
	})

	t.Run("destroy stops postgres and deletes everything", func(t *testing.T) {
		in := ins[2]
		if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))); !os.IsNotExist(err) {
			t.Errorf("the instance's subvolume is still there: %v", err)
		}
		if _, err := psql(t, in, "SELECT 1"); err == nil {
			t.Error("a destroyed instance still answers")
		}
		if _, err := s.user().Instances().Get(ctx, draupnir.Principal{}, in.ID); !errors.Is(err, draupnir.ErrNotFound) {
			t.Errorf("destroyed instance: %v, want not found", err)
		}
		if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); !errors.Is(err, draupnir.ErrNotFound) {
			t.Errorf("second destroy: %v, want not found", err)
		}
	})

	t.Run("destroying the image destroys its instances", func(t *testing.T) {
		if err := s.upload().Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
			t.Fatal(err)
		}
		list, err := s.upload().Instances().List(ctx, draupnir.Principal{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 0 {
			t.Errorf("%d instances left after destroying their image", len(list))
		}
		for _, dir := range []string{s.layout().Instances(), s.layout().Snapshots(), s.layout().Uploads()} {
			ents, _ := os.ReadDir(dir)
			if len(ents) != 0 {
				t.Errorf("%s still holds %d entries", dir, len(ents))
			}
		}
		if _, err := psql(t, ins[0], "SELECT 1"); err == nil {
			t.Error("an instance of a destroyed image still answers")
		}
	})
}

// TestHostileUploads: tarballs that try to write outside the upload fail the
// image and write nothing outside it.
func TestHostileUploads(t *testing.T) {
	s := startServer(t, "")
	ctx := context.Background()
	cases := map[string][]tarEntry{
		"dot-dot":         {{name: "../escaped", body: "x"}},
		"absolute":        {{name: "/tmp/draupnir-e2e-escaped", body: "x"}},
		"symlink out":     {{name: "PG_VERSION", body: "15\n"}, {name: "link", link: "/tmp", symlink: true}, {name: "link/draupnir-e2e-escaped", body: "x"}},
		"symlink dot-dot": {{name: "up", link: "../..", symlink: true}, {name: "up/escaped", body: "x"}},
		"hardlink out":    {{name: "passwd", link: "/etc/passwd"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			im, err := s.upload().Images().Create(ctx, draupnir.Principal{}, time.Now(), "")
			if err != nil {
				t.Fatal(err)
			}
			writeTar(t, filepath.Join(s.uploadDir(im.ID), "base.tar"), entries)
			_, err = s.upload().Images().Finalise(ctx, draupnir.Principal{}, im.ID)
			if !errors.Is(err, draupnir.ErrUnprocessable) {
				t.Fatalf("done on a hostile tarball: %v, want 422", err)
			}
			got, _ := s.upload().Images().Get(ctx, draupnir.Principal{}, im.ID)
			if got.State != draupnir.ImageFailed || got.Error == "" {
				t.Errorf("image after a hostile upload: %s %q", got.State, got.Error)
			}
			for _, p := range []string{filepath.Join(s.layout().Uploads(), "escaped"), filepath.Join(s.dataPath, "escaped"),
				filepath.Join(s.layout().Snapshots(), "escaped"), "/tmp/draupnir-e2e-escaped"} {
				if _, err := os.Lstat(p); err == nil {
					os.Remove(p)
					t.Errorf("%s was written outside the upload", p)
				}
			}
		})
	}
}

// TestKillServer: kill -9 the server with instances running; after a
// restart the same instances are listed and answer, and nothing is orphaned.
func TestKillServer(t *testing.T) {
	s := startServer(t, "")
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	var ins []*draupnir.Instance
	for i := 0; i < 2; i++ {
		in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mustPSQL(t, in, "CREATE TABLE kept (n int); INSERT INTO kept VALUES ("+strconv.Itoa(i)+")")
		ins = append(ins, in)
	}
	// An orphan: a subvolume no row owns, as a crash mid-create leaves.
	orphan := filepath.Join(s.layout().Instances(), "999")
	if err := btrfs.Snapshot(filepath.Join(s.layout().Snapshots(), strconv.FormatInt(im.ID, 10)), orphan, false); err != nil {
		t.Fatal(err)
	}

	s.stop(syscall.SIGKILL)
	// The postgres of instance 1 dies too, as in a reboot.
	killPostmaster(t, filepath.Join(s.layout().Instances(), strconv.FormatInt(ins[1].ID, 10)))
	s.start()

	list, err := s.user().Instances().List(ctx, draupnir.Principal{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d instances after restart, want 2", len(list))
	}
	for i, in := range ins {
		if _, err := psql(t, in, "SELECT 1"); err != nil {
			t.Logf("server log:\n%s", s.logs())
		}
		got := mustPSQL(t, in, "SELECT n FROM kept")
		if got != strconv.Itoa(i) {
			t.Errorf("instance %d after restart: kept = %q", in.ID, got)
		}
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("the orphaned subvolume survived the restart: %v", err)
	}
	// A new create does not reuse a port in use.
	in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if in.Port == ins[0].Port || in.Port == ins[1].Port {
		t.Errorf("new instance got port %d, already in use", in.Port)
	}
}

// killPostmaster SIGKILLs the postmaster of dataDir and waits for it to go.
func killPostmaster(t testing.TB, dataDir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500; i++ {
		if out, _ := exec.Command("ps", "-o", "stat=", "-p", strconv.Itoa(pid)).Output(); len(out) == 0 || out[0] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("postmaster %d did not die", pid)
}
