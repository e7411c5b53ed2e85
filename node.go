package draupnir

import (
	"context"
	"fmt"
	"time"
)

// Node is one `draupnir serve` of several sharing a state database, as the
// state database last heard of it. A single node (no [node] name) has no
// row and is never listed.
type Node struct {
	Name string
	// AdvertiseHost is what users connect to for instances on the node.
	AdvertiseHost string
	// APIURL and SSHAddress are how other nodes reach its API and SSH door.
	APIURL     string
	SSHAddress string
	// SSHPublicKey is the authorized_keys line of its SSH host key, the
	// key it signs in with at other nodes' SSH doors.
	SSHPublicKey string
	// CACertificate is the PEM certificate of the CA that signs the
	// server certificates of the node's instances.
	CACertificate string
	// Drained nodes take no new instances; theirs keep running.
	Drained bool
	// Down is computed when read: no heartbeat for three intervals.
	Down        bool
	StartedAt   time.Time
	HeartbeatAt time.Time
	NodeCapacity
}

// NodeCapacity is the room a node reported with its last heartbeat.
type NodeCapacity struct {
	FreeDiskBytes   int64 // beyond the data path's reserve
	FreeMemoryBytes int64
	Instances       int // instances placed on the node, warm ones included
	FreePorts       int
}

// NodeService is the cluster's membership as the doors call it: the upload
// principal sees the nodes and drains or undrains them; anyone else gets
// KindForbidden.
type NodeService interface {
	List(ctx context.Context, p Principal) ([]*Node, error)
	// Drain stops new instances on node name (theirs keep running);
	// Undrain reverses it. Both return the node as it is now.
	Drain(ctx context.Context, p Principal, name string) (*Node, error)
	Undrain(ctx context.Context, p Principal, name string) (*Node, error)
}

// ElsewhereError is the answer of a node's instance service about an
// instance that runs on another node: that node must be asked instead
// (the doors' forwarding does). Instance is what the state database says
// of it, for when that node cannot be reached.
type ElsewhereError struct {
	Node     string
	Instance *Instance
}

func (e *ElsewhereError) Error() string {
	return fmt.Sprintf("instance %d runs on node %s", e.Instance.ID, e.Node)
}
