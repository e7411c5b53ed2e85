package images

import (
	"errors"
	"fmt"

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
	free = int64(st.Bavail) * st.Bsize
	reserve = reserveBytes(int64(st.Blocks) * st.Bsize)
	return free, reserve, free - reserve, nil
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
