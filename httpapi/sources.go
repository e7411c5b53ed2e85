package httpapi

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// sourceName returns the :name of the URL, and the source service. A name
// no source can have, or a server without sources, is a 404.
func (a *api) sourceName(c echo.Context) (string, error) {
	name := c.Param("name")
	if a.sources == nil || !draupnir.ValidSourceName(name) {
		return "", newError(http.StatusNotFound, codeNotFound, "source %q is not configured", truncate(name, 64))
	}
	return name, nil
}

func (a *api) listSources(c echo.Context) error {
	data := []wire.SourceResource{}
	if a.sources != nil {
		list, err := a.sources.List(c.Request().Context(), principal(c))
		if err != nil {
			return err
		}
		for _, s := range list {
			data = append(data, wire.NewSourceResource(s))
		}
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.SourceResource]{Data: data})
}

func (a *api) getSource(c echo.Context) error {
	name, err := a.sourceName(c)
	if err != nil {
		return err
	}
	s, err := a.sources.Get(c.Request().Context(), principal(c), name)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, wire.Document[wire.SourceResource]{Data: wire.NewSourceResource(s)})
}

// refreshSource answers 202 with the image being made as soon as the
// refresh has begun; GET /images/:id follows it to ready or failed.
func (a *api) refreshSource(c echo.Context) error {
	name, err := a.sourceName(c)
	if err != nil {
		return err
	}
	if err := noBody(c.Request().Body); err != nil {
		return err
	}
	im, err := a.sources.Refresh(c.Request().Context(), principal(c), name)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", fmt.Sprintf("/images/%d", im.ID))
	return writeJSON(c, http.StatusAccepted, imageDocument(im))
}
