package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir"
)

// resetVsCreate measures POST /instances/:id/reset → first query against
// POST /instances → first query of the same image, alternating the two so
// that drift and other load hit both alike. Each reset follows a write, as
// a reset after real use would.
func (e *env) resetVsCreate(ctx context.Context) error {
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	in, _, _, err := e.createAndQuery(ctx, e.image)
	if err != nil {
		return err
	}
	defer e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID)
	// One unrecorded round first: the first of each pays for cold caches.
	for i := -1; i < e.cfg.Samples; i++ {
		c, _, create, err := e.createAndQuery(ctx, e.image)
		if c != nil {
			if derr := e.user.Instances().Destroy(ctx, draupnir.Principal{}, c.ID); derr != nil && err == nil {
				err = fmt.Errorf("destroying instance %d: %w", c.ID, derr)
			}
		}
		if err != nil {
			return err
		}
		if err := writeSomething(ctx, in); err != nil {
			return err
		}
		reset, err := e.resetAndQuery(ctx, in)
		if err != nil {
			return err
		}
		if i >= 0 {
			e.rep.sample("lifecycle_create_first_query_ms", create)
			e.rep.sample("reset_first_query_ms", reset)
		}
	}
	create := Summarize(e.rep.Samples["lifecycle_create_first_query_ms"])
	reset := Summarize(e.rep.Samples["reset_first_query_ms"])
	ratio := reset.P50 / create.P50
	e.rep.Values["reset_over_create_p50"] = ratio
	e.rep.add(Figure{
		Name:     fmt.Sprintf("POST /instances/:id/reset → first query, scale %d image, n=%d", e.cfg.Scale, reset.N),
		Goal:     "≤ 1.2× create → first query of the same image",
		Measured: fmt.Sprintf("reset p50 %s, p95 %s; create p50 %s, p95 %s", fmtMS(reset.P50), fmtMS(reset.P95), fmtMS(create.P50), fmtMS(create.P95)),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio <= 1.2),
	})
	return nil
}

// resetAndQuery resets instance in to its image and returns how long it
// took until a query was answered with the credentials the reset returned.
func (e *env) resetAndQuery(ctx context.Context, in *draupnir.Instance) (time.Duration, error) {
	t0 := time.Now()
	got, err := e.user.Instances().Reset(ctx, draupnir.Principal{}, in.ID, 0)
	if err != nil {
		return 0, fmt.Errorf("resetting instance %d: %w", in.ID, err)
	}
	cfg, err := connConfig(got)
	if err == nil {
		err = firstQuery(ctx, cfg)
	}
	if err != nil {
		return 0, fmt.Errorf("first query on instance %d after its reset: %w", in.ID, err)
	}
	return time.Since(t0), nil
}

// writeSomething changes the data of instance in, as its owner.
func writeSomething(ctx context.Context, in *draupnir.Instance) error {
	conn, err := connect(ctx, in)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS bench_written AS SELECT 1 AS n"); err != nil {
		return fmt.Errorf("writing to instance %d: %w", in.ID, err)
	}
	return nil
}

// saveImage measures POST /instances/:id/save → new image ready, of an
// instance of the main image that has just been written to, and the
// longest a client of that instance, querying all along, waited for an
// answer meanwhile, and the longest a new connection took: the save must
// not stop it for more than a moment.
func (e *env) saveImage(ctx context.Context) error {
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	if err := e.saveSeries(ctx, e.image, "", min(e.cfg.Samples, 5)); err != nil {
		return err
	}
	save := Summarize(e.rep.Samples["save_ready_ms"])
	wait := Summarize(e.rep.Samples["save_longest_query_wait_ms"])
	conn := Summarize(e.rep.Samples["save_longest_connect_ms"])
	e.rep.add(Figure{
		Name:     fmt.Sprintf("POST /instances/:id/save → new image ready, scale %d image, n=%d", e.cfg.Scale, save.N),
		Goal:     "≤ 2 s at 1 GiB (-gib), independent of size",
		Measured: fmt.Sprintf("p50 %s, max %s; meanwhile a client's SELECT 1 every 5 ms on an open connection waited at most %s, a new connection + SELECT 1 took at most %s", fmtMS(save.P50), fmtMS(save.Max), fmtMS(wait.Max), fmtMS(conn.Max)),
		Status:   verdict(save.Max <= 2000),
	})
	return nil
}

// saveSeries saves an instance of image n times (after one unrecorded
// save), each after a write, recording under keys prefixed with prefix how
// long each took and the longest query wait and new connection meanwhile.
func (e *env) saveSeries(ctx context.Context, image int64, prefix string, n int) error {
	in, _, _, err := e.createAndQuery(ctx, image)
	if err != nil {
		return err
	}
	defer e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID)
	cfg, err := connConfig(in)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to instance %d: %w", in.ID, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for i := -1; i < n; i++ {
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS bench_saved AS SELECT 1 AS n; INSERT INTO bench_saved VALUES (1)"); err != nil {
			return fmt.Errorf("writing to instance %d: %w", in.ID, err)
		}
		stop := make(chan struct{})
		gap, connect := make(chan time.Duration, 1), make(chan time.Duration, 1)
		// SELECT 1 on the open connection, and on a new one each time.
		go func() { gap <- longest(stop, 5*time.Millisecond, func() { conn.Exec(ctx, "SELECT 1") }) }()
		go func() { connect <- longest(stop, 20*time.Millisecond, func() { firstQuery(ctx, cfg) }) }()
		t0 := time.Now()
		im, err := e.user.Instances().Save(ctx, draupnir.Principal{}, in.ID)
		took := time.Since(t0)
		close(stop)
		worst, worstConn := <-gap, <-connect
		if err != nil {
			return fmt.Errorf("saving instance %d: %w", in.ID, err)
		}
		if err := e.user.Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
			return fmt.Errorf("destroying saved image %d: %w", im.ID, err)
		}
		if i >= 0 {
			e.rep.sample(prefix+"save_ready_ms", took)
			e.rep.sample(prefix+"save_longest_query_wait_ms", worst)
			e.rep.sample(prefix+"save_longest_connect_ms", worstConn)
		}
	}
	return nil
}

// longest runs probe every interval until stop is closed and returns the
// longest one took (a failed one counts until it failed).
func longest(stop <-chan struct{}, interval time.Duration, probe func()) time.Duration {
	var worst time.Duration
	for {
		select {
		case <-stop:
			return worst
		default:
		}
		t0 := time.Now()
		probe()
		worst = max(worst, time.Since(t0))
		time.Sleep(interval)
	}
}
