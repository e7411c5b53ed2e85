package nodes

import (
	"context"

	"github.com/draupnir-db/draupnir"
)

// Service is the registry as the doors call it (draupnir.NodeService):
// membership is the upload principal's business.
type Service struct{ Registry *Registry }

func allowed(p draupnir.Principal) error {
	if !p.Upload {
		return draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may see or drain nodes")
	}
	return nil
}

// List returns every node, by name.
func (s Service) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Node, error) {
	if err := allowed(p); err != nil {
		return nil, err
	}
	return s.Registry.List(ctx)
}

// Drain stops new instances on node name.
func (s Service) Drain(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	if err := allowed(p); err != nil {
		return nil, err
	}
	return s.Registry.Drain(ctx, name)
}

// Undrain lets node name take new instances again.
func (s Service) Undrain(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	if err := allowed(p); err != nil {
		return nil, err
	}
	return s.Registry.Undrain(ctx, name)
}

// Single is the NodeService of a single node (no [node] name): it has no
// nodes to list or drain.
type Single struct{}

// List returns no nodes.
func (Single) List(_ context.Context, p draupnir.Principal) ([]*draupnir.Node, error) {
	if err := allowed(p); err != nil {
		return nil, err
	}
	return []*draupnir.Node{}, nil
}

// Drain fails: there is no node to drain.
func (Single) Drain(_ context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	return nil, singleErr(p, name)
}

// Undrain fails: there is no node to undrain.
func (Single) Undrain(_ context.Context, p draupnir.Principal, name string) (*draupnir.Node, error) {
	return nil, singleErr(p, name)
}

func singleErr(p draupnir.Principal, name string) error {
	if err := allowed(p); err != nil {
		return err
	}
	return draupnir.Errorf(draupnir.KindNotFound, "node %q does not exist: this server is a single node (no [node] name)", name)
}
