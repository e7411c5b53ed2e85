package metrics

import (
	"context"
	"log/slog"
)

// LogHandler wraps h so that every record at warning level or above is
// counted in draupnir_log_records_total before h handles it. With a nil m it
// returns h.
func (m *Metrics) LogHandler(h slog.Handler) slog.Handler {
	if m == nil {
		return h
	}
	return &countingHandler{h: h, m: m}
}

type countingHandler struct {
	h slog.Handler
	m *Metrics
}

func (c *countingHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || c.h.Enabled(ctx, l)
}

func (c *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	switch {
	case r.Level >= slog.LevelError:
		c.m.logRecords.WithLabelValues("error").Inc()
	case r.Level >= slog.LevelWarn:
		c.m.logRecords.WithLabelValues("warn").Inc()
	}
	if !c.h.Enabled(ctx, r.Level) {
		return nil
	}
	return c.h.Handle(ctx, r)
}

func (c *countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &countingHandler{h: c.h.WithAttrs(as), m: c.m}
}

func (c *countingHandler) WithGroup(name string) slog.Handler {
	return &countingHandler{h: c.h.WithGroup(name), m: c.m}
}
