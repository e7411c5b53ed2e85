// Package statedb opens the database Draupnir keeps its own tables in: the
// PostgreSQL server at database_url or, without one, the embedded state
// cluster in the data path, which it starts and, while watched, restarts
// whenever its postmaster exits. The schema is brought up to date before
// the connection pool is handed out.
package statedb

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir/migrations"
	"github.com/draupnir-db/draupnir/supervisor"
)

// Options says which state database to open.
type Options struct {
	// URL is database_url; empty means the embedded cluster.
	URL string
	// Supervisor runs the embedded cluster, in DataDir with its socket in
	// SocketDir.
	Supervisor *supervisor.Supervisor
	DataDir    string
	SocketDir  string
	Log        *slog.Logger
}

// DB is the open state database.
type DB struct {
	opts    Options
	pool    *pgxpool.Pool
	cluster *supervisor.Process // the embedded cluster; nil with a URL
	// stopWatch ends the watch and waits for it; nil when not watching.
	stopWatch func()
}

// Open brings the embedded cluster up when opts.URL is empty (adopting one
// left running by an earlier server), connects, and applies the migrations.
func Open(ctx context.Context, opts Options) (*DB, error) {
	db := &DB{opts: opts}
	url := opts.URL
	if url == "" {
		var err error
		url, db.cluster, err = opts.Supervisor.StateCluster(ctx, opts.DataDir, opts.SocketDir)
		if err != nil {
			return nil, err
		}
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("database_url: %w", err)
	}
	pcfg.MaxConns = 16
	db.pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		db.Close(ctx)
		return nil, fmt.Errorf("connecting to the state database: %w", err)
	}
	applied, err := migrations.Apply(ctx, db.pool)
	if err != nil {
		db.Close(ctx)
		return nil, err
	}
	if len(applied) > 0 {
		opts.Log.Info("state database migrated", "applied", applied)
	}
	return db, nil
}

// Pool is the connection pool to the state database. It stays the same
// across restarts of the embedded cluster.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// restartBackoff spaces out attempts to bring the embedded cluster back;
// the last step repeats until it works or the watch ends.
var restartBackoff = [...]time.Duration{0, 500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second}

// Watch restarts the embedded cluster whenever its postmaster exits
// (stopped by hand, killed by the OOM killer, crashed on a full disk), so
// that the service recovers by itself; meanwhile queries fail and the API
// answers 503. The watch lasts until ctx ends or Close; call it at most once.
// With a database_url there is nothing to watch.
func (db *DB) Watch(ctx context.Context) {
	if db.cluster == nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	db.stopWatch = func() {
		cancel()
		<-done
	}
	log := db.opts.Log
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-db.cluster.Done():
			}
			log.Error("the embedded state cluster stopped; restarting it", "data_dir", db.opts.DataDir)
			for attempt := 0; ; attempt++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(restartBackoff[min(attempt, len(restartBackoff)-1)]):
				}
				_, p, err := db.opts.Supervisor.StateCluster(ctx, db.opts.DataDir, db.opts.SocketDir)
				if err != nil {
					log.Error("could not restart the state cluster; retrying", "attempt", attempt+1, "err", err)
					continue
				}
				db.cluster = p
				// Pooled connections went down with the old postmaster:
				// drop them now rather than fail one request on each.
				db.pool.Reset()
				log.Info("the embedded state cluster is back", "pid", p.PID())
				break
			}
		}
	}()
}

// Close ends the watch, closes the pool and stops the embedded cluster.
func (db *DB) Close(ctx context.Context) {
	if db.stopWatch != nil {
		db.stopWatch()
		db.stopWatch = nil
	}
	if db.pool != nil {
		db.pool.Close()
	}
	if db.cluster != nil {
		if err := db.cluster.Stop(ctx, supervisor.Fast, 30*time.Second); err != nil {
			db.opts.Log.Error("stopping the state cluster", "err", err)
		}
	}
}
