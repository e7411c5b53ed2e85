package replicate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// TablePeers reads the cluster's nodes from the nodes table: their SSH
// doors and keys, and whether they are down (no heartbeat for DownAfter).
// It also tells the SSH door which keys are nodes' (sshd.NodeKeys).
type TablePeers struct {
	Pool      *pgxpool.Pool
	DownAfter time.Duration
}

// Peers lists every registered node. A node whose key does not parse is
// listed without one (nobody can sign in as it or be reached as it).
func (t TablePeers) Peers(ctx context.Context) ([]Peer, error) {
	rows, err := t.Pool.Query(ctx, `SELECT name, ssh_address, ssh_public_key,
		heartbeat_at < now() - make_interval(secs => $1) FROM nodes ORDER BY name`, t.DownAfter.Seconds())
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	defer rows.Close()
	var out []Peer
	for rows.Next() {
		var p Peer
		var key string
		if err := rows.Scan(&p.Name, &p.SSHAddress, &key, &p.Down); err != nil {
			return nil, fmt.Errorf("listing nodes: %w", err)
		}
		if k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(key)); err == nil {
			p.SSHKey = k
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// NodeForKey returns the name of the node whose registered key is key.
func (t TablePeers) NodeForKey(ctx context.Context, key gossh.PublicKey) (string, error) {
	peers, err := t.Peers(ctx)
	if err != nil {
		return "", err
	}
	want := string(key.Marshal())
	for _, p := range peers {
		if p.SSHKey != nil && string(p.SSHKey.Marshal()) == want {
			return p.Name, nil
		}
	}
	return "", draupnir.Errorf(draupnir.KindUnauthorized, "not a node's key")
}
