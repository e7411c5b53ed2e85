package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// pathID parses the :id of the URL. Anything but a positive integer that
// fits int64 names no resource, so it is a 404 like an id that is absent.
func pathID(c echo.Context, kind string) (int64, error) {
	raw := c.Param("id")
	id, ok := parseID(raw)
	if !ok {
		return 0, newError(http.StatusNotFound, codeNotFound, "%s %q does not exist", kind, truncate(raw, 32))
	}
	return id, nil
}

func (a *api) listImages(c echo.Context) error {
	list, err := a.images.List(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	data := make([]wire.ImageResource, 0, len(list))
	for _, im := range list {
		data = append(data, wire.NewImageResource(im))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.ImageResource]{Data: data})
}

func (a *api) getImage(c echo.Context) error {
	id, err := pathID(c, "image")
	if err != nil {
		return err
	}
	im, err := a.images.Get(c.Request().Context(), principal(c), id)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, imageDocument(im))
}

func (a *api) createImage(c echo.Context) error {
	req, err := decodeImageCreate(c.Request().Body)
	if err != nil {
		return err
	}
	im, err := a.images.CreateInSeries(c.Request().Context(), principal(c), req.Source, req.BackedUpAt, req.AnonymisationScript)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", fmt.Sprintf("/images/%d", im.ID))
	return writeJSON(c, http.StatusCreated, imageDocument(im))
}

// finaliseImage blocks until finalising ends. The service runs the job on
// its own context, so a client that goes away does not abort it.
func (a *api) finaliseImage(c echo.Context) error {
	id, err := pathID(c, "image")
	if err != nil {
		return err
	}
	im, err := a.images.Finalise(c.Request().Context(), principal(c), id)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, imageDocument(im))
}

func (a *api) updateImage(c echo.Context) error {
	id, err := pathID(c, "image")
	if err != nil {
		return err
	}
	patch, err := decodeImagePatch(c.Request().Body, id)
	if err != nil {
		return err
	}
	im, err := a.images.Update(c.Request().Context(), principal(c), id, patch)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, imageDocument(im))
}

func (a *api) destroyImage(c echo.Context) error {
	id, err := pathID(c, "image")
	if err != nil {
		return err
	}
	if err := a.images.Destroy(c.Request().Context(), principal(c), id); err != nil {
		return err
	}
	return noContent(c)
}

func (a *api) listInstances(c echo.Context) error {
	list, err := a.instances.List(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	data := make([]wire.InstanceResource, 0, len(list))
	for _, in := range list {
		data = append(data, wire.NewInstanceResource(in))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.InstanceResource]{Data: data})
}

func (a *api) getInstance(c echo.Context) error {
	id, err := pathID(c, "instance")
	if err != nil {
		return err
	}
	in, err := a.instances.Get(c.Request().Context(), principal(c), id)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, instanceDocument(in))
}

// createInstance answers the original line about image_id as the original
// did: 400 for a bad id, 404 "Image Not Found", 422 "Image Not Ready".
func (a *api) createInstance(c echo.Context) error {
	req, err := decodeInstanceCreate(c.Request().Body)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Pointer == "/data/attributes/image_id" {
			ae.orig = badImageID()
		}
		return err
	}
	if req.Source != "" {
		list, err := a.images.List(c.Request().Context(), principal(c))
		if err != nil {
			return err
		}
		im, err := draupnir.NewestReady(list, req.Source)
		if err != nil {
			return err
		}
		req.ImageID = im.ID
	}
	in, err := a.instances.Create(c.Request().Context(), principal(c), req.ImageID, req.Options)
	if err != nil {
		ae := fromDomain(err)
		switch draupnir.KindOf(err) {
		case draupnir.KindNotFound: // the image: a user's instance is always found
			ae.orig = imageNotFound()
		case draupnir.KindConflict: // the image is not ready, failed or being destroyed
			ae.orig = imageNotReady()
		}
		return ae
	}
	c.Response().Header().Set("Location", fmt.Sprintf("/instances/%d", in.ID))
	return writeJSON(c, http.StatusCreated, instanceDocument(in))
}

// updateInstance extends (ttl) or protects (protect_for) an instance.
func (a *api) updateInstance(c echo.Context) error {
	id, err := pathID(c, "instance")
	if err != nil {
		return err
	}
	patch, err := decodeInstancePatch(c.Request().Body, id)
	if err != nil {
		return err
	}
	in, err := a.instances.Update(c.Request().Context(), principal(c), id, patch)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, instanceDocument(in))
}

// listTombstones lists the caller's instances that rules destroyed.
func (a *api) listTombstones(c echo.Context) error {
	list, err := a.instances.Tombstones(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	data := make([]wire.TombstoneResource, 0, len(list))
	for _, t := range list {
		data = append(data, wire.NewTombstoneResource(t))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.TombstoneResource]{Data: data})
}

// resetInstance answers when the instance's new postgres accepts
// connections; like a create, it goes on if the client hangs up.
func (a *api) resetInstance(c echo.Context) error {
	id, err := pathID(c, "instance")
	if err != nil {
		return err
	}
	imageID, err := decodeInstanceReset(c.Request().Body)
	if err != nil {
		return err
	}
	in, err := a.instances.Reset(c.Request().Context(), principal(c), id, imageID)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, instanceDocument(in))
}

// saveInstance answers with the new image once it is ready; like a
// finalise, the work goes on if the client hangs up.
func (a *api) saveInstance(c echo.Context) error {
	id, err := pathID(c, "instance")
	if err != nil {
		return err
	}
	if err := noBody(c.Request().Body); err != nil {
		return err
	}
	im, err := a.instances.Save(c.Request().Context(), principal(c), id)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", fmt.Sprintf("/images/%d", im.ID))
	return writeJSON(c, http.StatusCreated, imageDocument(im))
}

func (a *api) destroyInstance(c echo.Context) error {
	id, err := pathID(c, "instance")
	if err != nil {
		return err
	}
	if err := a.instances.Destroy(c.Request().Context(), principal(c), id); err != nil {
		return err
	}
	return noContent(c)
}

func imageDocument(im *draupnir.Image) wire.Document[wire.ImageResource] {
	return wire.Document[wire.ImageResource]{Data: wire.NewImageResource(im)}
}

func instanceDocument(in *draupnir.Instance) wire.Document[wire.InstanceResource] {
	return wire.Document[wire.InstanceResource]{Data: wire.NewInstanceResource(in), Meta: wire.NewMeta(in.Notice)}
}

type healthDocument struct {
	Status string `json:"status"`
}

// healthCheck answers load balancers and monitors; it needs neither a
// version header nor a token, and says nothing beyond ok or not.
func (a *api) healthCheck(c echo.Context) error {
	if a.health != nil {
		if err := a.health.Check(c.Request().Context()); err != nil {
			a.log.WarnContext(c.Request().Context(), "health check failed", "err", err)
			return newError(http.StatusServiceUnavailable, codeUnavailable, "the service is not healthy; the server log has the details")
		}
	}
	if c.Request().Method == http.MethodHead {
		return c.NoContent(http.StatusOK)
	}
	return writeJSON(c, http.StatusOK, healthDocument{Status: "ok"})
}
