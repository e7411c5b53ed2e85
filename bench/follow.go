package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/standby"
	"github.com/draupnir-db/draupnir/supervisor"
)

// followBench measures follow mode (issue 17) with a standby of the source
// cluster kept by package standby: what a refresh costs from the snapshot
// until the copy answers as a primary (finalise's first start; the
// anonymisation and the freeze come on top, as for any image), once at the
// main size and again once the large database exists, with and without a
// restartpoint first; the disk an image costs after 1 % of the rows
// change; the replay lag under a pgbench write load.
type followBench struct {
	e    *env
	m    *standby.Manager
	dir  string // the standbys' directory
	runs int    // snapshots made, for their names
}

const followSource = "bench"

// start brings the standby up (a base backup of the whole cluster) once.
func (f *followBench) start(ctx context.Context) error {
	if f.m != nil {
		return nil
	}
	e := f.e
	// What docs/operations.md asks of a followed source: keep WAL for a
	// standby that falls behind (the writes below checkpoint right after
	// bursts).
	if err := e.src.sql(ctx, "postgres", "ALTER SYSTEM SET wal_keep_size = '1GB'"); err != nil {
		return err
	}
	if err := e.src.sql(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	f.dir = filepath.Join(e.mnt, "bench-standbys")
	run := filepath.Join(e.work, "sb")
	if err := os.MkdirAll(run, 0o711); err != nil {
		return err
	}
	m, err := standby.New(standby.Options{Dir: f.dir, RunDir: run, Postgres: e.sup, Log: e.log,
		PollInterval: 100 * time.Millisecond, CatchUpTimeout: 30 * time.Minute,
		// The bench runs the restartpoint itself, to time both ways.
		NoRestartpoint: true})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		m.Run(runCtx, []standby.Source{{Name: followSource,
			Conninfo: fmt.Sprintf("host=%s port=%d user=postgres", e.src.sock, e.src.port)}})
		close(done)
	}()
	f.m = m
	e.undo.push(func(ctx context.Context) error {
		cancel()
		<-done
		m.Close()
		return e.sup.StopDataDir(ctx, filepath.Join(f.dir, followSource), supervisor.Immediate, 10*time.Second)
	})
	t0 := time.Now()
	for {
		st, _ := m.Status(followSource)
		if st.State == standby.Streaming {
			break
		}
		if st.State == standby.Failed {
			return fmt.Errorf("the standby failed: %s", st.LastError)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	e.rep.Values["follow_standby_initial_ms"] = ms(time.Since(t0))
	return nil
}

// small is the "follow" step: refresh cost at the main size, disk per
// image, replay lag.
func (f *followBench) small(ctx context.Context) error {
	if err := f.start(ctx); err != nil {
		return err
	}
	size, err := f.refreshes(ctx, "follow_")
	if err != nil {
		return err
	}
	with := Summarize(f.e.rep.Samples["follow_refresh_restartpoint_ms"])
	without := Summarize(f.e.rep.Samples["follow_refresh_ms"])
	f.e.rep.add(Figure{
		Name: fmt.Sprintf("follow refresh: standby snapshot → answers as a primary, %s standby, n=%d", fmtBytes(float64(size)), with.N),
		Goal: "≤ 5 s (the anonymisation and freeze come on top)",
		Measured: fmt.Sprintf("p50 %s, p95 %s with a restartpoint first (snapshot p50 %s); without one p50 %s, p95 %s",
			fmtMS(with.P50), fmtMS(with.P95), fmtMS(Summarize(f.e.rep.Samples["follow_snapshot_restartpoint_ms"]).P50),
			fmtMS(without.P50), fmtMS(without.P95)),
		Status: verdict(with.P50 <= 5000),
	})
	if err := f.disk(ctx); err != nil {
		return err
	}
	return f.lag(ctx)
}

// large is the "follow large" step: the refresh cost again, now that the
// standby holds the large database too.
func (f *followBench) large(ctx context.Context) error {
	name := "follow refresh with the large database in the standby"
	if f.e.cfg.LargeScale == 0 {
		f.e.rep.add(Figure{Name: name, Goal: "≤ 1.5× the main figure",
			Measured: "not measured (off by default; -large-scale N)", Status: NotMeasured})
		return nil
	}
	if err := f.start(ctx); err != nil {
		return err
	}
	// The "large image" step makes the large database; alone, this does.
	var exists bool
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", f.e.src.sock, f.e.src.port))
	if err != nil {
		return err
	}
	err = c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", largeDB).Scan(&exists)
	c.Close(ctx)
	if err != nil {
		return err
	}
	if !exists {
		if err := f.e.src.pgbench(ctx, largeDB, f.e.cfg.LargeScale); err != nil {
			return err
		}
	}
	size, err := f.refreshes(ctx, "follow_large_")
	if err != nil {
		return err
	}
	big := Summarize(f.e.rep.Samples["follow_large_refresh_restartpoint_ms"])
	small := Summarize(f.e.rep.Samples["follow_refresh_restartpoint_ms"])
	if small.N == 0 {
		return errors.New(`"follow large" needs the "follow" step first`)
	}
	ratio := big.P50 / small.P50
	f.e.rep.add(Figure{
		Name:     fmt.Sprintf("%s (%s standby), n=%d", name, fmtBytes(float64(size)), big.N),
		Goal:     "≤ 1.5× the main figure",
		Measured: fmt.Sprintf("p50 %s, p95 %s vs p50 %s at the main size", fmtMS(big.P50), fmtMS(big.P95), fmtMS(small.P50)),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio <= 1.5),
	})
	return nil
}

// refreshes times refreshes with and without a restartpoint, in turn, each
// after a burst of writes on the source (so that there is WAL to replay
// since the last restartpoint), and returns the standby's size.
func (f *followBench) refreshes(ctx context.Context, prefix string) (int64, error) {
	n := max(3, f.e.cfg.Samples/4)
	for i := 0; i < n; i++ {
		for _, restartpoint := range []bool{true, false} {
			// A checkpoint on the source, then writes: WAL after the
			// checkpoint, as a refresh finds it on a source that
			// checkpoints every checkpoint_timeout. Only a restartpoint
			// lets the copy's recovery start from that checkpoint.
			if err := f.e.src.sql(ctx, "postgres", "CHECKPOINT"); err != nil {
				return 0, err
			}
			if err := f.write(ctx, 2000); err != nil {
				return 0, err
			}
			snap, boot, err := f.refresh(ctx, restartpoint)
			if err != nil {
				return 0, err
			}
			key := prefix
			suffix := "_ms"
			if restartpoint {
				suffix = "_restartpoint_ms"
			}
			f.e.rep.sample(key+"snapshot"+suffix, snap)
			f.e.rep.sample(key+"boot"+suffix, boot)
			f.e.rep.sample(key+"refresh"+suffix, snap+boot)
		}
	}
	total, _, err := btrfs.Usage(ctx, filepath.Join(f.dir, followSource))
	return total, err
}

// write runs n pgbench transactions on the source.
func (f *followBench) write(ctx context.Context, n int) error {
	s := f.e.src
	_, err := f.e.asPostgres(ctx, filepath.Join(f.e.bin, "pgbench"), "-n", "-t", strconv.Itoa(n),
		"-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", benchDB)
	return err
}

// refresh snapshots the standby (after a restartpoint if asked) and boots
// the copy as a primary until it answers; it returns both durations and
// removes the copy.
func (f *followBench) refresh(ctx context.Context, restartpoint bool) (snap, boot time.Duration, err error) {
	dst, err := f.snapshot(ctx, restartpoint)
	if err != nil {
		return 0, 0, err
	}
	defer btrfs.Delete(dst.path)
	t0 := time.Now()
	p, err := f.bootPrimary(ctx, dst.path)
	if err != nil {
		return 0, 0, err
	}
	boot = time.Since(t0)
	return dst.took, boot, p.Stop(ctx, supervisor.Fast, time.Minute)
}

type snapshot struct {
	path string
	took time.Duration
}

// snapshot makes a writable copy of the standby as a refresh does.
func (f *followBench) snapshot(ctx context.Context, restartpoint bool) (snapshot, error) {
	f.runs++
	dst := filepath.Join(f.dir, fmt.Sprintf("refresh-%d", f.runs))
	t0 := time.Now()
	if restartpoint {
		// As SnapshotInto does it: caught up first, so that the
		// restartpoint can use the source's latest checkpoint.
		if err := f.restartpoint(ctx); err != nil {
			return snapshot{}, err
		}
	}
	if err := f.m.SnapshotInto(ctx, followSource, dst); err != nil {
		return snapshot{}, err
	}
	return snapshot{path: dst, took: time.Since(t0)}, nil
}

// restartpoint waits until the standby has replayed all the source has
// written, then runs a CHECKPOINT (a restartpoint) on it.
func (f *followBench) restartpoint(ctx context.Context) error {
	src, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", f.e.src.sock, f.e.src.port))
	if err != nil {
		return err
	}
	var lsn string
	err = src.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	src.Close(ctx)
	if err != nil {
		return err
	}
	sb, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", filepath.Join(f.e.work, "sb", followSource)))
	if err != nil {
		return err
	}
	defer sb.Close(ctx)
	for {
		var done bool
		if err := sb.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn).Scan(&done); err != nil {
			return err
		}
		if done {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	_, err = sb.Exec(ctx, "CHECKPOINT")
	return err
}

// bootSettings are finalise's private start's (fsync off: crash recovery
// would otherwise begin by syncing the whole data directory), plus the two that keep a
// copy-on-write snapshot from rewriting WAL segments it shares with the
// standby (finalise should have them too).
var bootSettings = map[string]string{"hot_standby": "off", "shared_buffers": "16MB", "fsync": "off",
	"wal_init_zero": "off", "wal_recycle": "off"}

// bootPrimary starts a snapshot as finalise's first start does: the
// source's ALTER SYSTEM settings dropped, a private socket, crash recovery
// to the end of its WAL, up as a primary; it returns once SELECT 1 answers.
func (f *followBench) bootPrimary(ctx context.Context, dir string) (*supervisor.Process, error) {
	if err := os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), nil, 0o600); err != nil {
		return nil, err
	}
	sock := filepath.Join(f.e.work, "sbb")
	p, err := f.e.sup.Start(ctx, supervisor.Spec{DataDir: dir, SocketDir: sock, Port: 5432,
		LogFile: dir + ".log", Settings: bootSettings})
	if err != nil {
		return nil, err
	}
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres", sock))
	if err == nil {
		var recovering bool
		err = c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovering)
		c.Close(ctx)
		if err == nil && recovering {
			err = errors.New("the snapshot came up in recovery, not as a primary")
		}
	}
	if err != nil {
		p.Stop(ctx, supervisor.Immediate, 0)
		return nil, err
	}
	return p, nil
}

// image makes what a refresh leaves: the snapshot booted, shut down
// cleanly, frozen read-only; the writable copy deleted.
func (f *followBench) image(ctx context.Context, name string) (string, error) {
	dst, err := f.snapshot(ctx, true)
	if err != nil {
		return "", err
	}
	defer btrfs.Delete(dst.path)
	p, err := f.bootPrimary(ctx, dst.path)
	if err != nil {
		return "", err
	}
	if err := p.Stop(ctx, supervisor.Fast, time.Minute); err != nil {
		return "", err
	}
	img := filepath.Join(f.dir, name)
	return img, btrfs.Snapshot(dst.path, img, true)
}

// disk measures the exclusive bytes of the second of two consecutive
// images after 1 % of pgbench_accounts (a contiguous range) changed in
// between. Blocks the second image still shares with the standby would
// not count as its own, so the same rows are changed once more before
// measuring: the standby moves on, as it does in service.
func (f *followBench) disk(ctx context.Context) error {
	e := f.e
	first, err := f.image(ctx, "image-a")
	if err != nil {
		return err
	}
	defer btrfs.Delete(first)
	var accounts, changedBytes int64
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", e.src.sock, e.src.port, benchDB))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, "SELECT count(*), pg_total_relation_size('pgbench_accounts') / 100 FROM pgbench_accounts").Scan(&accounts, &changedBytes); err != nil {
		return err
	}
	update := fmt.Sprintf("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= %d", accounts/100)
	var walBefore, walAfter string
	c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&walBefore)
	if _, err := c.Exec(ctx, update); err != nil {
		return err
	}
	c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&walAfter)
	// Any source checkpoints within checkpoint_timeout (5 min by default;
	// the bench's source waits 30): the restartpoint before the snapshot
	// can then start the copy's crash recovery after the change, instead of
	// replaying (and rewriting) everything since the previous checkpoint.
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	second, err := f.image(ctx, "image-b")
	if err != nil {
		return err
	}
	defer btrfs.Delete(second)
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	_, own, err := btrfs.Usage(ctx, second)
	if err != nil {
		return err
	}
	e.rep.Values["follow_image_own_exclusive_bytes"] = float64(own)
	if _, err := c.Exec(ctx, update); err != nil {
		return err
	}
	// The standby writes the pages it replayed at its next restartpoint,
	// after the source's next checkpoint; only then do they part from the
	// image's.
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	moved, err := f.snapshot(ctx, true)
	if err != nil {
		return err
	}
	btrfs.Delete(moved.path)
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	_, excl, err := btrfs.Usage(ctx, second)
	if err != nil {
		return err
	}
	_, walExcl, err := btrfs.Usage(ctx, filepath.Join(second, "pg_wal"))
	if err != nil {
		return err
	}
	e.rep.Values["follow_image_wal_exclusive_bytes"] = float64(walExcl)
	var wal float64
	c.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", walAfter, walBefore).Scan(&wal)
	e.rep.Values["follow_image_exclusive_bytes"] = float64(excl)
	e.rep.Values["follow_changed_bytes"] = float64(changedBytes)
	e.rep.Values["follow_update_wal_bytes"] = wal
	ratio := float64(excl) / float64(changedBytes)
	e.rep.add(Figure{
		Name: "follow: the next image's exclusive bytes after 1 % of pgbench_accounts changed",
		Goal: "≤ 3× the bytes changed",
		Measured: fmt.Sprintf("%s exclusive (%s of it in pg_wal; %s before the standby moved on) vs %s changed (1 %% of the table and its indexes; the update wrote %s of WAL)",
			fmtBytes(float64(excl)), fmtBytes(float64(walExcl)), fmtBytes(float64(own)), fmtBytes(float64(changedBytes)), fmtBytes(wal)),
		Ratio:  fmt.Sprintf("%.2f×", ratio),
		Status: verdict(ratio <= 3),
	})
	return nil
}

// lag samples the standby's reported lag every 100 ms while pgbench writes
// on the source.
func (f *followBench) lag(ctx context.Context) error {
	e := f.e
	s := e.src
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "pgbench"), "-n", "-c", "2", "-j", "2", "-T", "20",
		"-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", benchDB)
	cmd.Dir = "/"
	cmd.SysProcAttr = e.credential()
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("pgbench: %w", err)
			}
			b := Summarize(e.rep.Samples["follow_lag_bytes"])
			sec := Summarize(e.rep.Samples["follow_lag_ms"])
			e.rep.add(Figure{
				Name: fmt.Sprintf("follow: standby replay lag under pgbench (2 clients, 20 s), n=%d", b.N),
				Goal: "reported",
				Measured: fmt.Sprintf("p50 %s / %s, p95 %s / %s, max %s / %s", fmtBytes(b.P50), fmtMS(sec.P50),
					fmtBytes(b.P95), fmtMS(sec.P95), fmtBytes(b.Max), fmtMS(sec.Max)),
				Status: Info,
			})
			return nil
		case <-tick.C:
			st, _ := f.m.Status(followSource)
			e.rep.Samples["follow_lag_bytes"] = append(e.rep.Samples["follow_lag_bytes"], float64(st.LagBytes))
			e.rep.Samples["follow_lag_ms"] = append(e.rep.Samples["follow_lag_ms"], st.LagSeconds*1000)
		}
	}
}
