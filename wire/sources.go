package wire

import "github.com/draupnir-db/draupnir"

// SourceAttributes are the attributes of a live source. Conninfo never
// holds the password.
type SourceAttributes struct {
	Mode              string  `json:"mode"`
	Schedule          string  `json:"schedule"`
	Keep              int     `json:"keep"`
	Conninfo          string  `json:"conninfo"`
	State             string  `json:"state"`
	StandbyState      string  `json:"standby_state,omitempty"`
	StandbyError      string  `json:"standby_error,omitempty"`
	LastRefreshAt     Time    `json:"last_refresh_at"`
	NextRefreshAt     Time    `json:"next_refresh_at"`
	LastError         string  `json:"last_error"`
	RefreshingImageID Int     `json:"refreshing_image_id,omitempty"`
	LagBytes          int64   `json:"lag_bytes,omitempty"`
	LagSeconds        float64 `json:"lag_seconds,omitempty"`
	ImageIDs          []Int   `json:"image_ids"`
}

// SourceResource is a source as the API renders it; its id is its name.
type SourceResource struct {
	Type       string           `json:"type"`
	ID         string           `json:"id"`
	Attributes SourceAttributes `json:"attributes"`
}

// NewSourceResource renders s.
func NewSourceResource(s *draupnir.Source) SourceResource {
	ids := make([]Int, len(s.ImageIDs))
	for i, id := range s.ImageIDs {
		ids[i] = Int(id)
	}
	return SourceResource{Type: TypeSources, ID: s.Name, Attributes: SourceAttributes{
		Mode: string(s.Mode), Schedule: s.Schedule, Keep: s.Keep, Conninfo: s.Conninfo, State: s.State,
		StandbyState: s.StandbyState, StandbyError: s.StandbyError, LastRefreshAt: NewTime(s.LastRefreshAt), NextRefreshAt: NewTime(s.NextRefreshAt),
		LastError: s.LastError, RefreshingImageID: Int(s.RefreshingImageID), LagBytes: s.LagBytes,
		LagSeconds: s.LagSeconds, ImageIDs: ids,
	}}
}

// Source converts the resource to the domain type.
func (r *SourceResource) Source() *draupnir.Source {
	a := &r.Attributes
	ids := make([]int64, len(a.ImageIDs))
	for i, id := range a.ImageIDs {
		ids[i] = int64(id)
	}
	return &draupnir.Source{Name: r.ID, Mode: draupnir.SourceMode(a.Mode), Schedule: a.Schedule, Keep: a.Keep,
		Conninfo: a.Conninfo, State: a.State, StandbyState: a.StandbyState, StandbyError: a.StandbyError, LastRefreshAt: a.LastRefreshAt.Time,
		NextRefreshAt: a.NextRefreshAt.Time, LastError: a.LastError, RefreshingImageID: int64(a.RefreshingImageID),
		LagBytes: a.LagBytes, LagSeconds: a.LagSeconds, ImageIDs: ids}
}
