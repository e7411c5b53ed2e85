// Command draupnir-client is the command-line client of Draupnir: it runs the
// shared command tree (package cli) against a server's HTTP API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/cli"
	"github.com/draupnir-db/draupnir/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := cli.Env{Terminal: isTerminal(os.Stderr), Interactive: isTerminal(os.Stdin) && isTerminal(os.Stderr)}
	cfg, err := cli.LoadConfig(env)
	if err != nil {
		// Carry on with the environment and defaults: help and authenticate
		// must work to repair a broken configuration.
		fmt.Fprintf(os.Stderr, "draupnir-client: warning: %v\n", err)
	}
	env.Host = cli.HostOf(cfg.URL)
	code := cli.Run(ctx, cli.HTTPBackend(client.New(cfg.URL, cfg.Token)), env, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
