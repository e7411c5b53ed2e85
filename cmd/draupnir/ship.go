package main

import (
	"context"
	"sync"

	"github.com/draupnir-db/draupnir/replicate"
	"github.com/draupnir-db/draupnir/sshd"
)

// newReplicator returns the shipping of images to this node of a cluster,
// reconciled; nil on a single node, where nothing of it runs.
func (c *core) newReplicator(ctx context.Context) (*replicate.Replicator, error) {
	if c.registry == nil {
		return nil, nil
	}
	signer, err := sshd.LoadHostKey(c.hostKeyPath())
	if err != nil {
		return nil, err
	}
	r, err := replicate.New(replicate.Options{
		Pool:         c.db.Pool(),
		Node:         c.cfg.Node.Name,
		Copies:       c.cfg.Cluster.Copies,
		Peers:        replicate.RegistryPeers{Nodes: c.registry},
		Signer:       signer,
		SnapshotsDir: c.paths.Snapshots(),
		ReceiveDir:   c.paths.Receive(),
		Instances:    c.instances,
		Interval:     c.registry.Interval(),
		Log:          c.log,
	})
	if err != nil {
		return nil, err
	}
	return r, r.Reconcile(ctx)
}

// sshNodes is keys, plus the other nodes' registered keys on a node of a
// cluster, and the node protocol those may speak (nil on a single node).
func (c *core) sshNodes(keys sshd.Keys) (sshd.Keys, sshd.NodeRunner) {
	if c.replicator == nil {
		return keys, nil
	}
	return sshd.WithNodes(keys, replicate.RegistryPeers{Nodes: c.registry}), c.replicator.Serve
}

// startShipping pulls images to this node until ctx ends or the returned
// func is called, which waits for the pass in progress.
func (c *core) startShipping(ctx context.Context) func() {
	if c.replicator == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.replicator.Run(ctx) })
	return func() {
		cancel()
		wg.Wait()
	}
}
