package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/cli"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/sshd"
)

// startSSH starts the SSH door when ssh.port is set and returns its stop
// func. SSH sessions run the same command tree as draupnir-client, in
// process, as the principal of the verified key.
// keys maps verified keys to principals: the configured key files and the
// keys people registered.
func startSSH(ctx context.Context, cfg *config.Config, c *core, keys sshd.Keys, log *slog.Logger) (func(context.Context), error) {
	if cfg.SSH.Port == 0 {
		return func(context.Context) {}, nil
	}
	hostKey := c.hostKeyPath()
	sshLog := log.With("component", "ssh")
	keys, nodeRunner := c.sshNodes(keys)
	srv, err := sshd.New(sshd.Options{
		HostKeyPath:    hostKey,
		Uploads:        c.doorImages,
		Keys:           keys,
		Node:           nodeRunner,
		Commands:       sshCommands(cfg, c, sshLog),
		IdleTimeout:    cfg.SSH.IdleTimeout.Duration,
		MaxTimeout:     cfg.SSH.MaxTimeout.Duration,
		MaxConnections: cfg.SSH.MaxConnections,
		Log:            sshLog,
	})
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(cfg.SSH.Address, strconv.Itoa(cfg.SSH.Port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, sshd.ErrServerClosed) {
			sshLog.Error("ssh server stopped", "err", err)
		}
	}()
	// The server logs "ssh server listening", with the host key's
	// fingerprint, as it starts serving.
	return func(ctx context.Context) { srv.Shutdown(ctx) }, nil
}

// sshCommands runs the command tree of an SSH session in process, on the
// core's services as the doors see them, as p, the principal of the
// session's verified key.
func sshCommands(cfg *config.Config, c *core, log *slog.Logger) sshd.CommandRunner {
	return func(ctx context.Context, p draupnir.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
		env := cli.Env{SSH: true, Name: "draupnir", Logger: log, Host: cfg.PublicHostname, SSHPort: cfg.SSH.Port}
		if p.Upload {
			env.SSHUser = draupnir.UploadPrincipal
		}
		b := cli.Backend{
			Images:        c.doorImages,
			Instances:     c.doorInstances,
			Sources:       c.sources,
			Uploads:       c.doorImages,
			Nodes:         c.doorNodes(),
			Principal:     p,
			ServerVersion: func(context.Context) (string, error) { return draupnir.Version, nil }, // the core is the server
		}
		return cli.Run(ctx, b, env, args, stdin, stdout, stderr)
	}
}
