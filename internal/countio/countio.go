// Package countio counts the bytes that pass through a reader, for upload
// summaries, metrics and progress bars.
package countio

import (
	"io"
	"sync/atomic"
)

// Reader counts the bytes read through it. N may be called while another
// goroutine reads (a progress bar).
type Reader struct {
	r io.Reader
	n atomic.Int64
}

// NewReader returns a Reader that reads from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// N returns how many bytes have been read so far.
func (c *Reader) N() int64 { return c.n.Load() }
