// Package httpapi is Draupnir's HTTP JSON API door: it turns JSON:API-style
// requests into calls on the image and instance services and renders their
// results and typed errors, enforcing the protocol rules (Draupnir-Version
// negotiation, bearer authentication, content types, body limits) on the way.
// The version pins behaviour: the original Draupnir's clients (1.x, 2.0.x)
// are answered as that server answered them, our own line with JSON:API
// errors. The documents themselves are package wire's, shared with the
// client.
// A request another node of a cluster forwarded is authenticated by its
// signature (Forwards) and the caller's own token it carries.
// It holds no business logic, and it is the only package that knows about
// Echo, so that a move to another router touches nothing else.
package httpapi

import (
	"context"
	"io"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// Authenticator maps a bearer token to a principal. It returns an error of
// kind draupnir.KindUnauthorized for unknown tokens.
type Authenticator interface {
	AuthenticateToken(ctx context.Context, token string) (draupnir.Principal, error)
}

// Health reports whether the service can do its work (state database and
// data path usable).
type Health interface {
	Check(ctx context.Context) error
}

// DefaultMaxBodyBytes bounds request bodies when Options.MaxBodyBytes is not
// positive. API documents are small; uploads go through the SSH door.
const DefaultMaxBodyBytes = 1 << 20

// Options configures the handler returned by New.
type Options struct {
	Images    draupnir.ImageService
	Instances draupnir.InstanceService
	// Sources serves /sources; nil answers that no source is configured.
	Sources draupnir.SourceService
	Auth    Authenticator
	// Health backs GET /health_check; nil reports healthy.
	Health Health
	// Log receives request and error logs; nil discards them.
	Log *slog.Logger
	// MaxBodyBytes bounds request bodies (413 above it); ≤ 0 means
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Metrics serves GET /metrics; nil answers 404.
	Metrics http.Handler
	// Requests, if not nil, is told about every answered request.
	Requests RequestObserver
	// Login runs people's OIDC login (/authenticate, /oauth_callback,
	// /authenticate/token); nil answers 503 there.
	Login Login
	// People serves /tokens and /keys; nil leaves them out.
	People People
	// Nodes serves /nodes; nil leaves it out.
	Nodes draupnir.NodeService
	// Forwards checks requests other nodes of a cluster forward here and
	// keeps the callers' credentials for those this node forwards; nil
	// (a single node) refuses every forwarded request.
	Forwards Forwards
}

// api holds what the handlers share.
type api struct {
	images    draupnir.ImageService
	instances draupnir.InstanceService
	sources   draupnir.SourceService
	auth      Authenticator
	health    Health
	login     Login
	people    People
	nodes     draupnir.NodeService
	forwards  Forwards
	log       *slog.Logger
	maxBody   int64
	server    wire.Version
	serverOK  bool // the server's own version parsed; otherwise only exact matches pass
	serverRaw string
}

// New returns the API's http.Handler. The caller owns the http.Server (TLS,
// listeners, timeouts).
func New(opts Options) http.Handler {
	a := &api{
		images:    opts.Images,
		instances: opts.Instances,
		sources:   opts.Sources,
		auth:      opts.Auth,
		health:    opts.Health,
		nodes:     opts.Nodes,
		forwards:  opts.Forwards,
		log:       opts.Log,
		maxBody:   opts.MaxBodyBytes,
		serverRaw: draupnir.Version,
	}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if a.maxBody <= 0 {
		a.maxBody = DefaultMaxBodyBytes
	}
	if v, err := wire.ParseVersion(draupnir.Version); err == nil {
		a.server, a.serverOK = v, true
	} else {
		a.log.Warn("server version is not of the form X.Y.Z; only clients of exactly the same version (or of the original line) are accepted",
			"version", draupnir.Version)
	}

	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(io.Discard) // everything worth saying goes through slog
	e.HTTPErrorHandler = a.handleError
	if opts.Requests != nil {
		e.Use(observeRequests(opts.Requests, e)) // outermost: sees the final status
	}
	e.Use(a.base)

	// API routes: version first (cheap, reveals nothing), then the bearer
	// token, then body rules, so that nothing about a body is judged for a
	// stranger.
	std := []echo.MiddlewareFunc{a.checkVersion, a.authenticate, a.checkBody}
	upload := []echo.MiddlewareFunc{a.checkVersion, a.authenticate, a.requireUpload, a.checkBody}

	e.GET("/images", a.listImages, std...)
	e.GET("/images/:id", a.getImage, std...)
	e.POST("/images", a.createImage, upload...)
	e.POST("/images/:id/done", a.finaliseImage, upload...)
	e.PATCH("/images/:id", a.updateImage, upload...)
	// Users may destroy the images they saved: the service decides.
	e.DELETE("/images/:id", a.destroyImage, std...)

	e.GET("/instances", a.listInstances, std...)
	e.GET("/instances/:id", a.getInstance, std...)
	e.POST("/instances", a.createInstance, std...)
	e.PATCH("/instances/:id", a.updateInstance, std...)
	e.DELETE("/instances/:id", a.destroyInstance, std...)
	e.GET("/tombstones", a.listTombstones, std...)
	e.POST("/instances/:id/reset", a.resetInstance, std...)
	e.POST("/instances/:id/save", a.saveInstance, std...)

	e.GET("/sources", a.listSources, std...)
	e.GET("/sources/:name", a.getSource, std...)
	// The service refuses everyone but the upload principal, saying so.
	e.POST("/sources/:name/refresh", a.refreshSource, std...)

	a.routePeople(e, opts.Login, opts.People)

	if opts.Nodes != nil {
		e.GET("/nodes", a.listNodes, upload...)
		e.POST("/nodes/:name/drain", a.drainNode, upload...)
		e.POST("/nodes/:name/undrain", a.undrainNode, upload...)
	}

	e.GET("/health_check", a.healthCheck)
	e.HEAD("/health_check", a.healthCheck)
	if opts.Metrics != nil {
		e.GET("/metrics", echo.WrapHandler(opts.Metrics))
	}
	return e
}
