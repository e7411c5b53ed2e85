// Package nodes makes several `draupnir serve` nodes sharing one state
// database one service. Membership: each node registers its row in the
// nodes table (addresses, SSH host key, instance CA), beats every
// heartbeat_interval with its capacity, and is down when its heartbeat is
// older than three intervals, judged by the state database's clock so that
// the nodes' clocks need not agree; drained nodes take no new instances.
// Placement: a create goes to the node that holds the image ready with the
// fewest instances (Rank). Forwarding: Instances, the instance service both
// doors call, sends a create placed elsewhere, and any call about another
// node's instance, to that node's API, signed with the cluster's secret
// (Signer) and carrying the caller's own credentials; Trust checks such
// calls where they land. A single node (no [node] name) uses none of it.
package nodes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// MissedBeats is how many heartbeat intervals a node may stay silent before
// it is down.
const MissedBeats = 3

// Options configures a Registry.
type Options struct {
	Pool *pgxpool.Pool
	// Self is this node's row: Name, AdvertiseHost, APIURL, SSHAddress,
	// SSHPublicKey and CACertificate are written by Register; the rest is
	// ignored.
	Self draupnir.Node
	// Keys, if set, tells Register the node's SSH public key and instance
	// CA certificate instead of Self: they may exist only once the doors
	// and services are up.
	Keys func() (sshPublicKey, caCertificate string, err error)
	// Interval is node.heartbeat_interval.
	Interval time.Duration
	// Capacity measures this node's room for each heartbeat.
	Capacity func(context.Context) (draupnir.NodeCapacity, error)
	Log      *slog.Logger
}

// Registry is this node's view of the cluster's membership.
type Registry struct {
	opts Options
	stop context.CancelFunc
	done chan struct{}
	once sync.Once
}

// New returns the registry of node opts.Self.Name; call Register, then
// Start.
func New(opts Options) *Registry {
	return &Registry{opts: opts}
}

// Self is this node's name.
func (r *Registry) Self() string { return r.opts.Self.Name }

// Interval is the heartbeat interval.
func (r *Registry) Interval() time.Duration { return r.opts.Interval }

// Register upserts this node's row with its addresses, its host key and a
// fresh heartbeat, keeping whether it is drained. It refuses to take over
// the name of a live node with another host key: two servers under one name
// would each think the other's instances their own.
func (r *Registry) Register(ctx context.Context) error {
	s := r.opts.Self
	if r.opts.Keys != nil {
		var err error
		if s.SSHPublicKey, s.CACertificate, err = r.opts.Keys(); err != nil {
			return fmt.Errorf("registering node %s: %w", s.Name, err)
		}
	}
	tag, err := r.opts.Pool.Exec(ctx, `
		INSERT INTO nodes (name, advertise_host, api_url, ssh_address, ssh_public_key, ca_certificate)
		VALUES ($1, $2, $3, $4, $5, $7)
		ON CONFLICT (name) DO UPDATE SET
			advertise_host = excluded.advertise_host, api_url = excluded.api_url,
			ssh_address = excluded.ssh_address, ssh_public_key = excluded.ssh_public_key,
			ca_certificate = excluded.ca_certificate, started_at = now(), heartbeat_at = now()
		WHERE nodes.ssh_public_key = excluded.ssh_public_key
		   OR nodes.heartbeat_at < now() - $6::interval`,
		s.Name, s.AdvertiseHost, s.APIURL, s.SSHAddress, s.SSHPublicKey, r.downAfter(), s.CACertificate)
	if err != nil {
		return unavailable(fmt.Errorf("registering node %s: %w", s.Name, err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("node.name %q is taken by a live node with another SSH host key: give this node its own name", s.Name)
	}
	if err := r.beat(ctx); err != nil {
		r.opts.Log.Warn("first heartbeat failed", "err", err)
	}
	r.opts.Log.Info("node registered", "node", s.Name, "api_url", s.APIURL, "ssh_address", s.SSHAddress)
	return nil
}

// downAfter is how long a silent node stays up, as a PostgreSQL interval.
func (r *Registry) downAfter() string {
	return fmt.Sprintf("%d microseconds", (MissedBeats * r.opts.Interval).Microseconds())
}

// Start beats every interval until Close; a failed beat (state database
// unreachable) is logged and the next one tried on time.
func (r *Registry) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		t := time.NewTicker(r.opts.Interval)
		defer t.Stop()
		failing := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			bctx, bcancel := context.WithTimeout(ctx, r.opts.Interval)
			err := r.beat(bctx)
			bcancel()
			switch {
			case err != nil && !failing && ctx.Err() == nil:
				r.opts.Log.Error("heartbeat failed; other nodes will see this node down until it works again", "err", err)
				failing = true
			case err == nil && failing:
				r.opts.Log.Info("heartbeat works again")
				failing = false
			}
		}
	}()
}

// Close stops the heartbeat. The row stays: the node is down until it
// starts again.
func (r *Registry) Close() {
	r.once.Do(func() {
		if r.stop != nil {
			r.stop()
			<-r.done
		}
	})
}

// Beat records one heartbeat now, with the capacity measured now.
func (r *Registry) Beat(ctx context.Context) error { return r.beat(ctx) }

func (r *Registry) beat(ctx context.Context) error {
	c, err := r.opts.Capacity(ctx)
	if err != nil {
		// Still beat: a node that cannot measure itself is alive.
		r.opts.Log.Warn("could not measure capacity", "err", err)
	}
	tag, err := r.opts.Pool.Exec(ctx, `
		UPDATE nodes SET heartbeat_at = now(), free_disk_bytes = $2, free_memory_bytes = $3,
			instances = $4, free_ports = $5
		WHERE name = $1`,
		r.opts.Self.Name, c.FreeDiskBytes, c.FreeMemoryBytes, c.Instances, c.FreePorts)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if tag.RowsAffected() == 0 {
		// Someone removed the row (docs/operations.md: removing a node)
		// while this node ran: it comes back.
		return r.Register(ctx)
	}
	return nil
}

const selectNodes = `
	SELECT name, advertise_host, api_url, ssh_address, ssh_public_key, ca_certificate, drained,
		heartbeat_at < now() - $1::interval, started_at, heartbeat_at,
		free_disk_bytes, free_memory_bytes, instances, free_ports
	FROM nodes`

func scanNode(row pgx.Row) (*draupnir.Node, error) {
	var n draupnir.Node
	err := row.Scan(&n.Name, &n.AdvertiseHost, &n.APIURL, &n.SSHAddress, &n.SSHPublicKey, &n.CACertificate, &n.Drained,
		&n.Down, &n.StartedAt, &n.HeartbeatAt,
		&n.FreeDiskBytes, &n.FreeMemoryBytes, &n.Instances, &n.FreePorts)
	return &n, err
}

// List returns every node, by name.
func (r *Registry) List(ctx context.Context) ([]*draupnir.Node, error) {
	rows, err := r.opts.Pool.Query(ctx, selectNodes+` ORDER BY name`, r.downAfter())
	if err != nil {
		return nil, unavailable(fmt.Errorf("listing nodes: %w", err))
	}
	defer rows.Close()
	var list []*draupnir.Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, unavailable(fmt.Errorf("listing nodes: %w", err))
		}
		list = append(list, n)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable(fmt.Errorf("listing nodes: %w", err))
	}
	return list, nil
}

// Get returns node name, or an error of kind KindNotFound.
func (r *Registry) Get(ctx context.Context, name string) (*draupnir.Node, error) {
	n, err := scanNode(r.opts.Pool.QueryRow(ctx, selectNodes+` WHERE name = $2`, r.downAfter(), name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "node %q does not exist", name)
	}
	if err != nil {
		return nil, unavailable(fmt.Errorf("reading node %s: %w", name, err))
	}
	return n, nil
}

// Drain stops new instances on node name; its instances keep running.
func (r *Registry) Drain(ctx context.Context, name string) (*draupnir.Node, error) {
	return r.setDrained(ctx, name, true)
}

// Undrain lets node name take new instances again.
func (r *Registry) Undrain(ctx context.Context, name string) (*draupnir.Node, error) {
	return r.setDrained(ctx, name, false)
}

func (r *Registry) setDrained(ctx context.Context, name string, drained bool) (*draupnir.Node, error) {
	tag, err := r.opts.Pool.Exec(ctx, `UPDATE nodes SET drained = $2 WHERE name = $1`, name, drained)
	if err != nil {
		return nil, unavailable(fmt.Errorf("draining node %s: %w", name, err))
	}
	if tag.RowsAffected() == 0 {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "node %q does not exist", name)
	}
	verb := "undrained"
	if drained {
		verb = "drained"
	}
	r.opts.Log.Info("node "+verb, "node", name)
	return r.Get(ctx, name)
}

// unavailable marks a state database failure as KindUnavailable (503: try
// again), keeping the cause for the logs.
func unavailable(err error) error {
	return &draupnir.Error{Kind: draupnir.KindUnavailable, Msg: "the state database does not answer; try again", Err: err}
}
