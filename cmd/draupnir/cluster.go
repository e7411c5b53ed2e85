package main

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/httpapi"
	"github.com/draupnir-db/draupnir/instances"
	"github.com/draupnir-db/draupnir/nodes"
)

// placed is the instance service as both doors call it: on a node of a
// cluster, creates are placed and calls about another node's instances
// are forwarded there.
func (c *core) placed() draupnir.InstanceService {
	if c.registry == nil {
		return c.instances
	}
	return &nodes.Instances{
		Local:  c.instances,
		Nodes:  c.registry,
		Signer: c.signer,
		// Forwarded creates wait for the other node's postgres to start.
		HTTP: &http.Client{Timeout: c.cfg.Instances.StartTimeout.Duration + time.Minute},
		Log:  c.log.With("component", "nodes"),
	}
}

// placedImages is the image service as both doors call it: on a node of a
// cluster, an image is finalised on the node that took its upload.
func (c *core) placedImages() imageService {
	local := cascadingImages{c.images, c.instances}
	if c.registry == nil {
		return local
	}
	return &nodes.Images{
		LocalImages: local,
		Nodes:       c.registry,
		Signer:      c.signer,
		// Finalising a large image takes as long as it takes.
		HTTP: &http.Client{},
		Log:  c.log.With("component", "nodes"),
	}
}

// doorNodes is the cluster's membership as the doors see it.
func (c *core) doorNodes() draupnir.NodeService {
	if c.registry == nil {
		return nodes.Single{}
	}
	return nodes.Service{Registry: c.registry}
}

// forwards is the trust between nodes as the HTTP door needs it; nil on
// a single node, which takes no forwarded requests.
func (c *core) forwards() httpapi.Forwards {
	if c.registry == nil {
		return nil
	}
	return nodes.Trust{Signer: c.signer}
}

// newRegistry returns this node's membership of its cluster; it beats with
// the capacity of the data path, the machine and the instance service.
func (c *core) newRegistry(advertiseHost string) *nodes.Registry {
	cfg := c.cfg
	return nodes.New(nodes.Options{
		Pool: c.db.Pool(),
		Self: draupnir.Node{Name: cfg.Node.Name, AdvertiseHost: advertiseHost, APIURL: cfg.Node.APIURL,
			SSHAddress: cfg.Node.SSHAddress},
		Keys: func() (string, string, error) {
			pub, err := nodes.HostPublicKey(c.hostKeyPath())
			return pub, c.instances.CACertificate(), err
		},
		Interval: cfg.Node.HeartbeatInterval.Duration,
		Capacity: func(ctx context.Context) (draupnir.NodeCapacity, error) {
			var cp draupnir.NodeCapacity
			var errs []error
			var err error
			if cp.FreeDiskBytes, err = nodes.FreeDisk(c.paths.Data); err != nil {
				errs = append(errs, err)
			}
			if cp.FreeMemoryBytes, err = nodes.FreeMemory(); err != nil {
				errs = append(errs, err)
			}
			if cp.Instances, cp.FreePorts, err = c.instances.Usage(ctx); err != nil {
				errs = append(errs, err)
			}
			return cp, errors.Join(errs...)
		},
		Log: c.log.With("component", "nodes"),
	})
}

// hostKeyPath is the SSH door's host key: ssh.host_key, or its default in
// the data path.
func (c *core) hostKeyPath() string {
	if c.cfg.SSH.HostKey != "" {
		return c.cfg.SSH.HostKey
	}
	return filepath.Join(c.paths.Keys(), "ssh_host_ed25519_key")
}

// ownInstances is the instance service as this node's metrics see it: its
// own instances only, since each node reports its own (List answers for
// the whole cluster).
type ownInstances struct {
	*instances.Service
	node string
}

func (o ownInstances) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error) {
	list, err := o.Service.List(ctx, p)
	return slices.DeleteFunc(list, func(in *draupnir.Instance) bool { return in.Node != o.node }), err
}
