package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
)

// warmPool measures create → first query with instances.warm_pool on, the
// figure that goes below the floor: the server is restarted with the pool,
// and each sample starts with the pool full, as on a server that is not
// under a burst of creates.
func (e *env) warmPool(ctx context.Context) error {
	if e.cfg.WarmPool == 0 {
		e.rep.add(Figure{Name: "POST /instances → first query with the warm pool", Goal: "p50 ≤ 15 ms", Measured: "skipped (-warm-pool 0)", Status: NotMeasured})
		return nil
	}
	e.serverEnv = []string{"DRAUPNIR_INSTANCES_WARM_POOL=" + strconv.Itoa(e.cfg.WarmPool)}
	if err := e.restart(ctx); err != nil {
		return fmt.Errorf("with a warm pool: %w", err)
	}
	srv := e.srv

	// Instances on disk = the ones handed out + the pool.
	onDisk := func() int {
		ents, _ := os.ReadDir(e.layout().Instances())
		return len(ents)
	}
	waitFull := func(handedOut int) error {
		// Other ready images have pools too: wait until the count is both
		// high enough and settled.
		deadline := time.Now().Add(2 * time.Minute)
		last, since := -1, time.Now()
		for n := onDisk(); n < handedOut+e.cfg.WarmPool || n != last || time.Since(since) < 200*time.Millisecond; n = onDisk() {
			if n != last {
				last, since = n, time.Now()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the warm pool did not fill (%d instances on disk, want %d): %s", onDisk(), handedOut+e.cfg.WarmPool, srv.logTail())
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return nil
	}
	var ids []int64
	defer func() {
		for _, id := range ids {
			e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, id)
		}
	}()
	for i := 0; i < e.cfg.Samples; i++ {
		if err := waitFull(len(ids)); err != nil {
			return err
		}
		in, api, total, err := e.createAndQuery(ctx, e.image)
		if in != nil {
			ids = append(ids, in.ID)
		}
		if err != nil {
			return err
		}
		e.rep.sample("warm_create_first_query_ms", total)
		e.rep.sample("warm_create_api_ms", api)
		// The same on the now-used instance: what the client's handshake
		// and query cost by themselves.
		cfg, err := connConfig(in)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := firstQuery(ctx, cfg); err != nil {
			return err
		}
		e.rep.sample("warm_connect_again_ms", time.Since(t0))
	}
	total := Summarize(e.rep.Samples["warm_create_first_query_ms"])
	api := Summarize(e.rep.Samples["warm_create_api_ms"])
	floor := Summarize(e.rep.Samples["floor_ms"])
	ratio := total.P50 / floor.P50
	e.rep.Values["warm_create_over_floor_p50"] = ratio
	e.rep.add(Figure{
		Name: fmt.Sprintf("POST /instances → first query with the warm pool (instances.warm_pool = %d), n=%d", e.cfg.WarmPool, total.N),
		Goal: "p50 ≤ 15 ms",
		Measured: fmt.Sprintf("p50 %s, p95 %s (API call p50 %s; a second connect+query p50 %s)", fmtMS(total.P50), fmtMS(total.P95), fmtMS(api.P50),
			fmtMS(Summarize(e.rep.Samples["warm_connect_again_ms"]).P50)),
		Ratio:  fmt.Sprintf("%.2f× the floor", ratio),
		Status: verdict(total.P50 <= 15),
	})
	return nil
}
