package demo

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// fakeImages is an image service that keeps what it is given: the names in
// the uploaded tar stream, the script, and which image was finalised.
type fakeImages struct {
	existing   []*draupnir.Image
	extractErr error // returned by Extract after reading the stream

	script    string
	files     map[string]bool
	closed    bool
	finalised int64
}

const demoID = 7

func (f *fakeImages) List(context.Context, draupnir.Principal) ([]*draupnir.Image, error) {
	return f.existing, nil
}

func (f *fakeImages) Create(_ context.Context, p draupnir.Principal, _ time.Time, script string) (*draupnir.Image, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "not the upload principal")
	}
	f.script = script
	return &draupnir.Image{ID: demoID}, nil
}

func (f *fakeImages) OpenUpload(_ context.Context, _ draupnir.Principal, id int64) (draupnir.Upload, error) {
	if id != demoID {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "no image %d", id)
	}
	return &fakeUpload{f: f}, nil
}

func (f *fakeImages) Finalise(_ context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	f.finalised = id
	return &draupnir.Image{ID: id}, nil
}

// fakeUpload takes a tar stream and nothing else.
type fakeUpload struct {
	draupnir.Upload // the rest is not for the demo to call
	f               *fakeImages
}

func (u *fakeUpload) Extract(_ context.Context, r io.Reader) (draupnir.UploadSummary, error) {
	u.f.files = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return draupnir.UploadSummary{}, err
		}
		u.f.files[h.Name] = true
	}
	io.Copy(io.Discard, r)
	return draupnir.UploadSummary{}, u.f.extractErr
}

func (u *fakeUpload) Close() error {
	u.f.closed = true
	return nil
}

func options(t *testing.T, im Images) Options {
	t.Helper()
	testenv.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	sup, err := supervisor.New("postgres", nil, log)
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.TempDir(t)
	t.Cleanup(func() { testenv.KillPostgresUnder(dir) })
	return Options{Images: im, Supervisor: sup, Dir: dir, RunDir: testenv.TempDir(t), Log: log}
}

// TestMake builds the demo image: a real base backup reaches the upload,
// the image is finalised with the anonymisation script, and the source
// database is stopped and gone.
func TestMake(t *testing.T) {
	im := &fakeImages{}
	opts := options(t, im)
	if err := Make(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"PG_VERSION", "backup_label", "global/pg_control"} {
		if !im.files[name] {
			t.Errorf("the upload has no %s (%d files)", name, len(im.files))
		}
	}
	if !strings.Contains(im.script, "pgbench_branches") {
		t.Errorf("script %q", im.script)
	}
	if !im.closed || im.finalised != demoID {
		t.Errorf("upload closed %v, finalised image %d; want closed and %d", im.closed, im.finalised, demoID)
	}
	if left, _ := filepath.Glob(filepath.Join(opts.Dir, "*")); len(left) != 0 {
		t.Errorf("the source database was left behind: %v", left)
	}
	if _, err := opts.Supervisor.Adopt(filepath.Join(opts.Dir, "data")); !errors.Is(err, supervisor.ErrNotRunning) {
		t.Errorf("the source database still runs: %v", err)
	}
}

// TestMakeNotNeeded leaves a server that has images alone.
func TestMakeNotNeeded(t *testing.T) {
	im := &fakeImages{existing: []*draupnir.Image{{ID: 1}}}
	opts := options(t, im)
	if err := Make(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if im.script != "" || im.finalised != 0 {
		t.Errorf("made an image on a server that has one: script %q, finalised %d", im.script, im.finalised)
	}
	if left, _ := os.ReadDir(opts.Dir); len(left) != 0 {
		t.Errorf("built something: %v", left)
	}
}

// TestMakeUploadFails reports a failed upload and finalises nothing.
func TestMakeUploadFails(t *testing.T) {
	im := &fakeImages{extractErr: errors.New("disk full")}
	opts := options(t, im)
	err := Make(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Make with a failing upload: %v", err)
	}
	if im.finalised != 0 {
		t.Errorf("finalised image %d after a failed upload", im.finalised)
	}
}
