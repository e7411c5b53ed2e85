package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/metrics"
)

// fakeImageService is an image service whose uploads land in dir/<id>.
type fakeImageService struct {
	imageService // nil: methods the test does not use panic
	dir          string
	err          error
}

func (f fakeImageService) BeginUpload(ctx context.Context, p draupnir.Principal, id int64) (string, func(), error) {
	return filepath.Join(f.dir, "1"), func() {}, f.err
}

func (f fakeImageService) StreamUpload(ctx context.Context, p draupnir.Principal, id int64, r io.Reader) (draupnir.UploadSummary, error) {
	n, _ := io.Copy(io.Discard, r)
	return draupnir.UploadSummary{Bytes: n}, f.err
}

func (f fakeImageService) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	return &draupnir.Image{ID: id, State: draupnir.ImageReady}, f.err
}

type fakeInstanceService struct {
	instanceService
	err error
}

func (f fakeInstanceService) Create(ctx context.Context, p draupnir.Principal, imageID int64) (*draupnir.Instance, error) {
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
	upload := filepath.Join(dir, "1")
	if err := os.Mkdir(upload, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(upload, "old"), make([]byte, 100), 0o644) // there before: not counted
	m := metrics.New(metrics.Options{})
	o := newObservedImages(fakeImageService{dir: dir}, m, dir)
	o.meter.every = 0 // measure at every end
	files := map[string]string{"method": "files"}
	p := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}

	d, end, err := o.BeginUpload(context.Background(), p, 1)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d, "base.tar"), make([]byte, 1000), 0o644)
	end()
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", files); got != 1000 {
		t.Errorf("after the first file: %v bytes, want 1000", got)
	}

	// Between two measurements the bytes wait for the next end, or for
	// finalise, which always measures.
	o.meter.every = time.Hour
	_, end, _ = o.BeginUpload(context.Background(), p, 1)
	os.MkdirAll(filepath.Join(d, "sub"), 0o755)
	os.WriteFile(filepath.Join(d, "sub", "pg_wal.tar"), make([]byte, 24), 0o644)
	end()
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", files); got != 1000 {
		t.Errorf("within the interval: %v bytes, want still 1000", got)
	}
	if _, err := o.Finalise(context.Background(), p, 1); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", files); got != 1024 {
		t.Errorf("after finalise: %v bytes, want 1024", got)
	}
	if got := counter(t, m.Registry(), "draupnir_operation_duration_seconds", map[string]string{"operation": "image_finalise", "outcome": "ok"}); got != 1 {
		t.Errorf("finalise observed %v times, want 1", got)
	}

	if _, err := o.StreamUpload(context.Background(), p, 1, strings.NewReader("0123456789")); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, m.Registry(), "draupnir_upload_bytes_total", map[string]string{"method": "stream"}); got != 10 {
		t.Errorf("stream upload: %v bytes, want 10", got)
	}
}

func TestObservedInstanceErrors(t *testing.T) {
	m := metrics.New(metrics.Options{})
	o := observedInstances{fakeInstanceService{err: draupnir.Errorf(draupnir.KindUnavailable, "the port pool is exhausted")}, m}
	if _, err := o.Create(context.Background(), draupnir.Principal{Name: "a@example.com"}, 1); err == nil {
		t.Fatal("the error was swallowed")
	}
	if got := counter(t, m.Registry(), "draupnir_errors_total", map[string]string{"operation": "instance_create", "kind": "unavailable"}); got != 1 {
		t.Errorf("errors_total{instance_create,unavailable} = %v, want 1", got)
	}
}
