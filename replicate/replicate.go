// Package replicate ships ready images between the nodes of a cluster. Each
// node pulls what it lacks: for every ready image it should hold (all of
// them, or with cluster.copies those a stable hash chooses it for) it claims a
// 'copying' row in image_copies, signs in to a node holding the image ready
// with its own host key, runs the node protocol's send there, and pipes the
// `btrfs send` stream straight into `btrfs receive` (no file on disk),
// incremental against the previous image of the same series when both sides
// hold it. The stream lands in a directory private to root, is checked (one
// read-only subvolume of the expected name, from a sender that finished) and
// only then renamed into the snapshots directory and marked ready; anything
// else is deleted and retried with back-off. Pulling lets the node that lacks
// an image drive its own retries, with its own disk, and write only its own
// rows. The package also serves the send side of the protocol (Serve),
// carries out image destroys on this node (a 'destroying' row), and forgets
// the copies of nodes removed for good.
package replicate

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
)

// Peer is another node as shipping needs it.
type Peer struct {
	Name       string
	SSHAddress string          // host:port of its SSH door
	SSHKey     gossh.PublicKey // its host key, which it also signs in with
	Down       bool            // missed its heartbeats
}

// Peers lists the cluster's nodes (this one included).
type Peers interface {
	Peers(ctx context.Context) ([]Peer, error)
}

// Options configure a Replicator.
type Options struct {
	Pool   *pgxpool.Pool
	Node   string // this node's name
	Copies int    // how many nodes hold each image; 0: every node
	Peers  Peers
	Signer gossh.Signer // this node's host key: what it signs in with
	// SnapshotsDir holds ready images' snapshots, one per image id.
	SnapshotsDir string
	// ReceiveDir is where streams land before they are checked; it is
	// created private to root and emptied at Reconcile.
	ReceiveDir string
	// Instances destroys this node's instances of an image destroyed
	// elsewhere; nil: none to destroy.
	Instances draupnir.InstanceDestroyer
	// Interval is how often the node looks for images to pull and
	// destroys to carry out (default 2s); Backoff the wait after a first
	// failed attempt, doubled with each further one up to MaxBackoff
	// (defaults 2s and 5m).
	Interval, Backoff, MaxBackoff time.Duration
	// StallTimeout cuts a stream that has moved no byte this long
	// (default 1m).
	StallTimeout time.Duration
	Log          *slog.Logger

	// cut, for tests, makes the stream of an attempt fail after n
	// bytes when it returns n > 0.
	cut func(attempt int) int64
	// received, for tests, is told the stream bytes of each copy.
	received func(id, bytes int64)
}

// Replicator pulls images to this node and serves them to others.
type Replicator struct {
	opts Options
	log  *slog.Logger
	db   store
}

// New checks opts and makes the receive directory.
func New(opts Options) (*Replicator, error) {
	if opts.Pool == nil || opts.Node == "" || opts.Peers == nil || opts.Signer == nil || opts.SnapshotsDir == "" || opts.ReceiveDir == "" {
		return nil, errors.New("replicate: Options.Pool, Node, Peers, Signer, SnapshotsDir and ReceiveDir are required")
	}
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 2 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	// Streams may create any file below where they land: only root may
	// even look in.
	if err := os.MkdirAll(opts.ReceiveDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the receive directory: %w", err)
	}
	if err := os.Chmod(opts.ReceiveDir, 0o700); err != nil {
		return nil, fmt.Errorf("making the receive directory private: %w", err)
	}
	return &Replicator{opts: opts, log: opts.Log.With("component", "replicate", "node", opts.Node), db: store{opts.Pool}}, nil
}

// Reconcile repairs what a crash of this node left: half-received streams
// go, its own copies in progress become failed attempts (retried), and the
// images it made that are ready get their ready copy.
func (r *Replicator) Reconcile(ctx context.Context) error {
	ents, err := os.ReadDir(r.opts.ReceiveDir)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for _, e := range ents {
		if err := r.discard(filepath.Join(r.opts.ReceiveDir, e.Name())); err != nil {
			return err
		}
	}
	n, err := r.db.interrupted(ctx, r.opts.Node)
	if err != nil {
		return err
	}
	if n > 0 {
		r.log.Warn("image copies were interrupted by a stop of this node; they will be retried", "copies", n)
	}
	return r.db.ownReady(ctx, r.opts.Node)
}

// Run pulls and destroys until ctx ends.
func (r *Replicator) Run(ctx context.Context) {
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	for {
		if err := r.Step(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("image shipping pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Step carries out pending destroys, then makes one attempt at every image
// this node should hold and lacks, whose back-off has passed.
func (r *Replicator) Step(ctx context.Context) error {
	if err := r.destroys(ctx); err != nil {
		return err
	}
	peers, err := r.opts.Peers.Peers(ctx)
	if err != nil {
		return err
	}
	cands, err := r.db.candidates(ctx, r.opts.Node)
	if err != nil {
		return err
	}
	for _, c := range cands {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !r.wanted(c, peers) || c.Age < r.backoff(c.Attempts) {
			continue
		}
		r.attempt(ctx, c, peers)
	}
	return nil
}

// wanted reports whether this node should hold image c: every node does
// unless Copies is set; then the node that made it and the Copies-1 others
// that rank highest for the image (rendezvous hashing over every registered
// node, so that the choice does not move while a node is down).
func (r *Replicator) wanted(c candidate, peers []Peer) bool {
	if r.opts.Copies <= 0 {
		return true
	}
	var others []string
	for _, p := range peers {
		if p.Name != c.Origin {
			others = append(others, p.Name)
		}
	}
	score := func(n string) uint64 {
		h := fnv.New64a()
		fmt.Fprintf(h, "%d/%s", c.ID, n)
		return h.Sum64()
	}
	slices.SortFunc(others, func(a, b string) int {
		if sa, sb := score(a), score(b); sa != sb {
			if sa > sb {
				return -1
			}
			return 1
		}
		return 0
	})
	return slices.Contains(others[:min(len(others), r.opts.Copies-1)], r.opts.Node)
}

// backoff is how long to wait after attempts failed attempts.
func (r *Replicator) backoff(attempts int) time.Duration {
	if attempts <= 0 {
		return 0
	}
	d := r.opts.Backoff
	for i := 1; i < attempts && d < r.opts.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.opts.MaxBackoff)
}

// parentOf is the image whose snapshot an image's stream can be incremental
// against, which the receiver may already hold: the previous ready image of
// its source's series (consecutive follow-mode images share every unchanged
// block) or, for an image saved from an instance, the image it was saved
// from. The candidates query chooses it.
func parentOf(c candidate) int64 { return c.ParentID }

// attempt claims image c and pulls it once from a node holding it ready.
func (r *Replicator) attempt(ctx context.Context, c candidate, peers []Peer) {
	log := r.log.With("image", c.ID)
	attempt, ok, err := r.db.claim(ctx, c.ID, r.opts.Node)
	if err != nil || !ok {
		if err != nil {
			log.Error("could not claim an image copy", "err", err)
		}
		return
	}
	snap := r.snapshotDir(c.ID)
	if ro, _ := btrfs.IsReadOnly(snap); ro {
		// Only a finished stream is ever renamed here (or finalise
		// froze it here): a crash came before the row said so.
		r.finish(ctx, c.ID, nil, log)
		return
	} else if ok, _ := btrfs.IsSubvolume(snap); ok {
		// Moved in but not yet read-only again when this node stopped.
		if err := btrfs.Delete(snap); err != nil {
			r.finish(ctx, c.ID, err, log)
			return
		}
	}
	var src *Peer
	var sources []Peer
	for _, p := range peers {
		if p.Name != r.opts.Node && !p.Down && slices.Contains(c.ReadyOn, p.Name) {
			sources = append(sources, p)
		}
	}
	if len(sources) == 0 {
		r.finish(ctx, c.ID, errors.New("no node that holds the image ready is up"), log)
		return
	}
	src = &sources[(attempt-1)%len(sources)] // another source at each attempt
	parent := parentOf(c)
	if parent != 0 && !(slices.Contains(c.ParentReadyOn, r.opts.Node) && slices.Contains(c.ParentReadyOn, src.Name)) {
		parent = 0
	}
	start := time.Now()
	n, err := r.pull(ctx, *src, c, parent, attempt)
	if err == nil && r.opts.received != nil {
		r.opts.received(c.ID, n)
	}
	if err == nil {
		log.Info("image received", "from", src.Name, "parent", parent, "bytes", n, "attempt", attempt, "duration", time.Since(start))
	}
	r.finish(ctx, c.ID, err, log.With("from", src.Name, "attempt", attempt))
}

// finish records the end of an attempt. A copy whose image was destroyed
// meanwhile is deleted rather than made ready.
func (r *Replicator) finish(ctx context.Context, id int64, err error, log *slog.Logger) {
	ctx = context.WithoutCancel(ctx)
	if err != nil {
		log.Warn("image copy failed; it will be retried", "err", err)
		if derr := r.db.failed(ctx, id, r.opts.Node, err.Error()); derr != nil {
			log.Error("could not record a failed image copy", "err", derr)
		}
		return
	}
	ok, derr := r.db.ready(ctx, id, r.opts.Node)
	if derr != nil {
		log.Error("could not record an image copy as ready", "err", derr)
		return
	}
	if !ok {
		log.Info("image was destroyed while it was copied; deleting the copy")
		if err := btrfs.Delete(r.snapshotDir(id)); err != nil {
			log.Error("could not delete the copy of a destroyed image", "err", err)
		}
	}
}

func (r *Replicator) snapshotDir(id int64) string {
	return filepath.Join(r.opts.SnapshotsDir, strconv.FormatInt(id, 10))
}

func (r *Replicator) receiveDir(id int64) string {
	return filepath.Join(r.opts.ReceiveDir, strconv.FormatInt(id, 10))
}

// discard deletes a receive directory and whatever subvolumes a stream made
// in it.
func (r *Replicator) discard(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("discarding %s: %w", dir, err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if ok, _ := btrfs.IsSubvolume(p); ok {
			if err := btrfs.Delete(p); err != nil {
				return fmt.Errorf("discarding a received subvolume: %w", err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("discarding %s: %w", dir, err)
	}
	return nil
}

// destroys carries out the destroys of images that name this node: its
// instances of them, its snapshot, its row, and the image's row once no
// node holds a copy. It also forgets the copies of removed nodes.
func (r *Replicator) destroys(ctx context.Context) error {
	// A node removed for good (its row deleted) never deletes its copies:
	// forget them, and finish the destroys that waited only for it.
	if copies, images, err := r.db.forgetRemoved(ctx); err != nil {
		return err
	} else if copies > 0 {
		r.log.Info("forgot the image copies of removed nodes", "copies", copies, "destroyed_images", images)
	}
	ids, err := r.db.destroying(ctx, r.opts.Node)
	if err != nil {
		return err
	}
	for _, id := range ids {
		log := r.log.With("image", id)
		if r.opts.Instances != nil {
			if err := r.opts.Instances.DestroyAllOfImage(ctx, id); err != nil {
				log.Error("could not destroy this node's instances of a destroyed image", "err", err)
				continue
			}
		}
		if err := errors.Join(btrfs.Delete(r.snapshotDir(id)), r.discard(r.receiveDir(id))); err != nil {
			log.Error("could not delete this node's copy of a destroyed image", "err", err)
			continue
		}
		gone, err := r.db.dropCopy(ctx, id, r.opts.Node)
		if err != nil {
			log.Error("could not record the destroy of an image copy", "err", err)
			continue
		}
		log.Info("image copy destroyed", "image_row_deleted", gone)
	}
	return nil
}

// Serve is the send side of the node protocol (an sshd.NodeRunner):
//
//	send ID [PARENT]   the btrfs send stream of image ID, incremental
//	                   against PARENT when this node holds it ready
//
// It sends only images this node holds ready.
func (r *Replicator) Serve(ctx context.Context, node string, args []string, stdout, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "draupnir: "+format+"\n", a...)
		return 1
	}
	if len(args) < 2 || len(args) > 3 || args[0] != "send" {
		return fail("usage: send IMAGE [PARENT]")
	}
	var ids [2]int64
	for i, a := range args[1:] {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 || strconv.FormatInt(id, 10) != a {
			return fail("%q is not an image id", a)
		}
		ids[i] = id
	}
	id, parent := ids[0], ids[1]
	log := r.log.With("image", id, "to", node)
	if err := r.sendable(ctx, id); err != nil {
		log.Info("image send refused", "err", err)
		return fail("image %d: %v", id, draupnir.ClientMessage(err))
	}
	parentDir := ""
	if parent != 0 {
		if err := r.sendable(ctx, parent); err != nil {
			log.Info("sending the whole image: the parent asked for is not here", "parent", parent, "err", err)
		} else {
			parentDir = r.snapshotDir(parent)
		}
	}
	start := time.Now()
	if err := btrfs.Send(ctx, r.snapshotDir(id), parentDir, stdout); err != nil {
		log.Warn("image send failed", "err", err)
		return fail("sending image %d failed", id)
	}
	log.Info("image sent", "parent", parent, "duration", time.Since(start))
	return 0
}

// sendable checks that this node holds image id ready, as a read-only
// snapshot.
func (r *Replicator) sendable(ctx context.Context, id int64) error {
	state, err := r.db.copyState(ctx, id, r.opts.Node)
	if err != nil {
		return err
	}
	if state != "ready" {
		return draupnir.Errorf(draupnir.KindConflict, "this node does not hold it ready")
	}
	if ro, err := btrfs.IsReadOnly(r.snapshotDir(id)); err != nil || !ro {
		return draupnir.Errorf(draupnir.KindConflict, "its snapshot is missing here")
	}
	return nil
}
