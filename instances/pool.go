package instances

import (
	"context"
	"time"

	"github.com/draupnir-db/draupnir"
)

// StartPool keeps WarmPool started, unassigned instances of every ready image
// until Close, so that a create only has to hand one out. With no pool
// configured it only removes warm instances left from an earlier
// configuration. Call it after Reconcile.
func (s *Service) StartPool() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// The tick notices images that became ready since the last pass.
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			s.fillPool(s.base)
			if s.opts.WarmPool == 0 {
				return
			}
			select {
			case <-s.base.Done():
				return
			case <-s.refillWake:
			case <-tick.C:
			}
		}
	}()
}

// refillDelay separates a take from the pool and its replacement.
const refillDelay = 250 * time.Millisecond

// refill asks the pool loop for a pass soon, without waiting for it.
func (s *Service) refill() {
	select {
	case s.refillWake <- struct{}{}:
	default:
	}
}

// fillPool tops up or shrinks each ready image's pool to WarmPool.
func (s *Service) fillPool(ctx context.Context) {
	sizes, err := s.store.poolSizes(ctx)
	if err != nil {
		s.log.Warn("warm pool: cannot count warm instances", "err", err)
		return
	}
	for imageID, n := range sizes {
		for ; n < s.opts.WarmPool && ctx.Err() == nil; n++ {
			s.poolMu.Lock()
			_, err := s.create(ctx, imageID, draupnir.Principal{}, draupnir.InstanceWarm, time.Time{})
			s.poolMu.Unlock()
			if err != nil {
				// Next pass tries again; a full disk or port range should
				// not stop the other images' pools.
				s.log.Warn("warm pool: could not start an instance", "image", imageID, "err", err)
				break
			}
		}
		if n > s.opts.WarmPool {
			s.shrinkPool(ctx, imageID, n-s.opts.WarmPool)
		}
	}
}

// shrinkPool destroys extra warm instances of an image.
func (s *Service) shrinkPool(ctx context.Context, imageID int64, extra int) {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	list, err := s.store.listOfImage(ctx, imageID, true)
	if err != nil {
		s.log.Warn("warm pool: cannot list warm instances", "err", err)
		return
	}
	var warm []*draupnir.Instance
	for _, in := range list {
		if in.State == draupnir.InstanceWarm {
			warm = append(warm, in)
		}
	}
	for _, in := range warm[:min(extra, len(warm))] {
		if ok, err := s.store.claimDestroy(ctx, in.ID, "", ""); err != nil || !ok {
			continue
		}
		if err := s.teardown(ctx, in.ID); err != nil {
			s.log.Warn("warm pool: could not destroy an extra warm instance", "instance", in.ID, "err", err)
		}
	}
}

// liveState is the state of a healthy instance: running if someone owns it,
// warm while it waits in the pool.
func liveState(in *draupnir.Instance) draupnir.InstanceState {
	if in.Owner == "" {
		return draupnir.InstanceWarm
	}
	return draupnir.InstanceRunning
}
