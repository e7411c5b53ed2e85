package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// recorded is one request the fake server saw.
type recorded struct {
	method, path, version, contentType, auth string
	body                                     string
}

// fakeServer answers each "METHOD /path" with a canned status and body and
// records the requests.
type fakeServer struct {
	mu     sync.Mutex
	seen   []recorded
	routes map[string]struct {
		status int
		body   string
	}
}

func newFake(t *testing.T) (*fakeServer, *httptest.Server) {
	t.Helper()
	f := &fakeServer{routes: map[string]struct {
		status int
		body   string
	}{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeServer) on(route string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[route] = struct {
		status int
		body   string
	}{status, body}
}

func (f *fakeServer) last(t *testing.T) recorded {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		t.Fatal("no request reached the server")
	}
	return f.seen[len(f.seen)-1]
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.seen = append(f.seen, recorded{
		method: r.Method, path: r.URL.Path, version: r.Header.Get("Draupnir-Version"),
		contentType: r.Header.Get("Content-Type"), auth: r.Header.Get("Authorization"), body: string(b),
	})
	route, ok := f.routes[r.Method+" "+r.URL.Path]
	f.mu.Unlock()
	w.Header().Set("Draupnir-Version", "1.4.0")
	if !ok {
		w.WriteHeader(http.StatusTeapot)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(route.status)
	io.WriteString(w, route.body)
}

const imageJSON = `{"type":"images","id":3,"attributes":{"backed_up_at":"2017-05-01T12:00:00Z",
"created_at":"2017-05-02T00:00:00Z","updated_at":"2017-05-02T00:00:01Z","ready":true,
"anonymisation_script":"\\c my_db\nDELETE FROM secret_tokens;","state":"ready","size_bytes":1024,"postgres_version":"15"}}`

const instanceJSON = `{"type":"instances","id":"7","attributes":{"created_at":"2017-05-03T00:00:00Z",
"updated_at":"2017-05-03T00:00:00Z","image_id":"3","port":"5678","hostname":"db.example.com",
"state":"running","username":"draupnir","password":"p'w $x","database":"my_db","ca_certificate":"PEM"}}`

func TestRequestsAndDecoding(t *testing.T) {
	f, srv := newFake(t)
	f.on("GET /images", 200, `{"data":[`+imageJSON+`]}`)
	f.on("GET /images/3", 200, `{"data":`+imageJSON+`}`)
	f.on("POST /images", 201, `{"data":`+imageJSON+`}`)
	f.on("PATCH /images/3", 200, `{"data":`+imageJSON+`}`)
	f.on("POST /images/3/done", 200, `{"data":`+imageJSON+`}`)
	f.on("DELETE /images/3", 204, ``)
	f.on("GET /instances", 200, `{"data":[`+instanceJSON+`]}`)
	f.on("GET /instances/7", 200, `{"data":`+instanceJSON+`}`)
	f.on("POST /instances", 201, `{"data":`+instanceJSON+`}`)
	f.on("DELETE /instances/7", 204, ``)
	f.on("POST /instances/7/reset", 200, `{"data":`+instanceJSON+`}`)

	c := New(srv.URL+"/", "s3cret")
	ctx := context.Background()
	backedUp := time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)
	script := "DELETE FROM t;"

	wantImage := func(t *testing.T, img *draupnir.Image) {
		t.Helper()
		if img.ID != 3 || img.State != draupnir.ImageReady || !img.BackedUpAt.Equal(backedUp) ||
			img.AnonymisationScript != "\\c my_db\nDELETE FROM secret_tokens;" || img.SizeBytes != 1024 || img.PostgresVersion != "15" {
			t.Errorf("image decoded as %+v", img)
		}
	}
	wantInstance := func(t *testing.T, inst *draupnir.Instance) {
		t.Helper()
		if inst.ID != 7 || inst.ImageID != 3 || inst.Port != 5678 || inst.Hostname != "db.example.com" ||
			inst.Password != "p'w $x" || inst.Database != "my_db" || inst.CACertificate != "PEM" || inst.State != draupnir.InstanceRunning {
			t.Errorf("instance decoded as %+v", inst)
		}
	}

	tests := []struct {
		name     string
		call     func(t *testing.T)
		method   string
		path     string
		wantBody string // compared as JSON; "" means no body
	}{
		{"list images", func(t *testing.T) {
			imgs, err := c.Images().List(ctx, draupnir.Principal{})
			if err != nil || len(imgs) != 1 {
				t.Fatalf("ListImages = %v, %v", imgs, err)
			}
			wantImage(t, imgs[0])
		}, "GET", "/images", ""},
		{"get image", func(t *testing.T) {
			img, err := c.Images().Get(ctx, draupnir.Principal{}, 3)
			if err != nil {
				t.Fatal(err)
			}
			wantImage(t, img)
		}, "GET", "/images/3", ""},
		{"create image", func(t *testing.T) {
			img, err := c.Images().Create(ctx, draupnir.Principal{}, backedUp.In(time.FixedZone("X", 3600)), script)
			if err != nil {
				t.Fatal(err)
			}
			wantImage(t, img)
		}, "POST", "/images", `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"DELETE FROM t;"}}}`},
		{"update image script only", func(t *testing.T) {
			if _, err := c.Images().Update(ctx, draupnir.Principal{}, 3, draupnir.ImagePatch{AnonymisationScript: &script}); err != nil {
				t.Fatal(err)
			}
		}, "PATCH", "/images/3", `{"data":{"type":"images","id":"3","attributes":{"anonymisation_script":"DELETE FROM t;"}}}`},
		{"update image time only", func(t *testing.T) {
			if _, err := c.Images().Update(ctx, draupnir.Principal{}, 3, draupnir.ImagePatch{BackedUpAt: &backedUp}); err != nil {
				t.Fatal(err)
			}
		}, "PATCH", "/images/3", `{"data":{"type":"images","id":"3","attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
		{"finalise image", func(t *testing.T) {
			img, err := c.Images().Finalise(ctx, draupnir.Principal{}, 3)
			if err != nil {
				t.Fatal(err)
			}
			wantImage(t, img)
		}, "POST", "/images/3/done", ""},
		{"destroy image", func(t *testing.T) {
			if err := c.Images().Destroy(ctx, draupnir.Principal{}, 3); err != nil {
				t.Fatal(err)
			}
		}, "DELETE", "/images/3", ""},
		{"list instances", func(t *testing.T) {
			insts, err := c.Instances().List(ctx, draupnir.Principal{})
			if err != nil || len(insts) != 1 {
				t.Fatalf("ListInstances = %v, %v", insts, err)
			}
			wantInstance(t, insts[0])
		}, "GET", "/instances", ""},
		{"get instance", func(t *testing.T) {
			inst, err := c.Instances().Get(ctx, draupnir.Principal{}, 7)
			if err != nil {
				t.Fatal(err)
			}
			wantInstance(t, inst)
		}, "GET", "/instances/7", ""},
		{"create instance", func(t *testing.T) {
			inst, err := c.Instances().Create(ctx, draupnir.Principal{}, 3, draupnir.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			wantInstance(t, inst)
		}, "POST", "/instances", `{"data":{"type":"instances","attributes":{"image_id":3}}}`},
		{"reset instance", func(t *testing.T) {
			inst, err := c.Instances().Reset(ctx, draupnir.Principal{}, 7, 0)
			if err != nil {
				t.Fatal(err)
			}
			wantInstance(t, inst)
		}, "POST", "/instances/7/reset", `{"data":{"type":"instances","attributes":{}}}`},
		{"reset instance to another image", func(t *testing.T) {
			inst, err := c.Instances().Reset(ctx, draupnir.Principal{}, 7, 3)
			if err != nil {
				t.Fatal(err)
			}
			wantInstance(t, inst)
		}, "POST", "/instances/7/reset", `{"data":{"type":"instances","attributes":{"image_id":3}}}`},
		{"destroy instance", func(t *testing.T) {
			if err := c.Instances().Destroy(ctx, draupnir.Principal{}, 7); err != nil {
				t.Fatal(err)
			}
		}, "DELETE", "/instances/7", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.call(t)
			r := f.last(t)
			if r.method != tt.method || r.path != tt.path {
				t.Errorf("request %s %s, want %s %s", r.method, r.path, tt.method, tt.path)
			}
			if r.version != draupnir.Version {
				t.Errorf("Draupnir-Version %q, want %q", r.version, draupnir.Version)
			}
			if r.contentType != "application/json" {
				t.Errorf("Content-Type %q", r.contentType)
			}
			if r.auth != "Bearer s3cret" {
				t.Errorf("Authorization %q", r.auth)
			}
			if !jsonEqual(r.body, tt.wantBody) {
				t.Errorf("body %s, want %s", r.body, tt.wantBody)
			}
		})
	}
}

func jsonEqual(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return string(xb) == string(yb)
}

func errorBody(status, code, detail string) string {
	return `{"errors":[{"status":"` + status + `","code":"` + code + `","title":"T","detail":"` + detail + `"}]}`
}

func TestErrorKinds(t *testing.T) {
	tests := []struct {
		status int
		code   string
		kind   draupnir.Kind
	}{
		{400, "bad_request", draupnir.KindInvalid},
		{401, "unauthorized", draupnir.KindUnauthorized},
		{403, "forbidden", draupnir.KindForbidden},
		{404, "not_found", draupnir.KindNotFound},
		{409, "conflict", draupnir.KindConflict},
		{415, "unsupported_media_type", draupnir.KindInvalid},
		{422, "unprocessable_entity", draupnir.KindUnprocessable},
		{500, "internal_server_error", draupnir.KindInternal},
		{503, "service_unavailable", draupnir.KindUnavailable},
		{507, "insufficient_storage", draupnir.KindInsufficientStorage},
	}
	f, srv := newFake(t)
	c := New(srv.URL, "t")
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			detail := "image 7 does not exist (" + tt.code + ")"
			f.on("GET /images/7", tt.status, errorBody("x", tt.code, detail))
			_, err := c.Images().Get(context.Background(), draupnir.Principal{}, 7)
			var de *draupnir.Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T) is not a *draupnir.Error", err, err)
			}
			if de.Kind != tt.kind {
				t.Errorf("kind %v, want %v", de.Kind, tt.kind)
			}
			if err.Error() != detail {
				t.Errorf("message %q, want the server's detail %q", err.Error(), detail)
			}
		})
	}
}

func TestValidationField(t *testing.T) {
	f, srv := newFake(t)
	f.on("POST /images", 422, `{"errors":[{"status":"422","code":"unprocessable_entity","title":"x",
		"detail":"backed_up_at is in the future","source":{"pointer":"/data/attributes/backed_up_at"}}]}`)
	_, err := New(srv.URL, "t").Images().Create(context.Background(), draupnir.Principal{}, time.Now(), "")
	var de *draupnir.Error
	if !errors.As(err, &de) || de.Field != "backed_up_at" || de.Kind != draupnir.KindUnprocessable {
		t.Fatalf("error %#v, want unprocessable on backed_up_at", err)
	}
}

// TestOriginalErrorShape: the client reads the original Draupnir's bare
// error object too, so that it explains an original server's answers.
func TestOriginalErrorShape(t *testing.T) {
	f, srv := newFake(t)
	f.on("GET /images/7", 401, `{"status":"401","id":"unauthorized","code":"unauthorized","title":"Unauthorized",
		"detail":"You do not have permission to view this resource","source":{}}`)
	f.on("POST /instances", 422, `{"id":"unprocessable_entity","status":"422","code":"unprocessable_entity",
		"title":"Image Not Ready","detail":"The specified image is not ready to be used","source":{"parameter":"image_id"}}`)
	f.on("GET /instances", 400, `{"id":"invalid_api_version","status":"400","code":"invalid_api_version",
		"title":"Invalid API Version","detail":"Specified API version (2.1.0) does not match server version (2.0.0)","source":{}}`)
	c := New(srv.URL, "t")
	ctx := context.Background()
	_, err := c.Images().Get(ctx, draupnir.Principal{}, 7)
	if draupnir.KindOf(err) != draupnir.KindUnauthorized || err.Error() != "You do not have permission to view this resource" {
		t.Errorf("401: %v (kind %v)", err, draupnir.KindOf(err))
	}
	_, err = c.Instances().Create(ctx, draupnir.Principal{}, 3, draupnir.CreateOptions{})
	if draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("422: %v (kind %v)", err, draupnir.KindOf(err))
	}
	_, err = c.Instances().List(ctx, draupnir.Principal{})
	if err == nil || !strings.Contains(err.Error(), "upgrade") || !strings.Contains(err.Error(), "2.0.0") {
		t.Errorf("version refused: %v, want advice naming the server's version", err)
	}
}

func TestIncompatibleVersion(t *testing.T) {
	tests := []struct {
		client string
		want   []string
	}{
		{"1.0.0", []string{"1.0.0", "1.4.0", "upgrade draupnir-client"}}, // server sends 1.4.0
		{"2.0.0", []string{"2.0.0", "1.4.0", "upgrade the server"}},
	}
	f, srv := newFake(t)
	f.on("GET /instances", 400, errorBody("400", "incompatible_version", "client version is incompatible"))
	for _, tt := range tests {
		t.Run(tt.client, func(t *testing.T) {
			_, err := New(srv.URL, "t", WithVersion(tt.client)).Instances().List(context.Background(), draupnir.Principal{})
			if err == nil {
				t.Fatal("no error")
			}
			if f.last(t).version != tt.client {
				t.Errorf("sent version %q, want %q", f.last(t).version, tt.client)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestNotDraupnirAnswer(t *testing.T) {
	_, srv := newFake(t) // unknown routes answer 418 with no body
	_, err := New(srv.URL, "t").Images().Get(context.Background(), draupnir.Principal{}, 1)
	if err == nil || !strings.Contains(err.Error(), "418") || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("error %v, want one naming the status and URL", err)
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	_, err = New(url, "t").Images().List(context.Background(), draupnir.Principal{})
	if err == nil || !strings.Contains(err.Error(), url) || draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Fatalf("error %v (kind %v), want an unavailable error naming %s", err, draupnir.KindOf(err), url)
	}
}

func TestCancelled(t *testing.T) {
	_, srv := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := New(srv.URL, "t").Images().List(ctx, draupnir.Principal{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func TestNoTokenNoHeader(t *testing.T) {
	f, srv := newFake(t)
	f.on("GET /images", 200, `{"data":[]}`)
	imgs, err := New(srv.URL, "").Images().List(context.Background(), draupnir.Principal{})
	if err != nil || len(imgs) != 0 {
		t.Fatalf("ListImages = %v, %v", imgs, err)
	}
	if a := f.last(t).auth; a != "" {
		t.Errorf("Authorization %q sent without a token", a)
	}
}

func TestServerVersion(t *testing.T) {
	f, srv := newFake(t)
	f.on("GET /health_check", 200, `{"status":"ok"}`)
	v, err := New(srv.URL, "t").ServerVersion(context.Background())
	if err != nil || v != "1.4.0" {
		t.Fatalf("ServerVersion = %q, %v", v, err)
	}
	if f.last(t).auth != "" {
		t.Error("health_check was sent the token; it needs none")
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.0", 0}, {"1.0.0", "1.1.0", -1}, {"1.10.0", "1.9.0", 1}, {"2.0", "1.9.9", -1}, {"v1.2.3", "1.2.3", 0},
		{"2.1.0-rc1", "2.1.0", 0}, {"x", "y", 0},
	}
	for _, tt := range tests {
		if got := compareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestPrincipalIsNotSent checks that the services of a Client send nothing
// of the principal they are given: the server acts as the token's
// principal, so that a caller cannot claim another by naming it.
func TestPrincipalIsNotSent(t *testing.T) {
	f, srv := newFake(t)
	c := New(srv.URL, "alice-token")
	ctx := context.Background()
	calls := func(p draupnir.Principal) {
		im, in := c.Images(), c.Instances()
		im.List(ctx, p)
		im.Get(ctx, p, 1)
		im.Create(ctx, p, time.Date(2017, 5, 1, 0, 0, 0, 0, time.UTC), "s")
		im.Update(ctx, p, 1, draupnir.ImagePatch{})
		im.Finalise(ctx, p, 1)
		im.Destroy(ctx, p, 1)
		in.List(ctx, p)
		in.Get(ctx, p, 1)
		in.Create(ctx, p, 1, draupnir.CreateOptions{})
		in.Destroy(ctx, p, 1)
	}
	calls(draupnir.Principal{})
	f.mu.Lock()
	plain := append([]recorded(nil), f.seen...)
	f.seen = nil
	f.mu.Unlock()
	calls(draupnir.Principal{Name: "upload-mallory@example.com", Upload: true})
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) != 10 || len(plain) != 10 {
		t.Fatalf("%d and %d requests, want 10 each", len(plain), len(f.seen))
	}
	for i, r := range f.seen {
		if r != plain[i] || strings.Contains(r.body+r.path, "mallory") {
			t.Errorf("request %d depends on the principal: %+v, without one %+v", i, r, plain[i])
		}
	}
}
