package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/internal/countio"
	"github.com/draupnir-db/draupnir/internal/saferoot"
)

// OpenUpload opens image id's upload for p (see draupnir.Upload): it checks
// that p may write into the image now and marks it uploading. The upload's
// calls check the image's state again only after a finalise or destroy has
// begun since (the service's upload epoch moved), so that a session does
// not query the state database for every file operation.
func (s *Service) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	if err := requireUpload(p, "upload into images"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	err := s.admitLocked(ctx, id)
	epoch := s.uploadEpoch
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	root, err := saferoot.Open(s.uploadDir(id))
	if err != nil {
		return nil, fmt.Errorf("opening the upload of image %d: %w", id, err)
	}
	return &upload{s: s, ctx: ctx, id: id, epoch: epoch, root: root}, nil
}

// OpenDir opens dir as an upload that no image governs: the rules of an
// image's upload (confinement, private modes, the free-space budget, byte
// counting) without its state. The SSH door's tests serve it.
func OpenDir(dir string) (draupnir.Upload, error) {
	root, err := saferoot.Open(dir)
	if err != nil {
		return nil, err
	}
	return &upload{root: root}, nil
}

// admitLocked checks that image id accepts uploads now and marks it
// uploading. s.mu is held.
func (s *Service) admitLocked(ctx context.Context, id int64) error {
	if _, running := s.jobs[id]; running {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is being finalised; uploads are closed", id)
	}
	if s.destroys[id] {
		return destroyingError(id)
	}
	r, ok, err := s.store.transition(ctx, id,
		[]draupnir.ImageState{draupnir.ImageCreated, draupnir.ImageUploading}, draupnir.ImageUploading)
	if err != nil {
		return err
	}
	if !ok {
		hint := ""
		if r.State == draupnir.ImageFailed {
			hint = "; destroy it and create a new image to upload again, or fix the script and call done"
		}
		return draupnir.Errorf(draupnir.KindConflict, "image %d is %s; uploads are closed%s", id, r.State, hint)
	}
	return nil
}

// closeUploadsLocked makes every open upload check its image's state again
// at its next call: a finalise or destroy of some image has begun. s.mu is
// held.
func (s *Service) closeUploadsLocked() { s.uploadEpoch++ }

// upload is an image's open upload (draupnir.Upload).
type upload struct {
	s   *Service // nil for OpenDir
	ctx context.Context
	id  int64

	root    *saferoot.Root
	written atomic.Int64

	mu     sync.Mutex
	epoch  uint64 // s.uploadEpoch when the state was last checked
	refs   int    // calls and files in progress; the root stays open for them
	closed bool
}

var errClosed = errors.New("the upload is closed")

// enter begins a call: it checks that the image still accepts uploads and
// counts the call as in progress (finalise waits for it) until leave.
func (u *upload) enter() (leave func(), err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errClosed
	}
	if s := u.s; s != nil {
		s.mu.Lock()
		if _, running := s.jobs[u.id]; running || s.destroys[u.id] || u.epoch != s.uploadEpoch {
			if err = s.admitLocked(u.ctx, u.id); err == nil {
				u.epoch = s.uploadEpoch
			}
		}
		if err == nil {
			s.uploads[u.id]++
		}
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	u.refs++
	var once sync.Once
	return func() { once.Do(u.leave) }, nil
}

func (u *upload) leave() {
	if s := u.s; s != nil {
		s.mu.Lock()
		if s.uploads[u.id]--; s.uploads[u.id] <= 0 {
			delete(s.uploads, u.id)
		}
		s.mu.Unlock()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.refs--
	if u.closed && u.refs == 0 {
		u.root.Close()
	}
}

func (u *upload) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	if u.refs == 0 {
		return u.root.Close()
	}
	return nil
}

func (u *upload) Written() int64 { return u.written.Load() }

// private keeps only the owner's bits of a mode a client asks for (on
// creation, scp -p or chmod): uploads are production data, and nothing in
// them is for group or others.
func private(m fs.FileMode) fs.FileMode { return m.Perm() & 0o700 }

func (u *upload) Stat(name string) (fs.FileInfo, error) {
	leave, err := u.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	return u.root.Lstat(name)
}

func (u *upload) ReadDir(name string) ([]fs.FileInfo, error) {
	leave, err := u.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	return u.root.ReadDir(name)
}

func (u *upload) Mkdir(name string, perm fs.FileMode, exclusive bool) error {
	leave, err := u.enter()
	if err != nil {
		return err
	}
	defer leave()
	err = u.root.Mkdir(name, private(perm))
	if errors.Is(err, fs.ErrExist) && !exclusive {
		if st, serr := u.root.Lstat(name); serr == nil && st.IsDir() {
			return nil
		}
	}
	return err
}

func (u *upload) Remove(name string) error {
	leave, err := u.enter()
	if err != nil {
		return err
	}
	defer leave()
	return u.root.Remove(name)
}

func (u *upload) RemoveDir(name string) error {
	leave, err := u.enter()
	if err != nil {
		return err
	}
	defer leave()
	return u.root.RemoveDir(name)
}

func (u *upload) Rename(oldname, newname string, replace bool) error {
	leave, err := u.enter()
	if err != nil {
		return err
	}
	defer leave()
	return u.root.Rename(oldname, newname, replace)
}

func (u *upload) SetAttrs(name string, a draupnir.FileAttrs) error {
	leave, err := u.enter()
	if err != nil {
		return err
	}
	defer leave()
	flags := os.O_RDONLY
	if a.Size != nil {
		flags = os.O_WRONLY
	}
	f, err := u.root.OpenFile(name, flags, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return setAttrs(f, a)
}

func setAttrs(f *os.File, a draupnir.FileAttrs) error {
	if a.Size != nil {
		if *a.Size < 0 {
			return &fs.PathError{Op: "truncate", Path: f.Name(), Err: unix.EINVAL}
		}
		if err := f.Truncate(*a.Size); err != nil {
			return err
		}
	}
	if a.Mode != nil {
		// No set-id or sticky bits from clients, nor access for others.
		if err := f.Chmod(private(*a.Mode)); err != nil {
			return err
		}
	}
	if a.Atime != nil || a.Mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.Atime != nil {
			ts[0] = unix.NsecToTimespec(a.Atime.UnixNano())
		}
		if a.Mtime != nil {
			ts[1] = unix.NsecToTimespec(a.Mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(int(f.Fd()), "", ts, unix.AT_EMPTY_PATH); err != nil {
			return &fs.PathError{Op: "utimes", Path: f.Name(), Err: err}
		}
	}
	return nil
}

func (u *upload) OpenFile(name string, flag int, perm fs.FileMode) (draupnir.UploadFile, error) {
	leave, err := u.enter()
	if err != nil {
		return nil, err
	}
	f, err := u.root.OpenFile(name, flag&^os.O_APPEND, private(perm))
	if err != nil {
		leave()
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		leave()
		return nil, &fs.PathError{Op: "open", Path: name, Err: errNotRegular}
	}
	uf := &uploadFile{File: f, u: u, leave: leave}
	if flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		if uf.budget, err = newWriteBudget(int(f.Fd())); err != nil {
			uf.Close()
			return nil, err
		}
	}
	return uf, nil
}

// errNotRegular refuses to open what is not a regular file.
var errNotRegular = draupnir.Errorf(draupnir.KindInvalid, "not a regular file")

// uploadFile is a file open in an upload; closing it ends the call it
// belongs to.
type uploadFile struct {
	*os.File
	u     *upload
	leave func()
	once  sync.Once
	// budget stops writes short of the data path's free-space reserve, so
	// that an upload larger than the disk cannot fill it and take the
	// state database down with it. Nil for files opened read-only.
	budget *writeBudget
}

func (f *uploadFile) WriteAt(b []byte, off int64) (int, error) {
	if err := f.spend(len(b)); err != nil {
		return 0, err
	}
	n, err := f.File.WriteAt(b, off)
	f.u.written.Add(int64(n))
	return n, err
}

func (f *uploadFile) Write(b []byte) (int, error) {
	if err := f.spend(len(b)); err != nil {
		return 0, err
	}
	n, err := f.File.Write(b)
	f.u.written.Add(int64(n))
	return n, err
}

func (f *uploadFile) spend(n int) error {
	if f.budget == nil {
		return nil // opened read-only: the write fails by itself
	}
	return f.budget.spend(n)
}

func (f *uploadFile) Close() error {
	var err error
	f.once.Do(func() {
		err = f.File.Close()
		f.leave()
	})
	return err
}

// Extract unpacks a tar stream into the upload, replacing whatever an
// earlier upload left there, so that finalising needs no extraction.
func (u *upload) Extract(ctx context.Context, r io.Reader) (draupnir.UploadSummary, error) {
	start := time.Now()
	leave, err := u.enter()
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer leave()
	dir := u.root.Name()
	if err := emptyDir(dir); err != nil {
		return draupnir.UploadSummary{}, draupnir.StorageError(fmt.Errorf("clearing the upload of image %d: %w", u.id, err))
	}
	limit, err := extractLimit(dir)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	cr := countio.NewReader(r)
	st, err := extract.Tar(ctx, cr, dir, extract.Options{UID: -1, GID: -1, MaxBytes: limit})
	err = spaceError(dir, err)
	sum := draupnir.UploadSummary{Bytes: cr.N(), Files: st.Files, Duration: time.Since(start)}
	if err != nil {
		// A half-extracted tree cannot be finalised, and after a full disk
		// it keeps the disk full: drop it, leaving the upload empty.
		if cerr := emptyDir(dir); cerr != nil && u.s != nil {
			u.s.log.Error("could not clear a failed streaming upload", "image", u.id, "err", cerr)
		}
		return sum, draupnir.StorageError(err)
	}
	if u.s != nil {
		u.s.log.Info("streaming upload done", "image", u.id, "bytes", sum.Bytes, "files", sum.Files, "duration", sum.Duration)
	}
	return sum, nil
}

// makeUploadDir creates the upload subvolume dir, private to root: a raw
// backup is production data, unanonymised. What is written into it is
// private too (0600 files, 0700 directories).
func makeUploadDir(dir string) error {
	if err := btrfs.CreateSubvolume(dir); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// emptyDir removes everything inside dir. File by file rather than a fresh
// subvolume: open uploads keep the directory they opened, and btrfs frees a
// deleted subvolume's space only when its cleaner gets to it, up to half a
// minute later.
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
