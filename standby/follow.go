package standby

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/internal/conninfo"
	"github.com/draupnir-db/draupnir/supervisor"
)

// port names each standby's socket; every standby has its own socket
// directory, and none listens on TCP.
const port = 5432

// layout names the files of one standby. Only data goes into snapshots;
// the configuration, the passfile and the log live beside it in private,
// so that no image ever carries them.
type layout struct {
	data     string // the subvolume: the standby's data directory
	incoming string // the subvolume a base backup is made in
	private  string // 0700, the postgres user's: configuration, passfile, log
	conf     string
	hba      string
	ident    string
	passfile string
	log      string
	sockets  string
}

func (m *Manager) layout(name string) layout {
	private := filepath.Join(m.opts.Dir, name+".private")
	return layout{
		data:     filepath.Join(m.opts.Dir, name),
		incoming: filepath.Join(m.opts.Dir, "."+name+".incoming"),
		private:  private,
		conf:     filepath.Join(private, "postgresql.conf"),
		hba:      filepath.Join(private, "pg_hba.conf"),
		ident:    filepath.Join(private, "pg_ident.conf"),
		passfile: filepath.Join(private, "passfile"),
		log:      filepath.Join(private, "postgres.log"),
		sockets:  filepath.Join(m.opts.RunDir, name),
	}
}

// standby is one source's standby as the Manager keeps it.
type standby struct {
	src  Source
	l    layout
	conn conninfo.Keywords // nil in archive-only mode

	mu        sync.Mutex
	status    Status
	proc      *supervisor.Process
	superuser string
	db        *pgx.Conn // the polls' connection to the standby; nil when closed
}

func (m *Manager) newStandby(src Source) *standby {
	sb := &standby{src: src, l: m.layout(src.Name), status: Status{State: Initialising}}
	if src.Conninfo != "" {
		sb.conn, _ = parseConninfo(src.Conninfo) // checked by Run
	}
	return sb
}

func (sb *standby) set(f func(*Status)) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	f(&sb.status)
}

func (sb *standby) fail(err error) {
	sb.set(func(s *Status) { s.State, s.LastError = Failed, clip(err.Error()) })
}

// maxError bounds LastError: messages relayed from the source (libpq's,
// pg_basebackup's) are the source's to make as long as it likes.
const maxError = 2000

func clip(msg string) string {
	if len(msg) <= maxError {
		return msg
	}
	return msg[:maxError/2] + " … " + msg[len(msg)-maxError/2:]
}

func (sb *standby) process() *supervisor.Process {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.proc
}

// keep brings the standby up and keeps it up until ctx ends, backing off
// between failed attempts.
func (m *Manager) keep(ctx context.Context, sb *standby) {
	log := m.log.With("source", sb.src.Name)
	backoff := m.opts.RetryMin
	for ctx.Err() == nil {
		proc, err := m.bringUp(ctx, sb)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			sb.fail(err)
			log.Error("standby not running; retrying", "err", err, "retry_in", backoff)
			sleep(ctx, backoff)
			backoff = min(backoff*2, m.opts.RetryMax)
			continue
		}
		sb.mu.Lock()
		sb.proc = proc
		sb.status.LastError = ""
		sb.mu.Unlock()
		started := time.Now()
		err = m.watch(ctx, sb, proc)
		sb.closeConns()
		if ctx.Err() != nil {
			return
		}
		sb.fail(err)
		log.Warn("standby stopped; restarting it", "err", err)
		if time.Since(started) > m.opts.RetryMax {
			backoff = m.opts.RetryMin
		} else {
			sleep(ctx, backoff)
			backoff = min(backoff*2, m.opts.RetryMax)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// bringUp makes the standby's data if it has none, writes its
// configuration, and adopts its running postgres or starts one (restarting
// it when the configuration changed).
func (m *Manager) bringUp(ctx context.Context, sb *standby) (*supervisor.Process, error) {
	sup := m.opts.Postgres
	if err := m.privateDir(sb); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(sb.l.data, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		sb.set(func(s *Status) { s.State = Initialising })
		if err := m.baseBackup(ctx, sb); err != nil {
			return nil, err
		}
	}
	changed, err := m.configure(ctx, sb)
	if err != nil {
		return nil, err
	}
	p, err := sup.Adopt(sb.l.data)
	switch {
	case err == nil && !changed:
		m.log.Info("standby adopted", "source", sb.src.Name, "pid", p.PID())
		return p, nil
	case err == nil:
		m.log.Info("standby configuration changed; restarting it", "source", sb.src.Name)
		if err := p.Stop(ctx, supervisor.Fast, time.Minute); err != nil {
			return nil, fmt.Errorf("source %s: stopping the standby: %w", sb.src.Name, err)
		}
	case !errors.Is(err, supervisor.ErrNotRunning):
		return nil, fmt.Errorf("source %s: %w", sb.src.Name, err)
	}
	p, err = sup.Start(ctx, supervisor.Spec{
		DataDir:    sb.l.data,
		SocketDir:  sb.l.sockets,
		Port:       port,
		ConfigFile: sb.l.conf,
		Settings:   m.opts.Settings,
		LogFile:    sb.l.log,
	})
	if err != nil {
		return nil, fmt.Errorf("source %s: starting the standby: %w", sb.src.Name, err)
	}
	m.log.Info("standby started", "source", sb.src.Name, "pid", p.PID())
	return p, nil
}

// privateDir makes the standby's private directory and refreshes its copy
// of the passfile there: libpq insists that a passfile be its reader's and
// 0600, and the operator's belongs to root. A changed passfile is read at
// the standby's next connection to its source.
func (m *Manager) privateDir(sb *standby) error {
	sup := m.opts.Postgres
	if err := os.MkdirAll(sb.l.private, 0o700); err != nil {
		return fmt.Errorf("source %s: %w", sb.src.Name, err)
	}
	if err := os.Chown(sb.l.private, sup.UID(), sup.GID()); err != nil {
		return fmt.Errorf("source %s: %w", sb.src.Name, err)
	}
	if err := os.Chmod(sb.l.private, 0o700); err != nil {
		return fmt.Errorf("source %s: %w", sb.src.Name, err)
	}
	if sb.src.Passfile == "" {
		if err := os.Remove(sb.l.passfile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("source %s: %w", sb.src.Name, err)
		}
		return nil
	}
	b, err := os.ReadFile(sb.src.Passfile)
	if err != nil {
		return fmt.Errorf("source %s: reading its passfile: %w", sb.src.Name, err)
	}
	if _, err := m.writePrivate(sb.l.passfile, b); err != nil {
		return fmt.Errorf("source %s: %w", sb.src.Name, err)
	}
	return nil
}

// writePrivate replaces path with content, 0600 and the postgres user's,
// and reports whether the content changed. It writes a new file and renames
// it over path, so a link planted at path is replaced, never written
// through.
func (m *Manager) writePrivate(path string, content []byte) (changed bool, err error) {
	if old, err := readRegular(path); err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, err
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Chown(m.opts.Postgres.UID(), m.opts.Postgres.GID())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	return true, nil
}

// readRegular reads path if it is a regular file; the data directory came
// from the source, and a link or a fifo planted there must not make root
// read elsewhere or hang.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.ReadAll(f)
}

// baseBackup copies the source into a fresh subvolume with pg_basebackup
// and moves it into place only once complete, so that a data directory
// that exists is always a whole one; a failed attempt leaves nothing.
func (m *Manager) baseBackup(ctx context.Context, sb *standby) (err error) {
	name := sb.src.Name
	if sb.conn == nil {
		return fmt.Errorf("source %s: the standby has no data yet, and a base backup needs a conninfo (a restore_command alone cannot make one)", name)
	}
	// Fail early, with libpq's reason, before making anything.
	if _, err := m.sourcePosition(ctx, sb); err != nil {
		return err
	}
	sup := m.opts.Postgres
	vol := m.opts.Volumes
	if err := vol.Delete(sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: removing an unfinished base backup: %w", name, err)
	}
	if err := vol.CreateSubvolume(sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			if derr := vol.Delete(sb.l.incoming); derr != nil {
				m.log.Error("cannot remove a failed base backup", "source", name, "err", derr)
			}
		}
	}()
	if err := sup.Chown(sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	major, err := sup.NewestMajor()
	if err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	bin, err := sup.BinDir(major)
	if err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	// Tar format, extracted here by the upload's hardened extractor: in
	// plain format pg_basebackup would write wherever the server's stream
	// says (tablespace paths, member names), and the source's server is
	// as untrusted as its data. The tars cost the database's size in disk
	// until extracted, once per standby.
	tars := filepath.Join(sb.l.private, "base-backup")
	if err := os.RemoveAll(tars); err != nil {
		return fmt.Errorf("source %s: removing an unfinished base backup: %w", name, err)
	}
	if err := os.Mkdir(tars, 0o700); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	defer os.RemoveAll(tars)
	if err := os.Chown(tars, sup.UID(), sup.GID()); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	args := []string{"-D", tars, "-Ft", "-X", "stream", "-c", "fast", "--no-password", "--no-manifest",
		"-d", sb.conn.With("application_name", applicationName(name)).String()}
	if sup.NoSync {
		args = append(args, "--no-sync")
	}
	cmd := sup.Command(ctx, filepath.Join(bin, "pg_basebackup"), args...)
	if sb.src.Passfile != "" {
		cmd.Env = append(cmd.Env, "PGPASSFILE="+sb.l.passfile)
	}
	m.log.Info("base backup of source started", "source", name)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("source %s: base backup failed: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	if err := extractBackup(ctx, tars, sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	if err := sup.Chown(sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	if err := noTablespaces(sb.l.incoming); err != nil {
		return fmt.Errorf("source %s: %w", name, err)
	}
	// The source's own server state must not come along.
	for _, f := range []string{"postgresql.auto.conf", "standby.signal", "recovery.signal", "postmaster.pid", "postmaster.opts"} {
		if err := os.Remove(filepath.Join(sb.l.incoming, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("source %s: %w", name, err)
		}
	}
	if err := os.Rename(sb.l.incoming, sb.l.data); err != nil {
		return fmt.Errorf("source %s: moving the base backup into place: %w", name, err)
	}
	m.log.Info("base backup of source done", "source", name, "duration", time.Since(start))
	return nil
}

// extractBackup extracts the base.tar and pg_wal.tar that pg_basebackup -Ft
// wrote in tars into dir. Any other archive is a tablespace's, which
// follow mode does not support (its data would live outside the
// subvolume that snapshots copy).
func extractBackup(ctx context.Context, tars, dir string) error {
	ents, err := os.ReadDir(tars)
	if err != nil {
		return fmt.Errorf("reading the base backup: %w", err)
	}
	var others []string
	for _, e := range ents {
		if e.Name() != "base.tar" && e.Name() != "pg_wal.tar" {
			others = append(others, strings.TrimSuffix(e.Name(), ".tar"))
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("the source uses tablespaces (%s), which follow mode does not support", strings.Join(others, ", "))
	}
	for _, a := range []struct{ tar, into string }{{"base.tar", dir}, {"pg_wal.tar", filepath.Join(dir, "pg_wal")}} {
		if err := os.MkdirAll(a.into, 0o700); err != nil {
			return err
		}
		// O_NOFOLLOW: the directory is the postgres user's.
		f, err := os.OpenFile(filepath.Join(tars, a.tar), os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("reading the base backup: %w", err)
		}
		_, err = extract.Tar(ctx, f, a.into, extract.Options{UID: -1, GID: -1})
		f.Close()
		if err != nil {
			return fmt.Errorf("extracting the base backup's %s: %w", a.tar, err)
		}
	}
	return nil
}

// noTablespaces refuses a data directory with tablespaces: their data
// lives outside it (pg_basebackup writes them to the source's paths, here),
// so a snapshot would not hold it and an image booted from one would write
// into the standby's.
func noTablespaces(dir string) error {
	ents, err := os.ReadDir(filepath.Join(dir, "pg_tblspc"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading pg_tblspc: %w", err)
	}
	if len(ents) > 0 {
		var names []string
		for _, e := range ents {
			if target, err := os.Readlink(filepath.Join(dir, "pg_tblspc", e.Name())); err == nil {
				names = append(names, e.Name()+" at "+target)
			} else {
				names = append(names, e.Name())
			}
		}
		return fmt.Errorf("the source uses tablespaces (%s), which follow mode does not support", strings.Join(names, ", "))
	}
	return nil
}

func applicationName(source string) string { return "draupnir_standby_" + source }

// fixedSettings are the ones configure writes and Options.Settings may not
// change: they keep the standby private, a standby, and startable.
var fixedSettings = map[string]bool{
	"hot_standby": true, "primary_conninfo": true, "restore_command": true,
	"recovery_target_timeline": true, "archive_mode": true, "archive_command": true,
	"hba_file": true, "ident_file": true, "ssl": true, "shared_preload_libraries": true,
	"max_connections": true, "max_worker_processes": true, "max_wal_senders": true,
	"max_prepared_transactions": true, "max_locks_per_transaction": true,
	"listen_addresses": true, "unix_socket_directories": true, "port": true,
	"config_file": true, "data_directory": true, "primary_slot_name": true,
}

// controlSettings are the settings a hot standby must have at least as high
// as its source, by pg_controldata's names.
var controlSettings = []struct{ control, setting string }{
	{"max_connections setting", "max_connections"},
	{"max_worker_processes setting", "max_worker_processes"},
	{"max_wal_senders setting", "max_wal_senders"},
	{"max_prepared_xacts setting", "max_prepared_transactions"},
	{"max_locks_per_xact setting", "max_locks_per_transaction"},
}

// configure writes the standby's configuration into its private directory
// and its standby.signal and an empty postgresql.auto.conf into its data,
// and reports whether the configuration changed. The source's own
// configuration files stay in the data directory untouched (finalise reads
// them), and unread: settings from the source such as archive_command or
// shared_preload_libraries must not run here.
func (m *Manager) configure(ctx context.Context, sb *standby) (bool, error) {
	name := sb.src.Name
	sup := m.opts.Postgres
	control, err := m.controlData(ctx, sb.l.data)
	if err != nil {
		return false, fmt.Errorf("source %s: %w", name, err)
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, `# Written by draupnir for the standby of source %s; rewritten at every
# start. The source's own configuration files in the data directory are not
# read. No TCP: the standby listens on its private unix socket only.
hot_standby = on
hot_standby_feedback = off
archive_mode = off
shared_preload_libraries = ''
ssl = off
recovery_target_timeline = 'latest'
log_line_prefix = '%%m [%%p] '
shared_buffers = 128MB
# On btrfs, copy-on-write: zero-filling and recycling WAL segments only
# writes blocks that every snapshot then holds apart from the standby.
wal_init_zero = off
wal_recycle = off
`, name)
	fmt.Fprintf(&conf, "hba_file = %s\nident_file = %s\n", quote(sb.l.hba), quote(sb.l.ident))
	// A hot standby refuses to run with less than its source has.
	for _, cs := range controlSettings {
		v, err := strconv.Atoi(control[cs.control])
		if err != nil {
			return false, fmt.Errorf("source %s: pg_controldata's %s: %w", name, cs.control, err)
		}
		if cs.setting == "max_connections" {
			v = max(v, 10)
		}
		fmt.Fprintf(&conf, "%s = %d\n", cs.setting, v)
	}
	if sb.conn != nil {
		c := sb.conn.With("application_name", applicationName(name))
		if sb.src.Passfile != "" {
			c = c.With("passfile", sb.l.passfile)
		}
		fmt.Fprintf(&conf, "primary_conninfo = %s\n", quote(c.String()))
	}
	if sb.src.RestoreCommand != "" {
		fmt.Fprintf(&conf, "restore_command = %s\n", quote(sb.src.RestoreCommand))
	}
	if sup.NoSync {
		conf.WriteString("fsync = off\n")
	}
	changed := false
	for _, f := range []struct {
		path, content string
	}{
		{sb.l.conf, conf.String()},
		// Only draupnir connects, as root over the private socket.
		{sb.l.hba, "local all all trust\n"},
		{sb.l.ident, ""},
	} {
		c, err := m.writePrivate(f.path, []byte(f.content))
		if err != nil {
			return false, fmt.Errorf("source %s: %w", name, err)
		}
		changed = changed || c
	}
	// postgresql.auto.conf is read from the data directory whatever the
	// config_file; keep it empty (ALTER SYSTEM cannot run on a standby).
	// Written as the postgres user's file, never through a link.
	for _, f := range []struct{ name, content string }{
		{"postgresql.auto.conf", "# Emptied by draupnir: the source's ALTER SYSTEM settings do not apply.\n"},
		{"standby.signal", ""},
	} {
		if _, err := m.writePrivate(filepath.Join(sb.l.data, f.name), []byte(f.content)); err != nil {
			return false, fmt.Errorf("source %s: %w", name, err)
		}
	}
	return changed, nil
}

// controlData runs pg_controldata on dir and returns its "label: value"
// lines.
func (m *Manager) controlData(ctx context.Context, dir string) (map[string]string, error) {
	version, err := supervisor.DataVersion(dir)
	if err != nil {
		return nil, err
	}
	bin, err := m.opts.Postgres.BinDir(version)
	if err != nil {
		return nil, err
	}
	out, err := m.opts.Postgres.Command(ctx, filepath.Join(bin, "pg_controldata"), "-D", dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pg_controldata: %w: %s", err, bytes.TrimSpace(out))
	}
	values := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			values[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return values, nil
}

// quote makes s a postgresql.conf string.
func quote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `''`) + "'"
}

// sourcePosition connects to the source over the replication protocol, as
// the standby does (same conninfo, passfile and privilege), and returns its
// current WAL position from IDENTIFY_SYSTEM.
func (m *Manager) sourcePosition(ctx context.Context, sb *standby) (string, error) {
	name := sb.src.Name
	c := sb.conn.ForGo().With("dbname", "replication", "application_name", applicationName(name))
	if sb.src.Passfile != "" {
		c = c.With("passfile", sb.l.passfile)
	}
	cfg, err := pgconn.ParseConfig(c.String())
	if err != nil {
		return "", fmt.Errorf("source %s: conninfo: %w", name, err)
	}
	cfg.RuntimeParams["replication"] = "true"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("source %s: cannot connect for replication: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return "", fmt.Errorf("source %s: IDENTIFY_SYSTEM: %w", name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return "", fmt.Errorf("source %s: IDENTIFY_SYSTEM answered unexpectedly", name)
	}
	return string(res[0].Rows[0][2]), nil
}

// pollConn returns the connection to the standby that polls use (only the
// polling goroutine touches it), opening it when there is none.
func (m *Manager) pollConn(ctx context.Context, sb *standby) (*pgx.Conn, error) {
	sb.mu.Lock()
	db := sb.db
	sb.mu.Unlock()
	if db != nil && !db.IsClosed() {
		return db, nil
	}
	db, err := m.connect(ctx, sb)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	sb.db = db
	sb.mu.Unlock()
	return db, nil
}

// connect opens a connection to the standby over its private socket as a
// superuser: "postgres", or the source's bootstrap superuser if it has
// another name.
func (m *Manager) connect(ctx context.Context, sb *standby) (*pgx.Conn, error) {
	sb.mu.Lock()
	su := sb.superuser
	sb.mu.Unlock()
	if su == "" {
		su = "postgres"
	}
	open := func(user string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig("")
		if err != nil {
			return nil, err
		}
		cfg.Host, cfg.Port, cfg.User, cfg.Database = sb.l.sockets, port, user, "template1"
		// The source's superuser may have set role and database defaults
		// (ALTER ROLE … SET), replicated here; what the client sends wins
		// over them.
		for k, v := range map[string]string{"application_name": "draupnir", "search_path": "pg_catalog",
			"statement_timeout": "0", "lock_timeout": "0", "session_preload_libraries": "",
			"local_preload_libraries": "", "default_transaction_isolation": "read committed"} {
			cfg.RuntimeParams[k] = v
		}
		return pgx.ConnectConfig(ctx, cfg)
	}
	db, err := open(su)
	if isMissingRole(err) {
		if su, err = m.findSuperuser(ctx, sb); err == nil {
			m.log.Info("the source's superuser has another name", "source", sb.src.Name, "superuser", su)
			db, err = open(su)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("source %s: connecting to the standby: %w", sb.src.Name, err)
	}
	sb.mu.Lock()
	sb.superuser = su
	sb.mu.Unlock()
	return db, nil
}

func isMissingRole(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "28000"
}

// closeConns closes the poll connection.
func (sb *standby) closeConns() {
	sb.mu.Lock()
	db := sb.db
	sb.db = nil
	sb.mu.Unlock()
	if db != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		db.Close(ctx)
	}
}

// findSuperuser asks a throwaway snapshot of the standby, booted in
// single-user mode, for the name of the bootstrap superuser (oid 10): a
// standby cannot be asked itself without a role to log in as.
func (m *Manager) findSuperuser(ctx context.Context, sb *standby) (string, error) {
	probe := filepath.Join(m.opts.Dir, "."+sb.src.Name+".probe")
	vol := m.opts.Volumes
	if err := vol.Delete(probe); err != nil {
		return "", err
	}
	if err := vol.Snapshot(sb.l.data, probe, false); err != nil {
		return "", fmt.Errorf("snapshotting the standby: %w", err)
	}
	defer vol.Delete(probe)
	for _, f := range []string{"postmaster.pid", "standby.signal"} {
		os.Remove(filepath.Join(probe, f))
	}
	version, err := supervisor.DataVersion(probe)
	if err != nil {
		return "", err
	}
	bin, err := m.opts.Postgres.BinDir(version)
	if err != nil {
		return "", err
	}
	// Our configuration, not the source's; its standby settings are inert
	// without standby.signal.
	cmd := m.opts.Postgres.Command(ctx, filepath.Join(bin, "postgres"), "--single", "-D", probe,
		"-c", "config_file="+sb.l.conf, "-j", "template1")
	cmd.Dir = probe
	cmd.Stdin = strings.NewReader("SELECT rolname FROM pg_catalog.pg_authid WHERE oid OPERATOR(pg_catalog.=) '10'::pg_catalog.oid;\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("asking single-user postgres for the superuser: %w: %s", err, out)
	}
	_, rest, ok := bytes.Cut(out, []byte(`rolname = "`))
	name, _, ok2 := bytes.Cut(rest, []byte(`"`))
	if !ok || !ok2 || len(name) == 0 {
		return "", fmt.Errorf("no bootstrap superuser in single-user postgres's answer: %s", out)
	}
	return string(name), nil
}

// watch polls the standby until its postgres exits, or must be restarted,
// or ctx ends; it keeps the status up to date meanwhile.
func (m *Manager) watch(ctx context.Context, sb *standby, proc *supervisor.Process) error {
	t := time.NewTicker(m.opts.PollInterval)
	defer t.Stop()
	for {
		if err := m.poll(ctx, sb); err != nil {
			if errors.Is(err, errRestart) || errors.Is(err, errRebuild) {
				if serr := proc.Stop(ctx, supervisor.Fast, time.Minute); serr != nil {
					return serr
				}
				if errors.Is(err, errRebuild) {
					if derr := m.opts.Volumes.Delete(sb.l.data); derr != nil {
						return fmt.Errorf("%w; deleting it: %w", err, derr)
					}
				}
				return err
			}
			if ctx.Err() == nil && proc.Alive() {
				// The standby runs but cannot be read: say why.
				sb.set(func(s *Status) { s.LastError = clip(err.Error()) })
				m.log.Debug("standby poll failed", "source", sb.src.Name, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-proc.Done():
			return fmt.Errorf("source %s: the standby's postgres exited (see %s)", sb.src.Name, sb.l.log)
		case <-t.C:
		}
	}
}

var (
	// errRestart marks a poll that found the standby in need of a restart.
	errRestart = errors.New("the standby needs a restart")
	// errRebuild marks a poll that found the standby unable to go on: the
	// source no longer has the WAL it needs.
	errRebuild = errors.New("the standby needs a new base backup")
)

// poll reads the standby's state and lag into its status. The lag is the
// source's WAL position as its WAL sender last reported it to the standby
// (pg_stat_wal_receiver.latest_end_lsn, sent with every WAL message; until
// the first one, what the standby has received) minus the replay position:
// no extra connection to the source, and under load as current as the
// stream itself.
func (m *Manager) poll(ctx context.Context, sb *standby) error {
	db, err := m.pollConn(ctx, sb)
	if err != nil {
		return err
	}
	var (
		lag        *int64
		replayedAt *time.Time
		receiver   *string
		pause      string
		gone       bool
	)
	err = db.QueryRow(ctx, `SELECT pg_catalog.pg_wal_lsn_diff(GREATEST(r.latest_end_lsn, r.flushed_lsn), pg_catalog.pg_last_wal_replay_lsn())::bigint,
		pg_catalog.pg_last_xact_replay_timestamp(), r.status, pg_catalog.pg_get_wal_replay_pause_state()
		FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_stat_wal_receiver AS r ON true`).Scan(&lag, &replayedAt, &receiver, &pause)
	if err != nil {
		sb.closeConns()
		return err
	}
	if pause == "paused" {
		// The source raised a setting a hot standby must match (recovery
		// pauses then); a restart picks the new value up from pg_control.
		m.log.Warn("standby replay paused; restarting it with the source's new settings", "source", sb.src.Name)
		return fmt.Errorf("source %s: replay paused (the source raised max_connections or a like setting): %w", sb.src.Name, errRestart)
	}
	sb.set(func(s *Status) {
		if replayedAt != nil {
			s.ReplayedAt = *replayedAt
		}
		switch {
		case sb.conn == nil:
			// Archive only: there is no sender to compare with.
			s.State, s.LagBytes = Streaming, 0
		case receiver == nil || *receiver != "streaming":
			s.State = Disconnected
			gone = sb.src.RestoreCommand == "" && walGone(sb.l.log)
		case lag == nil:
			s.State = CatchingUp // streaming, but nothing replayed yet
		default:
			s.LagBytes = max(0, *lag)
			s.State = Streaming
			if s.LagBytes > m.opts.CatchUpBytes {
				s.State = CatchingUp
			}
		}
		s.LagSeconds = 0
		if (sb.conn == nil || s.LagBytes > 0 || s.State == Disconnected) && !s.ReplayedAt.IsZero() {
			s.LagSeconds = max(0, time.Since(s.ReplayedAt).Seconds())
		}
		s.LastError = ""
	})
	if gone {
		m.log.Error("the source removed WAL its standby still needed; making a new base backup (keep WAL on the source with wal_keep_size, or give a restore_command)", "source", sb.src.Name)
		return fmt.Errorf("source %s removed WAL its standby still needed (raise wal_keep_size on it, or give a restore_command): %w", sb.src.Name, errRebuild)
	}
	return nil
}

// walGone reports whether the standby's last attempt to stream failed
// because the source had removed the WAL it asked for: postgres then
// retries for ever in vain. The server log is the only place that says so.
func walGone(logFile string) bool {
	f, err := os.Open(logFile)
	if err != nil {
		return false
	}
	defer f.Close()
	const tailBytes = 16 << 10
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, max(0, fi.Size()-tailBytes), tailBytes))
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if strings.Contains(l, "could not receive data from WAL stream") {
			return strings.Contains(l, "has already been removed")
		}
		if strings.Contains(l, "started streaming WAL") || strings.Contains(l, "database system is ready") {
			return false
		}
	}
	return false
}
