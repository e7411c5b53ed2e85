package e2e

import (
	"archive/tar"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

type tarEntry struct {
	name, body, link string
	symlink          bool
}

func writeTar(t testing.TB, path string, entries []tarEntry) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		switch {
		case e.symlink:
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPErrors checks the documented errors at the real server.
func TestHTTPErrors(t *testing.T) {
	s := startServer(t, "")
	good := draupnir.Version // our line: JSON:API errors arrays
	cases := []struct {
		name, method, path, version, ctype, token, body string
		status                                          int
		code                                            string
	}{
		{"missing version", "GET", "/images", "", "", sharedSecret, "", 400, "missing_version"},
		{"newer minor", "GET", "/images", "2.99.0", "", sharedSecret, "", 400, "incompatible_version"},
		{"garbage version", "GET", "/images", "banana", "", sharedSecret, "", 400, "incompatible_version"},
		{"no token", "GET", "/images", good, "", "", "", 401, "unauthorized"},
		{"wrong token", "GET", "/images", good, "", "nope", "", 401, "unauthorized"},
		{"wrong content type", "POST", "/images", good, "text/plain", sharedSecret, `{}`, 415, "unsupported_media_type"},
		{"malformed json", "POST", "/images", good, "application/json", sharedSecret, `{"data":`, 400, "invalid_json"},
		{"unknown image", "GET", "/images/424242", good, "", sharedSecret, "", 404, "not_found"},
		{"non-numeric id", "GET", "/images/abc", good, "", sharedSecret, "", 404, "not_found"},
		{"unknown instance", "GET", "/instances/424242", good, "", "the-integration-access-token", "", 404, "not_found"},
		{"user creates an image", "POST", "/images", good, "application/json", "the-integration-access-token",
			`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z"}}}`, 403, "forbidden"},
		{"instance of an unknown image", "POST", "/instances", good, "application/json", "the-integration-access-token",
			`{"data":{"type":"instances","attributes":{"image_id":4242}}}`, 404, "not_found"},
		{"image_id of the wrong type", "POST", "/instances", good, "application/json", "the-integration-access-token",
			`{"data":{"type":"instances","attributes":{"image_id":[1]}}}`, 422, "unprocessable_entity"},
		{"NUL in a new script", "POST", "/images", good, "application/json", sharedSecret,
			`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"x\u0000y"}}}`, 422, "unprocessable_entity"},
		{"NUL in a changed script", "PATCH", "/images/4242", good, "application/json", sharedSecret,
			`{"data":{"type":"images","attributes":{"anonymisation_script":"\u0000"}}}`, 422, "unprocessable_entity"},
		{"done on an unknown image", "POST", "/images/4242/done", good, "application/json", sharedSecret, "", 404, "not_found"},
		{"oversized body", "POST", "/images", good, "application/json", sharedSecret,
			`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"` + strings.Repeat("x", 2<<20) + `"}}}`, 413, "payload_too_large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, s.url+c.path, strings.NewReader(c.body))
			if c.version != "" {
				req.Header.Set("Draupnir-Version", c.version)
			}
			if c.ctype != "" {
				req.Header.Set("Content-Type", c.ctype)
			}
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var doc struct {
				Errors []struct{ Status, Code, Title, Detail string } `json:"errors"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
				t.Fatalf("error body is not JSON: %v", err)
			}
			if resp.StatusCode != c.status || len(doc.Errors) != 1 {
				t.Fatalf("status %d with %+v; want %d", resp.StatusCode, doc.Errors, c.status)
			}
			e := doc.Errors[0]
			if c.code != "" && e.Code != c.code {
				t.Errorf("code %q, want %q", e.Code, c.code)
			}
			if e.Status != strconv.Itoa(resp.StatusCode) || e.Title == "" || e.Detail == "" {
				t.Errorf("incomplete error object %+v", e)
			}
			if resp.Header.Get("Draupnir-Version") == "" {
				t.Error("response lacks Draupnir-Version")
			}
		})
	}
}
