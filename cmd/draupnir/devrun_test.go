package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// devRun runs scripts/dev-run.sh (make run) in a copy of the repository's
// layout whose bin/draupnir is a stand-in: it records each call's arguments
// and DRAUPNIR_DATA_PATH in calls, and `serve` creates the ready file
// unless FAKE_SERVE_FAIL is set, in which case it fails as a server that
// cannot start would.
func devRun(t *testing.T, root string, env ...string) (stdout, stderr string, code int) {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("..", "..", "scripts", "dev-run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"scripts", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fake := `#!/bin/sh
echo "$* DATA_PATH=${DRAUPNIR_DATA_PATH-unset}" >> "$(dirname "$0")/../calls"
case "$*" in
*" serve "*)
	if [ -n "$FAKE_SERVE_FAIL" ]; then
		echo "draupnir serve: another draupnir is already serving data_path /x" >&2
		exit 1
	fi
	while [ $# -gt 0 ]; do
		if [ "$1" = --ready-file ]; then touch "$2"; fi
		shift
	done
	sleep 1 # the banner comes while the server runs
	;;
esac
`
	for path, body := range map[string]string{"scripts/dev-run.sh": string(script), "bin/draupnir": fake} {
		if err := os.WriteFile(filepath.Join(root, path), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(root, "scripts", "dev-run.sh"))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATA_PATH=") && !strings.HasPrefix(kv, "DRAUPNIR_") && !strings.HasPrefix(kv, "FAKE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestDevRun(t *testing.T) {
	testenv.RequireRoot(t) // the script refuses to run otherwise
	root := t.TempDir()
	calls := filepath.Join(root, "calls")
	lastCalls := func() string {
		b, _ := os.ReadFile(calls)
		os.Remove(calls)
		return string(b)
	}

	// The first run writes the config with DATA_PATH and, once the server
	// serves, prints the banner.
	out, errs, code := devRun(t, root, "DATA_PATH=/srv/first")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	config, err := os.ReadFile(filepath.Join(root, ".dev", "config.toml"))
	if err != nil || !strings.Contains(string(config), `data_path = "/srv/first"`) {
		t.Fatalf("config %s (%v)", config, err)
	}
	if st, _ := os.Stat(filepath.Join(root, ".dev", "config.toml")); st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600: it holds the shared secret", st.Mode().Perm())
	}
	if c := lastCalls(); !strings.Contains(c, "serve --demo --ready-file .dev/ready DATA_PATH=unset") {
		t.Errorf("calls:\n%s", c)
	}
	keys := filepath.Join(root, ".dev", "upload_authorized_keys")
	for _, want := range []string{
		"Draupnir is serving on http://localhost:8080 and SSH port 2222",
		"Upload keys go in " + keys + " (read again at every login)",
		"ssh-keygen -t ed25519 -N '' -f ~/.ssh/id_ed25519\n",
		"cat ~/.ssh/id_ed25519.pub >> " + keys + "\n",
		"scp -P 2222 base.tar.gz pg_wal.tar.gz upload@localhost:/draupnir/image_uploads/N/\n",
		`export PATH="` + filepath.Join(root, "bin") + `:$PATH" DRAUPNIR_URL=http://localhost:8080 DRAUPNIR_TOKEN=`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("banner lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out+errs, "overrides") {
		t.Errorf("the first run warned of an override:\n%s%s", out, errs)
	}
	// The secret in the banner is the config's.
	m := regexp.MustCompile(`shared_secret = "(\w+)"`).FindStringSubmatch(string(config))
	if m == nil || !strings.Contains(out, "DRAUPNIR_TOKEN="+m[1]+"\n") {
		t.Errorf("banner's token is not the config's shared secret")
	}

	// A later DATA_PATH wins over the config, for this run, and says so.
	out, errs, code = devRun(t, root, "DATA_PATH=/srv/second")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if want := `make run: DATA_PATH=/srv/second overrides data_path = "/srv/first" of .dev/config.toml for this run`; !strings.Contains(errs, want) {
		t.Errorf("stderr lacks %q:\n%s", want, errs)
	}
	if c := lastCalls(); strings.Count(c, "DATA_PATH=/srv/second") != 2 { // setup and serve
		t.Errorf("calls:\n%s", c)
	}
	// The same path as the config's, or none: the config's, silently.
	for _, env := range []string{"DATA_PATH=/srv/first", "DATA_PATH="} {
		_, errs, _ = devRun(t, root, env)
		if c := lastCalls(); strings.Contains(errs, "overrides") || strings.Count(c, "DATA_PATH=unset") != 2 {
			t.Errorf("%s: stderr %q, calls:\n%s", env, errs, c)
		}
	}

	// A server that refuses to start gets no banner: nothing claims it
	// serves, or is starting.
	out, errs, code = devRun(t, root, "FAKE_SERVE_FAIL=1")
	if code != 1 || !strings.Contains(errs, "already serving") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	if strings.Contains(out+errs, "serving on") || strings.Contains(out+errs, "starting") {
		t.Errorf("output claims a server:\n%s%s", out, errs)
	}
}
