package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/client"
)

// shipping measures how images travel between two nodes of a cluster on one
// machine (each its own data path on the bench's btrfs): the main backup's
// image made on node sa is pulled by sb over the embedded SSH doors, against
// the same stream through OpenSSH (`btrfs send | ssh | btrfs receive`, same
// cipher, root's login) first, so that both read a warm snapshot. Then an
// image saved from an instance after a change of 1 % of its data travels
// incrementally; what it moves is set against the bytes the change made the
// saved snapshot hold on its own.
func (e *env) shipping(ctx context.Context) error {
	var undo cleanups
	defer func() { undo.run(context.WithoutCancel(ctx), e.log) }()
	const stateDB = "draupnir_ship"
	if err := e.src.sql(ctx, "postgres", "CREATE DATABASE "+stateDB); err != nil {
		return err
	}
	dbURL := fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", e.src.sock, e.src.port, stateDB)
	secret := randomHex(24)
	base := e.cfg.PortBase + 2*e.cfg.portSpan() + 2*(e.cfg.Samples+10)
	span := 20
	start := func(i int, name string) (*server, error) {
		dataPath := filepath.Join(e.mnt, "ship-"+name)
		if err := os.Mkdir(dataPath, 0o755); err != nil {
			return nil, err
		}
		runPath := "/run/draupnir-bench-" + randomHex(4)
		e.undo.push(func(context.Context) error { return os.RemoveAll(runPath) })
		spec := serverSpec{name: "ship-" + name, dataPath: dataPath, runPath: runPath,
			portBase: base + i*span, portSpan: span,
			top: fmt.Sprintf("database_url = %q\nnode.name = %q\nnode.heartbeat_interval = \"1s\"", dbURL, name),
			env: []string{"DRAUPNIR_CLUSTER_SECRET=" + secret}}
		return e.startNode(ctx, spec)
	}
	sa, err := start(0, "sa")
	if err != nil {
		return fmt.Errorf("node sa: %w", err)
	}
	upA := client.New(sa.url, sa.secret)
	image, _, err := e.imageOn(ctx, sa, upA, filepath.Join(e.mnt, "ship-sa", "image_uploads"), e.backup, trivialScript)
	if err != nil {
		return err
	}
	snap := filepath.Join(e.mnt, "ship-sa", "image_snapshots", strconv.FormatInt(image, 10))

	// The reference, twice (the first warms the snapshot's pages for
	// both): OpenSSH's client and server with the same cipher.
	if e.openssh, err = startOpenSSHd(ctx, e, &undo); err != nil {
		return err
	}
	var ref time.Duration
	for i := range 2 {
		dir := filepath.Join(e.mnt, fmt.Sprintf("ship-openssh-%d", i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		if ref, err = e.sendOverOpenSSH(ctx, snap, dir); err != nil {
			return err
		}
		btrfs.Delete(filepath.Join(dir, filepath.Base(snap)))
		os.Remove(dir)
	}

	sb, err := start(1, "sb")
	if err != nil {
		return fmt.Errorf("node sb: %w", err)
	}
	full, err := e.waitReceived(ctx, sb, image)
	if err != nil {
		return err
	}
	ratio := ref.Seconds() / full.took.Seconds()
	e.rep.Values["ship_full_ms"] = ms(full.took)
	e.rep.Values["ship_full_openssh_ms"] = ms(ref)
	e.rep.Values["ship_full_bytes"] = float64(full.bytes)
	e.rep.add(Figure{
		Name:     fmt.Sprintf("image shipped to another node (btrfs send | node protocol | btrfs receive), %s stream, -c %s", fmtBytes(float64(full.bytes)), cipher),
		Goal:     "≥ 0.9× btrfs send | ssh | btrfs receive through OpenSSH",
		Measured: fmt.Sprintf("%s; OpenSSH %s", fmtMS(ms(full.took)), fmtMS(ms(ref))),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio >= 0.9),
	})
	return e.incrementalShip(ctx, sa, sb, upA, image)
}

// incrementalShip saves an image from an instance of image after changing 1 %
// of its largest table, and measures the stream that takes the saved image
// to the other node.
func (e *env) incrementalShip(ctx context.Context, sa, sb *server, upA *client.Client, image int64) error {
	user := client.New(sa.url, userToken)
	in, err := user.Instances().Create(ctx, draupnir.Principal{}, image, draupnir.CreateOptions{})
	if err != nil {
		return err
	}
	conn, err := connect(ctx, in)
	if err != nil {
		return err
	}
	// 1 % of the rows, contiguous, so 1 % of the table's pages.
	_, err = conn.Exec(ctx, `UPDATE pgbench_accounts SET abalance = abalance + 1
		WHERE aid <= (SELECT count(*) / 100 FROM pgbench_accounts)`)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("changing 1 %% of instance %d: %w", in.ID, err)
	}
	saved, err := user.Instances().Save(ctx, draupnir.Principal{}, in.ID)
	if err != nil {
		return fmt.Errorf("saving instance %d: %w", in.ID, err)
	}
	defer upA.Images().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, saved.ID)
	// Where the instance ran, the image was saved; the other node pulls it.
	origin, receiver := "sa", sb
	if in.Node == "sb" {
		origin, receiver = "sb", sa
	}
	if err := user.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
		return err
	}
	got, err := e.waitReceived(ctx, receiver, saved.ID)
	if err != nil {
		return err
	}
	if got.parent != image {
		return fmt.Errorf("the saved image travelled against parent %d, not %d", got.parent, image)
	}
	// What differs between the two snapshots, block by block: the change
	// and the WAL written with it.
	dir := func(node string, id int64) string {
		return filepath.Join(e.mnt, "ship-"+node, "image_snapshots", strconv.FormatInt(id, 10))
	}
	changed, err := changedBytes(dir(origin, image), dir(origin, saved.ID))
	if err != nil {
		return err
	}
	e.rep.Values["ship_incremental_bytes"] = float64(got.bytes)
	e.rep.Values["ship_incremental_changed_bytes"] = float64(changed)
	ratio := float64(got.bytes) / float64(max(changed, 1))
	e.rep.add(Figure{
		Name:     "image saved after a 1 % change, shipped against its parent",
		Goal:     "stream ≤ 3× the changed bytes",
		Measured: fmt.Sprintf("%s stream for %s changed (whole image's stream %s)", fmtBytes(float64(got.bytes)), fmtBytes(float64(changed)), fmtBytes(e.rep.Values["ship_full_bytes"])),
		Ratio:    fmt.Sprintf("%.2f×", ratio),
		Status:   verdict(ratio <= 3),
	})
	return nil
}

// sendOverOpenSSH streams snap to dir through OpenSSH's client and server
// and returns how long it took.
func (e *env) sendOverOpenSSH(ctx context.Context, snap, dir string) (time.Duration, error) {
	send := exec.CommandContext(ctx, "btrfs", "send", "-q", snap)
	recv := e.sshCmd(ctx, "ssh", e.openssh.port, "root@127.0.0.1", "btrfs", "receive", "-q", dir)
	pipe, err := send.StdoutPipe()
	if err != nil {
		return 0, err
	}
	recv.Stdin = pipe
	var out limitedBuffer
	send.Stderr, recv.Stdout, recv.Stderr = &out, &out, &out
	t0 := time.Now()
	if err := send.Start(); err != nil {
		return 0, err
	}
	rerr := recv.Run()
	serr := send.Wait()
	d := time.Since(t0)
	if rerr != nil || serr != nil {
		return 0, fmt.Errorf("btrfs send | ssh | btrfs receive: %v, %v: %s", serr, rerr, out.String())
	}
	return d, nil
}

// received is what a node logged of an image it received.
type received struct {
	bytes  int64
	took   time.Duration
	parent int64
}

// waitReceived waits for node srv to log that it received image id.
func (e *env) waitReceived(ctx context.Context, srv *server, id int64) (received, error) {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(srv.logPath)
		if err != nil {
			return received{}, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l struct {
				Msg      string  `json:"msg"`
				Image    int64   `json:"image"`
				Bytes    int64   `json:"bytes"`
				Duration float64 `json:"duration_ms"`
				Parent   int64   `json:"parent"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "image received" && l.Image == id {
				return received{bytes: l.Bytes, took: time.Duration(l.Duration * float64(time.Millisecond)), parent: l.Parent}, nil
			}
		}
		select {
		case <-ctx.Done():
			return received{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return received{}, fmt.Errorf("image %d never arrived on the other node: %s", id, srv.logTail())
}

// changedBytes counts the bytes of child's files that differ from the same
// file in parent, in 4 KiB blocks (a file parent lacks counts whole).
func changedBytes(parent, child string) (int64, error) {
	const block = 4096
	var n int64
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	err := filepath.WalkDir(child, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(child, p)
		cf, err := os.Open(p)
		if err != nil {
			return err
		}
		defer cf.Close()
		pf, err := os.Open(filepath.Join(parent, rel))
		if err != nil {
			fi, err := cf.Stat()
			if err != nil {
				return err
			}
			n += fi.Size()
			return nil
		}
		defer pf.Close()
		for {
			k, cerr := io.ReadFull(cf, b)
			m, _ := io.ReadFull(pf, a[:k])
			for off := 0; off < k; off += block {
				end := min(off+block, k)
				if end > m || !bytes.Equal(a[off:end], b[off:end]) {
					n += int64(end - off)
				}
			}
			if cerr != nil {
				return nil // the end of the file
			}
		}
	})
	return n, err
}
