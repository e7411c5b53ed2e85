package images

import (
	"errors"
	"sync/atomic"

	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/internal/diskspace"
)

// writeBudget is what one upload may write into the data path before it
// reaches the reserve (package diskspace), measured when the upload opens.
// Free space cannot be polled as bytes arrive: statfs counts them only once
// they leave the page cache, by which time they may have filled the disk.
type writeBudget struct {
	room diskspace.Room
	left atomic.Int64
}

// newWriteBudget measures the filesystem of the open file fd; with no room
// above the reserve it returns an insufficient-storage error.
func newWriteBudget(fd int) (*writeBudget, error) {
	room, err := diskspace.OfFile(fd)
	if err != nil {
		return nil, err
	}
	if room.Avail() <= 0 {
		return nil, room.FullError(nil)
	}
	b := &writeBudget{room: room}
	b.left.Store(room.Avail())
	return b, nil
}

// spend takes n bytes from the budget, or returns an insufficient-storage
// error once it is used up. It is safe for concurrent use.
func (b *writeBudget) spend(n int) error {
	if b.left.Add(-int64(n)) < 0 {
		return b.room.FullError(nil)
	}
	return nil
}

// extractLimit is the MaxBytes for an extraction into dir: what fits above
// the reserve. With no room at all it returns an insufficient-storage error.
func extractLimit(dir string) (int64, error) {
	room, err := diskspace.Of(dir)
	if err != nil {
		return 0, err
	}
	if room.Avail() <= 0 {
		return 0, room.FullError(nil)
	}
	return room.Avail(), nil
}

// spaceError turns an extraction that hit the free-space limit into an
// insufficient-storage error that says so; other errors pass through.
func spaceError(dir string, err error) error {
	if !errors.Is(err, extract.ErrTooLarge) {
		return err
	}
	room, serr := diskspace.Of(dir)
	if serr != nil {
		return err
	}
	return room.FullError(err)
}
