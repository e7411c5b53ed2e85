package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
)

// pullSource is the [[sources]] entry of every run: the bench source
// cluster's pgbench database, refreshed in pull mode. serverFollowSource
// follows the same cluster; it joins the configuration only for the sources
// step, so that its standby's replay does not weigh on the other steps.
const (
	pullSource         = "bench-pull"
	serverFollowSource = "bench-follow"
)

// sourcesConfig writes the script of the run's sources and returns the
// [[sources]] table of source name in mode for the server's configuration.
func (e *env) sourcesConfig(name, mode string) (string, error) {
	script := filepath.Join(e.work, "source-script.sql")
	if err := os.WriteFile(script, []byte(trivialScript), 0o600); err != nil {
		return "", err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", e.src.sock, e.src.port, benchDB)
	return fmt.Sprintf(`
[[sources]]
name = %q
conninfo = %q
anonymisation_script = %q
mode = %q
keep = 2
`, name, conninfo, script, mode), nil
}

// refreshed refreshes source name and waits for its image to be ready,
// returning the image and how long that took from the request. It returns
// once the source is free for the next refresh too (its bookkeeping ends a
// moment after the image is ready), which is not timed.
func (e *env) refreshed(ctx context.Context, name string) (int64, time.Duration, error) {
	t0 := time.Now()
	im, err := e.upload.Sources().Refresh(ctx, draupnir.Principal{}, name)
	if err != nil {
		return 0, 0, err
	}
	var took time.Duration
	for took == 0 {
		got, err := e.upload.Images().Get(ctx, draupnir.Principal{}, im.ID)
		if err != nil {
			return 0, 0, err
		}
		switch got.State {
		case draupnir.ImageReady:
			took = time.Since(t0)
			continue
		case draupnir.ImageFailed:
			return 0, 0, fmt.Errorf("refresh of %s: image %d failed: %s", name, im.ID, got.Error)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, 0, err
		}
	}
	for {
		src, err := e.upload.Sources().Get(ctx, draupnir.Principal{}, name)
		if err != nil {
			return 0, 0, err
		}
		if src.RefreshingImageID != im.ID {
			return im.ID, took, nil
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, 0, err
		}
	}
}

// sources measures a pull refresh of the pgbench source (request → image
// ready) against what it replaces: pg_basebackup to disk, the tarball
// streamed into a new image through the SSH door, and done.
func (e *env) sources(ctx context.Context) error {
	size := e.rep.Values["backup_bytes"]
	for i := 0; i < e.cfg.CompareSamples; i++ {
		if err := syncfs(e.mnt); err != nil {
			return err
		}
		if _, d, err := e.refreshed(ctx, pullSource); err != nil {
			return fmt.Errorf("%w\nserver log: %s", err, e.srv.logTail())
		} else {
			e.rep.sample("refresh_pull_ms", d)
		}

		if err := syncfs(e.mnt); err != nil {
			return err
		}
		t0 := time.Now()
		backup, err := e.src.baseBackup(ctx, "full-"+strconv.Itoa(i), "fetch")
		if err != nil {
			return err
		}
		im, err := e.upload.Images().Create(ctx, draupnir.Principal{}, time.Now(), trivialScript)
		if err != nil {
			return err
		}
		upload := e.sshCmd(ctx, "ssh", e.srv.sshPort, "upload@127.0.0.1", "images", "upload", strconv.FormatInt(im.ID, 10))
		if _, err := runTimed(upload, filepath.Join(backup, "base.tar")); err != nil {
			return fmt.Errorf("streaming the backup: %w\nserver log: %s", err, e.srv.logTail())
		}
		done, err := e.upload.Images().Finalise(ctx, draupnir.Principal{}, im.ID)
		if err != nil || !done.Ready() {
			return fmt.Errorf("finalising image %d: %v\nserver log: %s", im.ID, err, e.srv.logTail())
		}
		e.rep.sample("refresh_full_ms", time.Since(t0))
		if err := os.RemoveAll(backup); err != nil {
			return err
		}
		if err := e.upload.Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
			return err
		}
	}
	pull := Summarize(e.rep.Samples["refresh_pull_ms"])
	full := Summarize(e.rep.Samples["refresh_full_ms"])
	ratio := full.P50 / pull.P50
	e.rep.Values["refresh_pull_vs_full_ratio"] = ratio
	e.rep.add(Figure{
		Name:     fmt.Sprintf("pull refresh → image ready, %s source, trivial script, n=%d", fmtBytes(size), pull.N),
		Goal:     "faster than pg_basebackup to disk + ssh images upload + done (no tarball, one pass)",
		Measured: fmt.Sprintf("pull %s, full pipeline %s", fmtMS(pull.P50), fmtMS(full.P50)),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio >= 1),
	})
	return e.serverFollow(ctx, full)
}

// serverFollow restarts the server with a follow-mode source of the same
// database and times its refreshes (request → image ready) through the
// API, as the pull ones, after the standby streams.
func (e *env) serverFollow(ctx context.Context, full Stats) error {
	entry, err := e.sourcesConfig(serverFollowSource, "follow")
	if err != nil {
		return err
	}
	if err := e.srv.restart(ctx, entry, e.log); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		src, err := e.upload.Sources().Get(ctx, draupnir.Principal{}, serverFollowSource)
		if err != nil {
			return err
		}
		if src.StandbyState == "streaming" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the standby of %s is %q after 10 minutes\nserver log: %s", serverFollowSource, src.StandbyState, e.srv.logTail())
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	for i := 0; i < max(3, e.cfg.CompareSamples); i++ {
		// Some writes first, as between two scheduled refreshes.
		if err := e.src.sql(ctx, benchDB, "UPDATE pgbench_branches SET bbalance = bbalance + 1"); err != nil {
			return err
		}
		_, d, err := e.refreshed(ctx, serverFollowSource)
		if err != nil {
			return fmt.Errorf("%w\nserver log: %s", err, e.srv.logTail())
		}
		e.rep.sample("refresh_follow_ms", d)
	}
	follow := Summarize(e.rep.Samples["refresh_follow_ms"])
	pull := Summarize(e.rep.Samples["refresh_pull_ms"])
	e.rep.add(Figure{
		Name: fmt.Sprintf("follow refresh → image ready through the API, %s source, trivial script, n=%d",
			fmtBytes(e.rep.Values["backup_bytes"]), follow.N),
		Goal:     "≤ 5 s; against pull and the full pipeline",
		Measured: fmt.Sprintf("follow p50 %s (max %s), pull %s, full pipeline %s", fmtMS(follow.P50), fmtMS(follow.Max), fmtMS(pull.P50), fmtMS(full.P50)),
		Ratio:    fmt.Sprintf("%.1f× faster than pull", pull.P50/follow.P50),
		Status:   verdict(follow.Max <= 5000),
	})
	return nil
}
