package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

// SaveImage makes a new ready image of an instance's data: req.Copy writes a
// crash-consistent copy of the running instance into the work directory,
// which is booted privately (replaying the WAL the copy caught), stripped
// of what belonged to the instance (its role's password, its server log),
// shut down cleanly, so that the new image's instances start without
// recovery, and frozen read-only like any image. The image belongs to
// req.Owner and records its lineage. A failure leaves no row and no files.
func (s *Service) SaveImage(ctx context.Context, req draupnir.ImageSave) (_ *draupnir.Image, err error) {
	if s.postgres == nil {
		return nil, fmt.Errorf("saving an image needs PostgreSQL, which this service was opened without")
	}
	r, err := s.store.insertSaved(ctx, req.Owner, req.ParentImageID, req.FromInstanceID)
	if err != nil {
		return nil, err
	}
	id := r.ID
	log := s.log.With("image", id, "parent", req.ParentImageID, "instance", req.FromInstanceID, "owner", req.Owner)
	// Registered as a job, so that a destroy of the new image waits for it.
	j := &job{done: make(chan struct{})}
	s.mu.Lock()
	s.jobs[id] = j
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.jobs, id)
		s.mu.Unlock()
		close(j.done)
	}()
	ctx = context.WithoutCancel(ctx) // half a save is worth nothing; finish or undo
	work := s.workDir(id)
	var proc *supervisor.Process
	defer func() {
		if err == nil {
			return
		}
		log.Warn("saving an image failed; undoing it", "err", err)
		if proc != nil {
			proc.Stop(ctx, supervisor.Immediate, 10*time.Second)
		}
		if derr := s.volumes.Delete(work); derr != nil {
			log.Error("could not delete the work directory of a failed save", "err", derr)
		}
		if derr := s.store.delete(ctx, id); derr != nil {
			log.Error("could not delete the row of a failed save", "err", derr)
		}
	}()
	if err := req.Copy(ctx, work); err != nil {
		return nil, draupnir.StorageError(fmt.Errorf("copying instance %d: %w", req.FromInstanceID, err))
	}
	// The copy carries the running instance's lock file: postgres would
	// take it for a live postmaster and refuse to start.
	for _, name := range []string{"postmaster.pid", "postmaster.opts"} {
		if err := os.Remove(filepath.Join(work, name)); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("removing %s from the copy: %w", name, err)
		}
	}
	version, err := supervisor.DataVersion(work)
	if err != nil {
		return nil, fmt.Errorf("the instance's copy: %w", err)
	}
	bin, err := s.postgres.BinDir(version)
	if err != nil {
		return nil, err
	}
	sockDir := filepath.Join(s.opts.RunDir, "img-"+strconv.FormatInt(id, 10))
	defer os.RemoveAll(sockDir)
	spec := supervisor.Spec{DataDir: work, SocketDir: sockDir, Port: privatePort, LogFile: filepath.Join(work, finaliseLog)}
	if major, _ := strconv.Atoi(version); major >= 17 {
		// As at finalise: no login event trigger fires on our session.
		spec.Settings = map[string]string{"event_triggers": "off"}
	}
	if proc, err = s.postgres.Start(ctx, spec); err != nil {
		return nil, fmt.Errorf("booting the instance's copy: %w", err)
	}
	if err := forgetPassword(ctx, sockDir, r.Superuser, r.Database); err != nil {
		return nil, err
	}
	if err := proc.Stop(ctx, supervisor.Fast, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("shutting the copy's postgres down: %w", err)
	}
	proc = nil
	if _, err := os.Stat(filepath.Join(work, "postmaster.pid")); err == nil {
		return nil, fmt.Errorf("the copy's postgres did not shut down cleanly")
	}
	// The old WAL holds the instance role's password verifier, and what
	// the user deleted before saving.
	if err := s.dropOldWAL(ctx, bin, work); err != nil {
		return nil, err
	}
	if err := removeLeftovers(work); err != nil {
		return nil, err
	}
	for _, name := range []string{finaliseLog, instanceLog} {
		if err := os.Remove(filepath.Join(work, name)); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("removing %s from the copy: %w", name, err)
		}
	}
	size, err := treeSize(work)
	if err != nil {
		return nil, err
	}
	if err := s.volumes.Snapshot(work, s.SnapshotDir(id), true); err != nil {
		return nil, draupnir.StorageError(fmt.Errorf("freezing the image: %w", err))
	}
	ready, err := s.store.ready(ctx, id, size, version, r.Database, r.Superuser)
	if err != nil {
		s.volumes.Delete(s.SnapshotDir(id))
		return nil, fmt.Errorf("recording image %d as ready: %w", id, err)
	}
	if err := s.volumes.Delete(work); err != nil {
		log.Error("could not delete the work directory; the next start deletes it", "err", err)
	}
	log.Info("image saved from an instance", "size", size)
	return &ready.Image, nil
}

// instanceLog is the server log an instance writes into its data directory.
const instanceLog = "draupnir.log"

// forgetPassword removes the instance role's password from a copy of an
// instance, booted privately: each instance of the new image gets its own.
// The data is the instance user's, so the session pins search_path and runs
// nothing but a utility statement.
func forgetPassword(ctx context.Context, sockDir, superuser, db string) error {
	conn, err := connect(ctx, sockDir, superuser, db)
	if err != nil {
		return fmt.Errorf("connecting to the instance's copy as its superuser: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "ALTER ROLE "+pgx.Identifier{draupnir.InstanceRole}.Sanitize()+" PASSWORD NULL",
		pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("removing the instance role's password from the copy: %w", err)
	}
	return nil
}
