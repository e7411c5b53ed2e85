package instances

import (
	"context"
	"fmt"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/diskspace"
	"github.com/draupnir-db/draupnir/supervisor"
)

// Reset puts instance id back to the data of ready image imageID (0: the
// image it was made of), keeping its id, port, username, password and
// owner. Its postgres is stopped (dropping every connection), its snapshot
// replaced by a fresh one of the image with the same disk limit, and the
// instance role given its password again; Reset returns once the new
// postgres accepts connections.
//
// The row says "resetting", with the target image, before anything on disk
// changes, and every step can be done again from any point, so a server
// that dies mid-reset finishes it at the next Reconcile.
func (s *Service) Reset(ctx context.Context, p draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	in, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !p.CanSee(in.Owner) || in.Owner == "" {
		return nil, notFound(id)
	}
	if err := s.elsewhere(ctx, in); err != nil {
		return nil, err
	}
	if imageID == 0 {
		imageID = in.ImageID
	}
	im, err := s.opts.Images.Ready(ctx, imageID)
	if err != nil {
		return nil, err
	}
	if err := diskspace.Ensure(s.opts.Dir); err != nil {
		return nil, err
	}
	ok, err := s.store.claimReset(ctx, id, imageID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindConflict, "instance %d is being created, reset or destroyed; try again when that ends", id)
	}
	in.ImageID = imageID
	// Past this point the old data is going whatever the caller does: a
	// client that hangs up must not leave the instance half-reset.
	ctx = context.WithoutCancel(ctx)
	if err := s.resetData(ctx, in, im); err != nil {
		s.store.setState(ctx, id, draupnir.InstanceFailed, fmt.Sprintf("resetting it failed: %v; reset or destroy it", err))
		return nil, err
	}
	s.log.Info("instance reset", "instance", id, "image", imageID, "owner", in.Owner, "port", in.Port)
	return s.Get(ctx, p, id)
}

// resetData replaces the data of instance in, whose row says resetting,
// with a fresh snapshot of image im, starts it on the instance's port, sets
// the instance role's password and records the instance as live again.
// Each step may have been done already by an interrupted earlier attempt.
func (s *Service) resetData(ctx context.Context, in *draupnir.Instance, im *draupnir.ReadyImage) (err error) {
	dir := s.dir(in.ID)
	if t := s.untrack(in.ID); t != nil {
		if err := t.proc.Stop(ctx, supervisor.Immediate, 10*time.Second); err != nil {
			return fmt.Errorf("stopping instance %d: %w", in.ID, err)
		}
	}
	// Also one this service does not watch: adopted by nobody after a
	// crash, or started by a crash recovery racing with the reset.
	if err := s.postgres.StopDataDir(ctx, dir, supervisor.Immediate, 10*time.Second); err != nil {
		return fmt.Errorf("stopping instance %d: %w", in.ID, err)
	}
	if err := s.deleteSnapshot(dir); err != nil {
		return fmt.Errorf("deleting the old data of instance %d: %w", in.ID, err)
	}
	if err := s.volumes.Snapshot(im.Snapshot, dir, false); err != nil {
		return draupnir.StorageError(fmt.Errorf("snapshotting image %d: %w", im.ID, err))
	}
	// The same confinement as at create.
	if err := s.separateWAL(in.ID); err != nil {
		return err
	}
	if err := s.limitDisk(in.ID); err != nil {
		return err
	}
	proc, err := s.start(ctx, in.ID, in.Port)
	if err != nil {
		return fmt.Errorf("starting postgres for instance %d: %w", in.ID, err)
	}
	defer func() {
		if err != nil {
			proc.Stop(ctx, supervisor.Immediate, 10*time.Second)
		}
	}()
	// The image's copy of the role has no password the owner knows.
	if err := s.giveRole(ctx, in, im, in.Password); err != nil {
		return err
	}
	if err := s.store.setDone(ctx, in.ID, liveState(in)); err != nil {
		return err
	}
	s.track(in.ID, proc)
	return nil
}

// finishReset completes the reset of instance in that a crash interrupted,
// or fails the instance with the reason.
func (s *Service) finishReset(ctx context.Context, in *draupnir.Instance) {
	log := s.log.With("instance", in.ID, "image", in.ImageID)
	log.Warn("finishing an interrupted reset")
	im, err := s.opts.Images.Ready(ctx, in.ImageID)
	if err == nil {
		err = s.resetData(ctx, in, im)
	}
	if err != nil {
		log.Error("could not finish an interrupted reset", "err", err)
		s.store.setState(ctx, in.ID, draupnir.InstanceFailed, fmt.Sprintf("resetting it failed: %v; reset or destroy it", err))
	}
}
