package instances

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// fakeCluster lists fixed nodes.
type fakeCluster []*draupnir.Node

func (f fakeCluster) List(context.Context) ([]*draupnir.Node, error) { return f, nil }

// TestAnotherNodesInstance: a node never acts on an instance of another
// node; it sends the caller there with what the state database says, and
// reads it unavailable while its node is down.
func TestAnotherNodesInstance(t *testing.T) {
	for _, down := range []bool{false, true} {
		t.Run(fmt.Sprintf("down=%v", down), func(t *testing.T) {
			cluster := fakeCluster{
				{Name: "a", AdvertiseHost: "a.example.com"},
				{Name: "b", AdvertiseHost: "b.example.com", CACertificate: "CA of b", Down: down},
			}
			e := newEnv(t, func(o *Options) { o.Node, o.Cluster = "a", cluster })
			ctx := context.Background()
			alice := draupnir.Principal{Name: "alice@example.com"}
			e.store.add(draupnir.Instance{ID: 7, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceRunning, Port: minPort, Node: "b"})
			e.store.add(draupnir.Instance{ID: 8, ImageID: testImage, Owner: alice.Name, State: draupnir.InstanceRunning, Port: minPort, Node: "a"})

			wantElsewhere := func(what string, err error) {
				t.Helper()
				var ee *draupnir.ElsewhereError
				if !errors.As(err, &ee) || ee.Node != "b" || ee.Instance.ID != 7 {
					t.Fatalf("%s: %v, want elsewhere on b", what, err)
				}
				in := ee.Instance
				if in.Hostname != "b.example.com" || in.CACertificate != "CA of b" {
					t.Errorf("%s: decorated as %q / %q, want b's host and CA", what, in.Hostname, in.CACertificate)
				}
				if want := map[bool]draupnir.InstanceState{false: draupnir.InstanceRunning, true: draupnir.InstanceUnavailable}[down]; in.State != want {
					t.Errorf("%s: state %s, want %s", what, in.State, want)
				}
			}
			_, err := e.s.Get(ctx, alice, 7)
			wantElsewhere("Get", err)
			ttl := time.Hour
			_, err = e.s.Update(ctx, alice, 7, draupnir.InstancePatch{TTL: &ttl})
			wantElsewhere("Update", err)
			_, err = e.s.Reset(ctx, alice, 7, 0)
			wantElsewhere("Reset", err)
			_, err = e.s.Save(ctx, alice, 7)
			wantElsewhere("Save", err)
			wantElsewhere("Destroy", e.s.Destroy(ctx, alice, 7))
			if r := e.store.row(7); r == nil || r.State != draupnir.InstanceRunning {
				t.Errorf("the other node's row changed here: %+v", r)
			}
			// Someone else's instance on another node stays not found.
			if _, err := e.s.Get(ctx, draupnir.Principal{Name: "mallory@example.com"}, 7); draupnir.KindOf(err) != draupnir.KindNotFound {
				t.Errorf("Get by another user: %v, want not found", err)
			}

			list, err := e.s.List(ctx, alice)
			if err != nil || len(list) != 2 {
				t.Fatalf("List = %v, %v", list, err)
			}
			if list[0].ID != 7 || list[0].Hostname != "b.example.com" || (list[0].State == draupnir.InstanceUnavailable) != down {
				t.Errorf("b's instance listed as %+v", list[0])
			}
			if list[1].ID != 8 || list[1].Hostname != "db.example.com" || list[1].State != draupnir.InstanceRunning {
				t.Errorf("own instance listed as %+v", list[1])
			}
		})
	}
}

// nodeStores returns the real stores of nodes a and b on one throwaway
// state database holding ready image 1 (made on a) and 2 (made on b, with a
// ready copy on a).
func nodeStores(t *testing.T) (a, b pgStore) {
	t.Helper()
	pool := testenv.StatePool(t)
	if _, err := pool.Exec(context.Background(), `
		INSERT INTO images (id, state, backed_up_at, anonymisation_script, database_name, node)
		VALUES (1, 'ready', now(), '', 'app', 'a'), (2, 'ready', now(), '', 'app', 'b'), (3, 'ready', now(), '', 'app', 'b');
		INSERT INTO image_copies (image_id, node, state) VALUES (2, 'a', 'ready'), (3, 'a', 'copying')`); err != nil {
		t.Fatal(err)
	}
	return pgStore{pool: pool, node: "a"}, pgStore{pool: pool, node: "b"}
}

// TestStoreScopesByNode: each node lists, pools and allocates ports for
// its own instances only, while reading everyone's.
func TestStoreScopesByNode(t *testing.T) {
	a, b := nodeStores(t)
	ctx := context.Background()
	ins := func(s pgStore, image int64, owner string) *draupnir.Instance {
		t.Helper()
		id, err := s.nextID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		in, err := s.insert(ctx, id, image, owner, "draupnir", "pw", 6000, 6001, []int32{}, time.Time{})
		if err != nil || in == nil {
			t.Fatalf("insert on %s: %v, %v", s.node, in, err)
		}
		return in
	}
	a1, b1 := ins(a, 1, "alice"), ins(b, 2, "alice")
	for _, in := range []*draupnir.Instance{a1, b1} {
		if err := a.setState(ctx, in.ID, draupnir.InstanceRunning, ""); err != nil {
			t.Fatal(err)
		}
	}
	if a1.Port != 6000 || b1.Port != 6000 || a1.Node != "a" || b1.Node != "b" {
		t.Errorf("ports are per node: a got %d on %q, b got %d on %q", a1.Port, a1.Node, b1.Port, b1.Node)
	}
	if err := a.setState(ctx, ins(a, 1, "").ID, draupnir.InstanceWarm, ""); err != nil {
		t.Fatal(err)
	}
	third, err := a.nextID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := a.insert(ctx, third, 1, "bob", "draupnir", "pw", 6000, 6001, []int32{}, time.Time{}); in != nil {
		t.Errorf("a third instance on a's two ports: %+v", in)
	}
	if p, err := b.movePort(ctx, b1.ID, 6000, 6001, []int32{6000}); err != nil || p != 6001 {
		t.Errorf("b's movePort = %d, %v; a's ports are not b's", p, err)
	}
	for _, s := range []pgStore{a, b} {
		list, err := s.listAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list {
			if in.Node != s.node {
				t.Errorf("node %s lists %s's instance %d", s.node, in.Node, in.ID)
			}
		}
		if n, free, err := s.usage(ctx, 6000, 6001); err != nil || n != len(list) || free != 2-len(list) {
			t.Errorf("usage of %s = %d, %d, %v; it has %d", s.node, n, free, err, len(list))
		}
	}
	if owned, _ := b.listOwned(ctx, ptr("alice")); len(owned) != 2 {
		t.Errorf("alice's instances seen from b: %d, want both nodes'", len(owned))
	}
	if of, _ := b.listOfImage(ctx, 1, true); len(of) != 0 {
		t.Errorf("b's own instances of image 1: %v", of)
	}
	if of, _ := b.listOfImage(ctx, 1, false); len(of) != 2 {
		t.Errorf("instances of image 1 anywhere: %d, want 2", len(of))
	}

	// Warm pool: per node and image, over the images the node holds.
	sizes, err := a.poolSizes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[int64]int{1: 1, 2: 0}; fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("a's pool sizes %v, want %v (image 3 is still copying to a)", sizes, want)
	}
	if sizes, _ := b.poolSizes(ctx); fmt.Sprint(sizes) != fmt.Sprint(map[int64]int{2: 0, 3: 0}) {
		t.Errorf("b's pool sizes %v", sizes)
	}
	if in, err := b.claimWarm(ctx, 1, "carol", time.Time{}); err != nil || in != nil {
		t.Errorf("b took a's warm instance: %+v, %v", in, err)
	}
	if in, err := a.claimWarm(ctx, 1, "carol", time.Time{}); err != nil || in == nil || in.Node != "a" {
		t.Errorf("a's claimWarm = %+v, %v", in, err)
	}
}

// TestOwnerLockAcrossNodes: a user's lock held by one node keeps another
// node's create for that user waiting, and nobody else's.
func TestOwnerLockAcrossNodes(t *testing.T) {
	a, b := nodeStores(t)
	ctx := context.Background()
	release, err := a.lockOwner(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := b.lockOwner(ctx, "alice")
		if err == nil {
			r()
		}
		got <- err
	}()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if r, err := b.lockOwner(short, "alice"); err == nil {
		r()
		t.Fatal("node b took alice's lock while node a held it")
	}
	other, err := b.lockOwner(ctx, "bob")
	if err != nil {
		t.Fatalf("bob's lock: %v", err)
	}
	other()
	select {
	case err := <-got:
		t.Fatalf("node b's wait for alice's lock ended before node a let go: %v", err)
	default:
	}
	release()
	if err := <-got; err != nil {
		t.Fatalf("node b after node a let go: %v", err)
	}
}

// TestQuotaLockedOnlyInACluster: a node of a cluster takes the user's lock
// shared by the nodes for a create within a quota; a single node, the
// upload principal and a server without quota do not pay for it; a lock
// that cannot be taken fails the create with nothing made.
func TestQuotaLockedOnlyInACluster(t *testing.T) {
	alice := draupnir.Principal{Name: "alice@example.com"}
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	tests := []struct {
		name   string
		node   string
		quota  int
		p      draupnir.Principal
		locked int
	}{
		{"node with a quota", "a", 3, alice, 1},
		{"single node", "", 3, alice, 0},
		{"no quota", "a", 0, alice, 0},
		{"upload principal", "a", 3, upload, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Node, o.MaxPerUser, o.Cluster = tt.node, tt.quota, fakeCluster{} })
			if _, err := e.s.Create(context.Background(), tt.p, testImage, draupnir.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if e.store.ownerLocks != tt.locked {
				t.Errorf("took the owner's lock %d times, want %d", e.store.ownerLocks, tt.locked)
			}
		})
	}
	t.Run("lock unavailable", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { o.Node, o.MaxPerUser = "a", 3 })
		e.store.fail["lockOwner"] = errors.New("state database gone")
		if _, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{}); err == nil {
			t.Fatal("created without the lock")
		}
		if list, _ := e.store.listAll(context.Background()); len(list) != 0 {
			t.Errorf("left %d rows", len(list))
		}
	})
}

// TestReconcileTakesOverTheSingleNodesInstances: a single node made a node
// of a cluster keeps its instances (rows of no node whose data it holds)
// rather than taking their data for orphans; it never touches data a row of
// another node claims, nor a row of no node whose data it does not hold.
func TestReconcileTakesOverTheSingleNodesInstances(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Node, o.Cluster = "a", fakeCluster{{Name: "b"}} })
	ctx := context.Background()
	rows := []struct {
		row    draupnir.Instance
		subvol bool
	}{
		{draupnir.Instance{ID: 1, Owner: alice.Name, State: draupnir.InstanceRunning}, true},            // the single node's
		{draupnir.Instance{ID: 2, Owner: alice.Name, State: draupnir.InstanceRunning}, false},           // of no node, data elsewhere
		{draupnir.Instance{ID: 3, Owner: alice.Name, State: draupnir.InstanceRunning, Node: "b"}, true}, // b's, a stray copy here
	}
	for i, r := range rows {
		r.row.ImageID, r.row.Port = testImage, minPort+i
		e.store.add(r.row)
		if r.subvol {
			if err := e.vol.AddSubvolume(e.s.dir(r.row.ID), false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if r := e.store.row(1); r.Node != "a" || r.State != draupnir.InstanceRunning {
		t.Errorf("the single node's instance: %+v, want a's, running", r)
	}
	if ok, _ := e.vol.IsSubvolume(e.s.dir(1)); !ok {
		t.Error("the single node's instance lost its data")
	}
	if r := e.store.row(2); r.Node != "" {
		t.Errorf("took over an instance whose data is not here: %+v", r)
	}
	if ok, _ := e.vol.IsSubvolume(e.s.dir(3)); !ok {
		t.Error("deleted data that node b's row claims")
	}
	if r := e.store.row(3); r.Node != "b" || r.State != draupnir.InstanceRunning {
		t.Errorf("b's row changed: %+v", r)
	}
}
