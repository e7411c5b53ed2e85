package e2e

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestSharedRunPath starts a second server on its own data path but with the
// run_path of a running one (both left at the default, say). They would share
// socket directories, the instance TLS files and the state cluster's socket,
// so the second must refuse at once, name run_path, and leave the first alone.
func TestSharedRunPath(t *testing.T) {
	s := startServer(t, "")
	conf, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	other := testenv.Btrfs(t, 1<<30)
	second := strings.NewReplacer(
		"data_path = \""+s.dataPath+"\"", "data_path = \""+other+"\"",
		"insecure_port = "+strconv.Itoa(s.httpPort), "insecure_port = "+strconv.Itoa(freePort(t)),
	).Replace(string(conf))
	if second == string(conf) {
		t.Fatal("could not rewrite the config")
	}
	path := testenv.TempDir(t) + "/second.toml"
	if err := os.WriteFile(path, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.server, "--config", path, "serve").CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("a second server on run_path %s started (err %v):\n%s", s.runPath, err, out)
	}
	if !strings.Contains(string(out), "run_path") {
		t.Errorf("the refusal does not name run_path:\n%s", out)
	}
	if _, err := s.upload().ListImages(ctx); err != nil {
		t.Errorf("the first server suffered: %v", err)
	}
}
