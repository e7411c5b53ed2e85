package main

import (
	"context"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/metrics"
)

// imageService is what the doors call on the image service; observedImages
// decorates it with metrics, so that every door is measured alike and the
// core knows nothing of Prometheus.
type imageService interface {
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error)
	Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error)
	Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error)
	Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	Destroy(ctx context.Context, p draupnir.Principal, id int64) error
	BeginUpload(ctx context.Context, p draupnir.Principal, id int64) (dir string, end func(), err error)
	StreamUpload(ctx context.Context, p draupnir.Principal, id int64, r io.Reader) (draupnir.UploadSummary, error)
}

// instanceService is what the doors call on the instance service.
type instanceService interface {
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error)
	Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error)
	Create(ctx context.Context, p draupnir.Principal, imageID int64) (*draupnir.Instance, error)
	Destroy(ctx context.Context, p draupnir.Principal, id int64) error
}

var (
	_ imageService    = cascadingImages{}
	_ instanceService = (*instances.Service)(nil)
)

type observedImages struct {
	imageService
	m     *metrics.Metrics
	meter *uploadMeter
	dir   func(id int64) string // an image's upload directory
}

func newObservedImages(s imageService, m *metrics.Metrics, uploadsDir string) observedImages {
	return observedImages{imageService: s, m: m, meter: newUploadMeter(), dir: func(id int64) string {
		return filepath.Join(uploadsDir, strconv.FormatInt(id, 10))
	}}
}

func (o observedImages) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	start := time.Now()
	im, err := o.imageService.Create(ctx, p, backedUpAt, script)
	o.m.ObserveOperation(metrics.OpImageCreate, err, time.Since(start))
	return im, err
}

func (o observedImages) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if n := o.meter.grown(id, o.dir(id), true); n > 0 {
		o.m.ObserveUpload("files", n, nil)
	}
	start := time.Now()
	im, err := o.imageService.Finalise(ctx, p, id)
	o.m.ObserveOperation(metrics.OpImageFinalise, err, time.Since(start))
	return im, err
}

func (o observedImages) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	o.meter.forget(id)
	start := time.Now()
	err := o.imageService.Destroy(ctx, p, id)
	o.m.ObserveOperation(metrics.OpImageDestroy, err, time.Since(start))
	return err
}

func (o observedImages) StreamUpload(ctx context.Context, p draupnir.Principal, id int64, r io.Reader) (draupnir.UploadSummary, error) {
	o.meter.forget(id)
	sum, err := o.imageService.StreamUpload(ctx, p, id, r)
	o.m.ObserveUpload("stream", sum.Bytes, err)
	return sum, err
}

// BeginUpload counts the bytes of SFTP and scp uploads by how much the
// upload directory grows: the SSH door writes the files itself. The door
// begins and ends an upload for every file operation, so the tree is walked
// at most once a second per image, and once more when the image is
// finalised; bytes that are overwritten or removed are not counted.
func (o observedImages) BeginUpload(ctx context.Context, p draupnir.Principal, id int64) (string, func(), error) {
	dir, end, err := o.imageService.BeginUpload(ctx, p, id)
	if err != nil {
		o.m.ObserveUpload("files", 0, err)
		return dir, end, err
	}
	o.meter.begin(id, dir)
	return dir, func() {
		end()
		o.m.ObserveUpload("files", o.meter.grown(id, dir, false), nil)
	}, nil
}

// uploadMeter tracks the size of the upload directories being written.
type uploadMeter struct {
	mu    sync.Mutex
	seen  map[int64]*dirSize
	every time.Duration
}

type dirSize struct {
	bytes int64
	at    time.Time
}

func newUploadMeter() *uploadMeter {
	return &uploadMeter{seen: map[int64]*dirSize{}, every: time.Second}
}

// begin takes the size of image id's upload directory before its first
// write.
func (u *uploadMeter) begin(id int64, dir string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen[id] == nil {
		u.seen[id] = &dirSize{bytes: treeSize(dir), at: time.Now()}
	}
}

// grown returns how many bytes the directory grew since it was last
// measured; with final it measures now and forgets the image.
func (u *uploadMeter) grown(id int64, dir string, final bool) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	d := u.seen[id]
	if d == nil || (!final && time.Since(d.at) < u.every) {
		return 0
	}
	if final {
		delete(u.seen, id)
	}
	n := treeSize(dir)
	delta := n - d.bytes
	d.bytes, d.at = n, time.Now()
	return max(delta, 0)
}

// forget drops image id (its upload was replaced or destroyed).
func (u *uploadMeter) forget(id int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.seen, id)
}

// treeSize is the total size of the regular files under dir.
func treeSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

type observedInstances struct {
	instanceService
	m *metrics.Metrics
}

func (o observedInstances) Create(ctx context.Context, p draupnir.Principal, imageID int64) (*draupnir.Instance, error) {
	start := time.Now()
	in, err := o.instanceService.Create(ctx, p, imageID)
	o.m.ObserveOperation(metrics.OpInstanceCreate, err, time.Since(start))
	return in, err
}

func (o observedInstances) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	start := time.Now()
	err := o.instanceService.Destroy(ctx, p, id)
	o.m.ObserveOperation(metrics.OpInstanceDestroy, err, time.Since(start))
	return err
}
