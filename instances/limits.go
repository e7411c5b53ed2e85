package instances

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

// authDelay is how long a failed login to an instance waits before it is
// answered (auth_delay.milliseconds). Instance passwords are random and far
// too long to guess online anyway; the delay makes trying pointless rather
// than merely hopeless, and costs an honest typo half a second.
const authDelay = "500"

// hbaRules are the access rules of every instance. The superuser (and the
// service) come in through the private socket directory (0700, the postgres
// user's). Over TCP only the instance role logs in, with TLS and its
// password: every other role — the image keeps the source's — is refused
// before any password is asked for, so no source password opens an instance
// whatever it is. With no plain "host" line unencrypted TCP is refused too.
func hbaRules(role string) string {
	return "# Written by draupnir for every instance.\n" +
		"local all all trust\n" +
		"hostssl all " + pgx.Identifier{role}.Sanitize() + " all scram-sha-256\n"
}

// tempFileLimit is the temp_file_limit for instances with a disk limit of
// diskLimit bytes, or "" for none: half of it, so that one query's sort or
// hash spill cannot by itself use up what the instance may write.
func tempFileLimit(diskLimit int64) string {
	if diskLimit <= 0 {
		return ""
	}
	return strconv.FormatInt(min(diskLimit/2/1024, math.MaxInt32), 10) + "kB"
}

// settings returns the postgres settings of the instance in dataDir: the
// operator's, then the ones Draupnir manages, which win.
func (s *Service) settings(id int64, dataDir string) map[string]string {
	settings := map[string]string{}
	if v := tempFileLimit(s.opts.DiskLimit); v != "" {
		settings["temp_file_limit"] = v
	}
	for k, v := range s.opts.Settings {
		settings[k] = v
	}
	if s.hasAuthDelay(dataDir) {
		settings["shared_preload_libraries"] = "auth_delay"
		if _, ok := settings["auth_delay.milliseconds"]; !ok {
			settings["auth_delay.milliseconds"] = authDelay
		}
	}
	settings["hba_file"] = s.hba
	settings["ssl"] = "on"
	settings["ssl_cert_file"] = s.tls.certFile
	settings["ssl_key_file"] = s.tls.keyFile
	settings["cluster_name"] = "draupnir-" + strconv.FormatInt(id, 10)
	return settings
}

// hasAuthDelay reports whether the PostgreSQL version of dataDir has the
// auth_delay module. Without it instances still start, with a warning
// (logged once per version): the delay is a second line behind passwords
// nobody can guess, and refusing every instance of a version for want of a
// contrib package would be worse.
func (s *Service) hasAuthDelay(dataDir string) bool {
	major, err := supervisor.DataVersion(dataDir)
	if err != nil {
		return false // the start fails on this anyway, and says why
	}
	s.libMu.Lock()
	defer s.libMu.Unlock()
	if ok, known := s.authDelay[major]; known {
		return ok
	}
	bin, err := s.postgres.BinDir(major)
	if err != nil {
		return false
	}
	lib := pkgLibDir(bin)
	_, err = os.Stat(filepath.Join(lib, "auth_delay.so"))
	ok := err == nil
	if !ok {
		s.log.Warn("PostgreSQL has no auth_delay module: failed logins to instances are not slowed down; install the contrib package of this version",
			"version", major, "libdir", lib)
	}
	s.authDelay[major] = ok
	return ok
}

// pkgLibDir returns postgres's $libdir for the binaries in bin: what the
// version's pg_config says, else bin/../lib (the layout of Debian's and
// PGDG's packages).
func pkgLibDir(bin string) string {
	out, err := exec.Command(filepath.Join(bin, "pg_config"), "--pkglibdir").Output()
	if dir := string(bytes.TrimSpace(out)); err == nil && filepath.IsAbs(dir) {
		return dir
	}
	return filepath.Join(filepath.Dir(bin), "lib")
}

// settingsCurrent reports whether the postmaster running in dataDir was
// started with settings; one started by an older Draupnir, without the
// access rules or limits of this one, is restarted at adoption.
func settingsCurrent(dataDir string, settings map[string]string) bool {
	// postgres writes its command line there, each argument double-quoted.
	opts, err := os.ReadFile(filepath.Join(dataDir, "postmaster.opts"))
	if err != nil {
		return false
	}
	for k, v := range settings {
		if !bytes.Contains(opts, []byte(`"-c" "`+k+"="+v+`"`)) {
			return false
		}
	}
	return true
}

// enableQuotas turns btrfs quotas on for dir's filesystem when instances
// have a disk limit: simple quotas where the kernel has them (≥ 6.7), which
// cost next to nothing, else full qgroups. Quotas already on stay in the
// mode they are in.
func enableQuotas(vol volumes, dir string, limit int64) (btrfs.QuotaMode, error) {
	mode, err := vol.Quota(dir)
	if err != nil || limit == 0 {
		return mode, err
	}
	want := btrfs.QuotaFull
	if vol.SimpleQuotaSupported() {
		want = btrfs.QuotaSimple
	}
	mode, err = vol.EnableQuota(dir, want)
	if err != nil {
		return "", fmt.Errorf("turning on btrfs quotas for the per-instance disk limit (instances.disk_limit; 0 turns it off): %w", err)
	}
	return mode, nil
}

// walLimit is the limit of an instance's WAL subvolume when its data may
// take diskLimit bytes. While checkpoints succeed, postgres keeps WAL near
// max_wal_size (256MB in images); the limit matters only when they cannot,
// and keeps the instance's total bounded then.
func walLimit(diskLimit int64) int64 {
	if diskLimit <= 0 {
		return 0
	}
	return max(diskLimit/4, 1<<30)
}

// separateWAL makes the pg_wal of instance id a subvolume of its own, so
// that its data reaching the disk limit makes writes fail with an error
// instead of a PANIC: postgres cannot go on when it cannot write WAL, and
// crash recovery at the limit could not finish either.
func (s *Service) separateWAL(id int64) error {
	if s.quota == btrfs.QuotaOff || s.opts.DiskLimit == 0 {
		return nil
	}
	err := s.volumes.ConvertToSubvolume(filepath.Join(s.dir(id), "pg_wal"))
	if errors.Is(err, unix.ENOTDIR) {
		s.log.Warn("the image's pg_wal is not a directory; the instance's WAL counts against its disk limit", "instance", id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("giving instance %d's WAL a subvolume of its own: %w", id, err)
	}
	return nil
}

// limitDisk applies the configured disk limit to the snapshot of instance
// id, and the WAL limit to its WAL subvolume if it has one; with no limit
// configured it lifts any earlier ones.
func (s *Service) limitDisk(id int64) error {
	if s.quota == btrfs.QuotaOff {
		return nil
	}
	if err := s.volumes.LimitExclusive(s.dir(id), s.opts.DiskLimit); err != nil {
		return fmt.Errorf("limiting the disk use of instance %d: %w", id, err)
	}
	wal := filepath.Join(s.dir(id), "pg_wal")
	if ok, _ := s.volumes.IsSubvolume(wal); ok {
		if err := s.volumes.LimitExclusive(wal, walLimit(s.opts.DiskLimit)); err != nil {
			return fmt.Errorf("limiting the WAL of instance %d: %w", id, err)
		}
	}
	return nil
}

// deleteSnapshot deletes the instance snapshot at dir. Its limit goes
// first: taking the WAL subvolume out of a snapshot at its limit would be
// refused.
func (s *Service) deleteSnapshot(dir string) error {
	if s.quota != btrfs.QuotaOff {
		if ok, _ := s.volumes.IsSubvolume(dir); ok {
			if err := s.volumes.LimitExclusive(dir, 0); err != nil {
				s.log.Warn("could not lift the disk limit of an instance snapshot being deleted", "path", dir, "err", err)
			}
		}
	}
	return s.volumes.Delete(dir)
}

// removeStaleQgroups drops the qgroups of deleted snapshots, which some
// kernels keep; failing to is only worth a warning.
func (s *Service) removeStaleQgroups() {
	if s.quota == btrfs.QuotaOff {
		return
	}
	if _, err := s.volumes.RemoveStaleQgroups(s.opts.Dir); err != nil {
		s.log.Warn("could not remove the qgroups of deleted instances", "err", err)
	}
}

// pinLimits undoes what the source may have planted to lift temp_file_limit
// in an instance: per-database or per-role values (they override the
// command line) and, from PostgreSQL 15, SET privileges on the parameter.
// Images finalised by any Draupnir version get the same treatment. conn is
// a superuser session. It reports whether it found anything to undo.
func pinLimits(ctx context.Context, conn *pgx.Conn) (bool, error) {
	rows, err := conn.Query(ctx, `SELECT coalesce(d.datname, ''), coalesce(r.rolname, ''), s.setdatabase OPERATOR(pg_catalog.<>) '0'::pg_catalog.oid, s.setrole OPERATOR(pg_catalog.<>) '0'::pg_catalog.oid
		FROM pg_catalog.pg_db_role_setting s
		LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase
		LEFT JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) s.setrole
		WHERE EXISTS (SELECT FROM pg_catalog.unnest(s.setconfig) c
			WHERE pg_catalog.lower(pg_catalog.split_part(c, '='::pg_catalog.text, 1)) OPERATOR(pg_catalog.=) 'temp_file_limit'::pg_catalog.text)`)
	if err != nil {
		return false, fmt.Errorf("reading per-database and per-role settings: %w", err)
	}
	var stmts []string
	for rows.Next() {
		var db, role string
		var hasDB, hasRole bool
		if err := rows.Scan(&db, &role, &hasDB, &hasRole); err != nil {
			return false, err
		}
		var target string
		switch {
		case hasRole && hasDB:
			target = "ROLE " + pgx.Identifier{role}.Sanitize() + " IN DATABASE " + pgx.Identifier{db}.Sanitize()
		case hasRole:
			target = "ROLE " + pgx.Identifier{role}.Sanitize()
		case hasDB:
			target = "DATABASE " + pgx.Identifier{db}.Sanitize()
		default:
			target = "ROLE ALL"
		}
		stmts = append(stmts, "ALTER "+target+" RESET temp_file_limit")
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	var grantees []string
	err = conn.QueryRow(ctx, `SELECT coalesce(pg_catalog.array_agg(DISTINCT
			CASE WHEN a.grantee OPERATOR(pg_catalog.=) '0'::pg_catalog.oid THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname::pg_catalog.text) END), '{}')
		FROM pg_catalog.pg_parameter_acl p,
			LATERAL pg_catalog.aclexplode(p.paracl) a
			LEFT JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) a.grantee
		WHERE p.parname OPERATOR(pg_catalog.=) 'temp_file_limit'::pg_catalog.text`).Scan(&grantees)
	var pgErr interface{ SQLState() string }
	switch {
	case errors.As(err, &pgErr) && pgErr.SQLState() == "42P01":
		// Before PostgreSQL 15 parameters have no privileges.
	case err != nil:
		return false, fmt.Errorf("reading the privileges on temp_file_limit: %w", err)
	case len(grantees) > 0:
		stmts = append(stmts, "REVOKE ALL ON PARAMETER temp_file_limit FROM "+strings.Join(grantees, ", ")+" CASCADE")
	}
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return false, fmt.Errorf("pinning temp_file_limit (%s): %w", stmt, err)
		}
	}
	return len(stmts) > 0, nil
}
