package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// StatePort names the state cluster's socket; it never listens on TCP.
const StatePort = 5432

// StateDatabase is the database Draupnir keeps its tables in.
const StateDatabase = "draupnir"

// StateCluster makes sure the embedded state cluster in dataDir runs and
// holds the draupnir database: it initialises the cluster (newest installed
// PostgreSQL) if dataDir has none, adopts the postmaster if one already runs
// (Draupnir restarted), and otherwise starts it with its socket in socketDir and
// no TCP listener. It returns a pgx connection string for the draupnir
// database, and the process so the caller can stop it on shutdown (or leave it
// running across a restart).
func (s *Supervisor) StateCluster(ctx context.Context, dataDir, socketDir string) (connString string, p *Process, err error) {
	if _, err := DataVersion(dataDir); err != nil {
		if ents, rerr := os.ReadDir(dataDir); rerr == nil && len(ents) > 0 {
			return "", nil, fmt.Errorf("state cluster: %s is neither empty nor a PostgreSQL data directory: %w", dataDir, err)
		}
		major, err := s.NewestMajor()
		if err != nil {
			return "", nil, fmt.Errorf("state cluster: %w", err)
		}
		if err := s.InitDB(ctx, major, dataDir); err != nil {
			return "", nil, fmt.Errorf("state cluster: %w", err)
		}
	}
	p, err = s.Adopt(dataDir)
	if errors.Is(err, ErrNotRunning) {
		settings := map[string]string{
			"shared_buffers":  "16MB",
			"max_connections": "50",
			"log_line_prefix": "%m [%p] ",
		}
		if s.NoSync {
			settings["fsync"] = "off"
		}
		p, err = s.Start(ctx, Spec{
			DataDir:   dataDir,
			SocketDir: socketDir,
			Port:      StatePort,
			Settings:  settings,
			LogFile:   filepath.Join(dataDir, "draupnir-state.log"),
		})
	}
	if err != nil {
		return "", nil, fmt.Errorf("state cluster: %w", err)
	}
	// An adopted cluster may have been started with another socket directory.
	conn := func(db string) string {
		return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", p.SocketDir(), p.Port(), db)
	}
	if err := createDatabase(ctx, conn("postgres"), StateDatabase); err != nil {
		return "", nil, fmt.Errorf("state cluster: %w", err)
	}
	return conn(StateDatabase), p, nil
}

// createDatabase creates db unless it exists.
func createDatabase(ctx context.Context, connString, db string) error {
	c, err := pgx.Connect(ctx, connString)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", db, err)
	}
	if exists {
		return nil
	}
	_, err = c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: someone else was quicker
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}
