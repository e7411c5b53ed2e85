package e2e

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// Helpers shared by the cluster tests (cluster_test.go, ship_test.go).

// waitShipped waits until image id is ready on every node of nodes, as the
// image's nodes attribute says through via's API, and returns the image.
func waitShipped(t *testing.T, via *clusterNode, id int64, nodes ...*clusterNode) *draupnir.Image {
	t.Helper()
	var im *draupnir.Image
	eventually(t, "image "+strconv.FormatInt(id, 10)+" is ready on every node", func() bool {
		var err error
		im, err = via.upload().Images().Get(context.Background(), draupnir.Principal{}, id)
		if err != nil {
			return false
		}
		for _, n := range nodes {
			if copyState(im, n.name) != "ready" {
				return false
			}
		}
		return true
	})
	return im
}

// copyState is the state of im's copy on node ("" for none).
func copyState(im *draupnir.Image, node string) string {
	for _, c := range im.Nodes {
		if c.Node == node {
			return c.State
		}
	}
	return ""
}

// snapshotDir is image id's snapshot on n.
func (n *clusterNode) snapshotDir(id int64) string {
	return filepath.Join(n.layout().Snapshots(), strconv.FormatInt(id, 10))
}

// snapshotSums describes image id's snapshot on n (testenv.TreeSums).
func (n *clusterNode) snapshotSums(t *testing.T, id int64) map[string]string {
	t.Helper()
	return testenv.TreeSums(t, n.snapshotDir(id))
}
