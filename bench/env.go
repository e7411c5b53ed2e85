package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/client"
	"github.com/draupnir-db/draupnir/datapath"
	"github.com/draupnir-db/draupnir/supervisor"
)

// userToken is the token environment = "test" accepts for a normal user.
const userToken = "the-integration-access-token"

// cleanups undo setup steps in reverse order.
type cleanups []func(context.Context) error

func (c *cleanups) push(f func(context.Context) error) { *c = append(*c, f) }

func (c cleanups) run(ctx context.Context, log *slog.Logger) error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		if err := c[i](ctx); err != nil {
			log.Warn("cleanup step failed", "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// env is everything a run works on.
type env struct {
	cfg     Config
	log     *slog.Logger
	rep     *Report
	work    string // temporary directory on the root filesystem
	mnt     string // the loop btrfs
	runPath string // the server's run_path
	sup     *supervisor.Supervisor
	bin     string // postgres binaries
	src     *source
	srv     *server
	upload  *client.Client
	user    *client.Client
	image   int64  // the main image
	backup  string // pg_basebackup -Ft -X stream of the main image
	keys    *sshKeys
	openssh *openSSHd
	undo    *cleanups
	// serverEnv is added to the server's environment (config overrides).
	serverEnv []string
}

// layout names the parts of the server's data path (the loop btrfs) and
// run path.
func (e *env) layout() datapath.Layout { return datapath.Layout{Data: e.mnt, Run: e.runPath} }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// diskSize is the loop btrfs's size: room for the source cluster, its
// backup, the image, an extracted copy and the alternatives' copies, with
// WAL on top (a pgbench load fills a btrfs the size of its data).
func (c Config) diskSize() int64 {
	if c.DiskBytes > 0 {
		return c.DiskBytes
	}
	const perScale = 16 << 20
	return int64(c.Scale+c.LargeScale)*perScale*8 + 4<<30
}

func setup(ctx context.Context, cfg Config, undo *cleanups, log *slog.Logger) (*env, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the harness needs root: it mounts a loop btrfs and runs postgres as the postgres user")
	}
	for _, tool := range []string{"mkfs.btrfs", "btrfs", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is missing (apt-get install btrfs-progs): %w", tool, err)
		}
	}
	sup, err := supervisor.New("postgres", nil, log)
	if err != nil {
		return nil, err
	}
	major, err := sup.NewestMajor()
	if err != nil {
		return nil, err
	}
	bin, err := sup.BinDir(major)
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, log: log, sup: sup, bin: bin}

	e.work, err = os.MkdirTemp("", "draupnir-bench-")
	if err != nil {
		return nil, err
	}
	undo.push(func(context.Context) error { return os.RemoveAll(e.work) })
	if err := os.Chmod(e.work, 0o755); err != nil {
		return nil, err
	}

	e.mnt = filepath.Join(e.work, "mnt")
	img := filepath.Join(e.work, "btrfs.img")
	log.Info("mounting a loop btrfs", "size", fmtBytes(float64(cfg.diskSize())), "at", e.mnt)
	if _, err := btrfs.SetupLoop(ctx, e.mnt, img, cfg.diskSize()); err != nil {
		// SetupLoop may have mounted before failing a later check.
		btrfs.Unmount(context.WithoutCancel(ctx), e.mnt)
		return nil, err
	}
	undo.push(func(ctx context.Context) error {
		// Anything still running off the filesystem would keep it busy.
		killUnder(e.mnt)
		if err := btrfs.Unmount(ctx, e.mnt); err != nil {
			// Detach lazily rather than leave a loop device behind.
			unix.Unmount(e.mnt, unix.MNT_DETACH)
			return err
		}
		return os.Remove(img)
	})
	if err := os.Chmod(e.mnt, 0o755); err != nil {
		return nil, err
	}

	if e.src, err = startSource(ctx, e, undo); err != nil {
		return nil, err
	}
	if e.keys, err = makeSSHKeys(ctx, e.work); err != nil {
		return nil, err
	}
	if e.srv, err = startServer(ctx, e, undo); err != nil {
		return nil, err
	}
	e.upload = client.New(e.srv.url, e.srv.secret)
	e.user = client.New(e.srv.url, userToken)
	return e, nil
}

// asPostgres runs a program as the postgres OS user.
func (e *env) asPostgres(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = e.credential()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, tail(out))
	}
	return out, nil
}

func (e *env) credential() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(e.sup.UID()), Gid: uint32(e.sup.GID())}}
}

// mkdirPostgres makes a directory owned by the postgres user.
func (e *env) mkdirPostgres(dir string, mode os.FileMode) error {
	if err := os.Mkdir(dir, mode); err != nil {
		return err
	}
	return os.Chown(dir, e.sup.UID(), e.sup.GID())
}

func tail(b []byte) string {
	const n = 2000
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// source is the cluster the images are backups of, on the same btrfs so that
// the alternatives copy data on the same disk.
type source struct {
	dir  string
	sock string
	port int
	e    *env
}

func startSource(ctx context.Context, e *env, undo *cleanups) (*source, error) {
	base := filepath.Join(e.mnt, "source")
	if err := e.mkdirPostgres(base, 0o700); err != nil {
		return nil, err
	}
	s := &source{dir: filepath.Join(base, "data"), sock: filepath.Join(e.work, "src"), port: 5432, e: e}
	if err := e.mkdirPostgres(s.sock, 0o700); err != nil {
		return nil, err
	}
	log := filepath.Join(base, "log")
	e.log.Info("initialising the source cluster")
	if _, err := e.asPostgres(ctx, filepath.Join(e.bin, "initdb"), "-D", s.dir, "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		return nil, err
	}
	// fsync is switched off through ALTER SYSTEM (not -c, which would win
	// over it) for loading, and back on for the alternatives.
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c port=%d -c max_wal_size=2GB -c checkpoint_timeout=30min",
		s.sock, s.port)
	if _, err := e.asPostgres(ctx, filepath.Join(e.bin, "pg_ctl"), "-D", s.dir, "-w", "-t", "120", "-l", log, "-o", opts, "start"); err != nil {
		return nil, err
	}
	undo.push(func(ctx context.Context) error {
		_, err := e.asPostgres(ctx, filepath.Join(e.bin, "pg_ctl"), "-D", s.dir, "-m", "immediate", "-w", "stop")
		return err
	})
	if err := s.setFsync(ctx, false); err != nil {
		return nil, err
	}
	return s, nil
}

// setFsync switches fsync on the source, for all sessions.
func (s *source) setFsync(ctx context.Context, on bool) error {
	stmt := "ALTER SYSTEM SET fsync = off"
	if on {
		stmt = "ALTER SYSTEM RESET fsync"
	}
	if err := s.sql(ctx, "postgres", stmt); err != nil {
		return err
	}
	return s.sql(ctx, "postgres", "SELECT pg_reload_conf()")
}

// sql runs a script on the source with psql.
func (s *source) sql(ctx context.Context, db, script string) error {
	_, err := s.e.asPostgres(ctx, filepath.Join(s.e.bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", "-d", db, "-c", script)
	return err
}

// pgbench creates database db holding pgbench data of the given scale.
func (s *source) pgbench(ctx context.Context, db string, scale int) error {
	if err := s.sql(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
		return err
	}
	_, err := s.e.asPostgres(ctx, filepath.Join(s.e.bin, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", db)
	return err
}

// baseBackup takes pg_basebackup -Ft -X wal into a fresh directory on the
// btrfs and returns it; wal is stream (base.tar + pg_wal.tar) or fetch (the
// WAL inside base.tar).
func (s *source) baseBackup(ctx context.Context, name, wal string) (string, error) {
	parent := filepath.Join(s.e.mnt, "backups")
	if _, err := os.Stat(parent); err != nil {
		if err := s.e.mkdirPostgres(parent, 0o755); err != nil {
			return "", err
		}
	}
	out := filepath.Join(parent, name)
	_, err := s.e.asPostgres(ctx, filepath.Join(s.e.bin, "pg_basebackup"), "-h", s.sock, "-p", strconv.Itoa(s.port),
		"-U", "postgres", "-D", out, "-Ft", "-X", wal, "-c", "fast")
	return out, err
}

// server is a running draupnir serve.
type server struct {
	cmd      *exec.Cmd
	url      string
	secret   string
	logPath  string
	sshPort  int
	exited   chan struct{}
	binary   string
	confPath string
	env      []string
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer(ctx context.Context, e *env, undo *cleanups) (*server, error) {
	// A restart keeps the run path: instances adopted from the last server
	// keep running as they are (their sockets and access rules live there).
	if e.runPath == "" {
		e.runPath = "/run/draupnir-bench-" + randomHex(4)
		undo.push(func(context.Context) error { return os.RemoveAll(e.runPath) })
	}
	srcs, err := e.sourcesConfig(pullSource, "pull")
	if err != nil {
		return nil, err
	}
	return e.startServerSpec(ctx, undo, serverSpec{
		name:     "draupnir",
		dataPath: e.mnt,
		runPath:  e.runPath,
		portBase: e.cfg.PortBase,
		portSpan: e.cfg.portSpan(),
		env:      e.serverEnv,
		keepLog:  e.cfg.ServerLog,
		tables:   srcs,
	})
}

// serverSpec says where a draupnir serve runs and how it differs from the
// main one.
type serverSpec struct {
	name              string // of its config and log files in the work directory
	dataPath, runPath string
	portBase          int // its instance ports: portSpan of them from portBase
	portSpan          int
	top               string   // top-level keys of its config (database_url, node.*)
	env               []string // added to its environment
	keepLog           string   // where its log is copied at the end, if set
	tables            string   // arrays of tables ([[sources]]) that end its config
	// httpPort and sshPort, if not 0, are its ports; else free ones.
	httpPort, sshPort int
}

// serverBinary returns the draupnir binary, building it the first time.
func (e *env) serverBinary(ctx context.Context) (string, error) {
	if e.cfg.Server != "" {
		return e.cfg.Server, nil
	}
	binary := filepath.Join(e.work, "draupnir")
	if _, err := os.Stat(binary); err == nil {
		return binary, nil
	}
	e.log.Info("building draupnir")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/draupnir").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/draupnir (run from the module root, or pass -server): %w: %s", err, tail(out))
	}
	return binary, nil
}

// startServerSpec starts a draupnir serve as spec says and waits until it
// is healthy; undo stops it.
func (e *env) startServerSpec(ctx context.Context, undo *cleanups, spec serverSpec) (*server, error) {
	binary, err := e.serverBinary(ctx)
	if err != nil {
		return nil, err
	}
	httpPort, sshPort := spec.httpPort, spec.sshPort
	for _, p := range []*int{&httpPort, &sshPort} {
		if *p == 0 {
			if *p, err = freePort(); err != nil {
				return nil, err
			}
		}
	}
	s := &server{
		sshPort: sshPort,
		url:     "http://127.0.0.1:" + strconv.Itoa(httpPort),
		secret:  "bench-" + randomHex(16),
		logPath: filepath.Join(e.work, spec.name+".log"),
	}
	conf := fmt.Sprintf(`%s
data_path = %q
run_path = %q
environment = "test"
shared_secret = %q
public_hostname = "localhost"
[http]
address = "127.0.0.1"
insecure_port = %d
port = 0
[ssh]
port = %d
address = "127.0.0.1"
upload_authorized_keys = %q
[instances]
min_port = %d
max_port = %d
listen_addresses = "127.0.0.1"
`, spec.top, spec.dataPath, spec.runPath, s.secret, httpPort, sshPort, e.keys.authKey, spec.portBase, spec.portBase+spec.portSpan-1)
	conf += spec.tables
	confPath := filepath.Join(e.work, spec.name+".toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	s.binary, s.confPath, s.env = binary, confPath, append(os.Environ(), spec.env...)
	if err := s.launch(ctx); err != nil {
		return nil, err
	}
	if spec.keepLog != "" {
		undo.push(func(context.Context) error {
			b, err := os.ReadFile(s.logPath)
			if err == nil {
				err = os.WriteFile(spec.keepLog, b, 0o644)
			}
			return err
		})
	}
	undo.push(s.stop)
	return s, s.waitHealthy(ctx, e.log)
}

// launch starts draupnir serve on the server's configuration, its log
// appended to the server's.
func (s *server) launch(ctx context.Context) error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd = exec.Command(s.binary, "--config", s.confPath, "serve")
	s.cmd.Env = s.env
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C at the terminal reaches only us, and we
	// stop it in order.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.binary, err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	return nil
}

// restart stops the server, appends extra to its configuration and starts
// it again on the same ports, data path and run path (its instances are
// adopted, as after any restart).
func (s *server) restart(ctx context.Context, extra string, log *slog.Logger) error {
	if err := s.stop(ctx); err != nil {
		return err
	}
	f, err := os.OpenFile(s.confPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(extra)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := s.launch(ctx); err != nil {
		return err
	}
	return s.waitHealthy(ctx, log)
}

// waitHealthy waits until the server answers its health check.
func (s *server) waitHealthy(ctx context.Context, log *slog.Logger) error {
	log.Info("waiting for draupnir serve", "url", s.url, "log", s.logPath)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/health_check", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("draupnir serve exited during start-up: %s", s.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("draupnir serve did not become healthy: %s", s.logTail())
		}
	}
}

// stop asks the server to shut down and waits; its instances keep running
// (they outlive restarts by design) and are killed by the unmount step.
func (s *server) stop(ctx context.Context) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-ctx.Done():
	case <-time.After(time.Minute):
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	return errors.New("draupnir serve did not stop on SIGTERM; killed it")
}

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	return tail(b)
}

// killUnder SIGKILLs every process whose working directory lies under dir
// (postgres chdirs into its data directory) and waits for them to go.
func killUnder(dir string) {
	pids := processesUnder(dir)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && alive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// processesUnder lists the processes whose working directory lies under dir.
func processesUnder(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", ent.Name(), "cwd"))
		if err != nil || !alive(pid) {
			continue
		}
		if cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid exists and is no zombie (PID 1 may reap late).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func describeMachine(ctx context.Context) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemBytes = kb << 10
			}
		}
	}
	if sup, err := supervisor.New("postgres", nil, nil); err == nil {
		if major, err := sup.NewestMajor(); err == nil {
			if bin, err := sup.BinDir(major); err == nil {
				out, _ := exec.CommandContext(ctx, filepath.Join(bin, "postgres"), "--version").Output()
				m.Postgres = strings.TrimSpace(string(out))
			}
		}
	}
	return m
}

// requestDurations returns, in ms, the durations the server logged for its
// answers to method path (its JSON log lines "http request").
func (s *server) requestDurations(method, path string) []float64 {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return nil
	}
	var out []float64
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec struct {
			Msg      string  `json:"msg"`
			Method   string  `json:"method"`
			Path     string  `json:"path"`
			Status   int     `json:"status"`
			Duration float64 `json:"duration_ms"`
		}
		if json.Unmarshal(line, &rec) != nil || rec.Msg != "http request" || rec.Method != method || rec.Path != path || rec.Status >= 300 {
			continue
		}
		out = append(out, rec.Duration)
	}
	return out
}
