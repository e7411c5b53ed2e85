package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// InitDB creates a cluster of PostgreSQL major in dataDir (which must be
// missing or empty) with superuser postgres, UTF8 and the C locale. Local
// (unix socket) connections are trusted, TCP ones rejected outright: clusters
// made here never listen on TCP, and must not become reachable by accident.
func (s *Supervisor) InitDB(ctx context.Context, major, dataDir string) error {
	bin, err := s.BinDir(major)
	if err != nil {
		return fmt.Errorf("initdb %s: %w", dataDir, err)
	}
	if err := s.mkdirOwned(dataDir); err != nil {
		return fmt.Errorf("initdb %s: %w", dataDir, err)
	}
	// An existing empty directory may belong to root; initdb needs it to be ours.
	if err := os.Chown(dataDir, s.uid, s.gid); err != nil {
		return fmt.Errorf("initdb %s: %w", dataDir, err)
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return fmt.Errorf("initdb %s: %w", dataDir, err)
	}
	args := []string{"-D", dataDir, "-U", "postgres", "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=reject"}
	if s.NoSync {
		args = append(args, "--no-sync")
	}
	cmd := s.command(ctx, filepath.Join(bin, "initdb"), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", dataDir, err, bytes.TrimSpace(out))
	}
	s.log.Info("cluster initialised", "data_dir", dataDir, "version", major)
	return nil
}

// PSQL runs script with psql from bin dir bin as the OS user against the
// server at socketDir and port, stopping at the first error, and returns
// psql's combined output. On failure the error is psql's own output (for an
// anonymisation script, what its author needs to see), prefixed with what ran.
// The script may switch databases with \c.
func (s *Supervisor) PSQL(ctx context.Context, bin, socketDir string, port int, user, db, script string) (string, error) {
	cmd := s.command(ctx, filepath.Join(bin, "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", socketDir,
		"-p", strconv.Itoa(port), "-U", user, "-d", db, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			msg = "no output"
		}
		return string(out), fmt.Errorf("psql (database %s as %s): %w: %s", db, user, err, msg)
	}
	return string(out), nil
}
