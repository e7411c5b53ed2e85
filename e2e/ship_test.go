package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/sshd"
)

// TestShip runs three nodes: an image made on one is shipped to the others
// with identical data, an image saved from it travels as an incremental
// stream, no user or upload key speaks the node protocol, and a destroy
// reaches every node.
func TestShip(t *testing.T) {
	cl, state := startCluster(t, 3)
	n1, n2, n3 := cl[0], cl[1], cl[2]
	ctx := context.Background()
	nobody := draupnir.Principal{}

	src := newSource(t)
	backup := src.BaseBackup(t, "-X", "fetch") + "/base.tar"
	im := n1.readyImage(t, anonymise, backup)
	shipped := waitShipped(t, n3, im.ID, cl...)
	if len(shipped.Nodes) != 3 {
		t.Errorf("nodes attribute %+v, want the three nodes", shipped.Nodes)
	}
	// Users see where it is, not why a copy failed.
	if got, err := n2.user().Images().Get(ctx, nobody, im.ID); err != nil || len(got.Nodes) != 3 {
		t.Errorf("the image as a user sees it: %+v, %v", got, err)
	}
	want := n1.snapshotSums(t, im.ID)
	for _, n := range cl[1:] {
		if got := n.snapshotSums(t, im.ID); !reflect.DeepEqual(got, want) {
			t.Errorf("%s's copy of image %d differs from node1's (%d entries vs %d)", n.name, im.ID, len(got), len(want))
		}
		ents, err := os.ReadDir(n.layout().Receive())
		if err != nil || len(ents) != 0 {
			t.Errorf("%s's receive directory after the copy: %d entries, %v", n.name, len(ents), err)
		}
		if fi, err := os.Stat(n.layout().Receive()); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s's receive directory is %v, %v; want private to root", n.name, fi.Mode(), err)
		}
	}

	// One instance per node (fewest instances first): the same table on
	// every node.
	const sum = "SELECT md5(string_agg(id || ' ' || email, ',' ORDER BY id)) FROM customers"
	sums := map[string]string{}
	var onNode1 *draupnir.Instance
	for range 3 {
		in, err := n1.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sums[in.Node] = mustPSQLOn(t, in, sum)
		if in.Node == "node1" {
			onNode1 = in
		}
	}
	if len(sums) != 3 || sums["node1"] != sums["node2"] || sums["node1"] != sums["node3"] {
		t.Errorf("customers' checksums by node: %v; want the same on three nodes", sums)
	}

	t.Run("no user or upload key speaks the node protocol", func(t *testing.T) {
		id := strconv.FormatInt(im.ID, 10)
		for _, key := range []string{n2.keys.user, n2.keys.upload, n2.keys.attacker} {
			for _, login := range []string{"node1", "upload", "user"} {
				cmd := n2.ssh(t, n2.keys, key, "ssh", login+"@127.0.0.1", sshd.NodeCommand, "send", id)
				var stdout, stderr strings.Builder
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				if err == nil || stdout.Len() != 0 || !strings.Contains(stderr.String(), "permission denied") {
					t.Errorf("%s as %s: %v, %d bytes of stream, %q", key, login, err, stdout.Len(), stderr.String())
				}
			}
		}
	})

	t.Run("a saved image travels incrementally", func(t *testing.T) {
		if onNode1 == nil {
			t.Skip("no instance on node1")
		}
		mustPSQLOn(t, onNode1, "UPDATE customers SET email = 'changed' || id WHERE id <= 10")
		saved, err := n1.user().Instances().Save(ctx, nobody, onNode1.ID)
		if err != nil {
			t.Fatalf("save: %v\n%s", err, n1.logs())
		}
		waitShipped(t, n2, saved.ID, cl...)
		full := receivedBytes(t, n2, im.ID, 0)
		for _, n := range cl[1:] {
			incr := receivedBytes(t, n, saved.ID, im.ID)
			// The saved copy brings its own WAL segment (16 MiB): well
			// below the whole image, nowhere near twice it.
			if incr*2 > full {
				t.Errorf("%s received %d bytes for the saved image against its parent, %d for the whole parent", n.name, incr, full)
			}
		}
		in, err := n3.user().Instances().Create(ctx, nobody, saved.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := mustPSQLOn(t, in, "SELECT count(*) FROM customers WHERE email LIKE 'changed%'"); got != "10" {
			t.Errorf("the saved image on %s has %s changed rows, want 10", in.Node, got)
		}
		n3.user().Instances().Destroy(ctx, nobody, in.ID)

		// Its destroy reaches every node.
		if err := n2.user().Images().Destroy(ctx, nobody, saved.ID); err != nil {
			t.Fatalf("destroy of the saved image through node2: %v", err)
		}
		if _, err := n3.user().Images().Get(ctx, nobody, saved.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
			t.Errorf("GET of the destroyed image = %v, want not found at once", err)
		}
		for _, n := range cl {
			eventually(t, n.name+" deletes its copy", func() bool {
				_, err := os.Stat(n.snapshotDir(saved.ID))
				return errors.Is(err, fs.ErrNotExist)
			})
		}
		// The row goes with the last copy.
		eventually(t, "the destroyed image's rows go", func() bool {
			left := state.SQL(t, "draupnir", fmt.Sprintf("SELECT (SELECT count(*) FROM images WHERE id = %d) + (SELECT count(*) FROM image_copies WHERE image_id = %d)", saved.ID, saved.ID))
			return strings.TrimSpace(left) == "0"
		})
	})

	t.Run("a node killed mid-copy leaves nothing half-made and catches up", func(t *testing.T) {
		n3.stop(syscall.SIGKILL)
		im2 := n1.readyImage(t, anonymise, backup)
		waitShipped(t, n1, im2.ID, n1, n2)
		// What a kill -9 in the middle of receiving leaves: a claimed
		// copy and half a stream in the receive directory.
		half := filepath.Join(n3.layout().Receive(), strconv.FormatInt(im2.ID, 10))
		if err := os.MkdirAll(half, 0o700); err != nil {
			t.Fatal(err)
		}
		testenv.Run(t, "btrfs", "-q", "subvolume", "create", filepath.Join(half, strconv.FormatInt(im2.ID, 10)))
		state.SQL(t, "draupnir", fmt.Sprintf("INSERT INTO image_copies (image_id, node, state, attempts) VALUES (%d, 'node3', 'copying', 1)", im2.ID))
		n3.start()
		got := waitShipped(t, n1, im2.ID, n3)
		for _, c := range got.Nodes {
			if c.Node == "node3" && c.Attempts != 2 {
				t.Errorf("node3's copy took %d attempts, want 2 (the killed one and its retry)", c.Attempts)
			}
		}
		if ents, err := os.ReadDir(n3.layout().Receive()); err != nil || len(ents) != 0 {
			t.Errorf("node3's receive directory after its restart: %d entries, %v", len(ents), err)
		}
		if !reflect.DeepEqual(n3.snapshotSums(t, im2.ID), n1.snapshotSums(t, im2.ID)) {
			t.Errorf("node3's copy of image %d differs from node1's", im2.ID)
		}
	})
}

// receivedBytes is how many stream bytes n logged receiving for image id
// (against parent, 0 for a whole image).
func receivedBytes(t *testing.T, n *clusterNode, id, parent int64) int64 {
	t.Helper()
	re := regexp.MustCompile(`"msg":"image received".*?"image":` + strconv.FormatInt(id, 10) + `[,}].*`)
	for _, line := range strings.Split(n.logs(), "\n") {
		if !re.MatchString(line) {
			continue
		}
		if !strings.Contains(line, `"parent":`+strconv.FormatInt(parent, 10)+`,`) {
			t.Errorf("%s received image %d against another parent than %d: %s", n.name, id, parent, line)
		}
		m := regexp.MustCompile(`"bytes":(\d+)`).FindStringSubmatch(line)
		if m != nil {
			b, _ := strconv.ParseInt(m[1], 10, 64)
			return b
		}
	}
	t.Fatalf("%s never logged receiving image %d\n%s", n.name, id, n.logs())
	return 0
}
