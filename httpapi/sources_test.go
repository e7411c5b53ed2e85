package httpapi

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// fakeSources is a SourceService with one source, app, that refreshes into
// image 7 and refuses everyone but the upload principal, like the real one.
type fakeSources struct{ refreshed []string }

func (f *fakeSources) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Source, error) {
	s, _ := f.Get(ctx, p, "app")
	return []*draupnir.Source{s}, nil
}

func (f *fakeSources) Get(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Source, error) {
	if name != "app" {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "source %q is not configured", name)
	}
	return &draupnir.Source{Name: "app", Mode: draupnir.SourceFollow, Keep: 3, State: "idle", StandbyState: "streaming",
		LagBytes: 4096, LagSeconds: 0.5, ImageIDs: []int64{4, 5},
		LastRefreshAt: time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)}, nil
}

func (f *fakeSources) Refresh(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Image, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may refresh sources")
	}
	if _, err := f.Get(ctx, p, name); err != nil {
		return nil, err
	}
	f.refreshed = append(f.refreshed, name)
	return &draupnir.Image{ID: 7, State: draupnir.ImageCreated, Source: name}, nil
}

func TestSources(t *testing.T) {
	src := &fakeSources{}
	e := newEnv(t, func(o *Options) { o.Sources = src })
	tests := []struct {
		name       string
		r          req
		wantStatus int
		want       string
	}{
		{"list", req{method: "GET", path: "/sources"}, 200, `"id":"app"`},
		{"list shows lag", req{method: "GET", path: "/sources"}, 200, `"lag_bytes":4096`},
		{"show", req{method: "GET", path: "/sources/app"}, 200, `"image_ids":[4,5]`},
		{"show unknown", req{method: "GET", path: "/sources/nope"}, 404, `source \"nope\" is not configured`},
		{"show impossible name", req{method: "GET", path: "/sources/..%2Fetc"}, 404, `is not configured`},
		{"refresh", req{method: "POST", path: "/sources/app/refresh", token: uploadToken}, 202, `"source":"app"`},
		{"refresh as a user", req{method: "POST", path: "/sources/app/refresh"}, 403, "only the upload principal"},
		{"refresh unknown", req{method: "POST", path: "/sources/nope/refresh", token: uploadToken}, 404, "not configured"},
		{"refresh with a body", req{method: "POST", path: "/sources/app/refresh", token: uploadToken, body: `{"data":{}}`}, 422, ""},
		{"no token", req{method: "GET", path: "/sources", token: "-"}, 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := e.do(t, tt.r)
			if rec.Code != tt.wantStatus || !strings.Contains(rec.Body.String(), tt.want) {
				t.Fatalf("status %d, want %d with %q: %s", rec.Code, tt.wantStatus, tt.want, rec.Body)
			}
		})
	}
	if strings.Join(src.refreshed, ",") != "app" {
		t.Errorf("refreshed %q, want app once", src.refreshed)
	}
	rec := e.do(t, req{method: "POST", path: "/sources/app/refresh", token: uploadToken})
	if got := rec.Header().Get("Location"); got != "/images/7" {
		t.Errorf("Location = %q", got)
	}

	// A server without sources lists none and shows none.
	bare := newEnv(t, nil)
	if rec := bare.do(t, req{method: "GET", path: "/sources"}); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"data":[]`) {
		t.Errorf("GET /sources without sources: %d %s", rec.Code, rec.Body)
	}
	if rec := bare.do(t, req{method: "GET", path: "/sources/app"}); rec.Code != 404 {
		t.Errorf("GET /sources/app without sources: %d %s", rec.Code, rec.Body)
	}
}

func TestImageSource(t *testing.T) {
	e := newEnv(t, nil)
	rec := e.do(t, req{method: "POST", path: "/images", token: uploadToken,
		body: `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","source":"app"}}}`})
	if rec.Code != http.StatusCreated || !strings.Contains(rec.Body.String(), `"source":"app"`) || e.images.Created.Source != "app" {
		t.Fatalf("create in a series: %d %s (service got %q)", rec.Code, rec.Body, e.images.Created.Source)
	}
	for _, bad := range []string{`""`, `"App"`, `"../app"`, `"a b"`, `1`, `"` + strings.Repeat("a", 64) + `"`} {
		rec := e.do(t, req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","source":` + bad + `}}}`})
		// A wrongly typed member is a 400, a bad name a 422.
		if rec.Code != http.StatusUnprocessableEntity && !(bad == "1" && rec.Code == http.StatusBadRequest) {
			t.Errorf("source %s: status %d: %s", bad, rec.Code, rec.Body)
			continue
		}
		if o := decodeErrors(t, rec).Errors[0]; o.Source == nil || o.Source.Pointer != "/data/attributes/source" {
			t.Errorf("source %s: error does not point at source: %s", bad, rec.Body)
		}
	}
	rec = e.do(t, req{method: "PATCH", path: "/images/2", token: uploadToken,
		body: `{"data":{"type":"images","id":"2","attributes":{"source":"other"}}}`})
	if rec.Code != http.StatusUnprocessableEntity || !strings.Contains(rec.Body.String(), "cannot change") {
		t.Errorf("PATCH source: %d %s", rec.Code, rec.Body)
	}
}

func TestCreateInstanceOfSource(t *testing.T) {
	e := newEnv(t, nil)
	for id, state := range map[int64]draupnir.ImageState{4: draupnir.ImageReady, 5: draupnir.ImageReady, 6: draupnir.ImageFailed} {
		e.images.ByID[id] = &draupnir.Image{ID: id, State: state, Source: "app", Database: "db"}
	}
	e.images.ByID[8] = &draupnir.Image{ID: 8, State: draupnir.ImageReady, Source: "other", Database: "db"}
	rec := e.do(t, req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"source":"app"}}}`})
	if rec.Code != http.StatusCreated || e.instances.ImageID != 5 {
		t.Fatalf("instance of source app: %d %s (image %d, want the newest ready, 5)", rec.Code, rec.Body, e.instances.ImageID)
	}
	tests := []struct {
		body       string
		wantStatus int
		want       string
	}{
		{`{"source":"none"}`, 404, `source \"none\" has no ready image`},
		{`{"source":"app","image_id":1}`, 422, "not both"},
		{`{"source":"../x"}`, 422, "source must be"},
		{`{"source":null}`, 422, ""},
	}
	for _, tt := range tests {
		rec := e.do(t, req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":` + tt.body + `}}`})
		if rec.Code != tt.wantStatus || !strings.Contains(rec.Body.String(), tt.want) {
			t.Errorf("%s: status %d, want %d with %q: %s", tt.body, rec.Code, tt.wantStatus, tt.want, rec.Body)
		}
	}
}
