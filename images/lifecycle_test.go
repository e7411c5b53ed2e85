package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
)

func TestReady(t *testing.T) {
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageReady, "snapshot")
	e.image(t, 2, draupnir.ImageFailed)
	got, err := e.s.Ready(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := (draupnir.ReadyImage{ID: 1, Database: "app", Snapshot: e.s.SnapshotDir(1), Superuser: "postgres"}); *got != want {
		t.Errorf("got %+v, want %+v", *got, want)
	}
	if _, err := e.s.Ready(context.Background(), 2); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("a failed image: %v, want a conflict", err)
	}
	if _, err := e.s.Ready(context.Background(), 3); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("a missing image: %v, want not found", err)
	}
}

// fakeInstances is the instance service as an image destroy sees it. While
// it runs, it checks that the image refuses new instances and new work.
type fakeInstances struct {
	t      *testing.T
	s      *Service
	err    error
	called int
	owners []string // who owns instances of the image
}

func (f *fakeInstances) OwnersOfImage(ctx context.Context, imageID int64) ([]string, error) {
	return f.owners, nil
}

func (f *fakeInstances) DestroyAllOfImage(ctx context.Context, imageID int64) error {
	if f.called++; f.called > 1 {
		f.t.Errorf("the instances of image %d destroyed %d times", imageID, f.called)
		return f.err
	}
	if _, err := f.s.Ready(ctx, imageID); !strings.Contains(fmt.Sprint(err), "being destroyed") {
		f.t.Errorf("during the destroy, Ready answers %v; want the image being destroyed", err)
	}
	if _, err := f.s.Finalise(ctx, uploader, imageID); !strings.Contains(fmt.Sprint(err), "being destroyed") {
		f.t.Errorf("during the destroy, Finalise answers %v; want the image being destroyed", err)
	}
	if err := f.s.Destroy(ctx, uploader, imageID, f); !strings.Contains(fmt.Sprint(err), "already being destroyed") {
		f.t.Errorf("during the destroy, a second destroy answers %v", err)
	}
	return f.err
}

func TestDestroy(t *testing.T) {
	boom := errors.New("boom")
	fk := &pgconn.PgError{Code: "23503", Message: "update or delete on table \"images\" violates foreign key constraint"}
	tests := []struct {
		name      string
		p         draupnir.Principal
		id        int64
		setup     func(e *env, in *fakeInstances)
		ok        bool
		wantKind  draupnir.Kind // of a refusal or failure
		wantMsg   string
		cascade   bool // the instances were destroyed
		rowGone   bool
		subvsGone bool
	}{
		{name: "destroyed", p: uploader, id: 1, ok: true, cascade: true, rowGone: true, subvsGone: true},
		{name: "by a user", p: draupnir.Principal{Name: "alice@example.com"}, id: 1, wantKind: draupnir.KindForbidden},
		{name: "missing", p: uploader, id: 9, wantKind: draupnir.KindNotFound},
		{name: "while it is finalised", p: uploader, id: 1, wantKind: draupnir.KindConflict, wantMsg: "being finalised",
			setup: func(e *env, _ *fakeInstances) { e.s.jobs[1] = &job{done: make(chan struct{})} }},
		{name: "its instances cannot be destroyed", p: uploader, id: 1, wantKind: draupnir.KindInternal, wantMsg: "destroying the instances of image 1",
			cascade: true, setup: func(_ *env, in *fakeInstances) { in.err = boom }},
		{name: "an instance was created meanwhile", p: uploader, id: 1, wantKind: draupnir.KindConflict, wantMsg: "destroy it again",
			cascade: true, setup: func(e *env, _ *fakeInstances) { e.store.failNext("delete", fmt.Errorf("deleting: %w", fk)) }},
		{name: "the state database fails", p: uploader, id: 1, wantKind: draupnir.KindInternal, wantMsg: "destroying image 1",
			cascade: true, setup: func(e *env, _ *fakeInstances) { e.store.failNext("delete", boom) }},
		{name: "a subvolume cannot be deleted", p: uploader, id: 1, wantKind: draupnir.KindInternal, wantMsg: "not all deleted",
			cascade: true, rowGone: true, setup: func(e *env, _ *fakeInstances) {
				e.vol.Fail = func(op, path string) error {
					if op == "Delete" && path == e.s.SnapshotDir(1) {
						return boom
					}
					return nil
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.image(t, 1, draupnir.ImageReady, "snapshot", "upload", "work")
			in := &fakeInstances{t: t, s: e.s}
			if tt.setup != nil {
				tt.setup(e, in)
			}
			err := e.s.Destroy(context.Background(), tt.p, tt.id, in)
			switch {
			case tt.ok && err != nil:
				t.Fatal(err)
			case !tt.ok && (err == nil || draupnir.KindOf(err) != tt.wantKind || !strings.Contains(err.Error(), tt.wantMsg)):
				t.Fatalf("got %v (kind %v), want kind %v saying %q", err, draupnir.KindOf(err), tt.wantKind, tt.wantMsg)
			}
			if (in.called > 0) != tt.cascade {
				t.Errorf("instances destroyed: %v, want %v", in.called > 0, tt.cascade)
			}
			if gone := e.store.row(1) == nil; gone != tt.rowGone {
				t.Errorf("row gone: %v, want %v", gone, tt.rowGone)
			}
			if left := len(e.vol.Subvolumes()); tt.subvsGone != (left == 0) {
				t.Errorf("subvolumes left: %v", e.vol.Subvolumes())
			}
			if !tt.rowGone {
				// The refusal or failure leaves the image whole and usable.
				if len(e.vol.Subvolumes()) != 3 {
					t.Errorf("a surviving image lost subvolumes: %v", e.vol.Subvolumes())
				}
				if _, err := e.s.Ready(context.Background(), 1); err != nil {
					t.Errorf("after the destroy, Ready answers %v", err)
				}
			}
			if len(e.s.destroys) != 0 {
				t.Errorf("the destroy left its mark: %v", e.s.destroys)
			}
		})
	}
}

// A finalise that fails leaves the image failed with the reason, keeps the
// upload for a retry, and leaves no work directory or snapshot behind.
func TestFinaliseFails(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string // in the upload
		setup    func(e *env)
		wantKind draupnir.Kind
		want     string
	}{
		{name: "a tablespace archive", files: map[string]string{"16384.tar": "x"},
			wantKind: draupnir.KindUnprocessable, want: "tablespace archive 16384.tar"},
		{name: "a tablespace map", files: map[string]string{"PG_VERSION": "15\n", "tablespace_map": "16384 /srv/ts\n"},
			wantKind: draupnir.KindUnprocessable, want: "uses tablespaces"},
		{name: "no postgres for its version", files: map[string]string{"PG_VERSION": "15\n"},
			wantKind: draupnir.KindUnprocessable, want: errNoPostgres.Error()},
		{name: "the disk is full", files: map[string]string{"PG_VERSION": "15\n"}, setup: func(e *env) {
			e.vol.Fail = func(op, path string) error {
				if op == "Snapshot" {
					return fmt.Errorf("snapshot: %w", unix.ENOSPC)
				}
				return nil
			}
		}, wantKind: draupnir.KindInsufficientStorage, want: "snapshotting the upload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.image(t, 1, draupnir.ImageUploading, "upload")
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(e.s.uploadDir(1), name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tt.setup != nil {
				tt.setup(e)
			}
			for attempt := range 2 { // a failed image may be finalised again
				_, err := e.s.Finalise(context.Background(), uploader, 1)
				if draupnir.KindOf(err) != tt.wantKind || !strings.Contains(fmt.Sprint(err), tt.want) {
					t.Fatalf("attempt %d: got %v (kind %v), want kind %v saying %q", attempt, err, draupnir.KindOf(err), tt.wantKind, tt.want)
				}
				r := e.store.row(1)
				if r.State != draupnir.ImageFailed || !strings.Contains(r.Error, tt.want) {
					t.Errorf("attempt %d: image %s with %q, want failed saying %q", attempt, r.State, r.Error, tt.want)
				}
				if subs := e.vol.Subvolumes(); len(subs) != 1 || subs[0] != e.s.uploadDir(1) {
					t.Errorf("attempt %d: subvolumes %v, want the upload alone", attempt, subs)
				}
				if len(e.s.jobs) != 0 {
					t.Errorf("attempt %d: the job is still registered", attempt)
				}
			}
		})
	}
}

// Finalise runs only on an image that is waiting for it.
func TestFinaliseRefused(t *testing.T) {
	tests := []struct {
		name     string
		p        draupnir.Principal
		state    draupnir.ImageState
		setup    func(e *env)
		wantKind draupnir.Kind
		want     string
	}{
		{name: "by a user", p: draupnir.Principal{Name: "alice@example.com"}, state: draupnir.ImageUploading, wantKind: draupnir.KindForbidden},
		{name: "ready", p: uploader, state: draupnir.ImageReady, wantKind: draupnir.KindConflict, want: "already ready"},
		{name: "finalising elsewhere", p: uploader, state: draupnir.ImageFinalising, wantKind: draupnir.KindConflict, want: "already being finalised"},
		{name: "a job runs", p: uploader, state: draupnir.ImageUploading, wantKind: draupnir.KindConflict, want: "already being finalised",
			setup: func(e *env) { e.s.jobs[1] = &job{done: make(chan struct{})} }},
		{name: "an upload is open", p: uploader, state: draupnir.ImageUploading, wantKind: draupnir.KindConflict, want: "still in progress",
			setup: func(e *env) { e.s.uploads[1] = 1 }},
		{name: "the state database fails", p: uploader, state: draupnir.ImageUploading, wantKind: draupnir.KindInternal, want: "connection refused",
			setup: func(e *env) { e.store.failNext("transition", errors.New("connection refused")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.image(t, 1, tt.state, "upload")
			if err := os.WriteFile(filepath.Join(e.s.uploadDir(1), "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(e)
			}
			_, err := e.s.Finalise(context.Background(), tt.p, 1)
			if draupnir.KindOf(err) != tt.wantKind || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Fatalf("got %v (kind %v), want kind %v saying %q", err, draupnir.KindOf(err), tt.wantKind, tt.want)
			}
			if r := e.store.row(1); r.State != tt.state {
				t.Errorf("a refused finalise moved the image to %s", r.State)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		e := newEnv(t)
		if _, err := e.s.Finalise(context.Background(), uploader, 1); draupnir.KindOf(err) != draupnir.KindNotFound {
			t.Errorf("got %v, want not found", err)
		}
	})
}

// A failure that the state database cannot record at first is retried:
// an image left finalising without a job could not be finalised again.
func TestFinaliseRecordsFailureDespiteTheStore(t *testing.T) {
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageUploading, "upload")
	if err := os.WriteFile(filepath.Join(e.s.uploadDir(1), "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.store.failNext("fail", errors.New("connection refused"), errors.New("connection refused"))
	if _, err := e.s.Finalise(context.Background(), uploader, 1); draupnir.KindOf(err) != draupnir.KindUnprocessable {
		t.Fatalf("got %v", err)
	}
	if r := e.store.row(1); r.State != draupnir.ImageFailed {
		t.Errorf("image %s, want failed", r.State)
	}
	if n := e.store.calls["fail"]; n != 3 {
		t.Errorf("%d attempts to record the failure, want 3", n)
	}
}

// Reconcile repairs what a crash left.
func TestReconcile(t *testing.T) {
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageFinalising, "upload", "work")
	e.image(t, 2, draupnir.ImageReady)                       // lost its snapshot
	e.image(t, 3, draupnir.ImageReady, "snapshot", "upload") // crash between ready and deleting the upload
	e.image(t, 4, draupnir.ImageFailed, "upload", "snapshot", "work")
	e.image(t, 5, draupnir.ImageUploading, "upload")
	if err := os.Chmod(e.s.uploadDir(5), 0o755); err != nil { // as an older version made it
		t.Fatal(err)
	}
	orphans := []string{filepath.Join(e.s.opts.UploadsDir, "99"), filepath.Join(e.s.opts.SnapshotsDir, "99"), filepath.Join(e.s.opts.SnapshotsDir, "98.work")}
	for _, o := range orphans {
		e.vol.AddSubvolume(o, false)
	}
	if err := e.s.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	states := map[int64]draupnir.ImageState{1: draupnir.ImageFailed, 2: draupnir.ImageFailed, 3: draupnir.ImageReady, 4: draupnir.ImageFailed, 5: draupnir.ImageUploading}
	for id, want := range states {
		if r := e.store.row(id); r.State != want {
			t.Errorf("image %d is %s, want %s", id, r.State, want)
		}
	}
	if r := e.store.row(1); !strings.Contains(r.Error, "interrupted by a restart") {
		t.Errorf("image 1 failed with %q", r.Error)
	}
	if r := e.store.row(2); !strings.Contains(r.Error, "snapshot is missing") {
		t.Errorf("image 2 failed with %q", r.Error)
	}
	want := []string{e.s.uploadDir(1), e.s.uploadDir(4), e.s.uploadDir(5), e.s.SnapshotDir(3)}
	got := e.vol.Subvolumes()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("subvolumes\n%v, want\n%v", got, want)
	}
	if fi, err := os.Stat(e.s.uploadDir(5)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the upload of image 5 is not private: %v %v", fi.Mode(), err)
	}
	stopped := strings.Join(e.pg.stopped(), " ")
	for _, dir := range append(orphans, e.s.workDir(1), e.s.workDir(4)) {
		if !strings.Contains(stopped, dir) {
			t.Errorf("no postgres stopped on %s before it went (stopped: %s)", dir, stopped)
		}
	}
}

// A save a crash interrupted has nothing to finalise from: Reconcile
// deletes its row and work directory, and makes it no upload; a saved image
// that was made ready stays as it is, without an upload.
func TestReconcileInterruptedSave(t *testing.T) {
	e := newEnv(t)
	e.image(t, 1, draupnir.ImageReady, "snapshot")
	e.image(t, 2, draupnir.ImageFinalising, "work")
	e.image(t, 3, draupnir.ImageReady, "snapshot")
	for _, id := range []int64{2, 3} {
		e.store.mu.Lock()
		e.store.rows[id].Owner, e.store.rows[id].ParentImageID, e.store.rows[id].FromInstanceID = "alice@example.com", 1, 7
		e.store.mu.Unlock()
	}
	if err := e.s.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := e.store.row(2); r != nil {
		t.Errorf("the interrupted save is still there: %+v", r)
	}
	if r := e.store.row(3); r == nil || r.State != draupnir.ImageReady {
		t.Errorf("the saved image is %+v, want it ready", r)
	}
	want := []string{e.s.SnapshotDir(1), e.s.SnapshotDir(3)}
	if got := e.vol.Subvolumes(); !slices.Equal(got, want) {
		t.Errorf("subvolumes\n%v, want\n%v", got, want)
	}
	if !strings.Contains(strings.Join(e.pg.stopped(), " "), e.s.workDir(2)) {
		t.Error("the postgres of the interrupted save's copy was not stopped")
	}
}

// A user destroys the images they saved, and no other, and not while others
// have instances of it; the upload principal destroys any.
func TestDestroyByOwner(t *testing.T) {
	tests := []struct {
		name   string
		owner  string
		as     draupnir.Principal
		owners []string // of instances of the image
		err    error    // nil: destroyed
	}{
		{"uploaded, by a user", "", draupnir.Principal{Name: "alice@example.com"}, nil, draupnir.ErrForbidden},
		{"saved by another", "bob@example.com", draupnir.Principal{Name: "alice@example.com"}, nil, draupnir.ErrForbidden},
		{"saved by them", "alice@example.com", draupnir.Principal{Name: "alice@example.com"}, nil, nil},
		{"saved by them, with their instances", "alice@example.com", draupnir.Principal{Name: "alice@example.com"}, []string{"alice@example.com"}, nil},
		{"saved by them, with others' instances", "alice@example.com", draupnir.Principal{Name: "alice@example.com"}, []string{"alice@example.com", "bob@example.com"}, draupnir.ErrConflict},
		{"saved, by the upload principal", "bob@example.com", draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, []string{"bob@example.com", "carol@example.com"}, nil},
		{"empty name does not match an uploaded image", "", draupnir.Principal{}, nil, draupnir.ErrForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.image(t, 1, draupnir.ImageReady, "snapshot")
			e.store.mu.Lock()
			e.store.rows[1].Owner = tt.owner
			e.store.mu.Unlock()
			err := e.s.Destroy(context.Background(), tt.as, 1, &fakeInstances{t: t, s: e.s, owners: tt.owners})
			if (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Fatalf("Destroy = %v, want %v", err, tt.err)
			}
			if gone := e.store.row(1) == nil; gone != (tt.err == nil) {
				t.Errorf("image gone: %v", gone)
			}
		})
	}
}

// TestReconcileLeavesOtherNodesImages: a node repairs only the images it
// makes; another node may be finalising one right now, and a ready one of
// another node has no snapshot here until it is shipped.
func TestReconcileLeavesOtherNodesImages(t *testing.T) {
	e := newEnv(t)
	e.s.opts.Node, e.store.node = "a", "a"
	e.image(t, 1, draupnir.ImageFinalising)
	e.image(t, 2, draupnir.ImageReady)
	e.image(t, 3, draupnir.ImageFinalising)
	// A single node's, made a node of a cluster: its snapshot is here.
	e.image(t, 4, draupnir.ImageReady, "snapshot")
	// Of no node, and not here: another machine's to take over.
	e.image(t, 5, draupnir.ImageReady)
	e.store.mu.Lock()
	for _, id := range []int64{1, 2} {
		e.store.rows[id].Node = "b"
	}
	e.store.rows[3].Node = "a"
	e.store.mu.Unlock()
	if err := e.s.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int64]draupnir.ImageState{1: draupnir.ImageFinalising, 2: draupnir.ImageReady, 3: draupnir.ImageFailed,
		4: draupnir.ImageReady, 5: draupnir.ImageReady} {
		if r := e.store.row(id); r.State != want {
			t.Errorf("image %d is %s, want %s", id, r.State, want)
		}
	}
	for id, want := range map[int64]string{1: "b", 2: "b", 3: "a", 4: "a", 5: ""} {
		if r := e.store.row(id); r.Node != want {
			t.Errorf("image %d is node %q's, want %q's", id, r.Node, want)
		}
	}
	if !e.exists(e.s.SnapshotDir(4)) {
		t.Error("the single node's image lost its snapshot")
	}
}
