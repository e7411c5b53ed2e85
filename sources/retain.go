package sources

import (
	"context"
	"slices"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
)

// retain destroys the ready images of c's series beyond the newest c.Keep,
// except those with instances: they stay until their last instance goes
// (protected instances keep them as long as they live), and a later sweep
// destroys them. Every decision is logged.
func (s *Service) retain(ctx context.Context, c config.Source) {
	log := s.log.With("source", c.Name)
	ims, err := s.opts.Images.List(ctx, upload)
	if err != nil {
		log.Error("retention: listing images", "err", err)
		return
	}
	var ready []int64
	for _, im := range ims {
		if im.Source == c.Name && im.Ready() {
			ready = append(ready, im.ID)
		}
	}
	if len(ready) <= c.Keep {
		return
	}
	slices.Sort(ready)
	old := ready[:len(ready)-c.Keep]
	for _, id := range old {
		err := s.opts.Images.Destroy(ctx, upload, id, unused{s.opts.Instances})
		switch {
		case err == nil:
			log.Info("retention: destroyed an image beyond keep", "image", id, "keep", c.Keep)
		case draupnir.KindOf(err) == draupnir.KindConflict:
			log.Info("retention: keeping an image beyond keep while it is in use", "image", id, "keep", c.Keep, "why", draupnir.ClientMessage(err))
		case draupnir.KindOf(err) == draupnir.KindNotFound:
		default:
			log.Error("retention: destroying an image beyond keep", "image", id, "err", err)
		}
	}
}

// unused lets an image's destroy go ahead only if no one has an instance of
// it. The image service calls DestroyAllOfImage once new instances of the
// image are refused, so the check cannot go stale; an instance whose create
// was already under way keeps the image's row, and the destroy answers a
// conflict.
type unused struct{ draupnir.InstanceDestroyer }

func (u unused) DestroyAllOfImage(ctx context.Context, imageID int64) error {
	owners, err := u.OwnersOfImage(ctx, imageID)
	if err != nil {
		return err
	}
	if len(owners) > 0 {
		return draupnir.Errorf(draupnir.KindConflict, "image %d has instances of %d users", imageID, len(owners))
	}
	// Warm-pool instances are nobody's yet: they go with the image.
	return u.InstanceDestroyer.DestroyAllOfImage(ctx, imageID)
}
