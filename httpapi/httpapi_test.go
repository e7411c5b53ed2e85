package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/mock"
	"github.com/draupnir-db/draupnir/wire"
)

const (
	uploadToken = "upload-token-0123456789"
	aliceToken  = "alice-token-0123456789"
	bobToken    = "bob-token-0123456789"
)

var (
	uploader = draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	alice    = draupnir.Principal{Name: "alice@example.com"}
	bob      = draupnir.Principal{Name: "bob@example.com"}
)

// syncBuffer collects log output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type env struct {
	h         http.Handler
	images    *mock.Images
	instances *mock.Instances
	auth      *fakeAuth
	logs      *syncBuffer
	version   string // the server's version the handler was built with
}

// newEnv builds the handler over fresh fakes; mod may adjust the options.
func newEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	e := &env{images: mock.NewImages(), logs: &syncBuffer{}, version: draupnir.Version}
	e.instances = mock.NewInstances(e.images)
	e.auth = &fakeAuth{tokens: map[string]draupnir.Principal{
		uploadToken: uploader, aliceToken: alice, bobToken: bob,
	}}
	opts := Options{
		Images:    e.images,
		Instances: e.instances,
		Auth:      e.auth,
		Log:       slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&opts)
	}
	e.h = New(opts)
	return e
}

// newEnvVersion builds the handler as a server of version v.
func newEnvVersion(t *testing.T, v string) *env {
	t.Helper()
	old := draupnir.Version
	draupnir.Version = v
	defer func() { draupnir.Version = old }()
	e := newEnv(t, nil)
	e.version = v
	return e
}

// req describes a request. Zero values mean the usual: alice's token, the
// server's version, application/json when there is a body. "-" means leave
// the header out.
type req struct {
	method, path, body string
	token, version     string
	contentType        string
}

func (e *env) do(t *testing.T, r req) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr := httptest.NewRequest(r.method, r.path, body)
	switch r.version {
	case "":
		hr.Header.Set(HeaderVersion, e.version)
	case "-":
	default:
		hr.Header.Set(HeaderVersion, r.version)
	}
	switch r.token {
	case "":
		hr.Header.Set("Authorization", "Bearer "+aliceToken)
	case "-":
	default:
		if strings.Contains(r.token, " ") {
			hr.Header.Set("Authorization", r.token)
		} else {
			hr.Header.Set("Authorization", "Bearer "+r.token)
		}
	}
	switch {
	case r.contentType == "-":
	case r.contentType != "":
		hr.Header.Set("Content-Type", r.contentType)
	case r.body != "":
		hr.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, hr)
	e.checkEnvelope(t, r, rec)
	return rec
}

// originalLine reports whether v is a version of the original Draupnir's
// line (1.x, 2.0.x), whose requests are answered as the original did.
func originalLine(v string) bool {
	p, err := wire.ParseVersion(v)
	return err == nil && p.Major >= 1 && p.Compare(wire.Version{Major: 2, Minor: 1}) < 0
}

// originalShape reports whether errors answering version v come as the
// original's single object: for its line, and for the refused versions of
// its other lines (0.x, 3.x and later).
func originalShape(v string) bool {
	p, err := wire.ParseVersion(v)
	return err == nil && (p.Major == 0 || p.Major >= 3 || originalLine(v))
}

// checkEnvelope checks what every response must have.
func (e *env) checkEnvelope(t *testing.T, r req, rec *httptest.ResponseRecorder) {
	t.Helper()
	want := e.version
	if originalLine(r.version) {
		want = r.version // the original 1.0.0 client wants its own version back
	}
	if got := rec.Header().Get(HeaderVersion); got != want {
		t.Errorf("%s %s: %s header = %q, want %q", r.method, r.path, HeaderVersion, got, want)
	}
	if rec.Code == http.StatusNoContent || r.method == http.MethodHead {
		if rec.Body.Len() != 0 {
			t.Errorf("%s %s: %d response has a body: %q", r.method, r.path, rec.Code, rec.Body)
		}
		return
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" && !strings.HasPrefix(r.path, "/metrics") {
		t.Errorf("%s %s: Content-Type = %q, want application/json", r.method, r.path, ct)
	}
	if rec.Code < 400 {
		return
	}
	if originalShape(r.version) {
		o := decodeOriginal(t, rec)
		if o.Status != fmt.Sprint(rec.Code) || o.Code == "" || o.ID != o.Code || o.Title == "" || o.Detail == "" {
			t.Errorf("%s %s: malformed original error object for %d: %s", r.method, r.path, rec.Code, rec.Body)
		}
		return
	}
	doc := decodeErrors(t, rec)
	if len(doc.Errors) != 1 {
		t.Fatalf("%s %s: want one error object, got %s", r.method, r.path, rec.Body)
	}
	o := doc.Errors[0]
	if o.Status != fmt.Sprint(rec.Code) || o.Code == "" || o.Title != http.StatusText(rec.Code) || o.Detail == "" {
		t.Errorf("%s %s: malformed error object for %d: %s", r.method, r.path, rec.Code, rec.Body)
	}
}

// decodeOriginal decodes the original line's single error object, which
// always has a source member.
func decodeOriginal(t *testing.T, rec *httptest.ResponseRecorder) wire.OriginalError {
	t.Helper()
	var o wire.OriginalError
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil || !strings.Contains(rec.Body.String(), `"source":{`) {
		t.Fatalf("error body %q is not an original error object: %v", rec.Body, err)
	}
	return o
}

func decodeErrors(t *testing.T, rec *httptest.ResponseRecorder) wire.ErrorDocument {
	t.Helper()
	var doc wire.ErrorDocument
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("error body %q is not an errors document: %v", rec.Body, err)
	}
	return doc
}

const createImageBody = `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"\\c my_db\nDELETE FROM secret_tokens;"}}}`

func TestErrors(t *testing.T) {
	internal := errors.New("dial unix /var/run/draupnir/secret.sock: connection refused")
	tests := []struct {
		name        string
		setup       func(*env)
		req         req
		wantStatus  int
		wantCode    string
		wantPointer string
		wantDetail  string   // substring of the detail
		wantCalls   []string // image service calls, when checked
		check       func(*testing.T, *env, *httptest.ResponseRecorder)
	}{
		// Version and authentication.
		{name: "missing version", req: req{method: "GET", path: "/images", version: "-"},
			wantStatus: 400, wantCode: "missing_version", wantDetail: "Draupnir-Version", wantCalls: []string{}},
		{name: "version checked before auth", req: req{method: "GET", path: "/images", version: "-", token: "nope"},
			wantStatus: 400, wantCode: "missing_version"},
		{name: "garbage version", req: req{method: "GET", path: "/images", version: "garbage"},
			wantStatus: 400, wantCode: "incompatible_version", wantDetail: "X.Y.Z"},
		{name: "missing token", req: req{method: "GET", path: "/images", token: "-"},
			wantStatus: 401, wantCode: "unauthorized", wantCalls: []string{}},
		{name: "unknown token", req: req{method: "GET", path: "/instances", token: "wrong"},
			wantStatus: 401, wantCode: "unauthorized"},
		{name: "basic auth", req: req{method: "GET", path: "/images", token: "Basic dXBsb2FkOnNlY3JldA=="},
			wantStatus: 401, wantCode: "unauthorized"},
		{name: "bearer without token", req: req{method: "GET", path: "/images", token: "Bearer  "},
			wantStatus: 401, wantCode: "unauthorized"},
		{name: "lower-case scheme", req: req{method: "GET", path: "/images", token: "bearer " + aliceToken},
			wantStatus: 200},
		{name: "authenticator down", setup: func(e *env) { e.auth.err = draupnir.Errorf(draupnir.KindUnavailable, "token store unavailable") },
			req: req{method: "GET", path: "/images"}, wantStatus: 503, wantCode: "service_unavailable"},

		// Routing.
		{name: "unknown route", req: req{method: "GET", path: "/nope"}, wantStatus: 404, wantCode: "not_found"},
		{name: "unknown route without headers", req: req{method: "GET", path: "/nope", version: "-", token: "-"},
			wantStatus: 404, wantCode: "not_found"},
		{name: "trailing slash", req: req{method: "GET", path: "/images/"}, wantStatus: 404, wantCode: "not_found"},
		{name: "wrong method", req: req{method: "PUT", path: "/images/1", body: "{}"},
			wantStatus: 405, wantCode: "method_not_allowed",
			check: func(t *testing.T, e *env, rec *httptest.ResponseRecorder) {
				if allow := rec.Header().Get("Allow"); !strings.Contains(allow, "PATCH") {
					t.Errorf("Allow = %q, want it to list PATCH", allow)
				}
			}},

		// Ids.
		{name: "id abc", req: req{method: "GET", path: "/images/abc"}, wantStatus: 404, wantCode: "not_found", wantCalls: []string{}},
		{name: "id 0", req: req{method: "GET", path: "/images/0"}, wantStatus: 404, wantCode: "not_found", wantCalls: []string{}},
		{name: "id -1", req: req{method: "GET", path: "/images/-1"}, wantStatus: 404, wantCode: "not_found", wantCalls: []string{}},
		{name: "id +1", req: req{method: "GET", path: "/images/+1"}, wantStatus: 404, wantCode: "not_found", wantCalls: []string{}},
		{name: "id 1.5", req: req{method: "GET", path: "/instances/1.5"}, wantStatus: 404, wantCode: "not_found"},
		{name: "id overflow", req: req{method: "GET", path: "/images/99999999999999999999"}, wantStatus: 404, wantCode: "not_found", wantCalls: []string{}},
		{name: "id max int64", req: req{method: "GET", path: "/images/9223372036854775807"}, wantStatus: 404, wantCode: "not_found",
			wantDetail: "image 9223372036854775807 does not exist", wantCalls: []string{"Get"}},
		{name: "absent image", req: req{method: "GET", path: "/images/7"}, wantStatus: 404, wantCode: "not_found",
			wantDetail: "image 7 does not exist"},
		{name: "someone else's instance", req: req{method: "GET", path: "/instances/2"}, wantStatus: 404, wantCode: "not_found",
			wantDetail: "instance 2 does not exist"},
		{name: "destroy someone else's instance", req: req{method: "DELETE", path: "/instances/2"}, wantStatus: 404, wantCode: "not_found"},
		{name: "destroy own instance", req: req{method: "DELETE", path: "/instances/1"}, wantStatus: 204,
			check: func(t *testing.T, e *env, _ *httptest.ResponseRecorder) {
				if _, ok := e.instances.ByID[1]; ok {
					t.Error("instance 1 still exists")
				}
			}},

		// Upload principal only.
		{name: "user creates image", req: req{method: "POST", path: "/images", body: createImageBody},
			wantStatus: 403, wantCode: "forbidden", wantCalls: []string{}},
		{name: "user finalises image", req: req{method: "POST", path: "/images/2/done"},
			wantStatus: 403, wantCode: "forbidden", wantCalls: []string{}},
		{name: "user patches image", req: req{method: "PATCH", path: "/images/2", body: `{"data":{"type":"images","attributes":{}}}`},
			wantStatus: 403, wantCode: "forbidden", wantCalls: []string{}},
		{name: "user destroys image", req: req{method: "DELETE", path: "/images/1"},
			wantStatus: 403, wantCode: "forbidden", wantCalls: []string{"Destroy"}},
		{name: "user destroys an image someone else saved", setup: func(e *env) {
			e.images.ByID[3] = &draupnir.Image{ID: 3, State: draupnir.ImageReady, Owner: bob.Name, ParentImageID: 1, FromInstanceID: 2}
		}, req: req{method: "DELETE", path: "/images/3"}, wantStatus: 403, wantCode: "forbidden",
			check: func(t *testing.T, e *env, _ *httptest.ResponseRecorder) {
				if _, ok := e.images.ByID[3]; !ok {
					t.Error("bob's image is gone")
				}
			}},
		{name: "user destroys an image they saved", setup: func(e *env) {
			e.images.ByID[3] = &draupnir.Image{ID: 3, State: draupnir.ImageReady, Owner: alice.Name, ParentImageID: 1, FromInstanceID: 1}
		}, req: req{method: "DELETE", path: "/images/3"}, wantStatus: 204},
		{name: "forbidden judged before the body", req: req{method: "POST", path: "/images", body: "x", contentType: "text/plain"},
			wantStatus: 403, wantCode: "forbidden"},
		{name: "service forbids", setup: func(e *env) { e.images.Err = draupnir.Errorf(draupnir.KindForbidden, "uploads are closed") },
			req:        req{method: "POST", path: "/images", body: createImageBody, token: uploadToken},
			wantStatus: 403, wantCode: "forbidden", wantDetail: "uploads are closed"},

		// Content types and bodies.
		{name: "text/plain", req: req{method: "POST", path: "/images", body: createImageBody, token: uploadToken, contentType: "text/plain"},
			wantStatus: 415, wantCode: "unsupported_media_type", wantCalls: []string{}},
		{name: "form", req: req{method: "POST", path: "/instances", body: "image_id=1", contentType: "application/x-www-form-urlencoded"},
			wantStatus: 415, wantCode: "unsupported_media_type"},
		{name: "vnd.api+json", req: req{method: "POST", path: "/instances", body: `{}`, contentType: "application/vnd.api+json"},
			wantStatus: 415, wantCode: "unsupported_media_type"},
		{name: "no content type", req: req{method: "POST", path: "/instances", body: `{}`, contentType: "-"},
			wantStatus: 415, wantCode: "unsupported_media_type"},
		{name: "json with charset", req: req{method: "POST", path: "/images", body: createImageBody, token: uploadToken, contentType: "application/json; charset=utf-8"},
			wantStatus: 201},
		{name: "json upper case", req: req{method: "POST", path: "/images", body: createImageBody, token: uploadToken, contentType: "Application/JSON"},
			wantStatus: 201},
		{name: "empty body", req: req{method: "POST", path: "/images", token: uploadToken},
			wantStatus: 400, wantCode: "invalid_json", wantDetail: "empty", wantCalls: []string{}},
		{name: "malformed json", req: req{method: "POST", path: "/images", body: `{"data":`, token: uploadToken},
			wantStatus: 400, wantCode: "invalid_json"},
		{name: "syntax error", req: req{method: "POST", path: "/images", body: `{"data":}`, token: uploadToken},
			wantStatus: 400, wantCode: "invalid_json", wantDetail: "byte"},
		{name: "trailing data", req: req{method: "POST", path: "/images", body: createImageBody + `{}`, token: uploadToken},
			wantStatus: 400, wantCode: "invalid_json", wantDetail: "after"},
		{name: "not an object", req: req{method: "POST", path: "/images", body: `[]`, token: uploadToken},
			wantStatus: 400, wantCode: "invalid_json"},
		{name: "unknown attribute", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","ready":true}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/attributes/ready", wantCalls: []string{}},
		{name: "unknown top-level member", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}},"extra":1}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/extra"},
		{name: "attribute name in another case", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"Backed_Up_At":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/attributes/Backed_Up_At"},
		{name: "data in another case", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"DATA":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/DATA"},
		{name: "unknown resource member", req: req{method: "POST", path: "/instances",
			body: `{"data":{"type":"instances","attributes":{"image_id":1},"relationships":{}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/relationships"},
		{name: "member name needing escapes", req: req{method: "POST", path: "/instances",
			body: `{"data":{"type":"instances","attributes":{"image_id":1,"a/b~c":1}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/attributes/a~1b~0c"},
		{name: "data not an object", req: req{method: "POST", path: "/instances", body: `{"data":[]}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data"},
		{name: "meta allowed", req: req{method: "POST", path: "/instances",
			body: `{"meta":{"x":1},"jsonapi":{"version":"1.0"},"data":{"type":"instances","meta":{},"attributes":{"image_id":1}}}`},
			wantStatus: 201},
		{name: "attribute of the wrong type", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"backed_up_at":20170501}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/attributes/backed_up_at"},
		{name: "type of the wrong type", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":1,"attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 400, wantCode: "invalid_json", wantPointer: "/data/type"},
		{name: "wrong resource type", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"instances","attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/type"},
		{name: "missing resource type", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/type"},
		{name: "missing data", req: req{method: "POST", path: "/images", token: uploadToken, body: `{}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data"},
		{name: "missing attributes", req: req{method: "POST", path: "/images", token: uploadToken, body: `{"data":{"type":"images"}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes"},
		{name: "client-generated id", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","id":5,"attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/id"},
		{name: "backed_up_at missing", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"anonymisation_script":"x"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes/backed_up_at", wantCalls: []string{}},
		{name: "backed_up_at not RFC 3339", req: req{method: "POST", path: "/images", token: uploadToken,
			body: `{"data":{"type":"images","attributes":{"backed_up_at":"yesterday"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes/backed_up_at"},
		{name: "patch id mismatch", req: req{method: "PATCH", path: "/images/2", token: uploadToken,
			body: `{"data":{"type":"images","id":"3","attributes":{"anonymisation_script":"x"}}}`},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/id", wantCalls: []string{}},
		{name: "patch ready image", req: req{method: "PATCH", path: "/images/1", token: uploadToken,
			body: `{"data":{"type":"images","id":1,"attributes":{"anonymisation_script":"x"}}}`},
			wantStatus: 409, wantCode: "conflict", wantDetail: "image 1 is ready"},

		// Domain errors from the services.
		{name: "finalise twice", req: req{method: "POST", path: "/images/1/done", token: uploadToken},
			wantStatus: 409, wantCode: "conflict"},
		{name: "finalise fails", setup: func(e *env) {
			e.images.Err = draupnir.Errorf(draupnir.KindUnprocessable, "anonymisation script failed: ERROR:  relation \"secret_tokens\" does not exist")
		}, req: req{method: "POST", path: "/images/2/done", token: uploadToken},
			wantStatus: 422, wantCode: "unprocessable_entity", wantDetail: `relation "secret_tokens" does not exist`},
		{name: "invalid without field", setup: func(e *env) { e.images.Err = draupnir.Errorf(draupnir.KindInvalid, "script too long") },
			req:        req{method: "POST", path: "/images", body: createImageBody, token: uploadToken},
			wantStatus: 400, wantCode: "bad_request", wantDetail: "script too long"},
		{name: "invalid with field", setup: func(e *env) {
			e.images.Err = &draupnir.Error{Kind: draupnir.KindInvalid, Msg: "backed_up_at is in the future", Field: "backed_up_at"}
		}, req: req{method: "POST", path: "/images", body: createImageBody, token: uploadToken},
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes/backed_up_at"},
		{name: "service unauthorized", setup: func(e *env) { e.images.Err = draupnir.Errorf(draupnir.KindUnauthorized, "token expired") },
			req: req{method: "GET", path: "/images"}, wantStatus: 401, wantCode: "unauthorized"},
		{name: "port pool exhausted", setup: func(e *env) { e.instances.Err = draupnir.Errorf(draupnir.KindUnavailable, "no free port") },
			req:        req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":1}}}`},
			wantStatus: 503, wantCode: "service_unavailable", wantDetail: "no free port"},
		{name: "disk full", setup: func(e *env) {
			e.images.Err = draupnir.Errorf(draupnir.KindInsufficientStorage, "no space left for image 3")
		},
			req:        req{method: "POST", path: "/images", body: createImageBody, token: uploadToken},
			wantStatus: 507, wantCode: "insufficient_storage"},
		{name: "internal error", setup: func(e *env) { e.images.Err = fmt.Errorf("listing images: %w", internal) },
			req: req{method: "GET", path: "/images"}, wantStatus: 500, wantCode: "internal_server_error", wantDetail: "request id",
			check: func(t *testing.T, e *env, rec *httptest.ResponseRecorder) {
				if strings.Contains(rec.Body.String(), "secret.sock") {
					t.Errorf("internal error leaked to the client: %s", rec.Body)
				}
				id := rec.Header().Get("X-Request-Id")
				if !strings.Contains(rec.Body.String(), id) || !strings.Contains(e.logs.String(), "secret.sock") ||
					!strings.Contains(e.logs.String(), id) {
					t.Errorf("the log should have the cause under request id %q:\n%s", id, e.logs)
				}
			}},
		{name: "panic", setup: func(e *env) { e.images.Panics = true },
			req: req{method: "GET", path: "/images"}, wantStatus: 500, wantCode: "internal_server_error",
			check: func(t *testing.T, e *env, rec *httptest.ResponseRecorder) {
				if !strings.Contains(e.logs.String(), "told to panic") {
					t.Errorf("the panic was not logged:\n%s", e.logs)
				}
			}},
		{name: "instance of an unready image", req: req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":2}}}`},
			wantStatus: 409, wantCode: "conflict", wantDetail: "not ready"},
		{name: "instance of an absent image", req: req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":"99"}}}`},
			wantStatus: 404, wantCode: "not_found", wantDetail: "image 99 does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tt.setup != nil {
				tt.setup(e)
			}
			rec := e.do(t, tt.req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantCode != "" {
				o := decodeErrors(t, rec).Errors[0]
				if o.Code != tt.wantCode {
					t.Errorf("code = %q, want %q (%s)", o.Code, tt.wantCode, rec.Body)
				}
				var ptr string
				if o.Source != nil {
					ptr = o.Source.Pointer
				}
				if ptr != tt.wantPointer {
					t.Errorf("source.pointer = %q, want %q (%s)", ptr, tt.wantPointer, rec.Body)
				}
				if !strings.Contains(o.Detail, tt.wantDetail) {
					t.Errorf("detail = %q, want it to contain %q", o.Detail, tt.wantDetail)
				}
			}
			if rec.Code == http.StatusUnauthorized {
				if got := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("WWW-Authenticate = %q, want Bearer", got)
				}
			}
			if tt.wantCalls != nil {
				if got := e.images.Calls(); !slices.Equal(got, tt.wantCalls) {
					t.Errorf("image service calls = %q, want %q", got, tt.wantCalls)
				}
			}
			if tt.check != nil {
				tt.check(t, e, rec)
			}
		})
	}
}

// TestVersionRule: the original line (1.x, 2.0.x) is served as the original
// did; our line (2.1.0 on) needs the server's major and a minor no newer
// than the server's; everything else is refused with a 400 that says why,
// in the shape the client that sent it reads.
func TestVersionRule(t *testing.T) {
	tests := []struct {
		server, client string
		wantCode       string   // "" for accepted; the code of the refusal otherwise
		wantDetail     []string // substrings of the detail
	}{
		{server: "2.1.0", client: "2.1.0"},
		{server: "2.1.0", client: "2.1.7"},
		{server: "2.1.0", client: "2.1.0-rc1"},
		{server: "2.3.1", client: "2.1.0"},
		{server: "2.3.1", client: "2.3.9"},
		{server: "2.1.0", client: "1.0.0"}, // the original line, whatever our version
		{server: "2.1.0", client: "1.7.0"},
		{server: "2.1.0", client: "2.0.0"},
		{server: "2.1.0", client: "2.0.1"},
		{server: "2.9.0", client: "1.4.2"},
		{server: "dev", client: "dev"},
		{server: "dev", client: "1.0.0"},
		{server: "2.1.0", client: "2.2.0", wantCode: "incompatible_version", wantDetail: []string{"2.2.0", "2.1.0", "upgrade the server"}},
		{server: "dev", client: "2.1.0", wantCode: "incompatible_version", wantDetail: []string{"dev"}},
		{server: "2.1.0", client: "garbage", wantCode: "incompatible_version", wantDetail: []string{"garbage", "2.1.0", "X.Y.Z"}},
		{server: "2.1.0", client: "2.1", wantCode: "incompatible_version"},
		{server: "2.1.0", client: "2.1.0.0", wantCode: "incompatible_version"},
		{server: "2.1.0", client: "v2.1.0", wantCode: "incompatible_version"},
		{server: "2.1.0", client: "2.-1.0", wantCode: "incompatible_version"},
		{server: "2.1.0", client: "0.9.0", wantCode: "invalid_api_version", wantDetail: []string{"0.9.0", "older", "2.1.0"}},
		{server: "2.1.0", client: "3.0.0", wantCode: "invalid_api_version", wantDetail: []string{"3.0.0", "different protocol", "2.1.0"}},
		{server: "2.1.0", client: "5.3.6", wantCode: "invalid_api_version", wantDetail: []string{"5.3.6", "different protocol", "client certificates"}},
	}
	for _, tt := range tests {
		t.Run(tt.server+"/"+tt.client, func(t *testing.T) {
			e := newEnvVersion(t, tt.server)
			rec := e.do(t, req{method: "GET", path: "/images", version: tt.client})
			if tt.wantCode == "" {
				if rec.Code != http.StatusOK {
					t.Fatalf("status = %d, want 200: %s", rec.Code, rec.Body)
				}
				return
			}
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400: %s", rec.Code, rec.Body)
			}
			var o wire.ErrorObject
			if originalShape(tt.client) {
				// Refused clients of the original's other lines read its shape.
				oe := decodeOriginal(t, rec)
				o = wire.ErrorObject{Code: oe.Code, Detail: oe.Detail, Title: oe.Title}
				if oe.Title != "Invalid API Version" {
					t.Errorf("title %q", oe.Title)
				}
			} else {
				o = decodeErrors(t, rec).Errors[0]
			}
			if o.Code != tt.wantCode {
				t.Errorf("code = %q, want %q", o.Code, tt.wantCode)
			}
			for _, s := range tt.wantDetail {
				if !strings.Contains(o.Detail, s) {
					t.Errorf("detail %q does not mention %q", o.Detail, s)
				}
			}
		})
	}
}

func TestRendering(t *testing.T) {
	tests := []struct {
		name string
		req  req
		want string
	}{
		{
			name: "image",
			req:  req{method: "GET", path: "/images/1"},
			want: `{"data":{"type":"images","id":"1","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","created_at":"2017-05-01T12:00:00Z","updated_at":"2017-05-01T12:00:00Z","ready":true,"anonymisation_script":"\\c db\nDELETE FROM secrets;","state":"ready","error":"","size_bytes":4096,"postgres_version":"15","database":"db"}}}`,
		},
		{
			name: "instance with a CA",
			req:  req{method: "GET", path: "/instances/1"},
			want: `{"data":{"type":"instances","id":"1","attributes":{"created_at":"2026-11-24T10:00:00Z","updated_at":"2026-11-24T10:00:00Z","image_id":1,"port":5678,"hostname":"db.example.com","state":"running","username":"draupnir","password":"s3cret","database":"db","owner":"alice@example.com","ca_certificate":"-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n","expires_at":null,"protected_until":null,"last_active_at":null}}}`,
		},
		{
			name: "instances as a user",
			req:  req{method: "GET", path: "/instances", token: bobToken},
			want: `{"data":[{"type":"instances","id":"2","attributes":{"created_at":"2026-11-24T10:00:00Z","updated_at":"2026-11-24T10:00:00Z","image_id":1,"port":5679,"hostname":"db.example.com","state":"running","username":"draupnir","password":"other","database":"db","owner":"bob@example.com","expires_at":null,"protected_until":null,"last_active_at":null}}]}`,
		},
		{
			name: "no instances",
			req:  req{method: "GET", path: "/instances", token: bobToken},
			want: `{"data":[]}`,
		},
		{
			name: "health",
			req:  req{method: "GET", path: "/health_check", token: "-", version: "-"},
			want: `{"status":"ok"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tt.name == "no instances" {
				delete(e.instances.ByID, 2)
			}
			rec := e.do(t, tt.req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status = %d: %s", rec.Code, rec.Body)
			}
			// Compare compactly, but byte for byte: numbers vs strings matter.
			var got bytes.Buffer
			if err := json.Compact(&got, rec.Body.Bytes()); err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("body:\n got %s\nwant %s", got.String(), tt.want)
			}
		})
	}
}

func TestCreateImage(t *testing.T) {
	e := newEnv(t, nil)
	rec := e.do(t, req{method: "POST", path: "/images", token: uploadToken,
		body: `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T14:00:00+02:00","anonymisation_script":"\\c my_db\nDELETE FROM secret_tokens;"}}}`})
	if rec.Code != http.StatusCreated {
		t.Fatalf("status = %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("Location"); got != "/images/3" {
		t.Errorf("Location = %q", got)
	}
	c := e.images.Created
	if !c.P.Upload || !c.BackedUpAt.Equal(time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)) || c.BackedUpAt.Location() != time.UTC ||
		c.Script != "\\c my_db\nDELETE FROM secret_tokens;" {
		t.Errorf("service got %+v", c)
	}
	var doc struct {
		Data struct {
			Type       string
			ID         json.Number
			Attributes map[string]any
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Data.Type != "images" || doc.Data.ID != "3" || doc.Data.Attributes["ready"] != false ||
		doc.Data.Attributes["backed_up_at"] != "2017-05-01T12:00:00Z" || doc.Data.Attributes["state"] != "created" {
		t.Errorf("unexpected document %s", rec.Body)
	}
}

func TestPatchImage(t *testing.T) {
	e := newEnv(t, nil)
	rec := e.do(t, req{method: "PATCH", path: "/images/2", token: uploadToken,
		body: `{"data":{"type":"images","id":"2","attributes":{"anonymisation_script":"SELECT 1;"}}}`})
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d: %s", rec.Code, rec.Body)
	}
	p := e.images.Patch
	if p.BackedUpAt != nil || p.AnonymisationScript == nil || *p.AnonymisationScript != "SELECT 1;" {
		t.Errorf("service got patch %+v", p)
	}
	if !strings.Contains(rec.Body.String(), `"anonymisation_script":"SELECT 1;"`) {
		t.Errorf("body does not show the new script: %s", rec.Body)
	}
}

func TestFinaliseAndDestroyImage(t *testing.T) {
	e := newEnv(t, nil)
	rec := e.do(t, req{method: "POST", path: "/images/2/done", token: uploadToken})
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"ready":true`) {
		t.Fatalf("done: %d %s", rec.Code, rec.Body)
	}
	rec = e.do(t, req{method: "DELETE", path: "/images/2", token: uploadToken})
	if rec.Code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", rec.Code, rec.Body)
	}
	rec = e.do(t, req{method: "GET", path: "/images/2"})
	if rec.Code != http.StatusNotFound {
		t.Fatalf("get after delete: %d %s", rec.Code, rec.Body)
	}
}

func TestCreateInstanceImageID(t *testing.T) {
	tests := []struct {
		imageID    string // JSON text of the member
		wantStatus int
		wantID     int64
	}{
		{`1`, 201, 1},
		{`"1"`, 201, 1},
		{`1.0`, 422, 0},
		{`1e0`, 422, 0},
		{`"abc"`, 422, 0},
		{`""`, 422, 0},
		{`" 1"`, 422, 0},
		{`0`, 422, 0},
		{`-1`, 422, 0},
		{`"-1"`, 422, 0},
		{`99999999999999999999`, 422, 0},
		{`true`, 422, 0},
		{`{}`, 422, 0},
		{`null`, 422, 0},
	}
	for _, tt := range tests {
		t.Run(tt.imageID, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.do(t, req{method: "POST", path: "/instances",
				body: `{"data":{"type":"instances","attributes":{"image_id":` + tt.imageID + `}}}`})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus != 201 {
				o := decodeErrors(t, rec).Errors[0]
				if o.Source == nil || o.Source.Pointer != "/data/attributes/image_id" {
					t.Errorf("error does not point at image_id: %s", rec.Body)
				}
				if calls := e.instances.Calls(); len(calls) != 0 {
					t.Errorf("service was called: %q", calls)
				}
				return
			}
			if e.instances.ImageID != tt.wantID {
				t.Errorf("service got image %d, want %d", e.instances.ImageID, tt.wantID)
			}
			body := rec.Body.String()
			if !strings.Contains(body, `"image_id":1,`) || !strings.Contains(body, `"port":6000,`) || !strings.Contains(body, `"id":"3",`) {
				t.Errorf("unexpected rendering: %s", body)
			}
			if got := rec.Header().Get("Location"); got != "/instances/3" {
				t.Errorf("Location = %q", got)
			}
		})
	}
}

func TestInstanceVisibility(t *testing.T) {
	tests := []struct {
		token   string
		wantIDs []int64
	}{
		{aliceToken, []int64{1}},
		{bobToken, []int64{2}},
		{uploadToken, []int64{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.token, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.do(t, req{method: "GET", path: "/instances", token: tt.token})
			var doc struct{ Data []struct{ ID wire.ID } }
			if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for _, d := range doc.Data {
				ids = append(ids, int64(d.ID))
			}
			if !slices.Equal(ids, tt.wantIDs) {
				t.Errorf("ids = %v, want %v", ids, tt.wantIDs)
			}
		})
	}
}

func TestBodyLimit(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 256 })
	big := `{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"` +
		strings.Repeat("x", 300) + `"}}}`

	// Declared length over the limit: refused before reading.
	rec := e.do(t, req{method: "POST", path: "/images", token: uploadToken, body: big})
	if rec.Code != http.StatusRequestEntityTooLarge || decodeErrors(t, rec).Errors[0].Code != "payload_too_large" {
		t.Fatalf("declared length: %d %s", rec.Code, rec.Body)
	}

	// Unknown length (chunked) over the limit, through a real server.
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		name string
		body string
		want int
	}{
		{"chunked over the limit", big, http.StatusRequestEntityTooLarge},
		{"chunked under the limit", createImageBody, http.StatusCreated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hr, err := http.NewRequest("POST", srv.URL+"/images", io.MultiReader(strings.NewReader(tt.body)))
			if err != nil {
				t.Fatal(err)
			}
			hr.ContentLength = -1
			hr.Header.Set("Content-Type", "application/json")
			hr.Header.Set(HeaderVersion, draupnir.Version)
			hr.Header.Set("Authorization", "Bearer "+uploadToken)
			resp, err := srv.Client().Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if resp.StatusCode == http.StatusRequestEntityTooLarge && !strings.Contains(string(body), "payload_too_large") {
				t.Errorf("body = %s", body)
			}
		})
	}
}

func TestHealthCheck(t *testing.T) {
	tests := []struct {
		name       string
		health     Health
		method     string
		wantStatus int
	}{
		{"no health", nil, "GET", 200},
		{"healthy", fakeHealth{}, "GET", 200},
		{"head", fakeHealth{}, "HEAD", 200},
		{"unhealthy", fakeHealth{err: errors.New("state database at 10.0.0.1 refused")}, "GET", 503},
		{"unhealthy head", fakeHealth{err: errors.New("down")}, "HEAD", 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Health = tt.health })
			rec := e.do(t, req{method: tt.method, path: "/health_check", token: "-", version: "-"})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if strings.Contains(rec.Body.String(), "10.0.0.1") {
				t.Errorf("health check leaked its cause: %s", rec.Body)
			}
			if tt.method == "GET" && tt.wantStatus == 503 && decodeErrors(t, rec).Errors[0].Code != "service_unavailable" {
				t.Errorf("body = %s", rec.Body)
			}
		})
	}
}

// TestInternalErrorWhileUnhealthy: an internal error while the health check
// fails (the state database is down) is a 503 the client may retry, not a
// 500; while healthy it stays a 500.
func TestInternalErrorWhileUnhealthy(t *testing.T) {
	tests := []struct {
		name       string
		coreErr    error
		health     Health
		wantStatus int
		wantCode   string
	}{
		{"healthy", errors.New("boom"), fakeHealth{}, 500, "internal_server_error"},
		{"no health", errors.New("boom"), nil, 500, "internal_server_error"},
		{"unhealthy", errors.New("dial unix /run/state/.s.PGSQL.5432: connect: no such file"),
			fakeHealth{err: draupnir.Errorf(draupnir.KindUnavailable, "the state database does not answer")}, 503, "service_unavailable"},
		{"unhealthy, client error", draupnir.Errorf(draupnir.KindNotFound, "image 3 does not exist"),
			fakeHealth{err: errors.New("down")}, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Health = tt.health })
			e.images.Err = tt.coreErr
			rec := e.do(t, req{method: "GET", path: "/images", token: uploadToken})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if got := decodeErrors(t, rec).Errors[0].Code; got != tt.wantCode {
				t.Errorf("code = %q, want %q", got, tt.wantCode)
			}
			if strings.Contains(rec.Body.String(), "/run/state") {
				t.Errorf("the cause leaked: %s", rec.Body)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, "draupnir_instances 2\n")
	})
	tests := []struct {
		name       string
		metrics    http.Handler
		wantStatus int
	}{
		{"none", nil, 404},
		{"delegated", metrics, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Metrics = tt.metrics })
			rec := e.do(t, req{method: "GET", path: "/metrics", token: "-", version: "-"})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus == 200 && rec.Body.String() != "draupnir_instances 2\n" {
				t.Errorf("body = %q", rec.Body)
			}
		})
	}
}

func TestLogging(t *testing.T) {
	e := newEnv(t, nil)
	e.do(t, req{method: "GET", path: "/instances"})
	e.do(t, req{method: "GET", path: "/images", token: uploadToken})
	e.do(t, req{method: "GET", path: "/images", token: "not-a-token-but-secret"})
	e.images.Err = errors.New("boom")
	e.do(t, req{method: "GET", path: "/images", token: bobToken})

	logs := e.logs.String()
	for _, secret := range []string{aliceToken, uploadToken, bobToken, "not-a-token-but-secret", "s3cret"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
	for _, want := range []string{
		"principal=alice@example.com", "principal=upload", "status=401", "status=500", "path=/instances", "method=GET", "duration=",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestParseID(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1", 1, true},
		{"42", 42, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"9223372036854775808", 0, false},
		{"99999999999999999999", 0, false},
		{"0", 0, false},
		{"00", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
		{"", 0, false},
		{"abc", 0, false},
		{"١", 0, false}, // Arabic-Indic digit one
	}
	for _, tt := range tests {
		got, ok := parseID(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseID(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// checkDecodeError asserts that a decoder error is a client error.
func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("decode error %v (%T) is not an *apiError", err, err)
	}
	if ae.Status < 400 || ae.Status >= 500 || ae.Code == "" || ae.Detail == "" {
		t.Fatalf("decode error is not a client error: %+v", ae)
	}
}

func FuzzDecodeImageCreate(f *testing.F) {
	for _, s := range []string{
		createImageBody,
		`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00.123+05:30"}}}`,
		`{"data":{"type":"images","attributes":{"backed_up_at":null,"anonymisation_script":null}}}`,
		`{"data":{"type":"images","id":1,"attributes":{}}}`,
		`{"data":null}`, `{"data":[]}`, `null`, ``, `{`, `{"data":{"type":"images","attributes":{"x":1}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeImageCreate(bytes.NewReader(b))
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if got.BackedUpAt.Location() != time.UTC {
			t.Errorf("backed_up_at not in UTC: %v", got.BackedUpAt)
		}
		if got.Source != "" && !draupnir.ValidSourceName(got.Source) {
			t.Errorf("accepted source %q", got.Source)
		}
	})
}

func FuzzDecodeInstanceCreate(f *testing.F) {
	for _, s := range []string{
		`{"data":{"type":"instances","attributes":{"image_id":1}}}`,
		`{"data":{"type":"instances","attributes":{"image_id":"12"}}}`,
		`{"data":{"type":"instances","attributes":{"image_id":1.5}}}`,
		`{"data":{"type":"instances","attributes":{"image_id":"\u0031"}}}`,
		`{"data":{"type":"instances","attributes":{"image_id":99999999999999999999}}}`,
		`{"data":{"type":"images","attributes":{"image_id":1}}}`,
		`{"data":{"type":"instances"}}`, `[]`, ``, `"x"`,
		`{"data":{"type":"instances","attributes":{"source":"app"}}}`,
		`{"data":{"type":"instances","attributes":{"source":"app","image_id":1}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeInstanceCreate(bytes.NewReader(b))
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		// Exactly one of an image and a series, each valid.
		if (got.ImageID > 0) == (got.Source != "") || got.ImageID < 0 ||
			(got.Source != "" && !draupnir.ValidSourceName(got.Source)) {
			t.Errorf("accepted image_id %d, source %q from %q", got.ImageID, got.Source, b)
		}
	})
}

func TestClientGone(t *testing.T) {
	e := newEnv(t, nil)
	e.images.Err = fmt.Errorf("waiting for the finalise job of image 2: %w", context.Canceled)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hr := httptest.NewRequest("POST", "/images/2/done", nil).WithContext(ctx)
	hr.Header.Set(HeaderVersion, draupnir.Version)
	hr.Header.Set("Authorization", "Bearer "+uploadToken)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, hr)
	if rec.Body.Len() != 0 {
		t.Errorf("answered a client that went away: %s", rec.Body)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "status=499") || strings.Contains(logs, "request failed") {
		t.Errorf("want a 499 request log and no error log:\n%s", logs)
	}
	if got := e.images.Calls(); !slices.Equal(got, []string{"Finalise"}) {
		t.Errorf("calls = %q", got)
	}
}

func TestServerFailuresLogTheirCause(t *testing.T) {
	e := newEnv(t, nil)
	e.instances.Err = &draupnir.Error{Kind: draupnir.KindUnavailable, Msg: "no free port; try again later",
		Err: errors.New("reserving a port: all of 5600-5699 taken")}
	rec := e.do(t, req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":1}}}`})
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status = %d: %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "5600") {
		t.Errorf("cause shown to the client: %s", rec.Body)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "all of 5600-5699 taken") {
		t.Errorf("want a warning with the cause:\n%s", logs)
	}
}

// TestInstanceLifetime: POST ttl and PATCH ttl / protect_for reach the
// service as durations (days and seconds too), a capped one's notice comes
// back in meta, and bad values are refused with a pointer before the
// service is asked.
func TestInstanceLifetime(t *testing.T) {
	dur := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name        string
		method      string
		path        string
		attrs       string
		wantStatus  int
		wantOptions draupnir.CreateOptions
		wantPatch   draupnir.InstancePatch
		wantPointer string
	}{
		{"create with days", "POST", "/instances", `{"image_id":1,"ttl":"7d"}`, 201, draupnir.CreateOptions{TTL: 7 * 24 * time.Hour}, draupnir.InstancePatch{}, ""},
		{"create with seconds", "POST", "/instances", `{"image_id":1,"ttl":"3s"}`, 201, draupnir.CreateOptions{TTL: 3 * time.Second}, draupnir.InstancePatch{}, ""},
		{"create without ttl", "POST", "/instances", `{"image_id":1}`, 201, draupnir.CreateOptions{}, draupnir.InstancePatch{}, ""},
		{"create with a bad ttl", "POST", "/instances", `{"image_id":1,"ttl":"forever"}`, 422, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes/ttl"},
		{"create with a negative ttl", "POST", "/instances", `{"image_id":1,"ttl":"-1h"}`, 422, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes/ttl"},
		{"create with a numeric ttl", "POST", "/instances", `{"image_id":1,"ttl":3600}`, 400, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes/ttl"},
		{"extend", "PATCH", "/instances/1", `{"ttl":"8h"}`, 200, draupnir.CreateOptions{}, draupnir.InstancePatch{TTL: dur(8 * time.Hour)}, ""},
		{"protect", "PATCH", "/instances/1", `{"protect_for":"2d"}`, 200, draupnir.CreateOptions{}, draupnir.InstancePatch{ProtectFor: dur(48 * time.Hour)}, ""},
		{"unprotect", "PATCH", "/instances/1", `{"protect_for":"0"}`, 200, draupnir.CreateOptions{}, draupnir.InstancePatch{ProtectFor: dur(0)}, ""},
		{"both", "PATCH", "/instances/1", `{"ttl":"1h","protect_for":"30m"}`, 200, draupnir.CreateOptions{}, draupnir.InstancePatch{TTL: dur(time.Hour), ProtectFor: dur(30 * time.Minute)}, ""},
		{"nothing to change", "PATCH", "/instances/1", `{}`, 422, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes"},
		{"bad protect_for", "PATCH", "/instances/1", `{"protect_for":"1y"}`, 422, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes/protect_for"},
		{"unknown attribute", "PATCH", "/instances/1", `{"expires_at":"2030-01-01T00:00:00Z"}`, 400, draupnir.CreateOptions{}, draupnir.InstancePatch{}, "/data/attributes/expires_at"},
		{"someone else's", "PATCH", "/instances/2", `{"ttl":"1h"}`, 404, draupnir.CreateOptions{}, draupnir.InstancePatch{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.do(t, req{method: tt.method, path: tt.path,
				body: `{"data":{"type":"instances","attributes":` + tt.attrs + `}}`})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if rec.Code >= 400 {
				o := decodeErrors(t, rec).Errors[0]
				if tt.wantPointer != "" && (o.Source == nil || o.Source.Pointer != tt.wantPointer) {
					t.Errorf("error does not point at %s: %s", tt.wantPointer, rec.Body)
				}
				if tt.wantStatus != 404 && len(e.instances.Calls()) != 0 {
					t.Errorf("service was called: %q", e.instances.Calls())
				}
				return
			}
			if e.instances.Options != tt.wantOptions {
				t.Errorf("create options %+v, want %+v", e.instances.Options, tt.wantOptions)
			}
			if got, want := fmt.Sprint(derefPatch(e.instances.Patch)), fmt.Sprint(derefPatch(tt.wantPatch)); got != want {
				t.Errorf("patch %s, want %s", got, want)
			}
		})
	}
}

func derefPatch(p draupnir.InstancePatch) []any {
	var out []any
	for _, d := range []*time.Duration{p.TTL, p.ProtectFor} {
		if d == nil {
			out = append(out, nil)
		} else {
			out = append(out, *d)
		}
	}
	return out
}

// TestGoneAndQuota: a tombstone is 410 gone with the reason, for its owner
// only; a quota refusal is 403 quota_exceeded with the service's words.
func TestGoneAndQuota(t *testing.T) {
	e := newEnv(t, nil)
	e.instances.Graves = []*draupnir.Tombstone{{ID: 7, ImageID: 1, Owner: "alice@example.com", Reason: draupnir.ReasonExpired,
		Detail: "it expired at 2026-11-24T12:00:00Z", DestroyedAt: time.Date(2026, 11, 24, 12, 0, 5, 0, time.UTC)}}
	rec := e.do(t, req{method: "GET", path: "/instances/7"})
	if rec.Code != http.StatusGone {
		t.Fatalf("status = %d: %s", rec.Code, rec.Body)
	}
	if o := decodeErrors(t, rec).Errors[0]; o.Code != "gone" || !strings.Contains(o.Detail, "expired at 2026-11-24T12:00:00Z") ||
		!strings.Contains(o.Detail, "destroyed at 2026-11-24T12:00:05Z") {
		t.Errorf("gone answer %+v", o)
	}
	if rec := e.do(t, req{method: "GET", path: "/instances/7", token: bobToken}); rec.Code != http.StatusNotFound {
		t.Errorf("someone else's tombstone: %d %s", rec.Code, rec.Body)
	}
	rec = e.do(t, req{method: "GET", path: "/tombstones"})
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"type":"tombstones","id":"7"`) || !strings.Contains(rec.Body.String(), `"reason":"expired"`) {
		t.Errorf("tombstones: %d %s", rec.Code, rec.Body)
	}
	e.instances.Err = draupnir.Errorf(draupnir.KindQuotaExceeded, "you have 2 instances, the most instances.max_per_user (2) allows; destroy one first")
	rec = e.do(t, req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":1}}}`})
	if o := decodeErrors(t, rec).Errors[0]; rec.Code != 403 || o.Code != "quota_exceeded" || !strings.Contains(o.Detail, "max_per_user (2)") {
		t.Errorf("quota refusal: %d %s", rec.Code, rec.Body)
	}
}

// POST /instances/:id/reset takes no body, or one naming the image to reset
// to; a bad body is refused before the service is asked.
func TestResetInstance(t *testing.T) {
	tests := []struct {
		name        string
		path        string
		body        string
		wantStatus  int
		wantCode    string
		wantPointer string
		wantImage   int64 // what the service was asked for
	}{
		{name: "no body", path: "/instances/1/reset", wantStatus: 200, wantImage: 1},
		{name: "blank body", path: "/instances/1/reset", body: " \n", wantStatus: 200, wantImage: 1},
		{name: "no attributes", path: "/instances/1/reset", body: `{"data":{"type":"instances"}}`, wantStatus: 200, wantImage: 1},
		{name: "null image", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":null}}}`, wantStatus: 200, wantImage: 1},
		{name: "image as number", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":1}}}`, wantStatus: 200, wantImage: 1},
		{name: "image as string", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":"1"}}}`, wantStatus: 200, wantImage: 1},
		{name: "image not ready", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":2}}}`, wantStatus: 409, wantCode: "conflict"},
		{name: "absent image", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":7}}}`, wantStatus: 404, wantCode: "not_found"},
		{name: "someone else's instance", path: "/instances/2/reset", wantStatus: 404, wantCode: "not_found"},
		{name: "bad instance id", path: "/instances/x/reset", wantStatus: 404, wantCode: "not_found"},
		{name: "image zero", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":0}}}`,
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes/image_id"},
		{name: "image word", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"image_id":"latest"}}}`,
			wantStatus: 422, wantCode: "unprocessable_entity", wantPointer: "/data/attributes/image_id"},
		{name: "unknown attribute", path: "/instances/1/reset", body: `{"data":{"type":"instances","attributes":{"port":1}}}`, wantStatus: 400, wantPointer: "/data/attributes/port"},
		{name: "wrong type", path: "/instances/1/reset", body: `{"data":{"type":"images","attributes":{"image_id":1}}}`, wantStatus: 422, wantPointer: "/data/type"},
		{name: "client id", path: "/instances/1/reset", body: `{"data":{"type":"instances","id":"9"}}`, wantStatus: 422, wantPointer: "/data/id"},
		{name: "not JSON", path: "/instances/1/reset", body: `reset please`, wantStatus: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.do(t, req{method: "POST", path: tt.path, body: tt.body})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if tt.wantStatus == 200 {
				var doc wire.Document[wire.InstanceResource]
				if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
					t.Fatal(err)
				}
				if in := doc.Data.Instance(); in.ID != 1 || in.ImageID != tt.wantImage || in.Port != 5678 {
					t.Errorf("answered %+v", in)
				}
				if calls := e.instances.Calls(); !slices.Equal(calls, []string{"Reset"}) {
					t.Errorf("calls %q", calls)
				}
				return
			}
			o := decodeErrors(t, rec).Errors[0]
			if tt.wantCode != "" && o.Code != tt.wantCode {
				t.Errorf("code %q, want %q", o.Code, tt.wantCode)
			}
			if tt.wantPointer != "" && (o.Source == nil || o.Source.Pointer != tt.wantPointer) {
				t.Errorf("error does not point at %s: %s", tt.wantPointer, rec.Body)
			}
			if tt.wantStatus < 404 || tt.wantStatus == 422 {
				if calls := e.instances.Calls(); len(calls) != 0 {
					t.Errorf("service was called on a bad request: %q", calls)
				}
			}
		})
	}
}

// POST /instances/:id/save answers 201 with the new image, its lineage and
// owner; someone else's instance is not found; a body with attributes is
// refused before the service is asked.
func TestSaveInstance(t *testing.T) {
	tests := []struct {
		name       string
		token      string
		path, body string
		wantStatus int
		wantCalled bool
	}{
		{name: "own instance", path: "/instances/1/save", wantStatus: 201, wantCalled: true},
		{name: "empty resource", path: "/instances/1/save", body: `{"data":{"type":"instances"}}`, wantStatus: 201, wantCalled: true},
		{name: "upload principal saves anyone's", token: uploadToken, path: "/instances/2/save", wantStatus: 201, wantCalled: true},
		{name: "someone else's", path: "/instances/2/save", wantStatus: 404, wantCalled: true},
		{name: "attributes", path: "/instances/1/save", body: `{"data":{"type":"instances","attributes":{"image_id":1}}}`, wantStatus: 400},
		{name: "not JSON", path: "/instances/1/save", body: `save`, wantStatus: 400},
		{name: "bad id", path: "/instances/x/save", wantStatus: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			rec := e.do(t, req{method: "POST", path: tt.path, body: tt.body, token: tt.token})
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if called := len(e.instances.Calls()) > 0; called != tt.wantCalled {
				t.Errorf("service called: %v, want %v", called, tt.wantCalled)
			}
			if rec.Code != 201 {
				decodeErrors(t, rec)
				return
			}
			var doc wire.Document[wire.ImageResource]
			if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			im := doc.Data.Image()
			if im.ParentImageID != 1 || im.FromInstanceID == 0 || im.Owner == "" || !im.Ready() {
				t.Errorf("answered %+v", im)
			}
			for _, attr := range []string{`"parent_image_id":1`, `"from_instance_id":`, `"owner":`} {
				if !strings.Contains(rec.Body.String(), attr) {
					t.Errorf("answer lacks %s: %s", attr, rec.Body)
				}
			}
			if got, want := rec.Header().Get("Location"), fmt.Sprintf("/images/%d", im.ID); got != want {
				t.Errorf("Location = %q, want %q", got, want)
			}
		})
	}
}
