package extract

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// FuzzTar extracts arbitrary bytes: it must never panic, never write outside
// the target directory, never leave a link of either kind, and
// classify every failure as the archive's fault (or the disk's).
// Seeds: the hostile corpus and some valid archives, plain and gzipped.
// Run longer with (minimisation is slow on tar-sized inputs, hence the flag):
//
//	go test -run '^$' -fuzz FuzzTar -fuzzminimizetime 3s ./images/extract
func FuzzTar(f *testing.F) {
	for _, tc := range hostileCorpus() {
		seed := tc.archive(f, "/tmp/draupnir-fuzz-outside")
		if len(seed) > 32<<10 {
			continue // huge seeds make the fuzzer's minimisation crawl
		}
		f.Add(seed)
	}
	valid := tarOf(f, dirm("d"), file("d/f", "hello"), file("h", "world"), file("a/b/c", strings.Repeat("z", 1000)))
	f.Add(valid)
	f.Add(gzipped(f, valid))
	f.Add(zstdOf(f, valid))
	f.Add(lz4Of(f, valid))
	f.Fuzz(func(t *testing.T, data []byte) {
		base, dir := sandbox(t)
		_, err := Tar(context.Background(), bytes.NewReader(data), dir,
			Options{UID: -1, GID: -1, MaxEntries: 100, MaxBytes: 1 << 20})
		if err != nil {
			switch draupnir.KindOf(err) {
			case draupnir.KindUnprocessable, draupnir.KindInsufficientStorage:
			default:
				t.Errorf("error of kind %d: %v", draupnir.KindOf(err), err)
			}
		}
		checkConfined(t, base)
	})
}
