package cli

import (
	"context"
	"errors"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// Backend is what the commands act on: the service contracts of package
// draupnir, whoever implements them, and who the calls act as. SSH sessions
// give the core services themselves and the verified key's principal; the
// local client gives the HTTP client's services (HTTPBackend), whose server
// acts as the token's principal.
type Backend struct {
	Images    draupnir.ImageService
	Instances draupnir.InstanceService
	// Sources serves `sources …`; nil says the server has none.
	Sources draupnir.SourceService
	// Principal is who every call acts as. It must name someone, except in
	// an HTTPBackend: Run refuses to act as nobody.
	Principal draupnir.Principal
	// byToken says that the services decide the principal themselves (over
	// HTTP, the token's), so that Principal is not used. Only HTTPBackend
	// sets it, so that no other wiring can skip the check.
	byToken bool

	// The rest is optional.

	// ServerVersion tells the server's version (`version`).
	ServerVersion func(ctx context.Context) (string, error)
	// Uploads serves `images upload N` in SSH sessions: with no name the
	// stream is a tar of the whole backup, extracted in place of the
	// upload; with a name it is stored as that archive, beside the upload's
	// other files unless replace is set.
	Uploads draupnir.Uploads
	// People manages the caller's access tokens and SSH keys.
	People People
	// Nodes lists, drains and undrains the nodes of a cluster.
	Nodes draupnir.NodeService
}

// HTTPBackend is the backend of the local client: the services of the
// server c talks to, acting as c's token's principal.
func HTTPBackend(c *client.Client) Backend {
	return Backend{Images: c.Images(), Instances: c.Instances(), Sources: c.Sources(), byToken: true,
		ServerVersion: c.ServerVersion, People: c, Nodes: c.Nodes()}
}

// check refuses a backend that would call the services as the zero
// principal: a wiring mistake, which must fail closed rather than act as
// nobody in particular.
func (b *Backend) check() error {
	if !b.byToken && b.Principal.Name == "" {
		return &draupnir.Error{Kind: draupnir.KindInternal,
			Err: errors.New("the command tree was given no principal to act as")}
	}
	return nil
}
