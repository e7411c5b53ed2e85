package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/mock"
)

// fakes returns the mock services holding ims and ins, failing with err.
func fakes(ims []*draupnir.Image, ins []*draupnir.Instance, err error) (*mock.Images, *mock.Instances) {
	images := mock.NewImages()
	images.ByID, images.Err = map[int64]*draupnir.Image{}, err
	for _, im := range ims {
		images.ByID[im.ID] = im
	}
	instances := mock.NewInstances(images)
	instances.ByID, instances.Err = map[int64]*draupnir.Instance{}, err
	for _, in := range ins {
		instances.ByID[in.ID] = in
	}
	return images, instances
}

// gather returns the registry's families by name.
func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value returns the value of the series of family name whose labels are
// exactly labels ("k=v" pairs); ok is false if there is none.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	t.Helper()
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for i, l := range m.GetLabel() {
			if l.GetName()+"="+l.GetValue() != labels[i] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func want(t *testing.T, fams map[string]*dto.MetricFamily, v float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(t, fams, name, labels...)
	if !ok {
		t.Errorf("%s{%s}: no such series", name, strings.Join(labels, ","))
	} else if got != v {
		t.Errorf("%s{%s} = %v, want %v", name, strings.Join(labels, ","), got, v)
	}
}

func TestStateCollector(t *testing.T) {
	m := New(Options{DataPath: t.TempDir(), MinPort: 6000, MaxPort: 6009})
	ims, ins := fakes([]*draupnir.Image{
		{ID: 1, State: draupnir.ImageReady, SizeBytes: 100},
		{ID: 2, State: draupnir.ImageReady, SizeBytes: 50},
		{ID: 3, State: draupnir.ImageFailed, SizeBytes: 1000},
	}, []*draupnir.Instance{
		{ID: 1, State: draupnir.InstanceRunning, Port: 6000},
		{ID: 2, State: draupnir.InstanceRunning, Port: 6009},
		{ID: 3, State: draupnir.InstanceFailed, Port: 7000}, // outside the range since a config change
	}, nil)
	if err := m.CollectState(ims, ins, nil); err != nil {
		t.Fatal(err)
	}
	fams := gather(t, m)
	want(t, fams, 1, "draupnir_state_database_up")
	want(t, fams, 2, "draupnir_images", "state=ready")
	want(t, fams, 1, "draupnir_images", "state=failed")
	want(t, fams, 0, "draupnir_images", "state=finalising")
	want(t, fams, 150, "draupnir_images_size_bytes")
	want(t, fams, 2, "draupnir_instances", "state=running")
	want(t, fams, 1, "draupnir_instances", "state=failed")
	want(t, fams, 0, "draupnir_instances", "state=creating")
	want(t, fams, 2, "draupnir_instance_ports_in_use")
	want(t, fams, 10, "draupnir_instance_ports_total")
	for _, p := range append(ims.Principals(), ins.Principals()...) {
		if !p.Upload {
			t.Errorf("listed as %+v, want the upload principal (who sees all)", p)
		}
	}
	if v, ok := value(t, fams, "draupnir_data_path_free_bytes"); !ok || v <= 0 {
		t.Errorf("draupnir_data_path_free_bytes = %v, %v; want > 0", v, ok)
	}
	if v, ok := value(t, fams, "draupnir_data_path_size_bytes"); !ok || v <= 0 {
		t.Errorf("draupnir_data_path_size_bytes = %v, %v; want > 0", v, ok)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "draupnir_build_info"} {
		if fams[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}
}

func TestStateDatabaseDown(t *testing.T) {
	m := New(Options{})
	var logs strings.Builder
	down := errors.New("connection refused")
	ims, ins := fakes(nil, nil, down)
	err := m.CollectState(ims, ins, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	fams := gather(t, m) // the other families must still be served
	want(t, fams, 0, "draupnir_state_database_up")
	if _, ok := value(t, fams, "draupnir_images", "state=ready"); ok {
		t.Error("images by state reported although the state database is down")
	}
	if !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("the failure was not logged: %q", logs.String())
	}
	if fams["go_goroutines"] == nil {
		t.Error("go runtime metrics missing while the state database is down")
	}
}

func TestMissingDataPath(t *testing.T) {
	m := New(Options{DataPath: "/nonexistent/draupnir-data"})
	fams := gather(t, m)
	if _, ok := value(t, fams, "draupnir_data_path_free_bytes"); ok {
		t.Error("free bytes reported for a data path that does not exist")
	}
}

func TestObservations(t *testing.T) {
	m := New(Options{})
	m.ObserveHTTP("/images/:id", "GET", 200, 3*time.Millisecond)
	m.ObserveHTTP("/images/:id", "GET", 200, 5*time.Millisecond)
	m.ObserveHTTP("/images/:id", "GET", 404, time.Millisecond)
	m.ObserveOperation(OpInstanceCreate, nil, 60*time.Millisecond)
	m.ObserveOperation(OpInstanceCreate, draupnir.Errorf(draupnir.KindUnavailable, "no free port"), time.Millisecond)
	m.ObserveOperation(OpImageFinalise, errors.New("disk on fire"), time.Second)
	m.ObserveUpload("stream", 1000, nil)
	m.ObserveUpload("stream", 24, nil)
	m.ObserveUpload("files", 0, draupnir.Errorf(draupnir.KindForbidden, "no"))
	fams := gather(t, m)
	want(t, fams, 2, "draupnir_http_requests_total", "method=GET", "route=/images/:id", "status=200")
	want(t, fams, 1, "draupnir_http_requests_total", "method=GET", "route=/images/:id", "status=404")
	want(t, fams, 3, "draupnir_http_request_duration_seconds", "method=GET", "route=/images/:id")
	want(t, fams, 1, "draupnir_operation_duration_seconds", "operation=instance_create", "outcome=ok")
	want(t, fams, 1, "draupnir_operation_duration_seconds", "operation=instance_create", "outcome=unavailable")
	want(t, fams, 1, "draupnir_errors_total", "kind=unavailable", "operation=instance_create")
	want(t, fams, 1, "draupnir_errors_total", "kind=internal", "operation=image_finalise")
	want(t, fams, 1024, "draupnir_upload_bytes_total", "method=stream")
	want(t, fams, 0, "draupnir_upload_bytes_total", "method=files")
	want(t, fams, 2, "draupnir_uploads_total", "method=stream", "outcome=ok")
	want(t, fams, 1, "draupnir_uploads_total", "method=files", "outcome=forbidden")
	if _, ok := value(t, fams, "draupnir_errors_total", "kind=ok", "operation=instance_create"); ok {
		t.Error("a successful operation was counted as an error")
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.ObserveHTTP("/", "GET", 200, time.Millisecond)
	m.ObserveOperation(OpImageCreate, nil, time.Millisecond)
	m.ObserveUpload("stream", 1, nil)
	h := slog.NewTextHandler(io.Discard, nil)
	if m.LogHandler(h) != slog.Handler(h) {
		t.Error("a nil *Metrics wrapped the log handler")
	}
}

func TestLogHandler(t *testing.T) {
	m := New(Options{})
	var out strings.Builder
	log := slog.New(m.LogHandler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelError}))).
		With("component", "test").WithGroup("g")
	log.Info("fine")
	log.Warn("careful")
	log.Warn("careful again")
	log.Error("broken", "n", 1)
	fams := gather(t, m)
	want(t, fams, 2, "draupnir_log_records_total", "level=warn")
	want(t, fams, 1, "draupnir_log_records_total", "level=error")
	// The inner handler's level still decides what is written.
	if got := out.String(); strings.Contains(got, "careful") || !strings.Contains(got, "component=test") || !strings.Contains(got, "g.n=1") {
		t.Errorf("inner handler wrote %q", got)
	}
}

func TestOutcome(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{errors.New("boom"), "internal"},
		{fmt.Errorf("wrapped: %w", context.Canceled), "canceled"},
		{draupnir.Errorf(draupnir.KindNotFound, "no image 3"), "not_found"},
		{draupnir.Errorf(draupnir.KindConflict, "x"), "conflict"},
		{draupnir.Errorf(draupnir.KindInvalid, "x"), "invalid"},
		{draupnir.Errorf(draupnir.KindUnprocessable, "x"), "unprocessable"},
		{draupnir.Errorf(draupnir.KindForbidden, "x"), "forbidden"},
		{draupnir.Errorf(draupnir.KindUnauthorized, "x"), "unauthorized"},
		{draupnir.Errorf(draupnir.KindUnavailable, "x"), "unavailable"},
		{fmt.Errorf("ctx: %w", draupnir.Errorf(draupnir.KindInsufficientStorage, "full")), "insufficient_storage"},
	}
	for _, tt := range tests {
		if got := Outcome(tt.err); got != tt.want {
			t.Errorf("Outcome(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestHandler(t *testing.T) {
	m := New(Options{})
	m.ObserveOperation(OpImageDestroy, nil, time.Millisecond)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	for _, s := range []string{
		"# TYPE draupnir_operation_duration_seconds histogram",
		`draupnir_operation_duration_seconds_count{operation="image_destroy",outcome="ok"} 1`,
		"# TYPE go_goroutines gauge",
	} {
		if !strings.Contains(rec.Body.String(), s) {
			t.Errorf("/metrics lacks %q", s)
		}
	}
}
