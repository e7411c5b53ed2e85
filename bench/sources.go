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
// cluster's pgbench database, refreshed in pull mode.
const pullSource = "bench-pull"

// sourcesConfig writes the script of the run's sources and returns their
// [[sources]] tables for the server's configuration.
func (e *env) sourcesConfig() (string, error) {
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
mode = "pull"
keep = 2
`, pullSource, conninfo, script), nil
}

// refreshed refreshes source name and waits for its image to be ready,
// returning the image and how long that took from the request.
func (e *env) refreshed(ctx context.Context, name string) (int64, time.Duration, error) {
	t0 := time.Now()
	im, err := e.upload.Sources().Refresh(ctx, draupnir.Principal{}, name)
	if err != nil {
		return 0, 0, err
	}
	for {
		got, err := e.upload.Images().Get(ctx, draupnir.Principal{}, im.ID)
		if err != nil {
			return 0, 0, err
		}
		switch got.State {
		case draupnir.ImageReady:
			return im.ID, time.Since(t0), nil
		case draupnir.ImageFailed:
			return 0, 0, fmt.Errorf("refresh of %s: image %d failed: %s", name, im.ID, got.Error)
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
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
	return nil
}
