package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// TestWarmPool: with instances.warm_pool set, ready images keep started
// instances that nobody sees, a create hands one out with its own password,
// and the pool refills; destroying the image empties it.
func TestWarmPool(t *testing.T) {
	s := startServer(t, "warm_pool = 2")
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	subvolumes := func() int {
		ents, _ := os.ReadDir(s.layout().Instances())
		return len(ents)
	}
	waitFor := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); subvolumes() != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d instance subvolumes, want %d\n%s", subvolumes(), want, s.logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(2)
	if list, err := s.upload().Instances().List(ctx, draupnir.Principal{}); err != nil || len(list) != 0 {
		t.Fatalf("warm instances are visible: %v %d", err, len(list))
	}

	a, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b2, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Password == b2.Password || a.Owner != b2.Owner || a.State != "running" {
		t.Errorf("instances from the pool: %+v %+v", a, b2)
	}
	for _, in := range []int64{a.ID, b2.ID} {
		got, err := s.user().Instances().Get(ctx, draupnir.Principal{}, in)
		if err != nil {
			t.Fatal(err)
		}
		if out := mustPSQL(t, got, "SELECT count(*) FROM customers"); out != "1000" {
			t.Errorf("instance %d from the pool: %s customers", in, out)
		}
	}
	waitFor(4) // two handed out, two warm again
	list, err := s.user().Instances().List(ctx, draupnir.Principal{})
	if err != nil || len(list) != 2 {
		t.Fatalf("user sees %d instances (%v), want the 2 created", len(list), err)
	}

	if err := s.upload().Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(0)
}
