package draupnir

import (
	"context"
	"time"
)

// SourceMode is how a source's images are made: "pull" takes a fresh base
// backup over the replication protocol at each refresh; "follow" keeps a
// streaming standby of the source and snapshots it.
type SourceMode string

const (
	SourcePull   SourceMode = "pull"
	SourceFollow SourceMode = "follow"
)

// Source is a configured live source of an image series, as the doors
// show it. It never holds the source's password.
type Source struct {
	Name     string
	Mode     SourceMode
	Schedule string // cron or "@every D"; empty: only on demand
	Keep     int    // ready images of the series kept after a refresh
	// Conninfo is the configured connection string with any password
	// removed.
	Conninfo string
	// State is "idle", "refreshing" or "failing" (the last refresh failed);
	// for follow mode the standby's own state is in StandbyState.
	State        string
	StandbyState string
	// StandbyError is why the standby last failed or lost its source
	// (follow mode; the upload principal's to read).
	StandbyError  string
	LastRefreshAt time.Time // when the last refresh ended; zero for never
	NextRefreshAt time.Time // zero without a schedule
	LastError     string    // why the last refresh failed; empty after a success
	// RefreshingImageID is the image the refresh under way makes; 0 if none.
	RefreshingImageID int64
	// LagBytes and LagSeconds are the standby's replay lag (follow mode).
	LagBytes   int64
	LagSeconds float64
	// ImageIDs are the ready images of the series, oldest first.
	ImageIDs []int64
}

// SourceService keeps image series of live sources fresh. Every principal
// may read the sources; only the upload principal may refresh one.
// *sources.Service implements it.
type SourceService interface {
	List(ctx context.Context, p Principal) ([]*Source, error)
	Get(ctx context.Context, p Principal, name string) (*Source, error)
	// Refresh starts a refresh of source name and returns the image it is
	// making (created, uploading or finalising); the refresh goes on without
	// the caller. A refresh already under way is a KindConflict error.
	Refresh(ctx context.Context, p Principal, name string) (*Image, error)
}

// ValidSourceName reports whether name may name a source (and so an image
// series): 1–63 lower-case letters, digits, '-' and '_', starting with a
// letter or digit. The rule keeps names safe in URLs, file names and logs.
func ValidSourceName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case (r == '-' || r == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}

// NewestReady returns the newest ready image of source's series among
// images, or an error of kind KindNotFound naming the source.
func NewestReady(images []*Image, source string) (*Image, error) {
	var best *Image
	for _, im := range images {
		if im.Source == source && im.Ready() && (best == nil || im.ID > best.ID) {
			best = im
		}
	}
	if best == nil {
		return nil, Errorf(KindNotFound, "source %q has no ready image", source)
	}
	return best, nil
}
