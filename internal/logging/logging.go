// Package logging builds the server's structured logger: text on a
// terminal and JSON otherwise, every record tagged with the environment,
// durations in milliseconds; and, when a Sentry DSN is configured, a handler
// that also reports errors to Sentry with secrets masked. It keeps no global
// state: what it builds reaches only the logger it is given to.
package logging

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// New logs to w, as text on a terminal and JSON otherwise, tagged with the
// environment, with durations in milliseconds. Each wrap, in order, wraps
// the handler (to count records, to report errors to Sentry) before the
// environment attribute is added, so that the wrappers see it too.
func New(w io.Writer, environment string, wrap ...func(slog.Handler) slog.Handler) *slog.Logger {
	var h slog.Handler
	opts := &slog.HandlerOptions{ReplaceAttr: durationMillis}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	for _, wr := range wrap {
		h = wr(h)
	}
	return slog.New(h).With("environment", environment)
}

// durationMillis logs a time.Duration as a number of milliseconds under a
// key that says so ("duration" becomes "duration_ms": 12.345): slog's JSON
// handler would write nanoseconds and its text handler Go's "12.345ms",
// neither of which a log query can compare or sum.
func durationMillis(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindDuration {
		return a
	}
	key := a.Key
	if !strings.HasSuffix(key, "_ms") {
		key += "_ms"
	}
	return slog.Float64(key, float64(a.Value.Duration().Microseconds())/1000)
}
