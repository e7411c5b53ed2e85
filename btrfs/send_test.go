package btrfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// sendPair makes, on a fresh btrfs, a read-only snapshot s1 of 8 MiB of
// random data and a read-only snapshot s2 of the same data with 1 MiB
// rewritten, and returns the mount point.
func sendPair(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	mnt := testenv.Btrfs(t, 1<<30)
	src := filepath.Join(mnt, "src")
	newSubvolume(t, src, map[string][]byte{"data": randomBytes(t, 8<<20)})
	if err := Snapshot(src, filepath.Join(mnt, "s1"), true); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(src, "data"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(t, 1<<20), 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := Snapshot(src, filepath.Join(mnt, "s2"), true); err != nil {
		t.Fatal(err)
	}
	return mnt
}

func TestSendReceive(t *testing.T) {
	mnt := sendPair(t)
	ctx := context.Background()
	dst := filepath.Join(mnt, "dst")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	var full bytes.Buffer
	if err := Send(ctx, filepath.Join(mnt, "s1"), "", &full); err != nil {
		t.Fatal(err)
	}
	if err := Receive(ctx, dst, &full); err != nil {
		t.Fatal(err)
	}
	// A received subvolume moved to another directory (which needs it
	// writable for a moment) still serves as the parent of the next.
	moved := filepath.Join(mnt, "moved")
	os.Mkdir(moved, 0o700)
	if err := SetReadOnly(filepath.Join(dst, "s1"), false); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dst, "s1"), filepath.Join(moved, "s1")); err != nil {
		t.Fatal(err)
	}
	if err := SetReadOnly(filepath.Join(moved, "s1"), true); err != nil {
		t.Fatal(err)
	}
	dst = moved
	var incr bytes.Buffer
	if err := Send(ctx, filepath.Join(mnt, "s2"), filepath.Join(mnt, "s1"), &incr); err != nil {
		t.Fatal(err)
	}
	// Only the rewritten MiB (and some metadata) travels.
	if n := incr.Len(); n > 3<<20/2 || n < 1<<20 {
		t.Errorf("incremental stream is %d bytes for a 1 MiB change", n)
	}
	if err := Receive(ctx, dst, &incr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s1", "s2"} {
		got, err := os.ReadFile(filepath.Join(dst, name, "data"))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(mnt, name, "data"))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: received data differ from sent", name)
		}
		if ro, err := IsReadOnly(filepath.Join(dst, name)); err != nil || !ro {
			t.Errorf("%s: received subvolume read-only = %v, %v; want true", name, ro, err)
		}
	}
}

func TestReceiveCutStream(t *testing.T) {
	mnt := sendPair(t)
	ctx := context.Background()
	var full bytes.Buffer
	if err := Send(ctx, filepath.Join(mnt, "s1"), "", &full); err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 100, full.Len() / 2, full.Len() - 1} {
		dst := t.TempDir()
		dst = filepath.Join(mnt, filepath.Base(dst))
		if err := os.Mkdir(dst, 0o700); err != nil {
			t.Fatal(err)
		}
		err := Receive(ctx, dst, bytes.NewReader(full.Bytes()[:cut]))
		if err == nil {
			t.Errorf("cut at %d of %d: Receive succeeded", cut, full.Len())
		}
		// Whatever arrived is not a finished (read-only) subvolume.
		if ro, _ := IsReadOnly(filepath.Join(dst, "s1")); ro {
			t.Errorf("cut at %d: a read-only subvolume arrived", cut)
		}
	}
}

func TestSendReceiveCancel(t *testing.T) {
	mnt := sendPair(t)
	dst := filepath.Join(mnt, "dst")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Receive(ctx, dst, r) }()
	// A stream that never ends: the context ends the process.
	w.Write([]byte("btrfs-stream"))
	cancel()
	if err := <-done; err == nil {
		t.Error("Receive of a stalled stream returned nil after cancel")
	}
	w.Close()
	// A stream whose source fails before its end marker (the last 10
	// bytes) is refused whatever btrfs receive made of what came before.
	dst2 := filepath.Join(mnt, "dst2")
	if err := os.Mkdir(dst2, 0o700); err != nil {
		t.Fatal(err)
	}
	var full bytes.Buffer
	if err := Send(context.Background(), filepath.Join(mnt, "s1"), "", &full); err != nil {
		t.Fatal(err)
	}
	if err := Receive(context.Background(), dst2, io.MultiReader(bytes.NewReader(full.Bytes()[:full.Len()-10]), iotest.ErrReader(errors.New("connection lost")))); err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Errorf("Receive of a stream whose reader failed = %v, want the read error", err)
	}
	if err := Send(ctx, filepath.Join(mnt, "s1"), "", io.Discard); err == nil {
		t.Error("Send with an ended context succeeded")
	}
}
