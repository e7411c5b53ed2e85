// Package diskspace keeps the free-space reserve of the data path: the room
// that uploads, finalising and new instances leave on its filesystem,
// because the state database lives there too and dies when it cannot write,
// and running instances need room for their own writes. The image and the
// instance services both hold to it.
package diskspace

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
)

// Reserve is the free space kept on a filesystem of total bytes: 1% of it,
// at least 64 MiB and at most 1 GiB.
func Reserve(total int64) int64 {
	return min(max(total/100, 64<<20), 1<<30)
}

// Room is the free space of a filesystem and the part of it kept in reserve.
type Room struct {
	Free    int64 // bytes available to the server
	Reserve int64 // of those, what must stay free
}

// Avail is how many bytes may still be written before the reserve is
// reached; zero or less means none.
func (r Room) Avail() int64 { return r.Free - r.Reserve }

// Of measures the filesystem that holds dir.
func Of(dir string) (Room, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Room{}, fmt.Errorf("checking the free space of %s: %w", dir, err)
	}
	return roomOf(&st), nil
}

// OfFile measures the filesystem that holds the open file fd.
func OfFile(fd int) (Room, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return Room{}, fmt.Errorf("checking the free space: %w", err)
	}
	return roomOf(&st), nil
}

func roomOf(st *unix.Statfs_t) Room {
	return Room{Free: int64(st.Bavail) * st.Bsize, Reserve: Reserve(int64(st.Blocks) * st.Bsize)}
}

// FullError is the insufficient-storage error of a filesystem that has
// reached its reserve; cause, if not nil, is what ran into it.
func (r Room) FullError(cause error) error {
	return &draupnir.Error{
		Kind: draupnir.KindInsufficientStorage,
		Msg: fmt.Sprintf("the data path is full: %d MiB free, and %d MiB of that stay reserved for the state database and running instances; free some space (destroy images or instances) and try again",
			r.Free>>20, r.Reserve>>20),
		Err: cause,
	}
}

// Ensure returns an insufficient-storage error when dir's filesystem has no
// free space above the reserve, so that work that would fill it (a new
// instance) is refused before it starts.
func Ensure(dir string) error {
	r, err := Of(dir)
	if err != nil {
		return err
	}
	if r.Avail() <= 0 {
		return r.FullError(nil)
	}
	return nil
}
