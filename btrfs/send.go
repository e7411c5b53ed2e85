package btrfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Send writes the send stream of the read-only subvolume snap to w (`btrfs
// send`); with parent not "", the stream is incremental against that
// read-only subvolume, which the receiving side must hold too. The process
// ends with ctx; a w that blocks holds Send until it returns.
func Send(ctx context.Context, snap, parent string, w io.Writer) error {
	args := []string{"send", "-q"}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	args = append(args, snap)
	cmd := exec.CommandContext(ctx, "btrfs", args...)
	stderr := &tailBuffer{max: 4 << 10}
	cmd.Stderr = stderr
	out, pw, err := bigPipe()
	if err != nil {
		return fmt.Errorf("btrfs send %s: %w", snap, err)
	}
	defer out.Close()
	cmd.Stdout = pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("btrfs send %s: %w", snap, err)
	}
	// Copied here rather than by exec, so that a failing w stops the
	// process at once instead of leaving it blocked on a full pipe.
	_, copyErr := io.CopyBuffer(onlyWriter{w}, onlyReader{out}, make([]byte, copyBuffer))
	if copyErr != nil {
		cmd.Process.Kill()
	}
	err = cmd.Wait()
	if copyErr != nil {
		return fmt.Errorf("btrfs send %s: writing the stream: %w", snap, copyErr)
	}
	if err != nil {
		return fmt.Errorf("btrfs send %s: %w%s", snap, commandError(ctx, err), stderr.suffix())
	}
	return nil
}

// copyBuffer and pipeSize are sized for streams of hundreds of MiB: fewer,
// larger reads and writes between btrfs and the network.
const (
	copyBuffer = 1 << 20
	pipeSize   = 1 << 20
)

// bigPipe returns a pipe grown to pipeSize where the system allows it.
func bigPipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	// Best effort: the limit is /proc/sys/fs/pipe-max-size.
	unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, pipeSize)
	return r, w, nil
}

// onlyReader and onlyWriter hide a file's ReadFrom and WriteTo, so that
// io.CopyBuffer uses the buffer it is given.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// Receive reads a send stream from r into the directory dir (`btrfs receive`),
// confined to dir by chroot: a stream names its own paths and may create any
// file below its target, so dir should be private to root and empty, and the
// caller checks what arrived before using it. The stream's subvolume is made
// read-only only when its stream ends: a stream that stops before its end
// marker fails (-e), as does a read error of r; the caller should still know
// that the sender finished before it trusts what arrived. The process
// ends with ctx, and Receive returns when it has, even if a read of r is
// still blocked (the caller then closes what r reads from).
func Receive(ctx context.Context, dir string, r io.Reader) error {
	// -e: stop at the stream's end marker rather than wait for EOF;
	// -E 1: stop at the first failed command.
	cmd := exec.CommandContext(ctx, "btrfs", "receive", "-q", "-e", "-E", "1", "-C", dir)
	stderr := &tailBuffer{max: 4 << 10}
	cmd.Stderr = stderr
	pr, in, err := bigPipe()
	if err != nil {
		return fmt.Errorf("btrfs receive into %s: %w", dir, err)
	}
	cmd.Stdin = pr
	err = cmd.Start()
	pr.Close()
	if err != nil {
		in.Close()
		return fmt.Errorf("btrfs receive into %s: %w", dir, err)
	}
	var readErr errorOnce
	go func() {
		// Not waited for: a read of r may block until the caller closes
		// its source. A read error is recorded before the pipe closes,
		// so before btrfs receive can see the end of its input.
		io.CopyBuffer(onlyWriter{in}, onlyReader{readErrors{r, &readErr}}, make([]byte, copyBuffer))
		in.Close()
	}()
	err = cmd.Wait()
	if rerr := readErr.get(); rerr != nil {
		return fmt.Errorf("btrfs receive into %s: reading the stream: %w", dir, rerr)
	}
	if err != nil {
		return fmt.Errorf("btrfs receive into %s: %w%s", dir, commandError(ctx, err), stderr.suffix())
	}
	return nil
}

// readErrors records the first read error of r other than io.EOF.
type readErrors struct {
	r   io.Reader
	err *errorOnce
}

func (e readErrors) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		e.err.set(err)
	}
	return n, err
}

type errorOnce struct {
	mu  sync.Mutex
	err error
}

func (e *errorOnce) set(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = err
	}
}

func (e *errorOnce) get() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// commandError prefers the context's error to the "signal: killed" of a
// process that the context ended.
func commandError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// tailBuffer keeps the last max bytes written to it: a process's stderr,
// for the error, without letting a chatty process grow it without bound.
type tailBuffer struct {
	max int
	buf bytes.Buffer
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > b.max {
		p = p[len(p)-b.max:]
	}
	if over := b.buf.Len() + len(p) - b.max; over > 0 {
		b.buf.Next(over)
	}
	b.buf.Write(p)
	return n, nil
}

// suffix is the process's messages as ": …" for an error, leaving out
// btrfs receive's note of its chroot.
func (b *tailBuffer) suffix() string {
	var lines []string
	for _, l := range strings.Split(b.buf.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Chroot to ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return ": " + strings.Join(lines, "; ")
}
