package httpapi

import (
	"slices"
	"sync"
	"testing"
	"time"
)

type observed struct {
	route, method string
	status        int
}

type fakeObserver struct {
	mu  sync.Mutex
	got []observed
}

func (f *fakeObserver) ObserveHTTP(route, method string, status int, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d < 0 {
		panic("negative duration")
	}
	f.got = append(f.got, observed{route, method, status})
}

func TestObserveRequests(t *testing.T) {
	obs := &fakeObserver{}
	e := newEnv(t, func(o *Options) { o.Requests = obs })
	tests := []struct {
		r    req
		want observed
	}{
		{req{method: "GET", path: "/images"}, observed{"/images", "GET", 200}},
		{req{method: "GET", path: "/images/1"}, observed{"/images/:id", "GET", 200}},
		{req{method: "GET", path: "/images/999"}, observed{"/images/:id", "GET", 404}},
		{req{method: "POST", path: "/images/1/done", token: aliceToken}, observed{"/images/:id/done", "POST", 403}},
		{req{method: "DELETE", path: "/instances/1", version: "-"}, observed{"/instances/:id", "DELETE", 400}},
		{req{method: "GET", path: "/health_check"}, observed{"/health_check", "GET", 200}},
		// Raw paths never become label values.
		{req{method: "GET", path: "/no/such/path/12345"}, observed{"unmatched", "GET", 404}},
		{req{method: "PROPFIND", path: "/images"}, observed{"/images", "OTHER", 405}},
	}
	for _, tt := range tests {
		obs.mu.Lock()
		obs.got = nil
		obs.mu.Unlock()
		rec := e.do(t, tt.r)
		obs.mu.Lock()
		got := slices.Clone(obs.got)
		obs.mu.Unlock()
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("%s %s (status %d): observed %v, want [%v]", tt.r.method, tt.r.path, rec.Code, got, tt.want)
		}
	}
}

func TestObserveRequestsPanic(t *testing.T) {
	obs := &fakeObserver{}
	e := newEnv(t, func(o *Options) { o.Requests = obs })
	e.images.Panics = true
	e.do(t, req{method: "GET", path: "/images"})
	if want := (observed{"/images", "GET", 500}); len(obs.got) != 1 || obs.got[0] != want {
		t.Errorf("observed %v after a panic, want [%v]", obs.got, want)
	}
}
