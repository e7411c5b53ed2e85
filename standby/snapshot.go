package standby

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
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
// as if nothing happened. The WAL before the redo point is then trimmed
// from the copy (see trimWAL), and a copy with tablespaces is refused.
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
	// The catalog, not only pg_tblspc: a tablespace inside the source's
	// data directory (allow_in_place_tablespaces) is left out of a tar
	// base backup altogether, so the standby may lack its directory and
	// its data while the catalog names it.
	// Plain column reads, filtered here: the standby's catalog is the
	// source's, and a function or aggregate it planted in pg_catalog (an
	// array_agg(text), say) would run as this superuser session.
	var spaces []string
	rows, err := db.Query(ctx, `SELECT spcname FROM pg_catalog.pg_tablespace`)
	if err == nil {
		var names []string
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		for _, n := range names {
			if n != "pg_default" && n != "pg_global" {
				spaces = append(spaces, n)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("source %s: reading the standby's tablespaces: %w", name, err)
	}
	if len(spaces) > 0 {
		slices.Sort(spaces)
		return fmt.Errorf("source %s: the source uses tablespaces (%s), which follow mode does not support", name, strings.Join(spaces, ", "))
	}
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
	// A tablespace created on the source since the base backup.
	if err := noTablespaces(dst); err != nil {
		m.opts.Volumes.Delete(dst)
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
	if err := m.trimWAL(ctx, dst); err != nil {
		// Only disk is at stake: the copy is whole without the trim.
		m.log.Warn("could not trim the snapshot's WAL", "source", name, "err", err)
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

// trimWAL drops from a fresh snapshot the WAL that its crash recovery will
// not read: the segments before the one holding the redo point of its last
// restartpoint, and in that one the pages between the first (whose header
// postgres checks) and the redo point's, punched out. The standby removes
// and overwrites its own copies of those blocks later; the image would
// otherwise keep them as its own, up to a WAL segment per image.
func (m *Manager) trimWAL(ctx context.Context, dir string) error {
	control, err := m.controlData(ctx, dir)
	if err != nil {
		return err
	}
	redoFile := control["Latest checkpoint's REDO WAL file"]
	segSize, err1 := strconv.ParseInt(control["Bytes per WAL segment"], 10, 64)
	block, err2 := strconv.ParseInt(control["WAL block size"], 10, 64)
	redo, err3 := parseLSN(control["Latest checkpoint's REDO location"])
	if len(redoFile) != 24 || err1 != nil || err2 != nil || err3 != nil || segSize <= 0 || block <= 0 {
		return fmt.Errorf("pg_controldata of %s: no redo point to trim to", dir)
	}
	// Opened without following links: the directory came from the source.
	wal, err := unix.Open(filepath.Join(dir, "pg_wal"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening pg_wal: %w", err)
	}
	d := os.NewFile(uintptr(wal), "pg_wal")
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		// Segments only (24 hex digits), of any timeline: the last 16
		// digits are the segment number.
		if len(n) == 24 && isHex(n) && n[8:] < redoFile[8:] {
			if err := unix.Unlinkat(wal, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("removing pg_wal/%s: %w", n, err)
			}
		}
	}
	end := (int64(redo%uint64(segSize)) / block) * block
	if end <= block {
		return nil
	}
	fd, err := unix.Openat(wal, redoFile, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening pg_wal/%s: %w", redoFile, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("pg_wal/%s is not a regular file", redoFile)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, block, end-block); err != nil {
		return fmt.Errorf("punching pg_wal/%s: %w", redoFile, err)
	}
	return nil
}

// parseLSN reads a WAL position written as "X/Y".
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("%q is not a WAL position", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, err
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, err
	}
	return h<<32 | l, nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789ABCDEF", c) {
			return false
		}
	}
	return true
}
