package sshd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netns is a private network namespace with only a loopback device, where a
// test can give itself any addresses (an IPv6 /64 full of them, say)
// without touching the machine's network.
type netns struct {
	path string // /proc/<pid>/ns/net of a process that keeps it alive
}

// newNetns starts a network namespace or skips the test when the machine
// cannot make one (no root, no unshare).
func newNetns(t *testing.T) *netns {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "unshare", "--net", "sleep", "3600")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Skipf("no network namespace: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-exited })
	ns := &netns{path: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)}
	// unshare switches namespace and then execs sleep: wait for that.
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Skipf("no network namespace: unshare: %v", err)
		default:
		}
		if l, err := os.Readlink(ns.path); err == nil && l != self {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if out, err := exec.Command("nsenter", "--net="+ns.path, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Skipf("cannot configure a network namespace: %v: %s", err, out)
	}
	return ns
}

// addAddrs gives the namespace's loopback the addresses (IPv6 without
// duplicate address detection, so they are usable at once).
func (ns *netns) addAddrs(t *testing.T, addrs ...string) {
	t.Helper()
	var batch strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&batch, "addr add %s dev lo nodad\n", a)
	}
	cmd := exec.Command("nsenter", "--net="+ns.path, "ip", "-6", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
}

// do runs f with the sockets it creates inside ns (nil: here). The thread
// that entered ns is never given back to the runtime: a goroutine that ends
// while locked to its thread takes the thread with it.
func (ns *netns) do(f func() error) error {
	if ns == nil {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(ns.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
