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
	"github.com/draupnir-db/draupnir/images/extract"
	"github.com/draupnir-db/draupnir/supervisor"
)

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
	if err := s.checkUpload(ctx, id); err != nil {
		s.mu.Unlock()
		return nil, err
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
	s.closeUploadsLocked()
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
	if err := s.volumes.Delete(s.SnapshotDir(id)); err != nil {
		return nil, err
	}
	if err := s.volumes.Snapshot(s.uploadDir(id), work, false); err != nil {
		return nil, fmt.Errorf("snapshotting the upload: %w", err)
	}
	sup := s.postgres
	var proc *supervisor.Process
	defer func() {
		if err == nil {
			return
		}
		cleanup := context.WithoutCancel(ctx)
		if proc != nil {
			proc.Stop(cleanup, supervisor.Immediate, 10*time.Second)
		}
		if derr := s.volumes.Delete(work); derr != nil {
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
	if major, _ := strconv.Atoi(version); major >= 17 {
		// From 17 on, login event triggers would fire on finalise's own
		// connections, before it can turn them off one by one.
		spec.Settings = map[string]string{"event_triggers": "off"}
	}
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
	if len(dbs.all) == 0 {
		return nil, unprocessable("the backup has no database that accepts connections")
	}
	major, err := strconv.Atoi(version)
	if err != nil {
		return nil, unprocessable("the backup's PG_VERSION %q is not a PostgreSQL major version", version)
	}
	base, err := s.baselineFor(ctx, version)
	if err != nil {
		return nil, err
	}
	c := &cluster{sockDir: sockDir, superuser: superuser, major: major}
	log := s.log.With("image", id)
	step := time.Now()
	h, err := c.harden(ctx, base)
	if err != nil {
		return nil, securing(err)
	}
	log.Info("backup secured", "duration", time.Since(step))
	step = time.Now()
	if script := r.AnonymisationScript; strings.TrimSpace(script) != "" {
		// As the data owners by default: what the source planted in the
		// data (triggers, rules, functions the script's expressions
		// resolve to) then runs with no more rights than theirs.
		user := draupnir.InstanceRole
		if s.opts.ScriptAsSuperuser {
			if err := h.disableUserTriggers(ctx); err != nil {
				return nil, securing(err)
			}
			user = superuser
		}
		out, err := sup.PSQL(ctx, bin, sockDir, privatePort, user, dbs.first, script+scriptEnd)
		if err != nil {
			return nil, unprocessable("the anonymisation script failed:\n%s", scriptError(out, err, script))
		}
		if s.opts.ScriptAsSuperuser {
			if err := h.restoreUserTriggers(ctx); err != nil {
				return nil, securing(err)
			}
		}
	}
	log.Info("anonymisation script done", "duration", time.Since(step))
	step = time.Now()
	// A script run as the instance role cannot undo any of the hardening:
	// it creates no roles, grants nothing on system objects, makes
	// databases only from templates already hardened. As superuser it can.
	if s.opts.ScriptAsSuperuser {
		if err := h.again(ctx); err != nil {
			return nil, securing(err)
		}
	}
	if err := h.scrub(ctx); err != nil {
		return nil, securing(err)
	}
	log.Info("changed tables rewritten and statistics made anew", "duration", time.Since(step))
	if err := h.restoreEventTriggers(ctx); err != nil {
		return nil, securing(err)
	}
	if err := h.reopen(ctx); err != nil {
		return nil, securing(err)
	}
	if s.opts.SuperuserAccess {
		if err := c.superuserAccess(ctx); err != nil {
			return nil, err
		}
	}
	// The script may have created or dropped databases.
	if dbs, err = listDatabases(ctx, sockDir, superuser); err != nil {
		return nil, err
	}
	if err := proc.Stop(ctx, supervisor.Fast, 5*time.Minute); err != nil {
		return nil, fmt.Errorf("shutting the private postgres down: %w", err)
	}
	proc = nil
	if _, err := os.Stat(filepath.Join(work, "postmaster.pid")); err == nil {
		return nil, fmt.Errorf("the private postgres did not shut down cleanly")
	}
	if err := s.dropOldWAL(ctx, bin, work); err != nil {
		return nil, err
	}
	if err := removeLeftovers(work); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(work, finaliseLog))
	size, err := treeSize(work)
	if err != nil {
		return nil, err
	}
	if err := s.volumes.Snapshot(work, s.SnapshotDir(id), true); err != nil {
		return nil, draupnir.StorageError(fmt.Errorf("freezing the image: %w", err))
	}
	if err := s.volumes.Delete(work); err != nil {
		s.log.Error("could not delete the work directory", "image", id, "err", err)
	}
	ready, err := s.store.ready(ctx, id, size, version, dbs.largest, superuser)
	if err != nil {
		s.volumes.Delete(s.SnapshotDir(id))
		return nil, fmt.Errorf("recording image %d as ready: %w", id, err)
	}
	// The raw backup is no longer needed, and it holds what the script
	// removed. Only now: a failed finalise keeps it, for done to retry.
	if !s.opts.KeepUploads {
		if err := s.volumes.Delete(s.uploadDir(id)); err != nil {
			s.log.Error("could not delete the upload of a ready image; the next start retries", "image", id, "err", err)
		}
	}
	return &ready.Image, nil
}

const finaliseLog = "draupnir-finalise.log"

// securing wraps a failure of the steps that make a booted backup safe.
func securing(err error) error {
	var de *draupnir.Error
	if errors.As(err, &de) {
		return err
	}
	return fmt.Errorf("securing the backup: %w", err)
}

// dropOldWAL replaces the WAL of the cleanly stopped cluster in dir with one
// empty segment: the old segments hold the source's changes, values the
// script removed among them (recycled segments keep their old bytes too).
func (s *Service) dropOldWAL(ctx context.Context, bin, dir string) error {
	cmd := s.postgres.Command(ctx, filepath.Join(bin, "pg_resetwal"), "-D", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("removing the WAL written before the script: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeLeftovers deletes what the source server left in its data directory
// that an instance does not need and that may hold production values: its
// server logs (statements, errors quoting rows) and backup bookkeeping.
func removeLeftovers(dir string) error {
	for _, name := range []string{"log", "pg_log", "current_logfiles", "backup_label.old", "backup_manifest", "postmaster.opts"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("removing %s from the image: %w", name, err)
		}
	}
	return nil
}

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
  IF pg_catalog.now() OPERATOR(pg_catalog.<>) pg_catalog.statement_timestamp() THEN
    RAISE EXCEPTION 'the anonymisation script ended inside a transaction block (BEGIN without COMMIT), so its changes would be rolled back: end it with COMMIT';
  END IF;
END $draupnir$;
`

// scriptError turns psql's output for a failed script into what its author
// needs: the error with the line of their script it happened on, psql's
// statement excerpt and caret on lines of their own, and none of psql's
// chatter ("You are now connected to …", notices). A failure in the check
// finalise appends to the script names no line.
func scriptError(out string, err error, script string) string {
	lines := strings.Count(script, "\n") + 1
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		m := psqlLocation.FindStringSubmatch(l)
		if m == nil {
			// Continuations of an error: LINE n:, the caret, DETAIL, HINT,
			// CONTEXT, QUERY.
			if len(keep) > 0 && (strings.HasPrefix(l, "LINE ") || strings.HasPrefix(l, "DETAIL:") ||
				strings.HasPrefix(l, "HINT:") || strings.HasPrefix(l, "CONTEXT:") || strings.HasPrefix(l, "QUERY:") ||
				strings.TrimSpace(l) == "^" || strings.HasPrefix(strings.TrimLeft(l, " "), "^") || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) {
				keep = append(keep, l)
			}
			continue
		}
		msg := m[2]
		if strings.HasPrefix(msg, "NOTICE:") || strings.HasPrefix(msg, "WARNING:") || strings.HasPrefix(msg, "INFO:") {
			continue
		}
		if n, _ := strconv.Atoi(m[1]); n > 0 && n <= lines {
			msg = "line " + m[1] + ": " + msg
		}
		keep = append(keep, msg)
	}
	if len(keep) == 0 {
		return trimOutput(out, err)
	}
	return trimOutput(strings.Join(keep, "\n"), err)
}

// psqlLocation matches the "psql:<stdin>:LINE: " prefix of psql's messages
// for a script read from standard input.
var psqlLocation = regexp.MustCompile(`^psql:<stdin>:(\d+): (.*)$`)

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
		// A named upload that a crash cut short left its temporary file.
		if e.Type().IsRegular() && isPartial(e.Name()) {
			if err := os.Remove(filepath.Join(work, e.Name())); err != nil {
				return err
			}
			continue
		}
		if !e.Type().IsRegular() || !extract.IsArchive(e.Name()) {
			continue
		}
		if isWALArchive(e.Name()) {
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
