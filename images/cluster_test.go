package images

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// fakeCopies are image_copies for one node, "here".
type fakeCopies struct {
	mu   sync.Mutex
	rows map[int64]map[string]string // image → node → state
}

func (f *fakeCopies) copies(_ context.Context, ids []int64) (map[int64][]draupnir.ImageCopy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int64][]draupnir.ImageCopy{}
	for _, id := range ids {
		for n, st := range f.rows[id] {
			out[id] = append(out[id], draupnir.ImageCopy{Node: n, State: st})
		}
	}
	return out, nil
}

func (f *fakeCopies) readyHere(_ context.Context, id int64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rows[id]["here"] == "ready", nil
}

func (f *fakeCopies) markDestroying(_ context.Context, id int64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n := range f.rows[id] {
		f.rows[id][n] = "destroying"
	}
	return int64(len(f.rows[id])), nil
}

func clusterEnv(t *testing.T, copies map[int64]map[string]string) (*env, *fakeCopies) {
	e := newEnv(t)
	fc := &fakeCopies{rows: copies}
	e.s.copies = fc
	return e, fc
}

// TestReadyOnThisNode: in a cluster an image is ready for instances on a
// node only once that node holds a ready copy.
func TestReadyOnThisNode(t *testing.T) {
	for _, tt := range []struct {
		state string
		ok    bool
	}{{"ready", true}, {"copying", false}, {"failed", false}, {"", false}, {"destroying", false}} {
		copies := map[int64]map[string]string{1: {"there": "ready"}}
		if tt.state != "" {
			copies[1]["here"] = tt.state
		}
		e, _ := clusterEnv(t, copies)
		e.image(t, 1, draupnir.ImageReady, "snapshot")
		_, err := e.s.Ready(context.Background(), 1)
		if (err == nil) != tt.ok {
			t.Errorf("copy here %q: Ready = %v, want ok %v", tt.state, err, tt.ok)
		}
		if err != nil && (draupnir.KindOf(err) != draupnir.KindConflict || !strings.Contains(err.Error(), "not ready on this node")) {
			t.Errorf("copy here %q: %v, want a conflict saying it is not ready here", tt.state, err)
		}
	}
}

// TestDestroyEverywhere: in a cluster a destroy marks every node's copy
// (the image is gone for everyone from then on), destroys this node's
// instances and deletes its subvolumes; the rows are the shipping's.
func TestDestroyEverywhere(t *testing.T) {
	e, fc := clusterEnv(t, map[int64]map[string]string{1: {"here": "ready", "there": "ready", "third": "copying"}})
	e.image(t, 1, draupnir.ImageReady, "snapshot")
	in := &fakeInstances{t: t, s: e.s}
	if err := e.s.Destroy(context.Background(), uploader, 1, in); err != nil {
		t.Fatal(err)
	}
	if in.called == 0 {
		t.Error("this node's instances were not destroyed")
	}
	if left := e.vol.Subvolumes(); len(left) != 0 {
		t.Errorf("subvolumes left here: %v", left)
	}
	for n, st := range fc.rows[1] {
		if st != "destroying" {
			t.Errorf("copy on %s is %s after the destroy, want destroying", n, st)
		}
	}
	if e.store.row(1) == nil {
		t.Error("the image's row went before the copies")
	}
	// An image that no node holds a copy of goes at once.
	e2, _ := clusterEnv(t, map[int64]map[string]string{})
	e2.image(t, 1, draupnir.ImageReady, "snapshot")
	if err := e2.s.Destroy(context.Background(), uploader, 1, &fakeInstances{t: t, s: e2.s}); err != nil {
		t.Fatal(err)
	}
	if e2.store.row(1) != nil || len(e2.vol.Subvolumes()) != 0 {
		t.Error("an image without copies survived its destroy")
	}
}

// TestNodesAttribute: Get and List say where each image is.
func TestNodesAttribute(t *testing.T) {
	e, _ := clusterEnv(t, map[int64]map[string]string{1: {"here": "ready"}})
	e.image(t, 1, draupnir.ImageReady, "snapshot")
	e.image(t, 2, draupnir.ImageUploading, "upload")
	im, err := e.s.Get(context.Background(), uploader, 1)
	if err != nil || len(im.Nodes) != 1 || im.Nodes[0] != (draupnir.ImageCopy{Node: "here", State: "ready"}) {
		t.Errorf("Get = %+v, %v", im, err)
	}
	list, err := e.s.List(context.Background(), draupnir.Principal{Name: "alice@example.com"})
	if err != nil || len(list) != 2 || len(list[0].Nodes) != 1 || len(list[1].Nodes) != 0 {
		t.Errorf("List = %+v, %v", list, err)
	}
}
