package images

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/supervisor"
)

// InstanceRole is the login role that instances hand to their owners.
const InstanceRole = "draupnir"

// privatePort names the finalise boot's unix socket; no TCP socket exists.
const privatePort = 5432

// finaliseTimeout bounds a finalise job (recovery of a large backup and a slow
// script included) so that a wedged job cannot hold an image forever.
const finaliseTimeout = 12 * time.Hour

// Finalise turns the upload of image id into a ready image. It returns when
// the job ends, or when ctx ends — the job itself carries on regardless, so
// a client that disconnects does not abort it.
func (s *Service) Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := requireUpload(p, "finalise images"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if _, running := s.jobs[id]; running {
		s.mu.Unlock()
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is already being finalised", id)
	}
	if s.destroys[id] {
		s.mu.Unlock()
		return nil, destroyingError(id)
	}
	if s.uploads[id] > 0 {
		s.mu.Unlock()
		return nil, draupnir.Errorf(draupnir.KindConflict, "an upload into image %d is still in progress; finalise it when the upload ends", id)
	}
	r, ok, err := s.store.transition(ctx, id,
		[]draupnir.ImageState{draupnir.ImageCreated, draupnir.ImageUploading, draupnir.ImageFailed}, draupnir.ImageFinalising)
	if err != nil || !ok {
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if r.State == draupnir.ImageFinalising {
			return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is already being finalised", id)
		}
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is already %s", id, r.State)
	}
	j := &job{done: make(chan struct{})}
	s.jobs[id] = j
	s.wg.Add(1)
	s.mu.Unlock()

	go s.runFinalise(r, j)
	select {
	case <-j.done:
		return j.im, j.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Service) runFinalise(r *row, j *job) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(s.base, finaliseTimeout)
	defer cancel()
	log := s.log.With("image", r.ID)
	start := time.Now()
	log.Info("finalising image")

	im, err := s.finalise(ctx, r)
	if err != nil {
		reason := err.Error()
		var de *draupnir.Error
		if errors.As(err, &de) && de.Msg != "" {
			reason = de.Msg
		}
		if s.base.Err() != nil {
			reason = "finalising was interrupted by a shutdown of the server; call done again"
		}
		log.Error("finalising failed", "err", err, "duration", time.Since(start))
		s.recordFailure(r.ID, reason)
		kind := draupnir.KindUnprocessable
		if draupnir.KindOf(draupnir.StorageError(err)) == draupnir.KindInsufficientStorage {
			kind = draupnir.KindInsufficientStorage
		}
		j.err = &draupnir.Error{Kind: kind, Msg: fmt.Sprintf("finalising image %d failed: %s", r.ID, reason), Err: err}
	} else {
		log.Info("image ready", "duration", time.Since(start), "size_bytes", im.SizeBytes)
		j.im = im
	}
	s.mu.Lock()
	delete(s.jobs, r.ID)
	s.mu.Unlock()
	close(j.done)
}

// recordFailure marks image id failed with reason. The state database may
// be what failed (down, or its disk full): keep trying, with a back-off,
// since an image left finalising without a job could not be finalised again
// until the next restart. The job stays registered meanwhile, so done
// answers that it is still finalising.
func (s *Service) recordFailure(id int64, reason string) {
	wait := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.base), 10*time.Second)
		err := s.store.fail(ctx, id, reason)
		cancel()
		if err == nil {
			return
		}
		s.log.Error("could not record a failed finalise; retrying", "image", id, "err", err, "retry_in", wait)
		select {
		case <-s.base.Done():
			return // the next start's Reconcile fails it
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

func unprocessable(format string, args ...any) error {
	return draupnir.Errorf(draupnir.KindUnprocessable, format, args...)
}

// finalise does the work: a writable snapshot of the upload is extracted,
// booted privately, anonymised and prepared, then frozen read-only. The upload
// itself is never changed, so a failed finalise can be retried from it; once
// the image is ready the upload is deleted (unless KeepUploads).
func (s *Service) finalise(ctx context.Context, r *row) (_ *draupnir.Image, err error) {
	id := r.ID
	work := s.workDir(id)
	if err := s.discardWork(ctx, id); err != nil {
		return nil, err
	}
	if err := btrfs.Delete(s.SnapshotDir(id)); err != nil {
		return nil, err
	}
	if err := btrfs.Snapshot(s.uploadDir(id), work, false); err != nil {
		return nil, fmt.Errorf("snapshotting the upload: %w", err)
	}
	sup := s.opts.Supervisor
	var proc *supervisor.Process
	defer func() {
		if err == nil {
			return
		}
		cleanup := context.WithoutCancel(ctx)
		if proc != nil {
			proc.Stop(cleanup, supervisor.Immediate, 10*time.Second)
		}
		if derr := btrfs.Delete(work); derr != nil {
			s.log.Error("could not delete the work directory of a failed finalise", "image", id, "err", derr)
		}
	}()

	if err := s.prepareData(ctx, work); err != nil {
		return nil, err
	}
	// The read-only snapshot at the end must wait for every dirty page of
	// the extracted data to reach the disk; start that writeback now, so it
	// overlaps the boot, the script and the role setup.
	go syncfs(work)
	version, err := supervisor.DataVersion(work)
	if err != nil {
		return nil, unprocessable("the upload is not a PostgreSQL data directory or base backup: no PG_VERSION found (upload base.tar[.gz] and pg_wal.tar[.gz] from pg_basebackup -Ft, another tarball of a data directory, or the data directory itself)")
	}
	// pg_basebackup writes an empty tablespace_map into a streamed tar.
	if st, err := os.Stat(filepath.Join(work, "tablespace_map")); err == nil && st.Size() > 0 {
		return nil, unprocessable("the backup uses tablespaces, which draupnir does not support")
	}
	bin, err := sup.BinDir(version)
	if err != nil {
		return nil, unprocessable("%v", err)
	}
	if err := writePrivateConfig(work); err != nil {
		return nil, err
	}
	if err := sup.Chown(work); err != nil {
		return nil, fmt.Errorf("handing the data to the postgres user: %w", err)
	}

	sockDir := filepath.Join(s.opts.RunDir, "img-"+strconv.FormatInt(id, 10))
	// Runs before the failure path's stop above; postgres minds only at its
	// next check of the socket's lock file, by which time it is stopped.
	defer os.RemoveAll(sockDir)
	logFile := filepath.Join(work, finaliseLog)
	spec := supervisor.Spec{DataDir: work, SocketDir: sockDir, Port: privatePort, LogFile: logFile}
	proc, err = sup.Start(ctx, spec)
	if err != nil {
		return nil, unprocessable("the backup's postgres did not start: %v", err)
	}
	superuser, err := s.findSuperuser(ctx, sockDir, bin, work, &proc, spec)
	if err != nil {
		return nil, err
	}

	dbs, err := listDatabases(ctx, sockDir, superuser)
	if err != nil {
		return nil, err
	}
	if script := r.AnonymisationScript; strings.TrimSpace(script) != "" {
		out, err := sup.PSQL(ctx, bin, sockDir, privatePort, superuser, dbs.first, script+scriptEnd)
		if err != nil {
			return nil, unprocessable("the anonymisation script failed: %s", trimOutput(out, err))
		}
	}
	// The script may have created or dropped databases.
	if dbs, err = listDatabases(ctx, sockDir, superuser); err != nil {
		return nil, err
	}
	if err := prepareRole(ctx, sockDir, superuser, dbs.all, s.opts.SuperuserAccess); err != nil {
		return nil, err
	}
	if err := proc.Stop(ctx, supervisor.Fast, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("shutting the private postgres down: %w", err)
	}
	proc = nil
	if _, err := os.Stat(filepath.Join(work, "postmaster.pid")); err == nil {
		return nil, fmt.Errorf("the private postgres did not shut down cleanly")
	}
	for _, f := range []string{finaliseLog, "postmaster.opts"} {
		os.Remove(filepath.Join(work, f))
	}
	size, err := treeSize(work)
	if err != nil {
		return nil, err
	}
	if err := btrfs.Snapshot(work, s.SnapshotDir(id), true); err != nil {
		return nil, draupnir.StorageError(fmt.Errorf("freezing the image: %w", err))
	}
	if err := btrfs.Delete(work); err != nil {
		s.log.Error("could not delete the work directory", "image", id, "err", err)
	}
	ready, err := s.store.ready(ctx, id, size, version, dbs.largest, superuser)
	if err != nil {
		btrfs.Delete(s.SnapshotDir(id))
		return nil, fmt.Errorf("recording image %d as ready: %w", id, err)
	}
	// The raw backup is no longer needed, and it holds what the script
	// removed. Only now: a failed finalise keeps it, for done to retry.
	if !s.opts.KeepUploads {
		if err := btrfs.Delete(s.uploadDir(id)); err != nil {
			s.log.Error("could not delete the upload of a ready image; the next start retries", "image", id, "err", err)
		}
	}
	return &ready.Image, nil
}

const finaliseLog = "draupnir-finalise.log"

// scriptEnd runs after the anonymisation script, on its last connection. A
// script that ends inside a transaction block (BEGIN without COMMIT) would
// have its changes rolled back, silently, when psql exits, and the image be
// served unanonymised: fail it instead. In a transaction block now() is when
// the block began, before this statement; outside one the two are equal. The
// lone ";" ends a last statement written without one, and ON_ERROR_STOP comes
// back on in case the script turned it off.
const scriptEnd = `
;
\set ON_ERROR_STOP 1
DO $draupnir$ BEGIN
  IF now() <> statement_timestamp() THEN
    RAISE EXCEPTION 'the anonymisation script ended inside a transaction block (BEGIN without COMMIT), so its changes would be rolled back: end it with COMMIT';
  END IF;
END $draupnir$;
`

// trimOutput keeps the part of psql's output that says what went wrong.
func trimOutput(out string, err error) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return err.Error()
	}
	const max = 4000
	if len(out) > max {
		out = "…" + out[len(out)-max:]
	}
	return out
}

// prepareData extracts the archives in work (if any), moves the data
// directory to work's root, whatever shape the upload had, and then checks
// the tree as it will be used (see checkTree).
func (s *Service) prepareData(ctx context.Context, work string) error {
	ents, err := os.ReadDir(work)
	if err != nil {
		return err
	}
	var archives, wal []string
	for _, e := range ents {
		if !e.Type().IsRegular() || !extract.IsArchive(e.Name()) {
			continue
		}
		if strings.HasPrefix(strings.ToLower(e.Name()), "pg_wal.tar") {
			wal = append(wal, e.Name())
		} else if tablespaceArchive.MatchString(e.Name()) {
			return unprocessable("the backup holds tablespace archive %s; draupnir does not support tablespaces", e.Name())
		} else {
			archives = append(archives, e.Name())
		}
	}
	sort.Slice(archives, func(i, j int) bool { // base.tar first, then the rest by name
		bi, bj := strings.HasPrefix(archives[i], "base."), strings.HasPrefix(archives[j], "base.")
		if bi != bj {
			return bi
		}
		return archives[i] < archives[j]
	})
	for _, a := range archives {
		if err := extractFile(ctx, filepath.Join(work, a), work); err != nil {
			return err
		}
	}
	data, err := locateData(work)
	if err != nil {
		return err
	}
	for _, a := range wal {
		// An existing pg_wal that is no directory (a link, say) is left
		// for extraction to refuse.
		dst := filepath.Join(data, "pg_wal")
		if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := extractFile(ctx, filepath.Join(work, a), dst); err != nil {
			return err
		}
	}
	if data != work {
		if err := hoist(data, work); err != nil {
			return err
		}
	}
	return checkTree(ctx, work)
}

// checkTree walks the data directory at root as postgres and finalise will
// use it, after every move, and refuses what it must not hold: symbolic links
// (where they point depends on where the tree sits, and after a move or in
// an instance a link that was harmless can reach another image, another
// instance or the host; see extract.LinkReason), files with more than one
// name (a write to one would change the other), and anything but regular
// files and directories. Extraction already makes none of these; this
// catches what arrived another way (a data directory copied in by hand).
func checkTree(ctx context.Context, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		switch t := d.Type(); {
		case t.IsDir():
			return nil
		case t&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			return unprocessable("the data directory holds a symbolic link, %s -> %s: %s",
				strconv.Quote(rel), strconv.Quote(target), extract.LinkReason(rel))
		case !t.IsRegular():
			return unprocessable("the data directory holds %s, which is neither a file nor a directory (%v)", strconv.Quote(rel), t)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
			return unprocessable("the data directory holds a hard link: %s has %d names, and a write to one would change the others", strconv.Quote(rel), st.Nlink)
		}
		return nil
	})
}

var tablespaceArchive = regexp.MustCompile(`^[0-9]+\.(tar|tgz|tar\..*)$`)

func extractFile(ctx context.Context, archive, dst string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	limit, err := extractLimit(dst)
	if err != nil {
		return err
	}
	if _, err := extract.Tar(ctx, f, dst, extract.Options{UID: -1, GID: -1, MaxBytes: limit}); err != nil {
		return fmt.Errorf("extracting %s: %w", filepath.Base(archive), spaceError(dst, err))
	}
	f.Close()
	// The archive's extents stay shared with the upload; removing it here
	// only keeps it out of the image.
	return os.Remove(archive)
}

// locateData finds the data directory: work itself, or the one directory
// below it that holds PG_VERSION (scp -r of a data directory lands there).
func locateData(work string) (string, error) {
	if _, err := os.Lstat(filepath.Join(work, "PG_VERSION")); err == nil {
		return work, nil
	}
	ents, err := os.ReadDir(work)
	if err != nil {
		return "", err
	}
	var found []string
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if e.IsDir() {
			if _, err := os.Lstat(filepath.Join(work, e.Name(), "PG_VERSION")); err == nil {
				found = append(found, filepath.Join(work, e.Name()))
			}
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		if len(names) == 0 {
			return "", unprocessable("nothing has been uploaded into this image yet")
		}
		if len(names) > 10 {
			names = append(names[:10], "…")
		}
		return "", unprocessable("the upload holds no PostgreSQL data directory or base backup: no PG_VERSION found among %s (upload base.tar[.gz] and pg_wal.tar[.gz] from pg_basebackup -Ft, another tarball of a data directory, or the data directory itself)", strings.Join(names, ", "))
	default:
		return "", unprocessable("the upload holds several data directories (%d with a PG_VERSION); upload one", len(found))
	}
}

// hoist moves the entries of data, a directory directly below work, up into
// work and removes data.
func hoist(data, work string) error {
	tmp := filepath.Join(work, ".draupnir-hoist")
	if _, err := os.Lstat(tmp); err == nil {
		return unprocessable("the upload holds %s beside the data directory; remove it", filepath.Base(tmp))
	}
	if err := os.Rename(data, tmp); err != nil {
		return err
	}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		dst := filepath.Join(work, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			return unprocessable("the upload has %s both beside and inside the data directory %s", e.Name(), filepath.Base(data))
		}
		if err := os.Rename(filepath.Join(tmp, e.Name()), dst); err != nil {
			return err
		}
	}
	return os.Remove(tmp)
}

func treeSize(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// syncfs flushes the filesystem holding dir; errors only cost time later.
func syncfs(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	unix.Syncfs(int(f.Fd()))
}
