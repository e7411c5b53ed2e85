// Package mock holds the one set of stand-ins that the unit tests of
// several packages share: the service contracts declared in package
// draupnir (ImageService, InstanceService) as small in-memory
// implementations that keep state, enforce visibility like the real
// services, record what they were asked and as whom, and can be told to
// fail; and btrfs on a plain directory tree, for the lifecycle tests of
// images and instances that run without root. Btrfs is the same for the core's own dependency: a fake of
// btrfs on a plain directory tree, for the unit tests of images and
// instances, which run without root.
package mock

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
)

var (
	_ draupnir.ImageService    = (*Images)(nil)
	_ draupnir.InstanceService = (*Instances)(nil)
)

// Images is an in-memory draupnir.ImageService: images 1 (ready) and 2
// (created) to begin with, visibility and state rules like the real
// service's, every call recorded, and a switch to make every call fail.
type Images struct {
	mu     sync.Mutex
	ByID   map[int64]*draupnir.Image
	NextID int64
	recorder
	Err    error // returned by every call when set
	Panics bool  // every call panics when set

	// Created holds the arguments of the last Create, Patch the last
	// Update's patch.
	Created struct {
		P          draupnir.Principal
		BackedUpAt time.Time
		Script     string
		Source     string
	}
	Patch draupnir.ImagePatch
}

func NewImages() *Images {
	t0 := time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)
	return &Images{
		NextID: 3,
		ByID: map[int64]*draupnir.Image{
			1: {ID: 1, State: draupnir.ImageReady, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0,
				AnonymisationScript: "\\c db\nDELETE FROM secrets;", SizeBytes: 4096, PostgresVersion: "15", Database: "db"},
			2: {ID: 2, State: draupnir.ImageCreated, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0},
		},
	}
}

func (f *Images) record(name string, p draupnir.Principal) error {
	f.note(name, p)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Panics {
		panic("fake images: told to panic")
	}
	return f.Err
}

func (f *Images) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error) {
	if err := f.record("List", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Image
	for _, im := range f.ByID {
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *Images) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.record("Get", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.ByID[id]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	return im, nil
}

func (f *Images) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return f.CreateInSeries(ctx, p, "", backedUpAt, script)
}

func (f *Images) CreateInSeries(ctx context.Context, p draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	if err := f.record("Create", p); err != nil {
		return nil, err
	}
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may create images")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Created.P, f.Created.BackedUpAt, f.Created.Script, f.Created.Source = p, backedUpAt, script, source
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	im := &draupnir.Image{ID: f.NextID, State: draupnir.ImageCreated, BackedUpAt: backedUpAt,
		AnonymisationScript: script, Source: source, CreatedAt: now, UpdatedAt: now}
	f.ByID[im.ID] = im
	f.NextID++
	return im, nil
}

func (f *Images) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	if err := f.record("Update", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Patch = patch
	im, ok := f.ByID[id]
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
	f.ByID[id] = &cp
	return &cp, nil
}

func (f *Images) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.record("Finalise", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.ByID[id]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	if im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is already ready", id)
	}
	cp := *im
	cp.State = draupnir.ImageReady
	f.ByID[id] = &cp
	return &cp, nil
}

func (f *Images) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	if err := f.record("Destroy", p); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.ByID[id]
	if !ok {
		return draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
	}
	if !p.CanDestroy(im) {
		return draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may destroy images that others saved or uploaded")
	}
	delete(f.ByID, id)
	return nil
}

// Instances is an in-memory draupnir.InstanceService: instances 1 (of
// alice@example.com) and 2 (of bob@example.com) of image 1 to begin with;
// each principal sees its own, the upload principal all.
type Instances struct {
	mu      sync.Mutex
	ByID    map[int64]*draupnir.Instance
	Images  *Images // where Create looks the image up
	Err     error   // returned by every call when set
	ImageID int64   // the image_id of the last Create
	// Options and Patch are those of the last Create and Update.
	Options draupnir.CreateOptions
	Patch   draupnir.InstancePatch
	// Graves are the tombstones: Get of one of their ids is KindGone.
	Graves []*draupnir.Tombstone
	recorder
}

func NewInstances(images *Images) *Instances {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	return &Instances{
		Images: images,
		ByID: map[int64]*draupnir.Instance{
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

func (f *Instances) record(name string, p draupnir.Principal) error {
	f.note(name, p)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Err
}

func (f *Instances) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error) {
	if err := f.record("List", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Instance
	for _, in := range f.ByID {
		if p.CanSee(in.Owner) {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *Instances) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error) {
	if err := f.record("Get", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.ByID[id]
	if !ok || !p.CanSee(in.Owner) {
		for _, g := range f.Graves {
			if g.ID == id && p.CanSee(g.Owner) {
				return nil, draupnir.Errorf(draupnir.KindGone, "instance %d was destroyed at %s: %s",
					id, g.DestroyedAt.Format(time.RFC3339), g.Detail)
			}
		}
		return nil, draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	return in, nil
}

// Update records patch and sets the expiry and protection it asks for,
// from a fixed now.
func (f *Instances) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.InstancePatch) (*draupnir.Instance, error) {
	if err := f.record("Update", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.ByID[id]
	if !ok || !p.CanSee(in.Owner) {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	f.Patch = patch
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time {
		if d == 0 {
			return time.Time{}
		}
		return now.Add(d)
	}
	if patch.TTL != nil {
		in.ExpiresAt = at(*patch.TTL)
	}
	if patch.ProtectFor != nil {
		in.ProtectedUntil = at(*patch.ProtectFor)
	}
	return in, nil
}

// Tombstones returns the Graves p may see.
func (f *Instances) Tombstones(ctx context.Context, p draupnir.Principal) ([]*draupnir.Tombstone, error) {
	if err := f.record("Tombstones", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*draupnir.Tombstone
	for _, g := range f.Graves {
		if p.CanSee(g.Owner) {
			out = append(out, g)
		}
	}
	return out, nil
}

func (f *Instances) Create(ctx context.Context, p draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	if err := f.record("Create", p); err != nil {
		return nil, err
	}
	im, err := f.Images.Get(ctx, p, imageID)
	if err != nil {
		return nil, err
	}
	if !im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is not ready", imageID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ImageID, f.Options = imageID, opts
	now := time.Date(2026, 11, 24, 11, 0, 0, 0, time.UTC)
	in := &draupnir.Instance{ID: 3, ImageID: imageID, Owner: p.Name, State: draupnir.InstanceRunning,
		Port: 6000, Hostname: "db.example.com", Username: "draupnir", Password: "pw", Database: "db",
		CreatedAt: now, UpdatedAt: now, LastActiveAt: now}
	if opts.TTL > 0 {
		in.ExpiresAt = now.Add(opts.TTL)
	}
	f.ByID[in.ID] = in
	return in, nil
}

// Reset resets instance id to image imageID (0: its own), which must be
// ready; the instance keeps everything else.
func (f *Instances) Reset(ctx context.Context, p draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	if err := f.record("Reset", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	in, ok := f.ByID[id]
	f.mu.Unlock()
	if !ok || !p.CanSee(in.Owner) {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	if imageID == 0 {
		imageID = in.ImageID
	}
	im, err := f.Images.Get(ctx, p, imageID)
	if err != nil {
		return nil, err
	}
	if !im.Ready() {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is not ready", imageID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ImageID = imageID
	in.ImageID = imageID
	return in, nil
}

// Save makes image NextID of instance id, owned by p, ready at once.
func (f *Instances) Save(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.record("Save", p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	in, ok := f.ByID[id]
	f.mu.Unlock()
	if !ok || !p.CanSee(in.Owner) {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	parent, err := f.Images.Get(ctx, p, in.ImageID)
	if err != nil {
		return nil, err
	}
	im := *parent
	f.Images.mu.Lock()
	defer f.Images.mu.Unlock()
	im.ID, im.Owner, im.ParentImageID, im.FromInstanceID = f.Images.NextID, p.Name, parent.ID, id
	im.AnonymisationScript = ""
	f.Images.NextID++
	f.Images.ByID[im.ID] = &im
	return &im, nil
}

func (f *Instances) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	if err := f.record("Destroy", p); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.ByID[id]
	if !ok || !p.CanSee(in.Owner) {
		return draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
	}
	delete(f.ByID, id)
	return nil
}

// recorder keeps what a fake was asked, and as whom.
type recorder struct {
	rmu        sync.Mutex
	calls      []string
	principals []draupnir.Principal
}

func (r *recorder) note(name string, p draupnir.Principal) {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.calls = append(r.calls, name)
	r.principals = append(r.principals, p)
}

// Calls returns the names of the methods called so far, in order.
func (r *recorder) Calls() []string {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	return append([]string(nil), r.calls...)
}

// Principals returns who each call so far acted as, in order.
func (r *recorder) Principals() []draupnir.Principal {
	r.rmu.Lock()
	defer r.rmu.Unlock()
	return append([]draupnir.Principal(nil), r.principals...)
}
