package replicate

import (
	"context"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// NodeLister lists the cluster's nodes (nodes.Registry).
type NodeLister interface {
	List(ctx context.Context) ([]*draupnir.Node, error)
}

// RegistryPeers are the cluster's nodes as shipping needs them, read from
// the membership registry. They also tell the SSH door which keys are
// nodes' (sshd.NodeKeys).
type RegistryPeers struct{ Nodes NodeLister }

// Peers lists every registered node. A node whose key does not parse is
// listed without one: nobody can sign in as it, and it is not trusted as a
// source.
func (p RegistryPeers) Peers(ctx context.Context) ([]Peer, error) {
	nodes, err := p.Nodes.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Peer, 0, len(nodes))
	for _, n := range nodes {
		peer := Peer{Name: n.Name, SSHAddress: n.SSHAddress, Down: n.Down}
		if k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(n.SSHPublicKey)); err == nil {
			peer.SSHKey = k
		}
		out = append(out, peer)
	}
	return out, nil
}

// NodeForKey returns the name of the node whose registered key is key.
func (p RegistryPeers) NodeForKey(ctx context.Context, key gossh.PublicKey) (string, error) {
	peers, err := p.Peers(ctx)
	if err != nil {
		return "", err
	}
	want := string(key.Marshal())
	for _, peer := range peers {
		if peer.SSHKey != nil && string(peer.SSHKey.Marshal()) == want {
			return peer.Name, nil
		}
	}
	return "", draupnir.Errorf(draupnir.KindUnauthorized, "not a node's key")
}
