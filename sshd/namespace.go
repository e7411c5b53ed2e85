package sshd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/draupnir-db/draupnir"
)

// uploadsRoot is the virtual directory that holds one directory per image.
const uploadsRoot = "/draupnir/image_uploads"

// location is a parsed virtual path. SSH clients see only this namespace:
//
//	/                                   lists "draupnir"
//	/draupnir                           lists "image_uploads"
//	/draupnir/image_uploads             (lists nothing)
//	/draupnir/image_uploads/<id>[/rel]  the upload directory of image id
type location struct {
	vpath string // cleaned, absolute virtual path
	depth int    // 0 "/", 1 "/draupnir", 2 uploadsRoot, 3 inside an image
	id    int64
	rel   string // below the image's directory; "" is the directory itself; never absolute, never ".."
}

// parsePath normalises a client-supplied path (relative paths are relative to
// "/") and maps it onto the namespace.
func parsePath(p string) (location, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return location{}, draupnir.Errorf(draupnir.KindInvalid, "invalid path: contains a NUL byte")
	}
	vp := path.Clean("/" + p)
	switch vp {
	case "/":
		return location{vpath: vp, depth: 0}, nil
	case "/draupnir":
		return location{vpath: vp, depth: 1}, nil
	case uploadsRoot:
		return location{vpath: vp, depth: 2}, nil
	}
	rest, ok := strings.CutPrefix(vp, uploadsRoot+"/")
	if !ok {
		return location{}, draupnir.Errorf(draupnir.KindNotFound, "%s: no such file or directory (uploads go to %s/<image id>)", vp, uploadsRoot)
	}
	idStr, rel, _ := strings.Cut(rest, "/")
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != idStr {
		return location{}, draupnir.Errorf(draupnir.KindNotFound, "%s: no such file or directory (%q is not an image id)", vp, idStr)
	}
	return location{vpath: vp, depth: 3, id: id, rel: rel}, nil
}

// namespace performs file operations on the virtual namespace for one
// authenticated principal in one session. Inside an image directory it
// speaks to that image's upload (draupnir.Upload), opened at the first
// operation there and kept until the session ends: the upload confines
// names to the image's directory, budgets and counts the bytes, and checks
// the image's state; the namespace only maps virtual paths and renders
// errors for the client.
type namespace struct {
	ctx     context.Context
	p       draupnir.Principal
	uploads draupnir.Uploads
	log     *slog.Logger

	mu   sync.Mutex
	open map[int64]draupnir.Upload // by image id
}

func newNamespace(ctx context.Context, p draupnir.Principal, uploads draupnir.Uploads, log *slog.Logger) *namespace {
	return &namespace{ctx: ctx, p: p, uploads: uploads, log: log, open: map[int64]draupnir.Upload{}}
}

// writable refuses principals that may not upload before Uploads is asked.
func (n *namespace) writable(loc location) error {
	if !n.p.Upload {
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: only the upload principal may write images", loc.vpath)
	}
	if loc.depth < 3 {
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: write into %s/<image id>", loc.vpath, uploadsRoot)
	}
	return nil
}

// upload returns the upload of loc's image, opening it at first use.
func (n *namespace) upload(loc location) (draupnir.Upload, error) {
	if err := n.writable(loc); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if u := n.open[loc.id]; u != nil {
		return u, nil
	}
	u, err := n.uploads.OpenUpload(n.ctx, n.p, loc.id)
	if err != nil {
		return nil, err
	}
	n.open[loc.id] = u
	return u, nil
}

// Close closes the uploads the session opened; files still open keep theirs
// until they are closed.
func (n *namespace) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, u := range n.open {
		if err := u.Close(); err != nil {
			n.log.Error("closing an upload failed", "image", id, "err", err)
		}
		delete(n.open, id)
	}
}

// fsError turns an upload's error about a file at loc into an error for the
// client, naming loc's virtual path and never a real one. Errors that are
// not about a file (the image's state, the disk budget) are already meant
// for the client.
func fsError(loc location, err error) error {
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		return err
	}
	var de *draupnir.Error
	if errors.As(pe.Err, &de) {
		return &draupnir.Error{Kind: de.Kind, Msg: loc.vpath + ": " + de.Msg, Err: err}
	}
	var errno syscall.Errno
	if !errors.As(pe.Err, &errno) {
		return fmt.Errorf("%s: %w", loc.vpath, err)
	}
	switch errno {
	case syscall.ENOENT:
		return draupnir.Errorf(draupnir.KindNotFound, "%s: no such file or directory", loc.vpath)
	case syscall.EEXIST:
		return &draupnir.Error{Kind: draupnir.KindConflict, Msg: loc.vpath + ": file exists", Err: errno}
	case syscall.ENOTEMPTY:
		return &draupnir.Error{Kind: draupnir.KindConflict, Msg: loc.vpath + ": directory not empty", Err: errno}
	case syscall.ELOOP, syscall.EXDEV:
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: symbolic links are not followed", loc.vpath)
	case syscall.EISDIR:
		return draupnir.Errorf(draupnir.KindInvalid, "%s: is a directory", loc.vpath)
	case syscall.ENOTDIR:
		return draupnir.Errorf(draupnir.KindInvalid, "%s: not a directory", loc.vpath)
	case syscall.ENOSPC, syscall.EDQUOT:
		return draupnir.Errorf(draupnir.KindInsufficientStorage, "%s: no space left on device", loc.vpath)
	case syscall.EACCES, syscall.EPERM:
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied", loc.vpath)
	case syscall.ENAMETOOLONG:
		return draupnir.Errorf(draupnir.KindInvalid, "%s: file name too long", loc.vpath)
	}
	return fmt.Errorf("%s: %w", loc.vpath, err)
}

// Stat describes the file at p without following symbolic links.
func (n *namespace) Stat(p string) (fs.FileInfo, error) {
	loc, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	if loc.depth < 3 || loc.rel == "" {
		// The image directory itself is presented without opening the
		// upload: clients stat a target before writing into it, and the
		// write gives the real answer.
		return virtualDir(path.Base(loc.vpath)), nil
	}
	u, err := n.upload(loc)
	if err != nil {
		return nil, err
	}
	info, err := u.Stat(loc.rel)
	if err != nil {
		return nil, fsError(loc, err)
	}
	return info, nil
}

// List returns the entries of the directory p.
func (n *namespace) List(p string) ([]fs.FileInfo, error) {
	loc, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	switch loc.depth {
	case 0:
		return []fs.FileInfo{virtualDir("draupnir")}, nil
	case 1:
		return []fs.FileInfo{virtualDir("image_uploads")}, nil
	case 2:
		return nil, nil
	}
	u, err := n.upload(loc)
	if err != nil {
		return nil, err
	}
	infos, err := u.ReadDir(loc.rel)
	if err != nil {
		return nil, fsError(loc, err)
	}
	return infos, nil
}

// Mkdir creates the directory p; an existing directory is an error only when
// exclusive is set.
func (n *namespace) Mkdir(p string, mode fs.FileMode, exclusive bool) error {
	loc, err := parsePath(p)
	if err != nil {
		return err
	}
	u, err := n.upload(loc)
	if err != nil {
		return err
	}
	if loc.rel == "" {
		if exclusive {
			return draupnir.Errorf(draupnir.KindConflict, "%s: file exists", loc.vpath)
		}
		return nil
	}
	if err := u.Mkdir(loc.rel, mode, exclusive); err != nil {
		return fsError(loc, err)
	}
	n.log.Debug("ssh mkdir", "principal", n.p.Name, "path", loc.vpath)
	return nil
}

// Remove deletes the file or empty directory p.
func (n *namespace) Remove(p string, dir bool) error {
	loc, err := parsePath(p)
	if err != nil {
		return err
	}
	u, err := n.upload(loc)
	if err != nil {
		return err
	}
	if loc.rel == "" {
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: an image's upload directory cannot be removed", loc.vpath)
	}
	if dir {
		err = u.RemoveDir(loc.rel)
	} else {
		err = u.Remove(loc.rel)
	}
	return fsError(loc, err)
}

// Rename moves a file within one image's directory; replace allows
// overwriting an existing target (posix-rename).
func (n *namespace) Rename(from, to string, replace bool) error {
	src, err := parsePath(from)
	if err != nil {
		return err
	}
	dst, err := parsePath(to)
	if err != nil {
		return err
	}
	if src.depth < 3 || dst.depth < 3 || src.id != dst.id || src.rel == "" || dst.rel == "" {
		return draupnir.Errorf(draupnir.KindForbidden, "rename %s to %s: permission denied: files can only be renamed within one image's directory", src.vpath, dst.vpath)
	}
	u, err := n.upload(src)
	if err != nil {
		return err
	}
	err = u.Rename(src.rel, dst.rel, replace)
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) && pe.Path == src.rel {
		return fsError(src, err)
	}
	return fsError(dst, err)
}

// Setstat changes the size, mode or times of the file p.
func (n *namespace) Setstat(p string, a draupnir.FileAttrs) error {
	loc, err := parsePath(p)
	if err != nil {
		return err
	}
	u, err := n.upload(loc)
	if err != nil {
		return err
	}
	return fsError(loc, u.SetAttrs(loc.rel, a))
}

// OpenFile opens the file p inside an image directory. flags are os.O_*
// flags; O_APPEND is ignored because writes carry their offsets. The file
// holds its image's finalising off until it is closed.
func (n *namespace) OpenFile(p string, flags int, mode fs.FileMode) (*uploadFile, error) {
	loc, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	if loc.depth == 3 && loc.rel == "" {
		return nil, draupnir.Errorf(draupnir.KindInvalid, "%s: is a directory", loc.vpath)
	}
	u, err := n.upload(loc)
	if err != nil {
		return nil, err
	}
	f, err := u.OpenFile(loc.rel, flags, mode)
	if err != nil {
		return nil, fsError(loc, err)
	}
	if flags&(os.O_WRONLY|os.O_RDWR) != 0 {
		n.log.Debug("ssh upload open", "principal", n.p.Name, "path", loc.vpath)
	}
	return &uploadFile{f: f, loc: loc}, nil
}

// uploadFile is a file open in an upload, with errors for the client.
type uploadFile struct {
	f   draupnir.UploadFile
	loc location
}

func (f *uploadFile) ReadAt(b []byte, off int64) (int, error) { return f.f.ReadAt(b, off) }

func (f *uploadFile) WriteAt(b []byte, off int64) (int, error) {
	n, err := f.f.WriteAt(b, off)
	if err != nil {
		err = fsError(f.loc, err)
	}
	return n, err
}

func (f *uploadFile) Write(b []byte) (int, error) {
	n, err := f.f.Write(b)
	if err != nil {
		err = fsError(f.loc, err)
	}
	return n, err
}

func (f *uploadFile) Close() error {
	if err := f.f.Close(); err != nil {
		return fsError(f.loc, err)
	}
	return nil
}

// virtualDir is a directory of the namespace that exists only in it.
type virtualDir string

func (d virtualDir) Name() string       { return string(d) }
func (d virtualDir) Size() int64        { return 0 }
func (d virtualDir) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (d virtualDir) ModTime() time.Time { return time.Time{} }
func (d virtualDir) IsDir() bool        { return true }
func (d virtualDir) Sys() any           { return nil }
