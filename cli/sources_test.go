package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// fakeSources serves source app (pull) and cdc (follow) to the commands.
type fakeSources struct{ *fake }

func (f fakeSources) List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Source, error) {
	if err := f.call("ListSources"); err != nil {
		return nil, err
	}
	app, _ := f.get("app")
	cdc, _ := f.get("cdc")
	return []*draupnir.Source{app, cdc}, nil
}

func (f fakeSources) get(name string) (*draupnir.Source, error) {
	switch name {
	case "app":
		return &draupnir.Source{Name: "app", Mode: draupnir.SourcePull, Keep: 2, State: "failing", Schedule: "0 3 * * *",
			Conninfo: "host=db user=repl", LastError: "source \"app\": it is unreachable;\npg_basebackup said: …",
			LastRefreshAt: t0, NextRefreshAt: t0.Add(24 * time.Hour), ImageIDs: []int64{5, 6}}, nil
	case "cdc":
		return &draupnir.Source{Name: "cdc", Mode: draupnir.SourceFollow, Keep: 1, State: "idle", StandbyState: "disconnected",
			StandbyError: "could not connect\nto the source",
			LagBytes:     2048, LagSeconds: 1.25}, nil
	}
	return nil, draupnir.Errorf(draupnir.KindNotFound, "source %q is not configured", name)
}

func (f fakeSources) Get(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Source, error) {
	if err := f.call("GetSource", name); err != nil {
		return nil, err
	}
	return f.get(name)
}

func (f fakeSources) Refresh(ctx context.Context, p draupnir.Principal, name string) (*draupnir.Image, error) {
	if err := f.call("RefreshSource", name); err != nil {
		return nil, err
	}
	if _, err := f.get(name); err != nil {
		return nil, err
	}
	return &draupnir.Image{ID: 7, State: draupnir.ImageCreated, Source: name, BackedUpAt: t0, CreatedAt: t0}, nil
}

func TestSourceCommands(t *testing.T) {
	tests := []struct {
		name      string
		ssh       bool
		args      []string
		code      int
		stdout    []string // substrings, in order
		stderr    string
		wantCalls string
	}{
		{name: "list", args: []string{"sources", "list"},
			stdout: []string{"NAME", "MODE", "STATE", "LAST REFRESH", "NEXT REFRESH", "IMAGES", "LAG",
				"app", "pull", "failing", "2017-05-01T12:00:00Z", "2017-05-02T12:00:00Z", "5,6", "-",
				"cdc", "follow", "idle", "2.0 KiB, 1.2s"}},
		{name: "show", args: []string{"sources", "show", "app"},
			stdout: []string{"Name:", "app", "Conninfo:", "host=db user=repl", "State:", "failing",
				"Last error:", `source "app": it is unreachable; pg_basebackup said`, "Schedule:", "0 3 * * *", "Keep:", "2", "Images:", "5,6"}},
		{name: "show follow", args: []string{"sources", "show", "cdc"}, stdout: []string{"Standby:", "disconnected", "Standby error:", "could not connect to the source", "Lag:", "2.0 KiB, 1.2s"}},
		{name: "show unknown", args: []string{"sources", "show", "nope"}, code: 1, stderr: `source "nope" is not configured`},
		{name: "show bad name", args: []string{"sources", "show", "../etc"}, code: 2, stderr: "is not a source name", wantCalls: "-"},
		{name: "refresh", ssh: true, args: []string{"sources", "refresh", "app"}, stdout: []string{"ID:", "7", "Source:", "app"},
			wantCalls: "RefreshSource app"},
		{name: "refresh json", args: []string{"--json", "sources", "refresh", "app"}, stdout: []string{`"id": "7"`, `"source": "app"`}},
		{name: "refresh needs a name", args: []string{"sources", "refresh"}, code: 2, stderr: "takes 1 argument"},
		{name: "new of a source", args: []string{"new", "app"}, stdout: []string{"6"}, wantCalls: "ListImages CreateInstance 6"},
		{name: "new of a source without images", args: []string{"new", "cdc"}, code: 1, stderr: `source "cdc" has no ready image`},
		{name: "new bad source", args: []string{"new", "App!"}, code: 2, stderr: "is not a source name", wantCalls: "-"},
		{name: "new two sources", args: []string{"new", "app", "cdc"}, code: 2, stderr: "at most 1 argument"},
		{name: "images list shows the source", args: []string{"images", "list"}, stdout: []string{"POSTGRES", "SOURCE", "1 ", "15", "-", "app"}},
		{name: "images create in a series", args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-", "--source", "app"},
			stdout: []string{"Source:", "app"}},
		{name: "images create bad series", args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-", "--source", "A/B"},
			code: 2, stderr: "--source must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeBackend()
			f.images = append(f.images,
				&draupnir.Image{ID: 5, State: draupnir.ImageReady, Source: "app", BackedUpAt: t0, CreatedAt: t0},
				&draupnir.Image{ID: 6, State: draupnir.ImageReady, Source: "app", BackedUpAt: t0, CreatedAt: t0},
				&draupnir.Image{ID: 8, State: draupnir.ImageFailed, Source: "app", BackedUpAt: t0, CreatedAt: t0})
			b := f.backend()
			b.Sources = fakeSources{f}
			r := run(t, b, Env{SSH: tt.ssh}, "SELECT 1;", tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			r.stdoutHas(t, tt.stdout)
			if tt.stderr != "" && !strings.Contains(r.stderr, tt.stderr) || tt.stderr == "" && r.stderr != "" {
				t.Errorf("stderr %q, want %q", r.stderr, tt.stderr)
			}
			switch calls := strings.Join(f.calls, " "); tt.wantCalls {
			case "":
			case "-":
				if calls != "" {
					t.Errorf("calls %q, want none", calls)
				}
			default:
				if calls != tt.wantCalls {
					t.Errorf("calls %q, want %q", calls, tt.wantCalls)
				}
			}
		})
	}

	// A backend without sources says so.
	r := run(t, newFakeBackend().backend(), Env{}, "", "sources", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "this server has no sources") {
		t.Errorf("sources list without sources: %+v", r)
	}
}
