package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/images/extract"
)

// openUpload checks that p may write into image id now, marks the image
// uploading and counts the upload as open, so finalise waits for it.
func (s *Service) openUpload(ctx context.Context, p draupnir.Principal, id int64) (end func(), err error) {
	if err := requireUpload(p, "upload into images"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, running := s.jobs[id]; running {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is being finalised; uploads are closed", id)
	}
	if s.destroys[id] {
		return nil, destroyingError(id)
	}
	r, ok, err := s.store.transition(ctx, id,
		[]draupnir.ImageState{draupnir.ImageCreated, draupnir.ImageUploading}, draupnir.ImageUploading)
	if err != nil {
		return nil, err
	}
	if !ok {
		hint := ""
		if r.State == draupnir.ImageFailed {
			hint = "; destroy it and create a new image to upload again, or fix the script and call done"
		}
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is %s; uploads are closed%s", id, r.State, hint)
	}
	s.uploads[id]++
	var once bool
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !once {
			once = true
			if s.uploads[id]--; s.uploads[id] <= 0 {
				delete(s.uploads, id)
			}
		}
	}, nil
}

// BeginUpload returns the directory into which p may write files for image
// id, and a func to call when the writing is over.
func (s *Service) BeginUpload(ctx context.Context, p draupnir.Principal, id int64) (dir string, end func(), err error) {
	end, err = s.openUpload(ctx, p, id)
	if err != nil {
		return "", nil, err
	}
	return s.uploadDir(id), end, nil
}

// StreamUpload extracts a tar stream (plain or compressed, detected from its
// bytes) straight into image id's upload, replacing whatever an earlier
// upload left there, so finalising needs no extraction.
func (s *Service) StreamUpload(ctx context.Context, p draupnir.Principal, id int64, r io.Reader) (draupnir.UploadSummary, error) {
	start := time.Now()
	end, err := s.openUpload(ctx, p, id)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer end()
	dir := s.uploadDir(id)
	// A fresh subvolume is the quickest way to drop a previous upload.
	if err := btrfs.Delete(dir); err != nil {
		return draupnir.UploadSummary{}, fmt.Errorf("clearing the upload of image %d: %w", id, err)
	}
	if err := makeUploadDir(dir); err != nil {
		return draupnir.UploadSummary{}, draupnir.StorageError(fmt.Errorf("recreating the upload of image %d: %w", id, err))
	}
	limit, err := extractLimit(dir)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	cr := &countingReader{r: r}
	st, err := extract.Tar(ctx, cr, dir, extract.Options{UID: -1, GID: -1, MaxBytes: limit})
	err = spaceError(dir, err)
	sum := draupnir.UploadSummary{Bytes: cr.n, Files: st.Files, Duration: time.Since(start)}
	if err != nil {
		// A half-extracted tree cannot be finalised, and after a full disk
		// it keeps the disk full: drop it, leaving the upload empty. File by
		// file, because btrfs frees a deleted subvolume's space only when
		// its cleaner gets to it, up to half a minute later.
		if cerr := emptyDir(dir); cerr != nil {
			s.log.Error("could not clear a failed streaming upload", "image", id, "err", cerr)
		}
		return sum, draupnir.StorageError(err)
	}
	s.log.Info("streaming upload done", "image", id, "bytes", sum.Bytes, "files", sum.Files, "duration", sum.Duration)
	return sum, nil
}

// makeUploadDir creates the upload subvolume dir, private to root: a raw
// backup is production data, unanonymised. What the doors write into it is
// private too (0600 files, 0700 directories).
func makeUploadDir(dir string) error {
	if err := btrfs.CreateSubvolume(dir); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// emptyDir removes everything inside dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
