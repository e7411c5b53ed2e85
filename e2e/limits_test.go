package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// connectTLS logs in to instance in over TCP with TLS as user with password
// and returns how long the attempt took.
func connectTLS(ctx context.Context, in *draupnir.Instance, user, password, sslmode string) (time.Duration, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=%s connect_timeout=30",
		in.Port, in.Database, sslmode))
	if err != nil {
		return 0, err
	}
	cfg.User, cfg.Password = user, password
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	defer conn.Close(ctx)
	var one int
	return took, conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// TestInstanceLogins plants roles with known passwords in the source — an
// application role, one with an old md5 hash, a superuser, roles whose names
// play on the access rules, and one named like the instance role — and
// proves that none of them logs in to an instance over the network, that
// the instance role still does, and that a failed login is slowed down.
func TestInstanceLogins(t *testing.T) {
	s := startServer(t, "")
	src := newSource(t)
	src.SQL(t, "postgres", `ALTER ROLE app PASSWORD 'app-password';
SET password_encryption = 'md5';
CREATE ROLE legacy LOGIN PASSWORD 'legacy-password';
RESET password_encryption;
CREATE ROLE boss SUPERUSER LOGIN PASSWORD 'boss-password';
CREATE ROLE "all" LOGIN PASSWORD 'all-password';
CREATE ROLE "Draupnir" SUPERUSER LOGIN PASSWORD 'case-password';
CREATE ROLE draupnir LOGIN PASSWORD 'source-draupnir-password';`)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct{ user, password string }{
		{"app", "app-password"},
		{"legacy", "legacy-password"},
		{"boss", "boss-password"},
		{"all", "all-password"},
		{"Draupnir", "case-password"},
		{"postgres", ""},
		{"postgres", in.Password},
	} {
		t.Run("refused "+tt.user, func(t *testing.T) {
			// Refused by the access rules, before any password is read.
			_, err := connectTLS(ctx, in, tt.user, tt.password, "require")
			if err == nil {
				t.Fatalf("%s logged in to the instance over TLS", tt.user)
			}
			if sqlState(err) != "28000" || !strings.Contains(err.Error(), "no pg_hba.conf entry") {
				t.Fatalf("%s: %v, want a refusal by the access rules (28000)", tt.user, err)
			}
		})
	}
	if _, err := connectTLS(ctx, in, in.Username, in.Password, "disable"); sqlState(err) != "28000" {
		t.Errorf("the instance role without TLS: %v, want a refusal by the access rules", err)
	}
	if _, err := connectTLS(ctx, in, in.Username, "source-draupnir-password", "require"); sqlState(err) != "28P01" {
		t.Errorf("the instance role with the source's password: %v, want a failed password (28P01)", err)
	}

	// The instance role logs in; a wrong password is answered only after
	// the delay, which successful logins do not pay.
	const delay = 500 * time.Millisecond // instances.authDelay
	var ok, failed []time.Duration
	for i := 0; i < 3; i++ {
		took, err := connectTLS(ctx, in, in.Username, in.Password, "require")
		if err != nil {
			t.Fatalf("the instance role cannot log in: %v", err)
		}
		ok = append(ok, took)
		took, err = connectTLS(ctx, in, in.Username, in.Password+"x", "require")
		if sqlState(err) != "28P01" {
			t.Fatalf("a wrong password: %v, want 28P01", err)
		}
		failed = append(failed, took)
	}
	t.Logf("logins took %v; failed ones %v", ok, failed)
	if slices.Min(failed) < delay {
		t.Errorf("a failed login was answered after %v, before the %v delay", slices.Min(failed), delay)
	}
	if slices.Min(ok) >= slices.Min(failed) {
		t.Errorf("successful logins (%v) are not quicker than failed ones (%v): are they delayed too?", ok, failed)
	}
}

// fillUntilFull doubles a table in instance in until a write fails, and
// returns the error.
func fillUntilFull(t testing.TB, in *draupnir.Instance) string {
	t.Helper()
	// 960-byte rows stay uncompressed and in the heap.
	mustPSQL(t, in, "CREATE TABLE fill AS SELECT repeat(md5(g::text), 30) AS pad FROM generate_series(1, 4000) g")
	for i := 0; i < 12; i++ {
		if out, err := psql(t, in, "INSERT INTO fill SELECT * FROM fill"); err != nil {
			return out
		}
	}
	t.Fatalf("instance %d wrote past its limit without an error", in.ID)
	return ""
}

// TestInstanceDiskLimit fills one instance past its disk limit and checks
// that only it is refused: another instance still writes, and new instances
// are still created. It also checks temp_file_limit, which the instance role
// may not raise, however the source tried to lift it.
func TestInstanceDiskLimit(t *testing.T) {
	const limit = 128 << 20
	s := startServer(t, `disk_limit = "128MiB"`)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs())
		}
	})
	src := newSource(t)
	src.SQL(t, "postgres", `ALTER DATABASE shop SET temp_file_limit = -1;
ALTER ROLE ALL SET temp_file_limit = -1;
ALTER ROLE app IN DATABASE shop SET temp_file_limit = -1;
CREATE ROLE draupnir;
ALTER ROLE draupnir SET temp_file_limit = -1;
ALTER ROLE draupnir IN DATABASE shop SET temp_file_limit = '100GB';
GRANT SET ON PARAMETER temp_file_limit TO PUBLIC;
GRANT SET ON PARAMETER temp_file_limit TO app WITH GRANT OPTION;`)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	hog, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	neighbour, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*draupnir.Instance{hog, neighbour} {
		u, err := btrfs.Qgroup(filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10)))
		if err != nil || u.MaxExclusive != limit {
			t.Fatalf("instance %d: qgroup %+v, %v; want a limit of %d", in.ID, u, err, limit)
		}
	}

	t.Run("temp_file_limit", func(t *testing.T) {
		if got := mustPSQL(t, neighbour, "SHOW temp_file_limit"); got != "64MB" {
			t.Errorf("temp_file_limit = %q, want 64MB (half the disk limit)", got)
		}
		for _, sql := range []string{
			"SET temp_file_limit = -1",
			"SET temp_file_limit = '1TB'",
			"SET SESSION temp_file_limit = -1",
			"SELECT set_config('temp_file_limit', '-1', false)",
			"ALTER ROLE CURRENT_USER SET temp_file_limit = -1",
			"ALTER DATABASE shop SET temp_file_limit = -1",
			"SET ROLE app; SET temp_file_limit = -1",
		} {
			out, err := psql(t, neighbour, sql)
			if err == nil || !strings.Contains(out, "permission denied") {
				t.Errorf("%s: %v %s, want permission denied", sql, err, out)
			}
		}
		out, err := psql(t, neighbour, "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g, random() AS r FROM generate_series(1, 5000000) g ORDER BY r) s")
		if err == nil || !strings.Contains(out, "temp_file_limit") {
			t.Errorf("a sort spilling past temp_file_limit: %v %s, want it refused", err, out)
		}
	})

	out := fillUntilFull(t, hog)
	t.Logf("the filling instance's error: %s", out)
	if !strings.Contains(out, "Check free disk space") {
		t.Errorf("writing past the limit failed with %q, want a disk-full error", out)
	}
	// The others carry on.
	mustPSQL(t, neighbour, "CREATE TABLE after AS SELECT repeat('y', 900) AS pad FROM generate_series(1, 30000) g")
	third, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatalf("a create after one instance filled its limit: %v", err)
	}
	mustPSQL(t, third, "CREATE TABLE after AS SELECT repeat('z', 900) AS pad FROM generate_series(1, 30000) g")
	// The full instance is destroyed like any other, although its snapshot
	// is at its limit (taking its WAL subvolume out changes it).
	// Its qgroups go too (the kernel's doing, or the next sweep's).
	dir := filepath.Join(s.layout().Instances(), strconv.FormatInt(hog.ID, 10))
	var ids []uint64
	for _, p := range []string{dir, filepath.Join(dir, "pg_wal")} {
		id, err := btrfs.SubvolumeID(p)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if u, err := btrfs.Qgroup(filepath.Join(dir, "pg_wal")); err != nil || u.MaxExclusive != 1<<30 {
		t.Errorf("the WAL subvolume's qgroup: %+v, %v; want a limit of 1 GiB", u, err)
	}
	testenv.Run(t, "mount", "-o", "remount,commit=1", s.dataPath)
	if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, hog.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, third.ID); err != nil { // its teardown sweeps
		t.Fatal(err)
	}
	qgroups := sysfsQgroups(t, s.dataPath)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the full instance's snapshot is still there: %v", err)
	}
	for _, id := range ids {
		waitFor(t, 30*time.Second, "the destroyed instance's qgroups to go", func() bool {
			_, err := os.Stat(filepath.Join(qgroups, "0_"+strconv.FormatUint(id, 10)))
			return errors.Is(err, os.ErrNotExist)
		})
	}
}

// sysfsQgroups returns the sysfs directory of the qgroups of the btrfs
// mounted at mnt.
func sysfsQgroups(t testing.TB, mnt string) string {
	t.Helper()
	out := testenv.Run(t, "findmnt", "-n", "-o", "UUID", "--target", mnt)
	if strings.TrimSpace(out) == "" {
		out = testenv.Run(t, "btrfs", "filesystem", "show", mnt)
		_, after, _ := strings.Cut(out, "uuid: ")
		out, _, _ = strings.Cut(after, "\n")
	}
	return filepath.Join("/sys/fs/btrfs", strings.TrimSpace(out), "qgroups")
}

// TestInstanceLimitsAfterRestart turns the disk limit on while an instance
// runs: after the restart its postgres, adopted, is restarted with the new
// settings and its snapshot is limited; a restart with unchanged settings
// leaves a running postgres alone.
func TestInstanceLimitsAfterRestart(t *testing.T) {
	s := startServer(t, `disk_limit = 0`)
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))
	mustPSQL(t, in, "CREATE TABLE kept AS SELECT 42 AS n")
	if got := mustPSQL(t, in, "SHOW temp_file_limit"); got != "-1" {
		t.Fatalf("temp_file_limit with disk_limit = 0 is %q, want -1", got)
	}

	s.stop(syscall.SIGTERM)
	conf, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	limited := strings.Replace(string(conf), "disk_limit = 0", `disk_limit = "256MiB"`, 1)
	if err := os.WriteFile(s.config, []byte(limited), 0o600); err != nil {
		t.Fatal(err)
	}
	pid := pidOfPostmaster(t, dir)
	s.start()
	if got := mustPSQL(t, in, "SHOW temp_file_limit"); got != "128MB" {
		t.Errorf("temp_file_limit after the restart = %q, want 128MB", got)
	}
	if got := mustPSQL(t, in, "SELECT n FROM kept"); got != "42" {
		t.Errorf("kept = %q after the restart", got)
	}
	if u, err := btrfs.Qgroup(dir); err != nil || u.MaxExclusive != 256<<20 {
		t.Errorf("qgroup after the restart: %+v, %v; want a limit of 256 MiB", u, err)
	}
	restarted := pidOfPostmaster(t, dir)
	if restarted == pid {
		t.Errorf("the adopted postgres (pid %d) was not restarted with the new settings", pid)
	}

	s.stop(syscall.SIGTERM)
	s.start()
	if got := pidOfPostmaster(t, dir); got != restarted {
		t.Errorf("a restart with the same settings restarted the instance's postgres (pid %d, then %d)", restarted, got)
	}
	mustPSQL(t, in, "SELECT n FROM kept")
}
