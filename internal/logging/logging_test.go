package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLogDurationsInMillis checks that durations reach the log as numbers
// of milliseconds under keys that say so, wherever they are attached.
func TestLogDurationsInMillis(t *testing.T) {
	var out bytes.Buffer
	log := New(&out, "test").With("timeout", 30*time.Second)
	log.Info("finalised", "duration", 1500*time.Microsecond, "took_ms", 2*time.Millisecond,
		slog.Group("job", "wait", 3*time.Second), "port", 6000, "tiny", time.Nanosecond)
	var rec map[string]any
	if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	want := map[string]any{"duration_ms": 1.5, "took_ms": 2.0, "timeout_ms": 30000.0, "port": 6000.0, "tiny_ms": 0.0}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s = %v (%T), want %v; record %s", k, rec[k], rec[k], v, out.String())
		}
	}
	if job, _ := rec["job"].(map[string]any); job["wait_ms"] != 3000.0 {
		t.Errorf("job = %v", rec["job"])
	}
	for _, k := range []string{"duration", "took_ms_ms", "timeout"} {
		if _, ok := rec[k]; ok {
			t.Errorf("record has %s: %s", k, out.String())
		}
	}

	// The text handler (a terminal) too.
	out.Reset()
	slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: durationMillis})).Info("x", "duration", 12345*time.Microsecond)
	if !strings.Contains(out.String(), " duration_ms=12.345\n") {
		t.Errorf("text record %q", out.String())
	}
}
