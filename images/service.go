// Package images owns the lifecycle of images: a row and an empty upload
// subvolume when one is created, the bytes that arrive by scp, sftp or a
// streaming upload, and finalising — extracting the backup, booting it
// privately, securing it against what the source planted (harden.go), running
// the anonymisation script as the data owners, leaving no removed value in
// its files, and freezing it as a read-only btrfs snapshot, after which the
// raw upload is deleted. Uploads are private to root. Finalising is a job
// owned by the service, not by the request that asked for it. An image may
// also be saved from an instance (save.go): a copy of its data, booted,
// stripped of the instance's password and shut down cleanly before it is
// frozen; it belongs to whoever saved it, who may destroy it. On a node of
// a cluster, the images it registers are made on that node, and Reconcile
// repairs only those.
package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

// Options configures a Service.
type Options struct {
	// Node is this node's name in a cluster (empty for a single node): the
	// images it registers are made here, and Reconcile repairs only those;
	// an image is ready here only once this node holds a ready copy
	// (package replicate ships them), and a destroy reaches every node's
	// copy.
	Node            string
	Pool            *pgxpool.Pool
	Supervisor      *supervisor.Supervisor
	UploadsDir      string // data_path/image_uploads
	SnapshotsDir    string // data_path/image_snapshots
	RunDir          string // short directory for private unix sockets
	SuperuserAccess bool   // hand out a superuser role instead of the restricted one
	// ScriptAsSuperuser runs anonymisation scripts as the backup's superuser
	// rather than as the instance role (the data owners' rights), with the
	// source's triggers and rules off while it runs.
	ScriptAsSuperuser bool
	KeepUploads       bool // keep an image's raw upload once it is ready (debugging)
	Log               *slog.Logger
}

// Service manages images.
type Service struct {
	deps
	opts Options
	log  *slog.Logger

	// base outlives requests: finalise jobs run on it.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	jobs     map[int64]*job // finalise jobs in flight
	destroys map[int64]bool // images being destroyed: no new instances
	uploads  map[int64]int  // upload calls and files in progress per image
	// uploadEpoch moves when a finalise or destroy begins: open uploads
	// then check their image's state again (see OpenUpload).
	uploadEpoch uint64

	baseMu    sync.Mutex
	baselines map[string]*baseline // by major version
}

type job struct {
	done chan struct{}
	im   *draupnir.Image
	err  error
}

// New returns a Service. Call Close to stop its jobs.
func New(opts Options) *Service {
	return newService(opts, realDeps(opts))
}

func newService(opts Options, d deps) *Service {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	base, cancel := context.WithCancel(context.Background())
	return &Service{
		deps:      d,
		opts:      opts,
		baselines: map[string]*baseline{},
		log:       opts.Log.With("component", "images"),
		base:      base,
		cancel:    cancel,
		jobs:      map[int64]*job{},
		destroys:  map[int64]bool{},
		uploads:   map[int64]int{},
	}
}

// Close cancels running finalise jobs (their images end up failed, as after a
// crash) and waits for them.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
}

func (s *Service) uploadDir(id int64) string {
	return filepath.Join(s.opts.UploadsDir, strconv.FormatInt(id, 10))
}

// SnapshotDir is the read-only snapshot of a ready image.
func (s *Service) SnapshotDir(id int64) string {
	return filepath.Join(s.opts.SnapshotsDir, strconv.FormatInt(id, 10))
}

func (s *Service) workDir(id int64) string { return s.SnapshotDir(id) + ".work" }

func requireUpload(p draupnir.Principal, what string) error {
	if !p.Upload {
		return draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may %s", what)
	}
	return nil
}

// List returns every image as p sees it (see Get).
func (s *Service) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error) {
	rows, err := s.store.listAll(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*draupnir.Image, len(rows))
	for i, r := range rows {
		out[i] = &r.Image
	}
	if err := s.addCopies(ctx, out...); err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = visibleTo(p, out[i])
	}
	return out, nil
}

// addCopies fills in the images' copies on the nodes of a cluster.
func (s *Service) addCopies(ctx context.Context, ims ...*draupnir.Image) error {
	if s.copies == nil || len(ims) == 0 {
		return nil
	}
	ids := make([]int64, len(ims))
	for i, im := range ims {
		ids[i] = im.ID
	}
	byID, err := s.copies.copies(ctx, ids)
	if err != nil {
		return err
	}
	for _, im := range ims {
		im.Nodes = byID[im.ID]
	}
	return nil
}

// Get returns image id as p sees it: only the upload principal reads why
// finalising failed.
func (s *Service) Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	r, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := s.addCopies(ctx, &r.Image); err != nil {
		return nil, err
	}
	return visibleTo(p, &r.Image), nil
}

// FailedForOthers is the error of a failed image as principals other than
// the upload principal read it.
const FailedForOthers = "finalising failed; the upload principal can see why"

// visibleTo returns im as p may see it. A failed finalise's error quotes
// whatever the script or postgres said, which can be the source's data
// (`invalid input syntax for type integer: "<a production value>"`): the
// upload principal, who runs finalise, reads it; others learn only that it
// failed.
func visibleTo(p draupnir.Principal, im *draupnir.Image) *draupnir.Image {
	if p.Upload || im.Error == "" && !slices.ContainsFunc(im.Nodes, func(c draupnir.ImageCopy) bool { return c.Error != "" }) {
		return im
	}
	c := *im
	if c.Error != "" {
		c.Error = FailedForOthers
	}
	// Why a copy failed can quote the data path: the upload principal's.
	c.Nodes = slices.Clone(im.Nodes)
	for i := range c.Nodes {
		c.Nodes[i].Error = ""
	}
	return &c
}

// Ready returns what it takes to make an instance of image id, if instances
// can be made of it: it is ready and not being destroyed.
func (s *Service) Ready(ctx context.Context, id int64) (*draupnir.ReadyImage, error) {
	r, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State != draupnir.ImageReady {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is %s, not ready", id, r.State)
	}
	s.mu.Lock()
	destroying := s.destroys[id]
	s.mu.Unlock()
	if destroying {
		return nil, destroyingError(id)
	}
	if s.copies != nil {
		here, err := s.copies.readyHere(ctx, id)
		if err != nil {
			return nil, err
		}
		if !here {
			return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is not ready on this node yet (it is being copied here)", id)
		}
	}
	return &draupnir.ReadyImage{ID: id, Database: r.Database, Snapshot: s.SnapshotDir(id), Superuser: r.Superuser}, nil
}

// destroyingError refuses work on an image whose destroy is under way: a
// finalise or upload started now would write into subvolumes the destroy is
// deleting, and recreate them after it.
func destroyingError(id int64) error {
	return draupnir.Errorf(draupnir.KindConflict, "image %d is being destroyed", id)
}

// Create makes an image row and its empty upload subvolume.
func (s *Service) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return s.CreateInSeries(ctx, p, "", backedUpAt, script)
}

// CreateInSeries is Create for an image of source's series ("" for none).
func (s *Service) CreateInSeries(ctx context.Context, p draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	if err := requireUpload(p, "create images"); err != nil {
		return nil, err
	}
	if source != "" && !draupnir.ValidSourceName(source) {
		return nil, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "source",
			Msg: "source must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit"}
	}
	if backedUpAt.IsZero() {
		return nil, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "backed_up_at", Msg: "backed_up_at is required (RFC 3339, e.g. 2017-05-01T12:00:00Z)"}
	}
	if err := checkScript(script); err != nil {
		return nil, err
	}
	r, err := s.store.insert(ctx, source, backedUpAt.UTC(), script)
	if err != nil {
		return nil, err
	}
	dir := s.uploadDir(r.ID)
	if err := makeUploadDir(dir); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// A leftover of an image whose row is gone: its data is nobody's.
			if err = btrfs.Delete(dir); err == nil {
				err = makeUploadDir(dir)
			}
		}
		if err != nil {
			s.store.delete(context.WithoutCancel(ctx), r.ID)
			return nil, draupnir.StorageError(fmt.Errorf("creating the upload subvolume of image %d: %w", r.ID, err))
		}
	}
	s.log.Info("image created", "image", r.ID, "source", source)
	return &r.Image, nil
}

// checkScript refuses what neither the state database (text) nor psql can
// hold, so it is the client's mistake (422) and not a server error.
func checkScript(script string) error {
	if strings.ContainsRune(script, 0) {
		return &draupnir.Error{Kind: draupnir.KindInvalid, Field: "anonymisation_script", Msg: "anonymisation_script must not contain NUL characters"}
	}
	return nil
}

// Update changes the script or backup time of an image that is not ready, so
// a failed finalise can be fixed and retried.
func (s *Service) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	if err := requireUpload(p, "change images"); err != nil {
		return nil, err
	}
	if patch.BackedUpAt != nil && patch.BackedUpAt.IsZero() {
		return nil, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "backed_up_at", Msg: "backed_up_at must be a time"}
	}
	if patch.AnonymisationScript != nil {
		if err := checkScript(*patch.AnonymisationScript); err != nil {
			return nil, err
		}
	}
	r, err := s.store.update(ctx, id, patch)
	if err != nil {
		return nil, err
	}
	return &r.Image, nil
}

// Destroy removes an image: its instances (through instances), its row, its
// snapshot and its upload. New instances of it are refused meanwhile (Ready
// says so); one whose create was already past that check keeps the image
// (the row cannot go while an instance refers to it), and the destroy
// answers a conflict to retry. The row goes before the subvolumes, so an
// image is never left ready without its snapshot; a subvolume left behind by
// a crash is reconciled away. The instance service depends on this one, so
// it is handed in by the caller rather than held.
func (s *Service) Destroy(ctx context.Context, p draupnir.Principal, id int64, instances draupnir.InstanceDestroyer) error {
	if !p.Upload {
		// A user may destroy the images they saved, and no other.
		r, err := s.store.get(ctx, id)
		if err != nil {
			return err
		}
		if !p.CanDestroy(&r.Image) {
			return requireUpload(p, "destroy images that others saved or uploaded")
		}
	}
	s.mu.Lock()
	_, finalising := s.jobs[id]
	destroying := s.destroys[id]
	if !finalising && !destroying {
		s.destroys[id] = true
		s.closeUploadsLocked()
	}
	s.mu.Unlock()
	if finalising {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is being finalised; destroy it when that ends", id)
	}
	if destroying {
		return draupnir.Errorf(draupnir.KindConflict, "image %d is already being destroyed", id)
	}
	defer func() {
		s.mu.Lock()
		delete(s.destroys, id)
		s.mu.Unlock()
	}()
	if _, err := s.store.get(ctx, id); err != nil {
		return err
	}
	if !p.Upload {
		// A user's destroy takes only their own instances with it; new
		// ones are refused from here on, so the answer cannot go stale.
		owners, err := instances.OwnersOfImage(ctx, id)
		if err != nil {
			return err
		}
		if others := slices.DeleteFunc(owners, func(o string) bool { return o == p.Name }); len(others) > 0 {
			return draupnir.Errorf(draupnir.KindConflict, "image %d has instances of %d other users, which destroying it would destroy; they must destroy theirs first, or the upload principal destroy it", id, len(others))
		}
	}
	if err := instances.DestroyAllOfImage(ctx, id); err != nil {
		return fmt.Errorf("destroying the instances of image %d: %w", id, err)
	}
	if s.copies != nil {
		// In a cluster the image's copies go first, each node its own;
		// the row goes with the last (package replicate). From here on
		// it is gone for everyone.
		n, err := s.copies.markDestroying(ctx, id)
		if err != nil {
			return err
		}
		if n > 0 {
			return s.destroyCopy(id)
		}
	}
	if err := s.store.delete(ctx, id); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23503" { // foreign_key_violation
			return draupnir.Errorf(draupnir.KindConflict, "an instance of image %d was being created while it was destroyed; destroy it again", id)
		}
		return fmt.Errorf("destroying image %d: %w", id, err)
	}
	var errs []error
	for _, dir := range []string{s.workDir(id), s.SnapshotDir(id), s.uploadDir(id)} {
		if err := s.volumes.Delete(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// The row is gone: the next start's reconcile deletes what is left.
		return fmt.Errorf("image %d is destroyed but its subvolumes are not all deleted: %w", id, err)
	}
	s.log.Info("image destroyed", "image", id)
	return nil
}

// destroyCopy deletes this node's subvolumes of image id, whose destroy has
// begun on every node. Each node's shipping (package replicate) then drops
// its copy's row, this node's included, and the last one the image's row.
func (s *Service) destroyCopy(id int64) error {
	var errs []error
	for _, dir := range []string{s.workDir(id), s.SnapshotDir(id), s.uploadDir(id)} {
		if err := s.volumes.Delete(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// This node's shipping retries the snapshot's deletion.
		return fmt.Errorf("image %d is being destroyed but its subvolumes here are not all deleted: %w", id, err)
	}
	s.log.Info("image destroyed; every node deletes its copy", "image", id)
	return nil
}

// adopt makes r, an image of no node whose snapshot or upload is here,
// this node's: a single node's, once it is made a node of a cluster.
// It reports whether r is now this node's.
func (s *Service) adopt(ctx context.Context, r *row) bool {
	if r.Node != "" {
		return false
	}
	snap, _ := s.volumes.IsSubvolume(s.SnapshotDir(r.ID))
	upload, _ := s.volumes.IsSubvolume(s.uploadDir(r.ID))
	if !snap && !upload {
		return false
	}
	ok, err := s.store.adopt(ctx, r.ID)
	if err != nil || !ok {
		if err != nil {
			s.log.Error("could not take over an image of the single node this was", "image", r.ID, "err", err)
		}
		return false
	}
	s.log.Info("took over an image of the single node this was", "image", r.ID, "node", s.opts.Node)
	r.Node = s.opts.Node
	return true
}

// Reconcile repairs what a crash left: no image stays finalising, half-made
// work directories go, and subvolumes that no row owns are deleted.
func (s *Service) Reconcile(ctx context.Context) error {
	rows, err := s.store.listAll(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, r := range rows {
		id := strconv.FormatInt(r.ID, 10)
		known[id] = true
		if r.Node != s.opts.Node {
			if !s.adopt(ctx, r) {
				// Another node makes it, perhaps right now; a copy of
				// it here is the shipping's to keep or repair.
				continue
			}
		}
		if r.State == draupnir.ImageFinalising && r.Saved() {
			// A save has nothing to retry from: undo it.
			s.log.Warn("image was being saved from an instance when the server stopped; deleting it", "image", r.ID)
			if err := s.discardWork(ctx, r.ID); err != nil {
				return err
			}
			if err := s.store.delete(ctx, r.ID); err != nil {
				return err
			}
			delete(known, id)
			continue
		}
		if r.State == draupnir.ImageFinalising {
			s.log.Warn("image was finalising when the server stopped; marking it failed", "image", r.ID)
			if err := s.discardWork(ctx, r.ID); err != nil {
				return err
			}
			if err := s.store.fail(ctx, r.ID, "finalising was interrupted by a restart of the server; call done again"); err != nil {
				return err
			}
			continue
		}
		if err := s.discardWork(ctx, r.ID); err != nil {
			return err
		}
		if r.State == draupnir.ImageReady {
			if ok, _ := s.volumes.IsSubvolume(s.SnapshotDir(r.ID)); !ok {
				s.log.Error("ready image has lost its snapshot; marking it failed", "image", r.ID)
				s.store.fail(ctx, r.ID, "the image's snapshot is missing from the data path; upload and finalise it again")
			}
		} else if err := s.volumes.Delete(s.SnapshotDir(r.ID)); err != nil {
			return err
		}
		if err := s.reconcileUpload(r); err != nil {
			return err
		}
	}
	for _, dir := range []string{s.opts.UploadsDir, s.opts.SnapshotsDir} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		for _, e := range ents {
			name := e.Name()
			name, _ = strings.CutSuffix(name, ".work")
			if known[name] {
				continue
			}
			path := filepath.Join(dir, e.Name())
			s.log.Warn("deleting a subvolume that no image owns", "path", path)
			s.postgres.StopDataDir(ctx, path, supervisor.Immediate, 10*time.Second)
			if err := s.volumes.Delete(path); err != nil {
				s.log.Error("could not delete an orphaned subvolume", "path", path, "err", err)
			}
		}
	}
	return nil
}

// reconcileUpload gives image r the upload it should have: one to write into
// and finalise from until it is ready, none afterwards unless uploads are
// kept (a crash may have come between ready and the deletion). Uploads made
// by an older version get the private mode.
func (s *Service) reconcileUpload(r *row) error {
	dir := s.uploadDir(r.ID)
	exists, _ := s.volumes.IsSubvolume(dir)
	switch {
	case r.State == draupnir.ImageReady && exists && !s.opts.KeepUploads:
		s.log.Info("deleting the upload of a ready image", "image", r.ID)
		if err := s.volumes.Delete(dir); err != nil {
			return fmt.Errorf("deleting the upload of ready image %d: %w", r.ID, err)
		}
	case exists:
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("making the upload of image %d private: %w", r.ID, err)
		}
	case r.State != draupnir.ImageReady:
		if err := makeUploadDir(dir); err != nil {
			return fmt.Errorf("recreating the upload subvolume of image %d: %w", r.ID, err)
		}
	}
	return nil
}

// discardWork stops any postgres left on image id's work directory and
// deletes the directory.
func (s *Service) discardWork(ctx context.Context, id int64) error {
	work := s.workDir(id)
	if _, err := os.Stat(work); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := s.postgres.StopDataDir(ctx, work, supervisor.Immediate, 10*time.Second); err != nil {
		return fmt.Errorf("stopping the private postgres of image %d: %w", id, err)
	}
	if err := s.volumes.Delete(work); err != nil {
		return fmt.Errorf("deleting the work directory of image %d: %w", id, err)
	}
	return nil
}
