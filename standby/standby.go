// Package standby keeps one PostgreSQL standby per followed source: a btrfs
// subvolume made once by pg_basebackup and then kept in sync by postgres
// itself, streaming from the source or replaying its WAL archive through a
// restore_command. The standbys run as the postgres OS user under the
// supervisor, like instances: they outlive a restart of Draupnir and are
// adopted by the next one, restarted when they die, and report their state
// and replay lag. SnapshotInto turns the standby's current state into a
// writable, crash-consistent copy in milliseconds, for finalise to boot as a
// primary and anonymise. A standby holds the source's raw data, so it never
// listens on TCP, its socket directory is private, and nothing serves it.
package standby

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/supervisor"
)

// States a standby can be in.
const (
	// Initialising: the base backup or the first start is under way.
	Initialising = "initialising"
	// Streaming: following the source (or, with only a restore_command,
	// replaying its archive) and at most CatchUpBytes behind it.
	Streaming = "streaming"
	// CatchingUp: following, but further behind than CatchUpBytes.
	CatchingUp = "catching_up"
	// Disconnected: the standby runs but does not reach its source;
	// postgres keeps retrying on its own.
	Disconnected = "disconnected"
	// Failed: the base backup or a start failed; retried with back-off.
	Failed = "failed"
)

// Source is one followed source. Conninfo is a libpq connection string
// (without password) of the source's primary or of a replica, for a role
// with the REPLICATION privilege; Passfile is a libpq password file for
// it; RestoreCommand, if set, makes the standby fetch WAL from an archive
// (alone, with an empty Conninfo, or as postgres's fallback to streaming).
type Source struct{ Name, Conninfo, Passfile, RestoreCommand string }

// Status is what a standby is doing and how far behind its source it is.
type Status struct {
	State string // one of the states above
	// LagBytes is the source's current WAL position minus the standby's
	// replay position, as of the last poll (0 when unknown).
	LagBytes int64
	// LagSeconds is 0 when the standby has replayed all the source has;
	// otherwise the age of the last transaction it replayed (clocks of the
	// two machines apart).
	LagSeconds float64
	// ReplayedAt is the source's commit time of the last replayed
	// transaction.
	ReplayedAt time.Time
	LastError  string
}

// Volumes is the part of package btrfs a Manager uses.
type Volumes interface {
	CreateSubvolume(path string) error
	Snapshot(src, dst string, readOnly bool) error
	Delete(path string) error
}

// Options configure a Manager.
type Options struct {
	// Dir holds one subvolume per standby (datapath's Standbys), and
	// beside it what must not go into snapshots: its configuration, log
	// and copy of the passfile. On the btrfs filesystem SnapshotInto's
	// destinations are on: a snapshot cannot cross filesystems.
	Dir string
	// RunDir holds each standby's socket directory (datapath's
	// StandbySockets); it must be short, as socket paths are.
	RunDir string
	// Postgres runs pg_basebackup and the standbys as its OS user.
	Postgres *supervisor.Supervisor
	// Volumes defaults to package btrfs.
	Volumes Volumes
	Log     *slog.Logger

	// Settings are extra postgres settings for every standby
	// (shared_buffers, say); they may not override the ones that keep it
	// private and a standby.
	Settings map[string]string
	// PollInterval is how often a standby's state and lag are read
	// (default 2s).
	PollInterval time.Duration
	// RetryMin and RetryMax bound the back-off between attempts at a
	// failed base backup or start (defaults 5s and 5min).
	RetryMin, RetryMax time.Duration
	// CatchUpBytes is the lag beyond which a following standby reports
	// CatchingUp (default 16 MiB, one WAL segment).
	CatchUpBytes int64
	// CatchUpTimeout bounds how long SnapshotInto waits for the standby to
	// replay what the source had when it was called (default 1 min).
	CatchUpTimeout time.Duration
	// NoRestartpoint skips the CHECKPOINT (a restartpoint on a standby)
	// that SnapshotInto runs before it snapshots; it keeps the crash
	// recovery of the snapshot, and so finalise's first start, short.
	NoRestartpoint bool
}

// Manager keeps the standbys of the followed sources. It is safe for
// concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	standbys map[string]*standby
	running  bool
	cancel   context.CancelFunc // Run's
	wg       sync.WaitGroup
}

// New checks opts and returns a Manager; nothing runs until Run.
func New(opts Options) (*Manager, error) {
	if opts.Dir == "" || !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("standby: directory %q must be an absolute path", opts.Dir)
	}
	if opts.RunDir == "" || !filepath.IsAbs(opts.RunDir) {
		return nil, fmt.Errorf("standby: run directory %q must be an absolute path", opts.RunDir)
	}
	if opts.Postgres == nil {
		return nil, errors.New("standby: no supervisor")
	}
	for k := range opts.Settings {
		if fixedSettings[k] {
			return nil, fmt.Errorf("standby: setting %s is set by draupnir", k)
		}
	}
	if opts.Volumes == nil {
		opts.Volumes = btrfs.FS{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Second
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 5 * time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(opts.RetryMin, 5*time.Minute)
	}
	if opts.CatchUpBytes <= 0 {
		opts.CatchUpBytes = 16 << 20
	}
	if opts.CatchUpTimeout <= 0 {
		opts.CatchUpTimeout = time.Minute
	}
	if err := os.MkdirAll(opts.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("standby: %w", err)
	}
	return &Manager{opts: opts, log: opts.Log.With("component", "standby"), standbys: map[string]*standby{}}, nil
}

// validName keeps source names fit for paths, socket paths and
// application_name.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// Run brings up a standby for each source (adopting the ones already
// running, making the missing ones), keeps them alive, and returns when ctx
// ends. The standbys keep running after it returns, as instances do across a
// restart of Draupnir. Standbys of sources no longer listed are stopped but
// kept; Remove deletes them.
func (m *Manager) Run(ctx context.Context, srcs []Source) {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		m.log.Error("standby manager already running; ignoring a second Run")
		return
	}
	m.running = true
	ctx, m.cancel = context.WithCancel(ctx)
	defer m.cancel()
	listed := map[string]bool{}
	for _, src := range srcs {
		sb := m.newStandby(src)
		if err := src.check(); err != nil {
			sb.set(func(s *Status) { s.State, s.LastError = Failed, err.Error() })
			m.log.Error("source not followed", "source", src.Name, "err", err)
			m.standbys[src.Name] = sb
			continue
		}
		listed[src.Name] = true
		m.standbys[src.Name] = sb
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.keep(ctx, sb)
		}()
	}
	m.mu.Unlock()
	m.stopUnlisted(ctx, listed)
	<-ctx.Done()
	m.wg.Wait()
	m.mu.Lock()
	m.running = false
	m.mu.Unlock()
}

func (src Source) check() error {
	if !validName.MatchString(src.Name) {
		return fmt.Errorf("source %q: a name is 1–40 lower-case letters, digits, _ and -, starting with a letter or digit", src.Name)
	}
	if src.Conninfo == "" && src.RestoreCommand == "" {
		return fmt.Errorf("source %s: follow mode needs a conninfo or a restore_command", src.Name)
	}
	if src.Conninfo != "" {
		if _, err := parseConninfo(src.Conninfo); err != nil {
			return fmt.Errorf("source %s: %w", src.Name, err)
		}
	}
	if src.Passfile != "" && !filepath.IsAbs(src.Passfile) {
		return fmt.Errorf("source %s: passfile %q must be an absolute path", src.Name, src.Passfile)
	}
	return nil
}

// stopUnlisted stops the standbys on disk whose source is no longer
// followed: they would otherwise keep pulling its data.
func (m *Manager) stopUnlisted(ctx context.Context, listed map[string]bool) {
	ents, err := os.ReadDir(m.opts.Dir)
	if err != nil {
		m.log.Warn("cannot list standbys", "dir", m.opts.Dir, "err", err)
		return
	}
	for _, e := range ents {
		if !e.IsDir() || listed[e.Name()] || !validName.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(m.opts.Dir, e.Name())
		if err := m.opts.Postgres.StopDataDir(ctx, dir, supervisor.Fast, time.Minute); err != nil {
			m.log.Warn("cannot stop the standby of a source no longer followed", "source", e.Name(), "err", err)
			continue
		}
		m.log.Info("standby of a source no longer followed stopped; its data is kept until removed", "source", e.Name(), "dir", dir)
	}
}

// Status reports the state of name's standby; false if no such source is
// followed.
func (m *Manager) Status(name string) (Status, bool) {
	m.mu.Lock()
	sb, ok := m.standbys[name]
	m.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.status, true
}

// Remove stops name's standby and deletes its data, for a source no longer
// followed. It refuses while Run follows that source.
func (m *Manager) Remove(ctx context.Context, name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("standby %q: no such standby", name)
	}
	m.mu.Lock()
	_, followed := m.standbys[name]
	running := m.running
	m.mu.Unlock()
	if followed && running {
		return fmt.Errorf("standby of source %s: still followed; stop following it first", name)
	}
	l := m.layout(name)
	if err := m.opts.Postgres.StopDataDir(ctx, l.data, supervisor.Fast, time.Minute); err != nil {
		return fmt.Errorf("standby of source %s: %w", name, err)
	}
	for _, dir := range []string{l.data, l.incoming} {
		if err := m.opts.Volumes.Delete(dir); err != nil {
			return fmt.Errorf("standby of source %s: deleting %s: %w", name, dir, err)
		}
	}
	for _, dir := range []string{l.private, l.sockets} {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("standby of source %s: %w", name, err)
		}
	}
	return nil
}

// Close ends Run, waits for it to return, and lets go of the connections
// it held. The standbys themselves keep running, to be adopted by the next
// Manager.
func (m *Manager) Close() {
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sb := range m.standbys {
		sb.closeConns()
	}
}
