package extract

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"
	"strings"

	"github.com/draupnir-db/draupnir"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Magic numbers at the start of the compressed formats Decompress detects.
var (
	magicGzip  = []byte{0x1f, 0x8b}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicLZ4   = []byte{0x04, 0x22, 0x4d, 0x18}
	magicBzip2 = []byte("BZh")
)

// zstdMaxWindow bounds the memory a hostile zstd frame can make the decoder
// allocate. zstd --long uses 128 MiB windows; nothing in a backup needs more.
const zstdMaxWindow = 128 << 20

// readBufferSize is the read-ahead between the upload file and the
// decompressor; large reads keep the syscall count down.
const readBufferSize = 256 << 10

// Decompress detects the compression of r from its first bytes (gzip, zstd,
// lz4 frame or bzip2; anything else is passed through as plain) and returns a
// reader of the plain stream. Closing it releases the decompressor, not r.
// A stream that claims a format but has a broken header is a
// KindUnprocessable error.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, readBufferSize)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, fmt.Errorf("reading the start of the archive: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, draupnir.Errorf(draupnir.KindUnprocessable, "invalid gzip stream: %v", err)
		}
		return zr, nil
	case bytes.HasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, draupnir.Errorf(draupnir.KindUnprocessable, "invalid zstd stream: %v", err)
		}
		return zr.IOReadCloser(), nil
	case bytes.HasPrefix(head, magicLZ4):
		return io.NopCloser(lz4.NewReader(br)), nil
	case bytes.HasPrefix(head, magicBzip2):
		return io.NopCloser(bzip2.NewReader(br)), nil
	default:
		return io.NopCloser(br), nil
	}
}

// archiveSuffixes are the file names IsArchive accepts, lower case.
var archiveSuffixes = []string{
	".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tar.lz4", ".tar.bz2", ".tbz2",
}

// IsArchive reports whether an uploaded file's name says it is a tar archive,
// plain or compressed (.tar, .tar.gz, .tgz, .tar.zst, .tar.zstd, .tar.lz4,
// .tar.bz2, .tbz2; case-insensitive).
func IsArchive(name string) bool {
	lower := strings.ToLower(name)
	for _, s := range archiveSuffixes {
		if strings.HasSuffix(lower, s) && len(lower) > len(s) {
			return true
		}
	}
	return false
}
