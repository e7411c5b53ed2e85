// Package saferoot opens and changes files beneath a directory, as os.Root
// does, under the stricter rules that files from hostile clients need: no
// symbolic link is followed anywhere on a path (not even one that stays
// inside the directory), no path crosses onto another mount, and no name
// leaves the directory. Paths are resolved by the kernel with openat2(2)
// (RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS,
// RESOLVE_NO_XDEV) and, where openat2 is missing or filtered, one component
// at a time with O_NOFOLLOW, refusing a change of device.
//
// os.Root itself cannot be used for this: it follows symbolic links that stay
// inside the root and crosses mount points, and it exposes no descriptor to
// resolve with openat2. Root keeps its method names and semantics where
// the rules allow, so code reads as it would with os.Root. Errors are
// *fs.PathError wrapping the errno (ELOOP for a symbolic link, EXDEV for a
// mount point or a name that leaves the root).
package saferoot

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Root is an open directory beneath which files are resolved. It is safe for
// concurrent use.
type Root struct {
	fd   int
	dev  uint64
	name string
	// walk is set once openat2 has failed as unsupported (old kernel or a
	// seccomp filter): every later lookup walks instead.
	walk atomic.Bool
}

// Open opens the directory dir as a Root. dir itself must not be a
// symbolic link.
func Open(dir string) (*Root, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) && isSymlink(unix.AT_FDCWD, dir) {
			err = unix.ELOOP
		}
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	return &Root{fd: fd, dev: st.Dev, name: dir}, nil
}

// Close closes the root's directory.
func (r *Root) Close() error { return unix.Close(r.fd) }

// Name returns the directory given to Open.
func (r *Root) Name() string { return r.name }

// FD returns the descriptor of the root's directory, for *at calls on plain
// names (a single component cannot leave a directory; use O_NOFOLLOW).
func (r *Root) FD() int { return r.fd }

// WalkOnly makes r resolve paths one component at a time, as it does on
// kernels without openat2; tests use it to cover that path.
func (r *Root) WalkOnly() { r.walk.Store(true) }

// clean checks name and returns it relative to the root without "." or ".."
// elements; "" is the root itself. Names that leave the root are EXDEV, as
// openat2 answers them.
func clean(op, name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", &fs.PathError{Op: op, Path: name, Err: unix.EINVAL}
	}
	if strings.HasPrefix(name, "/") {
		return "", &fs.PathError{Op: op, Path: name, Err: unix.EXDEV}
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", &fs.PathError{Op: op, Path: name, Err: unix.EXDEV}
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// OpenFD opens name beneath r with open(2) flags and mode, and returns the
// new descriptor; "" and "." open the root's directory again. O_NOFOLLOW
// and O_CLOEXEC are always added.
func (r *Root) OpenFD(name string, flags int, mode uint32) (int, error) {
	rel, err := clean("open", name)
	if err != nil {
		return -1, err
	}
	fd, err := r.open(rel, flags, mode)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return fd, nil
}

// open resolves rel (clean) and returns a bare errno on failure.
func (r *Root) open(rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !r.walk.Load() {
		how := unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		}
		if flags&(unix.O_CREAT|unix.O_TMPFILE) != 0 {
			how.Mode = uint64(mode)
		}
		for {
			fd, err := unix.Openat2(r.fd, rel, &how)
			switch err {
			case nil:
				return fd, nil
			case unix.EINTR, unix.EAGAIN:
				continue
			case unix.ENOTDIR:
				// O_NOFOLLOW|O_DIRECTORY on a link at the end: say
				// ELOOP, as for a link anywhere else on the path.
				if l, lerr := unix.Openat2(r.fd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: how.Resolve}); lerr == nil {
					var st unix.Stat_t
					if unix.Fstat(l, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
						err = unix.ELOOP
					}
					unix.Close(l)
				}
				return -1, err
			case unix.ENOSYS, unix.EPERM, unix.E2BIG:
				// Unsupported, or a seccomp filter: walk from now on. A
				// real EPERM comes back from the walk too.
				r.walk.Store(true)
			default:
				return -1, err
			}
			break
		}
	}
	return r.walkOpen(rel, flags, mode)
}

// walkOpen opens rel one component at a time, refusing symbolic links and
// any component on another device than the root.
func (r *Root) walkOpen(rel string, flags int, mode uint32) (int, error) {
	if rel == "." {
		return r.check(unix.Openat(r.fd, ".", flags, mode))
	}
	dir, base := path.Split(rel)
	pfd, err := r.walkDir(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return -1, err
	}
	defer r.release(pfd)
	fd, err := unix.Openat(pfd, base, flags, mode)
	if errors.Is(err, unix.ENOTDIR) && isSymlink(pfd, base) {
		err = unix.ELOOP // say what openat2 would say
	}
	return r.check(fd, err)
}

// check refuses fd if it is a symbolic link (O_PATH|O_NOFOLLOW opens the
// link itself) or lies on another device than the root.
func (r *Root) check(fd int, err error) (int, error) {
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		unix.Close(fd)
		return -1, unix.ELOOP
	case st.Dev != r.dev:
		unix.Close(fd)
		return -1, unix.EXDEV
	}
	return fd, nil
}

// walkDir opens directory dir ("" is the root, returned as is) component by
// component. Release the result with r.release.
func (r *Root) walkDir(dir string) (int, error) {
	cur := r.fd
	if dir == "" {
		return cur, nil
	}
	for _, c := range strings.Split(dir, "/") {
		next, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) && isSymlink(cur, c) {
			err = unix.ELOOP
		}
		r.release(cur)
		if next, err = r.check(next, err); err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// release closes fd unless it is the root's.
func (r *Root) release(fd int) {
	if fd != r.fd {
		unix.Close(fd)
	}
}

func isSymlink(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// OpenFile opens name beneath r, as os.Root.OpenFile does, but never
// through or onto a symbolic link.
func (r *Root) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	fd, err := r.OpenFD(name, flag, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Parent opens the directory that holds name, which must not be the root
// itself, and returns its descriptor (to close) and name's last element, a
// plain name for *at calls with AT_SYMLINK_NOFOLLOW or O_NOFOLLOW.
func (r *Root) Parent(name string) (dirfd int, base string, err error) {
	rel, err := clean("open", name)
	if err != nil {
		return -1, "", err
	}
	if rel == "" {
		return -1, "", &fs.PathError{Op: "open", Path: name, Err: unix.EINVAL}
	}
	dir, base := path.Split(rel)
	fd, err := r.open(strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, "", &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return fd, base, nil
}

// at runs f on name's parent and last element.
func (r *Root) at(op, name string, f func(dirfd int, base string) error) error {
	pfd, base, err := r.Parent(name)
	if err != nil {
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			pe.Op = op
		}
		return err
	}
	defer unix.Close(pfd)
	if err := f(pfd, base); err != nil {
		return &fs.PathError{Op: op, Path: name, Err: err}
	}
	return nil
}

// Lstat describes name without following a symbolic link; the root itself
// is "" or ".".
func (r *Root) Lstat(name string) (fs.FileInfo, error) {
	rel, err := clean("lstat", name)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if rel == "" {
		if err := unix.Fstat(r.fd, &st); err != nil {
			return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
		}
		return &Info{name: ".", st: st}, nil
	}
	err = r.at("lstat", name, func(dirfd int, base string) error {
		return unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return nil, err
	}
	return &Info{name: path.Base(rel), st: st}, nil
}

// ReadDir describes the entries of directory name, unsorted, without
// following symbolic links. Entries removed meanwhile are left out.
func (r *Root) ReadDir(name string) ([]fs.FileInfo, error) {
	f, err := r.OpenFile(name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	infos := make([]fs.FileInfo, 0, len(names))
	for _, n := range names {
		var st unix.Stat_t
		if unix.Fstatat(int(f.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		infos = append(infos, &Info{name: n, st: st})
	}
	return infos, nil
}

// Mkdir creates directory name with perm (less the umask).
func (r *Root) Mkdir(name string, perm fs.FileMode) error {
	return r.at("mkdir", name, func(dirfd int, base string) error {
		return unix.Mkdirat(dirfd, base, uint32(perm.Perm()))
	})
}

// MkdirAll creates directory name and any missing parents with perm and
// returns a descriptor of it (to close). made, if not nil, is called with
// a descriptor of each directory it creates, e.g. to set its owner.
func (r *Root) MkdirAll(name string, perm uint32, made func(fd int) error) (int, error) {
	rel, err := clean("mkdir", name)
	if err != nil {
		return -1, err
	}
	cur := r.fd
	if rel == "" {
		return r.check(unix.Dup(r.fd))
	}
	for _, c := range strings.Split(rel, "/") {
		err := unix.Mkdirat(cur, c, perm)
		created := err == nil
		if err != nil && !errors.Is(err, unix.EEXIST) {
			r.release(cur)
			return -1, &fs.PathError{Op: "mkdir", Path: name, Err: err}
		}
		next, err := unix.Openat(cur, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) && isSymlink(cur, c) {
			err = unix.ELOOP
		}
		r.release(cur)
		if next, err = r.check(next, err); err != nil {
			return -1, &fs.PathError{Op: "mkdir", Path: name, Err: err}
		}
		if created && made != nil {
			if err := made(next); err != nil {
				unix.Close(next)
				return -1, &fs.PathError{Op: "mkdir", Path: name, Err: err}
			}
		}
		cur = next
	}
	return cur, nil
}

// Remove removes the file (not directory) name.
func (r *Root) Remove(name string) error {
	return r.at("remove", name, func(dirfd int, base string) error {
		return unix.Unlinkat(dirfd, base, 0)
	})
}

// RemoveDir removes the empty directory name.
func (r *Root) RemoveDir(name string) error {
	return r.at("rmdir", name, func(dirfd int, base string) error {
		return unix.Unlinkat(dirfd, base, unix.AT_REMOVEDIR)
	})
}

// Rename renames oldname to newname; an existing newname is replaced only
// if replace is set (otherwise EEXIST).
func (r *Root) Rename(oldname, newname string, replace bool) error {
	odir, obase, err := r.Parent(oldname)
	if err != nil {
		return err
	}
	defer unix.Close(odir)
	ndir, nbase, err := r.Parent(newname)
	if err != nil {
		return err
	}
	defer unix.Close(ndir)
	flags := uint(unix.RENAME_NOREPLACE)
	if replace {
		flags = 0
	}
	if err := unix.Renameat2(odir, obase, ndir, nbase, flags); err != nil {
		return &fs.PathError{Op: "rename", Path: newname, Err: err}
	}
	return nil
}

// Info is an fs.FileInfo from lstat(2).
type Info struct {
	name string
	st   unix.Stat_t
}

func (i *Info) Name() string       { return i.name }
func (i *Info) Size() int64        { return i.st.Size }
func (i *Info) ModTime() time.Time { return time.Unix(i.st.Mtim.Unix()) }
func (i *Info) IsDir() bool        { return i.st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (i *Info) Sys() any           { return &i.st }
func (i *Info) Uid() uint32        { return i.st.Uid }
func (i *Info) Gid() uint32        { return i.st.Gid }
func (i *Info) Mode() fs.FileMode {
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
