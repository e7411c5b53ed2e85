// Command draupnir is the Draupnir server: it serves the HTTP API and the SSH
// door over one btrfs/postgres core. Sub-commands: serve (the default),
// migrate, setup and version.
//
// It only wires the other packages together. Read main.go for the commands,
// core.go for how the core is opened (data path, state database, image and
// instance services) and closed, and serve.go for the doors put in front of
// it; ops.go, observe.go, people.go and ssh.go build the metrics and logs,
// the measured services, authentication and the SSH door.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/internal/logging"
)

const usage = `usage: draupnir [--config FILE] [command]

Commands:
  serve     run the server (the default)
  migrate   apply the state database's migrations and exit
  setup     make a data path usable: loop-mount a btrfs file there if it is not on btrfs
  version   print the version

The configuration is read from --config, $DRAUPNIR_CONFIG or /etc/draupnir/config.toml;
DRAUPNIR_<SECTION>_<KEY> environment variables override it (e.g. DRAUPNIR_DATA_PATH).
Run "draupnir COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("draupnir", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	configPath := global.String("config", "", "configuration file")
	if err := global.Parse(args); err != nil {
		return 2
	}
	args = global.Args()
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd {
	case "serve":
		err = serveCmd(ctx, *configPath, args, stdout, stderr)
	case "migrate":
		err = migrateCmd(ctx, *configPath, args, stdout, stderr)
	case "setup":
		err = setupCmd(ctx, *configPath, args, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "draupnir %s\n", draupnir.Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "draupnir: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "draupnir %s: %v\n", cmd, err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "draupnir %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

type usageError struct{ error }

// loadConfig reads the configuration; only an explicitly named file must exist.
func loadConfig(explicit string) (*config.Config, error) {
	path := config.Path(explicit)
	return config.Load(path, path == config.DefaultPath, os.Environ())
}

// setupCmd makes a data path usable: if it is not on btrfs, it loop-mounts
// a btrfs file there.
func setupCmd(ctx context.Context, configPath string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataPath := fs.String("data-path", "", "the data path to prepare (default: data_path from the configuration)")
	size := fs.String("size", "20G", "size of the btrfs file to create when the data path is not on btrfs")
	image := fs.String("image", "", "where to put the btrfs file (default: DATA_PATH.btrfs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *dataPath == "" {
		cfg, err := loadConfig(configPath)
		if err != nil {
			return err
		}
		*dataPath = cfg.DataPath
	}
	n, err := btrfs.ParseSize(*size)
	if err != nil {
		return usageError{fmt.Errorf("--size: %w", err)}
	}
	if *image == "" {
		*image = *dataPath + ".btrfs"
	}
	hint, err := btrfs.SetupLoop(ctx, *dataPath, *image, n)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s is ready (btrfs).\n", *dataPath)
	if hint != "" {
		fmt.Fprintln(stdout, hint)
	}
	return nil
}

// migrateCmd brings the state database's schema up to date and exits.
func migrateCmd(ctx context.Context, configPath string, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.Environment)
	c, err := openCore(ctx, cfg, log, false, nil, nil)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	fmt.Fprintln(stdout, "the state database is up to date")
	return nil
}
