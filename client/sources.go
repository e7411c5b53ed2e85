package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

var _ draupnir.SourceService = Sources{}

// Sources is the server's source service over HTTP
// (draupnir.SourceService); calls act as the token's principal.
type Sources struct{ c *Client }

// List returns every configured source.
func (s Sources) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Source, error) {
	var doc wire.Document[[]wire.SourceResource]
	if err := s.c.do(ctx, http.MethodGet, "/sources", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]*draupnir.Source, len(doc.Data))
	for i := range doc.Data {
		out[i] = doc.Data[i].Source()
	}
	return out, nil
}

// Get returns source name.
func (s Sources) Get(ctx context.Context, _ draupnir.Principal, name string) (*draupnir.Source, error) {
	var doc wire.Document[wire.SourceResource]
	if err := s.c.do(ctx, http.MethodGet, "/sources/"+url.PathEscape(name), nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	return doc.Data.Source(), nil
}

// Refresh starts a refresh of source name and returns the image it makes.
func (s Sources) Refresh(ctx context.Context, _ draupnir.Principal, name string) (*draupnir.Image, error) {
	return s.c.image(ctx, http.MethodPost, "/sources/"+url.PathEscape(name)+"/refresh", nil, http.StatusAccepted)
}
