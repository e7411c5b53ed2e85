// Package bench is Draupnir's performance harness (`make bench`): on a
// loop-mounted btrfs of its own it builds a pgbench source cluster, makes an
// image of its base backup through a real `draupnir serve`, and measures in
// one run what DESIGN.md §6 promises — create → first query against the floor
// (a bare btrfs snapshot plus a postgres start), the alternatives that grow
// with the data (CREATE DATABASE … TEMPLATE, pg_dump | pg_restore), destroy,
// many idle instances, concurrent creates, finalise and listing, follow mode's
// standby refreshes — and reports
// every raw sample. Everything it starts it stops and everything it mounts it
// unmounts, also when it fails or is interrupted.
package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Config sizes a run. The zero value is not useful; start from Defaults.
type Config struct {
	// Server is the draupnir binary to run; empty builds ./cmd/draupnir.
	Server string `json:"server"`
	// Scale is the pgbench scale of the main image (70 ≈ 1 GiB on disk).
	Scale int `json:"scale"`
	// LargeScale is the pgbench scale of the size-independence image
	// (10× Scale is the goal's); 0 skips it.
	LargeScale int `json:"large_scale"`
	// Samples is how many creates (and floor starts) are timed.
	Samples int `json:"samples"`
	// CompareSamples is how many CREATE DATABASE and dump/restore runs are
	// timed (each copies all the data).
	CompareSamples int `json:"compare_samples"`
	// Idle is how many idle instances are held at once.
	Idle int `json:"idle"`
	// Concurrent is how many creates are started at once.
	Concurrent int `json:"concurrent"`
	// ListSamples is how many GET /instances are timed.
	ListSamples int `json:"list_samples"`
	// PortBase is the first instance port; the range is sized from Idle and
	// Concurrent.
	PortBase int `json:"port_base"`
	// ServerLog, if set, is where the server's log is copied at the end.
	ServerLog string `json:"server_log,omitempty"`
	// DiskBytes overrides the size of the loop btrfs; 0 sizes it from the
	// scales.
	DiskBytes int64 `json:"disk_bytes"`
	// WarmPool is instances.warm_pool for the warm-pool series; 0 skips it.
	WarmPool int `json:"warm_pool"`
	// SweeperInstances is how many idle instances the sweeper's cost is
	// measured with, over SweeperWindow.
	SweeperInstances int           `json:"sweeper_instances"`
	SweeperWindow    time.Duration `json:"sweeper_window_ns"`
	// Only, if not empty, names the steps to run (the image is always
	// made), for trying one step without the whole run.
	Only []string `json:"only,omitempty"`
}

// Defaults finish in a few minutes on a 2-core machine.
func Defaults() Config {
	return Config{
		Scale:          20,
		Samples:        20,
		CompareSamples: 2,
		Idle:           20,
		Concurrent:     20,
		ListSamples:    50,
		PortBase:       41000,
		WarmPool:       2,

		SweeperInstances: 20,
		SweeperWindow:    20 * time.Second,
	}
}

// Validate rejects sizes that cannot produce a meaningful run.
func (c Config) Validate() error {
	switch {
	case c.Scale < 1:
		return fmt.Errorf("scale must be at least 1, got %d", c.Scale)
	case c.WarmPool < 0 || c.WarmPool > 20:
		return fmt.Errorf("warm pool must be between 0 and 20, got %d", c.WarmPool)
	case c.LargeScale < 0:
		return fmt.Errorf("large scale must not be negative, got %d", c.LargeScale)
	case c.Samples < 2:
		return fmt.Errorf("samples must be at least 2, got %d", c.Samples)
	case c.CompareSamples < 1:
		return fmt.Errorf("compare samples must be at least 1, got %d", c.CompareSamples)
	case c.Idle < 1 || c.Concurrent < 1 || c.SweeperInstances < 1:
		return fmt.Errorf("idle, concurrent and sweeper instances must be at least 1")
	case c.SweeperWindow < time.Second:
		return fmt.Errorf("the sweeper window must be at least 1s, got %s", c.SweeperWindow)
	case c.ListSamples < 1:
		return fmt.Errorf("list samples must be at least 1, got %d", c.ListSamples)
	case c.PortBase < 1024 || c.PortBase+c.portSpan() > 65535:
		return fmt.Errorf("port base %d leaves no room for %d instance ports", c.PortBase, c.portSpan())
	}
	return nil
}

// portSpan is the width of the instance port range.
func (c Config) portSpan() int { return max(c.Idle, c.Concurrent, c.SweeperInstances) + 50 }

// Status is the verdict on one figure.
type Status string

const (
	Pass        Status = "pass"
	Fail        Status = "FAIL"
	Info        Status = "info" // reported, no goal of its own
	NotMeasured Status = "not measured"
)

// Figure is one row of the result table.
type Figure struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Ratio    string `json:"ratio,omitempty"`
	Status   Status `json:"status"`
}

// Machine describes where a run happened.
type Machine struct {
	Kernel   string `json:"kernel"`
	CPU      string `json:"cpu"`
	CPUs     int    `json:"cpus"`
	MemBytes int64  `json:"mem_bytes"`
	Postgres string `json:"postgres"`
	Go       string `json:"go"`
}

// Report is the outcome of a run: the table, and every raw sample (keys end
// in their unit: _ms or _bytes).
type Report struct {
	Started time.Time            `json:"started"`
	Seconds float64              `json:"seconds"`
	Machine Machine              `json:"machine"`
	Config  Config               `json:"config"`
	Figures []Figure             `json:"figures"`
	Samples map[string][]float64 `json:"samples"`
	Values  map[string]float64   `json:"values"`
	Notes   []string             `json:"notes"`
	Error   string               `json:"error,omitempty"`
	log     *slog.Logger
}

func newReport(cfg Config, log *slog.Logger) *Report {
	return &Report{
		Started: time.Now().UTC(),
		Config:  cfg,
		Samples: map[string][]float64{},
		Values:  map[string]float64{},
		log:     log,
	}
}

func (r *Report) add(f Figure) {
	r.Figures = append(r.Figures, f)
	r.log.Info("figure", "name", f.Name, "measured", f.Measured, "ratio", f.Ratio, "status", f.Status)
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// sample records a duration under key (in ms).
func (r *Report) sample(key string, d time.Duration) {
	r.Samples[key] = append(r.Samples[key], ms(d))
}

// Failed reports whether any figure missed its goal.
func (r *Report) Failed() bool {
	for _, f := range r.Figures {
		if f.Status == Fail {
			return true
		}
	}
	return false
}

// Markdown renders the table and the notes.
func (r *Report) Markdown() string {
	var b strings.Builder
	b.WriteString("| figure | goal | measured | ratio | result |\n|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(f.Name), cell(f.Goal), cell(f.Measured), cell(f.Ratio), f.Status)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}

// cell keeps a table cell on one line and its pipes from ending it.
func cell(s string) string {
	if s == "" {
		return "–"
	}
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Stats summarises samples.
type Stats struct {
	N    int
	Min  float64
	P50  float64
	P95  float64
	Max  float64
	Mean float64
}

// Summarize computes nearest-rank percentiles (no interpolation, so every
// reported value is a sample that happened).
func Summarize(samples []float64) Stats {
	if len(samples) == 0 {
		return Stats{}
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return Stats{
		N:    len(s),
		Min:  s[0],
		P50:  percentile(s, 0.50),
		P95:  percentile(s, 0.95),
		Max:  s[len(s)-1],
		Mean: sum / float64(len(s)),
	}
}

// percentile of sorted samples, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// verdict is Pass when ok, else Fail.
func verdict(ok bool) Status {
	if ok {
		return Pass
	}
	return Fail
}

// fmtMS prints milliseconds with a precision that suits their size.
func fmtMS(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	default:
		return fmt.Sprintf("%.1f ms", v)
	}
}

func fmtBytes(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.0f KiB", v/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", v)
	}
}

// step is one measurement of a run.
type step struct {
	name string
	fn   func(context.Context) error
}

// Run does a whole benchmark and returns its report. On error the report
// holds what was measured before it; cleanup runs in every case, bounded by
// its own timeout even when ctx is already cancelled.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (rep *Report, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rep = newReport(cfg, log)
	rep.Machine = describeMachine(ctx)
	var undo cleanups
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if cerr := undo.run(cctx, log); cerr != nil {
			log.Error("cleanup was incomplete", "err", cerr)
			rep.note("cleanup was incomplete: %v", cerr)
			if err == nil {
				err = cerr
			}
		}
		rep.Seconds = time.Since(rep.Started).Seconds()
		if err != nil {
			rep.Error = err.Error()
		}
	}()
	e, err := setup(ctx, cfg, &undo, log)
	if err != nil {
		return rep, err
	}
	e.rep = rep
	e.undo = &undo
	follow := &followBench{e: e}
	steps := []step{
		{"image", e.makeImage},
		{"create vs floor", e.createVsFloor},
		{"reset vs create", e.resetVsCreate},
		{"save", e.saveImage},
		{"alternatives", e.alternatives},
		{"concurrent creates", e.concurrent},
		{"idle instances", e.idle},
		{"sweeper", e.sweeperCost},
		{"finalise alone", e.finaliseBaseline},
		{"anonymising finalise", e.anonymisingFinalise},
		{"uploads", e.uploads},
		{"sources", e.sources},
		{"follow", follow.small},
		{"large image", e.large},
		{"follow large", follow.large},
		{"warm pool", e.warmPool},
		{"forwarding", e.forwarding},
		{"shipping", e.shipping},
	}
	for _, name := range cfg.Only {
		if !slices.ContainsFunc(steps, func(s step) bool { return s.name == name }) {
			return rep, fmt.Errorf("no step is named %q", name)
		}
	}
	for _, step := range steps {
		if len(cfg.Only) > 0 && step.name != "image" && !slices.Contains(cfg.Only, step.name) {
			continue
		}
		log.Info("measuring", "step", step.name)
		if err := step.fn(ctx); err != nil {
			return rep, fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return rep, nil
}
