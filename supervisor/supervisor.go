// Package supervisor starts, adopts and stops PostgreSQL server processes as
// an unprivileged OS user, without pg_ctl or a shell: it execs postgres
// directly in its own process group (so it outlives a restart of Draupnir),
// detects readiness from postmaster.pid within a few milliseconds, and escalates
// shutdowns from fast to immediate to SIGKILL. It also runs initdb and psql for
// the other packages, and the small embedded state cluster Draupnir keeps its
// own tables in when no database_url is configured.
package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// DefaultBinDirGlob is where Debian and Ubuntu install PostgreSQL binaries.
const DefaultBinDirGlob = "/usr/lib/postgresql/*/bin"

// Supervisor runs PostgreSQL programs as one unprivileged OS user. It is safe
// for concurrent use.
type Supervisor struct {
	// NoSync trades durability for speed and is meant for tests only: initdb
	// runs with --no-sync and the state cluster with fsync=off.
	NoSync bool

	user   string
	uid    int
	gid    int
	groups []uint32
	home   string
	globs  []string
	log    *slog.Logger

	mu   sync.Mutex
	bins map[string]string // major version → bin dir, from the last scan
}

// New looks up osUser, which must exist and must not be root (postgres refuses
// to run as root). binDirGlobs name the directories holding PostgreSQL binaries;
// nil means DefaultBinDirGlob.
func New(osUser string, binDirGlobs []string, log *slog.Logger) (*Supervisor, error) {
	u, err := user.Lookup(osUser)
	if err != nil {
		return nil, fmt.Errorf("postgres OS user %q: %w", osUser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("postgres OS user %q: uid %q: %w", osUser, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("postgres OS user %q: gid %q: %w", osUser, u.Gid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("postgres OS user %q is root: postgres refuses to run as root, name an unprivileged user", osUser)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("postgres OS user %q: groups: %w", osUser, err)
	}
	var groups []uint32
	for _, g := range gids {
		n, err := strconv.ParseUint(g, 10, 32)
		if err == nil {
			groups = append(groups, uint32(n))
		}
	}
	if len(binDirGlobs) == 0 {
		binDirGlobs = []string{DefaultBinDirGlob}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{
		user:   osUser,
		uid:    uid,
		gid:    gid,
		groups: groups,
		home:   u.HomeDir,
		globs:  append([]string(nil), binDirGlobs...),
		log:    log.With("component", "supervisor"),
	}, nil
}

// UID is the OS user's uid.
func (s *Supervisor) UID() int { return s.uid }

// GID is the OS user's primary gid.
func (s *Supervisor) GID() int { return s.gid }

// User is the OS user's name.
func (s *Supervisor) User() string { return s.user }

// BinDir returns the directory holding the binaries (postgres, initdb, psql…)
// of PostgreSQL major version major ("15"; "9.6" for old versions).
func (s *Supervisor) BinDir(major string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dir, ok := s.bins[major]; ok {
		return dir, nil
	}
	// Rescan on a miss: a version may have been installed since.
	bins, searched := s.scan()
	s.bins = bins
	if dir, ok := bins[major]; ok {
		return dir, nil
	}
	var have []string
	for v := range bins {
		have = append(have, v)
	}
	sort.Strings(have)
	return "", fmt.Errorf("no PostgreSQL %s binaries found in %s (searched %s; installed: %s): install postgresql-%s or adjust postgres.bin_dirs",
		major, strings.Join(s.globs, ", "), strings.Join(searched, ", "), strings.Join(have, ", "), major)
}

// NewestMajor returns the newest installed PostgreSQL major version.
func (s *Supervisor) NewestMajor() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bins) == 0 {
		s.bins, _ = s.scan()
	}
	best, bestKey := "", -1.0
	for v := range s.bins {
		f, err := strconv.ParseFloat(v, 64)
		if err == nil && f > bestKey {
			best, bestKey = v, f
		}
	}
	if best == "" {
		return "", fmt.Errorf("no PostgreSQL server binaries found in %s: install postgresql or adjust postgres.bin_dirs", strings.Join(s.globs, ", "))
	}
	return best, nil
}

// scan asks every postgres binary under the globs for its version. The first
// directory found for a version wins, so the configured order matters.
func (s *Supervisor) scan() (bins map[string]string, searched []string) {
	bins = map[string]string{}
	for _, g := range s.globs {
		dirs, err := filepath.Glob(g)
		if err != nil {
			continue
		}
		sort.Strings(dirs)
		for _, d := range dirs {
			searched = append(searched, d)
			out, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output()
			if err != nil {
				continue
			}
			if v := parseVersion(string(out)); v != "" {
				if _, dup := bins[v]; !dup {
					bins[v] = d
				}
			}
		}
	}
	return bins, searched
}

// parseVersion turns "postgres (PostgreSQL) 15.10 (Debian …)" into "15", and
// "… 9.6.24" into "9.6", the form PG_VERSION uses.
func parseVersion(out string) string {
	_, rest, ok := strings.Cut(out, "(PostgreSQL) ")
	if !ok {
		return ""
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return ""
	}
	parts := strings.Split(f[0], ".")
	digits := func(s string) string {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return s[:i]
	}
	major := digits(parts[0])
	n, err := strconv.Atoi(major)
	if err != nil {
		return ""
	}
	if n < 10 && len(parts) > 1 {
		return major + "." + digits(parts[1])
	}
	return major
}

// DataVersion returns the major version in dataDir's PG_VERSION.
func DataVersion(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s is not a PostgreSQL data directory: PG_VERSION is missing", dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("read PG_VERSION: %w", err)
	}
	v := string(bytes.TrimSpace(b))
	if v == "" || strings.ContainsAny(v, " /\n") {
		return "", fmt.Errorf("%s: PG_VERSION holds %q, not a version", dataDir, v)
	}
	return v, nil
}

// Chown hands the tree at root to the OS user (without following links) and
// makes root 0700, as postgres demands of a data directory.
func (s *Supervisor) Chown(root string) error {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, s.uid, s.gid)
	})
	if err != nil {
		return fmt.Errorf("chown %s to %s: %w", root, s.user, err)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", root, err)
	}
	return nil
}

// command prepares name to run as the OS user with a minimal environment:
// Draupnir's own environment may hold secrets and must not leak into postgres.
func (s *Supervisor) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, name, args...)
	} else {
		cmd = exec.Command(name, args...)
	}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + s.home, "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(s.uid), Gid: uint32(s.gid), Groups: s.groups},
	}
	return cmd
}

// Command prepares name to run as the OS user with the minimal environment
// the supervisor's own programs get, for callers that run other PostgreSQL
// programs (a single-user postgres, say).
func (s *Supervisor) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return s.command(ctx, name, args...)
}

// mkdirOwned creates dir (0700, owned by the OS user) if it is missing, and
// its parents (0755, owned by root) as needed.
func (s *Supervisor) mkdirOwned(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chown(dir, s.uid, s.gid); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	return nil
}
