package images

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images/extract"
)

// reserveBytes is the free space that uploads and finalising leave on the
// data path's filesystem: the state database lives there too and dies when
// it cannot write, and running instances need room for their own writes.
// 1% of the filesystem, at least 64 MiB and at most 1 GiB.
func reserveBytes(total int64) int64 {
	return min(max(total/100, 64<<20), 1<<30)
}

// room returns how many bytes the service may still write into dir's
// filesystem before it reaches the reserve; zero or less means none.
func room(dir string) (free, reserve, avail int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, 0, fmt.Errorf("checking the free space of %s: %w", dir, err)
	}
	free, reserve, avail = roomOf(&st)
	return free, reserve, avail, nil
}

func roomOf(st *unix.Statfs_t) (free, reserve, avail int64) {
	free = int64(st.Bavail) * st.Bsize
	reserve = reserveBytes(int64(st.Blocks) * st.Bsize)
	return free, reserve, free - reserve
}

// writeBudget is what one upload may write into the data path before it
// reaches the reserve, measured when the upload opens. Free space cannot be
// polled as bytes arrive: statfs counts them only once they leave the page
// cache, by which time they may have filled the disk.
type writeBudget struct {
	free, reserve int64
	left          atomic.Int64
}

// newWriteBudget measures the filesystem of the open file fd; with no room
// above the reserve it returns an insufficient-storage error.
func newWriteBudget(fd int) (*writeBudget, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return nil, fmt.Errorf("checking the free space: %w", err)
	}
	free, reserve, avail := roomOf(&st)
	if avail <= 0 {
		return nil, fullError(free, reserve, nil)
	}
	b := &writeBudget{free: free, reserve: reserve}
	b.left.Store(avail)
	return b, nil
}

// spend takes n bytes from the budget, or returns an insufficient-storage
// error once it is used up. It is safe for concurrent use.
func (b *writeBudget) spend(n int) error {
	if b.left.Add(-int64(n)) < 0 {
		return fullError(b.free, b.reserve, nil)
	}
	return nil
}

// extractLimit is the MaxBytes for an extraction into dir: what fits above
// the reserve. With no room at all it returns an insufficient-storage error.
func extractLimit(dir string) (int64, error) {
	free, reserve, avail, err := room(dir)
	if err != nil {
		return 0, err
	}
	if avail <= 0 {
		return 0, fullError(free, reserve, nil)
	}
	return avail, nil
}

// spaceError turns an extraction that hit the free-space limit into an
// insufficient-storage error that says so; other errors pass through.
func spaceError(dir string, err error) error {
	if !errors.Is(err, extract.ErrTooLarge) {
		return err
	}
	free, reserve, _, serr := room(dir)
	if serr != nil {
		return err
	}
	return fullError(free, reserve, err)
}

func fullError(free, reserve int64, cause error) error {
	return &draupnir.Error{
		Kind: draupnir.KindInsufficientStorage,
		Msg: fmt.Sprintf("the data path is full: %d MiB free, and %d MiB of that stay reserved for the state database and running instances; free some space (destroy images or instances) and try again",
			free>>20, reserve>>20),
		Err: cause,
	}
}

// EnsureRoom returns an insufficient-storage error when dir's filesystem
// has no free space above the reserve, so that work that would fill it
// (a new instance) is refused before it starts.
func EnsureRoom(dir string) error {
	_, err := extractLimit(dir)
	return err
}
