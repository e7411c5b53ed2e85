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

// StreamUploader is implemented by backends that can take an upload from a
// stream in-process: the core adapter, when its image service opens
// uploads. It serves `images upload N` in SSH sessions: with no name the
// stream is a tar of the whole backup, extracted in place of the upload;
// with a name it is stored as that archive, beside the upload's other files
// unless replace is set.
type StreamUploader interface {
	StreamUpload(ctx context.Context, id int64, name string, replace bool, r io.Reader) (draupnir.UploadSummary, error)
}

// CoreBackend adapts the in-process core services to Backend, acting as p.
// SSH sessions use it. If images also opens uploads (draupnir.Uploads), the
// result serves StreamUploader.
func CoreBackend(images draupnir.ImageService, instances draupnir.InstanceService, p draupnir.Principal) Backend {
	return &inProcess{images: images, instances: instances, p: p}
}

// inProcess is a Backend that calls the services in this process.
type inProcess struct {
	images    draupnir.ImageService
	instances draupnir.InstanceService
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

func (c *inProcess) StreamUpload(ctx context.Context, id int64, name string, replace bool, r io.Reader) (draupnir.UploadSummary, error) {
	up, ok := c.images.(draupnir.Uploads)
	if !ok {
		return draupnir.UploadSummary{}, errors.New("this server cannot take streaming uploads through the command tree")
	}
	u, err := up.OpenUpload(ctx, c.p, id)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer u.Close()
	if name == "" {
		return u.Extract(ctx, r)
	}
	return u.Store(ctx, name, r, replace)
}
