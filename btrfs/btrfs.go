// Package btrfs manages the disk side of Draupnir: it creates, snapshots
// (optionally read-only) and deletes btrfs subvolumes through the kernel's
// ioctls, answers whether a path is btrfs, a subvolume or read-only, reports
// a subvolume's referenced and exclusive bytes, turns a directory into a
// subvolume, turns quotas on and limits what one subvolume may write
// (qgroups), streams subvolumes out and in (btrfs send and receive, for
// shipping images between nodes), and prepares a loop-mounted btrfs file for
// machines whose data path is not on btrfs. It knows nothing about images or
// instances.
package btrfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel interface, from linux/btrfs.h. x/sys/unix does not define these.
const (
	pathNameMax   = 4087 // BTRFS_PATH_NAME_MAX
	subvolNameMax = 4039 // BTRFS_SUBVOL_NAME_MAX

	// nameMax is what a single directory entry may hold (NAME_MAX); the
	// structs have room for more, but the kernel would refuse it anyway.
	nameMax = 255

	subvolRdonly = 1 << 1 // BTRFS_SUBVOL_RDONLY

	// firstFreeObjectID is the inode number of every subvolume's root
	// directory (BTRFS_FIRST_FREE_OBJECTID).
	firstFreeObjectID = 256

	ioctlMagic = 0x94
)

// volArgs is struct btrfs_ioctl_vol_args (4096 bytes).
type volArgs struct {
	fd   int64
	name [pathNameMax + 1]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (4096 bytes).
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64 // union of {size, qgroup_inherit} and unused[4]
	name    [subvolNameMax + 1]byte
}

// Compile-time checks that the structs have the kernel's sizes.
var (
	_ [4096 - unsafe.Sizeof(volArgs{})]struct{}
	_ [unsafe.Sizeof(volArgs{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(volArgsV2{})]struct{}
	_ [unsafe.Sizeof(volArgsV2{}) - 4096]struct{}
)

func iow(nr, size uintptr) uintptr {
	return 1<<30 | size<<16 | ioctlMagic<<8 | nr
}

func ior(nr, size uintptr) uintptr {
	return 2<<30 | size<<16 | ioctlMagic<<8 | nr
}

var (
	iocSubvolCreate   = iow(14, unsafe.Sizeof(volArgs{}))
	iocSnapDestroy    = iow(15, unsafe.Sizeof(volArgs{}))
	iocSnapCreateV2   = iow(23, unsafe.Sizeof(volArgsV2{}))
	iocSubvolGetflags = ior(25, 8)
)

// ioctl issues request on fd, retrying on EINTR.
func ioctl(fd int, request uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), request, uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.ENOTTY:
			// The ioctl number is unknown to the filesystem: it is not btrfs.
			return fmt.Errorf("not on a btrfs filesystem: %w", errno)
		default:
			return errno
		}
	}
}

// splitName splits path into its parent directory and final name, and
// rejects names the kernel structs cannot or must not hold.
func splitName(path string) (dir, name string, err error) {
	// No filepath.Clean: "a/link/.." must not lexically become "a"; the
	// kernel resolves the parent, and "." and ".." are refused as names.
	dir, name = filepath.Split(strings.TrimRight(path, "/"))
	if dir == "" {
		dir = "."
	}
	switch {
	case name == "" || name == "." || name == "..":
		return "", "", fmt.Errorf("not a valid subvolume name: %w", unix.EINVAL)
	case len(name) > nameMax:
		return "", "", fmt.Errorf("name is %d bytes, longer than %d: %w", len(name), nameMax, unix.ENAMETOOLONG)
	case strings.IndexByte(name, 0) >= 0:
		return "", "", fmt.Errorf("name contains a NUL byte: %w", unix.EINVAL)
	}
	return dir, name, nil
}

// openDir opens a directory for issuing ioctls on it.
func openDir(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// IsBtrfs reports whether path lies on a btrfs filesystem (statfs magic).
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// CreateSubvolume creates a new empty subvolume at path. The parent must
// exist and path must not. The subvolume's root directory gets mode 0755;
// the caller chmods and chowns it as needed.
func CreateSubvolume(path string) error {
	if err := createSubvolume(path); err != nil {
		return fmt.Errorf("btrfs create subvolume %s: %w", path, err)
	}
	return nil
}

func createSubvolume(path string) error {
	dir, name, err := splitName(path)
	if err != nil {
		return err
	}
	fd, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("open parent: %w", err)
	}
	defer unix.Close(fd)
	var args volArgs
	copy(args.name[:], name)
	return ioctl(fd, iocSubvolCreate, unsafe.Pointer(&args))
}

// Snapshot makes dst a snapshot of the subvolume src; readOnly makes it
// read-only (BTRFS_SUBVOL_RDONLY). dst must not exist. src must be the root
// of a subvolume: the kernel would otherwise snapshot the whole subvolume
// that contains it.
func Snapshot(src, dst string, readOnly bool) error {
	if err := snapshot(src, dst, readOnly); err != nil {
		return fmt.Errorf("btrfs snapshot %s -> %s: %w", src, dst, err)
	}
	return nil
}

func snapshot(src, dst string, readOnly bool) error {
	dir, name, err := splitName(dst)
	if err != nil {
		return err
	}
	srcFD, err := openDir(src)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer unix.Close(srcFD)
	// Check the opened source itself, so that what we checked is what the
	// kernel snapshots.
	var st unix.Stat_t
	if err := unix.Fstat(srcFD, &st); err != nil {
		return fmt.Errorf("stat source: %w", err)
	}
	if st.Ino != firstFreeObjectID {
		return fmt.Errorf("source is not a subvolume: %w", unix.EINVAL)
	}
	dstFD, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("open destination's parent: %w", err)
	}
	defer unix.Close(dstFD)
	args := volArgsV2{fd: int64(srcFD)}
	if readOnly {
		args.flags = subvolRdonly
	}
	copy(args.name[:], name)
	return ioctl(dstFD, iocSnapCreateV2, unsafe.Pointer(&args))
}

// Delete removes the subvolume at path, also a read-only one, together with
// any subvolumes nested inside it. A path that does not exist is not an error,
// so that Delete can be retried. A path that exists but is not a subvolume is
// an error: Delete never removes plain directories.
func Delete(path string) error {
	if err := deleteSubvolume(path); err != nil {
		return fmt.Errorf("btrfs delete subvolume %s: %w", path, err)
	}
	return nil
}

func deleteSubvolume(path string) error {
	dir, name, err := splitName(path)
	if err != nil {
		return err
	}
	ok, err := isSubvolume(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !ok:
		return errNotSubvolume
	}
	fd, err := openDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("open parent: %w", err)
	}
	defer unix.Close(fd)
	var args volArgs
	copy(args.name[:], name)
	err = ioctl(fd, iocSnapDestroy, unsafe.Pointer(&args))
	if errors.Is(err, unix.ENOTEMPTY) {
		// Subvolumes nested inside must go first.
		if err := deleteNested(path); err != nil {
			return err
		}
		err = ioctl(fd, iocSnapDestroy, unsafe.Pointer(&args))
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil // raced with another Delete
	}
	return err
}

var errNotSubvolume = fmt.Errorf("not a subvolume: %w", unix.EINVAL)

// deleteNested deletes every subvolume below dir (not dir itself).
func deleteNested(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list nested subvolumes: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		ok, err := isSubvolume(p)
		if err != nil {
			return fmt.Errorf("nested %s: %w", p, err)
		}
		if ok {
			if err := Delete(p); err != nil {
				return err
			}
			continue
		}
		if err := deleteNested(p); err != nil {
			return err
		}
	}
	return nil
}

// IsSubvolume reports whether path is the root of a subvolume (inode 256 on
// btrfs). A symbolic link is not a subvolume, whatever it points to.
func IsSubvolume(path string) (bool, error) {
	ok, err := isSubvolume(path)
	if err != nil {
		return false, fmt.Errorf("btrfs is subvolume %s: %w", path, err)
	}
	return ok, nil
}

func isSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != firstFreeObjectID {
		return false, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return false, err
	}
	return sfs.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// IsReadOnly reports whether the subvolume at path is read-only
// (BTRFS_IOC_SUBVOL_GETFLAGS).
func IsReadOnly(path string) (bool, error) {
	ro, err := isReadOnly(path)
	if err != nil {
		return false, fmt.Errorf("btrfs get flags %s: %w", path, err)
	}
	return ro, nil
}

func isReadOnly(path string) (bool, error) {
	fd, err := openDir(path)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, err
	}
	if st.Ino != firstFreeObjectID {
		return false, errNotSubvolume
	}
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return false, err
	}
	return flags&subvolRdonly != 0, nil
}

// Usage returns the referenced (total) and exclusive bytes of the data under
// path, a subvolume or a directory, as `btrfs filesystem du -s --raw` reports
// them. Exclusive bytes are those shared with no other file or snapshot. Data
// still in the page cache may not be counted yet; sync first for exact
// figures.
func Usage(ctx context.Context, path string) (total, exclusive int64, err error) {
	cmd := exec.CommandContext(ctx, "btrfs", "filesystem", "du", "-s", "--raw", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("btrfs filesystem du %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	total, exclusive, err = parseDu(out)
	if err != nil {
		return 0, 0, fmt.Errorf("btrfs filesystem du %s: %w", path, err)
	}
	return total, exclusive, nil
}

// parseDu reads the output of `btrfs filesystem du -s --raw`: a header line,
// then "total exclusive set-shared filename" for the one path.
func parseDu(out []byte) (total, exclusive int64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	var line string
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "Total") {
			line = l
		}
	}
	f := strings.Fields(line)
	if len(f) < 4 {
		return 0, 0, fmt.Errorf("unexpected output %q", out)
	}
	if total, err = strconv.ParseInt(f[0], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("unexpected total in %q: %w", line, err)
	}
	if exclusive, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("unexpected exclusive in %q: %w", line, err)
	}
	return total, exclusive, nil
}

var iocSubvolSetflags = iow(26, 8)

// SetReadOnly sets or clears the read-only flag of the subvolume at path
// (BTRFS_IOC_SUBVOL_SETFLAGS). A received subvolume keeps its received
// UUID, so that later incremental streams still find it as their parent.
func SetReadOnly(path string, readOnly bool) error {
	if err := setReadOnly(path, readOnly); err != nil {
		return fmt.Errorf("btrfs set read-only %s: %w", path, err)
	}
	return nil
}

func setReadOnly(path string, readOnly bool) error {
	fd, err := openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Ino != firstFreeObjectID {
		return errNotSubvolume
	}
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return err
	}
	if readOnly {
		flags |= subvolRdonly
	} else {
		flags &^= subvolRdonly
	}
	return ioctl(fd, iocSubvolSetflags, unsafe.Pointer(&flags))
}
