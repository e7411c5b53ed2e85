package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ, 100
// on every Linux architecture Draupnir runs on).
const clockTick = 10 * time.Millisecond

// sweeperCost measures what the expiry and idle sweeper costs with
// SweeperInstances idle instances: the CPU time, over SweeperWindow, of the
// server, of the instances' postgres (a sample of an instance's activity is
// a backend forked in it, whose time its postmaster collects when it exits)
// and of the state database. Once with the sweeper idle (a sweep interval
// longer than the window) and once with idle clean-up sampling every
// instance at every sweep (the default 15 s interval, an idle timeout of ten
// intervals, far enough that nothing is destroyed): the worst case. From the
// cost of one round of samples it works out the share of a core at longer
// idle timeouts, which sample each instance every tenth of the timeout. The
// server is restarted for each, with the instances left running; it adopts
// them.
func (e *env) sweeperCost(ctx context.Context) (err error) {
	n := e.cfg.SweeperInstances
	var made []*draupnir.Instance
	defer func() {
		// Back to the configuration the other steps expect.
		e.serverEnv = nil
		if rerr := e.restart(ctx); rerr != nil && err == nil {
			err = rerr
		}
		for _, in := range made {
			if derr := e.user.Instances().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID); derr != nil && err == nil {
				err = fmt.Errorf("destroying instance %d: %w", in.ID, derr)
			}
		}
	}()
	for range n {
		in, _, _, err := e.createAndQuery(ctx, e.image)
		if in != nil {
			made = append(made, in)
		}
		if err != nil {
			return err
		}
	}
	const interval = 15 * time.Second // the default instances.sweep_interval
	modes := []struct {
		name string
		env  []string
	}{
		{"off", []string{"DRAUPNIR_INSTANCES_IDLE_TIMEOUT=0s", "DRAUPNIR_INSTANCES_SWEEP_INTERVAL=24h"}},
		{"on", []string{"DRAUPNIR_INSTANCES_IDLE_TIMEOUT=" + (10 * interval).String(), "DRAUPNIR_INSTANCES_SWEEP_INTERVAL=" + interval.String()}},
	}
	// New instances are busy for a while (their first autovacuum rounds,
	// checkpoints): one window unrecorded with the sweeper idle, then the
	// modes in the order on, off, off, on, so that drift hits both alike.
	// Each mode's figure is the mean of its two windows.
	cpu := map[int]cpuUse{}
	current := -1
	for i, m := range []int{0, 1, 0, 0, 1} {
		if m != current {
			e.serverEnv = modes[m].env
			if err := e.restart(ctx); err != nil {
				return err
			}
			current = m
			// Past start-up and its first sweep.
			if err := sleep(ctx, 2*time.Second); err != nil {
				return err
			}
		}
		before, err := e.cpuNow(made)
		if err != nil {
			return err
		}
		if err := sleep(ctx, e.cfg.SweeperWindow); err != nil {
			return err
		}
		after, err := e.cpuNow(made)
		if err != nil {
			return err
		}
		if i == 0 {
			continue
		}
		use := after.minus(before)
		for part, d := range map[string]time.Duration{"server": use.server, "instances": use.instances, "state": use.state} {
			key := "sweeper_" + modes[m].name + "_" + part + "_cpu_ms"
			e.rep.Samples[key] = append(e.rep.Samples[key], ms(d))
		}
		sum := cpu[m]
		cpu[m] = cpuUse{sum.server + use.server/2, sum.instances + use.instances/2, sum.state + use.state/2}
	}
	off, on := cpu[0], cpu[1]
	window := e.cfg.SweeperWindow
	rounds := max(float64(window/interval), 1)
	round := float64(on.total()-off.total()) / rounds // CPU of one round of samples
	share := func(every time.Duration) float64 { return round / float64(every) }
	e.rep.Values["sweeper_round_cpu_ms"] = round / float64(time.Millisecond)
	e.rep.Values["sweeper_share_every_sweep"] = share(interval)
	e.rep.Values["sweeper_share_idle_timeout_10m"] = share(time.Minute)
	e.rep.Values["sweeper_share_idle_timeout_1h"] = share(6 * time.Minute)
	e.rep.add(Figure{
		Name: fmt.Sprintf("sweeper with %d idle instances: CPU over %s with idle clean-up sampling each at every sweep (%s), vs the sweeper idle", n, window, interval),
		Goal: "nothing measurable",
		Measured: fmt.Sprintf("on: server %s, instances %s, state database %s; off: server %s, instances %s, state database %s; one round of %d samples %s",
			fmtMS(ms(on.server)), fmtMS(ms(on.instances)), fmtMS(ms(on.state)), fmtMS(ms(off.server)), fmtMS(ms(off.instances)), fmtMS(ms(off.state)),
			n, fmtMS(round/float64(time.Millisecond))),
		Ratio: fmt.Sprintf("+%.2f %% of a core sampling every sweep; at idle_timeout 10m (a sample a minute) %.2f %%, 1h %.2f %%",
			100*share(interval), 100*share(time.Minute), 100*share(6*time.Minute)),
		Status: verdict(share(interval) < 0.01),
	})
	e.rep.note("Sweeper cost: CPU times from /proc/PID/stat in %s ticks; an instance's includes its exited backends (the samples), collected by its postmaster. A window of %s holds about %.0f sweeps.",
		clockTick, window, rounds)
	return nil
}

// restart stops the server and starts it again with e.serverEnv.
func (e *env) restart(ctx context.Context) error {
	if err := e.srv.stop(ctx); err != nil {
		return err
	}
	srv, err := startServer(ctx, e, e.undo)
	if err != nil {
		return fmt.Errorf("restarting the server: %w", err)
	}
	e.srv = srv
	e.upload = client.New(srv.url, srv.secret)
	e.user = client.New(srv.url, userToken)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// cpuUse is CPU time (user + system) spent by the parts of a running
// server.
type cpuUse struct{ server, instances, state time.Duration }

func (c cpuUse) total() time.Duration { return c.server + c.instances + c.state }

func (c cpuUse) minus(o cpuUse) cpuUse {
	return cpuUse{c.server - o.server, c.instances - o.instances, c.state - o.state}
}

// cpuNow reads the CPU time used so far by the server, the postgres of
// each instance in ins and the state database.
func (e *env) cpuNow(ins []*draupnir.Instance) (cpuUse, error) {
	var c cpuUse
	var err error
	if c.server, err = cpuTime(e.srv.cmd.Process.Pid); err != nil {
		return c, err
	}
	dirs := []string{e.layout().State()}
	for _, in := range ins {
		dirs = append(dirs, filepath.Join(e.layout().Instances(), strconv.FormatInt(in.ID, 10)))
	}
	for i, dir := range dirs {
		pid, err := postmasterPID(dir)
		if err != nil {
			return c, err
		}
		d, err := cpuTime(pid)
		if err != nil {
			return c, err
		}
		if i == 0 {
			c.state = d
		} else {
			c.instances += d
		}
	}
	return c, nil
}

// postmasterPID reads the pid of the postmaster serving dataDir.
func postmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("finding the postmaster: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid of %s: %w", dataDir, err)
	}
	return pid, nil
}

// cpuTime is the user and system time of process pid, all its threads, and
// its children that exited and were waited for.
func cpuTime(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	return parseCPUTime(stat)
}

// parseCPUTime sums utime, stime, cutime and cstime of a /proc/PID/stat.
func parseCPUTime(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name in stat")
	}
	// After ")": state(3) ppid … utime(14) stime(15) cutime(16) cstime(17).
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 15 {
		return 0, errors.New("short stat")
	}
	var ticks int64
	for _, s := range f[11:15] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}
