package standby

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// env is a data path with standbys in it, shared by the Managers of one
// test (one per server start).
type env struct {
	dir, run string
	sup      *supervisor.Supervisor
}

func newEnv(t *testing.T) *env {
	t.Helper()
	mnt := testenv.Btrfs(t, 2<<30)
	sup, err := supervisor.New("postgres", nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	sup.NoSync = true
	run := filepath.Join(testenv.TempDir(t), "run")
	return &env{dir: filepath.Join(mnt, "standbys"), run: run, sup: sup}
}

// start runs a Manager over the env's directories, as a server start
// would, and ends it at cleanup (its standbys keep running until the
// filesystem goes).
func (e *env) start(t *testing.T, srcs ...Source) *Manager {
	t.Helper()
	m, err := New(Options{Dir: e.dir, RunDir: e.run, Postgres: e.sup,
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		PollInterval: 50 * time.Millisecond, RetryMin: 100 * time.Millisecond, RetryMax: time.Second,
		CatchUpTimeout: 30 * time.Second, Settings: map[string]string{"shared_buffers": "16MB"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx, srcs)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		m.Close()
	})
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// waitFor polls name's status until ok accepts it. The limit only keeps a
// broken standby from hanging the test.
func waitFor(t *testing.T, m *Manager, name, what string, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var st Status
	for time.Now().Before(deadline) {
		st, _ = m.Status(name)
		if ok(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("standby %s: never %s; last status %+v", name, what, st)
	return st
}

func waitState(t *testing.T, m *Manager, name, state string) Status {
	t.Helper()
	return waitFor(t, m, name, state, func(s Status) bool { return s.State == state })
}

// boot starts a snapshot as finalise would (a primary on a private socket)
// and returns a connection to db in it as user.
func boot(t *testing.T, e *env, dir, user, db string) *pgx.Conn {
	t.Helper()
	// Finalise replaces the source's configuration; so does this.
	for _, f := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(testenv.TempDir(t), "s")
	p, err := e.sup.Start(context.Background(), supervisor.Spec{DataDir: dir, SocketDir: sock, Port: 5432,
		LogFile: filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".log"), Settings: map[string]string{"hot_standby": "off"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background(), supervisor.Immediate, 0) })
	c, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=5432 user=%s dbname=%s", sock, user, db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	var recovering bool
	if err := c.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&recovering); err != nil || recovering {
		t.Fatalf("the snapshot booted in recovery (%v), want a primary", err)
	}
	return c
}

func count(t *testing.T, c *pgx.Conn, table string) int {
	t.Helper()
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func pidOf(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	return pid
}

// TestFollow follows a source whose superuser is not called postgres,
// through a replication role that must give its password (from a
// passfile), whose configuration tries to run commands on any server
// booted from its files, and whose role settings would break the polls. Writes on the source reach a snapshot booted as a
// primary; the password is nowhere but in the passfiles; the planted
// settings never apply; nothing listens on TCP.
func TestFollow(t *testing.T) {
	e := newEnv(t)
	marker := filepath.Join(testenv.TempDir(t), "pwned")
	src := testenv.NewSource(t, testenv.SourceOptions{Superuser: "boss",
		SetupSQL: "CREATE DATABASE app"})
	src.SQL(t, "app", "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
	// Planted in both places a source keeps settings; read by a server
	// booted from them, shared_preload_libraries alone stops it starting.
	f, err := os.OpenFile(filepath.Join(src.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "archive_mode = always\narchive_command = 'touch %s.conf'\nshared_preload_libraries = 'draupnir_no_such_library'\n", marker)
	f.Close()
	src.SQL(t, "postgres", fmt.Sprintf("ALTER SYSTEM SET archive_command = 'touch %s.auto'", marker))
	src.SQL(t, "postgres", "ALTER SYSTEM SET archive_mode = 'always'")
	// Defaults for the role and database Draupnir polls the standby as and
	// in, replicated with the data: each alone would break every poll.
	src.SQL(t, "postgres", "ALTER ROLE boss IN DATABASE template1 SET statement_timeout = '1ms'")
	src.SQL(t, "postgres", "ALTER ROLE boss IN DATABASE template1 SET session_preload_libraries = 'draupnir_no_such_library'")
	src.SQL(t, "postgres", "ALTER DATABASE template1 SET search_path = public, pg_catalog")
	const password = "s3cret-Passw0rd-xyzzy"
	conninfo, passfile := src.ReplicationRole(t, "replicator", password)

	m := e.start(t, Source{Name: "app", Conninfo: conninfo, Passfile: passfile})
	waitState(t, m, "app", Streaming)
	data := filepath.Join(e.dir, "app")

	for round := 1; round <= 2; round++ {
		src.SQL(t, "app", "INSERT INTO t SELECT generate_series(1, 100)")
		// A checkpoint mid-segment: the snapshot's redo point, with WAL
		// before it in the same segment to trim.
		src.SQL(t, "app", "CREATE TABLE filler AS SELECT generate_series(1, 5000) AS n; DROP TABLE filler; CHECKPOINT")
		src.SQL(t, "postgres", "SELECT pg_switch_wal()") // archive_mode=always would archive on the standby
		dst := filepath.Join(e.dir, fmt.Sprintf("image%d", round))
		if err := m.SnapshotInto(context.Background(), "app", dst); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"standby.signal", "postmaster.pid"} {
			if _, err := os.Lstat(filepath.Join(dst, f)); !os.IsNotExist(err) {
				t.Errorf("round %d: the snapshot has %s (%v)", round, f, err)
			}
		}
		// The WAL before the redo point is trimmed away; recovery below
		// shows that what is left is enough.
		control, err := m.controlData(context.Background(), dst)
		if err != nil {
			t.Fatal(err)
		}
		redo := control["Latest checkpoint's REDO WAL file"]
		segs, _ := filepath.Glob(filepath.Join(dst, "pg_wal", "[0-9A-F]*"))
		for _, seg := range segs {
			if n := filepath.Base(seg); len(n) == 24 && n < redo {
				t.Errorf("round %d: the snapshot kept pg_wal/%s, older than its redo point's %s", round, n, redo)
			}
		}
		lsn, err := parseLSN(control["Latest checkpoint's REDO location"])
		if err != nil {
			t.Fatal(err)
		}
		if redoPage := int64(lsn%(16<<20)) &^ 8191; redoPage > 8192 {
			f, err := os.Open(filepath.Join(dst, "pg_wal", redo))
			if err != nil {
				t.Fatal(err)
			}
			data, err := f.Seek(8192, 3) // SEEK_DATA: the first data at or after page 1
			f.Close()
			if err != nil || data < redoPage {
				t.Errorf("round %d: pg_wal/%s has data at %d (%v), before its redo point's page at %d", round, redo, data, err, redoPage)
			}
		}
		c := boot(t, e, dst, "boss", "app")
		if n, want := count(t, c, "t"), 1000+100*round; n != want {
			t.Errorf("round %d: the snapshot has %d rows, want %d", round, n, want)
		}
	}
	if err := m.SnapshotInto(context.Background(), "app", filepath.Join(e.dir, "image1")); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("SnapshotInto over an existing directory: %v", err)
	}
	if err := m.SnapshotInto(context.Background(), "other", filepath.Join(e.dir, "x")); err == nil || !strings.Contains(err.Error(), "other") {
		t.Errorf("SnapshotInto of an unknown source: %v", err)
	}

	for _, suffix := range []string{".conf", ".auto"} {
		if _, err := os.Stat(marker + suffix); err == nil {
			t.Errorf("the source's archive_command (%s) ran", suffix)
		}
	}
	// Private: no TCP, socket directory and data the postgres user's alone.
	l := m.layout("app")
	db, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=5432 user=boss dbname=postgres", l.sockets))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var listen, preload string
	if err := db.QueryRow(context.Background(), "SELECT current_setting('listen_addresses'), current_setting('shared_preload_libraries')").Scan(&listen, &preload); err != nil {
		t.Fatal(err)
	}
	if listen != "" || preload != "" {
		t.Errorf("standby listen_addresses %q, shared_preload_libraries %q; want both empty", listen, preload)
	}
	uid, _ := testenv.PostgresUser(t)
	for _, d := range []string{l.sockets, data, l.private} {
		var st syscall.Stat_t
		if err := syscall.Stat(d, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o777 != 0o700 || int(st.Uid) != uid {
			t.Errorf("%s: mode %o uid %d, want 0700 and the postgres user's", d, st.Mode&0o777, st.Uid)
		}
	}
	// The password lives in the passfiles only: not in any process's
	// argv, the standby's configuration or log, or its data.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), password) {
			t.Errorf("%s holds the password: %q", p, b)
		}
	}
	for _, dir := range []string{data, l.private, filepath.Join(e.dir, "image1")} {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || path == l.passfile {
				return nil
			}
			if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), password) {
				t.Errorf("%s holds the password", path)
			}
			return nil
		})
	}
}

// TestAdopt restarts the server (a new Manager over the same directories):
// the running standby is adopted, not restarted; a standby that dies is
// started again.
func TestAdopt(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{SetupSQL: "CREATE TABLE t AS SELECT 1 AS n"})
	s := Source{Name: "app", Conninfo: src.Conninfo}
	data := filepath.Join(e.dir, "app")

	ctx, cancel := context.WithCancel(context.Background())
	first, err := New(Options{Dir: e.dir, RunDir: e.run, Postgres: e.sup, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { first.Run(ctx, []Source{s}); close(done) }()
	waitState(t, first, "app", Streaming)
	pid := pidOf(t, data)
	cancel()
	<-done
	first.Close()

	m := e.start(t, s)
	waitState(t, m, "app", Streaming)
	if got := pidOf(t, data); got != pid {
		t.Errorf("after a server restart the standby is pid %d, want the adopted %d", got, pid)
	}
	src.SQL(t, "postgres", "INSERT INTO t VALUES (2)")
	dst := filepath.Join(e.dir, "image")
	if err := m.SnapshotInto(context.Background(), "app", dst); err != nil {
		t.Fatal(err)
	}
	if n := count(t, boot(t, e, dst, "postgres", "postgres"), "t"); n != 2 {
		t.Errorf("snapshot after adoption has %d rows, want 2", n)
	}

	// A crash: the standby is started again.
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, m, "app", "restarted", func(Status) bool {
		p := m.layout("app")
		b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid"))
		return err == nil && !strings.HasPrefix(string(b), strconv.Itoa(pid)+"\n")
	})
	waitState(t, m, "app", Streaming)
}

// TestSourceOutage stops the source: the standby reports disconnected, a
// snapshot is refused naming the source, and once the source is back the
// standby streams again and sees what was written since.
func TestSourceOutage(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{SetupSQL: "CREATE TABLE t AS SELECT 1 AS n"})
	m := e.start(t, Source{Name: "app", Conninfo: src.Conninfo})
	waitState(t, m, "app", Streaming)

	src.Stop(t)
	waitState(t, m, "app", Disconnected)
	err := m.SnapshotInto(context.Background(), "app", filepath.Join(e.dir, "image"))
	if err == nil || !strings.Contains(err.Error(), "source app") {
		t.Errorf("SnapshotInto with the source down: %v, want an error naming the source", err)
	}
	if _, err := os.Lstat(filepath.Join(e.dir, "image")); !os.IsNotExist(err) {
		t.Errorf("a refused snapshot left %s behind", filepath.Join(e.dir, "image"))
	}

	src.Start(t)
	src.SQL(t, "postgres", "INSERT INTO t VALUES (2)")
	waitState(t, m, "app", Streaming)
	dst := filepath.Join(e.dir, "image")
	if err := m.SnapshotInto(context.Background(), "app", dst); err != nil {
		t.Fatal(err)
	}
	if n := count(t, boot(t, e, dst, "postgres", "postgres"), "t"); n != 2 {
		t.Errorf("snapshot after the outage has %d rows, want 2", n)
	}
}

// TestRestoreCommand follows a source through its WAL archive alone: the
// standby made while the source was reachable goes on replaying what the
// archive gets once only a restore_command is configured.
func TestRestoreCommand(t *testing.T) {
	e := newEnv(t)
	archive := testenv.TempDir(t)
	uid, gid := testenv.PostgresUser(t)
	os.Chown(archive, uid, gid)
	src := testenv.NewSource(t, testenv.SourceOptions{SetupSQL: "CREATE TABLE t AS SELECT 1 AS n",
		Settings: map[string]string{"archive_mode": "on", "archive_command": "cp %p " + archive + "/%f"}})
	restore := "cp " + archive + "/%f %p"

	first := e.start(t, Source{Name: "app", Conninfo: src.Conninfo, RestoreCommand: restore})
	waitState(t, first, "app", Streaming)
	first.Close()

	m := e.start(t, Source{Name: "app", RestoreCommand: restore})
	waitState(t, m, "app", Streaming)
	src.SQL(t, "postgres", "INSERT INTO t VALUES (2)")
	src.SQL(t, "postgres", "SELECT pg_switch_wal()")
	waitFor(t, m, "app", "replaying the insert", func(Status) bool {
		st, ok := m.Status("app")
		if !ok || st.State != Streaming {
			return false
		}
		// The standby's own view (hot standby).
		db, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", m.layout("app").sockets))
		if err != nil {
			return false
		}
		defer db.Close(context.Background())
		var n int
		return db.QueryRow(context.Background(), "SELECT count(*) FROM t").Scan(&n) == nil && n == 2
	})
	dst := filepath.Join(e.dir, "image")
	if err := m.SnapshotInto(context.Background(), "app", dst); err != nil {
		t.Fatal(err)
	}
	if n := count(t, boot(t, e, dst, "postgres", "postgres"), "t"); n != 2 {
		t.Errorf("snapshot from the archive has %d rows, want 2", n)
	}
}

// TestBadSources gives sources that cannot be followed: each fails with an
// error naming the source and the reason, leaves no subvolume behind, and
// is retried; a fixed one then comes up without a new Run.
func TestBadSources(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{SetupSQL: "CREATE ROLE norep LOGIN"})
	const password = "Pw-9f8e7d6c"
	goodInfo, _ := src.ReplicationRole(t, "replicator", password)
	wrong := filepath.Join(testenv.TempDir(t), "pgpass")
	os.WriteFile(wrong, []byte("*:*:*:replicator:wrong\n"), 0o600)
	tests := []struct {
		src  Source
		want string
	}{
		{Source{Name: "nohost", Conninfo: "host=" + filepath.Join(src.SocketDir, "nowhere") + " port=5432"}, "source nohost: cannot connect"},
		{Source{Name: "norep", Conninfo: fmt.Sprintf("host=%s port=5432 user=norep", src.SocketDir)}, "replication"},
		{Source{Name: "badpass", Conninfo: goodInfo, Passfile: wrong}, "source badpass: cannot connect"},
		{Source{Name: "nopass", Conninfo: goodInfo}, "source nopass: cannot connect"},
		{Source{Name: "inline", Conninfo: goodInfo + " password=" + password}, "passfile"},
		{Source{Name: "uri", Conninfo: "postgresql://replicator:" + password + "@localhost/x"}, "passfile"},
		{Source{Name: "garbage", Conninfo: "host"}, "source garbage: conninfo"},
		{Source{Name: "../up", Conninfo: goodInfo}, `source "../up"`},
		{Source{Name: "nothing"}, "source nothing: follow mode needs"},
	}
	var srcs []Source
	for _, tt := range tests {
		srcs = append(srcs, tt.src)
	}
	m := e.start(t, srcs...)
	for _, tt := range tests {
		st := waitState(t, m, tt.src.Name, Failed)
		if !strings.Contains(st.LastError, tt.want) {
			t.Errorf("source %s: error %q, want it to say %q", tt.src.Name, st.LastError, tt.want)
		}
		if strings.Contains(st.LastError, password) {
			t.Errorf("source %s: the error shows the password: %q", tt.src.Name, st.LastError)
		}
	}
	ents, _ := os.ReadDir(e.dir)
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".private") {
			t.Errorf("a failed source left %s behind", ent.Name())
		}
	}
	// Retried: granting the privilege is enough.
	src.SQL(t, "postgres", "ALTER ROLE norep REPLICATION")
	waitState(t, m, "norep", Streaming)
}

// TestSourceRemovedWAL cuts the standby off while the source writes and
// checkpoints past what it had streamed, with nothing keeping that WAL:
// postgres would retry in vain for ever, so the standby is made again from
// a new base backup, and then has the rows.
func TestSourceRemovedWAL(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{SetupSQL: "CREATE TABLE t AS SELECT 1 AS n"})
	conninfo, passfile := src.ReplicationRole(t, "replicator", "pw")
	m := e.start(t, Source{Name: "app", Conninfo: conninfo, Passfile: passfile})
	waitState(t, m, "app", Streaming)
	first := pidOf(t, filepath.Join(e.dir, "app"))

	// Kept out while the source moves on, so that it cannot stream the
	// WAL before the checkpoint removes it.
	src.SQL(t, "postgres", "ALTER ROLE replicator NOLOGIN")
	src.SQL(t, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
	for i := 0; i < 3; i++ {
		src.SQL(t, "postgres", "INSERT INTO t VALUES (2); SELECT pg_switch_wal()")
	}
	src.SQL(t, "postgres", "CHECKPOINT")
	src.SQL(t, "postgres", "ALTER ROLE replicator LOGIN")
	waitFor(t, m, "app", "rebuilt", func(st Status) bool {
		b, err := os.ReadFile(filepath.Join(e.dir, "app", "postmaster.pid"))
		return st.State == Streaming && err == nil && !strings.HasPrefix(string(b), strconv.Itoa(first)+"\n")
	})
	dst := filepath.Join(e.dir, "image")
	if err := m.SnapshotInto(context.Background(), "app", dst); err != nil {
		t.Fatal(err)
	}
	if n := count(t, boot(t, e, dst, "postgres", "postgres"), "t"); n != 4 {
		t.Errorf("snapshot after the rebuild has %d rows, want 4", n)
	}
}

// TestRemove drops a source from the configuration: the next server start
// stops its standby but keeps its data; Remove refuses while the source is
// followed and deletes everything once it is not.
func TestRemove(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{})
	s := Source{Name: "app", Conninfo: src.Conninfo}
	m := e.start(t, s)
	waitState(t, m, "app", Streaming)
	if err := m.Remove(context.Background(), "app"); err == nil || !strings.Contains(err.Error(), "still followed") {
		t.Errorf("Remove of a followed source: %v", err)
	}
	m.Close()
	data := filepath.Join(e.dir, "app")
	pid := pidOf(t, data)

	later := e.start(t) // app is no longer configured
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("the standby of a source no longer configured still runs")
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		t.Fatalf("its data is gone: %v", err)
	}
	if err := later.Remove(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{data, data + ".private", filepath.Join(e.run, "app")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("Remove left %s (%v)", p, err)
		}
	}
}

// TestBaseBackupFails lets pg_basebackup itself fail, after the source
// answered and the scratch subvolume was made (the source allows one WAL
// sender; -X stream needs two): the error names the source, and nothing
// is left behind.
func TestBaseBackupFails(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{Settings: map[string]string{"max_wal_senders": "1"}})
	m := e.start(t, Source{Name: "app", Conninfo: src.Conninfo})
	st := waitState(t, m, "app", Failed)
	if !strings.Contains(st.LastError, "source app: base backup failed") {
		t.Errorf("error %q, want it to say the base backup of source app failed", st.LastError)
	}
	// Ended, a retry in flight cleans up after itself too.
	m.Close()
	ents, _ := os.ReadDir(e.dir)
	for _, ent := range ents {
		if ent.Name() != "app.private" {
			t.Errorf("a failed base backup left %s behind", ent.Name())
		}
	}
}

// TestTablespaces refuses a source with a tablespace: the tablespace's
// data would escape the snapshots (and pg_basebackup would write it to the
// path the source's server names).
func TestTablespaces(t *testing.T) {
	e := newEnv(t)
	src := testenv.NewSource(t, testenv.SourceOptions{})
	loc := filepath.Join(testenv.TempDir(t), "ts")
	if err := os.Mkdir(loc, 0o700); err != nil {
		t.Fatal(err)
	}
	uid, gid := testenv.PostgresUser(t)
	if err := os.Chown(loc, uid, gid); err != nil {
		t.Fatal(err)
	}
	src.SQL(t, "postgres", "CREATE TABLESPACE ts LOCATION '"+loc+"'")
	src.SQL(t, "postgres", "CREATE TABLE t (n int) TABLESPACE ts")
	m := e.start(t, Source{Name: "app", Conninfo: src.Conninfo})
	st := waitState(t, m, "app", Failed)
	if !strings.Contains(st.LastError, "source app: the source uses tablespaces") {
		t.Errorf("error %q, want it to say source app uses tablespaces", st.LastError)
	}
	m.Close()
	ents, _ := os.ReadDir(e.dir)
	for _, ent := range ents {
		if ent.Name() != "app.private" {
			t.Errorf("a refused base backup left %s behind", ent.Name())
		}
	}

	// One created once the standby follows: refreshes are refused.
	later := testenv.NewSource(t, testenv.SourceOptions{Settings: map[string]string{"allow_in_place_tablespaces": "on"}})
	m = e.start(t, Source{Name: "later", Conninfo: later.Conninfo})
	waitState(t, m, "later", Streaming)
	later.SQL(t, "postgres", "CREATE TABLESPACE ts LOCATION ''")
	later.SQL(t, "postgres", "CREATE TABLE t (n int) TABLESPACE ts")
	dst := filepath.Join(e.dir, "image")
	if err := m.SnapshotInto(context.Background(), "later", dst); err == nil || !strings.Contains(err.Error(), "tablespaces") {
		t.Errorf("SnapshotInto of a standby with a tablespace: %v", err)
	}
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("a refused snapshot left %s (%v)", dst, err)
	}

	// One inside the data directory, made before the base backup: a tar
	// base backup leaves it out, so only the catalog still names it.
	inplace := testenv.NewSource(t, testenv.SourceOptions{Settings: map[string]string{"allow_in_place_tablespaces": "on"}})
	inplace.SQL(t, "postgres", "CREATE TABLESPACE ts LOCATION ''")
	inplace.SQL(t, "postgres", "CREATE TABLE t (n int) TABLESPACE ts")
	m = e.start(t, Source{Name: "inplace", Conninfo: inplace.Conninfo})
	waitState(t, m, "inplace", Streaming)
	dst = filepath.Join(e.dir, "image-inplace")
	if err := m.SnapshotInto(context.Background(), "inplace", dst); err == nil || !strings.Contains(err.Error(), "uses tablespaces (ts)") {
		t.Errorf("SnapshotInto of a standby whose source has an in-place tablespace: %v", err)
	}
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("a refused snapshot left %s (%v)", dst, err)
	}
}
