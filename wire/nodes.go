package wire

import "github.com/draupnir-db/draupnir"

// NodeAttributes are the attributes of a node of a cluster.
type NodeAttributes struct {
	AdvertiseHost   string `json:"advertise_host"`
	APIURL          string `json:"api_url"`
	SSHAddress      string `json:"ssh_address"`
	Drained         bool   `json:"drained"`
	Down            bool   `json:"down"`
	StartedAt       Time   `json:"started_at"`
	HeartbeatAt     Time   `json:"heartbeat_at"`
	FreeDiskBytes   int64  `json:"free_disk_bytes"`
	FreeMemoryBytes int64  `json:"free_memory_bytes"`
	Instances       int    `json:"instances"`
	FreePorts       int    `json:"free_ports"`
}

// NodeResource is a node as the API renders it; its id is its name.
type NodeResource struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Attributes NodeAttributes `json:"attributes"`
}

// NewNodeResource renders n. Its keys stay out: the SSH host key and the
// instance CA are the nodes' business.
func NewNodeResource(n *draupnir.Node) NodeResource {
	return NodeResource{Type: TypeNodes, ID: n.Name, Attributes: NodeAttributes{
		AdvertiseHost:   n.AdvertiseHost,
		APIURL:          n.APIURL,
		SSHAddress:      n.SSHAddress,
		Drained:         n.Drained,
		Down:            n.Down,
		StartedAt:       NewTime(n.StartedAt),
		HeartbeatAt:     NewTime(n.HeartbeatAt),
		FreeDiskBytes:   n.FreeDiskBytes,
		FreeMemoryBytes: n.FreeMemoryBytes,
		Instances:       n.Instances,
		FreePorts:       n.FreePorts,
	}}
}

// Node converts the resource to the domain type.
func (r *NodeResource) Node() *draupnir.Node {
	a := &r.Attributes
	return &draupnir.Node{
		Name:          r.ID,
		AdvertiseHost: a.AdvertiseHost,
		APIURL:        a.APIURL,
		SSHAddress:    a.SSHAddress,
		Drained:       a.Drained,
		Down:          a.Down,
		StartedAt:     a.StartedAt.Time,
		HeartbeatAt:   a.HeartbeatAt.Time,
		NodeCapacity: draupnir.NodeCapacity{
			FreeDiskBytes: a.FreeDiskBytes, FreeMemoryBytes: a.FreeMemoryBytes,
			Instances: a.Instances, FreePorts: a.FreePorts,
		},
	}
}
