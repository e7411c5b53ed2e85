// Package client is a Go client for Draupnir's HTTP JSON API (docs/api.md):
// its Images and Instances implement the service contracts of package
// draupnir over HTTP, as the principal the client's token names. It sends
// the version and bearer token the server expects, writes and reads the
// documents of package wire, and turns the server's error bodies (of either
// shape) into *draupnir.Error values with the matching Kind, so that callers
// (the CLI, the benchmarks, the end-to-end tests) handle errors without
// looking at HTTP status codes.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// maxResponseBytes bounds how much of a response body is read, so that a
// misbehaving server or proxy cannot make the client buffer without limit.
const maxResponseBytes = 64 << 20

// Client talks to one Draupnir server. It is safe for concurrent use.
type Client struct {
	base    string // without a trailing slash
	auth    string // "Bearer <token>", or "" for none
	http    *http.Client
	version string
	prepare func(req *http.Request, body []byte)
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests through hc (for TLS
// settings, timeouts or a test transport). The default is a client without
// a global timeout, since finalising an image can take minutes; use the
// context to bound a call.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithVersion makes the client announce version instead of draupnir.Version
// in the Draupnir-Version header (for compatibility tests).
func WithVersion(version string) Option { return func(c *Client) { c.version = version } }

// WithPrepare makes the client call prepare on every request, with its
// body, just before sending it: a node forwarding a request signs it there.
func WithPrepare(prepare func(req *http.Request, body []byte)) Option {
	return func(c *Client) { c.prepare = prepare }
}

// New returns a client for the server at baseURL (e.g.
// "https://draupnir.example.com") that authenticates with token.
func New(baseURL, token string, opts ...Option) *Client {
	c := &Client{
		base:    strings.TrimRight(baseURL, "/"),
		http:    &http.Client{},
		version: draupnir.Version,
	}
	if token != "" {
		c.auth = "Bearer " + token
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// URL returns the server's base URL.
func (c *Client) URL() string { return c.base }

// Images returns the image service of the server, over HTTP.
func (c *Client) Images() Images { return Images{c} }

// Instances returns the instance service of the server, over HTTP.
func (c *Client) Instances() Instances { return Instances{c} }

// Sources returns the server's source service.
func (c *Client) Sources() Sources { return Sources{c} }

var (
	_ draupnir.ImageService    = Images{}
	_ draupnir.InstanceService = Instances{}
)

// Images is draupnir.ImageService over the HTTP API. The server acts as the
// principal its client's token names: the principal argument of every
// method is not sent, and is ignored.
type Images struct{ c *Client }

// List returns every image.
func (s Images) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Image, error) {
	var doc wire.Document[[]wire.ImageResource]
	if err := s.c.do(ctx, http.MethodGet, "/images", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]*draupnir.Image, len(doc.Data))
	for i := range doc.Data {
		out[i] = doc.Data[i].Image()
	}
	return out, nil
}

// Get returns image id.
func (s Images) Get(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	return s.c.image(ctx, http.MethodGet, imagePath(id, ""), nil, http.StatusOK)
}

// Create registers a new image of a backup taken at backedUpAt, to be
// anonymised with script when it is finalised.
func (s Images) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return s.CreateInSeries(ctx, p, "", backedUpAt, script)
}

// CreateInSeries is Create for an image of source's series ("" for none).
func (s Images) CreateInSeries(ctx context.Context, _ draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	at := wire.RequestTime(backedUpAt)
	attrs := wire.ImageChange{BackedUpAt: &at, AnonymisationScript: &script}
	if source != "" {
		attrs.Source = &source
	}
	body := wire.NewRequest(wire.TypeImages, 0, attrs)
	return s.c.image(ctx, http.MethodPost, "/images", body, http.StatusCreated)
}

// Update changes the attributes of an image that is not ready yet.
func (s Images) Update(ctx context.Context, _ draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	attrs := wire.ImageChange{AnonymisationScript: patch.AnonymisationScript}
	if patch.BackedUpAt != nil {
		at := wire.RequestTime(*patch.BackedUpAt)
		attrs.BackedUpAt = &at
	}
	return s.c.image(ctx, http.MethodPatch, imagePath(id, ""), wire.NewRequest(wire.TypeImages, id, attrs), http.StatusOK)
}

// Finalise finalises image id and returns it once it is ready. It blocks
// for as long as finalising takes; cancelling ctx stops waiting but not
// the server's job.
func (s Images) Finalise(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	return s.c.image(ctx, http.MethodPost, imagePath(id, "/done"), nil, http.StatusOK)
}

// Destroy destroys image id and all its instances.
func (s Images) Destroy(ctx context.Context, _ draupnir.Principal, id int64) error {
	return s.c.do(ctx, http.MethodDelete, imagePath(id, ""), nil, http.StatusNoContent, nil)
}

// Instances is draupnir.InstanceService over the HTTP API. As with Images,
// the server acts as the token's principal and the principal argument of
// every method is ignored.
type Instances struct{ c *Client }

// List returns the token principal's instances (every instance for the
// upload principal).
func (s Instances) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Instance, error) {
	var doc wire.Document[[]wire.InstanceResource]
	if err := s.c.do(ctx, http.MethodGet, "/instances", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]*draupnir.Instance, len(doc.Data))
	for i := range doc.Data {
		out[i] = doc.Data[i].Instance()
	}
	return out, nil
}

// Get returns instance id.
func (s Instances) Get(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Instance, error) {
	return s.c.instance(ctx, http.MethodGet, instancePath(id), nil, http.StatusOK)
}

// Create starts an instance of image imageID; it returns once Postgres
// accepts connections.
func (s Instances) Create(ctx context.Context, _ draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	body := wire.NewRequest(wire.TypeInstances, 0, wire.NewInstanceCreate(imageID, opts))
	return s.c.instance(ctx, http.MethodPost, "/instances", body, http.StatusCreated)
}

// Update extends or protects instance id.
func (s Instances) Update(ctx context.Context, _ draupnir.Principal, id int64, patch draupnir.InstancePatch) (*draupnir.Instance, error) {
	body := wire.NewRequest(wire.TypeInstances, id, wire.NewInstanceChange(patch))
	return s.c.instance(ctx, http.MethodPatch, instancePath(id), body, http.StatusOK)
}

// Tombstones returns what remains of the token principal's instances that
// rules destroyed.
func (s Instances) Tombstones(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Tombstone, error) {
	var doc wire.Document[[]wire.TombstoneResource]
	if err := s.c.do(ctx, http.MethodGet, "/tombstones", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]*draupnir.Tombstone, len(doc.Data))
	for i := range doc.Data {
		out[i] = doc.Data[i].Tombstone()
	}
	return out, nil
}

// Reset puts instance id back to the data of image imageID (0: its own);
// it returns once Postgres accepts connections again.
func (s Instances) Reset(ctx context.Context, _ draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	body := wire.NewRequest(wire.TypeInstances, 0, wire.NewInstanceReset(imageID))
	return s.c.instance(ctx, http.MethodPost, instancePath(id)+"/reset", body, http.StatusOK)
}

// Save makes a new ready image of instance id's current data; it returns
// once the image is ready.
func (s Instances) Save(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	return s.c.image(ctx, http.MethodPost, instancePath(id)+"/save", nil, http.StatusCreated)
}

// Destroy stops instance id and deletes its data.
func (s Instances) Destroy(ctx context.Context, _ draupnir.Principal, id int64) error {
	return s.c.do(ctx, http.MethodDelete, instancePath(id), nil, http.StatusNoContent, nil)
}

// ServerVersion asks the server for its version (the Draupnir-Version header
// of /health_check, which needs no token).
func (c *Client) ServerVersion(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health_check", nil)
	if err != nil {
		return "", fmt.Errorf("bad server URL %q: %w", c.base, err)
	}
	req.Header.Set(wire.HeaderVersion, c.version)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", c.unreachable(req, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	v := resp.Header.Get(wire.HeaderVersion)
	if v == "" {
		return "", fmt.Errorf("%s answered %s without a Draupnir-Version header; is it a Draupnir server?", req.URL, resp.Status)
	}
	return v, nil
}

func imagePath(id int64, suffix string) string {
	return "/images/" + strconv.FormatInt(id, 10) + suffix
}

func instancePath(id int64) string { return "/instances/" + strconv.FormatInt(id, 10) }

func (c *Client) image(ctx context.Context, method, path string, body any, want int) (*draupnir.Image, error) {
	var doc wire.Document[wire.ImageResource]
	if err := c.do(ctx, method, path, body, want, &doc); err != nil {
		return nil, err
	}
	return doc.Data.Image(), nil
}

func (c *Client) instance(ctx context.Context, method, path string, body any, want int) (*draupnir.Instance, error) {
	var doc wire.Document[wire.InstanceResource]
	if err := c.do(ctx, method, path, body, want, &doc); err != nil {
		return nil, err
	}
	in := doc.Data.Instance()
	if doc.Meta != nil {
		in.Notice = strings.Join(doc.Meta.Notices, "; ")
	}
	return in, nil
}

// do sends one request and decodes a successful response into out (unless
// out is nil). Any status other than want is turned into an error.
func (c *Client) do(ctx context.Context, method, path string, body any, want int, out any) error {
	var rd io.Reader
	var raw []byte
	if body != nil {
		b, err := wire.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		rd, raw = bytes.NewReader(b), b
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("bad server URL %q: %w", c.base, err)
	}
	h := req.Header
	h.Set(wire.HeaderVersion, c.version)
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	if c.auth != "" {
		h.Set("Authorization", c.auth)
	}
	if c.prepare != nil {
		c.prepare(req, raw)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(req, err)
	}
	defer resp.Body.Close()
	r := io.LimitReader(resp.Body, maxResponseBytes)
	if resp.StatusCode != want {
		return c.responseError(req, resp, r)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, r)
		return nil
	}
	if err := json.NewDecoder(r).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer to %s %s: %w", method, req.URL, err)
	}
	return nil
}

// unreachable explains a transport error, keeping a context error
// recognisable with errors.Is.
func (c *Client) unreachable(req *http.Request, err error) error {
	if ctxErr := req.Context().Err(); ctxErr != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL, ctxErr)
	}
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && ue.Unwrap() != nil {
		err = ue.Unwrap() // drop url.Error's repetition of method and URL
	}
	return &draupnir.Error{
		Kind: draupnir.KindUnavailable,
		Msg:  fmt.Sprintf("cannot reach the Draupnir server at %s: %v", c.base, err),
		Err:  err,
	}
}

// kindOf maps an HTTP status to an error kind.
func kindOf(status int) draupnir.Kind {
	switch status {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType, http.StatusRequestEntityTooLarge:
		return draupnir.KindInvalid
	case http.StatusUnauthorized:
		return draupnir.KindUnauthorized
	case http.StatusForbidden:
		return draupnir.KindForbidden
	case http.StatusNotFound:
		return draupnir.KindNotFound
	case http.StatusConflict:
		return draupnir.KindConflict
	case http.StatusUnprocessableEntity:
		return draupnir.KindUnprocessable
	case http.StatusServiceUnavailable:
		return draupnir.KindUnavailable
	case http.StatusInsufficientStorage:
		return draupnir.KindInsufficientStorage
	case http.StatusGone:
		return draupnir.KindGone
	}
	return draupnir.KindInternal
}

// responseError turns an error response into a *draupnir.Error whose message
// is the server's detail. It reads both shapes of error body, so that it
// explains an original Draupnir server's refusals too.
func (c *Client) responseError(req *http.Request, resp *http.Response, body io.Reader) error {
	kind := kindOf(resp.StatusCode)
	raw, readErr := io.ReadAll(io.LimitReader(body, 1<<20))
	e, ok := wire.ParseError(raw)
	if readErr != nil || !ok {
		// Not one of ours: a proxy, a load balancer, or the wrong URL.
		return &draupnir.Error{
			Kind: kind,
			Msg:  fmt.Sprintf("%s %s: unexpected answer %s", req.Method, req.URL, resp.Status),
		}
	}
	msg := e.Detail
	if msg == "" {
		msg = e.Title
	}
	if msg == "" {
		msg = resp.Status
	}
	if e.Code == "incompatible_version" || e.Code == "invalid_api_version" {
		msg = incompatibleVersion(c.version, resp.Header.Get(wire.HeaderVersion), msg)
	}
	if e.Code == "quota_exceeded" {
		kind = draupnir.KindQuotaExceeded
	}
	field := ""
	if e.Source != nil {
		field = strings.TrimPrefix(e.Source.Pointer, "/data/attributes/")
	}
	return &draupnir.Error{Kind: kind, Msg: msg, Field: field}
}

// incompatibleVersion says which side to upgrade.
func incompatibleVersion(client, server, detail string) string {
	if server == "" {
		return fmt.Sprintf("the server refused draupnir-client %s (%s); upgrade draupnir-client to the server's version", client, detail)
	}
	if compareVersions(client, server) < 0 {
		return fmt.Sprintf("draupnir-client %s is too old for server %s; upgrade draupnir-client to %s (server said: %s)", client, server, server, detail)
	}
	return fmt.Sprintf("draupnir-client %s is newer than server %s; upgrade the server, or use draupnir-client %s (server said: %s)", client, server, server, detail)
}

// compareVersions compares two versions; one that does not parse counts
// as older.
func compareVersions(a, b string) int {
	va, errA := wire.ParseVersion(strings.TrimPrefix(a, "v"))
	vb, errB := wire.ParseVersion(strings.TrimPrefix(b, "v"))
	switch {
	case errA != nil && errB != nil:
		return 0
	case errA != nil:
		return -1
	case errB != nil:
		return 1
	}
	return va.Compare(vb)
}

// Nodes returns the cluster's membership as the server sees it, over HTTP.
func (c *Client) Nodes() Nodes { return Nodes{c} }

var _ draupnir.NodeService = Nodes{}

// Nodes is draupnir.NodeService over the HTTP API (the upload principal's).
type Nodes struct{ c *Client }

// List returns every node of the server's cluster.
func (s Nodes) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Node, error) {
	var doc wire.Document[[]wire.NodeResource]
	if err := s.c.do(ctx, http.MethodGet, "/nodes", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]*draupnir.Node, len(doc.Data))
	for i := range doc.Data {
		out[i] = doc.Data[i].Node()
	}
	return out, nil
}

// Drain stops new instances on node name.
func (s Nodes) Drain(ctx context.Context, _ draupnir.Principal, name string) (*draupnir.Node, error) {
	return s.c.node(ctx, name, "drain")
}

// Undrain lets node name take new instances again.
func (s Nodes) Undrain(ctx context.Context, _ draupnir.Principal, name string) (*draupnir.Node, error) {
	return s.c.node(ctx, name, "undrain")
}

func (c *Client) node(ctx context.Context, name, action string) (*draupnir.Node, error) {
	var doc wire.Document[wire.NodeResource]
	if err := c.do(ctx, http.MethodPost, "/nodes/"+url.PathEscape(name)+"/"+action, nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	return doc.Data.Node(), nil
}
