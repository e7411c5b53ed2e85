package draupnir

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
)

func TestStorageError(t *testing.T) {
	full := Errorf(KindInsufficientStorage, "the disk is full; free some space")
	tests := []struct {
		name string
		err  error
		kind Kind
		msg  string
	}{
		{"ENOSPC", fmt.Errorf("writing x: %w", syscall.ENOSPC), KindInsufficientStorage, "the data path is full"},
		{"EDQUOT", fmt.Errorf("writing x: %w", syscall.EDQUOT), KindInsufficientStorage, "the data path is full"},
		{"already classified keeps its message", full, KindInsufficientStorage, "the disk is full; free some space"},
		{"other errors pass through", errors.New("boom"), KindInternal, "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := StorageError(tt.err)
			if KindOf(got) != tt.kind || got.Error() != tt.msg {
				t.Errorf("StorageError(%v) = %v (kind %v); want %q, kind %v", tt.err, got, KindOf(got), tt.msg, tt.kind)
			}
			if !errors.Is(got, tt.err) && got != tt.err {
				t.Errorf("the cause is lost")
			}
		})
	}
}
