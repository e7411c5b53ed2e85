package instances

import (
	"context"
	"errors"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

func countState(e *env, imageID int64, state draupnir.InstanceState) int {
	return len(e.store.listWhere(func(r *draupnir.Instance) bool { return r.ImageID == imageID && r.State == state }))
}

// The pool keeps WarmPool started, unowned instances of every ready image;
// a create hands one out whole, and the next pass replaces it.
func TestPoolRefill(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WarmPool = 2 })
	ctx := context.Background()
	e.s.fillPool(ctx)
	if n := countState(e, testImage, draupnir.InstanceWarm); n != 2 {
		t.Fatalf("%d warm instances, want 2", n)
	}
	if e.warmUps != 2 {
		t.Errorf("%d warm-ups, want one per warm instance", e.warmUps)
	}
	for _, r := range e.store.listWhere(func(*draupnir.Instance) bool { return true }) {
		if r.Owner != "" {
			t.Errorf("a warm instance is owned by %q", r.Owner)
		}
	}
	if list, _ := e.s.List(ctx, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}); len(list) != 0 {
		t.Errorf("warm instances are listed: %v", list)
	}

	in, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if specs, _ := e.pg.started(); len(specs) != 2 || in.Owner != alice.Name || in.State != draupnir.InstanceRunning {
		t.Errorf("created %+v after %d starts; want a warm one handed out", in, len(specs))
	}
	if n := countState(e, testImage, draupnir.InstanceWarm); n != 1 {
		t.Errorf("%d warm instances after a take, want 1", n)
	}
	e.s.fillPool(ctx)
	if n := countState(e, testImage, draupnir.InstanceWarm); n != 2 {
		t.Errorf("%d warm instances after a refill, want 2", n)
	}

	// A smaller pool: the extra warm instances go, the owned one stays.
	e.s.opts.WarmPool = 1
	e.s.fillPool(ctx)
	if n := countState(e, testImage, draupnir.InstanceWarm); n != 1 {
		t.Errorf("%d warm instances after shrinking, want 1", n)
	}
	if r := e.store.row(in.ID); r == nil || r.State != draupnir.InstanceRunning {
		t.Errorf("shrinking the pool touched an owned instance: %+v", r)
	}
}

// An image whose instances cannot start does not keep the others' pools
// empty, and the failure leaves nothing behind.
func TestPoolRefillFailure(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.WarmPool = 1 })
	const broken = 2
	e.store.ready[broken] = "app"
	e.images[broken] = &draupnir.ReadyImage{ID: broken, Database: "app", Snapshot: e.images[testImage].Snapshot, Superuser: "postgres"}
	e.pg.startErr = func(spec supervisor.Spec) error {
		if r := e.store.row(idOf(e, spec.DataDir)); r != nil && r.ImageID == broken {
			return errors.New("no postgres for this version")
		}
		return nil
	}
	for range 2 {
		e.s.fillPool(context.Background())
	}
	if n := countState(e, testImage, draupnir.InstanceWarm); n != 1 {
		t.Errorf("%d warm instances of the good image, want 1", n)
	}
	if rows := e.store.listWhere(func(r *draupnir.Instance) bool { return r.ImageID == broken }); len(rows) != 0 {
		t.Errorf("the broken image's failed creates left rows: %v", rows)
	}
}

// idOf returns the instance whose data directory is dir.
func idOf(e *env, dir string) int64 {
	for _, r := range e.store.listWhere(func(*draupnir.Instance) bool { return true }) {
		if e.s.dir(r.ID) == dir {
			return r.ID
		}
	}
	return 0
}

// With no pool configured, a create makes the instance itself.
func TestCreateWithoutPool(t *testing.T) {
	e := newEnv(t, nil)
	e.store.add(draupnir.Instance{ID: 9, ImageID: testImage, State: draupnir.InstanceWarm, Port: maxPort})
	in, err := e.s.Create(context.Background(), alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if in.ID == 9 {
		t.Errorf("a warm instance was handed out with the pool off")
	}
}
