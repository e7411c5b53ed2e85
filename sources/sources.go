// Package sources keeps the image series of live sources fresh: for each
// [[sources]] entry it refreshes on demand and on the entry's schedule (never
// two refreshes of one source at once), making a new image of the source —
// a base backup streamed over the replication protocol straight into the
// image's upload (pull mode), or a snapshot of the source's standby (follow
// mode) — which the image service finalises as usual. A failed refresh fails
// its image with the reason and leaves the earlier images serving. After a
// success, and on every sweep, ready images of the series beyond keep are
// destroyed, except those that instances still use. It remembers across
// restarts which refresh was under way, so that a killed server's half-made
// image is failed with a reason at the next start.
package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/robfig/cron/v3"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
)

// Images is what a refresh needs of the image service (*images.Service).
type Images interface {
	CreateInSeries(ctx context.Context, p draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error)
	OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error)
	FillUpload(ctx context.Context, p draupnir.Principal, id int64, fill func(ctx context.Context, dst string) error) error
	Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error)
	Get(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
	Fail(ctx context.Context, id int64, reason string) error
	Destroy(ctx context.Context, p draupnir.Principal, id int64, instances draupnir.InstanceDestroyer) error
}

// Postgres runs PostgreSQL's client programs as the postgres OS user
// (*supervisor.Supervisor).
type Postgres interface {
	NewestMajor() (string, error)
	BinDir(major string) (string, error)
	Command(ctx context.Context, name string, args ...string) *exec.Cmd
	UID() int
	GID() int
}

// StandbyStatus is a follow-mode standby's state as the doors show it.
type StandbyStatus struct {
	State      string
	LagBytes   int64
	LagSeconds float64
	LastError  string
}

// Follower keeps the standbys of follow-mode sources.
type Follower interface {
	Status(name string) (StandbyStatus, bool)
	// SnapshotInto makes dst (which must not exist) a writable snapshot
	// of the standby's data directory, ready to be finalised.
	SnapshotInto(ctx context.Context, name, dst string) error
}

// Options configures a Service.
type Options struct {
	Sources   []config.Source
	Images    Images
	Instances draupnir.InstanceDestroyer
	Pool      *pgxpool.Pool
	// Node is this node's name on a cluster, empty on a single node: a
	// refresh's image is made here, and a refresh another node runs is
	// left to it.
	Node     string
	Postgres Postgres
	// RunDir holds the private copies of passfiles that pg_basebackup
	// reads as the postgres OS user while a refresh runs.
	RunDir string
	// Follower serves follow-mode sources; without one their refreshes
	// fail saying so.
	Follower Follower
	// SweepInterval is how often retention is tried again for images that
	// instances kept; 0 means a minute.
	SweepInterval time.Duration
	// Refreshed, if not nil, is told how each refresh ended (metrics).
	Refreshed func(source string, err error)
	Log       *slog.Logger
}

// Service refreshes the configured sources (draupnir.SourceService).
type Service struct {
	opts  Options
	log   *slog.Logger
	store store
	order []string
	srcs  map[string]*source

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex // guards the mutable fields of every source
}

// source is one configured source and what the server knows of it now.
type source struct {
	cfg   config.Source
	sched cron.Schedule // nil: on demand only

	refreshing int64 // the image of the refresh under way; 0 if none
	running    bool
	ended      chan struct{} // closed when the refresh under way ends
	next       time.Time
}

var upload = draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}

// New returns a Service for opts.Sources, which config has validated.
func New(opts Options) (*Service, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Minute
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Service{opts: opts, log: opts.Log.With("component", "sources"), store: store{opts.Pool, opts.Node},
		srcs: map[string]*source{}, base: base, cancel: cancel}
	for i, c := range opts.Sources {
		src := &source{cfg: c}
		if c.Schedule != "" {
			sched, err := config.ParseSchedule(c.Schedule)
			if err != nil {
				cancel()
				return nil, fmt.Errorf("sources[%d].schedule: %w", i, err)
			}
			src.sched = sched
		}
		s.order = append(s.order, c.Name)
		s.srcs[c.Name] = src
	}
	return s, nil
}

// Start fails the images of refreshes that a stopped server left half-made
// (after images.Service.Reconcile), then starts the schedules and the
// retention sweep.
func (s *Service) Start(ctx context.Context) error {
	interrupted, err := s.store.interrupted(ctx)
	if err != nil {
		return err
	}
	for name, id := range interrupted {
		reason := "the refresh was interrupted by a restart of the server; the next refresh makes a new image"
		if err := s.opts.Images.Fail(ctx, id, reason); err != nil && draupnir.KindOf(err) != draupnir.KindNotFound &&
			draupnir.KindOf(err) != draupnir.KindConflict {
			return fmt.Errorf("failing image %d of an interrupted refresh of source %q: %w", id, name, err)
		}
		s.log.Warn("a refresh was interrupted by a restart; its image is failed", "source", name, "image", id)
		prev, err := s.store.end(ctx, name, id, reason)
		if err != nil {
			return err
		}
		s.discardFailed(ctx, name, prev)
	}
	for _, name := range s.order {
		if src := s.srcs[name]; src.sched != nil {
			s.wg.Add(1)
			go s.schedule(src)
		}
	}
	s.wg.Add(1)
	go s.sweep()
	return nil
}

// Close stops the schedules and cancels refreshes under way (their images
// fail) and waits for them.
func (s *Service) Close() {
	// Under mu: a refresh that begins is counted before Wait, or sees the
	// cancellation and does not begin.
	s.mu.Lock()
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Service) lookup(name string) (*source, error) {
	src, ok := s.srcs[name]
	if !ok {
		return nil, draupnir.Errorf(draupnir.KindNotFound, "source %q is not configured", name)
	}
	return src, nil
}

// List returns every configured source, in the config's order.
func (s *Service) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Source, error) {
	ims, states, err := s.read(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]*draupnir.Source, 0, len(s.order))
	for _, name := range s.order {
		out = append(out, s.describe(p, s.srcs[name], ims, states[name]))
	}
	return out, nil
}

// Get returns source name.
func (s *Service) Get(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Source, error) {
	src, err := s.lookup(name)
	if err != nil {
		return nil, err
	}
	ims, states, err := s.read(ctx, p)
	if err != nil {
		return nil, err
	}
	return s.describe(p, src, ims, states[name]), nil
}

// read returns what describe needs: the images p may see and every
// source's stored state.
func (s *Service) read(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, map[string]stored, error) {
	ims, err := s.opts.Images.List(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	states, err := s.store.all(ctx)
	if err != nil {
		return nil, nil, err
	}
	return ims, states, nil
}

// FailedForOthers is the last error of a source as principals other than
// the upload principal read it: a failed script's error can quote the
// source's data.
const FailedForOthers = "the last refresh failed; the upload principal can see why"

// describe renders src for p. Only the upload principal reads where the
// source is (its conninfo, without the password) and why a refresh failed.
func (s *Service) describe(p draupnir.Principal, src *source, ims []*draupnir.Image, st stored) *draupnir.Source {
	c := src.cfg
	out := &draupnir.Source{Name: c.Name, Mode: draupnir.SourceMode(c.Mode), Schedule: c.Schedule, Keep: c.Keep,
		LastRefreshAt: st.lastRefreshAt, LastError: st.lastError}
	if p.Upload {
		out.Conninfo = RedactConninfo(c.Conninfo)
	} else if out.LastError != "" {
		out.LastError = FailedForOthers
	}
	for _, im := range ims {
		if im.Source == c.Name && im.Ready() {
			out.ImageIDs = append(out.ImageIDs, im.ID)
		}
	}
	slices.Sort(out.ImageIDs)
	s.mu.Lock()
	out.RefreshingImageID, out.NextRefreshAt = src.refreshing, src.next
	running := src.running
	s.mu.Unlock()
	switch {
	case running:
		out.State = "refreshing"
	case st.lastError != "":
		out.State = "failing"
	default:
		out.State = "idle"
	}
	if c.Mode == string(draupnir.SourceFollow) {
		out.StandbyState = "unavailable"
		if s.opts.Follower != nil {
			if ss, ok := s.opts.Follower.Status(c.Name); ok {
				out.StandbyState, out.LagBytes, out.LagSeconds = ss.State, ss.LagBytes, ss.LagSeconds
				if p.Upload {
					// Part of it is what the source's server said.
					out.StandbyError = ss.LastError
				}
			}
		}
	}
	return out
}

// Refresh starts a refresh of source name and returns its image as made so
// far; the refresh goes on without the caller (see draupnir.SourceService).
func (s *Service) Refresh(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Image, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may refresh sources")
	}
	src, err := s.lookup(name)
	if err != nil {
		return nil, err
	}
	im, err := s.begin(ctx, src)
	if err != nil {
		return nil, err
	}
	return im, nil
}

// begin claims src for a refresh, makes its image and runs the refresh in
// the background.
func (s *Service) begin(ctx context.Context, src *source) (_ *draupnir.Image, err error) {
	name := src.cfg.Name
	s.mu.Lock()
	for src.running {
		id, ended := src.refreshing, src.ended
		s.mu.Unlock()
		// A refresh whose image is already ready or failed only records
		// how it ended: wait for that rather than refuse, so that a client
		// that waited for the image may refresh again at once.
		if !s.recording(ctx, id) {
			return nil, draupnir.Errorf(draupnir.KindConflict, "source %q is already being refreshed (image %d)", name, id)
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Minute):
			return nil, draupnir.Errorf(draupnir.KindConflict, "source %q is still recording its last refresh (image %d)", name, id)
		}
		s.mu.Lock()
	}
	if s.base.Err() != nil {
		s.mu.Unlock()
		return nil, draupnir.Errorf(draupnir.KindUnavailable, "the server is shutting down")
	}
	src.running, src.ended = true, make(chan struct{})
	s.wg.Add(1)
	s.mu.Unlock()
	log := s.log.With("source", name)
	defer func() {
		if err != nil {
			log.Error("refresh failed to start", "err", err)
			s.finish(src, 0, err)
		}
	}()
	script, err := os.ReadFile(src.cfg.AnonymisationScript)
	if err != nil {
		return nil, draupnir.Errorf(draupnir.KindUnprocessable, "source %q: reading its anonymisation script: %w", name, err)
	}
	im, err := s.opts.Images.CreateInSeries(ctx, upload, name, time.Now().UTC(), string(script))
	if err != nil {
		return nil, fmt.Errorf("source %q: creating its image: %w", name, err)
	}
	if err := s.store.begin(ctx, name, im.ID); err != nil {
		if draupnir.KindOf(err) == draupnir.KindConflict {
			// Another node of the cluster won this refresh: the image
			// made for it has nothing in it and goes.
			if derr := s.opts.Images.Destroy(context.WithoutCancel(ctx), upload, im.ID, s.opts.Instances); derr != nil {
				log.Error("could not destroy the image of a refresh another node runs", "image", im.ID, "err", derr)
			}
			return nil, err
		}
		s.opts.Images.Fail(context.WithoutCancel(ctx), im.ID, "the refresh could not be recorded in the state database")
		return nil, err
	}
	s.mu.Lock()
	src.refreshing = im.ID
	s.mu.Unlock()
	log.Info("refresh started", "image", im.ID, "mode", src.cfg.Mode)
	go s.run(src, im.ID)
	return im, nil
}

// run does the refresh of src into image id and records how it ended.
func (s *Service) run(src *source, id int64) {
	ctx := s.base
	log := s.log.With("source", src.cfg.Name, "image", id)
	start := time.Now()
	var err error
	switch draupnir.SourceMode(src.cfg.Mode) {
	case draupnir.SourcePull:
		err = s.pull(ctx, src.cfg, id)
	case draupnir.SourceFollow:
		err = s.follow(ctx, src.cfg, id)
	default:
		err = fmt.Errorf("source %q has unknown mode %q", src.cfg.Name, src.cfg.Mode)
	}
	if err != nil {
		reason := s.reason(err)
		// The backup never reached finalise, which fails its own images.
		if ferr := s.opts.Images.Fail(context.WithoutCancel(ctx), id, reason); ferr != nil && draupnir.KindOf(ferr) != draupnir.KindConflict {
			log.Error("could not mark the image of a failed refresh failed", "err", ferr)
		}
		log.Error("refresh failed; the earlier images keep serving", "err", err, "duration", time.Since(start))
		s.finish(src, id, errors.New(reason))
		return
	}
	im, err := s.opts.Images.Finalise(ctx, upload, id)
	if err != nil {
		// Finalise has failed the image itself (or, on a shutdown, the
		// image service's Close will).
		log.Error("refresh failed in finalise; the earlier images keep serving", "err", err, "duration", time.Since(start))
		s.finish(src, id, errors.New(s.reason(err)))
		return
	}
	log.Info("refresh done: image ready", "duration", time.Since(start), "size_bytes", im.SizeBytes)
	s.finish(src, id, nil)
	s.retain(context.WithoutCancel(ctx), src.cfg)
}

// reason is what a failed refresh's image and source say about err.
func (s *Service) reason(err error) string {
	switch {
	case s.base.Err() != nil:
		return "the refresh was interrupted by a shutdown of the server; the next refresh makes a new image"
	case draupnir.KindOf(err) == draupnir.KindInternal:
		return err.Error()
	}
	return draupnir.ClientMessage(err)
}

// recording reports whether image id, the image of a refresh under way, is
// already ready or failed: the refresh is only recording how it ended.
func (s *Service) recording(ctx context.Context, id int64) bool {
	if id == 0 {
		return false
	}
	im, err := s.opts.Images.Get(ctx, upload, id)
	return err == nil && (im.State == draupnir.ImageReady || im.State == draupnir.ImageFailed)
}

// finish records how the refresh of src that made image id (0 if it made
// none) ended, discards the image of the failed refresh before it, and
// frees the source.
func (s *Service) finish(src *source, id int64, err error) {
	defer s.wg.Done()
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.base), time.Minute)
	defer cancel()
	if prev, serr := s.store.end(ctx, src.cfg.Name, id, reason); serr != nil {
		s.log.Error("could not record the end of a refresh", "source", src.cfg.Name, "err", serr)
	} else {
		s.discardFailed(ctx, src.cfg.Name, prev)
	}
	if s.opts.Refreshed != nil {
		s.opts.Refreshed(src.cfg.Name, err)
	}
	s.mu.Lock()
	src.running, src.refreshing = false, 0
	close(src.ended)
	s.mu.Unlock()
}

// discardFailed destroys image id, the failed image of an earlier refresh
// of source name, if it is still failed: it holds the raw backup in its
// upload, and a source failing every night must not pile those up. The
// last failed refresh's image stays, for its reason and a retry.
func (s *Service) discardFailed(ctx context.Context, name string, id int64) {
	if id == 0 {
		return
	}
	ims, err := s.opts.Images.List(ctx, upload)
	if err != nil {
		s.log.Error("listing images to discard a failed refresh's", "source", name, "err", err)
		return
	}
	for _, im := range ims {
		if im.ID != id || im.State != draupnir.ImageFailed {
			continue
		}
		if err := s.opts.Images.Destroy(ctx, upload, id, unused{s.opts.Instances}); err != nil {
			s.log.Error("could not destroy the image of an earlier failed refresh", "source", name, "image", id, "err", err)
			return
		}
		s.log.Info("destroyed the image of an earlier failed refresh", "source", name, "image", id)
	}
}

// schedule refreshes src at every time of its schedule until Close. A
// refresh still under way at the next time is not doubled: that time is
// skipped, and logged.
func (s *Service) schedule(src *source) {
	defer s.wg.Done()
	log := s.log.With("source", src.cfg.Name)
	for {
		next := src.sched.Next(time.Now())
		s.mu.Lock()
		src.next = next
		s.mu.Unlock()
		t := time.NewTimer(time.Until(next))
		select {
		case <-s.base.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if _, err := s.begin(s.base, src); err != nil {
			if draupnir.KindOf(err) == draupnir.KindConflict {
				log.Warn("scheduled refresh skipped: the previous one is still running")
			} else {
				log.Error("scheduled refresh failed; retrying at the next scheduled time", "err", err)
			}
		}
	}
}

// sweep tries retention again for every source now and then: images that
// instances kept go once their last instance does.
func (s *Service) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.base.Done():
			return
		case <-t.C:
		}
		for _, name := range s.order {
			s.retain(s.base, s.srcs[name].cfg)
		}
	}
}
