package diskspace

import (
	"errors"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

func TestReserve(t *testing.T) {
	tests := []struct {
		total, want int64
	}{
		{0, 64 << 20},
		{1 << 30, 64 << 20},          // 1% is below the floor
		{50 << 30, 512 << 20},        // 1%
		{1 << 40, 1 << 30},           // 1% is above the ceiling
		{(64 << 20) * 100, 64 << 20}, // at the floor exactly
	}
	for _, tt := range tests {
		if got := Reserve(tt.total); got != tt.want {
			t.Errorf("Reserve(%d) = %d, want %d", tt.total, got, tt.want)
		}
	}
}

func TestFullError(t *testing.T) {
	cause := errors.New("no room")
	err := Room{Free: 100 << 20, Reserve: 64 << 20}.FullError(cause)
	if draupnir.KindOf(err) != draupnir.KindInsufficientStorage || !errors.Is(err, cause) {
		t.Fatalf("got %v (kind %v), want an insufficient-storage error wrapping the cause", err, draupnir.KindOf(err))
	}
	if msg := draupnir.ClientMessage(err); !strings.Contains(msg, "100 MiB free") || !strings.Contains(msg, "64 MiB") {
		t.Errorf("the message does not say how full the disk is: %q", msg)
	}
}

func TestEnsure(t *testing.T) {
	// A temporary directory's filesystem has room, or the tests could not
	// run at all; a missing one cannot be measured.
	if err := Ensure(t.TempDir()); err != nil {
		t.Errorf("Ensure on a filesystem with room: %v", err)
	}
	if err := Ensure("/nonexistent/dir"); err == nil || draupnir.KindOf(err) == draupnir.KindInsufficientStorage {
		t.Errorf("Ensure on a missing directory: %v, want a plain error", err)
	}
}
