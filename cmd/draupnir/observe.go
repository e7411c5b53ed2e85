package main

import (
	"context"
	"io"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/metrics"
)

// imageService is what the doors call on the image service: its contract
// and its uploads. observedImages decorates it with metrics, so that every
// door is measured alike and the core knows nothing of Prometheus.
type imageService interface {
	draupnir.ImageService
	draupnir.Uploads
}

var (
	_ imageService             = cascadingImages{}
	_ draupnir.InstanceService = (*instances.Service)(nil)
)

type observedImages struct {
	imageService
	m *metrics.Metrics
}

func newObservedImages(s imageService, m *metrics.Metrics) observedImages {
	return observedImages{imageService: s, m: m}
}

func (o observedImages) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return o.CreateInSeries(ctx, p, "", backedUpAt, script)
}

func (o observedImages) CreateInSeries(ctx context.Context, p draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	start := time.Now()
	im, err := o.imageService.CreateInSeries(ctx, p, source, backedUpAt, script)
	o.m.ObserveOperation(metrics.OpImageCreate, err, time.Since(start))
	return im, err
}

func (o observedImages) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	start := time.Now()
	im, err := o.imageService.Finalise(ctx, p, id)
	o.m.ObserveOperation(metrics.OpImageFinalise, err, time.Since(start))
	return im, err
}

func (o observedImages) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	start := time.Now()
	err := o.imageService.Destroy(ctx, p, id)
	o.m.ObserveOperation(metrics.OpImageDestroy, err, time.Since(start))
	return err
}

// OpenUpload measures uploads by what their handles count: streams (images
// upload, extracted or stored by name) as they end, files (SFTP and scp)
// when the upload closes.
func (o observedImages) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	u, err := o.imageService.OpenUpload(ctx, p, id)
	if err != nil {
		o.m.ObserveUpload("files", 0, err)
		return nil, err
	}
	return &observedUpload{Upload: u, m: o.m}, nil
}

type observedUpload struct {
	draupnir.Upload
	m *metrics.Metrics
}

func (u *observedUpload) Extract(ctx context.Context, r io.Reader) (draupnir.UploadSummary, error) {
	sum, err := u.Upload.Extract(ctx, r)
	u.m.ObserveUpload("stream", sum.Bytes, err)
	return sum, err
}

func (u *observedUpload) Store(ctx context.Context, name string, r io.Reader, replace bool) (draupnir.UploadSummary, error) {
	sum, err := u.Upload.Store(ctx, name, r, replace)
	u.m.ObserveUpload("stream", sum.Bytes, err)
	return sum, err
}

// Close counts an upload of files that wrote something; a session that
// only looked is no upload.
func (u *observedUpload) Close() error {
	err := u.Upload.Close()
	if n := u.Written(); n > 0 {
		u.m.ObserveUpload("files", n, nil)
	}
	return err
}

type observedInstances struct {
	draupnir.InstanceService
	m *metrics.Metrics
}

func (o observedInstances) Create(ctx context.Context, p draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	start := time.Now()
	in, err := o.InstanceService.Create(ctx, p, imageID, opts)
	o.m.ObserveOperation(metrics.OpInstanceCreate, err, time.Since(start))
	return in, err
}

func (o observedInstances) Reset(ctx context.Context, p draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	start := time.Now()
	in, err := o.InstanceService.Reset(ctx, p, id, imageID)
	o.m.ObserveOperation(metrics.OpInstanceReset, err, time.Since(start))
	return in, err
}

func (o observedInstances) Save(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	start := time.Now()
	im, err := o.InstanceService.Save(ctx, p, id)
	o.m.ObserveOperation(metrics.OpInstanceSave, err, time.Since(start))
	return im, err
}

func (o observedInstances) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	start := time.Now()
	err := o.InstanceService.Destroy(ctx, p, id)
	o.m.ObserveOperation(metrics.OpInstanceDestroy, err, time.Since(start))
	return err
}
