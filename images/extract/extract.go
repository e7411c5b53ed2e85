// Package extract unpacks uploaded PostgreSQL base backups (tar archives,
// plain or compressed) into a directory, safely and as a stream. The archives
// come from users and the service runs as root, so every member is treated as
// hostile: nothing may be written outside the target directory or through a
// symbolic link, no link of either kind and no device node is made (a data
// directory that an image can use holds none), everything extracted is
// private to its owner, and a malformed or truncated archive is reported as
// such, naming the member at fault.
package extract

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/countio"
	"github.com/draupnir-db/draupnir/internal/saferoot"
)

// Options tune an extraction.
type Options struct {
	// UID and GID own everything extracted (the postgres OS user); -1
	// leaves that id as the extracting process's.
	UID, GID int
	// MaxEntries bounds the number of archive members; 0 means
	// DefaultMaxEntries.
	MaxEntries int
	// MaxBytes bounds the total size of the regular files extracted (what
	// the archive expands to); 0 means unlimited.
	MaxBytes int64

	// walkOnly makes the extractor resolve paths component by component, as
	// it does on kernels without openat2; tests use it to cover that path.
	walkOnly bool
}

// ErrTooLarge is wrapped by the error for an archive that expands beyond
// Options.MaxBytes, so that a caller who derived the limit from free disk
// space can say so.
var ErrTooLarge = errors.New("size limit reached")

// DefaultMaxEntries is the member limit when Options.MaxEntries is 0.
const DefaultMaxEntries = 10_000_000

// Stats describes what an extraction wrote.
type Stats struct {
	Bytes int64 // uncompressed bytes of regular files
	Files int   // regular files
	Dirs  int   // directory members
}

const (
	copyBufferSize = 1 << 20
	maxNameLen     = unix.PathMax - 1
	// endMarkerLen is the size of tar's end-of-archive marker: two zero
	// blocks.
	endMarkerLen = 2 * 512
)

// Tar extracts the tar stream r, plain or compressed (see Decompress), under
// dir, which must exist and must not be a symbolic link. Members are streamed
// to disk, never held in memory.
//
// Unsafe members (absolute names, names that leave dir, symbolic and hard
// links, device and fifo nodes, names with NUL, writes through a symlink) and
// malformed or truncated archives are *draupnir.Error of KindUnprocessable
// naming the member and the reason; a full disk is KindInsufficientStorage.
// Files get mode 0600 and directories 0700 whatever the archive says: the
// data is private, and that is what PostgreSQL wants of a data directory.
// Existing regular files and symlinks are replaced. dir itself is left as it
// is (its owner and mode are the caller's business). Nothing is synced: the
// caller syncs once at the end.
func Tar(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	src := &sourceReader{r: r}
	plain, err := Decompress(src)
	if err != nil {
		return Stats{}, classifyRead(ctx, src, err)
	}
	defer plain.Close()

	// A data directory's pg_wal, where WAL archives go, may itself be a
	// link planted by the upload.
	root, err := saferoot.Open(dir)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return Stats{}, draupnir.Errorf(draupnir.KindUnprocessable,
			"cannot extract into %s: it is a symbolic link or not a directory", path.Base(dir))
	}
	if err != nil {
		return Stats{}, fmt.Errorf("opening extraction directory: %w", err)
	}
	if opts.walkOnly {
		root.WalkOnly()
	}
	x := &extractor{
		ctx:    ctx,
		opts:   opts,
		root:   root,
		cached: -1,
		buf:    make([]byte, copyBufferSize),
		umask:  currentUmask(),
	}
	if x.opts.MaxEntries <= 0 {
		x.opts.MaxEntries = DefaultMaxEntries
	}
	x.chown = (opts.UID >= 0 && opts.UID != os.Geteuid()) || (opts.GID >= 0 && opts.GID != os.Getegid())
	defer x.close()

	return x.run(countio.NewReader(plain), src)
}

// extractor holds the state of one Tar call.
type extractor struct {
	ctx   context.Context
	opts  Options
	root  *saferoot.Root // the target directory
	chown bool           // whether files need an fchown
	umask uint32
	buf   []byte
	stats Stats

	// cachedPath/cached is the directory last used as a parent: tar
	// archives list a directory's files together, so this saves a path
	// lookup per file.
	cachedPath string
	cached     int
}

func (x *extractor) close() {
	if x.cached >= 0 {
		unix.Close(x.cached)
	}
	x.root.Close()
}

func (x *extractor) run(cr *countio.Reader, src *sourceReader) (Stats, error) {
	tr := tar.NewReader(cr)
	var entries int
	var endOfLast int64 // stream offset at the end of the last member's data
	for {
		if err := x.ctx.Err(); err != nil {
			return x.stats, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, tar.ErrInsecurePath) {
			err = nil // our own checks below are stricter
		}
		if err == io.EOF {
			// archive/tar accepts a stream that simply stops between
			// members; an upload cut at such a point must not pass.
			if cr.N()-endOfLast < endMarkerLen {
				return x.stats, draupnir.Errorf(draupnir.KindUnprocessable,
					"truncated archive: it ends without tar's end-of-archive marker (was the upload complete?)")
			}
			return x.stats, x.drain(cr, src)
		}
		if err != nil {
			return x.stats, classifyRead(x.ctx, src, err)
		}
		entries++
		if entries > x.opts.MaxEntries {
			return x.stats, draupnir.Errorf(draupnir.KindUnprocessable,
				"archive has more than %d members", x.opts.MaxEntries)
		}
		if err := x.member(tr, hdr); err != nil {
			if isReadErr(err) {
				return x.stats, classifyRead(x.ctx, src, fmt.Errorf("tar member %s: %w", quote(hdr.Name), err))
			}
			return x.stats, err
		}
		endOfLast = cr.N()
	}
}

// maxTrailing bounds the bytes read after tar's end-of-archive marker. tar
// pads archives to its record size (10 KiB by default); more than this is
// not padding.
const maxTrailing = 64 << 20

// drain reads the plain stream to its end, so that the decompressor verifies
// its checksums over everything extracted: a corrupt upload must fail even
// when the damage did not break the tar structure.
func (x *extractor) drain(cr *countio.Reader, src *sourceReader) error {
	lr := &io.LimitedReader{R: cr, N: maxTrailing + 1}
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		_, err := lr.Read(x.buf)
		if err == io.EOF {
			if lr.N <= 0 {
				return draupnir.Errorf(draupnir.KindUnprocessable,
					"more than %d MiB of data after the end of the tar archive", maxTrailing>>20)
			}
			return nil
		}
		if err != nil {
			return classifyRead(x.ctx, src, fmt.Errorf("after the end of the tar archive: %w", err))
		}
	}
}

// readErr marks errors from reading the archive, as opposed to writing files.
type readErr struct{ err error }

func (e readErr) Error() string { return e.err.Error() }
func (e readErr) Unwrap() error { return e.err }

func isReadErr(err error) bool {
	var r readErr
	return errors.As(err, &r)
}

// classifyRead turns an error met while reading the archive into one for the
// client: cancellation stays itself, a failing upload file is internal, and
// anything else is the archive's fault.
func classifyRead(ctx context.Context, src *sourceReader, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("extraction stopped: %w", ctxErr)
	}
	if src.err != nil && src.err != io.EOF {
		return fmt.Errorf("reading the upload: %w", src.err)
	}
	if draupnir.KindOf(err) != draupnir.KindInternal {
		return err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return draupnir.Errorf(draupnir.KindUnprocessable, "truncated archive: %v (was the upload complete?)", err)
	}
	return draupnir.Errorf(draupnir.KindUnprocessable, "invalid archive: %v", err)
}

// member extracts one archive member.
func (x *extractor) member(tr *tar.Reader, hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil // metadata for the archive, nothing to write
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return unsafeMember(hdr.Name, "device and fifo nodes are not allowed")
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	default:
		return unsafeMember(hdr.Name, fmt.Sprintf("unsupported member type %q", hdr.Typeflag))
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return unsafeMember(hdr.Name, err.Error())
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return nil // "./": the target directory itself, which is the caller's
		}
		return unsafeMember(hdr.Name, "names the upload directory itself")
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(hdr.Name, name)
	case tar.TypeSymlink:
		return unsafeMember(hdr.Name, "symbolic links are not allowed: "+LinkReason(name))
	case tar.TypeLink:
		return unsafeMember(hdr.Name, "hard links are not allowed: PostgreSQL makes none in a data directory, and "+
			"two names for one file would let a write to one change the other")
	default:
		return x.file(tr, hdr, name)
	}
}

// Modes of everything extracted: private to the owner, as PostgreSQL
// requires of a data directory (it accepts no wider than 0750/0640 either).
const (
	fileMode = 0o600
	dirMode  = 0o700
)

// LinkReason says why a symbolic link at rel (a slash-separated path relative
// to the data directory) cannot be part of an image. PostgreSQL itself makes links only for tablespaces (pg_tblspc/<oid>) and
// for a pg_wal kept elsewhere (initdb --waldir); both point outside the data
// directory, to files that are not in the upload. Any other link is nothing
// PostgreSQL needs, and once the tree is moved or served it could reach
// another image's or instance's files, or the host's.
func LinkReason(rel string) string {
	switch {
	case path.Base(path.Dir(rel)) == "pg_tblspc":
		return "the backup uses tablespaces, which draupnir does not support"
	case path.Base(rel) == "pg_wal" || path.Base(rel) == "pg_xlog":
		return "pg_wal is kept outside the data directory (initdb --waldir); upload a backup made with pg_basebackup, which includes the WAL"
	}
	return "a PostgreSQL data directory needs none, and a link could reach files outside the image"
}

// cleanName checks a member name and returns it relative to the target
// directory, cleaned, without any "..".
func cleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("name contains a NUL byte")
	case len(name) > maxNameLen:
		return "", fmt.Errorf("name is longer than %d bytes", maxNameLen)
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute name")
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", errors.New("name leaves the upload")
	}
	return clean, nil
}

func unsafeMember(name, reason string) error {
	return draupnir.Errorf(draupnir.KindUnprocessable, "unsafe tar member %s: %s", quote(name), reason)
}

// quote renders a member name for a message, shortened if it is huge.
func quote(name string) string {
	const max = 200
	if len(name) > max {
		return strconv.Quote(name[:max]) + "…"
	}
	return strconv.Quote(name)
}

// fsError turns a failed system call on member name into an error for the
// client where the archive or the disk is at fault.
func fsError(name, op string, err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return draupnir.Errorf(draupnir.KindInsufficientStorage,
			"no space left while extracting tar member %s: %w", quote(name), err)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return draupnir.Errorf(draupnir.KindUnprocessable,
			"unsafe tar member %s: its path goes through a symbolic link: %w", quote(name), err)
	case errors.Is(err, unix.ENOTDIR):
		return draupnir.Errorf(draupnir.KindUnprocessable,
			"unsafe tar member %s: its path goes through something that is not a directory: %w", quote(name), err)
	case errors.Is(err, unix.EISDIR), errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTEMPTY):
		return draupnir.Errorf(draupnir.KindUnprocessable,
			"tar member %s conflicts with an existing directory: %w", quote(name), err)
	case errors.Is(err, unix.ENAMETOOLONG):
		return draupnir.Errorf(draupnir.KindUnprocessable, "tar member %s: name too long: %w", quote(name), err)
	}
	return fmt.Errorf("extracting tar member %s: %s: %w", quote(name), op, err)
}

// file writes a regular file, replacing any file or symlink of that name.
func (x *extractor) file(tr *tar.Reader, hdr *tar.Header, name string) error {
	if hdr.Size < 0 {
		return unsafeMember(hdr.Name, "negative size")
	}
	if x.opts.MaxBytes > 0 && hdr.Size > x.opts.MaxBytes-x.stats.Bytes {
		return draupnir.Errorf(draupnir.KindUnprocessable,
			"archive expands beyond %d bytes (at tar member %s): %w", x.opts.MaxBytes, quote(hdr.Name), ErrTooLarge)
	}
	parent, base := path.Split(name)
	pfd, err := x.parent(hdr.Name, parent)
	if err != nil {
		return err
	}
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_LARGEFILE
	fd, err := unix.Openat(pfd, base, flags, fileMode)
	if errors.Is(err, unix.EEXIST) {
		// A re-upload replaces the file. Unlinking rather than truncating
		// leaves alone whatever else the old inode is linked as.
		if err := unix.Unlinkat(pfd, base, 0); err != nil {
			return fsError(hdr.Name, "removing the existing file", err)
		}
		fd, err = unix.Openat(pfd, base, flags, fileMode)
	}
	if err != nil {
		return fsError(hdr.Name, "create", err)
	}
	err = x.fill(fd, tr, hdr)
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fsError(hdr.Name, "close", cerr)
	}
	if err != nil {
		return err
	}
	x.stats.Files++
	return nil
}

// fill sets the owner and mode of the new file fd and copies the member's
// data into it.
func (x *extractor) fill(fd int, tr *tar.Reader, hdr *tar.Header) error {
	if x.chown {
		if err := unix.Fchown(fd, x.opts.UID, x.opts.GID); err != nil {
			return fsError(hdr.Name, "chown", err)
		}
	}
	if fileMode&x.umask != 0 {
		if err := unix.Fchmod(fd, fileMode); err != nil {
			return fsError(hdr.Name, "chmod", err)
		}
	}
	for remaining := hdr.Size; remaining > 0; {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		chunk := x.buf
		if remaining < int64(len(chunk)) {
			chunk = chunk[:remaining]
		}
		n, err := io.ReadFull(tr, chunk)
		if err := writeAll(fd, chunk[:n]); err != nil {
			return fsError(hdr.Name, "write", err)
		}
		remaining -= int64(n)
		x.stats.Bytes += int64(n)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return readErr{err}
		}
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// dir creates a directory, or adopts an existing one, and gives it dirMode
// and the configured owner.
func (x *extractor) dir(raw, name string) error {
	parent, base := path.Split(name)
	pfd, err := x.parent(raw, parent)
	if err != nil {
		return err
	}
	created := true
	if err := unix.Mkdirat(pfd, base, dirMode); errors.Is(err, unix.EEXIST) {
		created = false
	} else if err != nil {
		return fsError(raw, "mkdir", err)
	}
	// O_NOFOLLOW: an existing symlink of that name must not be adopted.
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fsError(raw, "open", err)
	}
	if err := x.ownDir(fd, created); err != nil {
		unix.Close(fd)
		return fsError(raw, "set owner and mode", err)
	}
	x.setCache(name, fd)
	x.stats.Dirs++
	return nil
}

func (x *extractor) ownDir(fd int, created bool) error {
	if x.chown {
		if err := unix.Fchown(fd, x.opts.UID, x.opts.GID); err != nil {
			return err
		}
	}
	if !created || dirMode&x.umask != 0 {
		return unix.Fchmod(fd, dirMode)
	}
	return nil
}

// parent returns an fd of directory dir (relative, "" or ending in "/"),
// creating missing directories. The fd belongs to the cache: do not close it.
func (x *extractor) parent(raw, dir string) (int, error) {
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return x.root.FD(), nil
	}
	if x.cached >= 0 && x.cachedPath == dir {
		return x.cached, nil
	}
	fd, err := x.root.OpenFD(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		fd, err = x.root.MkdirAll(dir, dirMode, func(fd int) error { return x.ownDir(fd, true) })
	}
	if err != nil {
		return -1, fsError(raw, "opening its directory", err)
	}
	x.setCache(dir, fd)
	return fd, nil
}

func (x *extractor) setCache(dir string, fd int) {
	if x.cached >= 0 {
		unix.Close(x.cached)
	}
	x.cachedPath, x.cached = dir, fd
}

// currentUmask reads the process umask without changing it (umask(2) would
// race with other goroutines creating files). If it cannot be read, every
// mode is set explicitly.
func currentUmask() uint32 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0o777
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				break
			}
			return uint32(m)
		}
	}
	return 0o777
}

// sourceReader remembers the first error of the upload itself, to tell a
// failing disk from a corrupt archive.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}
