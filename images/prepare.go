package images

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/supervisor"
)

// carriedSettings are the source server's settings worth keeping: they shape
// how data looks to clients, not how the server runs.
var carriedSettings = regexp.MustCompile(`^\s*(lc_messages|lc_monetary|lc_numeric|lc_time|datestyle|timezone|intervalstyle|default_text_search_config|extra_float_digits)\s*=`)

// writePrivateConfig replaces the backup's configuration with one that is
// safe to boot: no TCP, no archiving or replication, no preloaded libraries,
// trust only on the private unix socket. Instances get their port, sockets
// and access rules on the command line when they start.
//
// It runs as root on a tree from an upload, so it never follows a link: files
// are read with O_NOFOLLOW, written under a temporary name and renamed over
// the old one (which replaces a symbolic or hard link instead of writing
// through it), and removed with unlinkat, all relative to dir.
func writePrivateConfig(dir string) error {
	d, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the data directory: %w", err)
	}
	defer unix.Close(d)
	carried, err := carriedLines(d, "postgresql.conf")
	if err != nil {
		return err
	}
	conf := `# Written by draupnir when the image was finalised. The source server's
# settings were dropped (except locale and formatting ones below); instances
# get port, sockets, TLS and access rules on postgres's command line.
listen_addresses = ''
max_connections = 50
shared_buffers = 16MB
dynamic_shared_memory_type = posix
password_encryption = scram-sha-256
# Instances are throwaway copies: durability against an OS crash is not
# worth an fsync per commit. Commits still reach the kernel before they
# return (synchronous_commit stays on), so a killed postgres loses nothing.
fsync = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
# The source's subscriptions would connect to its publisher (production)
# as soon as the backup boots; finalise drops them.
max_logical_replication_workers = 0
archive_mode = off
max_wal_size = 256MB
min_wal_size = 32MB
hot_standby = off
log_line_prefix = '%m [%p] '
` + strings.Join(carried, "\n") + "\n"
	files := map[string]string{
		"postgresql.conf":      conf,
		"postgresql.auto.conf": "# Emptied by draupnir: ALTER SYSTEM settings of the source server do not apply.\n",
		"pg_hba.conf":          "# Finalise boots with this file: the unix socket only, in a private 0700 directory.\nlocal all all trust\n",
		"pg_ident.conf":        "",
	}
	for name, content := range files {
		if err := replaceFile(d, name, content); err != nil {
			return err
		}
	}
	// A backup of a standby, or a half-configured one, must not boot as a
	// replica or a recovery target.
	for _, name := range []string{"standby.signal", "recovery.signal", "recovery.conf", "postmaster.pid", "postmaster.opts"} {
		if err := unix.Unlinkat(d, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return configError(name, "removing", err)
		}
	}
	return nil
}

// maxConfRead bounds how much of the source's postgresql.conf is searched
// for settings to carry: a real one is a few dozen KiB.
const maxConfRead = 16 << 20

// carriedLines returns the lines of file name in directory d that set a
// carried setting. Anything but a regular file (missing, a link, a fifo)
// carries nothing; it is replaced all the same.
func carriedLines(d int, name string) ([]string, error) {
	// O_NONBLOCK: opening a fifo must not hang.
	fd, err := unix.Openat(d, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) {
		return nil, nil
	}
	if err != nil {
		return nil, configError(name, "reading", err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, nil
	}
	var carried []string
	sc := bufio.NewScanner(io.LimitReader(f, maxConfRead))
	for sc.Scan() {
		if carriedSettings.MatchString(sc.Text()) {
			carried = append(carried, strings.TrimSpace(sc.Text()))
		}
	}
	return carried, nil
}

// replaceFile makes name in directory d a new regular file (0600) holding
// content, whatever name was before.
func replaceFile(d int, name, content string) error {
	tmp := ".draupnir-" + name + ".tmp"
	if err := unix.Unlinkat(d, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return configError(tmp, "removing", err)
	}
	fd, err := unix.Openat(d, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return configError(name, "writing", err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(d, tmp, d, name)
	}
	if err != nil {
		unix.Unlinkat(d, tmp, 0)
		return configError(name, "writing", err)
	}
	return nil
}

// configError reports a failure to write or remove a configuration file; a
// directory in the way is the upload's fault.
func configError(name, op string, err error) error {
	if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		return unprocessable("the backup's %s is a directory, where draupnir must write or remove a file", name)
	}
	return fmt.Errorf("%s %s: %w", op, name, err)
}

func connect(ctx context.Context, sockDir, user, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = sockDir
	cfg.Port = privatePort
	cfg.User = user
	cfg.Database = db
	// Settings sent at connection start take precedence over the source's
	// ALTER ROLE / ALTER DATABASE … SET, which could otherwise put a schema
	// of theirs before pg_catalog, load a library or break the quoting of
	// the statements finalise writes.
	cfg.RuntimeParams = map[string]string{
		"application_name":                    "draupnir",
		"search_path":                         "pg_catalog, pg_temp",
		"session_preload_libraries":           "",
		"standard_conforming_strings":         "on",
		"default_transaction_read_only":       "off",
		"statement_timeout":                   "0",
		"lock_timeout":                        "0",
		"idle_in_transaction_session_timeout": "0",
		"session_replication_role":            "origin",
		"check_function_bodies":               "on",
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// findSuperuser returns the name of the backup's bootstrap superuser. It is
// "postgres" almost always; otherwise postgres is restarted in single-user
// mode to ask the catalog (the only way in without knowing a role's name).
func (s *Service) findSuperuser(ctx context.Context, sockDir, bin, dir string, proc **supervisor.Process, spec supervisor.Spec) (string, error) {
	conn, err := connect(ctx, sockDir, "postgres", "template1")
	if err == nil {
		defer conn.Close(ctx)
		var super bool
		if err := conn.QueryRow(ctx, "SELECT rolsuper FROM pg_catalog.pg_authid WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER").Scan(&super); err != nil {
			return "", err
		}
		if super {
			return "postgres", nil
		}
	} else if !isMissingRole(err) {
		return "", fmt.Errorf("connecting to the private postgres: %w", err)
	}
	if err := (*proc).Stop(ctx, supervisor.Fast, 5*time.Minute); err != nil {
		return "", err
	}
	*proc = nil
	// Through the supervisor: the server's environment may hold secrets and
	// must not reach a postgres booted from an uploaded backup.
	cmd := s.postgres.Command(ctx, filepath.Join(bin, "postgres"), "--single", "-D", dir, "-j", "template1")
	// Qualified and exactly typed: single-user mode has the default
	// search_path, where an operator the source planted would be found.
	cmd.Stdin = strings.NewReader("SELECT rolname FROM pg_catalog.pg_authid WHERE oid OPERATOR(pg_catalog.=) '10'::pg_catalog.oid;\n")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("asking single-user postgres for the superuser: %w: %s", err, out)
	}
	m := regexp.MustCompile(`rolname = "([^"]+)"`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("could not find the bootstrap superuser in: %s", out)
	}
	p, err := s.postgres.Start(ctx, spec)
	if err != nil {
		return "", unprocessable("the backup's postgres did not start again: %v", err)
	}
	*proc = p
	return string(m[1]), nil
}

func isMissingRole(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "28000"
}

type databases struct {
	all     []string // every database that accepts connections, templates excepted
	first   string   // where the anonymisation script starts
	largest string   // the largest non-system database: where instances land users
}

func listDatabases(ctx context.Context, sockDir, superuser string) (databases, error) {
	var d databases
	conn, err := connect(ctx, sockDir, superuser, "template1")
	if err != nil {
		return d, fmt.Errorf("connecting to the private postgres: %w", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database
		WHERE datallowconn AND NOT datistemplate
		ORDER BY datname = 'postgres' DESC, pg_database_size(oid) DESC, datname`)
	if err != nil {
		return d, fmt.Errorf("listing databases: %w", err)
	}
	d.all, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return d, fmt.Errorf("listing databases: %w", err)
	}
	d.first, d.largest = "template1", "postgres"
	if len(d.all) > 0 {
		d.first = d.all[0]
		d.largest = d.all[0]
		if d.all[0] == "postgres" && len(d.all) > 1 {
			d.largest = d.all[1]
		}
	}
	return d, nil
}
