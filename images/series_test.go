package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/draupnir-db/draupnir"
)

func TestFail(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageUploading, "upload")
	e.image(t, 2, draupnir.ImageReady, "snapshot")
	if err := e.s.Fail(ctx, 1, "the backup failed"); err != nil {
		t.Fatal(err)
	}
	if r := e.store.row(1); r.State != draupnir.ImageFailed || r.Error != "the backup failed" {
		t.Errorf("image 1 is %s: %q", r.State, r.Error)
	}
	if err := e.s.Fail(ctx, 2, "no"); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("failing a ready image: %v, want a conflict", err)
	}
	if r := e.store.row(2); r.State != draupnir.ImageReady {
		t.Errorf("a ready image became %s", r.State)
	}
	if err := e.s.Fail(ctx, 3, "no"); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("failing a missing image: %v", err)
	}
}

func TestFillUpload(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageCreated, "upload")
	e.image(t, 2, draupnir.ImageReady, "snapshot")
	dir := e.s.uploadDir(1)
	if err := os.WriteFile(filepath.Join(dir, "old"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	fill := func(ctx context.Context, dst string) error {
		if e.exists(dst) {
			t.Errorf("fill got %s, which still exists", dst)
		}
		if e.s.uploads[1] != 1 {
			t.Errorf("the fill is not counted as an upload in progress (finalise would not wait)")
		}
		if err := e.vol.AddSubvolume(dst, false); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, "PG_VERSION"), []byte("15\n"), 0o644)
	}
	if err := e.s.FillUpload(ctx, uploader, 1, fill); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		t.Errorf("the filled upload lacks what fill wrote: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the upload's earlier content survived: %v", err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("the filled upload has mode %v, want 0700", st.Mode().Perm())
	}
	if r := e.store.row(1); r.State != draupnir.ImageUploading {
		t.Errorf("image 1 is %s after the fill, want uploading", r.State)
	}
	if len(e.s.uploads) != 0 {
		t.Errorf("uploads in progress after the fill: %v", e.s.uploads)
	}

	// A failed fill leaves nothing of what it made (and, on btrfs, an empty
	// upload for the next try; reconcile makes one otherwise).
	boom := errors.New("boom")
	err := e.s.FillUpload(ctx, uploader, 1, func(ctx context.Context, dst string) error {
		e.vol.AddSubvolume(dst, false)
		os.WriteFile(filepath.Join(dst, "half"), nil, 0o600)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("a failed fill answers %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "half")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed fill left what it made: %v", err)
	}

	// Only the upload principal, and only into an image that takes uploads.
	if err := e.s.FillUpload(ctx, draupnir.Principal{Name: "alice"}, 1, fill); draupnir.KindOf(err) != draupnir.KindForbidden {
		t.Errorf("a user's fill: %v", err)
	}
	if err := e.s.FillUpload(ctx, uploader, 2, fill); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("filling a ready image: %v", err)
	}
}
