package httpapi

import (
	"bytes"
	"context"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// Forwards is the trust between the nodes of a cluster as the door needs
// it (*nodes.Door): the requests one node forwards to another carry the
// caller's own credentials and a signature only a node can make.
type Forwards interface {
	// Verify checks the signature of r, with its body, and returns the
	// principal it acts for and the context to serve it in (where it is
	// never forwarded again).
	Verify(r *http.Request, body []byte) (context.Context, draupnir.Principal, error)
	// Origin returns the context to serve a request of the node's own
	// callers in: it keeps their Authorization header, to send along if
	// the call must be forwarded.
	Origin(ctx context.Context, authorization string) context.Context
}

// authenticateForward authenticates a request that claims to come from
// another node. Without a valid signature it is refused whatever token it
// carries: a user cannot speak as a node. With one, the caller's own token,
// if sent along, is authenticated here and must be the principal the node
// says it acts for, so a forward can never do more than its caller could.
func (a *api) authenticateForward(c echo.Context) (draupnir.Principal, error) {
	r := c.Request()
	refused := func(cause error) error {
		return &apiError{Status: http.StatusForbidden, Code: codeForbidden, cause: cause,
			Detail: "forwarded requests are taken only from the nodes of this cluster"}
	}
	if a.forwards == nil {
		return draupnir.Principal{}, refused(nil)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, a.maxBody+1))
	if err != nil {
		return draupnir.Principal{}, err
	}
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	ctx, p, err := a.forwards.Verify(r, body)
	if err != nil {
		a.log.Warn("refused a forwarded request", "err", err, "remote", r.RemoteAddr)
		return draupnir.Principal{}, refused(err)
	}
	if token, ok := bearerToken(r.Header.Get("Authorization")); ok {
		own, err := a.auth.AuthenticateToken(ctx, token)
		if err != nil {
			return draupnir.Principal{}, err
		}
		if own != p {
			return draupnir.Principal{}, refused(nil)
		}
	}
	c.SetRequest(r.WithContext(ctx))
	return p, nil
}

func (a *api) listNodes(c echo.Context) error {
	list, err := a.nodes.List(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	data := make([]wire.NodeResource, 0, len(list))
	for _, n := range list {
		data = append(data, wire.NewNodeResource(n))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.NodeResource]{Data: data})
}

func (a *api) drainNode(c echo.Context) error {
	return a.setDrained(c, a.nodes.Drain)
}

func (a *api) undrainNode(c echo.Context) error {
	return a.setDrained(c, a.nodes.Undrain)
}

func (a *api) setDrained(c echo.Context, set func(context.Context, draupnir.Principal, string) (*draupnir.Node, error)) error {
	n, err := set(c.Request().Context(), principal(c), c.Param("name"))
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, wire.Document[wire.NodeResource]{Data: wire.NewNodeResource(n)})
}
