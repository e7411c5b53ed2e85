package wire

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// TestImageNodes: an image of a cluster says which nodes hold it ready and
// which are copying it; a single node's image has no nodes attribute.
func TestImageNodes(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	im := &draupnir.Image{ID: 7, State: draupnir.ImageReady, BackedUpAt: now, CreatedAt: now, UpdatedAt: now,
		Nodes: []draupnir.ImageCopy{{Node: "a", State: "ready"}, {Node: "b", State: "copying", Attempts: 2, Error: "cut"}}}
	b, err := Marshal(Document[ImageResource]{Data: NewImageResource(im)})
	if err != nil {
		t.Fatal(err)
	}
	want := `"nodes":[{"node":"a","state":"ready"},{"node":"b","state":"copying","attempts":2,"error":"cut"}]`
	if !strings.Contains(string(b), want) {
		t.Errorf("image JSON %s lacks %s", b, want)
	}
	var back Document[ImageResource]
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Data.Image(); !reflect.DeepEqual(got, im) {
		t.Errorf("round trip %+v, want %+v", got, im)
	}
	im.Nodes = nil
	if b, _ = Marshal(Document[ImageResource]{Data: NewImageResource(im)}); strings.Contains(string(b), "nodes") {
		t.Errorf("single node's image JSON %s has nodes", b)
	}
}

func TestRoundTrip(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	img := &draupnir.Image{ID: 4, State: draupnir.ImageFailed, BackedUpAt: now, Error: "boom", CreatedAt: now, UpdatedAt: now}
	b, err := Marshal(Document[ImageResource]{Data: NewImageResource(img)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"id":"4"`) || !strings.Contains(string(b), `"ready":false`) {
		t.Errorf("image JSON %s: want a string id and ready:false", b)
	}
	var back Document[ImageResource]
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Data.Image(); !reflect.DeepEqual(got, img) {
		t.Errorf("round trip %+v, want %+v", got, img)
	}

	// An image saved from an instance carries its owner and lineage;
	// one made from an upload leaves them out.
	for _, attr := range []string{"owner", "parent_image_id", "from_instance_id"} {
		if strings.Contains(string(b), attr) {
			t.Errorf("uploaded image JSON %s has %s", b, attr)
		}
	}
	saved := &draupnir.Image{ID: 5, State: draupnir.ImageReady, BackedUpAt: now, CreatedAt: now, UpdatedAt: now,
		Owner: "alice@example.com", ParentImageID: 4, FromInstanceID: 9}
	if b, err = Marshal(Document[ImageResource]{Data: NewImageResource(saved)}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"owner":"alice@example.com"`, `"parent_image_id":4`, `"from_instance_id":9`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("saved image JSON %s lacks %s", b, want)
		}
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Data.Image(); !reflect.DeepEqual(got, saved) {
		t.Errorf("round trip %+v, want %+v", got, saved)
	}

	inst := &draupnir.Instance{ID: 9, ImageID: 4, Port: 6001, State: draupnir.InstanceRunning, CreatedAt: now, UpdatedAt: now}
	b, err = Marshal(NewInstanceResource(inst))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"id":"9"`, `"port":6001`, `"image_id":4`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("instance JSON %s lacks %s", b, want)
		}
	}
	var ir InstanceResource
	if err := json.Unmarshal(b, &ir); err != nil {
		t.Fatal(err)
	}
	if got := ir.Instance(); *got != *inst {
		t.Errorf("round trip %+v, want %+v", got, inst)
	}
}

// TestTimes: whole seconds in UTC, and null (not year 1) for an unset time;
// the server and the CLI's --json used to disagree on the latter.
func TestTimes(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 987654321, time.FixedZone("CET", 3600))
	b, err := Marshal(NewImageResource(&draupnir.Image{ID: 1, State: draupnir.ImageCreated, BackedUpAt: at, CreatedAt: at}))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"backed_up_at":"2026-01-02T02:04:05Z"`, `"created_at":"2026-01-02T02:04:05Z"`,
		`"updated_at":null`, `"error":""`, `"postgres_version":""`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("image JSON %s lacks %s", b, want)
		}
	}
	var r ImageResource
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if !r.Attributes.UpdatedAt.IsZero() || !r.Attributes.CreatedAt.Equal(at.Truncate(time.Second)) {
		t.Errorf("times read back as %v, %v", r.Attributes.CreatedAt, r.Attributes.UpdatedAt)
	}
	if got := RequestTime(at); got != "2026-01-02T02:04:05.987654321Z" {
		t.Errorf("RequestTime = %q, want UTC with the fraction kept", got)
	}
}

func TestLenientIntegers(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{`7`, 7, false}, {`"7"`, 7, false}, {`""`, 0, false}, {`null`, 0, false},
		{`"x"`, 0, true}, {`1.5`, 0, true}, {`true`, 0, true}, {`"1e3"`, 0, true},
	}
	for _, tt := range tests {
		var id ID
		var n Int
		errID, errInt := json.Unmarshal([]byte(tt.in), &id), json.Unmarshal([]byte(tt.in), &n)
		if (errID != nil) != tt.wantErr || (errInt != nil) != tt.wantErr || int64(id) != tt.want || int64(n) != tt.want {
			t.Errorf("%s: ID %d (%v), Int %d (%v); want %d, error %v", tt.in, id, errID, n, errInt, tt.want, tt.wantErr)
		}
	}
}

func TestOriginalImageWithoutState(t *testing.T) {
	var r ImageResource
	if err := json.Unmarshal([]byte(`{"type":"images","id":"1","attributes":{"ready":true}}`), &r); err != nil {
		t.Fatal(err)
	}
	if !r.Image().Ready() {
		t.Error("ready:true without a state did not give a ready image")
	}
}

func TestRequests(t *testing.T) {
	script := "SELECT 1;"
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"create image", NewRequest(TypeImages, 0, ImageChange{AnonymisationScript: &script}),
			`{"data":{"type":"images","attributes":{"anonymisation_script":"SELECT 1;"}}}`},
		{"patch image", NewRequest(TypeImages, 3, ImageChange{}), `{"data":{"type":"images","id":"3","attributes":{}}}`},
		{"create instance", NewRequest(TypeInstances, 0, NewInstanceCreate(12, draupnir.CreateOptions{})),
			`{"data":{"type":"instances","attributes":{"image_id":12}}}`},
		{"reset instance", NewRequest(TypeInstances, 0, NewInstanceReset(0)),
			`{"data":{"type":"instances","attributes":{}}}`},
		{"reset instance to an image", NewRequest(TypeInstances, 0, NewInstanceReset(12)),
			`{"data":{"type":"instances","attributes":{"image_id":12}}}`},
	}
	for _, tt := range tests {
		b, err := Marshal(tt.v)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestParseError(t *testing.T) {
	tests := []struct {
		name, body string
		ok         bool
		want       ErrorObject
	}{
		{"ours", `{"errors":[{"status":"404","code":"not_found","title":"Not Found","detail":"image 7 does not exist"}]}`, true,
			ErrorObject{Status: "404", Code: "not_found", Title: "Not Found", Detail: "image 7 does not exist"}},
		{"original", `{"id":"unauthorized","status":"401","code":"unauthorized","title":"Unauthorized","detail":"d","source":{}}`, true,
			ErrorObject{Status: "401", Code: "unauthorized", Title: "Unauthorized", Detail: "d"}},
		{"original with a parameter", `{"id":"bad_request","status":"400","code":"bad_request","title":"Bad Request","detail":"d","source":{"parameter":"image_id"}}`, true,
			ErrorObject{Status: "400", Code: "bad_request", Title: "Bad Request", Detail: "d", Source: &ErrorSource{Parameter: "image_id"}}},
		{"empty errors", `{"errors":[]}`, false, ErrorObject{}},
		{"html", `<html>bad gateway</html>`, false, ErrorObject{}},
		{"other JSON", `{"message":"no"}`, false, ErrorObject{}},
	}
	for _, tt := range tests {
		got, ok := ParseError([]byte(tt.body))
		if ok != tt.ok || got.Status != tt.want.Status || got.Code != tt.want.Code || got.Detail != tt.want.Detail ||
			(got.Source == nil) != (tt.want.Source == nil) || (got.Source != nil && *got.Source != *tt.want.Source) {
			t.Errorf("%s: %+v, %v; want %+v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want Version
		ok   bool
	}{
		{"2.1.0", Version{2, 1, 0}, true}, {"1.0.0-rc1", Version{1, 0, 0}, true}, {"5.3.6+abc", Version{5, 3, 6}, true},
		{"1.0", Version{}, false}, {"1.0.0.0", Version{}, false}, {"v1.0.0", Version{}, false}, {"1.-1.0", Version{}, false},
		{"1.+1.0", Version{}, false}, {"", Version{}, false}, {"1..0", Version{}, false}, {"99999999999999999999.0.0", Version{}, false},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestNodeRoundTrip: a node and an instance's node survive the wire; a
// node's keys never go out.
func TestNodeRoundTrip(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := &draupnir.Node{Name: "n1", AdvertiseHost: "n1.example.com", APIURL: "http://n1:8080", SSHAddress: "n1:2222",
		Drained: true, Down: true, StartedAt: now, HeartbeatAt: now,
		NodeCapacity: draupnir.NodeCapacity{FreeDiskBytes: 1 << 40, FreeMemoryBytes: 1 << 33, Instances: 3, FreePorts: 997}}
	withKeys := *n
	withKeys.SSHPublicKey, withKeys.CACertificate = "ssh-ed25519 AAAAsecretish", "-----BEGIN CERTIFICATE-----"
	b, err := Marshal(Document[NodeResource]{Data: NewNodeResource(&withKeys)})
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{"ssh-ed25519", "CERTIFICATE"} {
		if strings.Contains(string(b), leak) {
			t.Errorf("node JSON %s shows %s", b, leak)
		}
	}
	var back Document[NodeResource]
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Data.Node(); *got != *n {
		t.Errorf("round trip %+v, want %+v", got, n)
	}
	inst := &draupnir.Instance{ID: 9, ImageID: 4, Node: "n1", State: draupnir.InstanceUnavailable, CreatedAt: now, UpdatedAt: now}
	if b, err = Marshal(NewInstanceResource(inst)); err != nil {
		t.Fatal(err)
	}
	var ir InstanceResource
	if err := json.Unmarshal(b, &ir); err != nil {
		t.Fatal(err)
	}
	if got := ir.Instance(); *got != *inst || !strings.Contains(string(b), `"node":"n1"`) {
		t.Errorf("round trip %+v (%s), want %+v", got, b, inst)
	}
}
