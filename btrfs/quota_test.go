package btrfs

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

func TestQuotaIoctlNumbers(t *testing.T) {
	tests := []struct {
		name      string
		got, want uintptr
	}{
		{"BTRFS_IOC_TREE_SEARCH", iocTreeSearch, 0xd0009411},
		{"BTRFS_IOC_INO_LOOKUP", iocInoLookup, 0xd0009412},
		{"BTRFS_IOC_FS_INFO", iocFsInfo, 0x8400941f},
		{"BTRFS_IOC_QUOTA_CTL", iocQuotaCtl, 0xc0109428},
		{"BTRFS_IOC_QGROUP_CREATE", iocQgroupCreate, 0x4010942a},
		{"BTRFS_IOC_QGROUP_LIMIT", iocQgroupLimit, 0x8030942b},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

// writeBytes writes n random bytes to path and syncs them, returning the
// first error.
func writeBytes(t testing.TB, path string, n int) error {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(randomBytes(t, n)); err != nil {
		return err
	}
	return f.Sync()
}

func TestLimitExclusive(t *testing.T) {
	modes := []QuotaMode{QuotaFull}
	if SimpleQuotaSupported() {
		modes = append(modes, QuotaSimple)
	} else {
		t.Log("this kernel has no simple quotas; testing full qgroups only")
	}
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			mnt := testenv.Btrfs(t, 1<<30)
			img := filepath.Join(mnt, "image")
			newSubvolume(t, img, map[string][]byte{"data": randomBytes(t, 4<<20)})
			if got, err := Quota(mnt); err != nil || got != QuotaOff {
				t.Fatalf("Quota on a fresh filesystem = %q, %v, want off", got, err)
			}
			if err := LimitExclusive(img, 1<<20); err == nil {
				t.Fatal("LimitExclusive succeeded with quotas off")
			}
			got, err := EnableQuota(mnt, mode)
			if err != nil || got != mode {
				t.Fatalf("EnableQuota(%s) = %q, %v", mode, got, err)
			}
			// Enabling again, in either mode, keeps the mode in effect.
			for _, again := range []QuotaMode{QuotaFull, QuotaSimple} {
				if got, err := EnableQuota(mnt, again); err != nil || got != mode {
					t.Fatalf("EnableQuota(%s) again = %q, %v, want %s", again, got, err, mode)
				}
			}
			limited, free := filepath.Join(mnt, "limited"), filepath.Join(mnt, "free")
			for _, dst := range []string{limited, free} {
				if err := Snapshot(img, dst, false); err != nil {
					t.Fatal(err)
				}
			}
			if err := LimitExclusive(limited, 8<<20); err != nil {
				t.Fatal(err)
			}
			if u, err := Qgroup(limited); err != nil || u.MaxExclusive != 8<<20 {
				t.Fatalf("Qgroup = %+v, %v, want a limit of 8 MiB", u, err)
			}
			// The snapshot shares the image's 4 MiB; only what it writes counts.
			if err := writeBytes(t, filepath.Join(limited, "small"), 4<<20); err != nil {
				t.Fatalf("writing within the limit: %v", err)
			}
			if err := writeBytes(t, filepath.Join(limited, "big"), 16<<20); !errors.Is(err, unix.EDQUOT) {
				t.Fatalf("writing past the limit: %v, want EDQUOT", err)
			}
			// The neighbour is not affected.
			if err := writeBytes(t, filepath.Join(free, "big"), 16<<20); err != nil {
				t.Fatalf("an unlimited snapshot could not write: %v", err)
			}
			if u, err := Qgroup(free); err != nil || u.MaxExclusive != 0 || u.Exclusive < 16<<20 {
				t.Fatalf("Qgroup of the unlimited snapshot = %+v, %v", u, err)
			}
			// Lifting the limit lets it write again.
			if err := LimitExclusive(limited, 0); err != nil {
				t.Fatal(err)
			}
			if err := writeBytes(t, filepath.Join(limited, "big"), 16<<20); err != nil {
				t.Fatalf("writing after lifting the limit: %v", err)
			}
		})
	}
}

func TestLimitExclusiveRefuses(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	if _, err := EnableQuota(mnt, QuotaFull); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(mnt, "sub")
	newSubvolume(t, sub, map[string][]byte{"dir/f": nil})
	other := testenv.TempDir(t)
	tests := []struct {
		name string
		path string
		max  int64
		want error
	}{
		// It would limit the subvolume that contains the directory.
		{"directory inside a subvolume", filepath.Join(sub, "dir"), 1 << 20, unix.EINVAL},
		{"missing", filepath.Join(mnt, "nope"), 1 << 20, unix.ENOENT},
		{"not btrfs", other, 1 << 20, unix.EINVAL},
		{"negative", sub, -1, unix.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := LimitExclusive(tt.path, tt.max); !errors.Is(err, tt.want) {
				t.Fatalf("LimitExclusive(%s, %d) = %v, want %v", tt.path, tt.max, err, tt.want)
			}
		})
	}
	if _, err := EnableQuota(mnt, "bogus"); err != nil {
		t.Fatalf("EnableQuota with quotas on must not look at the mode: %v", err)
	}
	if _, err := EnableQuota(testenv.Btrfs(t, 1<<30), "bogus"); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("EnableQuota(bogus) = %v, want EINVAL", err)
	}
}

// TestRemoveStaleQgroups leaves a stale qgroup behind the way a current
// kernel does (older ones keep every deleted subvolume's): under simple
// quotas, a subvolume deleted while another still shares extents it wrote
// keeps its qgroup, and nothing removes it once those extents go.
func TestRemoveStaleQgroups(t *testing.T) {
	if !SimpleQuotaSupported() {
		t.Skip("needs simple quotas (kernel 6.7 or later) to leave a stale qgroup behind")
	}
	mnt := testenv.Btrfs(t, 1<<30)
	// The cleaner drops deleted subvolumes at a commit; the default 30s
	// would make the subvolume sync below wait that long.
	testenv.Run(t, "mount", "-o", "remount,commit=1", mnt)
	if n, err := RemoveStaleQgroups(mnt); err != nil || n != 0 {
		t.Fatalf("RemoveStaleQgroups with quotas off = %d, %v", n, err)
	}
	if _, err := EnableQuota(mnt, QuotaSimple); err != nil {
		t.Fatal(err)
	}
	live, gone, keeper := filepath.Join(mnt, "live"), filepath.Join(mnt, "gone"), filepath.Join(mnt, "keeper")
	for _, p := range []string{live, gone, keeper} {
		newSubvolume(t, p, nil)
	}
	if err := LimitExclusive(live, 1<<20); err != nil {
		t.Fatal(err)
	}
	goneID, err := SubvolumeID(gone)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBytes(t, filepath.Join(gone, "data"), 1<<20); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "cp", "--reflink=always", filepath.Join(gone, "data"), filepath.Join(keeper, "data"))
	testenv.Run(t, "sync")
	if err := Delete(gone); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "btrfs", "subvolume", "sync", mnt)
	qdir, err := qgroupsDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	goneQgroup := filepath.Join(qdir, "0_"+strconv.FormatUint(goneID, 10))
	if _, err := os.Stat(goneQgroup); err != nil {
		t.Fatalf("the deleted subvolume's qgroup is not there to test with: %v", err)
	}
	// Still accounting the shared extents: it must stay.
	if n, err := RemoveStaleQgroups(mnt); err != nil || n != 0 {
		t.Fatalf("RemoveStaleQgroups while the qgroup is in use = %d, %v", n, err)
	}
	if err := os.Remove(filepath.Join(keeper, "data")); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "sync")
	if n, err := RemoveStaleQgroups(mnt); err != nil || n != 1 {
		t.Fatalf("RemoveStaleQgroups = %d, %v, want 1", n, err)
	}
	if _, err := os.Stat(goneQgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale qgroup is still there (%v)", err)
	}
	// Live subvolumes' qgroups and the top level's stay, limits and all.
	if u, err := Qgroup(live); err != nil || u.MaxExclusive != 1<<20 {
		t.Errorf("Qgroup(live) = %+v, %v after the sweep", u, err)
	}
	for _, name := range []string{"0_5", "0_256"} {
		if _, err := os.Stat(filepath.Join(qdir, name)); err != nil {
			t.Errorf("qgroup %s went: %v", name, err)
		}
	}
}
