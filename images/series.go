package images

import (
	"context"
	"fmt"
	"os"

	"github.com/draupnir-db/draupnir"
)

// Fail marks image id failed with reason, for work that made the image
// outside finalise (a source's refresh whose backup failed). A ready image,
// or one being finalised or destroyed, is left alone (KindConflict).
func (s *Service) Fail(ctx context.Context, id int64, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, running := s.jobs[id]; running {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is being finalised", id)
	}
	if s.destroys[id] {
		return destroyingError(id)
	}
	r, err := s.store.get(ctx, id)
	if err != nil {
		return err
	}
	if r.State == draupnir.ImageReady {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is ready", id)
	}
	if err := s.store.fail(ctx, id, reason); err != nil {
		return fmt.Errorf("marking image %d failed: %w", id, err)
	}
	s.log.Warn("image failed", "image", id, "reason", reason)
	return nil
}

// FillUpload replaces image id's upload with the subvolume that fill makes
// at the path it is given (a snapshot of a source's standby, say), under
// the rules of an upload: p must be the upload principal, the image must
// accept uploads, and finalising waits until fill returns. On an error the
// image gets an empty upload back.
func (s *Service) FillUpload(ctx context.Context, p draupnir.Principal, id int64, fill func(ctx context.Context, dst string) error) error {
	if err := requireUpload(p, "upload into images"); err != nil {
		return err
	}
	s.mu.Lock()
	err := s.admitLocked(ctx, id, true)
	if err == nil {
		s.uploads[id]++
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		s.mu.Lock()
		if s.uploads[id]--; s.uploads[id] <= 0 {
			delete(s.uploads, id)
		}
		s.mu.Unlock()
	}()
	dir := s.uploadDir(id)
	if err := s.volumes.Delete(dir); err != nil {
		return fmt.Errorf("replacing the upload of image %d: %w", id, err)
	}
	if err := fill(ctx, dir); err != nil {
		if derr := s.volumes.Delete(dir); derr == nil {
			if merr := makeUploadDir(dir); merr != nil {
				s.log.Error("could not give an image its empty upload back", "image", id, "err", merr)
			}
		}
		return draupnir.StorageError(err)
	}
	// The upload is root's alone, whatever fill made.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("making the upload of image %d private: %w", id, err)
	}
	return nil
}
