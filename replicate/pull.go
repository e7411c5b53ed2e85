package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/diskspace"
	"github.com/draupnir-db/draupnir/sshd"
)

// minStreamLimit is the least a stream may carry, whatever the image's
// recorded size: metadata alone can outweigh a tiny image's data.
const minStreamLimit = 256 << 20

// pull receives image c from peer src into this node's snapshots, and
// returns how many stream bytes it read.
func (r *Replicator) pull(ctx context.Context, src Peer, c candidate, parent int64, attempt int) (int64, error) {
	// As for uploads, the data path's reserve stays free: a whole image
	// needs its size above it before it starts, and no stream may go past
	// it.
	room, err := diskspace.Of(r.opts.ReceiveDir)
	if err != nil {
		return 0, err
	}
	need := int64(0)
	if parent == 0 {
		need = c.Size
	}
	if room.Avail() <= need {
		return 0, room.FullError(nil)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tmp := r.receiveDir(c.ID)
	if err := r.discard(tmp); err != nil {
		return 0, err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return 0, fmt.Errorf("creating the receive directory: %w", err)
	}
	defer r.discard(tmp)

	client, err := r.dial(ctx, src)
	if err != nil {
		return 0, err
	}
	defer client.Close()
	context.AfterFunc(ctx, func() { client.Close() })
	sess, err := client.NewSession()
	if err != nil {
		return 0, fmt.Errorf("node %s: opening a session: %w", src.Name, err)
	}
	defer sess.Close()
	out, err := sess.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	sess.Stderr = &limitedWriter{w: &stderr, n: 4 << 10}
	cmd := sshd.NodeCommand + " send " + strconv.FormatInt(c.ID, 10)
	if parent != 0 {
		cmd += " " + strconv.FormatInt(parent, 10)
	}
	if err := sess.Start(cmd); err != nil {
		return 0, fmt.Errorf("node %s: %w", src.Name, err)
	}
	// A stream has a budget: twice the image's size, and the room above
	// the reserve.
	limit := min(max(2*c.Size, minStreamLimit), room.Avail())
	if r.opts.cut != nil {
		if n := r.opts.cut(attempt); n > 0 {
			limit = n
		}
	}
	in := &meteredReader{r: out, limit: limit}
	stop := r.watchStall(ctx, in, cancel)
	recvErr := btrfs.Receive(ctx, tmp, in)
	stop()
	if recvErr != nil {
		client.Close() // the sender need not finish a stream nobody reads
	}
	// A sender that has sent its stream exits; one that hangs instead is
	// cut like a stalled stream.
	hung := time.AfterFunc(r.opts.StallTimeout, func() { client.Close() })
	waitErr := sess.Wait()
	hung.Stop()
	said := ""
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		said = fmt.Sprintf(" (node %s said: %s)", src.Name, msg)
	}
	n := in.n.Load()
	switch {
	case in.stalled.Load():
		return n, fmt.Errorf("the stream from node %s stalled for %s; cut", src.Name, r.opts.StallTimeout)
	case in.over.Load():
		return n, fmt.Errorf("the stream from node %s went past %d bytes (twice the image's size, or the room above the data path's reserve); refused", src.Name, limit)
	case recvErr != nil:
		return n, fmt.Errorf("%w%s", recvErr, said)
	case waitErr != nil:
		// What arrived looked whole to btrfs receive, but only the
		// sender's exit says that it finished.
		return n, fmt.Errorf("node %s did not finish sending: %w%s", src.Name, waitErr, said)
	}
	return n, r.install(c.ID, tmp)
}

// install checks what a finished stream made in tmp — one read-only
// subvolume named for the image and nothing else — and moves it into the
// snapshots directory.
func (r *Replicator) install(id int64, tmp string) error {
	name := strconv.FormatInt(id, 10)
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("checking the received image: %w", err)
	}
	if len(ents) != 1 || ents[0].Name() != name {
		names := make([]string, len(ents))
		for i, e := range ents {
			names[i] = strconv.Quote(e.Name())
		}
		return fmt.Errorf("the stream made %s, not one subvolume %q; refused", strings.Join(names, ", "), name)
	}
	got := tmp + "/" + name
	if ok, err := btrfs.IsSubvolume(got); err != nil || !ok {
		return fmt.Errorf("the stream's %q is not a subvolume; refused", name)
	}
	if ro, err := btrfs.IsReadOnly(got); err != nil || !ro {
		return fmt.Errorf("the stream's subvolume is not read-only (unfinished); refused")
	}
	// A read-only subvolume cannot move to another directory (its ".."
	// would change): writable for the move only, by root, in directories
	// only root may enter.
	dst := r.snapshotDir(id)
	if err := btrfs.SetReadOnly(got, false); err != nil {
		return fmt.Errorf("installing the received image: %w", err)
	}
	if err := os.Rename(got, dst); err != nil {
		return fmt.Errorf("installing the received image: %w", err)
	}
	if err := btrfs.SetReadOnly(dst, true); err != nil {
		btrfs.Delete(dst)
		return fmt.Errorf("installing the received image: %w", err)
	}
	return nil
}

// dial signs in to peer's SSH door with this node's host key, accepting
// only the peer's registered host key.
func (r *Replicator) dial(ctx context.Context, peer Peer) (*gossh.Client, error) {
	if peer.SSHKey == nil {
		return nil, fmt.Errorf("node %s has no registered key", peer.Name)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", peer.SSHAddress)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", peer.Name, err)
	}
	cfg := &gossh.ClientConfig{
		User:            r.opts.Node,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(r.opts.Signer)},
		HostKeyCallback: gossh.FixedHostKey(peer.SSHKey),
		Timeout:         30 * time.Second,
	}
	cfg.Ciphers = []string{gossh.CipherAES128GCM, gossh.CipherChaCha20Poly1305}
	// The handshake is bound to ctx as well.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, chans, reqs, err := gossh.NewClientConn(conn, peer.SSHAddress, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("node %s: signing in: %w", peer.Name, err)
	}
	return gossh.NewClient(c, chans, reqs), nil
}

// watchStall cancels when the stream moves no byte for StallTimeout; the
// returned func stops watching.
func (r *Replicator) watchStall(ctx context.Context, in *meteredReader, cancel func()) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(r.opts.StallTimeout)
		defer t.Stop()
		last := int64(-1)
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if n := in.n.Load(); n == last {
					in.stalled.Store(true)
					cancel()
					return
				} else {
					last = n
				}
			}
		}
	}()
	return func() { close(done) }
}

var errStreamLimit = errors.New("stream limit reached")

// meteredReader counts a stream and fails it past limit bytes.
type meteredReader struct {
	r       io.Reader
	limit   int64
	n       atomic.Int64
	over    atomic.Bool
	stalled atomic.Bool
}

func (m *meteredReader) Read(p []byte) (int, error) {
	left := m.limit - m.n.Load()
	if left <= 0 {
		m.over.Store(true)
		return 0, errStreamLimit
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := m.r.Read(p)
	m.n.Add(int64(n))
	return n, err
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
