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

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images"
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
// authenticated principal. Every operation inside an image directory asks
// Uploads for the directory (which checks the principal and the image's state)
// and resolves paths below it with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS),
// so that neither "..", absolute paths nor symbolic links can leave it.
type namespace struct {
	ctx     context.Context
	p       draupnir.Principal
	uploads Uploads
	log     *slog.Logger
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

// begin opens the upload directory of loc's image. The caller must call the
// returned release (which closes the directory and ends the upload).
func (n *namespace) begin(loc location) (root int, release func(), err error) {
	if err := n.writable(loc); err != nil {
		return -1, nil, err
	}
	dir, end, err := n.uploads.BeginUpload(n.ctx, n.p, loc.id)
	if err != nil {
		return -1, nil, err
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		end()
		return -1, nil, fmt.Errorf("opening upload directory of image %d: %w", loc.id, err)
	}
	return fd, func() { unix.Close(fd); end() }, nil
}

// private keeps only the owner's bits of a mode a client asks for (on
// creation, scp -p or chmod): uploads are production data, and nothing in
// them is for group or others.
func private(m fs.FileMode) uint32 { return uint32(m.Perm() & 0o700) }

// resolveFlags keep every lookup below the upload directory and refuse any
// symbolic link on the way, including the last component.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

func openBeneath(root int, rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: resolveFlags}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	for {
		fd, err := unix.Openat2(root, rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, err
	}
}

// parent opens the directory holding rel (which must not be "") and returns
// it with rel's last component, a plain name.
func parent(root int, rel string) (int, string, error) {
	dir, base := path.Split(rel)
	fd, err := openBeneath(root, strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, base, err
}

// fsError turns a system error on loc into an error for the client; it never
// names real paths.
func fsError(loc location, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case unix.ENOENT:
		return draupnir.Errorf(draupnir.KindNotFound, "%s: no such file or directory", loc.vpath)
	case unix.EEXIST:
		return &draupnir.Error{Kind: draupnir.KindConflict, Msg: loc.vpath + ": file exists", Err: errno}
	case unix.ENOTEMPTY:
		return &draupnir.Error{Kind: draupnir.KindConflict, Msg: loc.vpath + ": directory not empty", Err: errno}
	case unix.ELOOP, unix.EXDEV:
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: symbolic links are not followed", loc.vpath)
	case unix.EISDIR:
		return draupnir.Errorf(draupnir.KindInvalid, "%s: is a directory", loc.vpath)
	case unix.ENOTDIR:
		return draupnir.Errorf(draupnir.KindInvalid, "%s: not a directory", loc.vpath)
	case unix.ENOSPC, unix.EDQUOT:
		return draupnir.Errorf(draupnir.KindInsufficientStorage, "%s: no space left on device", loc.vpath)
	case unix.EACCES, unix.EPERM:
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied", loc.vpath)
	case unix.ENAMETOOLONG:
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
		// The image directory itself is presented without asking Uploads:
		// clients stat a target before writing into it, and the write gives
		// the real answer.
		return virtualDir(path.Base(loc.vpath)), nil
	}
	root, release, err := n.begin(loc)
	if err != nil {
		return nil, err
	}
	defer release()
	pfd, base, err := parent(root, loc.rel)
	if err != nil {
		return nil, fsError(loc, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fsError(loc, err)
	}
	return &statInfo{name: base, st: st}, nil
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
	root, release, err := n.begin(loc)
	if err != nil {
		return nil, err
	}
	defer release()
	fd, err := openBeneath(root, loc.rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fsError(loc, err)
	}
	f := os.NewFile(uintptr(fd), loc.vpath)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fsError(loc, err)
	}
	infos := make([]fs.FileInfo, 0, len(names))
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // removed meanwhile
		}
		infos = append(infos, &statInfo{name: name, st: st})
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
	root, release, err := n.begin(loc)
	if err != nil {
		return err
	}
	defer release()
	if loc.rel == "" {
		if exclusive {
			return fsError(loc, unix.EEXIST)
		}
		return nil
	}
	pfd, base, err := parent(root, loc.rel)
	if err != nil {
		return fsError(loc, err)
	}
	defer unix.Close(pfd)
	err = unix.Mkdirat(pfd, base, private(mode))
	if err == unix.EEXIST && !exclusive {
		var st unix.Stat_t
		if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
	}
	if err != nil {
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
	root, release, err := n.begin(loc)
	if err != nil {
		return err
	}
	defer release()
	if loc.rel == "" {
		return draupnir.Errorf(draupnir.KindForbidden, "%s: permission denied: an image's upload directory cannot be removed", loc.vpath)
	}
	pfd, base, err := parent(root, loc.rel)
	if err != nil {
		return fsError(loc, err)
	}
	defer unix.Close(pfd)
	flags := 0
	if dir {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(pfd, base, flags); err != nil {
		return fsError(loc, err)
	}
	return nil
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
	root, release, err := n.begin(src)
	if err != nil {
		return err
	}
	defer release()
	sfd, sbase, err := parent(root, src.rel)
	if err != nil {
		return fsError(src, err)
	}
	defer unix.Close(sfd)
	dfd, dbase, err := parent(root, dst.rel)
	if err != nil {
		return fsError(dst, err)
	}
	defer unix.Close(dfd)
	flags := uint(unix.RENAME_NOREPLACE)
	if replace {
		flags = 0
	}
	if err := unix.Renameat2(sfd, sbase, dfd, dbase, flags); err != nil {
		return fsError(dst, err)
	}
	return nil
}

// Attrs are the attributes a client may set; nil fields stay unchanged.
type attrs struct {
	size  *int64
	mode  *fs.FileMode
	atime *time.Time
	mtime *time.Time
}

// Setstat changes the size, mode or times of the file p.
func (n *namespace) Setstat(p string, a attrs) error {
	loc, err := parsePath(p)
	if err != nil {
		return err
	}
	root, release, err := n.begin(loc)
	if err != nil {
		return err
	}
	defer release()
	flags := unix.O_RDONLY
	if a.size != nil {
		flags = unix.O_WRONLY
	}
	fd, err := openBeneath(root, loc.rel, flags, 0)
	if err != nil {
		return fsError(loc, err)
	}
	defer unix.Close(fd)
	return setAttrs(fd, loc, a)
}

func setAttrs(fd int, loc location, a attrs) error {
	if a.size != nil {
		if *a.size < 0 {
			return draupnir.Errorf(draupnir.KindInvalid, "%s: negative size", loc.vpath)
		}
		if err := unix.Ftruncate(fd, *a.size); err != nil {
			return fsError(loc, err)
		}
	}
	if a.mode != nil {
		// No set-id or sticky bits from clients, nor access for others.
		if err := unix.Fchmod(fd, private(*a.mode)); err != nil {
			return fsError(loc, err)
		}
	}
	if a.atime != nil || a.mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.atime != nil {
			ts[0] = unix.NsecToTimespec(a.atime.UnixNano())
		}
		if a.mtime != nil {
			ts[1] = unix.NsecToTimespec(a.mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
			return fsError(loc, err)
		}
	}
	return nil
}

// OpenFile opens the file p inside an image directory. flags are os.O_*
// flags; O_APPEND is ignored because writes carry their offsets. The upload
// stays open until the file is closed.
func (n *namespace) OpenFile(p string, flags int, mode fs.FileMode) (*uploadFile, error) {
	loc, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	if loc.depth == 3 && loc.rel == "" {
		return nil, draupnir.Errorf(draupnir.KindInvalid, "%s: is a directory", loc.vpath)
	}
	root, release, err := n.begin(loc)
	if err != nil {
		return nil, err
	}
	fd, err := openBeneath(root, loc.rel, flags&^os.O_APPEND, private(mode))
	if err != nil {
		release()
		return nil, fsError(loc, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		release()
		return nil, draupnir.Errorf(draupnir.KindInvalid, "%s: not a regular file", loc.vpath)
	}
	var budget *images.WriteBudget
	if flags&(os.O_WRONLY|os.O_RDWR) != 0 {
		if budget, err = images.NewWriteBudget(fd); err != nil {
			unix.Close(fd)
			release()
			return nil, err
		}
		n.log.Debug("ssh upload open", "principal", n.p.Name, "path", loc.vpath)
	}
	return &uploadFile{File: os.NewFile(uintptr(fd), loc.vpath), loc: loc, release: release, budget: budget}, nil
}

// uploadFile is an open file in an upload directory; closing it ends the
// upload it belongs to.
type uploadFile struct {
	*os.File
	loc     location
	once    sync.Once
	release func()
	// budget stops writes short of the data path's free-space reserve, so
	// that an upload larger than the disk cannot fill it and take the
	// state database down with it. Nil for files opened read-only.
	budget *images.WriteBudget
}

func (f *uploadFile) spend(n int) error {
	if f.budget == nil {
		return nil
	}
	return f.budget.Spend(n)
}

func (f *uploadFile) WriteAt(b []byte, off int64) (int, error) {
	if err := f.spend(len(b)); err != nil {
		return 0, err
	}
	n, err := f.File.WriteAt(b, off)
	if err != nil {
		err = fsError(f.loc, err)
	}
	return n, err
}

func (f *uploadFile) Write(b []byte) (int, error) {
	if err := f.spend(len(b)); err != nil {
		return 0, err
	}
	n, err := f.File.Write(b)
	if err != nil {
		err = fsError(f.loc, err)
	}
	return n, err
}

func (f *uploadFile) Close() error {
	var err error
	f.once.Do(func() {
		err = f.File.Close()
		f.release()
		if err != nil {
			err = fsError(f.loc, err)
		}
	})
	return err
}

// virtualDir is a directory of the namespace that exists only in it.
type virtualDir string

func (d virtualDir) Name() string       { return string(d) }
func (d virtualDir) Size() int64        { return 0 }
func (d virtualDir) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (d virtualDir) ModTime() time.Time { return time.Time{} }
func (d virtualDir) IsDir() bool        { return true }
func (d virtualDir) Sys() any           { return nil }

// statInfo is an fs.FileInfo from fstatat(2).
type statInfo struct {
	name string
	st   unix.Stat_t
}

func (i *statInfo) Name() string       { return i.name }
func (i *statInfo) Size() int64        { return i.st.Size }
func (i *statInfo) ModTime() time.Time { return time.Unix(i.st.Mtim.Unix()) }
func (i *statInfo) IsDir() bool        { return i.st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (i *statInfo) Sys() any           { return nil }
func (i *statInfo) Uid() uint32        { return i.st.Uid }
func (i *statInfo) Gid() uint32        { return i.st.Gid }
func (i *statInfo) Mode() fs.FileMode {
	m := fs.FileMode(i.st.Mode & 0o777)
	switch i.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if i.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if i.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if i.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
