package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// TestSSHDoor drives the SSH door with real OpenSSH clients: uploads by scp
// (SFTP and legacy), sftp and streaming, then the command tree as the user.
func TestSSHDoor(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	gz := src.BaseBackup(t, "-z", "-X", "stream")
	fetch := src.BaseBackup(t, "-X", "fetch")
	ctx := context.Background()
	target := func(id int64) string {
		return "upload@127.0.0.1:/draupnir/image_uploads/" + strconv.FormatInt(id, 10) + "/"
	}
	run := func(t *testing.T, cmd *exec.Cmd) string {
		t.Helper()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
		return string(out)
	}
	finalise := func(t *testing.T, id int64) {
		t.Helper()
		// done through the SSH door too: the same command tree as the CLI.
		out := run(t, s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "done", strconv.FormatInt(id, 10)))
		im, err := s.upload().GetImage(ctx, id)
		if err != nil || !im.Ready() {
			t.Fatalf("image %d not ready after ssh images done: %v %+v\n%s", id, err, im, out)
		}
	}
	newImage := func(t *testing.T) int64 {
		im, err := s.upload().CreateImage(ctx, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		return im.ID
	}
	var readyID int64

	t.Run("scp in SFTP mode", func(t *testing.T) {
		id := newImage(t)
		run(t, s.ssh(t, keys, keys.upload, "scp", filepath.Join(gz, "base.tar.gz"), filepath.Join(gz, "pg_wal.tar.gz"), target(id)))
		finalise(t, id)
		readyID = id
	})
	t.Run("legacy scp -O", func(t *testing.T) {
		id := newImage(t)
		run(t, s.ssh(t, keys, keys.upload, "scp", "-O", filepath.Join(fetch, "base.tar"), target(id)))
		finalise(t, id)
	})
	t.Run("sftp put", func(t *testing.T) {
		id := newImage(t)
		batch := filepath.Join(t.TempDir(), "batch")
		os.WriteFile(batch, []byte("cd /draupnir/image_uploads/"+strconv.FormatInt(id, 10)+"\nput "+filepath.Join(fetch, "base.tar")+"\nls\n"), 0o600)
		run(t, s.ssh(t, keys, keys.upload, "sftp", "-b", batch, "upload@127.0.0.1"))
		finalise(t, id)
	})
	t.Run("streaming upload", func(t *testing.T) {
		id := newImage(t)
		cmd := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(id, 10))
		f, err := os.Open(filepath.Join(fetch, "base.tar"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
		out := run(t, cmd)
		if !strings.Contains(out, "files") {
			t.Errorf("no summary line after a streaming upload: %q", out)
		}
		finalise(t, id)
	})
	if readyID == 0 {
		t.Fatal("no ready image to go on with")
	}

	t.Run("commands as the user", func(t *testing.T) {
		user := func(args ...string) *exec.Cmd {
			return s.ssh(t, keys, keys.user, "ssh", append([]string{"someone@127.0.0.1"}, args...)...)
		}
		out := run(t, user("instances", "create", strconv.FormatInt(readyID, 10)))
		m := regexp.MustCompile(`(?m)^\s*(\d+)\s`).FindStringSubmatch(out)
		list, err := s.user().ListInstances(ctx)
		if err != nil || len(list) != 1 {
			t.Fatalf("after ssh instances create: %v %d instances\n%s", err, len(list), out)
		}
		in := list[0]
		if m != nil && m[1] != strconv.FormatInt(in.ID, 10) {
			t.Errorf("ssh output names instance %s, the API %d:\n%s", m[1], in.ID, out)
		}
		if out := run(t, user("instances", "list")); !strings.Contains(out, strconv.Itoa(in.Port)) {
			t.Errorf("ssh instances list lacks port %d:\n%s", in.Port, out)
		}
		// eval "$(ssh host env N)" sets up psql, CA file included.
		home := t.TempDir()
		script := `eval "$(` + strings.Join(quoteAll(user("env", strconv.FormatInt(in.ID, 10)).Args), " ") + `)" && PGHOST=127.0.0.1 psql -X -At -c "select count(*) from customers"`
		sh := exec.Command("bash", "-c", script)
		sh.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME=")
		if out, err := sh.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1000" {
			t.Errorf("eval $(ssh env): %v\n%s", err, out)
		}
		cmd := user("instances", "show", "424242")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "does not exist") {
			t.Errorf("ssh instances show of an unknown id: %v %q; want an error line and non-zero exit", err, out)
		}
		if out, err := user("images", "create", "--backed-up-at", "2020-01-01T00:00:00Z").CombinedOutput(); err == nil {
			t.Errorf("a user created an image over ssh: %s", out)
		}
		run(t, user("instances", "destroy", strconv.FormatInt(in.ID, 10)))
		if _, err := s.user().GetInstance(ctx, in.ID); err == nil {
			t.Error("instance still exists after ssh instances destroy")
		}
	})

	t.Run("refusals", func(t *testing.T) {
		id := newImage(t)
		cases := []struct {
			name string
			cmd  *exec.Cmd
		}{
			{"unknown key", s.ssh(t, keys, keys.stranger, "ssh", "x@127.0.0.1", "images", "list")},
			{"user key uploads", s.ssh(t, keys, keys.user, "scp", filepath.Join(fetch, "base.tar"), target(id))},
			{"upload into a ready image", s.ssh(t, keys, keys.upload, "scp", filepath.Join(fetch, "base.tar"), target(readyID))},
			{"path outside the namespace", s.ssh(t, keys, keys.upload, "scp", filepath.Join(fetch, "base.tar"), "upload@127.0.0.1:/etc/")},
			{"dot-dot", s.ssh(t, keys, keys.upload, "scp", filepath.Join(fetch, "base.tar"), "upload@127.0.0.1:/draupnir/image_uploads/"+strconv.FormatInt(id, 10)+"/../../../tmp/x")},
			{"legacy dot-dot", s.ssh(t, keys, keys.upload, "scp", "-O", filepath.Join(fetch, "base.tar"), "upload@127.0.0.1:/draupnir/image_uploads/"+strconv.FormatInt(id, 10)+"/../x")},
		}
		for _, c := range cases {
			if out, err := c.cmd.CombinedOutput(); err == nil {
				t.Errorf("%s: succeeded: %s", c.name, out)
			}
		}
		for _, p := range []string{"/tmp/x", filepath.Join(s.dataPath, "image_uploads", "x")} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s was written", p)
			}
		}
		im, _ := s.upload().GetImage(ctx, readyID)
		if im.State != draupnir.ImageReady {
			t.Errorf("the ready image is %s after an upload attempt", im.State)
		}
	})
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}
