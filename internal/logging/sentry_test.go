package logging

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSentry is a Sentry endpoint that keeps the events it receives.
type fakeSentry struct {
	mu     sync.Mutex
	events []map[string]any
	raw    []string
}

func (f *fakeSentry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		body = zr
	}
	b, _ := io.ReadAll(body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.raw = append(f.raw, string(b))
	// An envelope: a header line, then item header and payload lines.
	lines := bytes.Split(b, []byte("\n"))
	for i := 1; i+1 < len(lines); i += 2 {
		var item struct{ Type string }
		if json.Unmarshal(lines[i], &item) == nil && item.Type == "event" {
			var ev map[string]any
			if err := json.Unmarshal(lines[i+1], &ev); err == nil {
				f.events = append(f.events, ev)
			}
		}
	}
	w.Write([]byte(`{"id":"00000000000000000000000000000000"}`))
}

func (f *fakeSentry) snapshot() ([]map[string]any, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.events...), strings.Join(f.raw, "\n")
}

func TestSentryHandler(t *testing.T) {
	fake := &fakeSentry{}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	dsn := strings.Replace(srv.URL, "http://", "http://publickey@", 1) + "/42"

	client, err := NewSentry(dsn, "staging")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	log := New(&out, "staging", func(h slog.Handler) slog.Handler { return SentryHandler(h, client) })
	log = log.With("component", "instances", "shared_secret", "s3cr3t-shared").WithGroup("job")
	log.Info("an info record stays local", "n", 1)
	log.Warn("so does a warning")
	log.Error("restarting instance 7 failed",
		"err", errors.New("postgres exited: could not bind to port 6001"),
		"instance", 7,
		"password", "hunter2-instance-password",
		slog.Group("db", "token", "tok-123", "port", 6001),
		"took", 1500*time.Millisecond)
	if !client.Flush(10 * time.Second) {
		t.Fatal("sentry flush timed out")
	}

	// The local log has every record (the JSON handler: out is no terminal).
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Errorf("local log has %d lines, want 3:\n%s", n, out.String())
	}
	events, raw := fake.snapshot()
	if len(events) != 1 {
		t.Fatalf("sentry received %d events, want 1 (only the error):\n%s", len(events), raw)
	}
	ev := events[0]
	if ev["message"] != "restarting instance 7 failed" {
		t.Errorf("message = %v", ev["message"])
	}
	if ev["environment"] != "staging" {
		t.Errorf("environment = %v", ev["environment"])
	}
	if ev["level"] != "error" {
		t.Errorf("level = %v", ev["level"])
	}
	if tags, _ := ev["tags"].(map[string]any); tags["component"] != "instances" {
		t.Errorf("tags = %v, want component=instances", ev["tags"])
	}
	ctxs, _ := ev["contexts"].(map[string]any)
	fields, _ := ctxs["log"].(map[string]any)
	wantFields := map[string]any{
		"environment":   "staging",
		"component":     "instances",
		"job.instance":  float64(7),
		"job.db.port":   float64(6001),
		"job.took":      "1.5s",
		"job.password":  "[masked]",
		"job.db.token":  "[masked]",
		"shared_secret": "[masked]",
		"job.err":       "postgres exited: could not bind to port 6001",
	}
	for k, v := range wantFields {
		if fields[k] != v {
			t.Errorf("log context %q = %#v, want %#v", k, fields[k], v)
		}
	}
	exc, _ := ev["exception"].([]any)
	if len(exc) == 0 || !strings.Contains(raw, "could not bind to port 6001") {
		t.Errorf("the error did not become the event's exception: %v", ev["exception"])
	}
	for _, secret := range []string{"hunter2-instance-password", "s3cr3t-shared", "tok-123"} {
		if strings.Contains(raw, secret) {
			t.Errorf("a secret reached sentry: %q", secret)
		}
	}
}

func TestSentryBadDSN(t *testing.T) {
	if _, err := NewSentry("not a dsn", "test"); err == nil || !strings.Contains(err.Error(), "sentry_dsn") {
		t.Errorf("NewSentry(bad DSN) = %v, want an error naming sentry_dsn", err)
	}
}

func TestSecretKey(t *testing.T) {
	tests := []struct {
		key  string
		want bool
	}{
		{"password", true}, {"PGPASSWORD", true}, {"shared_secret", true}, {"client_secret", true},
		{"token", true}, {"access_token", true}, {"sentry_dsn", true}, {"Authorization", true},
		{"tls_private_key", true}, {"err", false}, {"instance", false}, {"port", false}, {"path", false},
	}
	for _, tt := range tests {
		if got := secretKey(tt.key); got != tt.want {
			t.Errorf("secretKey(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}
