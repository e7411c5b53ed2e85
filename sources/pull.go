package sources

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
)

// pull streams a base backup of c into image id's upload: pg_basebackup
// runs as the postgres OS user and writes one tar stream (the data and,
// with -X fetch, the WAL it needs) to its stdout, which the upload extracts
// as it arrives — the same hardened extraction as a streaming upload, with
// no tarball on disk.
func (s *Service) pull(ctx context.Context, c config.Source, id int64) (err error) {
	major, err := s.opts.Postgres.NewestMajor()
	if err != nil {
		return err
	}
	bin, err := s.opts.Postgres.BinDir(major)
	if err != nil {
		return err
	}
	u, err := s.opts.Images.OpenUpload(ctx, upload, id)
	if err != nil {
		return err
	}
	defer u.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := s.opts.Postgres.Command(ctx, filepath.Join(bin, "pg_basebackup"),
		"--dbname", c.Conninfo, "--pgdata", "-", "--format", "tar", "--wal-method", "fetch",
		"--checkpoint", "fast", "--no-password", "--label", "draupnir refresh of "+c.Name)
	// A source that does not answer fails the refresh rather than hanging it.
	cmd.Env = append(cmd.Env, "PGCONNECT_TIMEOUT=15", "PGAPPNAME=draupnir")
	if c.Passfile != "" {
		pass, cleanup, err := s.privatePassfile(c.Passfile)
		if err != nil {
			return fmt.Errorf("source %q: %w", c.Name, err)
		}
		defer cleanup()
		cmd.Env = append(cmd.Env, "PGPASSFILE="+pass)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 64 << 10}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("source %q: starting pg_basebackup: %w", c.Name, err)
	}
	sum, xerr := u.Extract(ctx, out)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	killed := false
	if xerr != nil {
		// pg_basebackup may have failed first, ending the stream early:
		// give it a moment to say so. Otherwise the stream was refused,
		// and pg_basebackup must not stay blocked on its pipe.
		select {
		case werr = <-waited:
		case <-time.After(2 * time.Second):
			killed = true
			cancel()
			werr = <-waited
		}
	} else {
		werr = <-waited
	}
	if werr != nil && !killed {
		return backupError(c, stderr.String(), werr)
	}
	if xerr != nil {
		return fmt.Errorf("source %q: the backup stream could not be extracted: %w", c.Name, xerr)
	}
	s.log.Info("base backup streamed", "source", c.Name, "image", id, "bytes", sum.Bytes, "files", sum.Files, "duration", sum.Duration)
	return nil
}

// backupError turns pg_basebackup's failure into a message that names the
// source, says what is likely wrong and quotes what pg_basebackup said,
// with any password in it masked.
func backupError(c config.Source, stderr string, err error) error {
	said := strings.TrimSpace(stderr)
	if cfg, perr := pgconn.ParseConfig(c.Conninfo); perr == nil && cfg.Password != "" {
		said = strings.ReplaceAll(said, cfg.Password, "xxxxx")
	}
	if said == "" {
		said = err.Error()
	}
	// The source's server writes part of this: no terminal escapes from it
	// into a CLI user's terminal.
	said = strings.Map(func(r rune) rune {
		if r != '\n' && unicode.IsControl(r) {
			return '?'
		}
		return r
	}, said)
	low := strings.ToLower(said)
	var what string
	switch {
	case strings.Contains(low, "can only write single tablespace"):
		what = "it has tablespaces besides pg_default and pg_global, which a refresh cannot take (pg_basebackup streams one tablespace)"
	case strings.Contains(low, "replication role") || strings.Contains(low, "permission denied to start wal sender") ||
		strings.Contains(low, "must be superuser or replication"):
		what = "its role lacks the REPLICATION attribute (ALTER ROLE … REPLICATION on the source)"
	case strings.Contains(low, "no pg_hba.conf entry for replication"):
		what = "its pg_hba.conf has no replication line for the server (docs/operations.md)"
	case strings.Contains(low, "password authentication failed") || strings.Contains(low, "no password supplied") ||
		strings.Contains(low, "password is required"):
		what = "authentication failed (check passfile and the role's password)"
	case strings.Contains(low, "invalid connection option") || strings.Contains(low, "missing \"=\"") ||
		strings.Contains(low, "invalid uri") || strings.Contains(low, "unterminated quoted string") ||
		strings.Contains(low, "invalid integer value") || strings.Contains(low, "invalid port"):
		what = "its conninfo is not valid"
	case strings.Contains(low, "connection refused") || strings.Contains(low, "could not connect") ||
		strings.Contains(low, "timeout expired") || strings.Contains(low, "could not translate host name") ||
		strings.Contains(low, "no route to host") || strings.Contains(low, "network is unreachable") ||
		strings.Contains(low, "no such file or directory"):
		what = "it is unreachable"
	default:
		what = "the base backup failed"
	}
	return draupnir.Errorf(draupnir.KindUnprocessable, "source %q: %s; pg_basebackup said: %s", c.Name, what, lastLines(said, 5))
}

// lastLines returns the last n lines of s, joined with " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// privatePassfile copies passfile for the postgres OS user, who runs
// pg_basebackup: a 0600 file of its own in a 0700 directory of its own
// under the run directory, removed when the refresh ends. The original
// stays root's.
func (s *Service) privatePassfile(passfile string) (string, func(), error) {
	data, err := os.ReadFile(passfile)
	if err != nil {
		return "", nil, fmt.Errorf("reading its passfile: %w", err)
	}
	dir, err := os.MkdirTemp(s.opts.RunDir, "source-")
	if err != nil {
		return "", nil, fmt.Errorf("a directory for its passfile: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	path := filepath.Join(dir, "pgpass")
	uid, gid := s.opts.Postgres.UID(), s.opts.Postgres.GID()
	err = errors.Join(os.WriteFile(path, data, 0o600), os.Chmod(path, 0o600), os.Chown(path, uid, gid), os.Chown(dir, uid, gid))
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("copying its passfile: %w", err)
	}
	return path, cleanup, nil
}

// limitedWriter keeps the first n bytes written to it and drops the rest.
type limitedWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// follow makes image id's upload a snapshot of c's standby.
func (s *Service) follow(ctx context.Context, c config.Source, id int64) error {
	if s.opts.Follower == nil {
		return draupnir.Errorf(draupnir.KindUnprocessable, "source %q: follow mode is not available in this server", c.Name)
	}
	return s.opts.Images.FillUpload(ctx, upload, id, func(ctx context.Context, dst string) error {
		if err := s.opts.Follower.SnapshotInto(ctx, c.Name, dst); err != nil {
			return fmt.Errorf("source %q: snapshotting its standby: %w", c.Name, err)
		}
		return nil
	})
}
