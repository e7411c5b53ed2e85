package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// fakeNodes is a cluster of two nodes; only the upload principal may see
// them, as the real service rules.
type fakeNodes struct {
	nodes map[string]*draupnir.Node
	calls []string
}

func (f *fakeNodes) List(_ context.Context, p draupnir.Principal) ([]*draupnir.Node, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may see or drain nodes")
	}
	return []*draupnir.Node{f.nodes["n1"], f.nodes["n2"]}, nil
}

func (f *fakeNodes) set(p draupnir.Principal, name string, drained bool) (*draupnir.Node, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may see or drain nodes")
	}
	n := f.nodes[name]
	if n == nil {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "node %q does not exist", name)
	}
	f.calls = append(f.calls, name)
	n.Drained = drained
	return n, nil
}

func (f *fakeNodes) Drain(_ context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	return f.set(p, name, true)
}

func (f *fakeNodes) Undrain(_ context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	return f.set(p, name, false)
}

// TestInstanceShowsItsNode: on a cluster an instance says which node runs
// it (and reads unavailable while that node is down); on a single node
// nothing changes.
func TestInstanceShowsItsNode(t *testing.T) {
	f := newFakeBackend()
	res := run(t, f.backend(), Env{SSH: true, Name: "draupnir"}, "", "instances", "show", "4")
	if res.code != 0 || strings.Contains(res.stdout, "Node:") {
		t.Errorf("single node's instance: exit %d\n%s", res.code, res.stdout)
	}
	f.instances[0].Node, f.instances[0].State = "n2", draupnir.InstanceUnavailable
	res = run(t, f.backend(), Env{SSH: true, Name: "draupnir"}, "", "instances", "show", "4")
	if res.code != 0 || !strings.Contains(res.stdout, "State:            unavailable") || !strings.Contains(res.stdout, "Node:             n2") {
		t.Errorf("an instance on a down node: exit %d\n%s", res.code, res.stdout)
	}
}

func TestNodesCommands(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	tests := []struct {
		name   string
		p      draupnir.Principal
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"list", upload, []string{"nodes", "list"}, 0,
			[]string{"NAME", "STATE", "n1", "up", "n1.example.com", "3", "97", "1.0 GiB", "2026-11-30T12:00:00Z", "n2", "down, drained"}, ""},
		{"list as json", upload, []string{"nodes", "ls", "--json"}, 0, []string{`"type": "nodes"`, `"id": "n1"`, `"down": true`}, ""},
		{"drain", upload, []string{"nodes", "drain", "n1"}, 0, []string{"n1", "drained"}, ""},
		{"undrain", upload, []string{"nodes", "undrain", "n2"}, 0, []string{"n2", "down"}, ""},
		{"drain unknown", upload, []string{"nodes", "drain", "n9"}, 1, nil, `node "n9" does not exist`},
		{"drain without a name", upload, []string{"nodes", "drain"}, 2, nil, "NAME"},
		{"a user may not", draupnir.Principal{Name: "alice@example.com"}, []string{"nodes", "list"}, 1, nil, "only the upload principal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := &fakeNodes{nodes: map[string]*draupnir.Node{
				"n1": {Name: "n1", AdvertiseHost: "n1.example.com", HeartbeatAt: at,
					NodeCapacity: draupnir.NodeCapacity{Instances: 3, FreePorts: 97, FreeDiskBytes: 1 << 30, FreeMemoryBytes: 2 << 30}},
				"n2": {Name: "n2", AdvertiseHost: "n2.example.com", HeartbeatAt: at, Down: true, Drained: true},
			}}
			b := newFakeBackend().backend()
			b.Principal, b.Nodes = tt.p, nodes
			res := run(t, b, Env{SSH: true, Name: "draupnir"}, "", tt.args...)
			if res.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", res.code, tt.code, res.stdout, res.stderr)
			}
			res.stdoutHas(t, tt.stdout)
			if !strings.Contains(res.stderr, tt.stderr) || (tt.stderr == "" && res.stderr != "") {
				t.Errorf("stderr %q, want %q", res.stderr, tt.stderr)
			}
			if strings.Count(res.stderr, "\n") > 1 && tt.code == 1 {
				t.Errorf("error is not one line: %q", res.stderr)
			}
		})
	}
}
