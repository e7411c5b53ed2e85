package nodes

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/mock"
	"github.com/draupnir-db/draupnir/wire"
)

func TestRank(t *testing.T) {
	tests := []struct {
		name string
		in   []Candidate
		want string // names, best first
	}{
		{"fewest instances first", []Candidate{
			{Name: "a", Instances: 5, FreePorts: 1, FreeDiskBytes: 1, FreeMemoryBytes: 9},
			{Name: "b", Instances: 2, FreePorts: 1, FreeDiskBytes: 1, FreeMemoryBytes: 1},
			{Name: "c", Instances: 3, FreePorts: 1, FreeDiskBytes: 1},
		}, "b c a"},
		{"then most memory, then most disk", []Candidate{
			{Name: "a", Instances: 1, FreePorts: 1, FreeDiskBytes: 5, FreeMemoryBytes: 1},
			{Name: "b", Instances: 1, FreePorts: 1, FreeDiskBytes: 1, FreeMemoryBytes: 2},
			{Name: "c", Instances: 1, FreePorts: 1, FreeDiskBytes: 9, FreeMemoryBytes: 1},
		}, "b c a"},
		{"ties by name, whatever the order given", []Candidate{
			{Name: "n3", FreePorts: 1, FreeDiskBytes: 1}, {Name: "n1", FreePorts: 1, FreeDiskBytes: 1}, {Name: "n2", FreePorts: 1, FreeDiskBytes: 1},
		}, "n1 n2 n3"},
		{"full nodes are left out", []Candidate{
			{Name: "no-ports", FreePorts: 0, FreeDiskBytes: 9},
			{Name: "no-disk", FreePorts: 9, FreeDiskBytes: 0},
			{Name: "busy", Instances: 99, FreePorts: 1, FreeDiskBytes: 1},
		}, "busy"},
		{"none", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, c := range Rank(tt.in) {
				got = append(got, c.Name)
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("Rank = %v, want %s", got, tt.want)
			}
		})
	}
}

const testSecret = "0123456789abcdef0123456789abcdef"

// signed returns a request a node signed for p, and its body.
func signed(s *Signer, to string, p draupnir.Principal, auth string) (*http.Request, []byte) {
	body := []byte(`{"data":{"type":"instances","attributes":{"image_id":"1"}}}`)
	r := httptest.NewRequest("POST", "/instances?x=1", bytes.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	s.Sign(r, body, to, p)
	return r, body
}

// TestVerify plants every kind of forged, altered and replayed forward
// and checks each is refused, and that a genuine one passes once.
func TestVerify(t *testing.T) {
	alice := draupnir.Principal{Name: "alice@example.com"}
	a := NewSigner("a", []byte(testSecret))
	b := NewSigner("b", []byte(testSecret))
	tests := []struct {
		name   string
		change func(r *http.Request, body []byte) []byte
	}{
		{"body altered", func(r *http.Request, body []byte) []byte { return bytes.Replace(body, []byte(`"1"`), []byte(`"2"`), 1) }},
		{"method altered", func(r *http.Request, body []byte) []byte { r.Method = "DELETE"; return body }},
		{"path altered", func(r *http.Request, body []byte) []byte { r.URL.Path = "/instances/2"; return body }},
		{"query altered", func(r *http.Request, body []byte) []byte { r.URL.RawQuery = "x=2"; return body }},
		{"principal altered", func(r *http.Request, body []byte) []byte {
			r.Header.Set(HeaderForwardedFor, draupnir.UploadPrincipal)
			return body
		}},
		{"credentials altered", func(r *http.Request, body []byte) []byte {
			r.Header.Set("Authorization", "Bearer other")
			return body
		}},
		{"target altered", func(r *http.Request, body []byte) []byte { r.Header.Set(HeaderForwardedTo, "c"); return body }},
		{"time altered", func(r *http.Request, body []byte) []byte {
			r.Header.Set(HeaderForwardedAt, fmt.Sprint(time.Now().Unix()+1))
			return body
		}},
		{"no signature", func(r *http.Request, body []byte) []byte { r.Header.Del(HeaderSignature); return body }},
		{"signature of another secret", func(r *http.Request, body []byte) []byte {
			NewSigner("a", []byte(strings.Repeat("x", 32))).Sign(r, body, "b", alice)
			return body
		}},
		{"signature truncated", func(r *http.Request, body []byte) []byte {
			r.Header.Set(HeaderSignature, r.Header.Get(HeaderSignature)[:32])
			return body
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, body := signed(a, "b", alice, "Bearer alice-token")
			body = tt.change(r, body)
			if _, err := b.Verify(r, body); err == nil {
				t.Fatal("verified")
			}
		})
	}
	t.Run("sent to another node", func(t *testing.T) {
		r, body := signed(a, "c", alice, "")
		if _, err := b.Verify(r, body); err == nil {
			t.Fatal("b took a forward meant for c")
		}
	})
	t.Run("too old and from the future", func(t *testing.T) {
		for _, skew := range []time.Duration{-MaxSkew - time.Second, MaxSkew + time.Second} {
			old := NewSigner("a", []byte(testSecret))
			old.now = func() time.Time { return time.Now().Add(skew) }
			r, body := signed(old, "b", alice, "")
			if _, err := b.Verify(r, body); err == nil {
				t.Errorf("verified a forward signed %s away", skew)
			}
		}
	})
	t.Run("genuine, once", func(t *testing.T) {
		for _, p := range []draupnir.Principal{alice, {Name: draupnir.UploadPrincipal, Upload: true}} {
			r, body := signed(a, "b", p, "Bearer alice-token")
			f, err := b.Verify(r, body)
			if err != nil {
				t.Fatal(err)
			}
			if f.Node != "a" || f.Principal != p {
				t.Errorf("Verify = %+v, want from a for %+v", f, p)
			}
			if _, err := b.Verify(r, body); err == nil {
				t.Error("a replay verified")
			}
		}
	})
}

// fakeNodes is the membership of a cluster on fixed nodes; images holds
// which nodes hold which images ready.
type fakeNodes struct {
	self   string
	nodes  map[string]*draupnir.Node
	images map[int64][]Candidate
}

func (f *fakeNodes) Self() string { return f.self }
func (f *fakeNodes) Get(_ context.Context, name string) (*draupnir.Node, error) {
	if n := f.nodes[name]; n != nil {
		return n, nil
	}
	return nil, draupnir.Errorf(draupnir.KindNotFound, "node %q does not exist", name)
}
func (f *fakeNodes) Candidates(_ context.Context, imageID int64) ([]Candidate, error) {
	var out []Candidate
	for _, c := range f.images[imageID] {
		if n := f.nodes[c.Name]; n != nil && !n.Down && !n.Drained {
			out = append(out, c)
		}
	}
	return out, nil
}
func (f *fakeNodes) ImageReady(_ context.Context, imageID int64) (bool, error) {
	return len(f.images[imageID]) > 0, nil
}

// ImageNode says image 2 is made on b, every other on a.
func (f *fakeNodes) ImageNode(_ context.Context, id int64) (string, error) {
	if id == 2 {
		return "b", nil
	}
	return "a", nil
}

// homed is a node's local service: the mock's instances in away run on
// other nodes, and it answers about them as instances.Service does.
type homed struct {
	*mock.Instances
	away map[int64]string
}

func (h homed) elsewhere(p draupnir.Principal, id int64) error {
	in, err := h.Instances.Get(context.Background(), p, id)
	if err != nil || h.away[id] == "" {
		return err
	}
	c := *in
	return &draupnir.ElsewhereError{Node: h.away[id], Instance: &c}
}

func (h homed) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error) {
	if err := h.elsewhere(p, id); err != nil {
		return nil, err
	}
	return h.Instances.Get(ctx, p, id)
}

func (h homed) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	if err := h.elsewhere(p, id); err != nil {
		return err
	}
	return h.Instances.Destroy(ctx, p, id)
}

type fakeAuth map[string]draupnir.Principal

func (f fakeAuth) AuthenticateToken(_ context.Context, token string) (draupnir.Principal, error) {
	if p, ok := f[token]; ok {
		return p, nil
	}
	return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown token")
}

var tokens = fakeAuth{
	"alice-token-0123456789":  {Name: "alice@example.com"},
	"bob-token-0123456789":    {Name: "bob@example.com"},
	"upload-token-0123456789": {Name: draupnir.UploadPrincipal, Upload: true},
}

// cluster is two nodes' HTTP doors, a and b, over mock services: instance
// 1 (alice's) and 2 (bob's) run on b; image 1 is ready on b only.
type cluster struct {
	a, b       *httptest.Server
	aLocal     homed
	bLocal     *mock.Instances
	aFwd       *Instances
	aImages    *mock.Images
	bImages    *mock.Images
	signerA    *Signer
	nodes      *fakeNodes
	logA, logB *bytes.Buffer
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{logA: &bytes.Buffer{}, logB: &bytes.Buffer{}}
	c.nodes = &fakeNodes{self: "a", nodes: map[string]*draupnir.Node{}, images: map[int64][]Candidate{
		1: {{Name: "b", FreePorts: 10, FreeDiskBytes: 1 << 30}},
	}}
	c.aImages, c.bImages = mock.NewImages(), mock.NewImages()
	door := func(local draupnir.InstanceService, images *mock.Images, nodes Membership, s *Signer, log io.Writer) http.Handler {
		l := slog.New(slog.NewTextHandler(log, nil))
		im := &Images{LocalImages: mockUploads{images}, Nodes: nodes, Signer: s, HTTP: http.DefaultClient, Log: l}
		return httpapi.New(httpapi.Options{Images: im, Instances: local, Auth: tokens, Forwards: Trust{Signer: s}, Log: l})
	}
	signerB := NewSigner("b", []byte(testSecret))
	c.bLocal = mock.NewInstances(mock.NewImages())
	bNodes := &fakeNodes{self: "b", nodes: c.nodes.nodes, images: c.nodes.images}
	bFwd := &Instances{Local: c.bLocal, Nodes: bNodes, Signer: signerB, HTTP: http.DefaultClient,
		Log: slog.New(slog.NewTextHandler(c.logB, nil))}
	c.b = httptest.NewServer(door(bFwd, c.bImages, bNodes, signerB, c.logB))
	t.Cleanup(c.b.Close)

	c.signerA = NewSigner("a", []byte(testSecret))
	c.aLocal = homed{Instances: mock.NewInstances(mock.NewImages()), away: map[int64]string{1: "b", 2: "b"}}
	c.aFwd = &Instances{Local: c.aLocal, Nodes: c.nodes, Signer: c.signerA, HTTP: http.DefaultClient,
		Log: slog.New(slog.NewTextHandler(c.logA, nil))}
	c.a = httptest.NewServer(door(c.aFwd, c.aImages, c.nodes, c.signerA, c.logA))
	t.Cleanup(c.a.Close)
	c.nodes.nodes["a"] = &draupnir.Node{Name: "a", APIURL: c.a.URL}
	c.nodes.nodes["b"] = &draupnir.Node{Name: "b", APIURL: c.b.URL}
	return c
}

// mockUploads is a mock image service with no uploads.
type mockUploads struct{ *mock.Images }

func (mockUploads) OpenUpload(context.Context, draupnir.Principal, int64) (draupnir.Upload, error) {
	return nil, draupnir.Errorf(draupnir.KindInternal, "no uploads here")
}

// TestFinaliseOnTheUploadsNode: an image is finalised on the node that
// took its upload, whichever node is asked.
func TestFinaliseOnTheUploadsNode(t *testing.T) {
	c := newCluster(t)
	status, body := call(t, c.a, "POST", "/images/2/done", "upload-token-0123456789", "", nil)
	if status != 200 {
		t.Fatalf("done through a = %d %s", status, body)
	}
	if got := strings.Join(c.bImages.Calls(), " "); !strings.Contains(got, "Finalise") {
		t.Errorf("b's calls: %s", got)
	}
	if got := strings.Join(c.aImages.Calls(), " "); strings.Contains(got, "Finalise") {
		t.Errorf("a finalised it too: %s", got)
	}
	// A user's done is refused by the door before any forward.
	if status, _ := call(t, c.a, "POST", "/images/2/done", "alice-token-0123456789", "", nil); status != 403 {
		t.Errorf("a user's done = %d", status)
	}
	c.nodes.nodes["b"].Down = true
	a := &Images{LocalImages: mockUploads{c.aImages}, Nodes: c.nodes, Signer: c.signerA, HTTP: http.DefaultClient,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	if _, err := a.Finalise(context.Background(), upload, 2); draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Errorf("done while b is down = %v, want unavailable", err)
	}
}

// call sends a request to srv with token (none if empty) and extra headers.
func call(t *testing.T, srv *httptest.Server, method, path, token, body string, header http.Header) (int, string) {
	t.Helper()
	r, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set(wire.HeaderVersion, draupnir.Version)
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		r.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func instanceOf(t *testing.T, body string) *draupnir.Instance {
	t.Helper()
	var doc wire.Document[wire.InstanceResource]
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return doc.Data.Instance()
}

// TestForwarding: calls about an instance on another node reach it with
// the caller's own credentials, and answer what it answers.
func TestForwarding(t *testing.T) {
	c := newCluster(t)
	status, body := call(t, c.a, "GET", "/instances/1", "alice-token-0123456789", "", nil)
	if status != 200 || instanceOf(t, body).Password != "s3cret" {
		t.Fatalf("GET through a = %d %s", status, body)
	}
	if calls := c.bLocal.Principals(); len(calls) != 1 || calls[0].Name != "alice@example.com" {
		t.Errorf("b served %v, want alice once", calls)
	}
	// b's answer about bob's instance to alice is b's: not found.
	if status, body := call(t, c.a, "GET", "/instances/2", "alice-token-0123456789", "", nil); status != 404 {
		t.Errorf("alice's GET of bob's instance through a = %d %s", status, body)
	}
	if status, body := call(t, c.a, "DELETE", "/instances/1", "alice-token-0123456789", "", nil); status != 204 {
		t.Errorf("DELETE through a = %d %s", status, body)
	}
	if _, ok := c.bLocal.ByID[1]; ok {
		t.Error("b did not destroy the instance")
	}

	t.Run("create placed on the other node", func(t *testing.T) {
		status, body := call(t, c.a, "POST", "/instances", "alice-token-0123456789",
			`{"data":{"type":"instances","attributes":{"image_id":"1","ttl":"1h"}}}`, nil)
		if status != 201 {
			t.Fatalf("create through a = %d %s", status, body)
		}
		if c.bLocal.ImageID != 1 || c.bLocal.Options.TTL != time.Hour {
			t.Errorf("b created image %d with %+v", c.bLocal.ImageID, c.bLocal.Options)
		}
		if calls := c.aLocal.Calls(); strings.Contains(strings.Join(calls, " "), "Create") {
			t.Errorf("a created it too: %v", calls)
		}
	})
	t.Run("SSH door: no credentials to carry, the node's word", func(t *testing.T) {
		in, err := c.aFwd.Get(context.Background(), draupnir.Principal{Name: "bob@example.com"}, 2)
		if err != nil || in.Password != "other" {
			t.Fatalf("Get of bob's instance for bob = %+v, %v", in, err)
		}
	})
	t.Run("node down: read unavailable, changes refused", func(t *testing.T) {
		c.nodes.nodes["b"].Down = true
		defer func() { c.nodes.nodes["b"].Down = false }()
		p := draupnir.Principal{Name: "bob@example.com"}
		in, err := c.aFwd.Get(context.Background(), p, 2)
		if err != nil || in.State != draupnir.InstanceUnavailable {
			t.Errorf("Get while b is down = %+v, %v", in, err)
		}
		if err := c.aFwd.Destroy(context.Background(), p, 2); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("Destroy while b is down = %v", err)
		}
		if _, err := c.aFwd.Create(context.Background(), p, 1, draupnir.CreateOptions{}); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("Create with its only node down = %v", err)
		}
	})
	t.Run("node unreachable", func(t *testing.T) {
		old := c.nodes.nodes["b"].APIURL
		c.nodes.nodes["b"].APIURL = "http://127.0.0.1:1"
		defer func() { c.nodes.nodes["b"].APIURL = old }()
		p := draupnir.Principal{Name: "bob@example.com"}
		if in, err := c.aFwd.Get(context.Background(), p, 2); err != nil || in.State != draupnir.InstanceUnavailable {
			t.Errorf("Get while b does not answer = %+v, %v", in, err)
		}
		if _, err := c.aFwd.Create(context.Background(), p, 1, draupnir.CreateOptions{}); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("Create while b does not answer = %v", err)
		}
	})
}

// TestForgedForwards: nobody without the cluster's secret speaks as a node,
// and a node's forward can do no more than its caller's own token.
func TestForgedForwards(t *testing.T) {
	c := newCluster(t)
	create := `{"data":{"type":"instances","attributes":{"image_id":"1"}}}`
	forged := http.Header{
		HeaderForwardedBy:  {"a"},
		HeaderForwardedTo:  {"b"},
		HeaderForwardedFor: {draupnir.UploadPrincipal},
		HeaderForwardedAt:  {fmt.Sprint(time.Now().Unix())},
		HeaderNonce:        {strings.Repeat("0", 32)},
		HeaderSignature:    {strings.Repeat("ab", 32)},
	}
	tests := []struct {
		name, token string
		header      http.Header
	}{
		{"user token with forged headers", "alice-token-0123456789", forged},
		{"no token with forged headers", "", forged},
		{"upload token with forged headers", "upload-token-0123456789", forged},
		{"a lone forwarded-by header", "alice-token-0123456789", http.Header{HeaderForwardedBy: {"a"}}},
		{"a lone principal header", "", http.Header{HeaderForwardedFor: {draupnir.UploadPrincipal}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(c.bLocal.Calls())
			for _, r := range []struct{ method, path, body string }{
				{"GET", "/instances", ""}, {"GET", "/instances/2", ""}, {"POST", "/instances", create}, {"DELETE", "/instances/2", ""},
			} {
				if status, body := call(t, c.b, r.method, r.path, tt.token, r.body, tt.header); status != 403 {
					t.Errorf("%s %s = %d %s, want 403", r.method, r.path, status, body)
				}
			}
			if calls := c.bLocal.Calls(); len(calls) != before {
				t.Errorf("b served forged calls: %v", calls[before:])
			}
		})
	}
	t.Run("a user's token under a node's claim of upload", func(t *testing.T) {
		// A genuine signature cannot lift a user: b authenticates the
		// token it carries and it must be the principal claimed.
		r, _ := http.NewRequest("DELETE", c.b.URL+"/instances/2", nil)
		r.Header.Set(wire.HeaderVersion, draupnir.Version)
		r.Header.Set("Authorization", "Bearer alice-token-0123456789")
		c.signerA.Sign(r, nil, "b", draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true})
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("status %d, want 403", resp.StatusCode)
		}
		if _, ok := c.bLocal.ByID[2]; !ok {
			t.Error("bob's instance was destroyed")
		}
	})
	t.Run("a single node takes no forwards", func(t *testing.T) {
		single := httptest.NewServer(httpapi.New(httpapi.Options{Images: mock.NewImages(),
			Instances: mock.NewInstances(mock.NewImages()), Auth: tokens}))
		defer single.Close()
		r, _ := http.NewRequest("GET", single.URL+"/instances", nil)
		r.Header.Set(wire.HeaderVersion, draupnir.Version)
		c.signerA.Sign(r, nil, "b", draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true})
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("status %d, want 403", resp.StatusCode)
		}
	})
	t.Run("a forwarded call is never forwarded again", func(t *testing.T) {
		// a believes instance 1 is on b; b's local service says it is
		// on a: b must refuse, not send it back.
		c2 := newCluster(t)
		c2.bLocal.ByID[1].Owner = "alice@example.com"
		loop := homed{Instances: c2.bLocal, away: map[int64]string{1: "a"}}
		signerB := NewSigner("b", []byte(testSecret))
		bFwd := &Instances{Local: loop, Nodes: &fakeNodes{self: "b", nodes: c2.nodes.nodes}, Signer: signerB,
			HTTP: http.DefaultClient, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		c2.b.Config.Handler = httpapi.New(httpapi.Options{Images: mock.NewImages(), Instances: bFwd, Auth: tokens,
			Forwards: Trust{Signer: signerB}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		status, body := call(t, c2.a, "GET", "/instances/1", "alice-token-0123456789", "", nil)
		if status != 409 {
			t.Errorf("GET bounced between nodes = %d %s, want 409", status, body)
		}
		if n := strings.Count(strings.Join(c2.aLocal.Calls(), " "), "Get"); n != 1 {
			t.Errorf("a served Get %d times", n)
		}
	})
}
