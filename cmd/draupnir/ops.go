package main

import (
	"io"
	"log/slog"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/internal/logging"
	"github.com/draupnir-db/draupnir/metrics"
)

// newOps builds the server's operations kit: its metrics, and its logger,
// which counts warnings and errors in the metrics and, when sentry_dsn is
// set, reports errors to Sentry. The returned func flushes what is still on
// its way to Sentry; call it last.
func newOps(cfg *config.Config, stderr io.Writer) (*slog.Logger, *metrics.Metrics, func(), error) {
	m := metrics.New(metrics.Options{
		DataPath: cfg.DataPath,
		MinPort:  cfg.Instances.MinPort,
		MaxPort:  cfg.Instances.MaxPort,
	})
	wrap := []func(slog.Handler) slog.Handler{m.LogHandler}
	closeFn := func() {}
	if cfg.SentryDSN != "" {
		client, err := logging.NewSentry(cfg.SentryDSN, cfg.Environment)
		if err != nil {
			return nil, nil, nil, err
		}
		wrap = append(wrap, func(h slog.Handler) slog.Handler { return logging.SentryHandler(h, client) })
		closeFn = func() { client.Flush(5 * time.Second) }
	}
	log := logging.New(stderr, cfg.Environment, wrap...)
	if cfg.SentryDSN != "" {
		log.Info("reporting errors to sentry") // never the DSN: it holds a key
	}
	return log, m, closeFn, nil
}

// observed returns the services as the doors should see them: measured.
func (c *core) observed(m *metrics.Metrics) (imageService, draupnir.InstanceService) {
	return newObservedImages(c.placedImages(), m), observedInstances{c.placed(), m}
}
