package testenv

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestTreeSums checks that TreeSums tells trees apart by content, mode,
// a missing entry and a symbolic link's type, and finds copies equal.
func TestTreeSums(t *testing.T) {
	t.Parallel()
	tree := func(t *testing.T) string {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"a", "sub/b"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("data "+f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name   string
		change func(dir string) error
		same   bool
	}{
		{"copy", func(string) error { return nil }, true},
		{"content", func(dir string) error { return os.WriteFile(filepath.Join(dir, "sub/b"), []byte("data sub/c"), 0o644) }, false},
		{"mode", func(dir string) error { return os.Chmod(filepath.Join(dir, "a"), 0o600) }, false},
		{"directory mode", func(dir string) error { return os.Chmod(filepath.Join(dir, "sub"), 0o700) }, false},
		{"missing", func(dir string) error { return os.Remove(filepath.Join(dir, "a")) }, false},
		{"symbolic link", func(dir string) error {
			p := filepath.Join(dir, "a")
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("sub/b", p)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, got := tree(t), tree(t)
			if err := tt.change(got); err != nil {
				t.Fatal(err)
			}
			if same := reflect.DeepEqual(TreeSums(t, want), TreeSums(t, got)); same != tt.same {
				t.Errorf("trees equal = %v, want %v", same, tt.same)
			}
		})
	}
}
