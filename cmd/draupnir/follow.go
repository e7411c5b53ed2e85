package main

import (
	"context"
	"log/slog"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/datapath"
	"github.com/draupnir-db/draupnir/sources"
	"github.com/draupnir-db/draupnir/standby"
	"github.com/draupnir-db/draupnir/supervisor"
)

// followers are the standbys of the follow-mode sources as the sources
// service sees them (sources.Follower).
type followers struct{ *standby.Manager }

func (f followers) Status(name string) (sources.StandbyStatus, bool) {
	st, ok := f.Manager.Status(name)
	return sources.StandbyStatus{State: st.State, LagBytes: st.LagBytes, LagSeconds: st.LagSeconds, LastError: st.LastError}, ok
}

// startStandbys starts keeping a standby of every follow-mode source of cfg
// until ctx ends or the manager is closed; nil without such sources.
func startStandbys(ctx context.Context, cfg *config.Config, paths datapath.Layout, sup *supervisor.Supervisor, log *slog.Logger) (*standby.Manager, error) {
	var follow []standby.Source
	for _, s := range cfg.Sources {
		if s.Mode == string(draupnir.SourceFollow) {
			follow = append(follow, standby.Source{Name: s.Name, Conninfo: s.Conninfo, Passfile: s.Passfile, RestoreCommand: s.RestoreCommand})
		}
	}
	if len(follow) == 0 {
		return nil, nil
	}
	m, err := standby.New(standby.Options{Dir: paths.Standbys(), RunDir: paths.StandbySockets(), Postgres: sup, Log: log})
	if err != nil {
		return nil, err
	}
	go m.Run(context.WithoutCancel(ctx), follow)
	return m, nil
}
