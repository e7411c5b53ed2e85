package btrfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Quota interface, from linux/btrfs.h (BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA
// is from kernel 6.7's).
const (
	quotaCtlEnable       = 1 // BTRFS_QUOTA_CTL_ENABLE
	quotaCtlEnableSimple = 4 // BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA

	qgroupLimitMaxExcl = 1 << 1 // BTRFS_QGROUP_LIMIT_MAX_EXCL

	rootTreeObjectID = 1   // BTRFS_ROOT_TREE_OBJECTID
	rootItemKey      = 132 // BTRFS_ROOT_ITEM_KEY
)

// quotaCtlArgs is struct btrfs_ioctl_quota_ctl_args.
type quotaCtlArgs struct {
	cmd    uint64
	status uint64
}

// qgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args.
type qgroupLimitArgs struct {
	qgroupid uint64
	flags    uint64 // struct btrfs_qgroup_limit from here
	maxRfer  uint64
	maxExcl  uint64
	rsvRfer  uint64
	rsvExcl  uint64
}

// qgroupCreateArgs is struct btrfs_ioctl_qgroup_create_args.
type qgroupCreateArgs struct {
	create   uint64
	qgroupid uint64
}

// fsInfoArgs is struct btrfs_ioctl_fs_info_args (1024 bytes); only fsid is
// read.
type fsInfoArgs struct {
	maxID      uint64
	numDevices uint64
	fsid       [16]byte
	_          [1024 - 32]byte
}

// searchKey is struct btrfs_ioctl_search_key.
type searchKey struct {
	treeID                   uint64
	minObjectID, maxObjectID uint64
	minOffset, maxOffset     uint64
	minTransID, maxTransID   uint64
	minType, maxType         uint32
	nrItems                  uint32
	_                        uint32
	_                        [4]uint64
}

// searchArgs is struct btrfs_ioctl_search_args (4096 bytes).
type searchArgs struct {
	key searchKey
	buf [4096 - 104]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args (4096 bytes).
type inoLookupArgs struct {
	treeid   uint64
	objectid uint64
	name     [4080]byte
}

var (
	_ [1024 - unsafe.Sizeof(fsInfoArgs{})]struct{}
	_ [unsafe.Sizeof(fsInfoArgs{}) - 1024]struct{}
	_ [104 - unsafe.Sizeof(searchKey{})]struct{}
	_ [unsafe.Sizeof(searchKey{}) - 104]struct{}
	_ [4096 - unsafe.Sizeof(searchArgs{})]struct{}
	_ [unsafe.Sizeof(searchArgs{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(inoLookupArgs{})]struct{}
	_ [unsafe.Sizeof(inoLookupArgs{}) - 4096]struct{}
)

func iowr(nr, size uintptr) uintptr {
	return 3<<30 | size<<16 | ioctlMagic<<8 | nr
}

var (
	iocTreeSearch   = iowr(17, unsafe.Sizeof(searchArgs{}))
	iocInoLookup    = iowr(18, unsafe.Sizeof(inoLookupArgs{}))
	iocFsInfo       = ior(31, unsafe.Sizeof(fsInfoArgs{}))
	iocQuotaCtl     = iowr(40, unsafe.Sizeof(quotaCtlArgs{}))
	iocQgroupCreate = iow(42, unsafe.Sizeof(qgroupCreateArgs{}))
	// BTRFS_IOC_QGROUP_LIMIT is declared _IOR although the kernel only
	// reads the struct.
	iocQgroupLimit = ior(43, unsafe.Sizeof(qgroupLimitArgs{}))
)

// sysfsRoot is where the kernel describes mounted btrfs filesystems.
const sysfsRoot = "/sys/fs/btrfs"

// QuotaMode is how a btrfs filesystem accounts the space of its subvolumes.
type QuotaMode string

const (
	// QuotaOff: no accounting, no limits.
	QuotaOff QuotaMode = "off"
	// QuotaFull: classic qgroups. Every extent is accounted to every
	// subvolume that references it, which costs a backref walk per changed
	// extent at each transaction commit.
	QuotaFull QuotaMode = "qgroup"
	// QuotaSimple: simple quotas (kernel 6.7 and later). An extent counts
	// against the subvolume that wrote it, for as long as it exists; nothing
	// is walked. A snapshot starts at zero and pays for what it writes.
	QuotaSimple QuotaMode = "squota"
)

// SimpleQuotaSupported reports whether the running kernel offers simple
// quotas.
func SimpleQuotaSupported() bool {
	_, err := os.Stat(filepath.Join(sysfsRoot, "features", "simple_quota"))
	return err == nil
}

// Quota reports the quota mode of the btrfs filesystem holding path.
func Quota(path string) (QuotaMode, error) {
	mode, err := quota(path)
	if err != nil {
		return "", fmt.Errorf("btrfs quota mode of %s: %w", path, err)
	}
	return mode, nil
}

func quota(path string) (QuotaMode, error) {
	dir, err := qgroupsDir(path)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "mode"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
			return QuotaOff, nil // the qgroups directory exists only with quotas on
		}
		return QuotaFull, nil // a kernel from before simple quotas
	case err != nil:
		return "", err
	}
	switch m := QuotaMode(strings.TrimSpace(string(b))); m {
	case QuotaFull, QuotaSimple:
		return m, nil
	default:
		return QuotaOff, nil
	}
}

// EnableQuota turns quotas on for the filesystem holding path, in mode
// (QuotaSimple or QuotaFull), unless they are on already; either way it
// returns the mode in effect. Modes are not switched: that would mean
// turning quotas off, which forgets every limit. Enabling full qgroups on a
// filesystem that holds data starts a rescan in the kernel.
func EnableQuota(path string, mode QuotaMode) (QuotaMode, error) {
	got, err := enableQuota(path, mode)
	if err != nil {
		return "", fmt.Errorf("btrfs enable quota (%s) on %s: %w", mode, path, err)
	}
	return got, nil
}

func enableQuota(path string, mode QuotaMode) (QuotaMode, error) {
	cur, err := quota(path)
	if err != nil || cur != QuotaOff {
		return cur, err
	}
	args := quotaCtlArgs{cmd: quotaCtlEnable}
	switch mode {
	case QuotaFull:
	case QuotaSimple:
		args.cmd = quotaCtlEnableSimple
	default:
		return "", fmt.Errorf("unknown quota mode %q: %w", mode, unix.EINVAL)
	}
	fd, err := openDir(path)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if err := ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args)); err != nil {
		return "", err
	}
	return quota(path)
}

// LimitExclusive limits the exclusive bytes of the subvolume at path (its
// level-0 qgroup) to max; 0 lifts the limit. Writes beyond it fail with
// EDQUOT in that subvolume only. Quotas must be on.
func LimitExclusive(path string, max int64) error {
	if err := limitExclusive(path, max); err != nil {
		return fmt.Errorf("btrfs limit exclusive bytes of %s to %d: %w", path, max, err)
	}
	return nil
}

func limitExclusive(path string, max int64) error {
	if max < 0 {
		return fmt.Errorf("negative limit: %w", unix.EINVAL)
	}
	fd, err := openSubvolume(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// qgroupid 0 means the qgroup of the subvolume fd is in; flags name the
	// limits to change, so the referenced limit is left alone.
	args := qgroupLimitArgs{flags: qgroupLimitMaxExcl}
	if max > 0 {
		args.maxExcl = uint64(max)
	} else {
		args.maxExcl = ^uint64(0) // "no limit" to the kernel
	}
	return ioctl(fd, iocQgroupLimit, unsafe.Pointer(&args))
}

// QgroupUsage is what a subvolume's qgroup accounts and allows.
type QgroupUsage struct {
	Referenced, Exclusive int64
	MaxExclusive          int64 // 0: no limit
}

// Qgroup returns the accounting of the subvolume at path, as the kernel
// reports it in sysfs. Quotas must be on.
func Qgroup(path string) (QgroupUsage, error) {
	u, err := qgroup(path)
	if err != nil {
		return QgroupUsage{}, fmt.Errorf("btrfs qgroup of %s: %w", path, err)
	}
	return u, nil
}

func qgroup(path string) (QgroupUsage, error) {
	id, err := subvolumeID(path)
	if err != nil {
		return QgroupUsage{}, err
	}
	dir, err := qgroupsDir(path)
	if err != nil {
		return QgroupUsage{}, err
	}
	dir = filepath.Join(dir, "0_"+strconv.FormatUint(id, 10))
	var u QgroupUsage
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"referenced", &u.Referenced}, {"exclusive", &u.Exclusive}, {"max_exclusive", &u.MaxExclusive}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return QgroupUsage{}, err
		}
		s := strings.TrimSpace(string(b))
		if s == "none" {
			continue
		}
		if *f.dst, err = strconv.ParseInt(s, 10, 64); err != nil {
			return QgroupUsage{}, fmt.Errorf("%s/%s: %q is not a number", dir, f.name, s)
		}
	}
	return u, nil
}

// RemoveStaleQgroups removes the level-0 qgroups of the filesystem holding
// path whose subvolumes are gone, and returns how many it removed. The
// kernel keeps a deleted subvolume's qgroup (on kernels before 6.9, or while
// the subvolume's extents are still being freed); left alone they pile up
// and slow every quota operation. A qgroup still in use stays for a later
// call. With quotas off it does nothing.
func RemoveStaleQgroups(path string) (int, error) {
	n, err := removeStaleQgroups(path)
	if err != nil {
		return n, fmt.Errorf("btrfs remove stale qgroups of %s: %w", path, err)
	}
	return n, nil
}

func removeStaleQgroups(path string) (int, error) {
	dir, err := qgroupsDir(path)
	if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	fd, err := openDir(path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n := 0
	for _, e := range ents {
		idStr, ok := strings.CutPrefix(e.Name(), "0_")
		if !ok {
			continue
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || id < firstFreeObjectID {
			continue // the top level (5) stays
		}
		if exists, err := subvolumeExists(fd, id); err != nil || exists {
			continue
		}
		args := qgroupCreateArgs{create: 0, qgroupid: id}
		switch err := ioctl(fd, iocQgroupCreate, unsafe.Pointer(&args)); {
		case err == nil:
			n++
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOENT):
			// Still accounting the subvolume's last extents, or removed meanwhile.
		default:
			return n, fmt.Errorf("removing qgroup 0/%d: %w", id, err)
		}
	}
	return n, nil
}

// subvolumeExists asks the root tree, through fd on the same filesystem,
// whether subvolume id still has a root item. A subvolume deleted but not yet
// cleaned up still has one.
func subvolumeExists(fd int, id uint64) (bool, error) {
	args := searchArgs{key: searchKey{
		treeID:      rootTreeObjectID,
		minObjectID: id, maxObjectID: id,
		maxOffset:  ^uint64(0),
		maxTransID: ^uint64(0),
		minType:    rootItemKey, maxType: rootItemKey,
		nrItems: 1,
	}}
	if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
		return false, err
	}
	return args.key.nrItems > 0, nil
}

// SubvolumeID returns the id of the subvolume at path (which must be a
// subvolume's root), the id of its level-0 qgroup.
func SubvolumeID(path string) (uint64, error) {
	id, err := subvolumeID(path)
	if err != nil {
		return 0, fmt.Errorf("btrfs subvolume id of %s: %w", path, err)
	}
	return id, nil
}

func subvolumeID(path string) (uint64, error) {
	fd, err := openSubvolume(path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	// Tree 0 means the tree fd is in; the kernel answers with its id.
	args := inoLookupArgs{objectid: firstFreeObjectID}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, err
	}
	return args.treeid, nil
}

// openSubvolume opens path and checks that it is a subvolume's root, so
// that an ioctl meaning "this fd's subvolume" acts on path's and not on a
// subvolume that contains it.
func openSubvolume(path string) (int, error) {
	fd, err := openDir(path)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Ino != firstFreeObjectID {
		unix.Close(fd)
		return -1, errNotSubvolume
	}
	return fd, nil
}

// qgroupsDir returns the sysfs directory of the qgroups of the filesystem
// holding path (it exists only while quotas are on).
func qgroupsDir(path string) (string, error) {
	fd, err := openDir(path)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var args fsInfoArgs
	if err := ioctl(fd, iocFsInfo, unsafe.Pointer(&args)); err != nil {
		return "", err
	}
	u := args.fsid
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return filepath.Join(sysfsRoot, uuid, "qgroups"), nil
}
