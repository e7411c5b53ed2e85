package nodes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// forwardedKey marks a context as serving a request another node forwarded
// here; credentialsKey carries the caller's own Authorization header.
type (
	forwardedKey   struct{}
	credentialsKey struct{}
)

// WithForwarded marks ctx as serving a request another node forwarded: it
// is served here, never forwarded again.
func WithForwarded(ctx context.Context) context.Context {
	return context.WithValue(ctx, forwardedKey{}, true)
}

// Forwarded reports whether ctx serves a request another node forwarded.
func Forwarded(ctx context.Context) bool { b, _ := ctx.Value(forwardedKey{}).(bool); return b }

// WithCredentials records the caller's own Authorization header in ctx, to
// send along with a forwarded request: the node it reaches authenticates the
// caller itself.
func WithCredentials(ctx context.Context, authorization string) context.Context {
	if authorization == "" {
		return ctx
	}
	return context.WithValue(ctx, credentialsKey{}, authorization)
}

// Membership is what forwarding needs of the registry (*Registry).
type Membership interface {
	Self() string
	Get(ctx context.Context, name string) (*draupnir.Node, error)
	Candidates(ctx context.Context, imageID int64) ([]Candidate, error)
	ImageReady(ctx context.Context, imageID int64) (bool, error)
	// ImageNode is the node that makes image id ("" for none or no
	// such image).
	ImageNode(ctx context.Context, id int64) (string, error)
}

// Instances is the instance service of a node of a cluster as both doors
// call it: a create is placed on the node with the most room (Rank), and a
// call about an instance reaches the node that runs it; either may mean
// forwarding the call to that node's API, signed, with the caller's own
// credentials. A call forwarded here is always served here.
type Instances struct {
	// Local is this node's service.
	Local  draupnir.InstanceService
	Nodes  Membership
	Signer *Signer
	// HTTP sends forwarded calls.
	HTTP *http.Client
	Log  *slog.Logger
}

var _ draupnir.InstanceService = (*Instances)(nil)

// List returns p's instances on every node (from the state database).
func (f *Instances) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error) {
	return f.Local.List(ctx, p)
}

// Tombstones returns p's tombstones (from the state database).
func (f *Instances) Tombstones(ctx context.Context, p draupnir.Principal) ([]*draupnir.Tombstone, error) {
	return f.Local.Tombstones(ctx, p)
}

// remote is node's API, called as p with the credentials ctx carries.
func (f *Instances) remote(ctx context.Context, node *draupnir.Node, p draupnir.Principal) client.Instances {
	return signedClient(ctx, f.Signer, f.HTTP, node, p).Instances()
}

// signedClient is node's API through hc, called as p with the credentials
// ctx carries, every request signed by s.
func signedClient(ctx context.Context, s *Signer, hc *http.Client, node *draupnir.Node, p draupnir.Principal) *client.Client {
	auth, _ := ctx.Value(credentialsKey{}).(string)
	return client.New(node.APIURL, "", client.WithHTTPClient(hc), client.WithPrepare(func(r *http.Request, body []byte) {
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		s.Sign(r, body, node.Name, p)
	}))
}

// elsewhere runs call on the node of the instance that err, the local
// service's answer, says is elsewhere; any other answer is returned as it
// is. Unreachable tells what the caller gets when that node is down or
// does not answer.
func elsewhere[T any](ctx context.Context, f *Instances, p draupnir.Principal, res T, err error,
	call func(client.Instances) (T, error), unreachable func(*draupnir.ElsewhereError, error) (T, error)) (T, error) {
	var ee *draupnir.ElsewhereError
	if !errors.As(err, &ee) {
		return res, err
	}
	var zero T
	if Forwarded(ctx) {
		// The sender's view is stale (or it lies): never forward twice.
		return zero, draupnir.Errorf(draupnir.KindConflict, "instance %d runs on node %s, not on this one", ee.Instance.ID, ee.Node)
	}
	node, err := f.Nodes.Get(ctx, ee.Node)
	if err != nil && draupnir.KindOf(err) != draupnir.KindNotFound {
		return zero, err
	}
	if err != nil || node.Down {
		return unreachable(ee, nil)
	}
	res, err = call(f.remote(ctx, node, p))
	if err != nil && isUnreachable(err) {
		f.Log.Warn("node does not answer a forwarded call", "node", ee.Node, "err", err)
		return unreachable(ee, err)
	}
	return res, err
}

// isUnreachable reports whether err says the other node could not be
// reached at all (rather than answered with an error).
func isUnreachable(err error) bool {
	var ne net.Error
	var de *draupnir.Error
	return errors.As(err, &ne) || (errors.As(err, &de) && de.Kind == draupnir.KindUnavailable && de.Err != nil)
}

// downError is the error of a change to an instance whose node is down.
func downError(ee *draupnir.ElsewhereError, cause error) error {
	return &draupnir.Error{Kind: draupnir.KindUnavailable, Err: cause,
		Msg: fmt.Sprintf("instance %d runs on node %s, which does not answer; try again when it is back", ee.Instance.ID, ee.Node)}
}

// Get returns instance id from the node that runs it; while that node is
// down, from the state database, with state unavailable.
func (f *Instances) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error) {
	in, err := f.Local.Get(ctx, p, id)
	return elsewhere(ctx, f, p, in, err,
		func(c client.Instances) (*draupnir.Instance, error) { return c.Get(ctx, p, id) },
		func(ee *draupnir.ElsewhereError, cause error) (*draupnir.Instance, error) {
			in := ee.Instance
			in.State = draupnir.InstanceUnavailable
			if in.Error == "" {
				in.Error = fmt.Sprintf("its node %s does not answer; it answers again when the node is back", ee.Node)
			}
			return in, nil
		})
}

// Update extends or protects instance id, on the node that runs it.
func (f *Instances) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.InstancePatch) (*draupnir.Instance, error) {
	in, err := f.Local.Update(ctx, p, id, patch)
	return elsewhere(ctx, f, p, in, err,
		func(c client.Instances) (*draupnir.Instance, error) { return c.Update(ctx, p, id, patch) },
		func(ee *draupnir.ElsewhereError, cause error) (*draupnir.Instance, error) {
			return nil, downError(ee, cause)
		})
}

// Reset resets instance id, on the node that runs it.
func (f *Instances) Reset(ctx context.Context, p draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	in, err := f.Local.Reset(ctx, p, id, imageID)
	return elsewhere(ctx, f, p, in, err,
		func(c client.Instances) (*draupnir.Instance, error) { return c.Reset(ctx, p, id, imageID) },
		func(ee *draupnir.ElsewhereError, cause error) (*draupnir.Instance, error) {
			return nil, downError(ee, cause)
		})
}

// Save saves instance id as an image, on the node that runs it.
func (f *Instances) Save(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	im, err := f.Local.Save(ctx, p, id)
	return elsewhere(ctx, f, p, im, err,
		func(c client.Instances) (*draupnir.Image, error) { return c.Save(ctx, p, id) },
		func(ee *draupnir.ElsewhereError, cause error) (*draupnir.Image, error) {
			return nil, downError(ee, cause)
		})
}

// Destroy destroys instance id, on the node that runs it.
func (f *Instances) Destroy(ctx context.Context, p draupnir.Principal, id int64) error {
	err := f.Local.Destroy(ctx, p, id)
	_, err = elsewhere(ctx, f, p, struct{}{}, err,
		func(c client.Instances) (struct{}, error) { return struct{}{}, c.Destroy(ctx, p, id) },
		func(ee *draupnir.ElsewhereError, cause error) (struct{}, error) {
			return struct{}{}, downError(ee, cause)
		})
	return err
}

// Create places an instance of image imageID for p on the node with the
// most room that holds the image ready (see Rank), here or forwarded
// there. A node that cannot be reached at all is passed over for the
// next; one that answers, even with an error, has the last word.
func (f *Instances) Create(ctx context.Context, p draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	if Forwarded(ctx) {
		return f.Local.Create(ctx, p, imageID, opts)
	}
	cands, err := f.Nodes.Candidates(ctx, imageID)
	if err != nil {
		return nil, err
	}
	ranked := Rank(cands)
	if len(ranked) == 0 {
		if len(cands) > 0 {
			return nil, draupnir.Errorf(draupnir.KindUnavailable, "every node that holds image %d is out of ports or disk; destroy instances, or add a node", imageID)
		}
		// Nowhere ready and up: unless the image is ready but every node
		// holding it is drained or down, the local service says why (no
		// such image, not ready) in its usual words.
		ready, err := f.Nodes.ImageReady(ctx, imageID)
		if err != nil {
			return nil, err
		}
		if ready {
			return nil, draupnir.Errorf(draupnir.KindUnavailable, "no node that holds image %d can take instances now: they are drained or down", imageID)
		}
		return f.Local.Create(ctx, p, imageID, opts)
	}
	var lastErr error
	for _, c := range ranked {
		if c.Name == f.Nodes.Self() {
			return f.Local.Create(ctx, p, imageID, opts)
		}
		node, err := f.Nodes.Get(ctx, c.Name)
		if err != nil {
			lastErr = err
			continue
		}
		in, err := f.remote(ctx, node, p).Create(ctx, p, imageID, opts)
		var oe *net.OpError
		if err == nil || !errors.As(err, &oe) || oe.Op != "dial" {
			// Only a create that never reached the node may go
			// elsewhere: one that did may have made the instance.
			return in, err
		}
		f.Log.Warn("node does not answer a forwarded create; trying the next", "node", c.Name, "err", err)
		lastErr = err
	}
	return nil, &draupnir.Error{Kind: draupnir.KindUnavailable, Err: lastErr,
		Msg: fmt.Sprintf("no node holding image %d answers; try again", imageID)}
}

// Trust is the trust between nodes as the HTTP door needs it
// (httpapi.Forwards).
type Trust struct{ Signer *Signer }

// Verify checks a request forwarded to this node and returns the principal
// it acts for, and its context marked forwarded.
func (t Trust) Verify(r *http.Request, body []byte) (context.Context, draupnir.Principal, error) {
	f, err := t.Signer.Verify(r, body)
	if err != nil {
		return nil, draupnir.Principal{}, err
	}
	return WithForwarded(r.Context()), f.Principal, nil
}

// Origin keeps the caller's Authorization header in ctx for forwarding.
func (t Trust) Origin(ctx context.Context, authorization string) context.Context {
	return WithCredentials(ctx, authorization)
}

// LocalImages is a node's own image service as the doors call it.
type LocalImages interface {
	draupnir.ImageService
	draupnir.Uploads
}

// Images is the image service of a node of a cluster as both doors call
// it: an image is finalised on the node that took its upload (its row's
// node), forwarded there when the call comes elsewhere. The rest is the
// local service's.
type Images struct {
	LocalImages
	Nodes  Membership
	Signer *Signer
	HTTP   *http.Client
	Log    *slog.Logger
}

// Finalise finalises image id on the node that holds its upload.
func (f *Images) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	node, err := f.Nodes.ImageNode(ctx, id)
	if err != nil || node == "" || node == f.Nodes.Self() || Forwarded(ctx) {
		// Unknown images and those of no node get the local answer.
		return f.LocalImages.Finalise(ctx, p, id)
	}
	n, err := f.Nodes.Get(ctx, node)
	if err != nil && draupnir.KindOf(err) != draupnir.KindNotFound {
		return nil, err
	}
	unreachable := func(cause error) error {
		return &draupnir.Error{Kind: draupnir.KindUnavailable, Err: cause,
			Msg: fmt.Sprintf("image %d was uploaded to node %s, which does not answer; try again when it is back", id, node)}
	}
	if err != nil || n.Down {
		return nil, unreachable(nil)
	}
	im, err := signedClient(ctx, f.Signer, f.HTTP, n, p).Images().Finalise(ctx, p, id)
	if err != nil && isUnreachable(err) {
		f.Log.Warn("node does not answer a forwarded finalise", "node", node, "err", err)
		return nil, unreachable(err)
	}
	return im, err
}
