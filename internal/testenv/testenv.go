// Package testenv gives tests the real parts they run on: a loop-mounted btrfs
// filesystem, the postgres OS user and binaries, source clusters to take
// base backups of, and throwaway state databases with Draupnir's schema
// (StatePool); TreeSums compares directory trees. Everything it sets up is
// torn down by t.Cleanup, even when the test fails. Tests that need root
// skip when not run as root, so that `go test ./...` as a normal user runs
// every unit test; as root (make test, CI) they all run, and missing tools
// are failures, not skips, so that a CI machine without them cannot pass
// silently.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TempDir returns a fresh directory that the postgres user can traverse (the
// standard t.TempDir is 0700 under a 0700 parent), removed at cleanup.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "draupnir-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RequireRoot skips the test unless it runs as root (loop devices, btrfs
// ioctls, mounts and running postgres as the postgres user all need it).
// Root is all it checks for: as root, any missing tool fails the test.
func RequireRoot(t testing.TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("needs root: it mounts btrfs or runs postgres as the postgres user (uid %d; make test runs it as root)", uid)
	}
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Btrfs mounts a fresh sparse btrfs filesystem of size bytes (at least 1 GiB
// is sensible) and returns its mount point. The mount point is 0755.
func Btrfs(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t)
	base := TempDir(t)
	img := filepath.Join(base, "btrfs.img")
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	Run(t, "mkfs.btrfs", "-q", "-f", img)
	Run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { Unmount(t, mnt) })
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// Unmount unmounts mnt, first killing postgres processes whose data
// directories are inside it (a test that failed half-way may leave some), and
// retrying while the filesystem is busy. The loop device goes with the mount
// (mount -o loop sets autoclear).
func Unmount(t testing.TB, mnt string) {
	t.Helper()
	KillPostgresUnder(mnt)
	var out []byte
	var err error
	for i := 0; i < 50; i++ {
		out, err = exec.Command("umount", mnt).CombinedOutput()
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
		KillPostgresUnder(mnt)
	}
	// Last resort: detach lazily so no loop device outlives the test.
	exec.Command("umount", "-l", mnt).Run()
	t.Errorf("umount %s: %v\n%s", mnt, err, out)
}

// KillPostgresUnder SIGKILLs every process whose working directory lies under
// dir (postgres chdirs into its data directory) and waits for them to go.
func KillPostgresUnder(dir string) {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil {
			continue
		}
		if cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil || bytes.Contains(b, []byte(") Z ")) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// PostgresUser returns the uid and gid of the postgres OS user.
func PostgresUser(t testing.TB) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("the postgres OS user is missing (apt-get install postgresql): %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// BinDir returns the directory of the newest installed PostgreSQL's binaries.
func BinDir(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var best string
	bestV := -1
	for _, d := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err == nil && v > bestV {
			if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
				best, bestV = d, v
			}
		}
	}
	if best == "" {
		t.Fatal("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
	}
	return best
}

// AsPostgres runs a command as the postgres OS user from a directory it can
// read, failing the test on error. It returns the combined output.
func AsPostgres(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as postgres: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Source is a running throwaway PostgreSQL cluster to take backups of.
type Source struct {
	Dir       string // data directory
	SocketDir string
	Bin       string
	Superuser string // the bootstrap superuser, "postgres" unless chosen
	// Conninfo reaches the cluster (over its unix socket) as Superuser,
	// for replication too.
	Conninfo string

	log      string
	settings string
}

// SourceOptions shape a source cluster beyond SourceCluster's defaults.
type SourceOptions struct {
	SetupSQL  string            // run in database postgres once it is up
	Superuser string            // the bootstrap superuser's name; "postgres" if empty
	Settings  map[string]string // server settings (archive_mode, say)
}

// SourceCluster initialises and starts a cluster (unix socket only) in a fresh
// directory and stops it at cleanup. setupSQL runs in database postgres.
func SourceCluster(t testing.TB, setupSQL string) *Source {
	t.Helper()
	return NewSource(t, SourceOptions{SetupSQL: setupSQL})
}

// NewSource is SourceCluster with options. Local connections are trusted,
// replication ones included, unless ReplicationRole says otherwise.
func NewSource(t testing.TB, opts SourceOptions) *Source {
	t.Helper()
	RequireRoot(t)
	bin := BinDir(t)
	base := TempDir(t)
	uid, gid := PostgresUser(t)
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatal(err)
	}
	if opts.Superuser == "" {
		opts.Superuser = "postgres"
	}
	s := &Source{Dir: filepath.Join(base, "data"), SocketDir: filepath.Join(base, "sock"), Bin: bin,
		Superuser: opts.Superuser, log: filepath.Join(base, "log")}
	s.Conninfo = fmt.Sprintf("host=%s port=5432 user=%s", s.SocketDir, s.Superuser)
	if err := os.Mkdir(s.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chown(s.SocketDir, uid, gid)
	AsPostgres(t, filepath.Join(bin, "initdb"), "-D", s.Dir, "-A", "trust", "-U", s.Superuser, "--no-sync")
	s.settings = fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c port=5432 -c fsync=off", s.SocketDir)
	for k, v := range opts.Settings {
		s.settings += fmt.Sprintf(" -c %s='%s'", k, v)
	}
	s.Start(t)
	t.Cleanup(func() {
		exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"), "-D", s.Dir, "-m", "immediate", "-w", "stop").Run()
	})
	if opts.SetupSQL != "" {
		s.SQL(t, "postgres", opts.SetupSQL)
	}
	return s
}

// Start starts the cluster again after Stop.
func (s *Source) Start(t testing.TB) {
	t.Helper()
	AsPostgres(t, filepath.Join(s.Bin, "pg_ctl"), "-D", s.Dir, "-w", "-l", s.log, "-o", s.settings, "start")
}

// Stop shuts the cluster down (fast), as an outage of a real source would.
func (s *Source) Stop(t testing.TB) {
	t.Helper()
	AsPostgres(t, filepath.Join(s.Bin, "pg_ctl"), "-D", s.Dir, "-m", "fast", "-w", "stop")
}

// ReplicationRole creates a role with LOGIN and REPLICATION that must give
// its password (scram) over the socket, and returns a libpq passfile for
// it: 0600, the root's, in a directory only root can read, as an
// operator would keep one.
func (s *Source) ReplicationRole(t testing.TB, name, password string) (conninfo, passfile string) {
	t.Helper()
	s.SQL(t, "postgres", fmt.Sprintf("SET password_encryption = 'scram-sha-256'; CREATE ROLE %s LOGIN REPLICATION PASSWORD '%s'", name, password))
	hba := filepath.Join(s.Dir, "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	// First match wins: the role's lines go before initdb's trust ones.
	lines := fmt.Sprintf("local replication %[1]s scram-sha-256\nlocal all %[1]s scram-sha-256\n", name)
	if err := os.WriteFile(hba, append([]byte(lines), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	s.SQL(t, "postgres", "SELECT pg_reload_conf()")
	dir, err := os.MkdirTemp("", "draupnir-passfile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	passfile = filepath.Join(dir, "pgpass")
	if err := os.WriteFile(passfile, []byte("*:*:*:"+name+":"+password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("host=%s port=5432 user=%s", s.SocketDir, name), passfile
}

// SQL runs sql in db on the source cluster with ON_ERROR_STOP and returns
// psql's unaligned, tuples-only output.
func (s *Source) SQL(t testing.TB, db, sql string) string {
	t.Helper()
	return AsPostgres(t, filepath.Join(s.Bin, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-h", s.SocketDir, "-p", "5432", "-U", s.Superuser, "-d", db, "-c", sql)
}

// BaseBackup runs pg_basebackup -Ft into a fresh directory (extra flags such
// as -z or -X fetch are appended) and returns that directory, which holds
// base.tar[.gz] and, with -X stream, pg_wal.tar[.gz].
func (s *Source) BaseBackup(t testing.TB, extra ...string) string {
	t.Helper()
	out := filepath.Join(TempDir(t), "backup")
	uid, gid := PostgresUser(t)
	os.Chown(filepath.Dir(out), uid, gid)
	args := append([]string{"-h", s.SocketDir, "-p", "5432", "-U", s.Superuser, "-D", out, "-Ft", "-c", "fast"}, extra...)
	AsPostgres(t, filepath.Join(s.Bin, "pg_basebackup"), args...)
	return out
}
