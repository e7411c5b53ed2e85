package main

import (
	"context"
	"log/slog"

	"github.com/draupnir-db/draupnir/config"
)

// startSSH starts the SSH door when ssh.port is set and returns its stop func.
func startSSH(ctx context.Context, cfg *config.Config, c *core, log *slog.Logger) (func(context.Context), error) {
	return func(context.Context) {}, nil
}
