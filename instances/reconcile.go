package instances

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

// track watches proc, the postgres of instance id, and restarts it if it
// dies on its own.
func (s *Service) track(id int64, proc process) {
	t := &tracked{proc: proc}
	s.mu.Lock()
	s.procs[id] = t
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.base.Done():
			return
		case <-proc.Done():
		}
		s.mu.Lock()
		current := s.procs[id] == t
		stopping := t.stopping
		if current {
			delete(s.procs, id)
		}
		s.mu.Unlock()
		if current && !stopping {
			s.recover(id)
		}
	}()
}

// untrack stops watching instance id ahead of a deliberate stop and returns
// what was watched, if anything.
func (s *Service) untrack(id int64) *tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.procs[id]
	if t != nil {
		t.stopping = true
		delete(s.procs, id)
	}
	return t
}

// recover restarts the postgres of instance id after it died, with a back-off;
// after the last attempt the instance is marked failed with the reason.
func (s *Service) recover(id int64) {
	log := s.log.With("instance", id)
	log.Warn("instance postgres exited unexpectedly; restarting it")
	ctx := s.base
	if ok, _ := s.store.setLiveState(ctx, id, draupnir.InstanceStopped, "postgres exited unexpectedly; restarting"); !ok {
		return // being destroyed, or gone
	}
	var err error
	for _, wait := range s.restartWaits {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		in, gerr := s.store.get(ctx, id)
		if gerr != nil || in.State == draupnir.InstanceDestroying || in.State == draupnir.InstanceResetting {
			return // destroyed or reset meanwhile
		}
		var proc process
		if proc, err = s.start(ctx, id, in.Port); err == nil {
			// A destroy may have claimed it while postgres started.
			if ok, _ := s.store.setLiveState(ctx, id, liveState(in), ""); !ok {
				proc.Stop(ctx, supervisor.Immediate, 10*time.Second)
				return
			}
			s.track(id, proc)
			log.Info("instance restarted")
			return
		}
		log.Warn("restarting instance failed", "err", err)
	}
	s.store.setLiveState(ctx, id, draupnir.InstanceFailed, fmt.Sprintf("postgres keeps failing to start: %v", err))
}

// Reconcile brings processes and subvolumes in line with the rows at start-up:
// it adopts instances whose postgres still runs (restarting those started
// with other settings), restarts those that should run, applies the disk
// limit, finishes creates, resets and destroys that a crash interrupted, and deletes
// subvolumes that no row owns and stale qgroups. A node of a cluster first
// takes over the instances of no node whose data it holds: those it had
// as a single node.
func (s *Service) Reconcile(ctx context.Context) error {
	if s.opts.Node != "" {
		if err := s.adoptUnplaced(ctx); err != nil {
			return err
		}
	}
	list, err := s.store.listAll(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, in := range list {
		log := s.log.With("instance", in.ID)
		if in.State == draupnir.InstanceCreating || in.State == draupnir.InstanceDestroying {
			log.Warn("finishing an interrupted create or destroy by destroying the instance", "state", in.State)
			if err := s.teardown(ctx, in.ID); err != nil {
				return err
			}
			continue
		}
		known[strconv.FormatInt(in.ID, 10)] = true
		if in.State == draupnir.InstanceResetting {
			s.finishReset(ctx, in)
			continue
		}
		if ok, _ := s.volumes.IsSubvolume(s.dir(in.ID)); !ok {
			log.Error("instance has lost its data directory")
			s.store.setState(ctx, in.ID, draupnir.InstanceFailed, "the instance's data directory is missing")
			continue
		}
		// The configured limit, also for instances made before it was.
		if err := s.limitDisk(in.ID); err != nil {
			log.Error("could not limit the instance's disk use", "err", err)
		}
		proc, err := s.postgres.Adopt(s.dir(in.ID))
		if err == nil && !settingsCurrent(s.dir(in.ID), s.settings(in.ID, s.dir(in.ID))) {
			// Started by an older server, or with other settings: it may
			// lack the access rules and limits it must have.
			log.Warn("restarting an adopted instance whose settings are out of date", "pid", proc.PID())
			if err = proc.Stop(ctx, supervisor.Fast, 30*time.Second); err != nil {
				return fmt.Errorf("restarting instance %d with current settings: %w", in.ID, err)
			}
			err = supervisor.ErrNotRunning
		}
		if err == nil {
			log.Info("adopted running instance", "pid", proc.PID())
		} else if errors.Is(err, supervisor.ErrNotRunning) {
			proc, err = s.start(ctx, in.ID, in.Port)
			if err != nil {
				log.Error("could not restart instance", "err", err)
				s.store.setState(ctx, in.ID, draupnir.InstanceFailed, fmt.Sprintf("could not restart postgres: %v", err))
				continue
			}
			log.Info("restarted instance", "pid", proc.PID())
		} else {
			return fmt.Errorf("adopting instance %d: %w", in.ID, err)
		}
		if want := liveState(in); in.State != want {
			s.store.setState(ctx, in.ID, want, "")
		}
		s.track(in.ID, proc)
	}
	ents, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for _, e := range ents {
		if known[e.Name()] {
			continue
		}
		path := filepath.Join(s.opts.Dir, e.Name())
		if id, err := strconv.ParseInt(e.Name(), 10, 64); err == nil {
			// Never delete data a row still claims, whichever node's.
			if in, err := s.store.get(ctx, id); err == nil {
				s.log.Warn("leaving alone the subvolume of an instance of another node", "path", path, "node", in.Node)
				continue
			} else if draupnir.KindOf(err) != draupnir.KindNotFound {
				return fmt.Errorf("reconcile: %w", err)
			}
		}
		s.log.Warn("deleting an instance subvolume that no row owns", "path", path)
		if err := s.postgres.StopDataDir(ctx, path, supervisor.Immediate, 10*time.Second); err != nil {
			s.log.Error("could not stop an orphaned postgres", "path", path, "err", err)
			continue
		}
		if err := s.deleteSnapshot(path); err != nil {
			s.log.Error("could not delete an orphaned subvolume", "path", path, "err", err)
		}
	}
	s.removeStaleQgroups()
	return nil
}

// adoptUnplaced makes this node's the instances of no node whose data is
// here: a single node's, once it is made a node of a cluster. Without it
// they would be nobody's, and their data taken for orphans.
func (s *Service) adoptUnplaced(ctx context.Context) error {
	ids, err := s.store.unplaced(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if ok, _ := s.volumes.IsSubvolume(s.dir(id)); !ok {
			continue
		}
		ok, err := s.store.adopt(ctx, id)
		if err != nil {
			return err
		}
		if ok {
			s.log.Info("took over an instance of the single node this was", "instance", id, "node", s.opts.Node)
		}
	}
	return nil
}
