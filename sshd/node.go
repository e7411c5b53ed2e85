package sshd

import (
	"context"
	"io"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// NodeCommand is the first word of every command line of the node
// protocol, which nodes of a cluster speak to each other's doors (to ship
// images). Only a node principal may run it, and a node principal may run
// nothing else.
const NodeCommand = "draupnir-node"

// NodeRunner runs a node protocol command line (args follow NodeCommand)
// for the node named node, and returns its exit status.
type NodeRunner func(ctx context.Context, node string, args []string, stdout, stderr io.Writer) int

// NodeKeys maps the keys of a cluster's nodes to their names.
type NodeKeys interface {
	// NodeForKey returns the name of the node whose registered key is
	// key, or a KindUnauthorized error.
	NodeForKey(ctx context.Context, key gossh.PublicKey) (string, error)
}

// WithNodes returns keys that also know the cluster's nodes: a node's key
// authenticates that node (a Principal with Node set), and every other key
// what keys says. A key registered both for a node and for a user or the
// upload principal is refused, whichever it was meant for: one key must not
// be two principals.
func WithNodes(keys Keys, nodes NodeKeys) Keys { return nodeKeys{keys, nodes} }

type nodeKeys struct {
	keys  Keys
	nodes NodeKeys
}

func (k nodeKeys) PrincipalForKey(ctx context.Context, key gossh.PublicKey) (draupnir.Principal, error) {
	name, err := k.nodes.NodeForKey(ctx, key)
	p, perr := k.keys.PrincipalForKey(ctx, key)
	if err != nil {
		// Not a node's key, or the nodes cannot be read (the state
		// database is down): then no key is a node's, and users and the
		// upload principal still get what their keys give them.
		if perr == nil && p.Node {
			return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "key %s: only the nodes' registered keys authenticate nodes", gossh.FingerprintSHA256(key))
		}
		return p, perr
	}
	if perr == nil || draupnir.KindOf(perr) != draupnir.KindUnauthorized {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "key %s is registered for node %q and for %q as well; refusing it", gossh.FingerprintSHA256(key), name, p.Name)
	}
	return draupnir.Principal{Name: name, Node: true}, nil
}

// LoadHostKey returns the host key at path, creating it as New does: a node
// signs in to the other nodes' doors with its own host key.
func LoadHostKey(path string) (gossh.Signer, error) { return loadOrCreateHostKey(path) }

// limiterName is what the connection limits count p's connections by: a
// node cannot share a count with a user of the same name.
func limiterName(p draupnir.Principal) string {
	if p.Node {
		return "node " + p.Name
	}
	return p.Name
}

// runNode serves a node principal's session: the node protocol and
// nothing else.
func (s *Server) runNode(sess ssh.Session, p draupnir.Principal, args []string) int {
	if len(args) == 0 || args[0] != NodeCommand {
		return s.fail(sess, p, draupnir.Errorf(draupnir.KindForbidden, "permission denied: a node may only speak the node protocol (%s …)", NodeCommand))
	}
	if s.opts.Node == nil {
		return s.fail(sess, p, draupnir.Errorf(draupnir.KindForbidden, "permission denied: this server is not part of a cluster"))
	}
	return s.opts.Node(sess.Context(), p.Name, args[1:], sess, sess.Stderr())
}

// refuseNodeProtocol keeps everyone but nodes away from the node protocol,
// whatever a command tree would do with it.
func (s *Server) refuseNodeProtocol(sess ssh.Session, p draupnir.Principal, args []string) (int, bool) {
	if len(args) == 0 || args[0] != NodeCommand {
		return 0, false
	}
	s.log.Warn("ssh node protocol refused to a non-node", "principal", p.Name, "remote", sess.RemoteAddr().String())
	return s.fail(sess, p, draupnir.Errorf(draupnir.KindForbidden, "permission denied: %s is for the cluster's nodes only", NodeCommand)), true
}
