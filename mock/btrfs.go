package mock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/btrfs"
)

// Btrfs is a fake of btrfs.FS on an ordinary directory tree: a subvolume is
// a directory it made (or converted) and remembers, a snapshot a copy
// without the subvolumes inside (an empty directory each, as in btrfs). It
// keeps the rules the services rely on: creating over an existing path
// fails with fs.ErrExist, deleting a missing path is no error, deleting a
// plain directory is. It is safe for concurrent use.
type Btrfs struct {
	// Fail, if set, is asked before every operation with the operation's
	// name ("Snapshot", "Delete", …) and path (a snapshot's destination);
	// an error it returns is the operation's.
	Fail func(op, path string) error
	// Mode is the quota mode of the filesystem; empty is btrfs.QuotaOff.
	Mode btrfs.QuotaMode
	// Simple is what SimpleQuotaSupported answers.
	Simple bool

	mu      sync.Mutex
	subvols map[string]bool // path → read-only
	limits  map[string]int64
}

func (b *Btrfs) fail(op, path string) error {
	if b.Fail == nil {
		return nil
	}
	return b.Fail(op, path)
}

func (b *Btrfs) add(path string, readOnly bool) {
	if b.subvols == nil {
		b.subvols = map[string]bool{}
	}
	b.subvols[filepath.Clean(path)] = readOnly
}

// CreateSubvolume makes path an empty subvolume.
func (b *Btrfs) CreateSubvolume(path string) error {
	if err := b.fail("CreateSubvolume", path); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := os.Mkdir(path, 0o755); err != nil {
		return fmt.Errorf("fake btrfs create subvolume: %w", err)
	}
	b.add(path, false)
	return nil
}

// Snapshot copies the subvolume src to the new subvolume dst.
func (b *Btrfs) Snapshot(src, dst string, readOnly bool) error {
	if err := b.fail("Snapshot", dst); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subvols[filepath.Clean(src)]; !ok {
		return fmt.Errorf("fake btrfs snapshot: %s is not a subvolume", src)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("fake btrfs snapshot: %s: %w", dst, fs.ErrExist)
	}
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		return fmt.Errorf("fake btrfs snapshot: %w", err)
	}
	// As btrfs does, a subvolume inside src is left out: an empty
	// directory stands in its place.
	prefix := filepath.Clean(src) + string(filepath.Separator)
	for p := range b.subvols {
		if rel, ok := strings.CutPrefix(p, prefix); ok {
			in := filepath.Join(dst, rel)
			if err := os.RemoveAll(in); err != nil {
				return fmt.Errorf("fake btrfs snapshot: %w", err)
			}
			if err := os.Mkdir(in, 0o755); err != nil {
				return fmt.Errorf("fake btrfs snapshot: %w", err)
			}
		}
	}
	b.add(dst, readOnly)
	return nil
}

// Delete removes the subvolume at path and the subvolumes inside it.
func (b *Btrfs) Delete(path string) error {
	if err := b.fail("Delete", path); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	path = filepath.Clean(path)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		delete(b.subvols, path)
		return nil
	}
	if _, ok := b.subvols[path]; !ok {
		return fmt.Errorf("fake btrfs delete: not a subvolume: %s: %w", path, unix.EINVAL)
	}
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	for p := range b.subvols {
		if p == path || strings.HasPrefix(p, path+string(filepath.Separator)) {
			delete(b.subvols, p)
			delete(b.limits, p)
		}
	}
	return nil
}

// IsSubvolume reports whether path is a subvolume.
func (b *Btrfs) IsSubvolume(path string) (bool, error) {
	if err := b.fail("IsSubvolume", path); err != nil {
		return false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := os.Lstat(path); err != nil {
		return false, err
	}
	_, ok := b.subvols[filepath.Clean(path)]
	return ok, nil
}

// ConvertToSubvolume makes the directory path a subvolume.
func (b *Btrfs) ConvertToSubvolume(path string) error {
	if err := b.fail("ConvertToSubvolume", path); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("fake btrfs convert %s: %w", path, unix.ENOTDIR)
	}
	b.add(path, false)
	return nil
}

// LimitExclusive records max as the limit of the subvolume path; 0 lifts it.
func (b *Btrfs) LimitExclusive(path string, max int64) error {
	if err := b.fail("LimitExclusive", path); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	path = filepath.Clean(path)
	if _, ok := b.subvols[path]; !ok {
		return fmt.Errorf("fake btrfs limit: not a subvolume: %s", path)
	}
	if b.limits == nil {
		b.limits = map[string]int64{}
	}
	if max == 0 {
		delete(b.limits, path)
	} else {
		b.limits[path] = max
	}
	return nil
}

// RemoveStaleQgroups counts its calls; a fake has no qgroups to remove.
func (b *Btrfs) RemoveStaleQgroups(path string) (int, error) {
	if err := b.fail("RemoveStaleQgroups", path); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return 0, nil
}

// Quota returns Mode.
func (b *Btrfs) Quota(path string) (btrfs.QuotaMode, error) {
	if err := b.fail("Quota", path); err != nil {
		return "", err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Mode == "" {
		return btrfs.QuotaOff, nil
	}
	return b.Mode, nil
}

// EnableQuota sets Mode, unless quotas are on already.
func (b *Btrfs) EnableQuota(path string, mode btrfs.QuotaMode) (btrfs.QuotaMode, error) {
	if err := b.fail("EnableQuota", path); err != nil {
		return "", err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Mode == "" || b.Mode == btrfs.QuotaOff {
		b.Mode = mode
	}
	return b.Mode, nil
}

// SimpleQuotaSupported returns Simple.
func (b *Btrfs) SimpleQuotaSupported() bool { return b.Simple }

// Subvolumes returns the paths of the subvolumes that exist, sorted.
func (b *Btrfs) Subvolumes() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for p := range b.subvols {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// ReadOnly reports whether path is a read-only snapshot.
func (b *Btrfs) ReadOnly(path string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subvols[filepath.Clean(path)]
}

// Limit returns the limit set on the subvolume path, if any.
func (b *Btrfs) Limit(path string) (int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	max, ok := b.limits[filepath.Clean(path)]
	return max, ok
}

// AddSubvolume makes path a subvolume, as one left by an earlier run; its
// parent must exist.
func (b *Btrfs) AddSubvolume(path string, readOnly bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := os.MkdirAll(path, 0o755); err != nil {
		return err
	}
	b.add(path, readOnly)
	return nil
}
