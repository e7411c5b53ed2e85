package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestCLI runs the scripts in testdata/cli against one server with one ready
// image: every command through draupnir-client (over HTTP) and through real
// ssh (the SSH door runs the same command tree in-process), with one
// identity per key and token: upload, user, stranger.
//
// Besides testscript's built-ins, the scripts have:
//
//	client ARGS...        run draupnir-client (DRAUPNIR_URL and DRAUPNIR_TOKEN
//	                      from the script's environment; $UPLOAD_TOKEN,
//	                      $USER_TOKEN, $STRANGER_TOKEN name the identities)
//	ssh WHO ARGS...       run ARGS on the server with real ssh as WHO (upload,
//	                      user or stranger); ssh-WHO is also on PATH for shells
//	status N              the exit status of the last client or ssh was N
//	capture NAME REGEXP   set $NAME to REGEXP's first group in stdout
//	cmpout stdout|stderr FILE
//	                      the output equals FILE's once the program names
//	                      (draupnir-client, draupnir, ssh HOST) are masked
//	jsonapi PATH          stdout is, as JSON, the API's answer to GET PATH
//	                      for the current token
//	helptree client|WHO   every command and group has a help text, reached
//	                      by `help`, `group help sub` and `--help`
//
// and the variables $IMAGE (a ready image), $BACKUP (a pg_basebackup -Ft
// tar) and $HOME (a home of the script's own, for the CA files).
func TestCLI(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	backup := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	img := s.readyImage(t, anonymise, backup)
	streamed := src.BaseBackup(t, "-z", "-X", "stream") // base.tar.gz and pg_wal.tar.gz

	wrappers := s.sshWrappers(t, keys)
	// Accept the host key once, before the scripts run in parallel.
	if out, err := exec.Command(filepath.Join(wrappers, "ssh-user"), "version").CombinedOutput(); err != nil {
		t.Fatalf("ssh version: %v\n%s", err, out)
	}
	strangerToken := "stranger-" + randomHex(16)

	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "cli"),
		Setup: func(e *testscript.Env) error {
			home := filepath.Join(e.WorkDir, "home")
			if err := os.Mkdir(home, 0o700); err != nil {
				return err
			}
			e.Setenv("HOME", home)
			e.Setenv("PATH", wrappers+string(os.PathListSeparator)+bins.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
			e.Setenv("DRAUPNIR_URL", s.url)
			e.Setenv("DRAUPNIR_TOKEN", "the-integration-access-token")
			e.Setenv("DRAUPNIR_SSH", "upload@127.0.0.1:"+strconv.Itoa(s.sshPort))
			e.Setenv("UPLOAD_TOKEN", sharedSecret)
			e.Setenv("USER_TOKEN", "the-integration-access-token")
			e.Setenv("STRANGER_TOKEN", strangerToken)
			e.Setenv("IMAGE", strconv.FormatInt(img.ID, 10))
			e.Setenv("BACKUP", backup)
			e.Setenv("STREAMED", streamed)
			e.Setenv("PGCONNECT_TIMEOUT", "10")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"client": func(ts *testscript.TestScript, neg bool, args []string) {
				runDoor(ts, neg, "draupnir-client", args)
			},
			"ssh": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 1 || !validWho(args[0]) {
					ts.Fatalf("usage: ssh upload|user|stranger ARGS...")
				}
				runDoor(ts, neg, "ssh-"+args[0], args[1:])
			},
			"status":   cmdStatus,
			"capture":  cmdCapture,
			"cmpout":   cmdCmpout,
			"jsonapi":  cmdJSONAPI,
			"helptree": cmdHelpTree,
		},
	})
}

func validWho(who string) bool {
	return who == "upload" || who == "user" || who == "stranger"
}

// sshWrappers writes ssh-upload, ssh-user and ssh-stranger, which run a
// command on the server as that key, and an ssh that draupnir-client's
// `images upload` finds first on PATH: it adds the upload key and the test's
// known_hosts, as a user's ssh configuration would.
func (s *server) sshWrappers(t *testing.T, keys *sshKeys) string {
	t.Helper()
	real, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no ssh client")
	}
	dir := t.TempDir()
	opts := fmt.Sprintf("-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o LogLevel=ERROR",
		shq(keys.knownHosts))
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for who, key := range map[string]string{"upload": keys.upload, "user": keys.user, "stranger": keys.stranger} {
		write("ssh-"+who, fmt.Sprintf(`exec %s %s -i %s -p %d -- %s@127.0.0.1 "$@"`,
			real, opts, shq(key), s.sshPort, who))
	}
	write("ssh", fmt.Sprintf(`exec %s %s -i %s "$@"`, real, opts, shq(keys.upload)))
	return dir
}

// shq quotes s as one sh word.
func shq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// runDoor runs prog with ts's stdin, keeps its output for stdout/stderr and
// its exit status for status, and fails unless the outcome is as negated.
func runDoor(ts *testscript.TestScript, neg bool, prog string, args []string) {
	err := ts.Exec(prog, args...)
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("%s: %v", prog, err)
		}
		code = ee.ExitCode()
	}
	ts.Setenv("STATUS", strconv.Itoa(code))
	switch {
	case neg && code == 0:
		ts.Fatalf("%s %s succeeded unexpectedly", prog, strings.Join(args, " "))
	case !neg && code != 0:
		ts.Fatalf("%s %s: exit status %d", prog, strings.Join(args, " "), code)
	case code == 255:
		// ssh's own failure (connection, authentication), not the command's.
		ts.Logf("%s: ssh failed (255)", prog)
	}
}

func cmdStatus(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 || neg {
		ts.Fatalf("usage: status N")
	}
	if got := ts.Getenv("STATUS"); got != args[0] {
		ts.Fatalf("exit status %s, want %s", got, args[0])
	}
}

func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 || neg {
		ts.Fatalf("usage: capture NAME REGEXP")
	}
	re, err := regexp.Compile(`(?m)` + args[1])
	ts.Check(err)
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("stdout has no match for %s", args[1])
	}
	ts.Setenv(args[0], m[1])
}

// progNames are the ways help and messages name the program in each door:
// over SSH, the ssh command line that reaches the server as the session's
// principal ("ssh -p 2222 upload@localhost").
var progNames = regexp.MustCompile(`ssh -p \d+ (?:upload@)?localhost\b|ssh HOST|\bdraupnir-client\b|\bdraupnir\b`)

func maskProg(s string) string { return progNames.ReplaceAllString(s, "PROG") }

func cmdCmpout(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 || (args[0] != "stdout" && args[0] != "stderr") {
		ts.Fatalf("usage: cmpout stdout|stderr FILE")
	}
	got, want := maskProg(ts.ReadFile(args[0])), maskProg(ts.ReadFile(args[1]))
	if (got == want) == neg {
		if neg {
			ts.Fatalf("%s matches %s", args[0], args[1])
		}
		ts.Fatalf("%s differs from %s once program names are masked:\n--- %s\n%s--- %s\n%s", args[0], args[1], args[0], got, args[1], want)
	}
}

// cmdJSONAPI compares stdout, as JSON, with the API's own document.
func cmdJSONAPI(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 || neg {
		ts.Fatalf("usage: jsonapi PATH")
	}
	req, err := http.NewRequest(http.MethodGet, ts.Getenv("DRAUPNIR_URL")+args[0], nil)
	ts.Check(err)
	req.Header.Set("Authorization", "Bearer "+ts.Getenv("DRAUPNIR_TOKEN"))
	req.Header.Set("Draupnir-Version", draupnir.Version)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	ts.Check(err)
	if resp.StatusCode != http.StatusOK {
		ts.Fatalf("GET %s: %s\n%s", args[0], resp.Status, body)
	}
	var api, cli any
	ts.Check(json.Unmarshal(body, &api))
	if err := json.Unmarshal([]byte(ts.ReadFile("stdout")), &cli); err != nil {
		ts.Fatalf("stdout is not JSON: %v", err)
	}
	if !reflect.DeepEqual(api, cli) {
		ts.Fatalf("the output differs from GET %s:\napi: %s\ncli: %s", args[0], body, ts.ReadFile("stdout"))
	}
}

// cmdHelpTree walks the command tree from `help`: each command listed under
// "Available Commands:" must have a help text (a description and a usage
// line) by `help CMD...`, and `CMD... --help` must print the same.
func cmdHelpTree(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 || neg || !(args[0] == "client" || validWho(args[0])) {
		ts.Fatalf("usage: helptree client|upload|user|stranger")
	}
	prog := "draupnir-client"
	if args[0] != "client" {
		prog = "ssh-" + args[0]
	}
	run := func(args ...string) string {
		err := ts.Exec(prog, args...)
		if err != nil {
			ts.Fatalf("%s %s: %v", prog, strings.Join(args, " "), err)
		}
		return ts.ReadFile("stdout")
	}
	seen := 0
	var walk func(path []string)
	walk = func(path []string) {
		help := run(append([]string{"help"}, path...)...)
		if len(path) > 0 {
			flag := run(append(path, "--help")...)
			if flag != help {
				ts.Fatalf("%s %s --help differs from help %[2]s:\n%s\n---\n%s", prog, strings.Join(path, " "), flag, help)
			}
			if len(path) == 2 {
				// The original client's form: `images help list`.
				if h := run(path[0], "help", path[1]); h != help {
					ts.Fatalf("%s %s help %s differs from help %[2]s %[3]s", prog, path[0], path[1])
				}
			}
		}
		desc, _, _ := strings.Cut(help, "\n")
		if strings.TrimSpace(desc) == "" || !strings.Contains(help, "Usage:") {
			ts.Fatalf("%s help %s has no description or usage:\n%s", prog, strings.Join(path, " "), help)
		}
		seen++
		for _, sub := range subcommands(help) {
			if sub == "help" || sub == "completion" {
				continue // cobra's own
			}
			walk(append(append([]string{}, path...), sub))
		}
	}
	walk(nil)
	ts.Logf("%s: %d help texts", prog, seen)
	// images (8), instances (5), new, env, version and the root at least.
	if seen < 17 {
		ts.Fatalf("%s: only %d help texts found; the walk lost its way", prog, seen)
	}
}

// subcommands lists the commands in a cobra help text.
func subcommands(help string) []string {
	_, rest, ok := strings.Cut(help, "Available Commands:\n")
	if !ok {
		return nil
	}
	var subs []string
	for _, line := range strings.Split(rest, "\n") {
		if !strings.HasPrefix(line, "  ") {
			break
		}
		if f := strings.Fields(line); len(f) > 0 {
			subs = append(subs, f[0])
		}
	}
	return subs
}

// TestREADMEWalkthrough runs README.md's curl walkthrough as it is written,
// against a server whose ids are not the ones the walkthrough would guess:
// every step must use the ids the previous ones printed. Only what names
// the reader's machine is replaced: the server's ports, the token, and
// pg_basebackup's source (a stand-in copies a backup of a test database
// that has the walkthrough's app.users). The reader starts without an SSH
// key, as on a fresh machine, so the walkthrough's own ssh-keygen runs.
func TestREADMEWalkthrough(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := testenv.SourceCluster(t, "CREATE DATABASE app")
	src.SQL(t, "app", "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);"+
		"INSERT INTO users SELECT g, 'person' || g || '@real.example' FROM generate_series(1, 10) g")
	backup := src.BaseBackup(t, "-z", "-X", "stream")

	// Images and an instance the walkthrough must leave alone.
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := s.upload().CreateImage(ctx, time.Now(), "SELECT 1;"); err != nil {
			t.Fatal(err)
		}
	}
	theirs := s.readyImage(t, "SELECT 1;", filepath.Join(backup, "base.tar.gz"), filepath.Join(backup, "pg_wal.tar.gz"))
	other, err := s.user().CreateInstance(ctx, theirs.ID)
	if err != nil {
		t.Fatal(err)
	}

	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Walkthrough with curl")
	_, rest, ok2 := strings.Cut(rest, "```sh\n")
	script, _, ok3 := strings.Cut(rest, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no sh block under ## Walkthrough with curl")
	}
	for _, r := range []struct{ old, new string }{
		{"TOKEN=…", "TOKEN=" + sharedSecret},
		{"localhost:8080", "127.0.0.1:" + strconv.Itoa(s.httpPort)},
		{"-P 2222 ", "-P " + strconv.Itoa(s.sshPort) + " "},
	} {
		if !strings.Contains(script, r.old) {
			t.Fatalf("the walkthrough no longer has %q", r.old)
		}
		script = strings.ReplaceAll(script, r.old, r.new)
	}

	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	work := filepath.Join(dir, "work")
	bin := filepath.Join(dir, "bin")
	for _, d := range []string{home, work, bin} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// make run's .dev, whose upload_authorized_keys the server reads.
	if err := os.Symlink(keys.dir, filepath.Join(work, ".dev")); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("pg_basebackup", `while [ $# -gt 0 ]; do [ "$1" = -D ] && d=$2; shift; done
cp `+shq(backup)+`/* "$d"/`)
	// The reader's ssh configuration: their key, and this server's host key.
	for _, prog := range []string{"ssh", "scp"} {
		real, err := exec.LookPath(prog)
		if err != nil {
			t.Skip("no " + prog)
		}
		write(prog, fmt.Sprintf(`exec %s -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o LogLevel=ERROR -i "$HOME/.ssh/id_ed25519" "$@"`,
			real, shq(filepath.Join(dir, "known_hosts"))))
	}

	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "HOME="+home, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\n%s", err, out)
	}
	for _, want := range []string{" 1 | 1@example.com", " 3 | 3@example.com"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("psql did not show the anonymised users (%q):\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "real.example") {
		t.Errorf("the instance served unanonymised data:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(home, ".ssh", "id_ed25519.pub")); err != nil {
		t.Errorf("the walkthrough made no key: %v", err)
	}

	// What was there before is untouched; what the walkthrough made is as
	// it left it: one new ready image, and no instance of it.
	if got, err := s.user().GetInstance(ctx, other.ID); err != nil || got.State != draupnir.InstanceRunning {
		t.Errorf("the other instance: %+v, %v", got, err)
	}
	imgs, err := s.upload().ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ready := 0
	for _, im := range imgs {
		if im.Ready() {
			ready++
		}
	}
	insts, err := s.upload().ListInstances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 4 || ready != 2 || len(insts) != 1 {
		t.Errorf("%d images (%d ready) and %d instances after the walkthrough, want 4 (2) and 1", len(imgs), ready, len(insts))
	}
}
