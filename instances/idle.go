package instances

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir"
)

// activity is a sample of an instance's use, read from its PostgreSQL's own
// statistics: the client connections (other than the sampler's) and the
// transactions finished since its statistics began.
type activity struct {
	at    time.Time // the instance's clock when sampled
	taken time.Time // the service's clock when sampled
	conns []backend
	xacts int64 // xact_commit + xact_rollback over every database
}

// backend is a client connection: its state (active, idle, idle in
// transaction…) and since when it is in it.
type backend struct {
	state string
	since time.Time
}

// probeXacts is how many transactions a probe adds to the counters, as
// measured on PostgreSQL 15: its login's and its one query's (sent in the
// simple protocol, which runs it in one transaction), counted when its
// session ends, so by the next sample.
const probeXacts = 2

// probe samples an instance's activity in one query (see probeXacts) as its superuser over the private socket. Every name is
// schema-qualified (COALESCE and ARRAY are syntax, not functions) and
// every literal typed: the data, and so any function
// or operator in it, is the user's.
func probe(ctx context.Context, sockDir string, port int, superuser, db string) (activity, error) {
	conn, err := superuserConn(ctx, sockDir, port, superuser, db)
	if err != nil {
		return activity{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var a activity
	var states []string
	var since []time.Time
	err = conn.QueryRow(ctx, `SELECT pg_catalog.now(),
		(SELECT COALESCE(pg_catalog.sum(d.xact_commit OPERATOR(pg_catalog.+) d.xact_rollback), 0::pg_catalog.numeric)::pg_catalog.int8
			FROM pg_catalog.pg_stat_database d WHERE d.datid OPERATOR(pg_catalog.<>) '0'::pg_catalog.oid),
		ARRAY(SELECT COALESCE(s.state, ''::pg_catalog.text) FROM pg_catalog.pg_stat_activity s
			WHERE s.backend_type OPERATOR(pg_catalog.=) 'client backend'::pg_catalog.text
			AND s.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() ORDER BY s.pid),
		ARRAY(SELECT COALESCE(s.state_change, s.backend_start) FROM pg_catalog.pg_stat_activity s
			WHERE s.backend_type OPERATOR(pg_catalog.=) 'client backend'::pg_catalog.text
			AND s.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() ORDER BY s.pid)`,
		pgx.QueryExecModeSimpleProtocol).Scan(&a.at, &a.xacts, &states, &since)
	if err != nil {
		return activity{}, fmt.Errorf("reading the instance's statistics: %w", err)
	}
	for i := range min(len(states), len(since)) {
		a.conns = append(a.conns, backend{states[i], since[i]})
	}
	return a, nil
}

// used reports whether sample a shows the instance in use: a client
// connection (one idle for idleConn or longer does not count, unless
// idleConn is 0), or transactions finished since the previous sample prev
// beyond the probe's own (nil prev: no earlier sample, so none counted).
// Counters that went down (statistics reset by a crash) count as use.
func used(a activity, prev *activity, idleConn time.Duration) bool {
	for _, c := range a.conns {
		if idleConn == 0 || c.state == "active" || a.at.Sub(c.since) < idleConn {
			return true
		}
	}
	if prev == nil {
		return false
	}
	return a.xacts < prev.xacts || a.xacts-prev.xacts > probeXacts
}

// idleProbes is how many times an instance is sampled within the idle
// timeout, at most once a sweep. Each sample forks a backend in the
// instance: with hundreds of instances, sampling all of them every sweep
// would cost a measurable share of a core (docs/performance.md). An
// instance is never destroyed early for it, at most a tenth of the timeout
// late: use is recorded at the sample that sees it.
const idleProbes = 10

// probeEvery is how often watchIdle samples an instance.
func (s *Service) probeEvery() time.Duration {
	return max(s.opts.SweepInterval, s.opts.IdleTimeout/idleProbes)
}

// watchIdle samples the running instances in list not sampled within
// probeEvery, and records as last active those in use. Instances it cannot sample keep their last_active_at.
func (s *Service) watchIdle(ctx context.Context, list []*draupnir.Instance, now time.Time) {
	seen := map[int64]bool{}
	superusers := map[int64]string{}
	for _, in := range list {
		if in.State != draupnir.InstanceRunning || in.Owner == "" {
			continue
		}
		seen[in.ID] = true
		su, ok := superusers[in.ImageID]
		if !ok {
			im, err := s.opts.Images.Ready(ctx, in.ImageID)
			if err == nil {
				su = im.Superuser
			}
			superusers[in.ImageID] = su
		}
		if su == "" {
			continue
		}
		// Half a sweep's slack: sweeps come at whole intervals, a little
		// late or early.
		if prev, ok := s.samples[in.ID]; ok && now.Sub(prev.taken) < s.probeEvery()-s.opts.SweepInterval/2 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		a, err := s.probe(pctx, s.sockDir(in.ID), in.Port, su, in.Database)
		cancel()
		if err != nil {
			s.log.Warn("could not sample an instance's activity; it keeps its last_active_at", "instance", in.ID, "err", err)
			continue
		}
		a.taken = now
		prev, ok := s.samples[in.ID]
		s.samples[in.ID] = a
		var p *activity
		if ok {
			p = &prev
		}
		if !used(a, p, s.opts.IdleConnectionTimeout) {
			continue
		}
		if err := s.store.touch(ctx, in.ID, now); err != nil {
			s.log.Error("could not record an instance's activity", "instance", in.ID, "err", err)
			continue
		}
		in.LastActiveAt = now
	}
	for id := range s.samples {
		if !seen[id] {
			delete(s.samples, id)
		}
	}
}
