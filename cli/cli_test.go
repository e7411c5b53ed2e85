package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
	"github.com/draupnir-db/draupnir/mock"
)

var t0 = time.Date(2017, 5, 1, 12, 0, 0, 0, time.UTC)

// fake is a Backend with a few images and instances. err, when set, is
// returned by every call.
type fake struct {
	mu        sync.Mutex
	images    []*draupnir.Image
	instances []*draupnir.Instance
	err       error
	calls     []string
	created   struct {
		backedUpAt time.Time
		script     string
		source     string
	}
	patch    draupnir.ImagePatch
	uploaded string
	gone     []*draupnir.Tombstone
}

func newFakeBackend() *fake {
	return &fake{
		gone: []*draupnir.Tombstone{{ID: 3, ImageID: 1, Reason: draupnir.ReasonExpired, Detail: "it expired at 2026-11-24T12:00:00Z",
			DestroyedAt: time.Date(2026, 11, 24, 12, 0, 5, 0, time.UTC)}},
		images: []*draupnir.Image{
			{ID: 1, State: draupnir.ImageReady, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0, SizeBytes: 3 << 30, PostgresVersion: "15", AnonymisationScript: "DELETE FROM users;"},
			{ID: 2, State: draupnir.ImageReady, BackedUpAt: t0.Add(48 * time.Hour), CreatedAt: t0, UpdatedAt: t0, PostgresVersion: "15",
				Nodes: []draupnir.ImageCopy{{Node: "n1", State: "ready"}, {Node: "n2", State: "failed", Attempts: 2, Error: "cut\nshort"}}},
			{ID: 3, State: draupnir.ImageFailed, BackedUpAt: t0.Add(72 * time.Hour), CreatedAt: t0, UpdatedAt: t0, Error: "ERROR:  relation \"users\" does not exist\nLINE 1"},
		},
		instances: []*draupnir.Instance{
			{ID: 4, ImageID: 1, State: draupnir.InstanceRunning, Port: 6001, Hostname: "db.example.com",
				Username: "draupnir", Password: `it's a "pa$$ word"`, Database: "app", CreatedAt: t0},
		},
	}
}

func (f *fake) call(name string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, strings.TrimSpace(name+" "+fmt.Sprintln(args...)))
	return f.err
}

func notFound(what string, id int64) error {
	return draupnir.Errorf(draupnir.KindNotFound, "%s %d does not exist", what, id)
}

func (f fakeImages) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Image, error) {
	if err := f.call("ListImages"); err != nil {
		return nil, err
	}
	return f.images, nil
}

func (f fakeImages) Get(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.call("GetImage", id); err != nil {
		return nil, err
	}
	for _, img := range f.images {
		if img.ID == id {
			return img, nil
		}
	}
	return nil, notFound("image", id)
}

func (f fakeImages) Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	return f.CreateInSeries(ctx, p, "", backedUpAt, script)
}

func (f fakeImages) CreateInSeries(ctx context.Context, _ draupnir.Principal, source string, backedUpAt time.Time, script string) (*draupnir.Image, error) {
	if err := f.call("CreateImage"); err != nil {
		return nil, err
	}
	f.created.backedUpAt, f.created.script, f.created.source = backedUpAt, script, source
	return &draupnir.Image{ID: 9, State: draupnir.ImageCreated, BackedUpAt: backedUpAt, AnonymisationScript: script, Source: source, CreatedAt: t0, UpdatedAt: t0}, nil
}

func (f fakeImages) Update(ctx context.Context, _ draupnir.Principal, id int64, patch draupnir.ImagePatch) (*draupnir.Image, error) {
	if err := f.call("UpdateImage", id); err != nil {
		return nil, err
	}
	f.patch = patch
	return f.Get(ctx, draupnir.Principal{}, id)
}

func (f fakeImages) Finalise(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.call("FinaliseImage", id); err != nil {
		return nil, err
	}
	return f.Get(ctx, draupnir.Principal{}, id)
}

func (f fakeImages) Destroy(ctx context.Context, _ draupnir.Principal, id int64) error {
	if err := f.call("DestroyImage", id); err != nil {
		return err
	}
	_, err := f.Get(ctx, draupnir.Principal{}, id)
	return err
}

func (f fakeInstances) List(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Instance, error) {
	if err := f.call("ListInstances"); err != nil {
		return nil, err
	}
	return f.instances, nil
}

func (f fakeInstances) Get(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Instance, error) {
	if err := f.call("GetInstance", id); err != nil {
		return nil, err
	}
	for _, inst := range f.instances {
		if inst.ID == id {
			return inst, nil
		}
	}
	return nil, notFound("instance", id)
}

func (f fakeInstances) Create(ctx context.Context, _ draupnir.Principal, imageID int64, opts draupnir.CreateOptions) (*draupnir.Instance, error) {
	args := []any{imageID}
	if opts.TTL != 0 {
		args = append(args, "ttl="+opts.TTL.String())
	}
	if err := f.call("CreateInstance", args...); err != nil {
		return nil, err
	}
	return &draupnir.Instance{ID: 5, ImageID: imageID, State: draupnir.InstanceRunning, Port: 6002, Hostname: "db.example.com", CreatedAt: t0}, nil
}

func (f fakeInstances) Update(ctx context.Context, _ draupnir.Principal, id int64, patch draupnir.InstancePatch) (*draupnir.Instance, error) {
	var ttl, protect any
	if patch.TTL != nil {
		ttl = *patch.TTL
	}
	if patch.ProtectFor != nil {
		protect = *patch.ProtectFor
	}
	if err := f.call("UpdateInstance", id, ttl, protect); err != nil {
		return nil, err
	}
	var inst *draupnir.Instance
	for _, in := range f.instances {
		if in.ID == id {
			inst = in
		}
	}
	if inst == nil {
		return nil, notFound("instance", id)
	}
	c := *inst
	if patch.TTL != nil && *patch.TTL > 0 {
		c.ExpiresAt = t0.Add(*patch.TTL)
	}
	if patch.ProtectFor != nil && *patch.ProtectFor > 0 {
		c.ProtectedUntil = t0.Add(*patch.ProtectFor)
	}
	return &c, nil
}

func (f fakeInstances) Reset(ctx context.Context, _ draupnir.Principal, id, imageID int64) (*draupnir.Instance, error) {
	if err := f.call("ResetInstance", id, imageID); err != nil {
		return nil, err
	}
	in, err := f.Get(ctx, draupnir.Principal{}, id)
	if err != nil {
		return nil, err
	}
	c := *in
	if imageID != 0 {
		c.ImageID = imageID
	}
	return &c, nil
}

func (f fakeInstances) Tombstones(ctx context.Context, _ draupnir.Principal) ([]*draupnir.Tombstone, error) {
	if err := f.call("Tombstones"); err != nil {
		return nil, err
	}
	return f.gone, nil
}

func (f fakeInstances) Save(ctx context.Context, _ draupnir.Principal, id int64) (*draupnir.Image, error) {
	if err := f.call("SaveInstance", id); err != nil {
		return nil, err
	}
	in, err := f.Get(ctx, draupnir.Principal{}, id)
	if err != nil {
		return nil, err
	}
	return &draupnir.Image{ID: 9, State: draupnir.ImageReady, BackedUpAt: t0, CreatedAt: t0, UpdatedAt: t0,
		Owner: "alice@example.com", ParentImageID: in.ImageID, FromInstanceID: id}, nil
}

func (f fakeInstances) Destroy(ctx context.Context, _ draupnir.Principal, id int64) error {
	if err := f.call("DestroyInstance", id); err != nil {
		return err
	}
	_, err := f.Get(ctx, draupnir.Principal{}, id)
	return err
}

// fakeImages and fakeInstances are the services of a fake.
type (
	fakeImages    struct{ *fake }
	fakeInstances struct{ *fake }
)

// backend is what the commands act on: the fake's services, as a user.
func (f *fake) backend() Backend {
	return Backend{Images: fakeImages{f}, Instances: fakeInstances{f}, Principal: draupnir.Principal{Name: "alice@example.com"},
		ServerVersion: func(context.Context) (string, error) { return "9.9.9", nil }, Uploads: fakeUploads{f}}
}

// fakeUploads takes stream uploads whole, in memory.
type fakeUploads struct{ *fake }

func (f fakeUploads) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	return fakeUpload{f: f.fake}, nil
}

type fakeUpload struct {
	draupnir.Upload // nil: the commands only stream
	f               *fake
}

func (u fakeUpload) Extract(ctx context.Context, r io.Reader) (draupnir.UploadSummary, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return draupnir.UploadSummary{}, err
	}
	u.f.uploaded = string(b)
	return draupnir.UploadSummary{Bytes: int64(len(b)), Files: 1, Duration: time.Second}, nil
}

func (u fakeUpload) Close() error { return nil }

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, b Backend, env Env, stdin string, args ...string) result {
	t.Helper()
	if env.ConfigDir == "" {
		env.ConfigDir = t.TempDir()
	}
	if env.CacheDir == "" {
		env.CacheDir = t.TempDir()
	}
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	var out, errb bytes.Buffer
	code := Run(context.Background(), b, env, args, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// stdoutHas fails the test unless r's stdout holds wants, in that order.
func (r result) stdoutHas(t *testing.T, wants []string) {
	t.Helper()
	rest := r.stdout
	for _, w := range wants {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Errorf("stdout lacks %q (in order); stdout:\n%s", w, r.stdout)
			return
		}
		rest = rest[i+len(w):]
	}
}

func TestCommands(t *testing.T) {
	script := filepath.Join(t.TempDir(), "anon.sql")
	if err := os.WriteFile(script, []byte("UPDATE users SET email = 'x';\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		ssh       bool
		stdin     string
		args      []string
		code      int
		stdout    []string // substrings, in order
		stderr    string   // substring; "" means stderr must be empty
		wantCalls string   // calls made, space separated ("" → not checked)
	}{
		{name: "images list", args: []string{"images", "list"},
			stdout: []string{"ID", "STATE", "BACKED UP AT", "1", "ready", "2017-05-01T12:00:00Z", "3.0 GiB", "15", "3", "failed"}},
		{name: "images ls alias", args: []string{"images", "ls"}, stdout: []string{"BACKED UP AT"}},
		{name: "images show", args: []string{"images", "show", "1"},
			stdout: []string{"ID:", "1", "State:", "ready", "Anonymisation script:", "    DELETE FROM users;"}},
		{name: "failed image error on one line", args: []string{"images", "show", "3"},
			stdout: []string{"Error:", `relation "users" does not exist LINE 1`}},
		{name: "images show of a cluster", args: []string{"images", "show", "2"},
			stdout: []string{"Nodes:", "n1 ready, n2 failed (attempt 2 failed: cut short)"}},
		{name: "images show missing", args: []string{"images", "show", "7"}, code: 1,
			stderr: "draupnir-client: image 7 does not exist\n"},
		{name: "images create", args: []string{"images", "create", "--backed-up-at", "2017-05-01T12:00:00Z", "--anonymisation-script", script},
			stdout: []string{"ID:", "9", "created"}, wantCalls: "CreateImage"},
		{name: "images create from stdin", stdin: "SELECT 1;", args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-"},
			stdout: []string{"SELECT 1;"}},
		{name: "images create missing file", args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "/nonexistent/x.sql"},
			code: 1, stderr: "/nonexistent/x.sql"},
		{name: "images create without time", args: []string{"images", "create", "--anonymisation-script", script}, code: 2, stderr: "--backed-up-at is required"},
		{name: "images create without script", args: []string{"images", "create", "--backed-up-at", "2017-05-01"}, code: 2, stderr: "--anonymisation-script is required"},
		{name: "images create bad time", args: []string{"images", "create", "--backed-up-at", "yesterday", "--anonymisation-script", script}, code: 2, stderr: `"yesterday"`},
		{name: "images create bad time names the forms", args: []string{"images", "create", "--backed-up-at", "yesterday", "--anonymisation-script", script}, code: 2,
			stderr: `give RFC 3339 (2017-05-01T12:00:00Z, 2017-05-01T14:00:00+02:00), 2017-05-01T12:00:00 or "2017-05-01 12:00:00" (UTC), or a date, 2017-05-01 (midnight UTC)`},
		{name: "images update bad time names the forms", args: []string{"images", "update", "3", "--backed-up-at", "1/5/2017"}, code: 2, stderr: "or a date, 2017-05-01", wantCalls: "-"},
		{name: "images create over ssh reads no server file", ssh: true, args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "/etc/shadow"},
			code: 2, stderr: "standard input", wantCalls: "-"},
		{name: "images create over ssh from stdin", ssh: true, stdin: "SELECT 2;", args: []string{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-"},
			stdout: []string{"SELECT 2;"}},
		{name: "images update", stdin: "fixed", args: []string{"images", "update", "3", "--anonymisation-script", "-"}, stdout: []string{"ID:", "3"}, wantCalls: "UpdateImage 3 GetImage 3"},
		{name: "images update nothing", args: []string{"images", "update", "3"}, code: 2, stderr: "nothing to change", wantCalls: "-"},
		{name: "images done", args: []string{"images", "done", "1"}, stdout: []string{"State:", "ready"}, wantCalls: "FinaliseImage 1 GetImage 1"},
		{name: "images destroy", args: []string{"images", "destroy", "2"}, stdout: []string{"Destroyed image 2."}, wantCalls: "ListInstances DestroyImage 2 GetImage 2"},
		{name: "images rm alias", args: []string{"images", "rm", "2"}, stdout: []string{"Destroyed image 2."}},
		{name: "images destroy json is silent", args: []string{"images", "destroy", "2", "--json"}},
		{name: "instances list", args: []string{"instances", "list"},
			stdout: []string{"ID", "IMAGE", "STATE", "HOST", "PORT", "4", "1", "running", "db.example.com", "6001", "app"}},
		{name: "instances show", args: []string{"instances", "show", "4"}, stdout: []string{"Port:", "6001", "Password:", `it's a "pa$$ word"`, "env 4"}},
		{name: "instances show someone else's", args: []string{"instances", "show", "8"}, code: 1, stderr: "draupnir-client: instance 8 does not exist\n"},
		{name: "instances create", args: []string{"instances", "create", "2"}, stdout: []string{"ID:", "5", "Image:", "2"}, wantCalls: "CreateInstance 2"},
		{name: "instances reset", args: []string{"instances", "reset", "4"}, stdout: []string{"ID:", "4", "Image:", "1", "Port:", "6001"}, wantCalls: "ResetInstance 4 0 GetInstance 4"},
		{name: "instances reset to another image", args: []string{"instances", "reset", "4", "--image", "2"}, stdout: []string{"ID:", "4", "Image:", "2"}, wantCalls: "ResetInstance 4 2 GetInstance 4"},
		{name: "instances reset over ssh", ssh: true, args: []string{"instances", "reset", "4", "--image=2"}, stdout: []string{"Image:", "2"}, wantCalls: "ResetInstance 4 2 GetInstance 4"},
		{name: "instances reset someone else's", args: []string{"instances", "reset", "8"}, code: 1, stderr: "draupnir-client: instance 8 does not exist\n"},
		{name: "instances reset bad image", args: []string{"instances", "reset", "4", "--image", "x"}, code: 2, stderr: `--image must be a positive integer, not "x"`, wantCalls: "-"},
		{name: "instances reset zero image", args: []string{"instances", "reset", "4", "--image", "0"}, code: 2, stderr: "positive integer", wantCalls: "-"},
		{name: "instances save", args: []string{"instances", "save", "4"}, stdout: []string{"ID:", "9", "State:", "ready", "Saved from:", "instance 4 of image 1", "Owner:", "alice@example.com"}, wantCalls: "SaveInstance 4 GetInstance 4"},
		{name: "instances save over ssh", ssh: true, args: []string{"instances", "save", "4"}, stdout: []string{"Saved from:", "instance 4 of image 1"}},
		{name: "instances save someone else's", args: []string{"instances", "save", "8"}, code: 1, stderr: "draupnir-client: instance 8 does not exist\n"},
		{name: "instances save needs one id", args: []string{"instances", "save"}, code: 2, stderr: "takes 1 argument", wantCalls: "-"},
		{name: "instances destroy", args: []string{"instances", "destroy", "4"}, stdout: []string{"Destroyed instance 4."}},
		{name: "instances create with ttl", args: []string{"instances", "create", "2", "--ttl", "7d"}, stdout: []string{"ID:", "5"}, wantCalls: "CreateInstance 2 ttl=168h0m0s"},
		{name: "instances create with ttl in seconds", args: []string{"instances", "create", "2", "--ttl=30s"}, stdout: []string{"ID:", "5"}, wantCalls: "CreateInstance 2 ttl=30s"},
		{name: "instances create with a bad ttl", args: []string{"instances", "create", "2", "--ttl", "soon"}, code: 2, stderr: `--ttl must be a duration such as 90m, 8h or 7d, not "soon"`, wantCalls: "-"},
		{name: "instances extend", args: []string{"instances", "extend", "4", "8h"}, stdout: []string{"Instance 4: expires at 2017-05-01T20:00:00Z; not protected."}, wantCalls: "UpdateInstance 4 8h0m0s <nil>"},
		{name: "instances extend to never", args: []string{"instances", "extend", "4", "0"}, stdout: []string{"Instance 4: never expires"}, wantCalls: "UpdateInstance 4 0s <nil>"},
		{name: "instances extend without duration", args: []string{"instances", "extend", "4"}, code: 2, stderr: "takes 2 arguments", wantCalls: "-"},
		{name: "instances protect", args: []string{"instances", "protect", "4", "2d"}, stdout: []string{"protected until 2017-05-03T12:00:00Z."}, wantCalls: "UpdateInstance 4 <nil> 48h0m0s"},
		{name: "instances protect negative", args: []string{"instances", "protect", "4", "--", "-1h"}, code: 2, stderr: `duration must be a duration such as 90m, 8h or 7d, not "-1h"`, wantCalls: "-"},
		{name: "instances unprotect", args: []string{"instances", "unprotect", "4"}, stdout: []string{"not protected."}, wantCalls: "UpdateInstance 4 <nil> 0s"},
		{name: "instances list shows lifetimes", args: []string{"instances", "list"}, stdout: []string{"EXPIRES AT", "PROTECTED UNTIL", "IDLE"}},
		{name: "instances list --all", args: []string{"instances", "list", "--all"}, stdout: []string{"Destroyed by a rule:", "expired", "it expired at 2026-11-24T12:00:00Z"}, wantCalls: "ListInstances Tombstones"},
		{name: "new picks newest ready", args: []string{"new"}, stdout: []string{"Image:", "2"}, wantCalls: "ListImages CreateInstance 2"},
		{name: "version", args: []string{"version"}, stdout: []string{"client " + draupnir.Version, "server 9.9.9"}},
		{name: "version over ssh", ssh: true, args: []string{"version"}, stdout: []string{"server 9.9.9"}},
		{name: "upload over ssh streams stdin", ssh: true, stdin: "tarball", args: []string{"images", "upload", "1"}, stdout: []string{"Uploaded 7 B (1 files) into image 1"}},

		// Usage errors: exit 2, nothing called.
		{name: "unknown command", args: []string{"imagez"}, code: 2, stderr: `unknown command "imagez"`, wantCalls: "-"},
		{name: "suggestion by distance", args: []string{"instanses", "list"}, code: 2, stderr: `did you mean "instances"?`, wantCalls: "-"},
		{name: "suggestion over ssh", ssh: true, args: []string{"instances", "shwo", "1"}, code: 2, stderr: `did you mean "show"?`, wantCalls: "-"},
		{name: "unknown subcommand", args: []string{"images", "frobnicate"}, code: 2, stderr: `unknown command "frobnicate"`, wantCalls: "-"},
		{name: "unknown flag", args: []string{"images", "list", "--frob"}, code: 2, stderr: "unknown flag: --frob", wantCalls: "-"},
		{name: "too many args", args: []string{"images", "list", "1"}, code: 2, stderr: "takes 0 arguments", wantCalls: "-"},
		{name: "missing id", args: []string{"instances", "show"}, code: 2, stderr: "draupnir-client: instances show takes 1 argument, got 0\n", wantCalls: "-"},
		{name: "non-numeric id", args: []string{"instances", "destroy", "four"}, code: 2, stderr: `instance id must be a positive integer, not "four"`, wantCalls: "-"},
		{name: "negative id", args: []string{"env", "-1"}, code: 2, wantCalls: "-", stderr: "unknown shorthand flag"},
		{name: "zero id", args: []string{"images", "done", "0"}, code: 2, stderr: "positive integer", wantCalls: "-"},
		{name: "authenticate is local only", ssh: true, args: []string{"authenticate", "--token", "x"}, code: 2, stderr: "your key says who you are"},
		{name: "completion is local only", ssh: true, args: []string{"completion", "bash"}, code: 2, stderr: `unknown command "completion"`},
		{name: "upload needs a file locally", args: []string{"images", "upload", "1"}, code: 2, stderr: "takes 2 arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend()
			r := run(t, b.backend(), Env{SSH: tt.ssh}, tt.stdin, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", r.code, tt.code, r.stderr)
			}
			r.stdoutHas(t, tt.stdout)
			if len(tt.stdout) == 0 && tt.code == 0 && r.stdout != "" && tt.name == "images destroy json is silent" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			switch {
			case tt.stderr == "" && r.stderr != "":
				t.Errorf("stderr %q, want none", r.stderr)
			case !strings.Contains(r.stderr, tt.stderr):
				t.Errorf("stderr %q lacks %q", r.stderr, tt.stderr)
			}
			if tt.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") > 2 {
				t.Errorf("error report is too long:\n%s", r.stderr)
			}
			if tt.code == 2 && !strings.Contains(r.stderr, "Usage: ") {
				t.Errorf("usage error without a usage line: %s", r.stderr)
			}
			switch got := strings.Join(b.calls, " "); tt.wantCalls {
			case "":
			case "-":
				if got != "" {
					t.Errorf("usage error still called the backend: %s", got)
				}
			default:
				if got != tt.wantCalls {
					t.Errorf("calls %q, want %q", got, tt.wantCalls)
				}
			}
		})
	}
}

func TestCreateSendsScriptAndTime(t *testing.T) {
	b := newFakeBackend()
	r := run(t, b.backend(), Env{}, "\\c app\nDELETE FROM tokens;\n", "images", "create", "--backed-up-at", "2017-05-01T14:00:00+02:00", "--anonymisation-script", "-")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if !b.created.backedUpAt.Equal(t0) || b.created.script != "\\c app\nDELETE FROM tokens;\n" {
		t.Errorf("created with %v, %q", b.created.backedUpAt, b.created.script)
	}
}

func TestJSONOutput(t *testing.T) {
	tests := []struct {
		args  []string
		check func(t *testing.T, v map[string]any)
	}{
		{[]string{"images", "list", "--json"}, func(t *testing.T, v map[string]any) {
			data := v["data"].([]any)
			if len(data) != 3 || data[0].(map[string]any)["id"] != "1" {
				t.Errorf("data %v", data)
			}
		}},
		{[]string{"--json", "images", "show", "1"}, func(t *testing.T, v map[string]any) {
			attrs := v["data"].(map[string]any)["attributes"].(map[string]any)
			if attrs["ready"] != true || attrs["backed_up_at"] != "2017-05-01T12:00:00Z" || attrs["state"] != "ready" {
				t.Errorf("attributes %v", attrs)
			}
		}},
		{[]string{"instances", "show", "4", "--json"}, func(t *testing.T, v map[string]any) {
			d := v["data"].(map[string]any)
			attrs := d["attributes"].(map[string]any)
			if d["type"] != "instances" || d["id"] != "4" || attrs["port"] != float64(6001) || attrs["image_id"] != float64(1) {
				t.Errorf("data %v", d)
			}
		}},
		{[]string{"instances", "list", "--json"}, func(t *testing.T, v map[string]any) {
			if len(v["data"].([]any)) != 1 {
				t.Errorf("data %v", v["data"])
			}
		}},
		{[]string{"env", "4", "--json"}, func(t *testing.T, v map[string]any) {
			if v["PGPORT"] != "6001" || v["PGPASSWORD"] != `it's a "pa$$ word"` {
				t.Errorf("env %v", v)
			}
		}},
		{[]string{"version", "--json"}, func(t *testing.T, v map[string]any) {
			if v["client"] != draupnir.Version || v["server"] != "9.9.9" {
				t.Errorf("version %v", v)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := run(t, newFakeBackend().backend(), Env{}, "", tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
			}
			tt.check(t, v)
		})
	}
}

func TestBackendErrors(t *testing.T) {
	tests := []struct {
		name string
		ssh  bool
		err  error
		want string
	}{
		{"client error shown", false, draupnir.Errorf(draupnir.KindConflict, "image 3 is finalising"), "draupnir-client: image 3 is finalising\n"},
		{"local internal error shown", false, errors.New("decoding the answer: EOF"), "draupnir-client: decoding the answer: EOF\n"},
		{"ssh client error shown", true, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may create images"), "draupnir: only the upload principal may create images\n"},
		{"ssh internal error hidden", true, errors.New("open /var/lib/draupnir/secret: permission denied"), "draupnir: internal error; the server log has the details\n"},
		{"multi-line message kept on one line", false, draupnir.Errorf(draupnir.KindUnprocessable, "ERROR: syntax error\nLINE 1: DELET"), "draupnir-client: ERROR: syntax error LINE 1: DELET\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend()
			b.err = tt.err
			r := run(t, b.backend(), Env{SSH: tt.ssh}, "", "instances", "list")
			if r.code != 1 || r.stderr != tt.want || r.stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1, nothing, %q", r.code, r.stdout, r.stderr, tt.want)
			}
		})
	}
}

func TestNoReadyImage(t *testing.T) {
	b := newFakeBackend()
	b.images = b.images[2:] // only the failed one
	r := run(t, b.backend(), Env{}, "", "new")
	if r.code != 1 || !strings.Contains(r.stderr, "no image is ready") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestHelp checks that every command has help, reachable as `X --help`,
// `help X` and (for groups) `group help`, and that it exits 0.
func TestHelp(t *testing.T) {
	for _, ssh := range []bool{false, true} {
		a := &app{env: Env{SSH: ssh}}
		var walk func(c *cobra.Command)
		var paths [][]string
		walk = func(c *cobra.Command) {
			if c.Hidden || c.Name() == "help" {
				return
			}
			if c.Short == "" {
				t.Errorf("%s has no short help", c.CommandPath())
			}
			p := strings.Fields(c.CommandPath())[1:]
			paths = append(paths, p)
			for _, sub := range c.Commands() {
				walk(sub)
			}
		}
		root := a.root()
		root.InitDefaultHelpCmd()
		root.InitDefaultCompletionCmd()
		walk(root)
		if len(paths) < 15 {
			t.Fatalf("only %d commands found", len(paths))
		}
		for _, p := range paths {
			forms := [][]string{append(append([]string{}, p...), "--help"), append([]string{"help"}, p...)}
			for _, args := range forms {
				r := run(t, newFakeBackend().backend(), Env{SSH: ssh}, "", args...)
				if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" {
					t.Errorf("ssh=%v %q: exit %d, stdout %q, stderr %q", ssh, args, r.code, r.stdout, r.stderr)
				}
			}
		}
	}
	for _, args := range [][]string{{}, {"images"}, {"images", "help"}, {"instances", "help"}, {"images", "help", "create"}} {
		r := run(t, newFakeBackend().backend(), Env{}, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%q: exit %d, stdout %q", args, r.code, r.stdout)
		}
	}
	r := run(t, newFakeBackend().backend(), Env{}, "", "images", "help", "create")
	if !strings.Contains(r.stdout, "--backed-up-at") {
		t.Errorf("images help create does not describe create:\n%s", r.stdout)
	}
	if want := run(t, newFakeBackend().backend(), Env{}, "", "help", "images", "create"); r.stdout != want.stdout {
		t.Errorf("images help create differs from help images create:\n%s\n---\n%s", r.stdout, want.stdout)
	}
	r = run(t, newFakeBackend().backend(), Env{SSH: true}, "")
	if !strings.Contains(r.stdout, "ssh HOST") || strings.Contains(r.stdout, "authenticate") {
		t.Errorf("ssh help should speak of ssh and not offer authenticate:\n%s", r.stdout)
	}
}

func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := run(t, newFakeBackend().backend(), Env{}, "", "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "draupnir-client") {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", sh, r.code, len(r.stdout), r.stderr)
		}
	}
}

func TestSpinnerOnlyOnTerminal(t *testing.T) {
	for _, term := range []bool{false, true} {
		r := run(t, newFakeBackend().backend(), Env{Terminal: term}, "", "images", "done", "1")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if got := strings.Contains(r.stderr, "finalising image 1"); got != term {
			t.Errorf("terminal=%v: stderr %q", term, r.stderr)
		}
		if strings.Contains(r.stdout, "finalising") {
			t.Errorf("spinner on stdout: %q", r.stdout)
		}
	}
}

// TestConcurrentRuns checks that runs share no state (run with -race).
func TestConcurrentRuns(t *testing.T) {
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(json bool) {
			defer wg.Done()
			args := []string{"instances", "list"}
			if json {
				args = append(args, "--json")
			}
			var out, errb bytes.Buffer
			if code := Run(context.Background(), newFakeBackend().backend(), Env{SSH: true}, args, strings.NewReader(""), &out, &errb); code != 0 {
				t.Errorf("exit %d: %s", code, errb.String())
			}
			if got := strings.HasPrefix(out.String(), "{"); got != json {
				t.Errorf("--json=%v leaked between runs: %q", json, out.String())
			}
		}(i%2 == 0)
	}
	wg.Wait()
}

func TestAuthenticateAndConfig(t *testing.T) {
	dir := t.TempDir()
	env := Env{ConfigDir: dir, Getenv: func(string) string { return "" }}
	r := run(t, newFakeBackend().backend(), env, "tok-from-stdin\n", "authenticate", "--url", "https://draupnir.example.com/", "--token", "-", "--no-check")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	path := filepath.Join(dir, "draupnir", "config.json")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600", st.Mode().Perm())
	}
	if strings.Contains(r.stderr+r.stdout, "tok-from-stdin") {
		t.Error("the token was printed")
	}
	cfg, err := LoadConfig(env)
	if err != nil || cfg != (Config{URL: "https://draupnir.example.com", Token: "tok-from-stdin"}) {
		t.Fatalf("LoadConfig = %+v, %v", cfg, err)
	}

	// --token replaces the token and keeps the URL.
	if r := run(t, newFakeBackend().backend(), env, "", "authenticate", "--token", "tok2", "--no-check"); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if cfg, _ := LoadConfig(env); cfg.Token != "tok2" || cfg.URL != "https://draupnir.example.com" {
		t.Errorf("after --token: %+v", cfg)
	}

	// The environment wins over the file.
	env.Getenv = func(k string) string {
		return map[string]string{"DRAUPNIR_URL": "http://other:1", "DRAUPNIR_TOKEN": "envtok"}[k]
	}
	if cfg, _ := LoadConfig(env); cfg != (Config{URL: "http://other:1", Token: "envtok"}) {
		t.Errorf("env override: %+v", cfg)
	}

	// Nothing anywhere: the default URL.
	if cfg, err := LoadConfig(Env{ConfigDir: t.TempDir(), Getenv: func(string) string { return "" }}); err != nil || cfg.URL != DefaultURL || cfg.Token != "" {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}

	for _, tt := range []struct {
		stdin string
		args  []string
	}{
		{"", []string{"authenticate", "--token", "-"}},
		{"x\n", []string{"authenticate", "--url", "ftp://x", "--token", "-"}},
		{"", []string{"authenticate", "--token", "x", "--no-browser"}},
		{"", []string{"authenticate", "--url", "http://127.0.0.1:1", "--no-browser"}}, // nothing listens there
		{"", []string{"authenticate", "--token", "  "}},
	} {
		if r := run(t, newFakeBackend().backend(), Env{ConfigDir: dir}, tt.stdin, tt.args...); r.code == 0 {
			t.Errorf("%q with stdin %q succeeded", tt.args, tt.stdin)
		}
	}
}

func TestBrokenConfigFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "draupnir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "draupnir", "config.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := Env{ConfigDir: dir, Getenv: func(k string) string { return map[string]string{"DRAUPNIR_TOKEN": "t"}[k] }}
	cfg, err := LoadConfig(env)
	if err == nil || !strings.Contains(err.Error(), "authenticate") {
		t.Errorf("error %v, want one that says to authenticate again", err)
	}
	if cfg != (Config{URL: DefaultURL, Token: "t"}) {
		t.Errorf("config %+v, want defaults and the environment", cfg)
	}
	// authenticate repairs it.
	if r := run(t, newFakeBackend().backend(), Env{ConfigDir: dir}, "", "authenticate", "--token", "new", "--no-check"); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if cfg, err := LoadConfig(Env{ConfigDir: dir, Getenv: func(string) string { return "" }}); err != nil || cfg.Token != "new" {
		t.Errorf("after authenticate: %+v, %v", cfg, err)
	}
}

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"abc", "abc"},
		{"db.example.com", "db.example.com"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
		{"~", "'~'"},
		{"#x", "'#x'"},
		{"a=b", "'a=b'"},
		{"*", "'*'"},
	}
	for _, tt := range tests {
		if got := ShellQuote(tt.in); got != tt.want {
			t.Errorf("ShellQuote(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestShellQuoteRoundTrip has real shells read quoted words back.
func TestShellQuoteRoundTrip(t *testing.T) {
	words := []string{
		"", "plain", "two words", "it's", `"double"`, "$HOME", "${X:-y}", "`id`", "$(id)", "a\\b", "\\",
		"tab\there", "new\nline", "trailing\n", "*", "?", "[a]", "~root", "#comment", ";&|<>()", "!", "'", "''",
		"ünïcødé", "-n", "-e", "a=b", "{a,b}", "\x01\x7f", "%s",
	}
	for _, sh := range []string{"sh", "bash", "dash", "zsh"} {
		path, err := exec.LookPath(sh)
		if err != nil {
			continue
		}
		t.Run(sh, func(t *testing.T) {
			var script strings.Builder
			for _, w := range words {
				script.WriteString("printf '%s\\0' " + ShellQuote(w) + "\n")
			}
			out, err := exec.Command(path, "-c", script.String()).Output()
			if err != nil {
				t.Fatalf("%s: %v", sh, err)
			}
			got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
			if len(got) != len(words) {
				t.Fatalf("%s printed %d words, want %d: %q", sh, len(got), len(words), got)
			}
			for i := range words {
				if got[i] != words[i] {
					t.Errorf("%s read %s back as %q, want %q", sh, ShellQuote(words[i]), got[i], words[i])
				}
			}
		})
	}
}

const testPEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZ2x+/AbC=\n-----END CERTIFICATE-----\n"

func TestEnvPlain(t *testing.T) {
	r := run(t, newFakeBackend().backend(), Env{}, "", "env", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := `export PGHOST=db.example.com PGPORT=6001 PGUSER=draupnir PGPASSWORD='it'\''s a "pa$$ word"' PGDATABASE=app ` +
		`DATABASE_URL=postgresql://draupnir:it%27s%20a%20%22pa%24%24%20word%22@db.example.com:6001/app` + "\n"
	if r.stdout != want {
		t.Errorf("env printed\n%s\nwant\n%s", r.stdout, want)
	}
	got := evalEnv(t, "bash", `eval "$(cat env.out)"`, r.stdout, nil)
	for k, v := range map[string]string{"PGHOST": "db.example.com", "PGPORT": "6001", "PGUSER": "draupnir", "PGPASSWORD": `it's a "pa$$ word"`, "PGDATABASE": "app"} {
		if got[k] != v {
			t.Errorf("after eval %s=%q, want %q", k, got[k], v)
		}
	}
}

func TestEnvHostFallback(t *testing.T) {
	b := newFakeBackend()
	b.instances[0].Hostname = ""
	r := run(t, b.backend(), Env{Host: "from-url.example.com"}, "", "env", "4")
	if !strings.Contains(r.stdout, "PGHOST=from-url.example.com ") {
		t.Errorf("env printed %s", r.stdout)
	}
}

func TestEnvLocalCA(t *testing.T) {
	b := newFakeBackend()
	b.instances[0].CACertificate = testPEM
	cache := filepath.Join(t.TempDir(), "cache with space")
	r := run(t, b.backend(), Env{CacheDir: cache}, "", "env", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	path := filepath.Join(cache, "draupnir", "instance-4-ca.pem")
	if b, err := os.ReadFile(path); err != nil || string(b) != testPEM {
		t.Fatalf("CA file: %q, %v", b, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("CA file mode %v", st.Mode().Perm())
	}
	got := evalEnv(t, "sh", `eval "$(cat env.out)"`, r.stdout, nil)
	if got["PGSSLMODE"] != "verify-full" || got["PGSSLROOTCERT"] != path {
		t.Errorf("after eval: %v", got)
	}
}

// TestEnvSSHCA evaluates what an SSH session prints, quoted and unquoted as
// the original documents, and checks the CA file lands on the "client".
func TestEnvSSHCA(t *testing.T) {
	b := newFakeBackend()
	b.instances[0].CACertificate = testPEM
	b.instances[0].Password = "simple-pw" // unquoted eval squeezes blanks, so keep it plain here
	r := run(t, b.backend(), Env{SSH: true}, "", "env", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, tt := range []struct{ sh, eval string }{
		{"bash", `eval "$(cat env.out)"`},
		{"bash", `eval $(cat env.out)`},
		{"sh", `eval "$(cat env.out)"`},
		{"sh", `eval $(cat env.out)`},
	} {
		t.Run(tt.sh+" "+tt.eval, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "my home")
			if err := os.Mkdir(home, 0o755); err != nil {
				t.Fatal(err)
			}
			got := evalEnv(t, tt.sh, tt.eval, r.stdout, []string{"HOME=" + home, "XDG_CACHE_HOME="})
			path := filepath.Join(home, ".cache", "draupnir", "instance-4-ca.pem")
			if got["PGSSLROOTCERT"] != path || got["PGSSLMODE"] != "verify-full" || got["PGPASSWORD"] != "simple-pw" {
				t.Errorf("after eval: %v", got)
			}
			data, err := os.ReadFile(path)
			if err != nil || string(data) != testPEM {
				t.Fatalf("CA file %q, %v", data, err)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
				t.Errorf("CA file mode %v, want 0600", st.Mode().Perm())
			}
			if st, _ := os.Stat(filepath.Dir(path)); st.Mode().Perm() != 0o700 {
				t.Errorf("CA dir mode %v, want 0700", st.Mode().Perm())
			}
			if got["UMASK"] != "0022" {
				t.Errorf("eval changed the shell's umask to %s", got["UMASK"])
			}
		})
	}
}

// evalEnv evaluates out in a shell as the user would and returns the PG*
// variables (and the umask) it leaves behind.
func evalEnv(t *testing.T, sh, eval, out string, extraEnv []string) map[string]string {
	t.Helper()
	return evalEnvVars(t, sh, eval, out, extraEnv, "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "PGSSLROOTCERT")
}

// evalEnvVars is evalEnv for the variables vars.
func evalEnvVars(t *testing.T, sh, eval, out string, extraEnv []string, vars ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "env.out"), []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	script := "umask 022; " + eval + `
for v in ` + strings.Join(vars, " ") + `; do
	eval "printf '%s=%s\\0' $v \"\${$v}\""
done
printf 'UMASK=%s\0' "$(umask)"
`
	cmd := exec.Command(sh, "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("%s: %v; stderr: %s", sh, err, stderr.String())
	}
	got := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00") {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	return got
}

func TestParseSSHTarget(t *testing.T) {
	tests := []struct {
		in, host string
		want     sshTarget
		err      bool
	}{
		{"", "db.example.com", sshTarget{"upload", "db.example.com", 2222}, false},
		{"", "", sshTarget{}, true},
		{"upload@host:2200", "x", sshTarget{"upload", "host", 2200}, false},
		{"me@host", "x", sshTarget{"me", "host", 2222}, false},
		{"host:22", "x", sshTarget{"upload", "host", 22}, false},
		{"[::1]:2222", "x", sshTarget{"upload", "::1", 2222}, false},
		{"-oProxyCommand=x", "x", sshTarget{}, true},
		{"host:0", "x", sshTarget{}, true},
		{"host:abc", "x", sshTarget{}, true},
		{"a b@host", "x", sshTarget{}, true},
	}
	for _, tt := range tests {
		got, err := parseSSHTarget(tt.in, tt.host)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("parseSSHTarget(%q, %q) = %+v, %v; want %+v, error %v", tt.in, tt.host, got, err, tt.want, tt.err)
		}
	}
}

// TestUploadRunsSSH runs `images upload` with a stand-in ssh that records
// its arguments and standard input.
func TestUploadRunsSSH(t *testing.T) {
	dir := t.TempDir()
	fakeSSH := filepath.Join(dir, "ssh")
	script := "#!/bin/sh\nprintf '%s\\n' \"$@\" > " + filepath.Join(dir, "args") + "\ncat > " + filepath.Join(dir, "stdin") + "\necho uploaded\nexit ${FAKE_SSH_EXIT:-0}\n"
	if err := os.WriteFile(fakeSSH, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	payload := filepath.Join(dir, "base.tar.gz")
	if err := os.WriteFile(payload, bytes.Repeat([]byte("x"), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, term := range []bool{false, true} {
		env := Env{SSHCommand: fakeSSH, Terminal: term, Host: "db.example.com",
			Getenv: func(k string) string { return map[string]string{"DRAUPNIR_SSH": "up@ssh.example.com:2200"}[k] }}
		r := run(t, newFakeBackend().backend(), env, "", "images", "upload", "3", payload)
		if r.code != 0 || r.stdout != "uploaded\n" {
			t.Fatalf("terminal=%v: exit %d, stdout %q, stderr %q", term, r.code, r.stdout, r.stderr)
		}
		args, _ := os.ReadFile(filepath.Join(dir, "args"))
		if want := "-T\n-p\n2200\nup@ssh.example.com\nimages\nupload\n3\n--name\nbase.tar.gz\n"; string(args) != want {
			t.Errorf("ssh args %q, want %q", args, want)
		}
		if st, err := os.Stat(filepath.Join(dir, "stdin")); err != nil || st.Size() != 100000 {
			t.Errorf("ssh got %v bytes on stdin (%v), want 100000", st, err)
		}
		if term != strings.Contains(r.stderr, "100%") {
			t.Errorf("terminal=%v: progress %q", term, r.stderr)
		}
	}

	// A failing ssh: exit 1, and ssh's own message is the only one.
	env := Env{SSHCommand: fakeSSH, Host: "h", Getenv: func(k string) string {
		return map[string]string{"FAKE_SSH_EXIT": "5"}[k]
	}}
	os.Setenv("FAKE_SSH_EXIT", "5")
	defer os.Unsetenv("FAKE_SSH_EXIT")
	if r := run(t, newFakeBackend().backend(), env, "", "images", "upload", "3", payload); r.code != 1 {
		t.Errorf("failing ssh: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, newFakeBackend().backend(), env, "", "images", "upload", "3", filepath.Join(dir, "missing.tar")); r.code != 1 || !strings.Contains(r.stderr, "missing.tar") {
		t.Errorf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// commandLines are command lines that call every method of both services.
var commandLines = [][]string{
	{"images", "list"}, {"images", "show", "1"},
	{"images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-"},
	{"images", "update", "2", "--anonymisation-script", "-"}, {"images", "done", "2"},
	{"instances", "list"}, {"instances", "show", "1"}, {"env", "1"}, {"new"},
	{"instances", "create", "1"}, {"instances", "destroy", "2"}, {"images", "destroy", "2", "--yes"},
}

// TestCommandsActAsPrincipal checks that every command calls the services as
// the backend's principal, and nobody else: the SSH door's commands act as
// the session key's principal through it.
func TestCommandsActAsPrincipal(t *testing.T) {
	for _, p := range []draupnir.Principal{
		{Name: "alice@example.com"},
		{Name: draupnir.UploadPrincipal, Upload: true},
	} {
		imgs := mock.NewImages()
		insts := mock.NewInstances(imgs)
		for _, args := range commandLines {
			run(t, Backend{Images: imgs, Instances: insts, Principal: p}, Env{SSH: true}, "SELECT 1;", args...)
		}
		for _, want := range []string{"List Get Create Update Finalise", "Destroy"} {
			if got := strings.Join(imgs.Calls(), " "); !strings.Contains(got, want) {
				t.Errorf("%s: image calls %s, want %s among them", p.Name, got, want)
			}
		}
		if got, want := strings.Join(insts.Calls(), " "), "List Get Get Create Create Destroy"; got != want {
			t.Errorf("%s: instance calls %s, want %s", p.Name, got, want)
		}
		for _, got := range append(imgs.Principals(), insts.Principals()...) {
			if got != p {
				t.Errorf("called as %+v, want %+v", got, p)
			}
		}
	}
}

// TestNoPrincipalFailsClosed checks that a backend that names no principal
// is refused before any service is called, whatever the command: a wiring
// mistake must not act as nobody in particular. Only the HTTP client's
// services, whose server acts as the token's principal, do without one.
func TestNoPrincipalFailsClosed(t *testing.T) {
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	for _, p := range []draupnir.Principal{{}, {Upload: true}} {
		for _, ssh := range []bool{false, true} {
			imgs := mock.NewImages()
			insts := mock.NewInstances(imgs)
			uploads := dirUploads{base: t.TempDir()}
			b := Backend{Images: imgs, Instances: insts, Uploads: uploads, Principal: p}
			for _, args := range append(commandLines, []string{"images", "upload", "1"}) {
				r := run(t, b, Env{SSH: ssh}, "SELECT 1;", args...)
				want := "no principal"
				if ssh {
					want = "internal error"
				}
				if r.code != ExitFailure || !strings.Contains(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
					t.Errorf("%+v ssh=%v %v: exit %d, stderr %q; want exit 1 and one line with %q", p, ssh, args, r.code, r.stderr, want)
				}
			}
			if calls := append(imgs.Calls(), insts.Calls()...); len(calls) != 0 {
				t.Errorf("%+v ssh=%v: the services were called: %v", p, ssh, calls)
			}
			if ents, _ := os.ReadDir(uploads.base); len(ents) != 0 {
				t.Errorf("%+v ssh=%v: an upload was opened", p, ssh)
			}
		}
	}
	// Services that act as their token's principal need none (only
	// HTTPBackend says so).
	imgs := mock.NewImages()
	b := Backend{Images: imgs, Instances: mock.NewInstances(imgs), byToken: true}
	if r := run(t, b, Env{}, "", "images", "list"); r.code != 0 || len(imgs.Calls()) != 1 {
		t.Errorf("backend by token: exit %d, stderr %q, calls %v", r.code, r.stderr, imgs.Calls())
	}
	// The local client's backend is one of those.
	var requests int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"data":[]}`)
	}))
	defer srv.Close()
	if r := run(t, HTTPBackend(client.New(srv.URL, "tok")), Env{}, "", "images", "list"); r.code != 0 || requests != 1 {
		t.Errorf("HTTPBackend: exit %d, stderr %q, %d requests", r.code, r.stderr, requests)
	}
	// The upload principal's is a name like any other.
	if r := run(t, Backend{Images: imgs, Instances: mock.NewInstances(imgs), Principal: upload}, Env{}, "", "images", "list"); r.code != 0 {
		t.Errorf("upload principal refused: %s", r.stderr)
	}
}

// TestEnvFailureStopsEval checks that `eval "$(… env N)" && psql` stops
// when env fails, in either door and for every kind of failure: the output
// is a command that fails, and evaluating it leaves the shell alive.
func TestEnvFailureStopsEval(t *testing.T) {
	var shells []string
	for _, sh := range []string{"sh", "bash", "dash", "zsh"} {
		if _, err := exec.LookPath(sh); err == nil {
			shells = append(shells, sh)
		}
	}
	tests := []struct {
		name string
		err  error // of every backend call
		args []string
		code int
	}{
		{"no such instance", nil, []string{"env", "8"}, 1},
		{"server unreachable", errors.New("dial tcp 127.0.0.1:1: connection refused"), []string{"env", "4"}, 1},
		{"no argument", nil, []string{"env"}, 2},
		{"not an id", nil, []string{"env", "four"}, 2},
		{"unknown flag", nil, []string{"env", "--frob", "4"}, 2},
		// An argument must never reach the output: here it would be a command.
		{"hostile argument", nil, []string{"env", "4\nPGHOST=evil;touch pwned"}, 2},
	}
	for _, ssh := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("ssh=%v/%s", ssh, tt.name), func(t *testing.T) {
				b := newFakeBackend()
				b.err = tt.err
				r := run(t, b.backend(), Env{SSH: ssh}, "", tt.args...)
				if r.code != tt.code {
					t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.code, r.stderr)
				}
				if strings.Contains(r.stdout, "pwned") || strings.Count(r.stdout, "\n") != 1 || !strings.HasPrefix(r.stdout, "false ") {
					t.Errorf("stdout %q, want one line that starts with false", r.stdout)
				}
				if !strings.Contains(r.stderr, ": ") || strings.Contains(r.stderr, "false") {
					t.Errorf("stderr %q, want the error and only the error", r.stderr)
				}
				for _, sh := range shells {
					for _, eval := range []string{`eval "$(cat env.out)"`, `eval $(cat env.out)`} {
						dir := t.TempDir()
						if err := os.WriteFile(filepath.Join(dir, "env.out"), []byte(r.stdout), 0o600); err != nil {
							t.Fatal(err)
						}
						cmd := exec.Command(sh, "-c", eval+` && echo ran-psql; echo "alive $PGHOST"`)
						cmd.Dir = dir
						cmd.Env = append(os.Environ(), "PGHOST=before")
						out, err := cmd.Output()
						if err != nil || string(out) != "alive before\n" {
							t.Errorf("%s: %s printed %q (%v), want only that the shell lives on", sh, eval, out, err)
						}
						if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
							t.Errorf("%s: %s ran a command from the argument", sh, eval)
						}
					}
				}
			})
		}
	}
	// --json output is not for eval: a failure prints nothing there.
	r := run(t, newFakeBackend().backend(), Env{}, "", "env", "8", "--json")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("env --json of a missing instance: exit %d, stdout %q", r.code, r.stdout)
	}
	// Other commands print nothing on stdout when they fail.
	r = run(t, newFakeBackend().backend(), Env{}, "", "instances", "show", "8")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("instances show of a missing instance: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestEnvDatabaseURL checks DATABASE_URL: every part percent-encoded, the
// CA file named, and the same connection as the PG* variables.
func TestEnvDatabaseURL(t *testing.T) {
	b := newFakeBackend()
	inst := b.instances[0]
	inst.CACertificate = testPEM
	inst.Password = `p@ss:/w?rd#&= %'"$x`
	inst.Username = "user name"
	inst.Database = "my/db"
	cache := filepath.Join(t.TempDir(), "cache & more?")
	r := run(t, b.backend(), Env{CacheDir: cache}, "", "env", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	got := evalEnvVars(t, "bash", `eval "$(cat env.out)"`, r.stdout, nil, "DATABASE_URL", "PGSSLROOTCERT")
	checkURI(t, got["DATABASE_URL"], inst, got["PGSSLROOTCERT"])

	// JSON has it too.
	r = run(t, b.backend(), Env{CacheDir: cache}, "", "env", "4", "--json")
	var m map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatal(err)
	}
	checkURI(t, m["DATABASE_URL"], inst, m["PGSSLROOTCERT"])

	// Over SSH the client's shell puts in the path of the CA file it wrote.
	r = run(t, b.backend(), Env{SSH: true}, "", "env", "4")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	home := filepath.Join(t.TempDir(), "my home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, sh := range []string{"sh", "bash"} {
		got = evalEnvVars(t, sh, `eval "$(cat env.out)"`, r.stdout, []string{"HOME=" + home, "XDG_CACHE_HOME="}, "DATABASE_URL", "PGSSLROOTCERT")
		if want := filepath.Join(home, ".cache", "draupnir", "instance-4-ca.pem"); got["PGSSLROOTCERT"] != want {
			t.Fatalf("%s: PGSSLROOTCERT %q, want %q", sh, got["PGSSLROOTCERT"], want)
		}
		checkURI(t, got["DATABASE_URL"], inst, got["PGSSLROOTCERT"])
	}
	r = run(t, b.backend(), Env{SSH: true}, "", "env", "4", "--json")
	if strings.Contains(r.stdout, "DATABASE_URL") {
		t.Errorf("env --json over SSH names a CA file it did not write: %s", r.stdout)
	}

	// No TLS: no parameters.
	b = newFakeBackend()
	r = run(t, b.backend(), Env{}, "", "env", "4", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatal(err)
	}
	if u := m["DATABASE_URL"]; strings.Contains(u, "?") || !strings.HasPrefix(u, "postgresql://draupnir:") {
		t.Errorf("DATABASE_URL %q", u)
	}
}

// checkURI parses uri as a URI parser would and compares it with inst.
func checkURI(t *testing.T, uri string, inst *draupnir.Instance, rootCert string) {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatalf("DATABASE_URL %q: %v", uri, err)
	}
	pw, _ := u.User.Password()
	q := u.Query()
	if u.Scheme != "postgresql" || u.User.Username() != inst.Username || pw != inst.Password ||
		u.Hostname() != inst.Hostname || u.Port() != strconv.Itoa(inst.Port) || strings.TrimPrefix(u.Path, "/") != inst.Database ||
		q.Get("sslmode") != "verify-full" || q.Get("sslrootcert") != rootCert || u.Fragment != "" {
		t.Errorf("DATABASE_URL %q reads as %s %q:%q@%s:%s/%s %v", uri, u.Scheme, u.User.Username(), pw, u.Hostname(), u.Port(), u.Path, q)
	}
}

func TestDestroyImageAsks(t *testing.T) {
	tests := []struct {
		name        string
		ssh         bool
		interactive bool
		stdin       string
		args        []string
		code        int
		destroyed   bool
		stderr      string
	}{
		{name: "no instances: no question", args: []string{"images", "destroy", "3"}, destroyed: true},
		{name: "a script is refused", args: []string{"images", "destroy", "1"}, code: 2,
			stderr: "destroying image 1 also destroys its 2 instances: 4 (alice@example.com), 6 (bob@example.com); to go ahead, run it again with --yes"},
		{name: "ssh is refused", ssh: true, stdin: "y\n", args: []string{"images", "destroy", "1"}, code: 2, stderr: "--yes"},
		{name: "--yes", args: []string{"images", "destroy", "1", "--yes"}, destroyed: true},
		{name: "-y over ssh", ssh: true, args: []string{"images", "rm", "-y", "1"}, destroyed: true},
		{name: "yes on a terminal", interactive: true, stdin: "y\n", args: []string{"images", "destroy", "1"}, destroyed: true,
			stderr: "Destroying image 1 also destroys its 2 instances: 4 (alice@example.com), 6 (bob@example.com).\nDestroy them? [y/N] "},
		{name: "YES on a terminal", interactive: true, stdin: " YES \n", args: []string{"images", "destroy", "1"}, destroyed: true},
		{name: "no on a terminal", interactive: true, stdin: "n\n", args: []string{"images", "destroy", "1"}, code: 1, stderr: "nothing was destroyed"},
		{name: "enter on a terminal", interactive: true, stdin: "\n", args: []string{"images", "destroy", "1"}, code: 1, stderr: "nothing was destroyed"},
		{name: "end of input on a terminal", interactive: true, args: []string{"images", "destroy", "1"}, code: 1, stderr: "nothing was destroyed"},
		{name: "anything else on a terminal", interactive: true, stdin: "yep, sure\n", args: []string{"images", "destroy", "1"}, code: 1},
		{name: "missing image", args: []string{"images", "destroy", "7"}, code: 1, stderr: "image 7 does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend()
			b.instances[0].Owner = "alice@example.com"
			b.instances = append(b.instances,
				&draupnir.Instance{ID: 5, ImageID: 2, Owner: "alice@example.com"},
				&draupnir.Instance{ID: 6, ImageID: 1, Owner: "bob@example.com"})
			r := run(t, b.backend(), Env{SSH: tt.ssh, Interactive: tt.interactive}, tt.stdin, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("exit %d, stderr %q; want %d, %q", r.code, r.stderr, tt.code, tt.stderr)
			}
			called := strings.Contains(strings.Join(b.calls, " "), "DestroyImage")
			if called != tt.destroyed && tt.name != "missing image" {
				t.Errorf("DestroyImage called: %v, want %v (calls %v)", called, tt.destroyed, b.calls)
			}
			if tt.destroyed && !strings.Contains(r.stdout, "Destroyed image") {
				t.Errorf("stdout %q", r.stdout)
			}
		})
	}
	// Many instances: the count, and the list cut short.
	b := newFakeBackend()
	for i := int64(10); i < 20; i++ {
		b.instances = append(b.instances, &draupnir.Instance{ID: i, ImageID: 1})
	}
	r := run(t, b.backend(), Env{}, "", "images", "destroy", "1")
	if want := "its 11 instances: 4, 10, 11, 12, 13 and 6 more; "; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q lacks %q", r.stderr, want)
	}
}

func TestSSHHelpNamesTheServer(t *testing.T) {
	tests := []struct {
		env  Env
		want string
	}{
		{Env{SSH: true, Host: "db.example.com", SSHPort: 2222, SSHUser: "upload"}, "ssh -p 2222 upload@db.example.com"},
		{Env{SSH: true, Host: "db.example.com", SSHPort: 2200}, "ssh -p 2200 db.example.com"},
		{Env{SSH: true, Host: "db.example.com", SSHPort: 22}, "ssh db.example.com"},
		{Env{SSH: true, SSHPort: 2222}, "ssh -p 2222 HOST"},
	}
	for _, tt := range tests {
		for _, args := range [][]string{nil, {"env", "--help"}, {"images", "upload", "--help"}, {"instances", "show", "4"}} {
			r := run(t, newFakeBackend().backend(), tt.env, "", args...)
			if r.code != 0 || !strings.Contains(r.stdout, tt.want+" ") {
				t.Errorf("%+v %q: exit %d, stdout lacks %q:\n%s", tt.env, args, r.code, tt.want, r.stdout)
			}
			if strings.Contains(r.stdout, "ssh HOST") && tt.env.Host != "" {
				t.Errorf("%+v %q still says ssh HOST:\n%s", tt.env, args, r.stdout)
			}
		}
	}
}

func TestCreatePrintsNextStep(t *testing.T) {
	tests := []struct {
		name string
		env  Env
		want []string
	}{
		{"client", Env{Getenv: func(k string) string { return map[string]string{"DRAUPNIR_SSH": "up@ssh.example.com:2200"}[k] }}, []string{
			"Next, upload the backup into image 9",
			"scp -P 2200 base.tar.gz pg_wal.tar.gz up@ssh.example.com:/draupnir/image_uploads/9/\n",
			"| ssh -p 2200 up@ssh.example.com images upload 9\n",
			"Then finalise it: draupnir-client images done 9\n",
		}},
		{"client default", Env{Host: "db.example.com"}, []string{"scp -P 2222 base.tar.gz pg_wal.tar.gz upload@db.example.com:/draupnir/image_uploads/9/\n"}},
		{"client ipv6", Env{Host: "::1"}, []string{"upload@[::1]:/draupnir/image_uploads/9/\n", "ssh -p 2222 upload@::1 images upload 9"}},
		{"ssh", Env{SSH: true, Host: "db.example.com", SSHPort: 2222, SSHUser: "upload"}, []string{
			"scp -P 2222 base.tar.gz pg_wal.tar.gz upload@db.example.com:/draupnir/image_uploads/9/\n",
			"| ssh -p 2222 upload@db.example.com images upload 9\n",
			"Then finalise it: ssh -p 2222 upload@db.example.com images done 9\n",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, newFakeBackend().backend(), tt.env, "SELECT 1;", "images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
	r := run(t, newFakeBackend().backend(), Env{}, "SELECT 1;", "images", "create", "--backed-up-at", "2017-05-01", "--anonymisation-script", "-", "--json")
	var v any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Errorf("--json output is not one JSON document: %v\n%s", err, r.stdout)
	}
}

func TestInstancesListOwners(t *testing.T) {
	b := newFakeBackend()
	b.instances[0].Owner = "alice@example.com"
	b.instances = append(b.instances, &draupnir.Instance{ID: 7, ImageID: 2, State: draupnir.InstanceRunning, Port: 6003, Owner: "bob@example.com"})
	r := run(t, b.backend(), Env{}, "", "instances", "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], "  OWNER") ||
		!strings.HasSuffix(lines[1], " alice@example.com") || !strings.HasSuffix(lines[2], " bob@example.com") {
		t.Errorf("instances list:\n%s", r.stdout)
	}
	// Without owners (an older server) the column is left out.
	r = run(t, newFakeBackend().backend(), Env{}, "", "instances", "list")
	if strings.Contains(r.stdout, "OWNER") {
		t.Errorf("instances list:\n%s", r.stdout)
	}
}

// new leaves saved images out, however recent: they are someone's branch
// of the data.
func TestNewSkipsSavedImages(t *testing.T) {
	b := newFakeBackend()
	b.images = append(b.images, &draupnir.Image{ID: 6, State: draupnir.ImageReady, BackedUpAt: t0.Add(96 * time.Hour),
		Owner: "bob@example.com", ParentImageID: 2, FromInstanceID: 4})
	r := run(t, b.backend(), Env{}, "", "new")
	if r.code != 0 || !strings.Contains(strings.Join(b.calls, " "), "CreateInstance 2") {
		t.Errorf("new: exit %d, calls %q; want image 2", r.code, b.calls)
	}
}

func TestIdleStr(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		last time.Time
		want string
	}{
		{time.Time{}, "-"},
		{now, "<1m"},
		{now.Add(-59 * time.Second), "<1m"},
		{now.Add(-4*time.Minute - 30*time.Second), "4m"},
		{now.Add(-2*time.Hour - 5*time.Minute), "2h5m"},
		{now.Add(-(3*24 + 4) * time.Hour), "3d4h"},
		{now.Add(time.Minute), "<1m"}, // the server's clock ahead of ours
	}
	for _, tt := range tests {
		if got := idleStr(tt.last, now); got != tt.want {
			t.Errorf("idleStr(%v) = %q, want %q", now.Sub(tt.last), got, tt.want)
		}
	}
}
