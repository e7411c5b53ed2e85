package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
// that p may upload into the image now. The first call that writes marks
// the image uploading (a failed one too, its error cleared: a new upload is
// how a failed upload is fixed). Calls check the image's state again only
// once a finalise or destroy has begun since (the service's upload epoch
// moved), so that a session does not query the state database for every
// file operation.
func (s *Service) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	if err := requireUpload(p, "upload into images"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	err := s.admitLocked(ctx, id, false)
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

// admitLocked checks that image id accepts uploads now (it is created,
// uploading or failed) and, for a write, marks it uploading. s.mu is held.
func (s *Service) admitLocked(ctx context.Context, id int64, write bool) error {
	if _, running := s.jobs[id]; running {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is being finalised; uploads are closed", id)
	}
	if s.destroys[id] {
		return destroyingError(id)
	}
	var r *row
	var err error
	ok := false
	if write {
		r, ok, err = s.store.startUpload(ctx, id)
	} else if r, err = s.store.get(ctx, id); err == nil {
		ok = r.State.AcceptsUploads()
	}
	if err != nil {
		return err
	}
	if !ok {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is %s; uploads are closed", id, r.State)
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

	mu      sync.Mutex
	epoch   uint64 // s.uploadEpoch when the state was last checked
	writing bool   // the image has been marked uploading since epoch
	refs    int    // calls and files in progress; the root stays open for them
	closed  bool
}

var errClosed = errors.New("the upload is closed")

// enter begins a call, one that writes if write is set: it checks that the
// image still accepts uploads and counts the call as in progress (finalise
// waits for it) until leave.
func (u *upload) enter(write bool) (leave func(), err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errClosed
	}
	if s := u.s; s != nil {
		s.mu.Lock()
		if u.epoch != s.uploadEpoch {
			u.writing = false
		}
		if _, running := s.jobs[u.id]; running || s.destroys[u.id] || u.epoch != s.uploadEpoch || (write && !u.writing) {
			if err = s.admitLocked(u.ctx, u.id, write); err == nil {
				u.epoch = s.uploadEpoch
				u.writing = u.writing || write
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
	leave, err := u.enter(false)
	if err != nil {
		return nil, err
	}
	defer leave()
	return u.root.Lstat(name)
}

func (u *upload) ReadDir(name string) ([]fs.FileInfo, error) {
	leave, err := u.enter(false)
	if err != nil {
		return nil, err
	}
	defer leave()
	return u.root.ReadDir(name)
}

func (u *upload) Mkdir(name string, perm fs.FileMode, exclusive bool) error {
	leave, err := u.enter(true)
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
	leave, err := u.enter(true)
	if err != nil {
		return err
	}
	defer leave()
	return u.root.Remove(name)
}

func (u *upload) RemoveDir(name string) error {
	leave, err := u.enter(true)
	if err != nil {
		return err
	}
	defer leave()
	return u.root.RemoveDir(name)
}

func (u *upload) Rename(oldname, newname string, replace bool) error {
	leave, err := u.enter(true)
	if err != nil {
		return err
	}
	defer leave()
	return u.root.Rename(oldname, newname, replace)
}

func (u *upload) SetAttrs(name string, a draupnir.FileAttrs) error {
	leave, err := u.enter(true)
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
	leave, err := u.enter(flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC) != 0)
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
	leave, err := u.enter(true)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer leave()
	dir := u.root.Name()
	before, err := u.top()
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
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
	sum := draupnir.UploadSummary{Bytes: cr.N(), Files: st.Files, Duration: time.Since(start), Replaced: before}
	if err != nil {
		// A half-extracted tree cannot be finalised, and after a full disk
		// it keeps the disk full: drop it, leaving the upload empty.
		if cerr := emptyDir(dir); cerr != nil && u.s != nil {
			u.s.log.Error("could not clear a failed streaming upload", "image", u.id, "err", cerr)
		}
		return sum, draupnir.StorageError(err)
	}
	if sum.Holds, err = u.top(); err != nil {
		return sum, err
	}
	u.logf("streaming upload done", "bytes", sum.Bytes, "files", sum.Files, "duration", sum.Duration, "replaced", len(before))
	return sum, nil
}

// Store writes r as the archive name at the top of the upload, through a
// temporary file, so that a broken stream leaves an earlier file of that
// name as it was.
func (u *upload) Store(ctx context.Context, name string, r io.Reader, replace bool) (draupnir.UploadSummary, error) {
	start := time.Now()
	if err := checkStoreName(name); err != nil {
		return draupnir.UploadSummary{}, err
	}
	leave, err := u.enter(true)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	defer leave()
	before, err := u.top()
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	sum := draupnir.UploadSummary{Name: name, Files: 1}
	if replace {
		if err := emptyDir(u.root.Name()); err != nil {
			return sum, draupnir.StorageError(fmt.Errorf("clearing the upload of image %d: %w", u.id, err))
		}
		sum.Replaced = before
	} else if slices.Contains(before, name) {
		sum.Replaced = []string{name}
	}
	tmp := fmt.Sprintf(".%s.%x.partial", name, rand.Uint64())
	f, err := u.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return sum, fmt.Errorf("storing %s in the upload of image %d: %w", name, u.id, err)
	}
	cr := countio.NewReader(r)
	err = copyBudgeted(ctx, f, cr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = u.root.Rename(tmp, name, true)
	}
	sum.Bytes, sum.Duration = cr.N(), time.Since(start)
	if err != nil {
		u.root.Remove(tmp)
		return sum, draupnir.StorageError(err)
	}
	if sum.Holds, err = u.top(); err != nil {
		return sum, err
	}
	u.logf("upload of a file done", "name", name, "bytes", sum.Bytes, "duration", sum.Duration, "replaced", sum.Replaced)
	return sum, nil
}

// checkStoreName accepts the plain name of a tar archive.
func checkStoreName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 || !extract.IsArchive(name) {
		return &draupnir.Error{Kind: draupnir.KindInvalid, Field: "name", Msg: fmt.Sprintf(
			"%q is not the name of a tar archive: upload an archive under its own file name (base.tar.gz, pg_wal.tar.gz, backup.tar.zst…); "+
				"a data directory goes by scp -r", name)}
	}
	return nil
}

// copyBudgeted copies r into f within the data path's free-space budget.
func copyBudgeted(ctx context.Context, f *os.File, r io.Reader) error {
	budget, err := newWriteBudget(int(f.Fd()))
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := budget.spend(n); err != nil {
				return err
			}
			if _, err := f.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("reading the upload: %w", rerr)
		}
	}
}

// top returns the names at the top of the upload, sorted, without the
// temporary files of uploads in progress.
func (u *upload) top() ([]string, error) {
	infos, err := u.root.ReadDir("")
	if err != nil {
		return nil, fmt.Errorf("listing the upload of image %d: %w", u.id, err)
	}
	var names []string
	for _, fi := range infos {
		if !isPartial(fi.Name()) {
			names = append(names, fi.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

func isPartial(name string) bool {
	return strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".partial")
}

func (u *upload) logf(msg string, args ...any) {
	if u.s != nil {
		u.s.log.Info(msg, append([]any{"image", u.id}, args...)...)
	}
}

// checkUpload refuses to finalise image id, without changing its state,
// when its upload cannot be a backup: it is empty, holds WAL only, or holds
// neither an archive nor a PG_VERSION at its top or one level down (scp -r
// of the wrong directory). It looks at names only; finalise checks the rest.
// An image that is not to be finalised at all is left for the state change
// to refuse.
func (s *Service) checkUpload(ctx context.Context, id int64) error {
	r, err := s.store.get(ctx, id)
	if err != nil {
		return err
	}
	if !r.State.AcceptsUploads() {
		return nil
	}
	dir := s.uploadDir(id)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading the upload of image %d: %w", id, err)
	}
	if reason := notABackup(dir, ents); reason != "" {
		return draupnir.Errorf(draupnir.KindUnprocessable, "image %d cannot be finalised yet, and is left as it was: %s", id, reason)
	}
	return nil
}

// uploadHint says how to upload a backup.
const uploadHint = "upload base.tar.gz and pg_wal.tar.gz from pg_basebackup -Ft (images upload N FILE…, or scp), " +
	"another tarball of a data directory, or the data directory itself (scp -r)"

// notABackup says why the upload in dir, whose entries are ents, cannot be a
// backup, or returns "" if it may be one.
func notABackup(dir string, ents []fs.DirEntry) string {
	if len(ents) == 0 {
		return "nothing has been uploaded into it; " + uploadHint
	}
	var names, wal, dirs []string
	for _, e := range ents {
		name := e.Name()
		names = append(names, name)
		switch {
		case name == "PG_VERSION":
			return ""
		case e.Type().IsRegular() && extract.IsArchive(name):
			if !isWALArchive(name) {
				return ""
			}
			wal = append(wal, name)
		case e.IsDir():
			if _, err := os.Lstat(filepath.Join(dir, name, "PG_VERSION")); err == nil {
				return ""
			}
			dirs = append(dirs, name+"/")
		}
	}
	if len(wal) == len(names) {
		return fmt.Sprintf("the upload holds only %s, the WAL of a backup, and not the backup itself; upload base.tar.gz (or base.tar) from the same pg_basebackup too", strings.Join(wal, ", "))
	}
	if len(dirs) == 1 && len(names) == 1 {
		inside := ""
		if sub, err := os.ReadDir(filepath.Join(dir, dirs[0])); err == nil {
			for _, e := range sub {
				if e.Type().IsRegular() && extract.IsArchive(e.Name()) {
					inside = fmt.Sprintf(" It holds %s: upload the archives themselves (images upload N FILE…, or scp without -r), not their directory.", e.Name())
					break
				}
			}
		}
		return fmt.Sprintf("the upload holds a directory, %s, with no PG_VERSION in it, so it is not a data directory (scp -r the one that holds PG_VERSION).%s Upload again: new files are added beside it, or remove it with sftp first", dirs[0], inside)
	}
	if len(names) > 10 {
		names = append(names[:10], "…")
	}
	return fmt.Sprintf("the upload holds no backup: no archive (.tar, .tar.gz…) other than the WAL and no PG_VERSION at its top or one directory down among %s; %s",
		strings.Join(names, ", "), uploadHint)
}

// isWALArchive reports whether name is the WAL archive that pg_basebackup
// -Ft -X stream writes beside the base archive.
func isWALArchive(name string) bool { return strings.HasPrefix(strings.ToLower(name), "pg_wal.tar") }

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
