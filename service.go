package draupnir

import (
	"context"
	"time"
)

// ImageService is the image lifecycle as every door calls it: the HTTP API,
// the SSH door's command tree and the metrics wrapper around it. Each call
// acts as principal p; a principal may see or change only what it is
// allowed to (errors of kind KindForbidden or KindNotFound otherwise).
// *images.Service implements it; mock.ImageService is its fake.
type ImageService interface {
	// List returns every image, oldest first.
	List(ctx context.Context, p Principal) ([]*Image, error)
	// Get returns image id. Users other than the upload principal see a
	// failed image's error only as the fact that it failed.
	Get(ctx context.Context, p Principal, id int64) (*Image, error)
	// Create registers an image and makes its empty upload (upload principal).
	Create(ctx context.Context, p Principal, backedUpAt time.Time, script string) (*Image, error)
	// CreateInSeries is Create for an image of source's series (see
	// ValidSourceName); "" is Create.
	CreateInSeries(ctx context.Context, p Principal, source string, backedUpAt time.Time, script string) (*Image, error)
	// Update changes an image that is not ready or finalising.
	Update(ctx context.Context, p Principal, id int64, patch ImagePatch) (*Image, error)
	// Finalise turns the upload into a ready image and returns when that
	// job ends or ctx does; the job goes on without the caller.
	Finalise(ctx context.Context, p Principal, id int64) (*Image, error)
	// Destroy removes the image, its instances and its files: any image
	// for the upload principal, one a user saved for that user.
	Destroy(ctx context.Context, p Principal, id int64) error
}

// InstanceService is the instance lifecycle as every door calls it; each
// call acts as principal p, who sees only its own instances (the upload
// principal sees all). *instances.Service implements it;
// mock.InstanceService is its fake.
type InstanceService interface {
	List(ctx context.Context, p Principal) ([]*Instance, error)
	// Get returns instance id. One that a rule destroyed (expiry, idle
	// clean-up, its image's destroy) is an error of kind KindGone saying
	// which and when, for instances.tombstone_days.
	Get(ctx context.Context, p Principal, id int64) (*Instance, error)
	// Create makes an instance of ready image imageID owned by p and
	// returns it running, with its credentials. Beyond instances.max_per_user
	// it fails with KindQuotaExceeded.
	Create(ctx context.Context, p Principal, imageID int64, opts CreateOptions) (*Instance, error)
	// Update extends or protects instance id (see InstancePatch).
	Update(ctx context.Context, p Principal, id int64, patch InstancePatch) (*Instance, error)
	// Reset puts instance id back to the data of ready image imageID (0:
	// the image it was made of), keeping its id, port, credentials, owner,
	// expiry and protection, and returns it running. Its connections are
	// dropped.
	Reset(ctx context.Context, p Principal, id, imageID int64) (*Instance, error)
	// Save makes a new ready image of instance id's current data, owned
	// by p, without stopping the instance.
	Save(ctx context.Context, p Principal, id int64) (*Image, error)
	Destroy(ctx context.Context, p Principal, id int64) error
	// Tombstones returns what remains of p's instances that rules
	// destroyed (everybody's, for the upload principal), newest first.
	Tombstones(ctx context.Context, p Principal) ([]*Tombstone, error)
}
