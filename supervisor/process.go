package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrPortInUse marks a start that failed because its port was taken;
	// the caller should retry on another port.
	ErrPortInUse = errors.New("port already in use")
	// ErrNotRunning means no live postmaster serves the data directory.
	ErrNotRunning = errors.New("postgres is not running")
	// ErrAlreadyRunning means a live postmaster already serves the data
	// directory; Adopt it instead of starting another.
	ErrAlreadyRunning = errors.New("postgres is already running")
)

// maxSocketPath is sizeof(sun_path) minus the terminating NUL.
const maxSocketPath = 107

// Spec says how to start a postgres.
type Spec struct {
	DataDir string
	// SocketDir holds the unix socket; created 0700 and owned by the OS user
	// if missing. It must be short: a socket path is limited to 107 bytes.
	SocketDir string
	// Port names the socket (.s.PGSQL.<port>) and, with ListenAddresses,
	// the TCP port.
	Port int
	// ListenAddresses is postgres' listen_addresses; "" means no TCP at all.
	ListenAddresses string
	// Settings are extra run-time settings, passed as -c name=value.
	Settings map[string]string
	// ConfigFile, if set, is read instead of DataDir's postgresql.conf
	// (DataDir's postgresql.auto.conf is still read after it). It keeps a
	// server's own configuration out of a data directory whose files come
	// from elsewhere and are snapshotted.
	ConfigFile string
	// LogFile receives postgres' stdout and stderr (appended; created 0600
	// and owned by the OS user).
	LogFile string
}

// managed settings are set from Spec fields and may not appear in Settings.
var managed = map[string]bool{
	"port": true, "listen_addresses": true, "unix_socket_directories": true,
	"data_directory": true, "config_file": true,
}

// StopMode is how hard to ask postgres to stop first.
type StopMode int

const (
	// Fast rolls back open transactions and disconnects clients (SIGINT).
	Fast StopMode = iota
	// Immediate exits without a shutdown checkpoint (SIGQUIT); the next start
	// runs crash recovery.
	Immediate
)

func (m StopMode) String() string {
	if m == Immediate {
		return "immediate"
	}
	return "fast"
}

// Process is a running postmaster, started by us or adopted.
type Process struct {
	pid       int
	dataDir   string
	socketDir string
	port      int
	pidfd     *os.File // nil when the kernel lacks pidfd support
	done      chan struct{}
	sup       *Supervisor
}

// PID is the postmaster's process id.
func (p *Process) PID() int { return p.pid }

// DataDir is the data directory it serves (absolute, symlinks resolved).
func (p *Process) DataDir() string { return p.dataDir }

// SocketDir is where its unix socket lives.
func (p *Process) SocketDir() string { return p.socketDir }

// Port is its port (the socket's name, and the TCP port if it listens).
func (p *Process) Port() int { return p.port }

// Done is closed when the postmaster has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Alive reports whether the postmaster has not exited yet.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Start execs postgres for spec.DataDir as the OS user, in its own process
// group, and returns once it accepts connections. On failure nothing is left
// running and the error carries the tail of the server log; a taken port
// makes it match ErrPortInUse.
func (s *Supervisor) Start(ctx context.Context, spec Spec) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", spec.DataDir, err)
	}
	dataDir, err := resolve(spec.DataDir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: data directory: %w", err)
	}
	major, err := DataVersion(dataDir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	bin, err := s.BinDir(major)
	if err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", dataDir, err)
	}
	args, err := spec.args(dataDir)
	if err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", dataDir, err)
	}
	if err := s.mkdirOwned(spec.SocketDir); err != nil {
		return nil, fmt.Errorf("start postgres for %s: socket directory: %w", dataDir, err)
	}
	if err := s.clearStaleLock(ctx, dataDir); err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", dataDir, err)
	}
	if err := clearStaleSocketLocks(spec.SocketDir); err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", dataDir, err)
	}
	logf, logStart, err := s.openLog(spec.LogFile)
	if err != nil {
		return nil, fmt.Errorf("start postgres for %s: %w", dataDir, err)
	}
	defer logf.Close() // postgres has its own copy

	cmd := s.command(nil, filepath.Join(bin, "postgres"), args...)
	cmd.Dir = dataDir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr.Setpgid = true // survive our own death and let us kill its backends as one group
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres for %s as %s: %w", dataDir, s.user, err)
	}
	p := &Process{pid: cmd.Process.Pid, dataDir: dataDir, socketDir: spec.SocketDir, port: spec.Port,
		done: make(chan struct{}), sup: s}
	// Our own child cannot be reaped (and its pid not reused) before cmd.Wait,
	// so opening the pidfd now is race-free.
	p.pidfd = openPidfd(p.pid)
	var exitErr error
	go func() {
		p.waitExit()
		exitErr = cmd.Wait()
		close(p.done)
		p.closePidfd()
	}()

	if err := p.waitReady(ctx); err != nil {
		p.kill()
		<-p.done
		tail := logTail(spec.LogFile, logStart)
		if exitErr != nil {
			err = fmt.Errorf("%w (%v)", err, exitErr)
		}
		if portTaken(tail) {
			err = fmt.Errorf("%w: %w", ErrPortInUse, err)
		}
		s.log.Warn("postgres failed to start", "data_dir", dataDir, "port", spec.Port, "err", err)
		return nil, fmt.Errorf("start postgres for %s on port %d: %w\n%s", dataDir, spec.Port, err, tail)
	}
	s.log.Debug("postgres started", "data_dir", dataDir, "pid", p.pid, "port", spec.Port)
	return p, nil
}

func (spec Spec) args(dataDir string) ([]string, error) {
	if spec.Port <= 0 || spec.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", spec.Port)
	}
	if spec.SocketDir == "" || !filepath.IsAbs(spec.SocketDir) {
		return nil, fmt.Errorf("socket directory %q must be an absolute path", spec.SocketDir)
	}
	// unix_socket_directories is a comma-separated list with quoting rules;
	// keep to names that need none.
	if strings.ContainsAny(spec.SocketDir, ", \t\n\"'\\") {
		return nil, fmt.Errorf("socket directory %q must not contain commas, quotes, backslashes or blanks", spec.SocketDir)
	}
	if n := len(spec.SocketDir) + len("/.s.PGSQL.") + len(strconv.Itoa(spec.Port)); n > maxSocketPath {
		return nil, fmt.Errorf("socket directory %q is too long: the socket path would be %d bytes, the limit is %d", spec.SocketDir, n, maxSocketPath)
	}
	if spec.LogFile == "" {
		return nil, errors.New("no log file given")
	}
	args := []string{
		"-D", dataDir,
		"-p", strconv.Itoa(spec.Port),
		"-c", "listen_addresses=" + spec.ListenAddresses,
		"-c", "unix_socket_directories=" + spec.SocketDir,
	}
	if spec.ConfigFile != "" {
		if !filepath.IsAbs(spec.ConfigFile) {
			return nil, fmt.Errorf("config file %q must be an absolute path", spec.ConfigFile)
		}
		args = append(args, "-c", "config_file="+spec.ConfigFile)
	}
	names := make([]string, 0, len(spec.Settings))
	for k := range spec.Settings {
		if k == "" || strings.ContainsAny(k, "= \t\n'\"") {
			return nil, fmt.Errorf("invalid setting name %q", k)
		}
		if managed[strings.ToLower(k)] {
			return nil, fmt.Errorf("setting %s is managed by the supervisor; use the Spec field", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, "-c", k+"="+spec.Settings[k])
	}
	return args, nil
}

// openLog opens (creating) the log file for appending and returns it with its
// size before this start, so that errors show only this run's lines. The log
// lives in a data directory that the OS user owns: a link put in its place
// must not make root append to, and hand over, the file it points at, nor a
// fifo hang the start (O_NONBLOCK, then only a regular file is accepted).
func (s *Supervisor) openLog(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open log file: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("log file %s is not a regular file", path)
	}
	if err := f.Chown(s.uid, s.gid); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("chown log file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat log file: %w", err)
	}
	return f, fi.Size(), nil
}

// waitReady polls postmaster.pid until its status line says "ready", with a
// backoff that starts far below a millisecond (readiness is usually a few tens
// of ms away and every ms counts for instance creation).
func (p *Process) waitReady(ctx context.Context) error {
	pidFile := filepath.Join(p.dataDir, "postmaster.pid")
	want := strconv.Itoa(p.pid)
	delay := 100 * time.Microsecond
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		if b, err := os.ReadFile(pidFile); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) >= 8 && lines[0] == want && strings.TrimSpace(lines[7]) == "ready" {
				return nil
			}
		}
		select {
		case <-p.done:
			return errors.New("postgres exited before accepting connections")
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres to accept connections: %w", ctx.Err())
		case <-timer.C:
		}
		// Capped at 2 ms: a read of postmaster.pid costs ~10 µs, a late
		// notice costs every instance creation up to the cap.
		if delay < 2*time.Millisecond {
			delay = min(delay*3/2, 2*time.Millisecond)
		}
		timer.Reset(delay)
	}
}

// portTaken reports whether a server log shows a failure to bind the port.
func portTaken(log string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "could not bind") || strings.Contains(line, "Address already in use") ||
			strings.Contains(line, "could not create any TCP/IP sockets") ||
			// Another postmaster owns this port's socket in the same directory.
			(strings.Contains(line, ".s.PGSQL.") && strings.Contains(line, "already exists")) {
			return true
		}
	}
	return false
}

// logTail returns the last lines written to path since offset.
func logTail(path string, offset int64) string {
	const maxBytes, maxLines = 8 << 10, 30
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > maxBytes {
		offset = fi.Size() - maxBytes
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, offset, maxBytes))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}

// Adopt returns the postmaster that serves dataDir, typically one started
// before Draupnir restarted, or an error matching ErrNotRunning.
func (s *Supervisor) Adopt(dataDir string) (*Process, error) {
	dir, err := resolve(dataDir)
	if err != nil {
		return nil, fmt.Errorf("adopt postgres of %s: %w: %w", dataDir, ErrNotRunning, err)
	}
	lines, err := readPidFile(dir)
	if err != nil {
		return nil, fmt.Errorf("adopt postgres of %s: %w: %w", dir, ErrNotRunning, err)
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("adopt postgres of %s: %w: postmaster.pid names no pid (%q)", dir, ErrNotRunning, lines[0])
	}
	// Open the pidfd before checking, so that what we check is what we watch
	// and signal even if the pid is reused later.
	pidfd := openPidfd(pid)
	if err := isPostmasterOf(pid, dir); err != nil {
		if pidfd != nil {
			pidfd.Close()
		}
		return nil, fmt.Errorf("adopt postgres of %s: %w: %w", dir, ErrNotRunning, err)
	}
	p := &Process{pid: pid, dataDir: dir, pidfd: pidfd, done: make(chan struct{}), sup: s}
	if len(lines) >= 5 {
		p.port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
		p.socketDir = strings.TrimSpace(lines[4])
	}
	go func() {
		p.waitExit()
		close(p.done)
		p.closePidfd()
	}()
	s.log.Debug("postgres adopted", "data_dir", dir, "pid", pid)
	return p, nil
}

// StopDataDir stops whatever postmaster serves dataDir; nil if none does.
func (s *Supervisor) StopDataDir(ctx context.Context, dataDir string, mode StopMode, timeout time.Duration) error {
	p, err := s.Adopt(dataDir)
	if errors.Is(err, ErrNotRunning) {
		return nil
	}
	if err != nil {
		return err
	}
	return p.Stop(ctx, mode, timeout)
}

// Stop shuts the postmaster down and returns once it is gone: mode's signal
// first, then, each after timeout (default 10s), immediate shutdown and
// SIGKILL to its whole process group. If ctx ends first it goes straight to
// SIGKILL. A SIGKILL leaves postmaster.pid behind; Start copes with that.
func (p *Process) Stop(ctx context.Context, mode StopMode, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	signals := []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT}
	if mode == Immediate {
		signals = signals[1:]
	}
	for _, sig := range signals {
		if !p.Alive() {
			return nil
		}
		if err := p.signal(sig); err != nil && p.Alive() {
			return fmt.Errorf("stop postgres %d of %s: %w", p.pid, p.dataDir, err)
		}
		t := time.NewTimer(timeout)
		select {
		case <-p.done:
			t.Stop()
			p.sup.log.Debug("postgres stopped", "data_dir", p.dataDir, "pid", p.pid, "signal", sig.String())
			return nil
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
		p.sup.log.Warn("postgres did not stop in time, escalating", "data_dir", p.dataDir, "pid", p.pid, "signal", sig.String(), "timeout", timeout)
	}
	p.kill()
	// SIGKILL cannot be ignored; the wait is bounded only to never hang on
	// a process stuck in the kernel (D state).
	t := time.NewTimer(max(timeout, 10*time.Second))
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		return fmt.Errorf("stop postgres %d of %s: still alive after SIGKILL", p.pid, p.dataDir)
	}
	// Backends got the SIGKILL too; make sure none still uses the directory.
	deadline := time.Now().Add(2 * time.Second)
	for len(postgresIn(p.dataDir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	p.sup.log.Warn("postgres killed", "data_dir", p.dataDir, "pid", p.pid)
	return nil
}

// signal sends sig to the postmaster, through the pidfd when there is one
// so that a reused pid can never receive it.
func (p *Process) signal(sig syscall.Signal) error {
	if p.pidfd == nil {
		return syscall.Kill(p.pid, sig)
	}
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return err
	}
	return serr
}

// kill SIGKILLs the postmaster and, if it leads one, its process group.
func (p *Process) kill() {
	if !p.Alive() {
		return
	}
	if st, err := procStat(p.pid); err == nil && st.pgrp == p.pid {
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	p.signal(syscall.SIGKILL)
}

// closePidfd releases the pidfd once the process is known to be gone (Done
// is closed first, so signal never sees a closed file while Alive is true).
func (p *Process) closePidfd() {
	if p.pidfd != nil {
		p.pidfd.Close()
	}
}

// openPidfd returns a non-blocking pidfd for pid, or nil if the kernel or the
// process does not allow one.
func openPidfd(pid int) *os.File {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
}

// waitExit returns once the process has exited (or become a zombie). A pidfd
// turns readable then; the runtime's poller waits for that without holding a
// thread, so hundreds of instances cost nothing. Without a pidfd it polls /proc.
func (p *Process) waitExit() {
	if p.pidfd != nil {
		rc, err := p.pidfd.SyscallConn()
		if err == nil {
			err = rc.Read(func(fd uintptr) bool {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, err := unix.Poll(fds, 0)
				return err == nil && n > 0
			})
			if err == nil {
				return
			}
		}
		// Not pollable by the runtime: block a thread instead.
		for {
			fds := []unix.PollFd{{Fd: int32(p.pidfd.Fd()), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, -1)
			if err == nil && n > 0 {
				return
			}
			if err != nil && err != unix.EINTR {
				break
			}
		}
	}
	for {
		if st, err := procStat(p.pid); err != nil || st.state == 'Z' {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type stat struct {
	state byte
	ppid  int
	pgrp  int
}

// procStat reads /proc/PID/stat; the command name may hold spaces and
// parentheses, so fields are counted from the last ')'.
func procStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return stat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ppid, _ := strconv.Atoi(f[1])
	pgrp, _ := strconv.Atoi(f[2])
	return stat{state: f[0][0], ppid: ppid, pgrp: pgrp}, nil
}

// isPostmasterOf checks that pid is alive (not a zombie, which looks alive to
// kill(pid, 0)), works in dir and is a postmaster, not a backend: backends
// rewrite their argv to "postgres: …".
func isPostmasterOf(pid int, dir string) error {
	st, err := procStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d is gone", pid)
	}
	if st.state == 'Z' || st.state == 'X' {
		return fmt.Errorf("pid %d is a zombie", pid)
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	if cwd != dir {
		return fmt.Errorf("pid %d works in %s, not in the data directory", pid, cwd)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	if filepath.Base(string(argv0)) != "postgres" {
		return fmt.Errorf("pid %d is %q, not a postmaster", pid, argv0)
	}
	return nil
}

// readPidFile returns the lines of dir/postmaster.pid.
func readPidFile(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("no postmaster.pid")
	}
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 1 || lines[0] == "" {
		return nil, errors.New("postmaster.pid is empty")
	}
	return lines, nil
}

// clearStaleLock prepares a data directory whose postmaster.pid survived its
// postmaster (a crash or SIGKILL). It waits for the old backends to finish
// dying: postgres refuses to start while they still hold the old shared
// memory. It removes the lock file when postgres itself would refuse to start
// over it although no postmaster runs: its pid is a zombie (an orphan PID 1 has
// not reaped yet) or was reused by an unrelated process. A pid that is simply
// gone is left for postgres, which then also cleans up its old shared memory.
func (s *Supervisor) clearStaleLock(ctx context.Context, dir string) error {
	lines, err := readPidFile(dir)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid <= 0 {
		pid = 0
	}
	if pid > 0 && isPostmasterOf(pid, dir) == nil {
		return fmt.Errorf("%w as pid %d", ErrAlreadyRunning, pid)
	}
	delay := 100 * time.Microsecond
	deadline := time.Now().Add(staleWait)
	for {
		pids := postgresIn(dir)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("postgres processes %v still use the data directory although its postmaster is gone", pids)
		}
		time.Sleep(delay)
		delay = min(delay*2, 10*time.Millisecond)
	}
	if pid == 0 {
		return nil
	}
	if _, err := procStat(pid); err != nil {
		return nil
	}
	s.log.Info("removing stale postmaster.pid", "data_dir", dir, "pid", pid)
	if err := os.Remove(filepath.Join(dir, "postmaster.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale postmaster.pid: %w", err)
	}
	return nil
}

// clearStaleSocketLocks removes the socket lock files (.s.PGSQL.N.lock) in
// a socket directory whose postmaster is gone. Postgres checks their pid
// with kill(pid, 0), which a zombie passes, so after a crash it would refuse
// to start until PID 1 reaps the orphan. The directory is private to one
// postgres, so a lock there whose pid is not a live postgres is stale.
func clearStaleSocketLocks(dir string) error {
	locks, _ := filepath.Glob(filepath.Join(dir, ".s.PGSQL.*.lock"))
	for _, lock := range locks {
		b, err := os.ReadFile(lock)
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
		if pid > 0 {
			if st, err := procStat(pid); err == nil && st.state != 'Z' {
				comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
				if strings.HasPrefix(string(comm), "postgres") {
					continue // a live postgres owns it
				}
			}
		}
		for _, f := range []string{lock, strings.TrimSuffix(lock, ".lock")} {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("removing stale socket lock: %w", err)
			}
		}
	}
	return nil
}

// staleWait bounds how long Start waits for the backends of a dead
// postmaster to exit; after a SIGKILL they take milliseconds.
const staleWait = 5 * time.Second

// postgresIn lists live postgres processes working in dir (zombies have no
// working directory and do not count).
func postgresIn(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil || cwd != dir {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		if strings.HasPrefix(string(comm), "postgres") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// resolve makes dir absolute with symlinks resolved, the form /proc/PID/cwd
// shows.
func resolve(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}
