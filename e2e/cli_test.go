package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestCLI runs the scripts in testdata/cli: end-to-end scenarios, security
// regressions among them, told as the commands a person would type, through
// every door: draupnir-client (over HTTP), real ssh, scp and sftp (the SSH
// door runs the same command tree in-process), and plain HTTP requests.
// Each principal is one identity, with its own key and, where it has one,
// token: upload, user, attacker (another user) and stranger (unknown).
//
// The scripts share one server with one ready image, unless a script starts
// its own with serve (a scenario that counts what the whole server holds, or
// that must not see other scripts' work).
//
// Besides testscript's built-ins, the scripts have:
//
//	serve                 start a server of this script's own (a fresh data
//	                      path, keys and ports) and point every door at it
//	client ARGS...        run draupnir-client (DRAUPNIR_URL and DRAUPNIR_TOKEN
//	                      from the script's environment; $UPLOAD_TOKEN,
//	                      $USER_TOKEN, $STRANGER_TOKEN name the identities)
//	ssh WHO ARGS...       run ARGS on the server with real ssh as WHO (upload,
//	                      user, attacker or stranger); ssh-WHO is also on PATH
//	                      for shells
//	scp WHO ARGS...       run real scp (sftp: sftp) with WHO's key and the
//	sftp WHO ARGS...      server's port; ARGS name the remote side in full
//	                      (upload@127.0.0.1:/draupnir/...)
//	api METHOD PATH [BODY|@FILE]
//	                      send an HTTP request with $DRAUPNIR_TOKEN (and the
//	                      JSON BODY, or FILE's); the response body is stdout;
//	                      fails unless the status is 2xx
//	status N              the exit status of the last client, ssh, scp or
//	                      sftp, or the HTTP status of the last api, was N
//	capture NAME REGEXP   set $NAME to REGEXP's first group in stdout
//	cmpout stdout|stderr FILE
//	                      the output equals FILE's once the program names
//	                      (draupnir-client, draupnir, ssh HOST) are masked
//	jsonapi PATH          stdout is, as JSON, the API's answer to GET PATH
//	                      for the current token
//	helptree client|WHO   every command and group has a help text, reached
//	                      by `help`, `group help sub` and `--help`
//
// and the variables $IMAGE (a ready image of the shared server; empty after
// serve), $BACKUP (a pg_basebackup -Ft -X fetch tar), $BASE_GZ and $WAL_GZ
// (a pg_basebackup -Ft -z -X stream), $DATA and $RUN (the server's data_path
// and run_path) and $HOME (a home of the script's own, for the CA files).
//
// The attacker's ssh logs in as "upload", and its ssh, scp and sftp first
// offer the upload and user public keys, whose private halves it lacks, then
// its own: the server must take it for whoever signed, never for a name
// claimed or a key merely offered (CVE-2024-45337).
func TestCLI(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	logOnFailure(t, s)
	src := newSource(t)
	backup := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	gz := src.BaseBackup(t, "-z", "-X", "stream")
	img := s.readyImage(t, anonymise, backup)
	wrappers := s.sshWrappers(t, keys)
	strangerToken := "stranger-" + randomHex(16)

	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "cli"),
		Setup: func(e *testscript.Env) error {
			home := filepath.Join(e.WorkDir, "home")
			if err := os.Mkdir(home, 0o700); err != nil {
				return err
			}
			e.Values[scriptT{}] = e.T()
			e.Setenv("HOME", home)
			s.pointDoors(e.Setenv, wrappers)
			e.Setenv("DRAUPNIR_TOKEN", "the-integration-access-token")
			e.Setenv("UPLOAD_TOKEN", sharedSecret)
			e.Setenv("USER_TOKEN", "the-integration-access-token")
			e.Setenv("STRANGER_TOKEN", strangerToken)
			e.Setenv("IMAGE", strconv.FormatInt(img.ID, 10))
			e.Setenv("BACKUP", backup)
			e.Setenv("BASE_GZ", filepath.Join(gz, "base.tar.gz"))
			e.Setenv("WAL_GZ", filepath.Join(gz, "pg_wal.tar.gz"))
			e.Setenv("STREAMED", gz) // base.tar.gz and pg_wal.tar.gz
			e.Setenv("PGCONNECT_TIMEOUT", "10")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"serve": cmdServe,
			"client": func(ts *testscript.TestScript, neg bool, args []string) {
				runDoor(ts, neg, "draupnir-client", args)
			},
			"ssh":      doorAs("ssh"),
			"scp":      doorAs("scp"),
			"sftp":     doorAs("sftp"),
			"api":      cmdAPI,
			"status":   cmdStatus,
			"capture":  cmdCapture,
			"cmpout":   cmdCmpout,
			"jsonapi":  cmdJSONAPI,
			"helptree": cmdHelpTree,
		},
	})
}

// scriptT is the key of a script's testing.TB in its Env.Values.
type scriptT struct{}

// logOnFailure shows the server's log when t fails.
func logOnFailure(t testing.TB, s *server) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs())
		}
	})
}

// pointDoors points a script's doors at s: the URL, the SSH address, and
// wrappers (from sshWrappers) first on PATH.
func (s *server) pointDoors(setenv func(key, value string), wrappers string) {
	setenv("PATH", wrappers+string(os.PathListSeparator)+bins.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	setenv("DRAUPNIR_URL", s.url)
	setenv("DRAUPNIR_SSH", "upload@127.0.0.1:"+strconv.Itoa(s.sshPort))
	setenv("DATA", s.dataPath)
	setenv("RUN", s.runPath)
}

// cmdServe starts a server of the script's own, stopped when the script
// ends, and points the doors at it.
func cmdServe(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: serve")
	}
	t := ts.Value(scriptT{}).(testing.TB)
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	logOnFailure(t, s)
	s.pointDoors(ts.Setenv, s.sshWrappers(t, keys))
	ts.Setenv("IMAGE", "")
}

// identities are the principals a script can be, one key each.
var identities = []string{"upload", "user", "attacker", "stranger"}

// doorAs is the script command `prog WHO ARGS...`, which runs the prog-WHO
// wrapper.
func doorAs(prog string) func(ts *testscript.TestScript, neg bool, args []string) {
	return func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) < 1 || !slices.Contains(identities, args[0]) {
			ts.Fatalf("usage: %s %s ARGS...", prog, strings.Join(identities, "|"))
		}
		runDoor(ts, neg, prog+"-"+args[0], args[1:])
	}
}

// sshWrappers writes, for each identity WHO, ssh-WHO (which runs a command
// on the server as WHO), scp-WHO and sftp-WHO (which add WHO's key and the
// server's port), and an ssh that draupnir-client's `images upload` finds
// first on PATH: it adds the upload key and the test's known_hosts, as a
// user's ssh configuration would. It accepts the server's host key, so that
// scripts running at once do not race to write known_hosts.
func (s *server) sshWrappers(t testing.TB, keys *sshKeys) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	progs := map[string]string{}
	for _, prog := range []string{"ssh", "scp", "sftp"} {
		path, err := exec.LookPath(prog)
		if err != nil {
			t.Skip("no " + prog)
		}
		progs[prog] = path
	}
	opts := fmt.Sprintf("-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o LogLevel=ERROR",
		shq(keys.knownHosts))
	// The public halves of the upload and user keys, without the private
	// ones, for the attacker to offer.
	borrowed := ""
	for _, key := range []string{keys.upload, keys.user} {
		pub, err := os.ReadFile(key + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		stolen := filepath.Join(dir, "stolen-"+filepath.Base(key))
		if err := os.WriteFile(stolen+".pub", pub, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stolen, []byte("not the private key\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		borrowed += "-i " + shq(stolen) + " "
	}
	for who, key := range map[string]string{"upload": keys.upload, "user": keys.user, "attacker": keys.attacker, "stranger": keys.stranger} {
		ids, login := "-i "+shq(key), who
		if who == "attacker" {
			ids, login = borrowed+ids, "upload"
		}
		write("ssh-"+who, fmt.Sprintf(`exec %s %s %s -p %d -- %s@127.0.0.1 "$@"`, progs["ssh"], opts, ids, s.sshPort, login))
		write("scp-"+who, fmt.Sprintf(`exec %s %s %s -P %d "$@"`, progs["scp"], opts, ids, s.sshPort))
		write("sftp-"+who, fmt.Sprintf(`exec %s %s %s -P %d "$@"`, progs["sftp"], opts, ids, s.sshPort))
	}
	write("ssh", fmt.Sprintf(`exec %s %s -i %s "$@"`, progs["ssh"], opts, shq(keys.upload)))
	s.waitSSH(t)
	if out, err := exec.Command(filepath.Join(dir, "ssh-user"), "version").CombinedOutput(); err != nil {
		t.Fatalf("ssh version: %v\n%s", err, out)
	}
	return dir
}

// waitSSH waits for the SSH door, which may open a moment after the health
// check answers.
func (s *server) waitSSH(t testing.TB) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.sshPort))
	for deadline := time.Now().Add(60 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the SSH door did not open on %s: %v\n%s", addr, err, s.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// cmdAPI sends METHOD PATH, with the JSON BODY (or that in FILE) if given,
// to the API as $DRAUPNIR_TOKEN, the way draupnir-client does; the body of
// the response is stdout and its status $STATUS.
func cmdAPI(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: api METHOD PATH [BODY|@FILE]")
	}
	body := ""
	if len(args) == 3 {
		body = args[2]
		if file, ok := strings.CutPrefix(body, "@"); ok {
			body = ts.ReadFile(file)
		}
	}
	status, b := apiCall(ts, args[0], args[1], body)
	ts.Stdout().Write(b)
	ts.Setenv("STATUS", strconv.Itoa(status))
	if ok := status >= 200 && status < 300; ok == neg {
		ts.Fatalf("%s %s: status %d\n%s", args[0], args[1], status, b)
	}
}

// apiCall sends method path with a JSON body (if not empty) as
// $DRAUPNIR_TOKEN and returns the response's status and body.
func apiCall(ts *testscript.TestScript, method, path, body string) (int, []byte) {
	req, err := http.NewRequest(method, ts.Getenv("DRAUPNIR_URL")+path, strings.NewReader(body))
	ts.Check(err)
	req.Header.Set("Authorization", "Bearer "+ts.Getenv("DRAUPNIR_TOKEN"))
	req.Header.Set("Draupnir-Version", draupnir.Version)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	ts.Check(err)
	return resp.StatusCode, b
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
	status, body := apiCall(ts, http.MethodGet, args[0], "")
	if status != http.StatusOK {
		ts.Fatalf("GET %s: status %d\n%s", args[0], status, body)
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
	if len(args) != 1 || neg || !(args[0] == "client" || slices.Contains(identities, args[0])) {
		ts.Fatalf("usage: helptree client|%s", strings.Join(identities, "|"))
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
		if _, err := s.upload().Images().Create(ctx, draupnir.Principal{}, time.Now(), "SELECT 1;"); err != nil {
			t.Fatal(err)
		}
	}
	theirs := s.readyImage(t, "SELECT 1;", filepath.Join(backup, "base.tar.gz"), filepath.Join(backup, "pg_wal.tar.gz"))
	other, err := s.user().Instances().Create(ctx, draupnir.Principal{}, theirs.ID, draupnir.CreateOptions{})
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
	if got, err := s.user().Instances().Get(ctx, draupnir.Principal{}, other.ID); err != nil || got.State != draupnir.InstanceRunning {
		t.Errorf("the other instance: %+v, %v", got, err)
	}
	imgs, err := s.upload().Images().List(ctx, draupnir.Principal{})
	if err != nil {
		t.Fatal(err)
	}
	ready := 0
	for _, im := range imgs {
		if im.Ready() {
			ready++
		}
	}
	insts, err := s.upload().Instances().List(ctx, draupnir.Principal{})
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 4 || ready != 2 || len(insts) != 1 {
		t.Errorf("%d images (%d ready) and %d instances after the walkthrough, want 4 (2) and 1", len(imgs), ready, len(insts))
	}
}
