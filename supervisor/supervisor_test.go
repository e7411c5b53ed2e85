package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/jackc/pgx/v5"
)

// template is one initdb'd cluster that tests copy, since initdb costs seconds
// and a copy a fraction of that.
type template struct {
	once sync.Once
	dir  string
	err  error
}

var tmpl template

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpl.dir != "" {
		os.RemoveAll(filepath.Dir(tmpl.dir))
	}
	os.Exit(code)
}

func newSupervisor(t testing.TB) *Supervisor {
	t.Helper()
	testenv.RequireRoot(t)
	s, err := New("postgres", nil, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	s.NoSync = true
	return s
}

// cluster returns a fresh stopped cluster of the newest installed version.
func cluster(t testing.TB, s *Supervisor) string {
	t.Helper()
	tmpl.once.Do(func() {
		base, err := os.MkdirTemp("", "draupnir-supervisor-template-")
		if err != nil {
			tmpl.err = err
			return
		}
		os.Chmod(base, 0o755)
		tmpl.dir = filepath.Join(base, "data")
		major, err := s.NewestMajor()
		if err != nil {
			tmpl.err = err
			return
		}
		tmpl.err = s.InitDB(context.Background(), major, tmpl.dir)
	})
	if tmpl.err != nil {
		t.Fatalf("template cluster: %v", tmpl.err)
	}
	dir := filepath.Join(testenv.TempDir(t), "data")
	testenv.Run(t, "cp", "-a", tmpl.dir, dir)
	t.Cleanup(func() { testenv.KillPostgresUnder(dir) })
	return dir
}

// spec is a unix-socket-only spec for dataDir.
func spec(t testing.TB, dataDir string) Spec {
	base := filepath.Dir(dataDir)
	return Spec{
		DataDir:   dataDir,
		SocketDir: filepath.Join(base, "sock"),
		Port:      5432,
		Settings:  map[string]string{"fsync": "off", "shared_buffers": "8MB"},
		LogFile:   filepath.Join(base, "postgres.log"),
	}
}

func start(t testing.TB, s *Supervisor, sp Spec) *Process {
	t.Helper()
	p, err := s.Start(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(context.Background(), Immediate, 5*time.Second) })
	return p
}

func query(t testing.TB, socketDir string, port int, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", socketDir, port))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(ctx)
	var out string
	if err := c.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func waitDone(t testing.TB, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("Done of pid %d not closed", p.PID())
	}
}

func TestStartQueryStop(t *testing.T) {
	for _, mode := range []StopMode{Fast, Immediate} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Setenv("DRAUPNIR_SHARED_SECRET", "do-not-leak-this-secret")
			s := newSupervisor(t)
			dir := cluster(t, s)
			sp := spec(t, dir)
			p := start(t, s, sp)

			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.PID()))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(env), "do-not-leak") {
				t.Errorf("our environment leaked into postgres: %q", env)
			}
			if got := query(t, sp.SocketDir, sp.Port, "SELECT current_setting('listen_addresses') || '/' || current_user"); got != "/postgres" {
				t.Errorf("listen_addresses/current_user = %q, want no TCP and postgres", got)
			}
			st, err := procStat(p.PID())
			if err != nil {
				t.Fatal(err)
			}
			if st.pgrp != p.PID() {
				t.Errorf("postmaster is in process group %d, want its own (%d)", st.pgrp, p.PID())
			}
			fi, err := os.Stat(fmt.Sprintf("/proc/%d", p.PID()))
			if err != nil {
				t.Fatal(err)
			}
			if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != s.UID() {
				t.Errorf("postmaster runs as uid %d, want %d", uid, s.UID())
			}
			if fi, err := os.Stat(sp.LogFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("log file: %v, mode %v; want 0600", err, fi.Mode())
			}

			if err := p.Stop(context.Background(), mode, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			waitDone(t, p)
			if pids := postgresIn(p.DataDir()); len(pids) > 0 {
				t.Errorf("postgres processes left after stop: %v", pids)
			}
			// Whatever the mode, the cluster must start again.
			p2 := start(t, s, sp)
			if got := query(t, sp.SocketDir, sp.Port, "SELECT 'again'"); got != "again" {
				t.Errorf("after restart got %q", got)
			}
			if err := p2.Stop(context.Background(), Fast, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); !os.IsNotExist(err) {
				t.Errorf("postmaster.pid after a fast stop: %v", err)
			}
			// Stopping a stopped process is a no-op.
			if err := p2.Stop(context.Background(), Fast, time.Second); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

// TestStopEscalates stops a postmaster that cannot act on signals (SIGSTOP):
// Stop must escalate to SIGKILL of the whole group, and return once all is gone.
func TestStopEscalates(t *testing.T) {
	tests := []struct {
		name   string
		mode   StopMode
		cancel bool // ctx ended: straight to SIGKILL
	}{
		{"fast", Fast, false},
		{"immediate", Immediate, false},
		{"ctx ended", Fast, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervisor(t)
			dir := cluster(t, s)
			sp := spec(t, dir)
			p := start(t, s, sp)
			if err := syscall.Kill(p.PID(), syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			if err := p.Stop(ctx, tt.mode, 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if p.Alive() {
				t.Error("Stop returned while the postmaster is alive")
			}
			if pids := postgresIn(p.DataDir()); len(pids) > 0 {
				t.Errorf("postgres processes left: %v", pids)
			}
			start(t, s, sp)
		})
	}
}

// TestStartConfigFile starts postgres with a configuration file outside
// its data directory: that file's settings apply, the data directory's
// postgresql.conf is not read.
func TestStartConfigFile(t *testing.T) {
	s := newSupervisor(t)
	dir := cluster(t, s)
	f, err := os.OpenFile(filepath.Join(dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "work_mem = '3MB'")
	f.Close()
	conf := filepath.Join(filepath.Dir(dir), "outside.conf")
	if err := os.WriteFile(conf, []byte("work_mem = '7MB'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := spec(t, dir)
	sp.ConfigFile = conf
	start(t, s, sp)
	if got := query(t, sp.SocketDir, sp.Port, "SHOW work_mem"); got != "7MB" {
		t.Errorf("work_mem = %q, want the outside file's 7MB", got)
	}
}

func TestStartPortInUse(t *testing.T) {
	s := newSupervisor(t)
	dir := cluster(t, s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sp := spec(t, dir)
	sp.Port = l.Addr().(*net.TCPAddr).Port
	sp.ListenAddresses = "127.0.0.1"
	p, err := s.Start(context.Background(), sp)
	if err == nil {
		p.Stop(context.Background(), Immediate, time.Second)
		t.Fatal("Start on a taken port succeeded")
	}
	if !errors.Is(err, ErrPortInUse) {
		t.Errorf("error does not match ErrPortInUse: %v", err)
	}
	if pids := postgresIn(dir); len(pids) > 0 {
		t.Errorf("postgres processes left after a failed start: %v", pids)
	}
	// The same cluster starts on a free port.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sp.Port = l2.Addr().(*net.TCPAddr).Port
	l2.Close()
	start(t, s, sp)
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(sp.Port)))
	if err != nil {
		t.Fatalf("postgres does not listen on TCP: %v", err)
	}
	c.Close()
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		name    string
		break_  func(t *testing.T, dir string, sp *Spec)
		wantErr string
	}{
		{"corrupt", func(t *testing.T, dir string, sp *Spec) {
			os.Remove(filepath.Join(dir, "global", "pg_control"))
		}, "pg_control"},
		{"bad setting", func(t *testing.T, dir string, sp *Spec) {
			sp.Settings["shared_buffers"] = "lots"
		}, `invalid value for parameter "shared_buffers"`},
		{"not a data dir", func(t *testing.T, dir string, sp *Spec) {
			os.Remove(filepath.Join(dir, "PG_VERSION"))
		}, "PG_VERSION is missing"},
		{"socket dir too long", func(t *testing.T, dir string, sp *Spec) {
			sp.SocketDir = "/tmp/" + strings.Repeat("x", 100)
		}, "too long"},
		{"managed setting", func(t *testing.T, dir string, sp *Spec) {
			sp.Settings["listen_addresses"] = "*"
		}, "managed"},
		{"relative config file", func(t *testing.T, dir string, sp *Spec) {
			sp.ConfigFile = "postgresql.conf"
		}, "must be an absolute path"},
		{"ctx ends", func(t *testing.T, dir string, sp *Spec) {}, "context deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervisor(t)
			dir := cluster(t, s)
			sp := spec(t, dir)
			tt.break_(t, dir, &sp)
			ctx := context.Background()
			if tt.name == "ctx ends" {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 2*time.Millisecond)
				defer cancel()
			}
			p, err := s.Start(ctx, sp)
			if err == nil {
				p.Stop(context.Background(), Immediate, time.Second)
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if errors.Is(err, ErrPortInUse) {
				t.Errorf("error matches ErrPortInUse: %v", err)
			}
			if pids := postgresIn(dir); len(pids) > 0 {
				t.Errorf("postgres processes left after a failed start: %v", pids)
			}
		})
	}
}

// zombie returns the pid of a child that has exited but is not reaped yet.
func zombie(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	for i := 0; i < 1000; i++ {
		if st, err := procStat(cmd.Process.Pid); err == nil && st.state == 'Z' {
			return cmd.Process.Pid
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("child did not become a zombie")
	return 0
}

// deadPID returns a pid that no process has.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func writePidFile(t *testing.T, dir string, pid int) {
	t.Helper()
	content := fmt.Sprintf("%d\n%s\n1700000000\n5432\n/tmp\n\n  1234567         0\nready   \n", pid, dir)
	pidFile := filepath.Join(dir, "postmaster.pid")
	if err := os.WriteFile(pidFile, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid := testenv.PostgresUser(t)
	if err := os.Chown(pidFile, uid, gid); err != nil {
		t.Fatal(err)
	}
}

func TestAdopt(t *testing.T) {
	s := newSupervisor(t)
	dir := cluster(t, s)
	sp := spec(t, dir)
	orig := start(t, s, sp)

	// A fresh supervisor stands for Draupnir after a restart.
	s2 := newSupervisor(t)
	p, err := s2.Adopt(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() != orig.PID() || p.Port() != sp.Port || p.SocketDir() != sp.SocketDir || !p.Alive() {
		t.Errorf("adopted pid %d port %d socket %s alive %v, want pid %d port %d socket %s",
			p.PID(), p.Port(), p.SocketDir(), p.Alive(), orig.PID(), sp.Port, sp.SocketDir)
	}
	// Through a symlink, the data directory is the same.
	link := filepath.Join(filepath.Dir(dir), "link")
	os.Symlink(dir, link)
	if _, err := s2.Adopt(link); err != nil {
		t.Errorf("Adopt through a symlink: %v", err)
	}
	if _, err := s2.Start(context.Background(), sp); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("Start of a running cluster: %v, want ErrAlreadyRunning", err)
	}
	if err := p.Stop(context.Background(), Fast, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	waitDone(t, orig)
	if err := s2.StopDataDir(context.Background(), dir, Fast, time.Second); err != nil {
		t.Errorf("StopDataDir with nothing running: %v", err)
	}
}

func TestAdoptDoneOnKill(t *testing.T) {
	s := newSupervisor(t)
	dir := cluster(t, s)
	orig := start(t, s, spec(t, dir))
	p, err := newSupervisor(t).Adopt(dir)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(-orig.PID(), syscall.SIGKILL)
	waitDone(t, p)
	waitDone(t, orig)
	// The SIGKILL left postmaster.pid behind; Start copes.
	start(t, s, spec(t, dir))
}

func TestAdoptNotRunning(t *testing.T) {
	s := newSupervisor(t)
	tests := []struct {
		name string
		pid  func(t *testing.T) int // 0: no postmaster.pid at all
	}{
		{"no pid file", func(t *testing.T) int { return 0 }},
		{"dead pid", deadPID},
		{"zombie", zombie},
		{"unrelated live pid", func(t *testing.T) int { return os.Getpid() }},
		{"garbage", func(t *testing.T) int { return -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := cluster(t, s)
			if pid := tt.pid(t); pid != 0 {
				writePidFile(t, dir, pid)
			}
			if _, err := s.Adopt(dir); !errors.Is(err, ErrNotRunning) {
				t.Errorf("Adopt: %v, want ErrNotRunning", err)
			}
			if err := s.StopDataDir(context.Background(), dir, Fast, time.Second); err != nil {
				t.Errorf("StopDataDir: %v", err)
			}
			// None of these lock files may keep the cluster from starting.
			sp := spec(t, dir)
			start(t, s, sp)
			if got := query(t, sp.SocketDir, sp.Port, "SELECT 'up'"); got != "up" {
				t.Errorf("got %q", got)
			}
		})
	}
}

func TestStateCluster(t *testing.T) {
	s := newSupervisor(t)
	base := testenv.TempDir(t)
	dataDir := filepath.Join(base, "state")
	socketDir := filepath.Join(base, "run", "state")
	t.Cleanup(func() { testenv.KillPostgresUnder(dataDir) })
	ctx := context.Background()

	conn, p, err := s.StateCluster(ctx, dataDir, socketDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(ctx, Immediate, 5*time.Second) })
	use := func(conn string) {
		t.Helper()
		c, err := pgx.Connect(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS t (x int)"); err != nil {
			t.Fatal(err)
		}
		var db, la string
		if err := c.QueryRow(ctx, "SELECT current_database(), current_setting('listen_addresses')").Scan(&db, &la); err != nil {
			t.Fatal(err)
		}
		if db != StateDatabase || la != "" {
			t.Errorf("database %q listen_addresses %q, want %q and none", db, la, StateDatabase)
		}
	}
	use(conn)

	conn2, p2, err := newSupervisor(t).StateCluster(ctx, dataDir, socketDir)
	if err != nil {
		t.Fatal(err)
	}
	if p2.PID() != p.PID() || conn2 != conn {
		t.Errorf("second StateCluster: pid %d conn %q, want the adopted pid %d and %q", p2.PID(), conn2, p.PID(), conn)
	}
	use(conn2)

	if err := p2.Stop(ctx, Fast, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	conn3, p3, err := s.StateCluster(ctx, dataDir, socketDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p3.Stop(ctx, Immediate, 5*time.Second) })
	use(conn3)
	if p3.PID() == p.PID() {
		t.Errorf("third StateCluster did not start a new postmaster")
	}
}

func TestStateClusterRefusesForeignDir(t *testing.T) {
	s := newSupervisor(t)
	dir := filepath.Join(testenv.TempDir(t), "state")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o600)
	if _, _, err := s.StateCluster(context.Background(), dir, filepath.Join(filepath.Dir(dir), "s")); err == nil {
		t.Fatal("StateCluster used a non-empty directory that is not a data directory")
	}
}

func TestPSQL(t *testing.T) {
	s := newSupervisor(t)
	dir := cluster(t, s)
	sp := spec(t, dir)
	start(t, s, sp)
	bin, err := s.BinDir(mustVersion(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name    string
		script  string
		wantOut string
		wantErr string
	}{
		{"ok", "CREATE DATABASE other;\n\\c other\nSELECT current_database();\n", "other", ""},
		{"error stops", "SELECT 1;\nDELETE FROM no_such_table;\nCREATE TABLE must_not_exist (x int);\n", "",
			`relation "no_such_table" does not exist`},
		{"syntax", "SELEC 1;", "", `syntax error at or near "SELEC"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := s.PSQL(ctx, bin, sp.SocketDir, sp.Port, "postgres", "postgres", tt.script)
			if tt.wantErr == "" {
				if err != nil || !strings.Contains(out, tt.wantOut) {
					t.Errorf("PSQL = %q, %v; want output containing %q", out, err, tt.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("PSQL error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	if got := query(t, sp.SocketDir, sp.Port, "SELECT count(*)::text FROM pg_class WHERE relname = 'must_not_exist'"); got != "0" {
		t.Errorf("psql went on after an error")
	}
}

func mustVersion(t testing.TB, dir string) string {
	t.Helper()
	v, err := DataVersion(dir)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestBinDir(t *testing.T) {
	s := newSupervisor(t)
	major, err := s.NewestMajor()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.BinDir(major)
	if err != nil {
		t.Fatal(err)
	}
	if dir != testenv.BinDir(t) {
		t.Errorf("BinDir(%s) = %s, want %s", major, dir, testenv.BinDir(t))
	}
	if _, err := s.BinDir("7.4"); err == nil || !strings.Contains(err.Error(), "7.4") || !strings.Contains(err.Error(), "/usr/lib/postgresql/*/bin") {
		t.Errorf("BinDir(7.4) error %v should name the version and the searched globs", err)
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n", "15"},
		{"postgres (PostgreSQL) 9.6.24\n", "9.6"},
		{"postgres (PostgreSQL) 17beta1\n", "17"},
		{"postgres (PostgreSQL) 10.0\n", "10"},
		{"something else", ""},
	}
	for _, tt := range tests {
		if got := parseVersion(tt.in); got != tt.want {
			t.Errorf("parseVersion(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPortTaken(t *testing.T) {
	tests := []struct {
		log  string
		want bool
	}{
		{`LOG:  could not bind IPv4 address "127.0.0.1": Address already in use`, true},
		{`FATAL:  could not create any TCP/IP sockets`, true},
		{`FATAL:  lock file "/run/x/.s.PGSQL.5432.lock" already exists`, true},
		{`FATAL:  lock file "postmaster.pid" already exists`, false},
		{`FATAL:  could not open file "global/pg_control"`, false},
	}
	for _, tt := range tests {
		if got := portTaken(tt.log); got != tt.want {
			t.Errorf("portTaken(%q) = %v, want %v", tt.log, got, tt.want)
		}
	}
}

func TestNew(t *testing.T) {
	testenv.RequireRoot(t)
	for _, name := range []string{"root", "no-such-user-draupnir"} {
		if _, err := New(name, nil, nil); err == nil {
			t.Errorf("New(%q) succeeded", name)
		}
	}
}

func TestChown(t *testing.T) {
	s := newSupervisor(t)
	root := filepath.Join(testenv.TempDir(t), "tree")
	os.MkdirAll(filepath.Join(root, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(root, "a", "f"), nil, 0o644)
	os.Symlink("/etc/passwd", filepath.Join(root, "link"))
	if err := s.Chown(root); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root, filepath.Join(root, "a", "b"), filepath.Join(root, "a", "f"), filepath.Join(root, "link")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != s.UID() || int(st.Gid) != s.GID() {
			t.Errorf("%s owned by %d:%d", p, st.Uid, st.Gid)
		}
	}
	if fi, _ := os.Stat("/etc/passwd"); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("Chown followed a symlink out of the tree")
	}
	if fi, _ := os.Stat(root); fi.Mode().Perm() != 0o700 {
		t.Errorf("root mode %v, want 0700", fi.Mode().Perm())
	}
}

// TestOpenLogRefusesLinks: the log sits in a directory the OS user owns, so
// it may have been replaced by a link or a fifo; root must neither append to
// nor chown what a link points at, nor hang on a fifo.
func TestOpenLogRefusesLinks(t *testing.T) {
	s := newSupervisor(t)
	dir := testenv.TempDir(t)
	target := filepath.Join(dir, "root-owned")
	if err := os.WriteFile(target, []byte("root's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Symlink(target, filepath.Join(dir, "absolute.log"))
	os.Symlink("root-owned", filepath.Join(dir, "relative.log"))
	syscall.Mkfifo(filepath.Join(dir, "fifo.log"), 0o600)
	for _, name := range []string{"absolute.log", "relative.log", "fifo.log"} {
		if f, _, err := s.openLog(filepath.Join(dir, name)); err == nil {
			f.Close()
			t.Errorf("%s: opened", name)
		}
	}
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "root's\n" || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the link's target was written or handed over: %q, uid %d", b, fi.Sys().(*syscall.Stat_t).Uid)
	}
	f, _, err := s.openLog(filepath.Join(dir, "plain.log"))
	if err != nil {
		t.Fatalf("a plain log: %v", err)
	}
	f.Close()
}

// BenchmarkStart measures start (until ready) + fast stop of a small cluster.
func BenchmarkStart(b *testing.B) {
	s := newSupervisor(b)
	dir := cluster(b, s)
	sp := spec(b, dir)
	ctx := context.Background()
	for b.Loop() {
		p, err := s.Start(ctx, sp)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Stop(ctx, Fast, 5*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPidfdPollable checks that exit watching rides on the runtime's poller
// (no thread blocked per process) and notices a non-child's exit.
func TestPidfdPollable(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &Process{pid: cmd.Process.Pid, pidfd: openPidfd(cmd.Process.Pid), done: make(chan struct{})}
	if p.pidfd == nil {
		t.Fatal("pidfd_open failed")
	}
	if err := p.pidfd.SetReadDeadline(time.Time{}); err != nil {
		t.Fatalf("pidfd is not pollable by the runtime: %v", err)
	}
	go func() {
		p.waitExit()
		close(p.done)
		p.closePidfd()
	}()
	if !p.Alive() {
		t.Fatal("Done closed while the process runs")
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p) // readable already as a zombie: nobody has reaped it yet
}

// Command runs as the OS user and hands none of the server's environment,
// which may hold secrets, to the program.
func TestCommand(t *testing.T) {
	s := newSupervisor(t)
	t.Setenv("DRAUPNIR_TEST_SECRET", "hunter2")
	out, err := s.Command(context.Background(), "/bin/sh", "-c", "id -u; env").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	uid, env, _ := strings.Cut(string(out), "\n")
	if uid != strconv.Itoa(s.UID()) {
		t.Errorf("ran as uid %s, want %d", uid, s.UID())
	}
	if strings.Contains(env, "hunter2") {
		t.Errorf("the server's environment leaked into the command:\n%s", env)
	}
}
