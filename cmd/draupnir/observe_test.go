package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images"
	"github.com/draupnir-db/draupnir/metrics"
)

// fakeImageService is an image service whose uploads are dir/<id>, with
// the images service's own upload rules.
type fakeImageService struct {
	imageService // nil: methods the test does not use panic
	dir          string
	err          error
}

func (f fakeImageService) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	if f.err != nil {
		return nil, f.err
	}
	return images.OpenDir(filepath.Join(f.dir, strconv.FormatInt(id, 10)))
}

func (f fakeImageService) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	return &draupnir.Image{ID: id, State: draupnir.ImageReady}, f.err
}

type fakeInstanceService struct {
	draupnir.InstanceService
	err error
}

func (f fakeInstanceService) Create(ctx context.Context, p draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	return &draupnir.Instance{ID: 1}, f.err
}

// counter returns the value of a counter or a histogram's sample count.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			if m.Histogram != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestObservedUploads(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "1"), 0o700); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{})
	o := newObservedImages(fakeImageService{dir: dir}, m)
	files := map[string]string{"method": "files"}
	p := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	ctx := context.Background()

	// Files count when the upload closes, whatever was written through it
	// (overwrites too); looking only is no upload.
	u, err := o.OpenUpload(ctx, p, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		size int
	}{{"base.tar", 1000}, {"pg_wal.tar", 24}} {
		w, err := u.OpenFile(f.name, os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(make([]byte, f.size))
		w.Close()
	}
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", files); got != 0 {
		t.Errorf("before the upload closed: %v bytes, want 0", got)
	}
	u.Close()
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", files); got != 1024 {
		t.Errorf("after it closed: %v bytes, want 1024", got)
	}
	u, _ = o.OpenUpload(ctx, p, 1)
	u.ReadDir("")
	u.Close()
	if got := counter(t, m.Registry(), "draupnir_uploads_total", map[string]string{"method": "files", "outcome": "ok"}); got != 1 {
		t.Errorf("%v file uploads, want 1 (a listing is none)", got)
	}
	if _, err := o.Finalise(ctx, p, 1); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, m.Registry(), "draupnir_operation_duration_seconds", map[string]string{"operation": "image_finalise", "outcome": "ok"}); got != 1 {
		t.Errorf("finalise observed %v times, want 1", got)
	}

	// A stream counts the bytes as sent, even when they are no archive.
	u, _ = o.OpenUpload(ctx, p, 1)
	if _, err := u.Extract(ctx, strings.NewReader("0123456789")); err == nil {
		t.Error("extracted ten bytes that are no archive")
	}
	u.Close()
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", map[string]string{"method": "stream"}); got != 10 {
		t.Errorf("stream upload: %v bytes, want 10", got)
	}

	// A refused upload counts as one, with its reason.
	refused := newObservedImages(fakeImageService{dir: dir, err: draupnir.Errorf(draupnir.KindConflict, "image 1 is ready; uploads are closed")}, m)
	if _, err := refused.OpenUpload(ctx, p, 1); err == nil {
		t.Fatal("the refusal was swallowed")
	}
	if got := counter(t, m.Registry(), "draupnir_uploads_total", map[string]string{"method": "files", "outcome": "conflict"}); got != 1 {
		t.Errorf("%v refused uploads, want 1", got)
	}
}

func TestObservedInstanceErrors(t *testing.T) {
	m := metrics.New(metrics.Options{})
	o := observedInstances{fakeInstanceService{err: draupnir.Errorf(draupnir.KindUnavailable, "the port pool is exhausted")}, m}
	if _, err := o.Create(context.Background(), draupnir.Principal{Name: "a@example.com"}, 1, draupnir.CreateOptions{}); err == nil {
		t.Fatal("the error was swallowed")
	}
	if got := counter(t, m.Registry(), "draupnir_errors_total", map[string]string{"operation": "instance_create", "kind": "unavailable"}); got != 1 {
		t.Errorf("errors_total{instance_create,unavailable} = %v, want 1", got)
	}
}
