package replicate

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/nodes"
	"github.com/draupnir-db/draupnir/sshd"
)

// cluster is a few nodes on one machine: each its own btrfs, SSH door and
// replicator; one state database.
type cluster struct {
	t     *testing.T
	pool  *pgxpool.Pool
	nodes map[string]*node
}

type node struct {
	name  string
	mnt   string
	snaps string
	r     *Replicator
	srv   *sshd.Server
	addr  string

	mu       sync.Mutex
	received map[int64]int64 // stream bytes by image
}

func (n *node) bytesOf(id int64) int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.received[id]
}

type noUploads struct{}

func (noUploads) OpenUpload(context.Context, draupnir.Principal, int64) (draupnir.Upload, error) {
	return nil, draupnir.Errorf(draupnir.KindForbidden, "no uploads here")
}

type noKeys struct{}

func (noKeys) PrincipalForKey(context.Context, gossh.PublicKey) (draupnir.Principal, error) {
	return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown key")
}

func newCluster(t *testing.T, names ...string) *cluster {
	c := &cluster{t: t, pool: testenv.StatePool(t), nodes: map[string]*node{}}
	for _, name := range names {
		c.addNode(name, func(*Options) {})
	}
	return c
}

func (c *cluster) addNode(name string, opt func(*Options)) *node {
	t := c.t
	t.Helper()
	n := &node{name: name, mnt: testenv.Btrfs(t, 1<<30), received: map[int64]int64{}}
	n.snaps = filepath.Join(n.mnt, "image_snapshots")
	if err := os.Mkdir(n.snaps, 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("test_node", name)
	peers := RegistryPeers{nodes.New(nodes.Options{Pool: c.pool, Interval: 20 * time.Second})}
	hostKey := filepath.Join(n.mnt, "keys", "ssh_host_ed25519_key")
	signer, err := sshd.LoadHostKey(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Pool: c.pool, Node: name, Peers: peers, Signer: signer,
		SnapshotsDir: n.snaps, ReceiveDir: filepath.Join(n.mnt, "image_receive"),
		Backoff: time.Nanosecond, MaxBackoff: time.Nanosecond, Log: log,
		received: func(id, b int64) { n.mu.Lock(); n.received[id] = b; n.mu.Unlock() },
	}
	opt(&o)
	n.r, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	n.srv, err = sshd.New(sshd.Options{HostKeyPath: hostKey, Uploads: noUploads{}, Keys: sshd.WithNodes(noKeys{}, peers), Node: n.r.Serve, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go n.srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n.srv.Shutdown(ctx)
	})
	n.addr = l.Addr().String()
	_, err = c.pool.Exec(context.Background(), `INSERT INTO nodes (name, advertise_host, api_url, ssh_address, ssh_public_key)
		VALUES ($1, 'localhost', 'http://localhost', $2, $3)`, name, n.addr, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.r.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.nodes[name] = n
	return n
}

// makeImage registers a ready image made on origin from the subvolume work
// (frozen read-only as the image's snapshot), with parent as its lineage.
func (c *cluster) makeImage(origin string, work string, parent int64) int64 {
	t := c.t
	t.Helper()
	var id int64
	var parentArg any
	if parent != 0 {
		parentArg = parent
	}
	err := c.pool.QueryRow(context.Background(), `INSERT INTO images (state, backed_up_at, node, size_bytes, parent_image_id)
		VALUES ('ready', now(), $1, 8388608, $2) RETURNING id`, origin, parentArg).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	n := c.nodes[origin]
	if err := btrfs.Snapshot(work, n.r.snapshotDir(id), true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(context.Background(), `INSERT INTO image_copies (image_id, node, state) VALUES ($1, $2, 'ready')`, id, origin); err != nil {
		t.Fatal(err)
	}
	return id
}

// newWork makes a subvolume on n holding a few files of random data.
func (n *node) newWork(t *testing.T, size int) string {
	t.Helper()
	work := filepath.Join(n.mnt, fmt.Sprintf("work-%d", time.Now().UnixNano()))
	if err := btrfs.CreateSubvolume(work); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		b := make([]byte, size/4)
		rand.Read(b)
		if err := os.MkdirAll(filepath.Join(work, "base", fmt.Sprint(i)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, "base", fmt.Sprint(i), "data"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return work
}

// copyState returns the state, attempts and error of node's copy of id.
func (c *cluster) copyState(id int64, node string) (state string, attempts int, msg string) {
	err := c.pool.QueryRow(context.Background(), `SELECT state, attempts, error FROM image_copies WHERE image_id = $1 AND node = $2`, id, node).Scan(&state, &attempts, &msg)
	if err != nil {
		return "", 0, err.Error()
	}
	return state, attempts, msg
}

// step runs one pass on each named node.
func (c *cluster) step(names ...string) {
	c.t.Helper()
	for _, name := range names {
		if err := c.nodes[name].r.Step(context.Background()); err != nil {
			c.t.Fatalf("%s: Step: %v", name, err)
		}
	}
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	a, b := testenv.TreeSums(t, want), testenv.TreeSums(t, got)
	if len(a) != len(b) {
		t.Errorf("%s has %d entries, %s has %d", want, len(a), got, len(b))
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if a[k] != b[k] {
			t.Errorf("%s: %q in %s, %q in %s", k, a[k], want, b[k], got)
		}
	}
}

// receiveEmpty checks that nothing is left where streams land.
func receiveEmpty(t *testing.T, n *node) {
	t.Helper()
	ents, err := os.ReadDir(n.r.opts.ReceiveDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s: %d entries left in the receive directory", n.name, len(ents))
	}
}

func TestShipFullAndIncremental(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	a := c.nodes["a"]
	work := a.newWork(t, 8<<20)
	id := c.makeImage("a", work, 0)
	c.step("b", "c")
	for _, name := range []string{"b", "c"} {
		if state, _, msg := c.copyState(id, name); state != "ready" {
			t.Fatalf("%s: copy of image %d is %q (%s), want ready", name, id, state, msg)
		}
		n := c.nodes[name]
		sameTree(t, a.r.snapshotDir(id), n.r.snapshotDir(id))
		if ro, err := btrfs.IsReadOnly(n.r.snapshotDir(id)); err != nil || !ro {
			t.Errorf("%s: copy read-only = %v, %v", name, ro, err)
		}
		receiveEmpty(t, n)
	}
	if st, err := os.Stat(a.r.opts.ReceiveDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("receive directory: %v, %v; want private to root", st.Mode(), err)
	}

	// 1 % of the data changes: the next image of the series moves about
	// that much.
	f, err := os.OpenFile(filepath.Join(work, "base", "1", "data"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	change := make([]byte, 84<<10)
	rand.Read(change)
	if _, err := f.WriteAt(change, 100<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	id2 := c.makeImage("a", work, id)
	c.step("b")
	if state, _, msg := c.copyState(id2, "b"); state != "ready" {
		t.Fatalf("b: copy of image %d is %q (%s), want ready", id2, state, msg)
	}
	sameTree(t, a.r.snapshotDir(id2), c.nodes["b"].r.snapshotDir(id2))
	full, incr := c.nodes["b"].bytesOf(id), c.nodes["b"].bytesOf(id2)
	if incr > 3*int64(len(change)) {
		t.Errorf("incremental stream of a %d-byte change was %d bytes (the full one %d)", len(change), incr, full)
	}
	// c gets the second image from b (a is down): b's copy of the first
	// serves as the parent.
	c.pool.Exec(context.Background(), `UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE name = 'a'`)
	c.step("c")
	if state, _, msg := c.copyState(id2, "c"); state != "ready" {
		t.Fatalf("c: copy of image %d from b is %q (%s), want ready", id2, state, msg)
	}
	sameTree(t, a.r.snapshotDir(id2), c.nodes["c"].r.snapshotDir(id2))
	if n := c.nodes["c"].bytesOf(id2); n > 3*int64(len(change)) {
		t.Errorf("incremental stream from b was %d bytes", n)
	}
}

func TestShipCutStreamIsRetried(t *testing.T) {
	c := newCluster(t, "a")
	// b's first two attempts are cut: after 64 KiB, and a byte short of
	// the end (a command's boundary at worst, which only the sender's exit
	// tells apart from the end).
	var full int64
	b := c.addNode("b", func(o *Options) {
		o.cut = func(attempt int) int64 {
			switch attempt {
			case 1:
				return 64 << 10
			case 2:
				return full - 1
			}
			return 0
		}
	})
	a := c.nodes["a"]
	id := c.makeImage("a", a.newWork(t, 4<<20), 0)
	// The full stream's length, for the second cut.
	var sink countWriter
	if err := btrfs.Send(context.Background(), a.r.snapshotDir(id), "", &sink); err != nil {
		t.Fatal(err)
	}
	full = int64(sink)
	for attempt := 1; attempt <= 2; attempt++ {
		c.step("b")
		state, attempts, msg := c.copyState(id, "b")
		if state != "failed" || attempts != attempt || msg == "" {
			t.Fatalf("after cut %d: copy is %q after %d attempts (%q); want failed with an error", attempt, state, attempts, msg)
		}
		if _, err := os.Stat(b.r.snapshotDir(id)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after cut %d: the snapshot exists (%v)", attempt, err)
		}
		receiveEmpty(t, b)
	}
	c.step("b")
	if state, attempts, msg := c.copyState(id, "b"); state != "ready" || attempts != 3 {
		t.Fatalf("third attempt: %q after %d (%s), want ready after 3", state, attempts, msg)
	}
	sameTree(t, a.r.snapshotDir(id), b.r.snapshotDir(id))
}

type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

func TestShipInterruptedByRestart(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	id := c.makeImage("a", a.newWork(t, 1<<20), 0)
	// b died mid-copy: its row says copying and half a stream lies in
	// its receive directory.
	if _, err := c.pool.Exec(context.Background(), `INSERT INTO image_copies (image_id, node, state, attempts) VALUES ($1, 'b', 'copying', 1)`, id); err != nil {
		t.Fatal(err)
	}
	half := b.r.receiveDir(id)
	os.MkdirAll(half, 0o700)
	if err := btrfs.CreateSubvolume(filepath.Join(half, fmt.Sprint(id))); err != nil {
		t.Fatal(err)
	}
	if err := b.r.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	receiveEmpty(t, b)
	if state, _, msg := c.copyState(id, "b"); state != "failed" || !strings.Contains(msg, "interrupted") {
		t.Errorf("after the restart: %q (%s), want failed, interrupted", state, msg)
	}
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "ready" {
		t.Fatalf("retry after the restart: %q (%s)", state, msg)
	}
}

func TestShipDestroyEverywhere(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	id := c.makeImage("a", a.newWork(t, 1<<20), 0)
	c.step("b")
	// The destroy began on a (the image service marks every copy and
	// deletes its own).
	ctx := context.Background()
	c.pool.Exec(ctx, `UPDATE image_copies SET state = 'destroying' WHERE image_id = $1`, id)
	btrfs.Delete(a.r.snapshotDir(id))
	if gone, err := a.r.db.dropCopy(ctx, id, "a"); err != nil || gone {
		t.Fatalf("a's part of the destroy: gone %v, %v; want the row kept for b", gone, err)
	}
	c.step("b")
	if _, err := os.Stat(b.r.snapshotDir(id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("b's copy is still there (%v)", err)
	}
	var n int
	c.pool.QueryRow(ctx, `SELECT count(*) FROM images WHERE id = $1`, id).Scan(&n)
	if n != 0 {
		t.Errorf("the image's row survived the destroy of every copy")
	}

	// A node removed for good (its row deleted) holds up no destroy: its
	// copies are forgotten, and the image's row goes.
	id2 := c.makeImage("a", a.newWork(t, 1<<20), 0)
	c.step("b")
	c.pool.Exec(ctx, `DELETE FROM nodes WHERE name = 'b'`)
	c.pool.Exec(ctx, `UPDATE image_copies SET state = 'destroying' WHERE image_id = $1`, id2)
	btrfs.Delete(a.r.snapshotDir(id2))
	a.r.db.dropCopy(ctx, id2, "a")
	c.step("a")
	c.pool.QueryRow(ctx, `SELECT count(*) FROM images WHERE id = $1`, id2).Scan(&n)
	var copies int
	c.pool.QueryRow(ctx, `SELECT count(*) FROM image_copies WHERE node = 'b'`).Scan(&copies)
	if n != 0 || copies != 0 {
		t.Errorf("after b's removal: image row %d, b's copies %d; want none", n, copies)
	}
}

func TestShipRefusals(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	id := c.makeImage("a", a.newWork(t, 1<<20), 0)
	ctx := context.Background()
	// b asks for something a does not hold ready, or that is no image id.
	var out, errOut strings.Builder
	for _, args := range [][]string{{"send", "999"}, {"send", "../1"}, {"send", "01"}, {"receive", "1"}, {"send"}, {"send", "1", "2", "3"}} {
		out.Reset()
		errOut.Reset()
		if code := a.r.Serve(ctx, "b", args, &out, &errOut); code == 0 || out.Len() != 0 {
			t.Errorf("Serve %q: code %d, %d bytes out", args, code, out.Len())
		}
	}
	// A source that cannot send says why, and b's copy records it.
	snap := a.r.snapshotDir(id)
	if err := os.Rename(snap, snap+".away"); err != nil {
		t.Fatal(err)
	}
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "failed" || !strings.Contains(msg, "node a said") || !strings.Contains(msg, "missing") {
		t.Errorf("copy from a node without the snapshot: %q (%s), want failed with a's reason", state, msg)
	}
	receiveEmpty(t, b)
	if err := os.Rename(snap+".away", snap); err != nil {
		t.Fatal(err)
	}
	// A peer whose registered host key is another's is not trusted.
	c.pool.Exec(ctx, `UPDATE nodes SET ssh_public_key = (SELECT ssh_public_key FROM nodes WHERE name = 'b') WHERE name = 'a'`)
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "failed" || !strings.Contains(msg, "host key") && !strings.Contains(msg, "signing in") {
		t.Errorf("copy from a node presenting an unregistered host key: %q (%s), want failed", state, msg)
	}
	if _, err := os.Stat(b.r.snapshotDir(id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("b holds the image after a refused copy")
	}
}

// TestShipStalledSenderIsCut: a source that sends a little and then
// nothing is cut after StallTimeout, and the copy comes from another
// source at the next attempt.
func TestShipStalledSenderIsCut(t *testing.T) {
	c := newCluster(t, "a")
	b := c.addNode("b", func(o *Options) { o.StallTimeout = 300 * time.Millisecond })
	a := c.nodes["a"]
	id := c.makeImage("a", a.newWork(t, 1<<20), 0)
	// "hung" is a node whose door answers the node protocol with a few
	// bytes and then hangs until the connection goes.
	hungKey := filepath.Join(testenv.TempDir(t), "hung_key")
	hung, err := sshd.New(sshd.Options{HostKeyPath: hungKey, Uploads: noUploads{}, Log: slog.New(slog.DiscardHandler),
		Keys: sshd.WithNodes(noKeys{}, RegistryPeers{nodes.New(nodes.Options{Pool: c.pool, Interval: 20 * time.Second})}),
		Node: func(ctx context.Context, _ string, _ []string, stdout, _ io.Writer) int {
			stdout.Write([]byte("btrfs-stream\x00"))
			<-ctx.Done()
			return 1
		}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hung.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hung.Shutdown(ctx)
	})
	ctx := context.Background()
	c.pool.Exec(ctx, `INSERT INTO nodes (name, advertise_host, api_url, ssh_address, ssh_public_key) VALUES ('hung', 'h', 'h', $1, $2)`,
		l.Addr().String(), strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hung.PublicKey()))))
	c.pool.Exec(ctx, `INSERT INTO image_copies (image_id, node, state) VALUES ($1, 'hung', 'ready')`, id)
	// Sources rotate by attempt over a and hung, by name: the first
	// attempt goes to a, so make it the second by failing one first.
	c.pool.Exec(ctx, `INSERT INTO image_copies (image_id, node, state, attempts) VALUES ($1, 'b', 'failed', 1)`, id)
	c.step("b")
	state, attempts, msg := c.copyState(id, "b")
	if state != "failed" || attempts != 2 || !strings.Contains(msg, "stalled") {
		t.Fatalf("copy from a hung node: %q after %d attempts (%s), want failed, stalled", state, attempts, msg)
	}
	receiveEmpty(t, b)
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "ready" {
		t.Fatalf("next attempt, from a: %q (%s)", state, msg)
	}
	sameTree(t, a.r.snapshotDir(id), b.r.snapshotDir(id))
}

// TestShipKeepsTheReserve: an image larger than the room above the data
// path's reserve is not received (the attempt fails and is retried), and
// arrives once there is room.
func TestShipKeepsTheReserve(t *testing.T) {
	c := newCluster(t, "a", "b")
	a, b := c.nodes["a"], c.nodes["b"]
	id := c.makeImage("a", a.newWork(t, 1<<20), 0)
	ctx := context.Background()
	// As far as b can tell, the image is larger than its whole disk.
	c.pool.Exec(ctx, `UPDATE images SET size_bytes = 4::bigint << 30 WHERE id = $1`, id)
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "failed" || !strings.Contains(msg, "data path is full") {
		t.Fatalf("copy of an image larger than the room: %q (%s), want failed, full", state, msg)
	}
	receiveEmpty(t, b)
	if _, err := os.Stat(b.r.snapshotDir(id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("b holds the image")
	}
	c.pool.Exec(ctx, `UPDATE images SET size_bytes = 1 << 20 WHERE id = $1`, id)
	c.step("b")
	if state, _, msg := c.copyState(id, "b"); state != "ready" {
		t.Fatalf("copy once there is room: %q (%s)", state, msg)
	}
}
