package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// The original Draupnir's clients and specs, replayed against the real
// server: its clients v1.0.0, v1.7.0 and v2.0.0 (request bodies and headers
// as they write them, answers read as their JSON:API library reads them),
// and its integration specs at v2.0.0 (spec/*.rb: statuses, headers, body
// shapes and messages).

const integrationToken = "the-integration-access-token"

// originalCall is one request as the original client makes it: every
// request, bodiless or not, carries Content-Type: application/json, the
// bearer token and the client's version.
func (s *server) originalCall(t *testing.T, version, token, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if version != "" {
		req.Header.Set("Draupnir-Version", version)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// originalBody is a create body as the original client's JSON:API library
// writes it: an empty type and id, attributes with sorted keys.
func originalBody(attrs map[string]string) string {
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"type": "", "id": "", "attributes": attrs}})
	return string(b)
}

// origResource is a resource as the original client reads it. Its library
// wants the id as a JSON string, integer attributes as JSON numbers, times in
// the layout 2006-01-02T15:04:05Z, ready as a bool; members it does not know
// are ignored.
type origResource struct {
	ID            int
	BackedUpAt    time.Time
	Ready         bool
	ImageID, Port int
}

// readOriginal reads data (one resource, or a list) as the original client
// does, failing the test where it would fail.
func readOriginal(t *testing.T, body []byte, kind string) []origResource {
	t.Helper()
	var doc struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("the original client cannot read %s: %v", body, err)
	}
	var raws []json.RawMessage
	if bytes.HasPrefix(bytes.TrimSpace(doc.Data), []byte("[")) {
		if err := json.Unmarshal(doc.Data, &raws); err != nil {
			t.Fatal(err)
		}
	} else {
		raws = []json.RawMessage{doc.Data}
	}
	var out []origResource
	for _, raw := range raws {
		var node struct {
			Type       string                     `json:"type"`
			ID         string                     `json:"id"` // a number here is the error the original clients stopped at
			Attributes map[string]json.RawMessage `json:"attributes"`
		}
		if err := json.Unmarshal(raw, &node); err != nil {
			t.Fatalf("the original client cannot read %s: %v", raw, err)
		}
		if node.Type != kind {
			t.Fatalf("type %q, want %q", node.Type, kind)
		}
		var r origResource
		var err error
		if r.ID, err = strconv.Atoi(node.ID); err != nil {
			t.Fatalf("id %q is not an integer", node.ID)
		}
		timeAttr := func(name string) time.Time {
			var s string
			if err := json.Unmarshal(node.Attributes[name], &s); err != nil {
				t.Fatalf("%s: %s is not a string", name, node.Attributes[name])
			}
			v, err := time.Parse("2006-01-02T15:04:05Z", s)
			if err != nil {
				t.Fatalf("%s %q is not in the original's layout: %v", name, s, err)
			}
			return v
		}
		intAttr := func(name string) int {
			var f float64 // a string here: "data is not a jsonapi representation"
			if err := json.Unmarshal(node.Attributes[name], &f); err != nil || f != math.Trunc(f) {
				t.Fatalf("%s: %s is not a JSON integer", name, node.Attributes[name])
			}
			return int(f)
		}
		timeAttr("created_at")
		timeAttr("updated_at")
		switch kind {
		case "images":
			r.BackedUpAt = timeAttr("backed_up_at")
			if err := json.Unmarshal(node.Attributes["ready"], &r.Ready); err != nil {
				t.Fatalf("ready: %s is not a bool", node.Attributes["ready"])
			}
		case "instances":
			r.ImageID, r.Port = intAttr("image_id"), intAttr("port")
		}
		out = append(out, r)
	}
	return out
}

// wantOriginalError checks an error answer against the original's object.
func wantOriginalError(t *testing.T, resp *http.Response, body []byte, status int, want map[string]any) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("error body\n got %s\nwant %v", body, want)
	}
}

var (
	origUnauthorized = map[string]any{"status": "401", "id": "unauthorized", "code": "unauthorized", "title": "Unauthorized",
		"detail": "You do not have permission to view this resource", "source": map[string]any{}}
	origNotReady = map[string]any{"id": "unprocessable_entity", "status": "422", "code": "unprocessable_entity",
		"title": "Image Not Ready", "detail": "The specified image is not ready to be used", "source": map[string]any{"parameter": "image_id"}}
	origImageNotFound = map[string]any{"id": "resource_not_found", "status": "404", "code": "resource_not_found",
		"title": "Image Not Found", "detail": "The image you specified could not be found", "source": map[string]any{}}
)

// TestOriginalClients replays what the original clients send, for each of
// their version lines, and reads the answers as they do.
func TestOriginalClients(t *testing.T) {
	s := startServer(t, "")
	src := newSource(t)
	backup := src.BaseBackup(t, "-z", "-X", "stream")

	// An image as the seed's curl examples (version 1.0.0) make it, with a
	// numeric image_id later: the original server took both.
	var ready origResource
	t.Run("seed curl examples", func(t *testing.T) {
		resp, body := s.originalCall(t, "1.0.0", sharedSecret, "POST", "/images",
			`{"data":{"type":"images","attributes":{"backed_up_at":"2017-05-01T12:00:00Z","anonymisation_script":"\\c shop\nDELETE FROM secret_tokens;"}}}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("create: %d %s", resp.StatusCode, body)
		}
		ready = readOriginal(t, body, "images")[0]
		s.copyInto(t, int64(ready.ID), filepath.Join(backup, "base.tar.gz"), filepath.Join(backup, "pg_wal.tar.gz"))
		resp, body = s.originalCall(t, "1.0.0", sharedSecret, "POST", fmt.Sprintf("/images/%d/done", ready.ID), "")
		if resp.StatusCode != http.StatusOK || !readOriginal(t, body, "images")[0].Ready {
			t.Fatalf("done: %d %s\n%s", resp.StatusCode, body, s.logs())
		}
		resp, body = s.originalCall(t, "1.0.0", integrationToken, "POST", "/instances",
			fmt.Sprintf(`{"data":{"type":"instances","attributes":{"image_id":%d}}}`, ready.ID))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("instance: %d %s", resp.StatusCode, body)
		}
		in := readOriginal(t, body, "instances")[0]
		resp, body = s.originalCall(t, "1.0.0", integrationToken, "DELETE", fmt.Sprintf("/instances/%d", in.ID), "")
		if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
			t.Fatalf("destroy: %d %q", resp.StatusCode, body)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	for _, version := range []string{"1.0.0", "1.7.0", "2.0.0"} {
		t.Run(version, func(t *testing.T) {
			call := func(token, method, path, body string) (*http.Response, []byte) {
				t.Helper()
				resp, b := s.originalCall(t, version, token, method, path, body)
				// The 1.0.0 client refuses an answer whose version is not its own.
				if got := resp.Header.Get("Draupnir-Version"); got != version {
					t.Errorf("%s %s: Draupnir-Version %q, want %q", method, path, got, version)
				}
				return resp, b
			}

			// images list / create (upload principal).
			resp, body := call(sharedSecret, "GET", "/images", "")
			if resp.StatusCode != http.StatusOK || len(readOriginal(t, body, "images")) == 0 {
				t.Fatalf("images list: %d %s", resp.StatusCode, body)
			}
			resp, body = call(sharedSecret, "POST", "/images", originalBody(map[string]string{
				"anonymisation_script": "DELETE FROM secret_tokens;", "backed_up_at": "2016-01-02T03:04:05Z"}))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("images create: %d %s", resp.StatusCode, body)
			}
			unready := readOriginal(t, body, "images")[0]
			if unready.Ready || !unready.BackedUpAt.Equal(time.Date(2016, 1, 2, 3, 4, 5, 0, time.UTC)) {
				t.Errorf("created %+v", unready)
			}

			// instances create: the errors the original clients print.
			resp, body = call(integrationToken, "POST", "/instances", originalBody(map[string]string{"image_id": strconv.Itoa(unready.ID)}))
			wantOriginalError(t, resp, body, 422, origNotReady)
			resp, body = call(integrationToken, "POST", "/instances", originalBody(map[string]string{"image_id": "424242"}))
			wantOriginalError(t, resp, body, 404, origImageNotFound)
			resp, body = call("not-a-token", "GET", "/instances", "")
			wantOriginalError(t, resp, body, 401, origUnauthorized)
			resp, body = call(integrationToken, "POST", "/images", originalBody(map[string]string{"backed_up_at": "2016-01-02T03:04:05Z"}))
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), `"detail":"only the upload principal may manage images"`) {
				t.Errorf("a user creating an image: %d %s", resp.StatusCode, body)
			}

			// instances create / list / show / env / destroy.
			resp, body = call(integrationToken, "POST", "/instances", originalBody(map[string]string{"image_id": strconv.Itoa(ready.ID)}))
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("instances create: %d %s", resp.StatusCode, body)
			}
			in := readOriginal(t, body, "instances")[0]
			if in.ImageID != ready.ID || in.Port < s.minPort || in.Port >= s.minPort+instancePorts {
				t.Errorf("instance %+v of image %d, want a port of the range", in, ready.ID)
			}
			resp, body = call(integrationToken, "GET", "/instances", "")
			if list := readOriginal(t, body, "instances"); resp.StatusCode != http.StatusOK || len(list) != 1 || list[0].ID != in.ID {
				t.Errorf("instances list: %d %s", resp.StatusCode, body)
			}
			resp, body = call(integrationToken, "GET", fmt.Sprintf("/instances/%d", in.ID), "")
			if resp.StatusCode != http.StatusOK || readOriginal(t, body, "instances")[0].Port != in.Port {
				t.Errorf("instances show: %d %s", resp.StatusCode, body)
			}
			// Their env prints PGHOST=<domain> PGPORT=<port> PGUSER=postgres
			// and no password: the port is the instance's...
			ours, err := s.user().Instances().Get(t.Context(), draupnir.Principal{}, int64(in.ID))
			if err != nil || ours.Port != in.Port {
				t.Fatalf("instance %d as our client sees it: %+v, %v", in.ID, ours, err)
			}
			mustPSQL(t, ours, "SELECT 1")
			// ...but the password-less superuser login it implies stays shut.
			cmd := exec.Command("psql", "-X", "-At", "-h", "127.0.0.1", "-p", strconv.Itoa(in.Port), "-U", "postgres",
				"-d", ours.Database, "-c", "SELECT 1")
			cmd.Env = append(os.Environ(), "PGPASSWORD=", "PGCONNECT_TIMEOUT=10", "PGSSLMODE=prefer")
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Errorf("PGUSER=postgres without a password got in:\n%s", out)
			}
			resp, body = call(integrationToken, "DELETE", fmt.Sprintf("/instances/%d", in.ID), "")
			if resp.StatusCode != http.StatusNoContent || len(body) != 0 || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("instances destroy: %d %q, Content-Type %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
			}

			// images destroy.
			resp, body = call(sharedSecret, "DELETE", fmt.Sprintf("/images/%d", unready.ID), "")
			if resp.StatusCode != http.StatusNoContent || len(body) != 0 || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("images destroy: %d %q, Content-Type %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
			}

			// Their login: a clear pointer to ours.
			resp, body = call("", "POST", "/access_tokens", originalBody(map[string]string{"state": "0123456789abcdef"}))
			if resp.StatusCode != http.StatusGone || !strings.Contains(string(body), "draupnir-client authenticate") ||
				!strings.Contains(string(body), `"title":"Gone"`) {
				t.Errorf("POST /access_tokens: %d %s", resp.StatusCode, body)
			}
		})
	}

	t.Run("refused and our own versions", func(t *testing.T) {
		for _, v := range []string{"3.0.0", "5.3.6"} {
			resp, body := s.originalCall(t, v, integrationToken, "GET", "/instances", "")
			var o map[string]any
			json.Unmarshal(body, &o)
			if resp.StatusCode != http.StatusBadRequest || o["title"] != "Invalid API Version" ||
				!strings.Contains(fmt.Sprint(o["detail"]), "different protocol") || !strings.Contains(fmt.Sprint(o["detail"]), draupnir.Version) {
				t.Errorf("%s: %d %s", v, resp.StatusCode, body)
			}
		}
		resp, body := s.originalCall(t, draupnir.Version, "not-a-token", "GET", "/instances", "")
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(string(body), `{"errors":[{"status":"401","code":"unauthorized"`) {
			t.Errorf("our line, 401: %s", body)
		}
		resp, body = s.originalCall(t, draupnir.Version, sharedSecret, "POST", "/images", originalBody(map[string]string{"backed_up_at": "2016-01-02T03:04:05Z"}))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("our line, create with an empty type and id: %d %s", resp.StatusCode, body)
		}
		id := readOriginal(t, body, "images")[0].ID
		resp, body = s.originalCall(t, draupnir.Version, integrationToken, "POST", "/instances", originalBody(map[string]string{"image_id": strconv.Itoa(id)}))
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), `"errors":[{"status":"409","code":"conflict"`) {
			t.Errorf("our line, unready image: %d %s", resp.StatusCode, body)
		}
		resp, body = s.originalCall(t, draupnir.Version, sharedSecret, "DELETE", fmt.Sprintf("/images/%d", id), "")
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Content-Type") != "" {
			t.Errorf("our line, 204: %d %q, Content-Type %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
		}
	})
}

// TestOriginalSpecs replays the original's integration specs (spec/*.rb at
// v2.0.0) with its client version, 2.0.0. Images are managed with the
// upload principal's token (the specs' token is an ordinary user's here,
// who may not), instances with the integration token; extra attributes are
// allowed, as the issue that asked for this says.
func TestOriginalSpecs(t *testing.T) {
	s := startServer(t, "")
	const v = "2.0.0"
	post := func(t *testing.T, token, path, payload string) (*http.Response, []byte) {
		return s.originalCall(t, v, token, "POST", path, payload)
	}
	get := func(t *testing.T, token, path string) (*http.Response, []byte) {
		return s.originalCall(t, v, token, "GET", path, "")
	}
	del := func(t *testing.T, token, path string) (*http.Response, []byte) {
		return s.originalCall(t, v, token, "DELETE", path, "")
	}
	jsonOf := func(t *testing.T, b []byte) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return m
	}
	wantJSONType := func(t *testing.T, resp *http.Response) {
		t.Helper()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
	}
	const postPayload = `{"data":{"type":"images","attributes":{"backed_up_at":"2016-01-02T03:04:05Z","anonymisation_script":"CREATE DATABASE foo;"}}}`
	// checkImage is the specs' match of an image: type, a String id, and
	// attributes that include these.
	checkImage := func(t *testing.T, d map[string]any) {
		t.Helper()
		a, _ := d["attributes"].(map[string]any)
		if _, ok := d["id"].(string); !ok || d["type"] != "images" || a["backed_up_at"] != "2016-01-02T03:04:05Z" || a["ready"] != false {
			t.Errorf("image %v", d)
		}
		for _, k := range []string{"created_at", "updated_at"} {
			if _, ok := a[k].(string); !ok {
				t.Errorf("%s %v is not a String", k, a[k])
			}
		}
	}
	// checkInstance is the specs' match of an instance: a String id, the
	// image's id as an integer, a Numeric port, String times.
	checkInstance := func(t *testing.T, d map[string]any, imageID string) {
		t.Helper()
		a, _ := d["attributes"].(map[string]any)
		want, _ := strconv.Atoi(imageID)
		if _, ok := d["id"].(string); !ok || d["type"] != "instances" || a["image_id"] != float64(want) {
			t.Errorf("instance %v, want image %s", d, imageID)
		}
		if _, ok := a["port"].(float64); !ok {
			t.Errorf("port %v is not Numeric", a["port"])
		}
		for _, k := range []string{"created_at", "updated_at"} {
			if _, ok := a[k].(string); !ok {
				t.Errorf("%s %v is not a String", k, a[k])
			}
		}
	}
	createImage := func(t *testing.T) string {
		t.Helper()
		resp, body := post(t, sharedSecret, "/images", postPayload)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /images: %d %s", resp.StatusCode, body)
		}
		return jsonOf(t, body)["data"].(map[string]any)["id"].(string)
	}

	// spec/health_check_spec.rb
	t.Run("health check responds with OK", func(t *testing.T) {
		resp, body := get(t, integrationToken, "/health_check")
		wantJSONType(t, resp)
		if resp.StatusCode != 200 || !reflect.DeepEqual(jsonOf(t, body), map[string]any{"status": "ok"}) {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
		dv := resp.Header.Get("Draupnir-Version")
		if dv != v || dv == "0.0.0" || !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(dv) {
			t.Errorf("Draupnir-Version %q, want %q", dv, v)
		}
	})
	t.Run("old client version is a Bad Request", func(t *testing.T) {
		if resp, body := s.originalCall(t, "0.0.0", integrationToken, "GET", "/images", ""); resp.StatusCode != 400 {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
	})

	// spec/image_spec.rb
	t.Run("POST /images with an invalid shared secret", func(t *testing.T) {
		resp, body := post(t, "incorrectsecret", "/images", postPayload)
		wantOriginalError(t, resp, body, 401, origUnauthorized)
	})
	t.Run("POST /images creates an image", func(t *testing.T) {
		resp, body := post(t, sharedSecret, "/images", postPayload)
		wantJSONType(t, resp)
		if resp.StatusCode != 201 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkImage(t, jsonOf(t, body)["data"].(map[string]any))
	})
	t.Run("GET /images lists the images", func(t *testing.T) {
		resp, body := get(t, sharedSecret, "/images")
		wantJSONType(t, resp)
		data, _ := jsonOf(t, body)["data"].([]any)
		if resp.StatusCode != 200 || len(data) == 0 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		for _, d := range data {
			checkImage(t, d.(map[string]any))
		}
	})
	t.Run("GET /images/:id shows the image", func(t *testing.T) {
		id := createImage(t)
		resp, body := get(t, sharedSecret, "/images/"+id)
		wantJSONType(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkImage(t, jsonOf(t, body)["data"].(map[string]any))
	})
	t.Run("DELETE /images/:id deletes the image and returns a 204", func(t *testing.T) {
		id := createImage(t)
		resp, body := del(t, sharedSecret, "/images/"+id)
		wantJSONType(t, resp)
		if resp.StatusCode != 204 || string(body) != "" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})

	// spec/instance_spec.rb: create_ready_image uploads spec/fixtures/db.tar
	// and calls done; here a base backup of a small cluster.
	src := newSource(t).BaseBackup(t, "-z", "-X", "stream")
	readyImage := func(t *testing.T) string {
		t.Helper()
		id := createImage(t)
		n, _ := strconv.ParseInt(id, 10, 64)
		s.copyInto(t, n, filepath.Join(src, "base.tar.gz"), filepath.Join(src, "pg_wal.tar.gz"))
		if resp, body := post(t, sharedSecret, "/images/"+id+"/done", "{}"); resp.StatusCode != 200 {
			t.Fatalf("done: %d %s\n%s", resp.StatusCode, body, s.logs())
		}
		return id
	}
	createInstance := func(t *testing.T, imageID string) (*http.Response, []byte) {
		return post(t, integrationToken, "/instances", `{"data":{"type":"instances","attributes":{"image_id":"`+imageID+`"}}}`)
	}
	destroyAll := func(t *testing.T) {
		_, body := get(t, integrationToken, "/instances")
		for _, d := range jsonOf(t, body)["data"].([]any) {
			del(t, integrationToken, "/instances/"+d.(map[string]any)["id"].(string))
		}
	}
	t.Run("POST /instances with an unready image", func(t *testing.T) {
		resp, body := createInstance(t, createImage(t))
		wantOriginalError(t, resp, body, 422, origNotReady)
	})
	image := readyImage(t)
	t.Run("POST /instances with a ready image", func(t *testing.T) {
		defer destroyAll(t)
		resp, body := createInstance(t, image)
		wantJSONType(t, resp)
		if resp.StatusCode != 201 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkInstance(t, jsonOf(t, body)["data"].(map[string]any), image)
	})
	t.Run("GET /instances shows the instance", func(t *testing.T) {
		defer destroyAll(t)
		_, created := createInstance(t, image)
		resp, body := get(t, integrationToken, "/instances")
		wantJSONType(t, resp)
		data, _ := jsonOf(t, body)["data"].([]any)
		if resp.StatusCode != 200 || len(data) != 1 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkInstance(t, data[0].(map[string]any), image)
		if data[0].(map[string]any)["id"] != jsonOf(t, created)["data"].(map[string]any)["id"] {
			t.Errorf("listed %v, created %s", data[0], created)
		}
	})
	t.Run("GET /instances/:id shows the instance", func(t *testing.T) {
		defer destroyAll(t)
		_, created := createInstance(t, image)
		id := jsonOf(t, created)["data"].(map[string]any)["id"].(string)
		resp, body := get(t, integrationToken, "/instances/"+id)
		wantJSONType(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		checkInstance(t, jsonOf(t, body)["data"].(map[string]any), image)
	})
	t.Run("DELETE /instances/:id deletes the instance and returns a 204", func(t *testing.T) {
		_, created := createInstance(t, image)
		id := jsonOf(t, created)["data"].(map[string]any)["id"].(string)
		resp, body := del(t, integrationToken, "/instances/"+id)
		wantJSONType(t, resp)
		if resp.StatusCode != 204 || string(body) != "" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
		_, body = get(t, integrationToken, "/instances")
		if data := jsonOf(t, body)["data"].([]any); len(data) != 0 {
			t.Errorf("instances after the delete: %s", body)
		}
	})
}
