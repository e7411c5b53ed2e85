package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/wire"
)

// sourceEntry is a [[sources]] table for a test server's config.
func sourceEntry(name, mode, conninfo, script string, keep int, extra string) string {
	return fmt.Sprintf("\n[[sources]]\nname = %q\nconninfo = %q\nanonymisation_script = %q\nmode = %q\nkeep = %d\n%s\n",
		name, conninfo, script, mode, keep, extra)
}

// writePrivate writes a root-only file in a fresh directory and returns
// its path.
func writePrivate(t testing.TB, name, body string) string {
	t.Helper()
	path := filepath.Join(testenv.TempDir(t), name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitImage polls image id until it is ready or failed.
func (s *server) waitImage(t testing.TB, id int64) *draupnir.Image {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		im, err := s.upload().Images().Get(context.Background(), draupnir.Principal{}, id)
		if err != nil {
			t.Fatalf("image %d: %v", id, err)
		}
		if im.State == draupnir.ImageReady || im.State == draupnir.ImageFailed {
			return im
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %d still %s after 5 minutes", id, im.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// refreshed refreshes source name over HTTP and waits for its image. The
// next refresh may follow at once: one asked while the last only records
// how it ended waits for that.
func (s *server) refreshed(t testing.TB, name string) *draupnir.Image {
	t.Helper()
	im, err := s.upload().Sources().Refresh(context.Background(), draupnir.Principal{}, name)
	if err != nil {
		t.Fatalf("refreshing %s: %v", name, err)
	}
	if im.Source != name {
		t.Errorf("refresh of %s made an image of source %q", name, im.Source)
	}
	done := s.waitImage(t, im.ID)
	// The refresh ends a moment after its image: it records how it went
	// and applies retention.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		src, err := s.upload().Sources().Get(context.Background(), draupnir.Principal{}, name)
		if err == nil && src.RefreshingImageID != im.ID {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatalf("source %s still records the refresh of image %d a minute after it ended: %+v, %v", name, im.ID, src, err)
		}
	}
}

// api sends a request with token and returns the status and body.
func (s *server) api(t testing.TB, token, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(wire.HeaderVersion, draupnir.Version)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// instanceOfSource creates a user's instance of source's newest ready
// image through POST /instances {"source": …}.
func (s *server) instanceOfSource(t testing.TB, source string) *draupnir.Instance {
	t.Helper()
	status, b := s.api(t, "the-integration-access-token", http.MethodPost, "/instances",
		`{"data":{"type":"instances","attributes":{"source":"`+source+`"}}}`)
	if status != http.StatusCreated {
		t.Fatalf("POST /instances of source %s: %d %s", source, status, b)
	}
	var doc wire.Document[wire.InstanceResource]
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Data.Instance()
}

// door runs the command tree as the upload principal or the user, through
// draupnir-client (HTTP) or ssh, and returns its stdout and exit code.
func (s *server) door(t testing.TB, keys *sshKeys, door string, upload bool, args ...string) (string, int) {
	t.Helper()
	var cmd *exec.Cmd
	if door == "client" {
		cmd = exec.Command(bins.client, args...)
		token := "the-integration-access-token"
		if upload {
			token = sharedSecret
		}
		cmd.Env = append(os.Environ(), "DRAUPNIR_URL="+s.url, "DRAUPNIR_TOKEN="+token, "HOME="+testenv.TempDir(t))
	} else {
		key, login := keys.user, "localhost"
		if upload {
			key, login = keys.upload, "upload@localhost"
		}
		cmd = s.ssh(t, keys, key, "ssh", append([]string{"--", login}, args...)...)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out) + stderr.String(), code
}

// jsonID reads the id of the resource a --json command printed.
func jsonID(t testing.TB, out string) int64 {
	t.Helper()
	var doc struct {
		Data struct {
			ID wire.ID `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("not a JSON document: %v\n%s", err, out)
	}
	return int64(doc.Data.ID)
}

// TestSourcePull refreshes a live source in pull mode through every door:
// instances of its series see its latest rows and none that the script
// removes; a failed refresh leaves the earlier images serving; keep never
// destroys an image that has instances; a source without the replication
// privilege, an unreachable one and a bad conninfo fail with errors that
// name them.
func TestSourcePull(t *testing.T) {
	keys := &sshKeys{}
	src := newSource(t)
	src.SQL(t, "postgres", "CREATE ROLE repl LOGIN REPLICATION; CREATE ROLE norepl LOGIN")
	script := writePrivate(t, "app.sql", anonymise)
	sock := fmt.Sprintf("host=%s port=5432", src.SocketDir)
	extra := sourceEntry("app", "pull", sock+" user=repl", script, 2, "") +
		sourceEntry("norepl", "pull", sock+" user=norepl", script, 1, "") +
		sourceEntry("gone", "pull", fmt.Sprintf("host=127.0.0.1 port=%d user=repl", freePort(t)), script, 1, "") +
		sourceEntry("badopt", "pull", sock+" user=repl no_such_option=1", script, 1, "")
	s := startServerSSH(t, extra, keys)
	logOnFailure(t, s)
	ctx := context.Background()
	noSecrets := func(in *draupnir.Instance) {
		t.Helper()
		if got := mustPSQL(t, in, "SELECT count(*) FROM secret_tokens"); got != "0" {
			t.Errorf("instance %d sees %s secret tokens, want 0", in.ID, got)
		}
		if got := mustPSQL(t, in, "SELECT count(*) FROM customers WHERE email LIKE '%@real.example'"); got != "0" {
			t.Errorf("instance %d sees %s real emails, want 0", in.ID, got)
		}
	}

	// First refresh, over HTTP; a second one meanwhile is refused.
	first, err := s.upload().Sources().Refresh(ctx, draupnir.Principal{}, "app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.upload().Sources().Refresh(ctx, draupnir.Principal{}, "app"); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("a second refresh while one runs: %v, want a conflict", err)
	}
	if _, err := s.user().Sources().Refresh(ctx, draupnir.Principal{}, "app"); draupnir.KindOf(err) != draupnir.KindForbidden {
		t.Errorf("a user's refresh: %v, want forbidden", err)
	}
	a := s.waitImage(t, first.ID)
	if !a.Ready() || a.Source != "app" {
		t.Fatalf("first refresh: image %d is %s (%s), source %q", a.ID, a.State, a.Error, a.Source)
	}
	inA := s.instanceOfSource(t, "app")
	if inA.ImageID != a.ID {
		t.Errorf("instance of source app is of image %d, want %d", inA.ImageID, a.ID)
	}
	noSecrets(inA)
	if got := mustPSQL(t, inA, "SELECT count(*) FROM customers"); got != "1000" {
		t.Errorf("first image has %s customers, want 1000", got)
	}

	// Writes on the source, then a refresh by draupnir-client: the new
	// image has them, anonymised.
	src.SQL(t, "shop", "INSERT INTO customers (email) VALUES ('newest@real.example'); INSERT INTO secret_tokens VALUES ('new-s3cr3t')")
	out, code := s.door(t, keys, "client", true, "--json", "sources", "refresh", "app")
	if code != 0 {
		t.Fatalf("client sources refresh app: exit %d\n%s", code, out)
	}
	b := s.waitImage(t, jsonID(t, out))
	if !b.Ready() {
		t.Fatalf("second refresh: image %d is %s: %s", b.ID, b.State, b.Error)
	}
	out, code = s.door(t, keys, "client", false, "--json", "new", "app")
	if code != 0 {
		t.Fatalf("client new app: exit %d\n%s", code, out)
	}
	inB, err := s.user().Instances().Get(ctx, draupnir.Principal{}, jsonID(t, out))
	if err != nil {
		t.Fatal(err)
	}
	if inB.ImageID != b.ID {
		t.Errorf("new app made an instance of image %d, want the newest, %d", inB.ImageID, b.ID)
	}
	noSecrets(inB)
	if got := mustPSQL(t, inB, "SELECT count(*) FROM customers"); got != "1001" {
		t.Errorf("second image has %s customers, want 1001 (the source's latest row)", got)
	}

	// keep = 2. A third refresh (over SSH) leaves a beyond keep, but its
	// instance keeps it.
	out, code = s.door(t, keys, "ssh", true, "--json", "sources", "refresh", "app")
	if code != 0 {
		t.Fatalf("ssh sources refresh app: exit %d\n%s", code, out)
	}
	c := s.waitImage(t, jsonID(t, out))
	if !c.Ready() {
		t.Fatalf("third refresh: image %d is %s: %s", c.ID, c.State, c.Error)
	}
	if _, err := s.upload().Images().Get(ctx, draupnir.Principal{}, a.ID); err != nil {
		t.Fatalf("image %d, beyond keep but with an instance, was destroyed: %v", a.ID, err)
	}
	mustPSQL(t, inA, "SELECT 1")
	if !strings.Contains(s.logs(), "keeping an image beyond keep while it is in use") {
		t.Error("the log does not say why an image beyond keep was kept")
	}
	// Once its instance is gone, the next successful refresh destroys it;
	// b, beyond keep too, stays for its instance.
	if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, inA.ID); err != nil {
		t.Fatal(err)
	}
	d := s.refreshed(t, "app")
	if !d.Ready() {
		t.Fatalf("fourth refresh: image %d is %s: %s", d.ID, d.State, d.Error)
	}
	if _, err := s.upload().Images().Get(ctx, draupnir.Principal{}, a.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("image %d, beyond keep and unused, was not destroyed: %v", a.ID, err)
	}
	if _, err := s.upload().Images().Get(ctx, draupnir.Principal{}, b.ID); err != nil {
		t.Errorf("image %d, which has an instance, was destroyed: %v", b.ID, err)
	}
	mustPSQL(t, inB, "SELECT 1")

	// A failing script fails the refresh's image with the reason; the
	// series still serves d.
	if err := os.WriteFile(script, []byte("\\c shop\nSELECT 1/0;"), 0o600); err != nil {
		t.Fatal(err)
	}
	failed := s.refreshed(t, "app")
	if failed.State != draupnir.ImageFailed || !strings.Contains(failed.Error, "division by zero") {
		t.Errorf("refresh with a failing script: image %d is %s: %q", failed.ID, failed.State, failed.Error)
	}
	if in := s.instanceOfSource(t, "app"); in.ImageID != d.ID {
		t.Errorf("after a failed refresh, source app gives image %d, want %d", in.ImageID, d.ID)
	}
	got, err := s.upload().Sources().Get(ctx, draupnir.Principal{}, "app")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "failing" || !strings.Contains(got.LastError, "division by zero") || got.LastRefreshAt.IsZero() {
		t.Errorf("source app after a failed refresh: state %q, last error %q, last refresh %v", got.State, got.LastError, got.LastRefreshAt)
	}
	if want := []int64{b.ID, c.ID, d.ID}; fmt.Sprint(got.ImageIDs) != fmt.Sprint(want) {
		t.Errorf("source app keeps images %v, want %v", got.ImageIDs, want)
	}
	if got, _ := s.user().Sources().Get(ctx, draupnir.Principal{}, "app"); got == nil || got.LastError == "" ||
		strings.Contains(got.LastError, "division") || got.Conninfo != "" {
		t.Errorf("a user sees source app as %+v: the failure's detail and the conninfo are the upload principal's", got)
	}
	if !strings.Contains(s.logs(), "refresh failed in finalise") {
		t.Error("the log does not record the failed refresh")
	}
	// Failing again: only the last failed refresh's image (and its raw
	// upload) is kept.
	again := s.refreshed(t, "app")
	if again.State != draupnir.ImageFailed {
		t.Errorf("a second refresh with a failing script: image %d is %s", again.ID, again.State)
	}
	if _, err := s.upload().Images().Get(ctx, draupnir.Principal{}, failed.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("the image of the failed refresh before the last is still there: %v", err)
	}

	// Sources that cannot be backed up fail with errors that name them.
	for _, tt := range []struct{ name, want string }{
		{"norepl", "REPLICATION"},
		{"gone", "unreachable"},
		{"badopt", "conninfo is not valid"},
	} {
		im := s.refreshed(t, tt.name)
		if im.State != draupnir.ImageFailed || !strings.Contains(im.Error, `source "`+tt.name+`"`) || !strings.Contains(im.Error, tt.want) {
			t.Errorf("refresh of %s: image %d is %s: %q, want failed naming the source and %q", tt.name, im.ID, im.State, im.Error, tt.want)
		}
		got, err := s.upload().Sources().Get(ctx, draupnir.Principal{}, tt.name)
		if err != nil || !strings.Contains(got.LastError, tt.want) {
			t.Errorf("source %s: %v, last error %q", tt.name, err, got.LastError)
		}
	}

	// Both doors list and show the sources.
	for _, door := range []string{"client", "ssh"} {
		out, code := s.door(t, keys, door, false, "sources", "list")
		if code != 0 || !strings.Contains(out, "app") || !strings.Contains(out, "failing") || !strings.Contains(out, "norepl") {
			t.Errorf("%s sources list: exit %d\n%s", door, code, out)
		}
		out, code = s.door(t, keys, door, true, "sources", "show", "app")
		if code != 0 || !strings.Contains(out, "Conninfo:") || !strings.Contains(out, "user=repl") {
			t.Errorf("%s sources show app: exit %d\n%s", door, code, out)
		}
		out, code = s.door(t, keys, door, false, "sources", "show", "nope")
		if code == 0 || !strings.Contains(out, `source "nope" is not configured`) {
			t.Errorf("%s sources show nope: exit %d\n%s", door, code, out)
		}
		out, code = s.door(t, keys, door, false, "sources", "refresh", "app")
		if code == 0 || !strings.Contains(out, "upload principal") {
			t.Errorf("%s sources refresh as a user: exit %d\n%s", door, code, out)
		}
		out, code = s.door(t, keys, door, false, "images", "list")
		if code != 0 || !strings.Contains(out, "SOURCE") || !strings.Contains(out, " app\n") {
			t.Errorf("%s images list shows no source column:\n%s", door, out)
		}
	}
}

// TestSourcePassword refreshes with the password in a passfile (scram),
// which is never shown or logged; a password in the conninfo itself (which
// would be on pg_basebackup's command line for every local user to read) is
// refused at start, naming the key. A wrong password and a source with
// tablespaces fail with clear errors.
func TestSourcePassword(t *testing.T) {
	const password = "pw-s3cr3t-of-the-source"
	src := newSource(t)
	conninfo, good := src.ReplicationRole(t, "repl", password)
	script := writePrivate(t, "app.sql", anonymise)
	wrong := writePrivate(t, "wrong", "*:*:*:repl:not-it\n")

	build(t)
	inline := writePrivate(t, "config.toml", fmt.Sprintf("data_path = %q\nrun_path = \"/run/draupnir-e2e-inline\"\n", testenv.TempDir(t))+
		sourceEntry("inline", "pull", conninfo+" password="+password, script, 1, ""))
	out, err := exec.Command(bins.server, "--config", inline, "serve").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "sources[0].conninfo: must not hold a password") || strings.Contains(string(out), password) {
		t.Errorf("serve with a password in a conninfo: %v\n%s", err, out)
	}

	s := startServer(t, sourceEntry("app", "pull", conninfo, script, 1, fmt.Sprintf("passfile = %q", good))+
		sourceEntry("wrong", "pull", conninfo, script, 1, fmt.Sprintf("passfile = %q", wrong)))
	logOnFailure(t, s)
	ctx := context.Background()

	if im := s.refreshed(t, "app"); !im.Ready() {
		t.Fatalf("refresh of app: image %d is %s: %s", im.ID, im.State, im.Error)
	}
	in := s.instanceOfSource(t, "app")
	if got := mustPSQL(t, in, "SELECT count(*) FROM secret_tokens"); got != "0" {
		t.Errorf("instance sees %s secret tokens", got)
	}
	im := s.refreshed(t, "wrong")
	if im.State != draupnir.ImageFailed || !strings.Contains(im.Error, "authentication failed") || !strings.Contains(im.Error, `source "wrong"`) {
		t.Errorf("refresh with a wrong password: image %d is %s: %q", im.ID, im.State, im.Error)
	}
	status, body := s.api(t, sharedSecret, http.MethodGet, "/sources", "")
	if status != http.StatusOK || !strings.Contains(string(body), "user=repl") {
		t.Errorf("GET /sources: %d %s", status, body)
	}
	// No password in any answer, log or leftover file.
	for what, text := range map[string]string{"GET /sources": string(body), "the server log": s.logs(), "image error": im.Error} {
		if strings.Contains(text, password) {
			t.Errorf("%s reveals the source's password", what)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(s.runPath, "source-*")); len(left) > 0 {
		t.Errorf("passfile copies left behind: %v", left)
	}

	// A tablespace besides the default ones cannot be streamed.
	tsDir := filepath.Join(testenv.TempDir(t), "ts")
	uid, gid := testenv.PostgresUser(t)
	os.Mkdir(tsDir, 0o700)
	os.Chown(filepath.Dir(tsDir), uid, gid)
	os.Chown(tsDir, uid, gid)
	src.SQL(t, "postgres", "CREATE TABLESPACE extra LOCATION '"+tsDir+"'")
	im = s.refreshed(t, "app")
	if im.State != draupnir.ImageFailed || !strings.Contains(im.Error, "tablespaces") {
		t.Errorf("refresh of a source with a tablespace: image %d is %s: %q", im.ID, im.State, im.Error)
	}
	if got, err := s.upload().Sources().Get(ctx, draupnir.Principal{}, "app"); err != nil || len(got.ImageIDs) != 1 {
		t.Errorf("source app after a refused refresh: %v %+v", err, got)
	}
}

// TestSourceRefreshKilled kills the server in the middle of a refresh: after
// the restart the half-made image is failed with the reason, the previous
// image still serves, and the next refresh works.
func TestSourceRefreshKilled(t *testing.T) {
	src := newSource(t)
	src.SQL(t, "postgres", "CREATE ROLE repl LOGIN REPLICATION")
	// Enough data that the backup takes a moment.
	src.SQL(t, "shop", "CREATE TABLE bulk AS SELECT n, repeat('x', 500) AS pad FROM generate_series(1, 200000) n")
	script := writePrivate(t, "app.sql", anonymise)
	s := startServer(t, sourceEntry("app", "pull", fmt.Sprintf("host=%s port=5432 user=repl", src.SocketDir), script, 2, ""))
	logOnFailure(t, s)
	ctx := context.Background()
	prev := s.refreshed(t, "app")
	if !prev.Ready() {
		t.Fatalf("first refresh: image %d is %s: %s", prev.ID, prev.State, prev.Error)
	}
	cut, err := s.upload().Sources().Refresh(ctx, draupnir.Principal{}, "app")
	if err != nil {
		t.Fatal(err)
	}
	s.stop(syscall.SIGKILL)
	s.start()

	im := s.waitImage(t, cut.ID)
	if im.State != draupnir.ImageFailed || !strings.Contains(im.Error, "interrupted") {
		t.Errorf("the image of the killed refresh is %s: %q, want failed as interrupted", im.State, im.Error)
	}
	if in := s.instanceOfSource(t, "app"); in.ImageID != prev.ID {
		t.Errorf("after the restart source app gives image %d, want %d", in.ImageID, prev.ID)
	}
	got, err := s.upload().Sources().Get(ctx, draupnir.Principal{}, "app")
	if err != nil || got.State != "failing" || !strings.Contains(got.LastError, "interrupted") {
		t.Errorf("source app after the restart: %v %+v", err, got)
	}
	next := s.refreshed(t, "app")
	if !next.Ready() {
		t.Fatalf("refresh after the restart: image %d is %s: %s", next.ID, next.State, next.Error)
	}
	if got, _ := s.upload().Sources().Get(ctx, draupnir.Principal{}, "app"); got.State != "idle" || got.LastError != "" {
		t.Errorf("source app after a good refresh: %+v", got)
	}
	if _, err := s.upload().Images().Get(ctx, draupnir.Principal{}, cut.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("the interrupted refresh's image outlived the next good refresh: %v", err)
	}
}

// TestSourceSchedule checks that a schedule refreshes by itself and says
// when it runs next.
func TestSourceSchedule(t *testing.T) {
	src := newSource(t)
	src.SQL(t, "postgres", "CREATE ROLE repl LOGIN REPLICATION")
	script := writePrivate(t, "app.sql", anonymise)
	s := startServer(t, sourceEntry("app", "pull", fmt.Sprintf("host=%s port=5432 user=repl", src.SocketDir), script, 1,
		`schedule = "@every 3s"`))
	logOnFailure(t, s)
	ctx := context.Background()
	got, err := s.user().Sources().Get(ctx, draupnir.Principal{}, "app")
	if err != nil {
		t.Fatal(err)
	}
	if got.NextRefreshAt.IsZero() || got.Schedule != "@every 3s" {
		t.Errorf("scheduled source: %+v", got)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		list, err := s.user().Images().List(ctx, draupnir.Principal{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := draupnir.NewestReady(list, "app"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no scheduled refresh made a ready image")
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !strings.Contains(s.logs(), "refresh started") {
		t.Error("the log does not record the scheduled refresh")
	}
}

// waitStandby waits until source name's standby is in state want.
func (s *server) waitStandby(t testing.TB, name, want string) *draupnir.Source {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		src, err := s.upload().Sources().Get(context.Background(), draupnir.Principal{}, name)
		if err != nil {
			t.Fatal(err)
		}
		if src.StandbyState == want {
			return src
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby of source %s is %q, not %q, after 3 minutes", name, src.StandbyState, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSourceFollow follows a source with a standby: each refresh snapshots
// it, so instances see the rows the source had committed when the refresh
// began and none that the script removes. A source outage fails a refresh
// and leaves the series serving; the standby survives a restart of the
// server and reconnects after the outage, and the next refreshes work.
func TestSourceFollow(t *testing.T) {
	keys := &sshKeys{}
	src := newSource(t)
	const password = "pw-follow-s3cr3t"
	conninfo, passfile := src.ReplicationRole(t, "repl", password)
	script := writePrivate(t, "app.sql", anonymise)
	s := startServerSSH(t, sourceEntry("app", "follow", conninfo, script, 2, fmt.Sprintf("passfile = %q", passfile)), keys)
	logOnFailure(t, s)
	ctx := context.Background()
	customers := func(in *draupnir.Instance, want string) {
		t.Helper()
		if got := mustPSQL(t, in, "SELECT count(*) FROM customers"); got != want {
			t.Errorf("instance %d of image %d sees %s customers, want %s", in.ID, in.ImageID, got, want)
		}
		if got := mustPSQL(t, in, "SELECT count(*) FROM secret_tokens"); got != "0" {
			t.Errorf("instance %d sees %s secret tokens, want 0", in.ID, got)
		}
		if got := mustPSQL(t, in, "SELECT count(*) FROM customers WHERE email LIKE '%@real.example'"); got != "0" {
			t.Errorf("instance %d sees %s real emails, want 0", in.ID, got)
		}
	}

	s.waitStandby(t, "app", "streaming")
	a := s.refreshed(t, "app")
	if !a.Ready() {
		t.Fatalf("first follow refresh: image %d is %s: %s", a.ID, a.State, a.Error)
	}
	customers(s.instanceOfSource(t, "app"), "1000")

	// Writes on the source, then at once a refresh (through the SSH door):
	// the image has them.
	src.SQL(t, "shop", "INSERT INTO customers (email) VALUES ('newest@real.example'); INSERT INTO secret_tokens VALUES ('new-s3cr3t')")
	out, code := s.door(t, keys, "ssh", true, "--json", "sources", "refresh", "app")
	if code != 0 {
		t.Fatalf("ssh sources refresh app: exit %d\n%s", code, out)
	}
	b := s.waitImage(t, jsonID(t, out))
	if !b.Ready() {
		t.Fatalf("second follow refresh: image %d is %s: %s", b.ID, b.State, b.Error)
	}
	inB := s.instanceOfSource(t, "app")
	if inB.ImageID != b.ID {
		t.Errorf("source app gives image %d, want %d", inB.ImageID, b.ID)
	}
	customers(inB, "1001")
	for _, door := range []string{"client", "ssh"} {
		out, code := s.door(t, keys, door, false, "sources", "show", "app")
		if code != 0 || !strings.Contains(out, "follow") || !strings.Contains(out, "Standby:") || !strings.Contains(out, "Lag:") {
			t.Errorf("%s sources show app: exit %d\n%s", door, code, out)
		}
	}

	// An outage of the source: the refresh fails, naming it, and the series
	// still serves b.
	src.Stop(t)
	failed := s.refreshed(t, "app")
	if failed.State != draupnir.ImageFailed || !strings.Contains(failed.Error, `"app"`) && !strings.Contains(failed.Error, " app") {
		t.Errorf("refresh during an outage: image %d is %s: %q", failed.ID, failed.State, failed.Error)
	}
	if in := s.instanceOfSource(t, "app"); in.ImageID != b.ID {
		t.Errorf("during the outage source app gives image %d, want %d", in.ImageID, b.ID)
	}
	src.Start(t)

	// A restart of the server: the standby is adopted, catches up, and the
	// next refresh sees the source's latest row.
	s.stop(syscall.SIGTERM)
	s.start()
	src.SQL(t, "shop", "INSERT INTO customers (email) VALUES ('after@real.example')")
	s.waitStandby(t, "app", "streaming")
	c := s.refreshed(t, "app")
	if !c.Ready() {
		t.Fatalf("refresh after the restart: image %d is %s: %s", c.ID, c.State, c.Error)
	}
	customers(s.instanceOfSource(t, "app"), "1002")
	got, err := s.upload().Sources().Get(ctx, draupnir.Principal{}, "app")
	if err != nil || got.State != "idle" || got.LastError != "" {
		t.Errorf("source app after a good refresh: %v %+v", err, got)
	}
	status, body := s.api(t, sharedSecret, http.MethodGet, "/sources/app", "")
	for what, text := range map[string]string{"GET /sources/app": string(body), "the server log": s.logs()} {
		if strings.Contains(text, password) {
			t.Errorf("%s reveals the source's password (status %d)", what, status)
		}
	}
}
