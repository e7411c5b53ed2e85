package logging

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/getsentry/sentry-go"

	"github.com/draupnir-db/draupnir"
)

// NewSentry returns a Sentry client for dsn that tags events with the
// environment and the server's version. It keeps no global state: the
// client reaches Sentry only through the SentryHandler that New wraps around
// the server's logs.
func NewSentry(dsn, environment string) (*sentry.Client, error) {
	c, err := sentry.NewClient(sentry.ClientOptions{
		Dsn:         dsn,
		Environment: environment,
		Release:     "draupnir@" + draupnir.Version,
		// No request data, user IPs or cookies: events carry only what the
		// log record says, with secrets masked.
		SendDefaultPII: false,
	})
	if err != nil {
		return nil, fmt.Errorf("sentry_dsn: %w", err)
	}
	return c, nil
}

// sentryHandler passes every record to next and also reports records at
// error level or above to Sentry as events. Attributes travel as the event's
// "log" context (the "component" attribute also as a tag); attributes whose
// key names a secret are masked, and an error attribute becomes the event's
// exception.
type sentryHandler struct {
	next   slog.Handler
	hub    *sentry.Hub
	attrs  []slog.Attr // from WithAttrs, keys already qualified by their groups
	groups string      // "a.b." prefix for the attributes of later records
}

// SentryHandler wraps next; records below slog.LevelError only go to next.
func SentryHandler(next slog.Handler, client *sentry.Client) slog.Handler {
	return &sentryHandler{next: next, hub: sentry.NewHub(client, sentry.NewScope())}
}

func (h *sentryHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.next.Enabled(ctx, l)
}

func (h *sentryHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.next.Enabled(ctx, r.Level) {
		err = h.next.Handle(ctx, r)
	}
	if r.Level >= slog.LevelError {
		h.hub.CaptureEvent(h.event(r))
	}
	return err
}

func (h *sentryHandler) event(r slog.Record) *sentry.Event {
	ev := sentry.NewEvent()
	ev.Level = sentry.LevelError
	ev.Message = r.Message
	ev.Logger = "slog"
	if !r.Time.IsZero() {
		ev.Timestamp = r.Time
	}
	fields := map[string]any{}
	add := func(prefix string, a slog.Attr) {
		addAttr(fields, prefix, a, func(err error) {
			if len(ev.Exception) == 0 {
				ev.SetException(err, 5)
			}
		})
	}
	for _, a := range h.attrs {
		add("", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		add(h.groups, a)
		return true
	})
	if c, ok := fields["component"].(string); ok {
		ev.Tags = map[string]string{"component": c}
	}
	if len(fields) > 0 {
		ev.Contexts = map[string]sentry.Context{"log": fields}
	}
	return ev
}

// addAttr flattens a into fields under prefix+key, masking secrets and
// handing error values to onErr.
func addAttr(fields map[string]any, prefix string, a slog.Attr, onErr func(error)) {
	v := a.Value.Resolve()
	if a.Key == "" && v.Kind() != slog.KindGroup {
		return
	}
	key := prefix + a.Key
	if secretKey(a.Key) {
		fields[key] = "[masked]"
		return
	}
	switch v.Kind() {
	case slog.KindGroup:
		p := prefix
		if a.Key != "" {
			p = key + "."
		}
		for _, g := range v.Group() {
			addAttr(fields, p, g, onErr)
		}
	case slog.KindDuration:
		fields[key] = v.Duration().String()
	case slog.KindTime:
		fields[key] = v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			onErr(err)
			fields[key] = err.Error()
			return
		}
		fields[key] = fmt.Sprint(v.Any())
	default:
		fields[key] = v.Any()
	}
}

// secretKey reports whether an attribute key names something that must
// never leave the server.
func secretKey(key string) bool {
	k := strings.ToLower(key)
	for _, s := range []string{"password", "secret", "token", "dsn", "authorization", "private", "cookie", "credential"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

func (h *sentryHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		if h.groups != "" {
			a.Key = h.groups + a.Key
		}
		c.attrs = append(c.attrs, a)
	}
	return &c
}

func (h *sentryHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.groups = h.groups + name + "."
	return &c
}
