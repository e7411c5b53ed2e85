package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// originalVersions are the original clients' versions: the seed's examples
// and v1.0.0 send 1.0.0, the others their own.
var originalVersions = []string{"1.0.0", "1.7.0", "2.0.0"}

// createBody is what the original client writes: its JSON:API library sends
// an empty type and id, and image_id as a string.
func createBody(attrs string) string {
	return `{"data":{"type":"","id":"","attributes":` + attrs + `}}`
}

// TestOriginalLine replays the original clients' requests and checks the
// original server's answers, as its specs (spec/*.rb at v2.0.0) and its
// clients expect them.
func TestOriginalLine(t *testing.T) {
	tests := []struct {
		name       string
		req        req
		wantStatus int
		wantBody   string // exact JSON (compared as values), if set
		check      func(t *testing.T, rec *http.Response, body map[string]any)
	}{
		{name: "unauthorized", req: req{method: "POST", path: "/images", token: "incorrectsecret",
			body: createBody(`{"anonymisation_script":"CREATE DATABASE foo;","backed_up_at":"2016-01-02T03:04:05Z"}`)},
			wantStatus: 401,
			wantBody:   `{"status":"401","id":"unauthorized","code":"unauthorized","title":"Unauthorized","detail":"You do not have permission to view this resource","source":{}}`},
		{name: "no token", req: req{method: "GET", path: "/instances", token: "-"}, wantStatus: 401,
			wantBody: `{"status":"401","id":"unauthorized","code":"unauthorized","title":"Unauthorized","detail":"You do not have permission to view this resource","source":{}}`},
		{name: "image not ready", req: req{method: "POST", path: "/instances", body: createBody(`{"image_id":"2"}`)},
			wantStatus: 422,
			wantBody:   `{"id":"unprocessable_entity","status":"422","code":"unprocessable_entity","title":"Image Not Ready","detail":"The specified image is not ready to be used","source":{"parameter":"image_id"}}`},
		{name: "image not ready, numeric id", req: req{method: "POST", path: "/instances", body: `{"data":{"type":"instances","attributes":{"image_id":2}}}`},
			wantStatus: 422,
			wantBody:   `{"id":"unprocessable_entity","status":"422","code":"unprocessable_entity","title":"Image Not Ready","detail":"The specified image is not ready to be used","source":{"parameter":"image_id"}}`},
		{name: "image not found", req: req{method: "POST", path: "/instances", body: createBody(`{"image_id":"99"}`)},
			wantStatus: 404,
			wantBody:   `{"id":"resource_not_found","status":"404","code":"resource_not_found","title":"Image Not Found","detail":"The image you specified could not be found","source":{}}`},
		{name: "bad image id", req: req{method: "POST", path: "/instances", body: createBody(`{"image_id":"garbage"}`)},
			wantStatus: 400,
			wantBody:   `{"id":"bad_request","status":"400","code":"bad_request","title":"Bad Request","detail":"The image ID provided is not valid","source":{"parameter":"image_id"}}`},
		{name: "no image id", req: req{method: "POST", path: "/instances", body: createBody(`{}`)},
			wantStatus: 400,
			wantBody:   `{"id":"bad_request","status":"400","code":"bad_request","title":"Bad Request","detail":"The image ID provided is not valid","source":{"parameter":"image_id"}}`},
		{name: "malformed JSON", req: req{method: "POST", path: "/instances", body: `{"data":`}, wantStatus: 400,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				if b["code"] != "bad_request" || b["title"] != "Invalid JSON" {
					t.Errorf("body %v", b)
				}
			}},
		{name: "unknown image", req: req{method: "GET", path: "/images/7"}, wantStatus: 404,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				if b["code"] != "resource_not_found" || b["title"] != "Resource Not Found" || b["detail"] != "image 7 does not exist" {
					t.Errorf("body %v", b)
				}
			}},
		{name: "a user creates an image", req: req{method: "POST", path: "/images",
			body: createBody(`{"anonymisation_script":"","backed_up_at":"2016-01-02T03:04:05Z"}`)}, wantStatus: 403,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				if b["code"] != "forbidden" || !strings.Contains(b["detail"].(string), "upload principal") {
					t.Errorf("body %v", b)
				}
			}},
		{name: "create image", req: req{method: "POST", path: "/images", token: uploadToken,
			body: createBody(`{"anonymisation_script":"CREATE DATABASE foo;","backed_up_at":"2016-01-02T03:04:05Z"}`)},
			wantStatus: 201,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				d := b["data"].(map[string]any)
				a := d["attributes"].(map[string]any)
				if d["type"] != "images" || d["id"] != "3" || a["backed_up_at"] != "2016-01-02T03:04:05Z" || a["ready"] != false {
					t.Errorf("body %v", b)
				}
			}},
		{name: "create instance", req: req{method: "POST", path: "/instances", body: createBody(`{"image_id":"1"}`)},
			wantStatus: 201,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				d := b["data"].(map[string]any)
				a := d["attributes"].(map[string]any)
				if d["type"] != "instances" || d["id"] != "3" || a["image_id"] != float64(1) || a["port"] != float64(6000) {
					t.Errorf("body %v", b)
				}
			}},
		{name: "destroy instance", req: req{method: "DELETE", path: "/instances/1"}, wantStatus: 204,
			check: func(t *testing.T, r *http.Response, _ map[string]any) {
				if ct := r.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
			}},
		{name: "destroy image", req: req{method: "DELETE", path: "/images/2", token: uploadToken}, wantStatus: 204,
			check: func(t *testing.T, r *http.Response, _ map[string]any) {
				if ct := r.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
			}},
		{name: "original login", req: req{method: "POST", path: "/access_tokens", token: "-", body: createBody(`{"state":"s"}`)},
			wantStatus: 410,
			check: func(t *testing.T, _ *http.Response, b map[string]any) {
				if !strings.Contains(b["detail"].(string), "draupnir-client authenticate") {
					t.Errorf("body %v", b)
				}
			}},
	}
	for _, v := range originalVersions {
		for _, tt := range tests {
			t.Run(v+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t, nil)
				r := tt.req
				r.version = v
				rec := e.do(t, r) // checks the echoed version and the error shape
				res := rec.Result()
				if rec.Code != tt.wantStatus {
					t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
				}
				var body map[string]any
				if rec.Body.Len() > 0 {
					if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
						t.Fatalf("body %q: %v", rec.Body, err)
					}
				}
				if tt.wantBody != "" {
					var want map[string]any
					if err := json.Unmarshal([]byte(tt.wantBody), &want); err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(body, want) {
						t.Errorf("body\n got %s\nwant %s", rec.Body, tt.wantBody)
					}
				}
				if tt.check != nil {
					tt.check(t, res, body)
				}
			})
		}
	}
}

// TestOurLineUnchanged: the same requests from our own line keep JSON:API
// errors arrays, our statuses and details, and 204s without a body type.
func TestOurLineUnchanged(t *testing.T) {
	tests := []struct {
		name       string
		req        req
		wantStatus int
		wantCode   string
		wantDetail string
	}{
		{"unauthorized", req{method: "GET", path: "/instances", token: "incorrectsecret"}, 401, "unauthorized", "not valid"},
		{"image not ready", req{method: "POST", path: "/instances", body: createBody(`{"image_id":"2"}`)}, 409, "conflict", "not ready"},
		{"image not found", req{method: "POST", path: "/instances", body: createBody(`{"image_id":"99"}`)}, 404, "not_found", "image 99"},
		{"bad image id", req{method: "POST", path: "/instances", body: createBody(`{"image_id":"garbage"}`)}, 422, "unprocessable_entity", "image_id"},
		{"empty type and id accepted", req{method: "POST", path: "/instances", body: createBody(`{"image_id":"1"}`)}, 201, "", ""},
		{"destroy", req{method: "DELETE", path: "/instances/1"}, 204, "", ""},
		{"original login", req{method: "POST", path: "/access_tokens", token: "-", body: createBody(`{"state":"s"}`)}, 410,
			"unsupported_login", "draupnir-client authenticate"},
		{"original login in a browser", req{method: "GET", path: "/authenticate?state=abc", token: "-", version: "-"}, 410,
			"unsupported_login", "draupnir-client authenticate"},
		{"our login keeps its route", req{method: "GET", path: "/authenticate?state=abc&redirect_uri=x&code_challenge=c", token: "-", version: "-"}, 400,
			"bad_request", "bad redirect_uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Login = fakeLogin{} })
			rec := e.do(t, tt.req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if rec.Code == http.StatusNoContent && rec.Header().Get("Content-Type") != "" {
				t.Errorf("204 with Content-Type %q", rec.Header().Get("Content-Type"))
			}
			if tt.wantCode == "" {
				return
			}
			o := decodeErrors(t, rec).Errors[0]
			if o.Code != tt.wantCode || !strings.Contains(o.Detail, tt.wantDetail) {
				t.Errorf("error %+v, want code %s and a detail with %q", o, tt.wantCode, tt.wantDetail)
			}
		})
	}
}

// TestOriginalVersionEcho: the response names the version whose behaviour
// it follows — the request's own for the original line (the original 1.0.0
// client refuses anything else), the server's otherwise.
func TestOriginalVersionEcho(t *testing.T) {
	tests := []struct{ sent, want string }{
		{"1.0.0", "1.0.0"}, {"1.7.0", "1.7.0"}, {"2.0.0", "2.0.0"}, {"2.0.1-rc.1", "2.0.1-rc.1"},
		{"1.0.0+a\u00e9", "1.0.0"}, // not a semver text: its parsed form
		{"2.1.0", "2.1.0"}, {"", "2.1.0"}, {"3.0.0", "2.1.0"}, {"9.9.9", "2.1.0"},
	}
	for _, tt := range tests {
		e := newEnvVersion(t, "2.1.0")
		for _, path := range []string{"/health_check", "/images", "/nope"} {
			hr := httptest.NewRequest("GET", path, nil)
			hr.Header.Set(HeaderVersion, tt.sent)
			hr.Header.Set("Authorization", "Bearer "+aliceToken)
			rec := httptest.NewRecorder()
			e.h.ServeHTTP(rec, hr)
			if got := rec.Header().Get(HeaderVersion); got != tt.want {
				t.Errorf("%s with %q: %s %q, want %q", path, tt.sent, HeaderVersion, got, tt.want)
			}
		}
	}
}
