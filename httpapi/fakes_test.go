package httpapi

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
)

// Small in-memory stand-ins for the core services, enough to exercise the
// door: they keep state, enforce visibility like the real services, record
// what they were asked, and can be told to fail.

type fakeImages struct {
	mu     sync.Mutex
	images map[int64]*draupnir.Image
	nextID int64
	calls  []string
	err    error // returned by every call when set
	panics bool

	created struct {
		p          draupnir.Principal
		backedUpAt time.Time
		script     string
	}
	patch draupnir.ImagePatch
}

func newFakeImages() *fakeImages {
	t0 := time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)
	return &fakeImages{
		nextID: 3,
		images: map[int64]*draupnir.Image{
			1: {ID: 1, State: draupnir.ImageReady, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0,
				AnonymisationScript: "\\c db\nDELETE FROM secrets;", SizeBytes: 4096, PostgresVersion: "15", Database: "db"},
			2: {ID: 2, State: draupnir.ImageCreated, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0},
		},
	}
}

func (f *fakeImages) record(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if f.panics {
		panic("fake images: told to panic")
	}
	return f.err
}

func (f *fakeImages) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeImages) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error) {
	if err := f.record("List"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Image
	for _, im := range f.images {
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeImages) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.record("Get"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.images[id]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	return im, nil
}

func (f *fakeImages) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	if err := f.record("Create"); err != nil {
		return nil, err
	}
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may create images")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created.p, f.created.backedUpAt, f.created.script = p, backedUpAt, script
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	im := &draupnir.Image{ID: f.nextID, State: draupnir.ImageCreated, BackedUpAt: backedUpAt,
		AnonymisationScript: script, CreatedAt: now, UpdatedAt: now}
	f.images[im.ID] = im
	f.nextID++
	return im, nil
}

func (f *fakeImages) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	if err := f.record("Update"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.patch = patch
	im, ok := f.images[id]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	if im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is ready and can no longer change", id)
	}
	cp := *im
	if patch.AnonymisationScript != nil {
		cp.AnonymisationScript = *patch.AnonymisationScript
	}
	if patch.BackedUpAt != nil {
		cp.BackedUpAt = *patch.BackedUpAt
	}
	f.images[id] = &cp
	return &cp, nil
}

func (f *fakeImages) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.record("Finalise"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.images[id]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	if im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is already ready", id)
	}
	cp := *im
	cp.State = draupnir.ImageReady
	f.images[id] = &cp
	return &cp, nil
}

func (f *fakeImages) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	if err := f.record("Destroy"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.images[id]; !ok {
		return draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	delete(f.images, id)
	return nil
}

type fakeInstances struct {
	mu        sync.Mutex
	instances map[int64]*draupnir.Instance
	images    *fakeImages
	calls     []string
	err       error
	imageID   int64 // the image_id of the last Create
}

func newFakeInstances(images *fakeImages) *fakeInstances {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	return &fakeInstances{
		images: images,
		instances: map[int64]*draupnir.Instance{
			1: {ID: 1, ImageID: 1, Owner: "alice@example.com", State: draupnir.InstanceRunning, Port: 5678,
				Hostname: "db.example.com", Username: "draupnir", Password: "s3cret", Database: "db",
				CACertificate: "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
				CreatedAt:     t0, UpdatedAt: t0},
			2: {ID: 2, ImageID: 1, Owner: "bob@example.com", State: draupnir.InstanceRunning, Port: 5679,
				Hostname: "db.example.com", Username: "draupnir", Password: "other", Database: "db",
				CreatedAt: t0, UpdatedAt: t0},
		},
	}
}

func (f *fakeInstances) record(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	return f.err
}

func (f *fakeInstances) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeInstances) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error) {
	if err := f.record("List"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Instance
	for _, in := range f.instances {
		if p.CanSee(in.Owner) {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeInstances) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error) {
	if err := f.record("Get"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.instances[id]
	if !ok || !p.CanSee(in.Owner) {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	return in, nil
}

func (f *fakeInstances) Create(ctx context.Context, p draupnir.Principal, imageID int64) (*draupnir.Instance, error) {
	if err := f.record("Create"); err != nil {
		return nil, err
	}
	im, err := f.images.Get(ctx, p, imageID)
	if err != nil {
		return nil, err
	}
	if !im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is not ready", imageID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.imageID = imageID
	now := time.Date(2026, 11, 24, 11, 0, 0, 0, time.UTC)
	in := &draupnir.Instance{ID: 3, ImageID: imageID, Owner: p.Name, State: draupnir.InstanceRunning,
		Port: 6000, Hostname: "db.example.com", Username: "draupnir", Password: "pw", Database: "db",
		CreatedAt: now, UpdatedAt: now}
	f.instances[in.ID] = in
	return in, nil
}

func (f *fakeInstances) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	if err := f.record("Destroy"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.instances[id]
	if !ok || !p.CanSee(in.Owner) {
		return draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	delete(f.instances, id)
	return nil
}

// fakeAuth knows a fixed set of tokens.
type fakeAuth struct {
	tokens map[string]draupnir.Principal
	err    error // returned for every token when set
}

func (f *fakeAuth) AuthenticateToken(ctx context.Context, token string) (draupnir.Principal, error) {
	if f.err != nil {
		return draupnir.Principal{}, f.err
	}
	p, ok := f.tokens[token]
	if !ok {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown token")
	}
	return p, nil
}

type fakeHealth struct{ err error }

func (f fakeHealth) Check(context.Context) error { return f.err }
