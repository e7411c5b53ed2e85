// Command draupnir-bench is Draupnir's performance harness (`make bench`).
// It mounts a loop btrfs of its own, runs a real draupnir serve on it,
// measures what DESIGN.md §6 promises, prints a markdown table and writes
// every raw sample as JSON. It needs root and cleans up after itself, also
// on Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/draupnir-db/draupnir/bench"
	"github.com/draupnir-db/draupnir/btrfs"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg := bench.Defaults()
	flag.StringVar(&cfg.Server, "server", "bin/draupnir", "draupnir server binary (empty: go build ./cmd/draupnir)")
	flag.IntVar(&cfg.Scale, "scale", cfg.Scale, "pgbench scale of the main image (70 ≈ 1 GiB on disk)")
	gib := flag.Bool("gib", false, "use a ~1 GiB image (pgbench scale 70), the size the goals are stated for")
	flag.IntVar(&cfg.WarmPool, "warm-pool", cfg.WarmPool, "instances.warm_pool for the warm-pool series (0: skip)")
	flag.IntVar(&cfg.LargeScale, "large-scale", cfg.LargeScale, "pgbench scale of a larger image for the size-independence figure (0: skip; 10× -scale is the goal's)")
	flag.IntVar(&cfg.Samples, "samples", cfg.Samples, "timed creates, and floor starts")
	flag.IntVar(&cfg.CompareSamples, "compare-samples", cfg.CompareSamples, "timed CREATE DATABASE … TEMPLATE and dump/restore runs of each kind")
	flag.IntVar(&cfg.Idle, "idle", cfg.Idle, "idle instances held at once (the goal is stated for 100)")
	flag.IntVar(&cfg.Concurrent, "concurrent", cfg.Concurrent, "creates started at once")
	flag.IntVar(&cfg.SweeperInstances, "sweeper", cfg.SweeperInstances, "idle instances the sweeper's CPU cost is measured with (the goal is stated for 200)")
	flag.DurationVar(&cfg.SweeperWindow, "sweeper-window", cfg.SweeperWindow, "how long the sweeper's CPU is measured, on and off (the goal says a minute)")
	flag.IntVar(&cfg.ListSamples, "list-samples", cfg.ListSamples, "timed GET /instances")
	flag.IntVar(&cfg.PortBase, "port-base", cfg.PortBase, "first instance port")
	disk := flag.String("disk", "", "size of the loop btrfs, e.g. 20G (default: from the scales)")
	flag.StringVar(&cfg.ServerLog, "server-log", "", "copy the server's log here at the end")
	out := flag.String("out", "bench-results.json", "where to write the JSON report")
	check := flag.Bool("check", false, "exit 1 when a goal is missed")
	only := flag.String("only", "", `run only these steps, comma-separated (e.g. "reset vs create"; the image is always made)`)
	verbose := flag.Bool("v", false, "log the server's supervisor debug lines too")
	flag.Parse()
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	if *gib {
		cfg.Scale = 70
	}
	if *disk != "" {
		n, err := btrfs.ParseSize(*disk)
		if err != nil {
			fmt.Fprintf(os.Stderr, "draupnir-bench: -disk: %v\n", err)
			return 2
		}
		cfg.DiskBytes = n
	}
	if cfg.Server != "" {
		if _, err := os.Stat(cfg.Server); err != nil {
			fmt.Fprintf(os.Stderr, "draupnir-bench: %v (run make build, or pass -server '' to build it)\n", err)
			return 2
		}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// A signal cancels the run; cleanup still unmounts and stops everything.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	rep, err := bench.Run(ctx, cfg, log)
	if rep == nil {
		fmt.Fprintf(os.Stderr, "draupnir-bench: %v\n", err)
		return 2
	}
	fmt.Println(rep.Markdown())
	if werr := writeJSON(*out, rep); werr != nil {
		fmt.Fprintf(os.Stderr, "draupnir-bench: %v\n", werr)
		err = errors.Join(err, werr)
	} else {
		fmt.Fprintf(os.Stderr, "raw samples written to %s\n", *out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "draupnir-bench: %v\n", err)
		return 1
	}
	if *check && rep.Failed() {
		fmt.Fprintln(os.Stderr, "draupnir-bench: some goals were missed")
		return 1
	}
	return 0
}

func writeJSON(path string, rep *bench.Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	return nil
}
