package main

import (
	"context"
	"time"
)

// stateRestartBackoff spaces out attempts to bring the state cluster back;
// the last step repeats until it works or the server stops.
var stateRestartBackoff = [...]time.Duration{0, 500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second}

// watchState restarts the embedded state cluster whenever its postmaster
// exits (stopped by hand, killed by the OOM killer, crashed on a full disk),
// so that the service recovers by itself; meanwhile the API answers 503. It
// returns a func that ends the watch and waits for it, to be called before
// Close. Without an embedded cluster there is nothing to watch.
func (c *core) watchState(ctx context.Context) (stop func()) {
	if c.state == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.state.Done():
			}
			c.log.Error("the embedded state cluster stopped; restarting it", "data_dir", c.paths.State())
			for attempt := 0; ; attempt++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(stateRestartBackoff[min(attempt, len(stateRestartBackoff)-1)]):
				}
				_, p, err := c.sup.StateCluster(ctx, c.paths.State(), c.paths.StateSockets())
				if err != nil {
					c.log.Error("could not restart the state cluster; retrying", "attempt", attempt+1, "err", err)
					continue
				}
				c.state = p
				// Pooled connections went down with the old postmaster: drop
				// them now rather than fail one request on each.
				c.pool.Reset()
				c.log.Info("the embedded state cluster is back", "pid", p.PID())
				break
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
