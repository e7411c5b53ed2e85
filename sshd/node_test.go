package sshd

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// fakeNodes knows node keys by their authorized_keys form.
type fakeNodes map[string]string // marshalled key → node name

func (f fakeNodes) NodeForKey(_ context.Context, key gossh.PublicKey) (string, error) {
	if n, ok := f[string(key.Marshal())]; ok {
		return n, nil
	}
	return "", draupnir.Errorf(draupnir.KindUnauthorized, "not a node's key")
}

// nodeLog records node protocol calls and answers them with "sent <args>".
type nodeLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *nodeLog) run(_ context.Context, node string, args []string, stdout, _ io.Writer) int {
	l.mu.Lock()
	l.calls = append(l.calls, node+": "+strings.Join(args, " "))
	l.mu.Unlock()
	fmt.Fprintf(stdout, "sent %s", strings.Join(args, " "))
	return 0
}

func (l *nodeLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

func publicKeyOf(t *testing.T, privPath string) gossh.PublicKey {
	t.Helper()
	data, err := os.ReadFile(privPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return s.PublicKey()
}

// newNodeEnv is a server whose "node" identity is node n1's registered key,
// and where alice's key is also registered as node "twofaced".
func newNodeEnv(t *testing.T) (*env, *nodeLog) {
	t.Helper()
	log := &nodeLog{}
	var e *env
	nodes := fakeNodes{}
	e = newEnv(t, func(o *Options) {
		o.Keys = WithNodes(o.Keys, nodes)
		o.Node = log.run
	})
	priv, _ := writeClientKey(t, filepath.Join(e.dir, "node"))
	e.keys["node"] = priv
	nodes[string(publicKeyOf(t, priv).Marshal())] = "n1"
	nodes[string(publicKeyOf(t, e.keys["bob"]).Marshal())] = "twofaced"
	return e, log
}

func TestNodeProtocol(t *testing.T) {
	e, log := newNodeEnv(t)
	r := e.ssh("node", nil, nil, NodeCommand, "send", "7", "3")
	if r.code != 0 || r.stdout != "sent send 7 3" {
		t.Fatalf("node's node command: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if log.calls[0] != "n1: send 7 3" {
		t.Errorf("node runner got %q", log.calls[0])
	}
	// The login name is not what makes a node: the key is.
	if r := e.ssh("node", nil, []string{"-l", "upload"}, NodeCommand, "send", "7"); r.code != 0 {
		t.Errorf("node key under another login name: code %d, %s", r.code, r.stderr)
	}
}

func TestNodeCannotRunUserCommands(t *testing.T) {
	e, log := newNodeEnv(t)
	before := log.count()
	for _, args := range [][]string{
		{"images", "list"}, {"instances", "create", "1"}, {"scp", "-t", "/draupnir/image_uploads/1/"},
		{}, {"nodes", "list"}, {"draupnir-nodes", "send", "1"},
	} {
		r := e.ssh("node", nil, nil, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("node running %q: code %d, stderr %q; want permission denied", args, r.code, r.stderr)
		}
	}
	if r := e.sftp("node", "ls /draupnir/image_uploads\n"); r.code == 0 {
		t.Errorf("node's sftp session succeeded: %s", r.stdout)
	}
	if n := len(e.commands.calls); n != 0 {
		t.Errorf("the command tree ran %d times for a node", n)
	}
	if log.count() != before {
		t.Errorf("the node runner ran for a command outside the node protocol")
	}
}

func TestUserCannotSpeakNodeProtocol(t *testing.T) {
	e, log := newNodeEnv(t)
	cases := []struct {
		who  string
		args []string
	}{
		{"upload", []string{NodeCommand, "send", "1"}},
		{"alice", []string{NodeCommand, "send", "1"}},
		{"alice", []string{NodeCommand}},
		{"upload", []string{"'" + NodeCommand + "'", "send", "1"}}, // quoted: the same word once split
	}
	for _, c := range cases {
		r := e.ssh(c.who, nil, nil, c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("%s running %q: code %d, stderr %q; want permission denied", c.who, c.args, r.code, r.stderr)
		}
	}
	// A key registered for a node and for a user is neither.
	if r := e.ssh("bob", nil, nil, NodeCommand, "send", "1"); r.code == 0 {
		t.Errorf("a key that is both bob's and a node's ran the node protocol")
	}
	if r := e.ssh("bob", nil, nil, "images", "list"); r.code == 0 {
		t.Errorf("a key that is both bob's and a node's ran a user command")
	}
	if log.count() != 0 {
		t.Errorf("the node runner ran %d times for non-nodes", log.count())
	}
	// The Go client, too: the user's key, whatever the user name says.
	signer, err := gossh.ParsePrivateKey(mustRead(t, e.keys["alice"]))
	if err != nil {
		t.Fatal(err)
	}
	c, err := gossh.Dial("tcp", fmt.Sprintf("%s:%d", e.host, e.port), &gossh.ClientConfig{
		User: "n1", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(e.srv.PublicKey()),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.CombinedOutput(NodeCommand + " send 1")
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("Go client with alice's key: %v, %q; want permission denied", err, out)
	}
	if log.count() != 0 {
		t.Errorf("the node runner ran for alice")
	}
}

func TestServerWithoutNodeRunnerRefusesNodes(t *testing.T) {
	nodes := fakeNodes{}
	e := newEnv(t, func(o *Options) { o.Keys = WithNodes(o.Keys, nodes) })
	priv, _ := writeClientKey(t, filepath.Join(e.dir, "node"))
	e.keys["node"] = priv
	nodes[string(publicKeyOf(t, priv).Marshal())] = "n1"
	if r := e.ssh("node", nil, nil, NodeCommand, "send", "1"); r.code == 0 || !strings.Contains(r.stderr, "not part of a cluster") {
		t.Errorf("node protocol without a runner: code %d, %q", r.code, r.stderr)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type brokenNodes struct{}

func (brokenNodes) NodeForKey(context.Context, gossh.PublicKey) (string, error) {
	return "", fmt.Errorf("the state database does not answer")
}

type oneKey struct {
	key gossh.PublicKey
	p   draupnir.Principal
}

func (k oneKey) PrincipalForKey(_ context.Context, key gossh.PublicKey) (draupnir.Principal, error) {
	if string(key.Marshal()) == string(k.key.Marshal()) {
		return k.p, nil
	}
	return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown key")
}

// TestWithNodesTable: who a key is, with the nodes readable or not.
func TestWithNodesTable(t *testing.T) {
	dir := t.TempDir()
	keyOf := func(name string) gossh.PublicKey {
		priv, _ := writeClientKey(t, filepath.Join(dir, name))
		return publicKeyOf(t, priv)
	}
	alice, node, both := keyOf("alice"), keyOf("node"), keyOf("both")
	nodes := fakeNodes{string(node.Marshal()): "n1", string(both.Marshal()): "n2"}
	users := func(k gossh.PublicKey) Keys { return oneKey{k, draupnir.Principal{Name: "alice@example.com"}} }
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		keys  Keys
		key   gossh.PublicKey
		want  draupnir.Principal
		wantE bool
	}{
		{"a user", WithNodes(users(alice), nodes), alice, draupnir.Principal{Name: "alice@example.com"}, false},
		{"a node", WithNodes(users(alice), nodes), node, draupnir.Principal{Name: "n1", Node: true}, false},
		{"a key both a user's and a node's", WithNodes(users(both), nodes), both, draupnir.Principal{}, true},
		{"nodes unreadable: a user still", WithNodes(users(alice), brokenNodes{}), alice, draupnir.Principal{Name: "alice@example.com"}, false},
		{"nodes unreadable: no node", WithNodes(users(alice), brokenNodes{}), node, draupnir.Principal{}, true},
		{"other keys cannot make a node", WithNodes(oneKey{alice, draupnir.Principal{Name: "n1", Node: true}}, nodes), alice, draupnir.Principal{}, true},
	} {
		got, err := tt.keys.PrincipalForKey(ctx, tt.key)
		if (err != nil) != tt.wantE || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v (error %v)", tt.name, got, err, tt.want, tt.wantE)
		}
	}
}
