package cli

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/draupnir-db/draupnir"
)

// Backend is what the commands act on. All methods act as the caller's
// principal: the HTTP client as the token's, the core adapter as the SSH
// key's.
type Backend interface {
	ListImages(ctx context.Context) ([]*draupnir.Image, error)
	GetImage(ctx context.Context, id int64) (*draupnir.Image, error)
	CreateImage(ctx context.Context, backedUpAt time.Time, script string) (*draupnir.Image, error)
	UpdateImage(ctx context.Context, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error)
	FinaliseImage(ctx context.Context, id int64) (*draupnir.Image, error)
	DestroyImage(ctx context.Context, id int64) error
	ListInstances(ctx context.Context) ([]*draupnir.Instance, error)
	GetInstance(ctx context.Context, id int64) (*draupnir.Instance, error)
	CreateInstance(ctx context.Context, imageID int64) (*draupnir.Instance, error)
	DestroyInstance(ctx context.Context, id int64) error
}

// ServerVersioner is implemented by backends that can tell the server's
// version (the HTTP client asks the server; the core is the server).
type ServerVersioner interface {
	ServerVersion(ctx context.Context) (string, error)
}

// StreamUploader is implemented by backends that can take an image upload as
// a (compressed) tar stream in-process: the core adapter, when its image
// service can. It serves `images upload N < FILE` in SSH sessions whose
// server lets the command tree handle that command.
type StreamUploader interface {
	StreamUpload(ctx context.Context, id int64, r io.Reader) (draupnir.UploadSummary, error)
}

// ImageService is the part of the core image service (package images) that
// the commands use.
type ImageService interface {
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error)
	Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error)
	Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error)
	Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	Destroy(ctx context.Context, p draupnir.Principal, id int64) error
}

// InstanceService is the part of the core instance service (package
// instances) that the commands use.
type InstanceService interface {
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Instance, error)
	Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Instance, error)
	Create(ctx context.Context, p draupnir.Principal, imageID int64) (*draupnir.Instance, error)
	Destroy(ctx context.Context, p draupnir.Principal, id int64) error
}

// imageStreamer is the optional streaming-upload method of the image service.
type imageStreamer interface {
	StreamUpload(ctx context.Context, p draupnir.Principal, id int64, r io.Reader) (draupnir.UploadSummary, error)
}

// CoreBackend adapts the in-process core services to Backend, acting as p.
// SSH sessions use it. If images also has StreamUpload, the result
// implements StreamUploader.
func CoreBackend(images ImageService, instances InstanceService, p draupnir.Principal) Backend {
	return &inProcess{images: images, instances: instances, p: p}
}

// inProcess is a Backend that calls the services in this process.
type inProcess struct {
	images    ImageService
	instances InstanceService
	p         draupnir.Principal
}

func (c *inProcess) ListImages(ctx context.Context) ([]*draupnir.Image, error) {
	return c.images.List(ctx, c.p)
}

func (c *inProcess) GetImage(ctx context.Context, id int64) (*draupnir.Image, error) {
	return c.images.Get(ctx, c.p, id)
}

func (c *inProcess) CreateImage(ctx context.Context, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return c.images.Create(ctx, c.p, backedUpAt, script)
}

func (c *inProcess) UpdateImage(ctx context.Context, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	return c.images.Update(ctx, c.p, id, patch)
}

func (c *inProcess) FinaliseImage(ctx context.Context, id int64) (*draupnir.Image, error) {
	return c.images.Finalise(ctx, c.p, id)
}

func (c *inProcess) DestroyImage(ctx context.Context, id int64) error {
	return c.images.Destroy(ctx, c.p, id)
}

func (c *inProcess) ListInstances(ctx context.Context) ([]*draupnir.Instance, error) {
	return c.instances.List(ctx, c.p)
}

func (c *inProcess) GetInstance(ctx context.Context, id int64) (*draupnir.Instance, error) {
	return c.instances.Get(ctx, c.p, id)
}

func (c *inProcess) CreateInstance(ctx context.Context, imageID int64) (*draupnir.Instance, error) {
	return c.instances.Create(ctx, c.p, imageID)
}

func (c *inProcess) DestroyInstance(ctx context.Context, id int64) error {
	return c.instances.Destroy(ctx, c.p, id)
}

// ServerVersion is this process's version: the core is the server.
func (c *inProcess) ServerVersion(context.Context) (string, error) { return draupnir.Version, nil }

func (c *inProcess) StreamUpload(ctx context.Context, id int64, r io.Reader) (draupnir.UploadSummary, error) {
	s, ok := c.images.(imageStreamer)
	if !ok {
		return draupnir.UploadSummary{}, errors.New("this server cannot take streaming uploads through the command tree")
	}
	return s.StreamUpload(ctx, c.p, id, r)
}
