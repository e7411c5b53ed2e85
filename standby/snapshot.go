package standby

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// SnapshotInto makes dst (must not exist; its parent must) a writable btrfs
// snapshot of the standby's data directory, crash-consistent, ready for
// finalise to boot as a primary (finalise removes standby.signal and
// recovery.signal and replaces the configuration).
//
// With a conninfo it first reads the source's current WAL position and
// waits (at most CatchUpTimeout) until the standby has replayed up to it, so
// the snapshot holds every transaction the source had committed when
// SnapshotInto was called; an unreachable source fails it rather than give
// a stale image. In archive-only mode the snapshot is as fresh as the
// archive. Unless NoRestartpoint, a CHECKPOINT (a restartpoint on a
// standby) comes next: it moves the point crash recovery starts from up to
// now and writes the dirty buffers out ahead of the snapshot.
//
// The snapshot itself is one ioctl on one subvolume that holds the data
// files and pg_wal together; btrfs makes it atomically (after flushing the
// subvolume's dirty pages), so it shows the files exactly as a power cut at
// that instant would leave them. PostgreSQL's crash recovery is made for
// that state: it replays pg_wal from the last restartpoint to the end of the
// WAL the snapshot holds. Replay is not paused for it; the standby goes on
// as if nothing happened.
func (m *Manager) SnapshotInto(ctx context.Context, name, dst string) error {
	m.mu.Lock()
	sb, ok := m.standbys[name]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("source %s is not followed: no standby", name)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot of the standby of source %s: %s already exists", name, dst)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("snapshot of the standby of source %s: %w", name, err)
	}
	if fi, err := os.Stat(filepath.Dir(dst)); err != nil || !fi.IsDir() {
		return fmt.Errorf("snapshot of the standby of source %s: %s is not a directory", name, filepath.Dir(dst))
	}
	proc := sb.process()
	if proc == nil || !proc.Alive() {
		st, _ := m.Status(name)
		msg := ""
		if st.LastError != "" {
			msg = ": " + st.LastError
		}
		return fmt.Errorf("the standby of source %s is not running (%s)%s", name, st.State, msg)
	}
	// A connection of its own: the polls' one belongs to their goroutine.
	db, err := m.connect(ctx, sb)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	begin := time.Now()
	if sb.conn != nil {
		target, err := m.sourcePosition(ctx, sb)
		if err != nil {
			return err
		}
		if err := m.waitReplay(ctx, sb, db, target); err != nil {
			return err
		}
	}
	caughtUp := time.Since(begin)
	if !m.opts.NoRestartpoint {
		if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("source %s: restartpoint on the standby: %w", name, err)
		}
	}
	start := time.Now()
	restartpoint := start.Sub(begin) - caughtUp
	if err := m.opts.Volumes.Snapshot(sb.l.data, dst, false); err != nil {
		return fmt.Errorf("snapshot of the standby of source %s: %w", name, err)
	}
	// The running standby's lock file and signal would only get in the way
	// of whoever boots the copy.
	for _, f := range []string{"postmaster.pid", "postmaster.opts", "standby.signal"} {
		if err := os.Remove(filepath.Join(dst, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.opts.Volumes.Delete(dst)
			return fmt.Errorf("snapshot of the standby of source %s: %w", name, err)
		}
	}
	m.log.Info("standby snapshotted", "source", name, "dst", dst, "catch_up", caughtUp,
		"restartpoint", restartpoint, "snapshot", time.Since(start))
	return nil
}

// waitReplay waits until the standby has replayed up to lsn.
func (m *Manager) waitReplay(ctx context.Context, sb *standby, db *pgx.Conn, lsn string) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.CatchUpTimeout)
	defer cancel()
	delay := time.Millisecond
	var replayed string
	for {
		var done bool
		err := db.QueryRow(ctx, `SELECT pg_catalog.pg_last_wal_replay_lsn() OPERATOR(pg_catalog.>=) $1::pg_catalog.text::pg_catalog.pg_lsn,
			pg_catalog.pg_last_wal_replay_lsn()::pg_catalog.text`, lsn).Scan(&done, &replayed)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("source %s: reading the standby's replay position: %w", sb.src.Name, err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the standby of source %s did not catch up with it within %v (replayed up to %s, the source was at %s): %w",
				sb.src.Name, m.opts.CatchUpTimeout, replayed, lsn, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}
