package standby

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClip(t *testing.T) {
	long := strings.Repeat("a", maxError) + "tail"
	if got := clip(long); len(got) > maxError+len(" … ") || !strings.HasSuffix(got, "tail") || !strings.HasPrefix(got, "aaa") {
		t.Errorf("clip kept %d bytes (%q…), want at most %d with both ends", len(got), got[:10], maxError)
	}
	if got := clip("short"); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
}

// TestWalGone reads the standby's log for the one failure postgres cannot
// get over by retrying.
func TestWalGone(t *testing.T) {
	const (
		started = "2026-11-30 12:00:00.000 GMT [1] LOG:  started streaming WAL from primary at 0/1F000000 on timeline 1\n"
		removed = "2026-11-30 12:00:00.001 GMT [1] FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 00000001000000000000001F has already been removed\n"
		refused = "2026-11-30 12:00:00.001 GMT [1] FATAL:  could not connect to the primary server: connection refused\n"
		other   = "2026-11-30 12:00:00.002 GMT [2] LOG:  waiting for WAL to become available at 0/1F2C4018\n"
		ready   = "2026-11-30 12:00:01.000 GMT [3] LOG:  database system is ready to accept read-only connections\n"
		lost    = "2026-11-30 12:00:00.001 GMT [1] FATAL:  could not receive data from WAL stream: server closed the connection unexpectedly\n"
	)
	for _, tt := range []struct {
		name, log string
		want      bool
	}{
		{"removed", started + removed + other, true},
		{"removed, retried, removed", started + removed + other + started + removed, true},
		{"streaming again", started + removed + other + started, false},
		{"restarted since", started + removed + ready, false},
		{"source down", refused + other, false},
		{"connection lost", started + lost + other, false},
		{"empty", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "postgres.log")
			if err := os.WriteFile(path, []byte(tt.log), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := walGone(path); got != tt.want {
				t.Errorf("walGone = %v, want %v", got, tt.want)
			}
		})
	}
	if walGone(filepath.Join(t.TempDir(), "missing")) {
		t.Error("walGone of a missing log = true")
	}
}
