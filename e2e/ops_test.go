package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// scrape fetches /metrics and returns each sample's value by its series as
// written ("name{a=\"b\"}").
func (s *server) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s %s\n%s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics: bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func postmasterPID(t *testing.T, s *server, id int64) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.layout().Instances(), strconv.FormatInt(id, 10), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitN(string(b), "\n", 2)[0]
}

// TestOperations: /metrics shows what happened through both doors; the logs
// are JSON tagged with the environment; SIGTERM stops the server cleanly
// while its instances keep running, and the next start adopts them.
func TestOperations(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	ctx := context.Background()

	im, err := s.upload().Images().Create(ctx, draupnir.Principal{}, time.Now(), anonymise)
	if err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(b, "base.tar")
	scp := s.ssh(t, keys, keys.upload, "scp", tarball, "upload@127.0.0.1:/draupnir/image_uploads/"+strconv.FormatInt(im.ID, 10)+"/")
	if out, err := scp.CombinedOutput(); err != nil {
		t.Fatalf("scp: %v\n%s", err, out)
	}
	if _, err := s.upload().Images().Finalise(ctx, draupnir.Principal{}, im.ID); err != nil {
		t.Fatalf("finalise: %v\n%s", err, s.logs())
	}
	kept, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// One more through the SSH door, destroyed again.
	if out, err := s.ssh(t, keys, keys.user, "ssh", "someone@127.0.0.1", "instances", "create", strconv.FormatInt(im.ID, 10)).CombinedOutput(); err != nil {
		t.Fatalf("ssh instances create: %v\n%s", err, out)
	}
	list, err := s.user().Instances().List(ctx, draupnir.Principal{})
	if err != nil || len(list) != 2 {
		t.Fatalf("%d instances, %v; want 2", len(list), err)
	}
	for _, in := range list {
		if in.ID != kept.ID {
			if err := s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.user().Instances().Create(ctx, draupnir.Principal{}, 999, draupnir.CreateOptions{}); !errors.Is(err, draupnir.ErrNotFound) {
		t.Fatalf("instance of a missing image: %v, want not found", err)
	}
	st, err := os.Stat(tarball)
	if err != nil {
		t.Fatal(err)
	}

	m := s.scrape(t)
	exact := map[string]float64{
		`draupnir_images{state="ready"}`:      1,
		`draupnir_images{state="finalising"}`: 0,
		`draupnir_instances{state="running"}`: 1,
		`draupnir_instance_ports_in_use`:      1,
		`draupnir_instance_ports_total`:       instancePorts,
		`draupnir_state_database_up`:          1,
		`draupnir_operation_duration_seconds_count{operation="image_create",outcome="ok"}`:           1,
		`draupnir_operation_duration_seconds_count{operation="image_finalise",outcome="ok"}`:         1,
		`draupnir_operation_duration_seconds_count{operation="instance_create",outcome="ok"}`:        2,
		`draupnir_operation_duration_seconds_count{operation="instance_create",outcome="not_found"}`: 1,
		`draupnir_operation_duration_seconds_count{operation="instance_destroy",outcome="ok"}`:       1,
		`draupnir_errors_total{kind="not_found",operation="instance_create"}`:                        1,
		`draupnir_http_requests_total{method="POST",route="/instances",status="201"}`:                1,
		`draupnir_http_requests_total{method="POST",route="/instances",status="404"}`:                1,
		`draupnir_http_requests_total{method="POST",route="/images/:id/done",status="200"}`:          1,
		`draupnir_upload_bytes_total{method="files"}`:                                                float64(st.Size()),
	}
	for series, want := range exact {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	positive := []string{
		`draupnir_data_path_free_bytes`,
		`draupnir_data_path_size_bytes`,
		`draupnir_images_size_bytes`,
		`draupnir_uploads_total{method="files",outcome="ok"}`,
		`draupnir_http_request_duration_seconds_count{method="POST",route="/instances"}`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
		`draupnir_build_info{version="` + draupnir.Version + `"}`,
	}
	for _, series := range positive {
		if m[series] <= 0 {
			t.Errorf("%s = %v, want > 0", series, m[series])
		}
	}
	for _, series := range []string{`draupnir_log_records_total{level="error"}`, `draupnir_log_records_total{level="warn"}`} {
		if _, ok := m[series]; !ok {
			t.Errorf("%s missing", series)
		}
	}
	if t.Failed() {
		t.Logf("server log:\n%s", s.logs())
	}

	// Logs are JSON (stderr is no terminal) and carry the environment.
	first, _, _ := strings.Cut(s.logs(), "\n")
	var rec map[string]any
	if err := json.Unmarshal([]byte(first), &rec); err != nil || rec["environment"] != "test" {
		t.Errorf("first log line is not JSON with environment=test: %q (%v)", first, err)
	}

	// SIGTERM: the server exits 0 (stop checks that), the instance runs on.
	pid := postmasterPID(t, s, kept.ID)
	s.stop(syscall.SIGTERM)
	if !strings.Contains(s.logs(), "instances keep running") {
		t.Errorf("no shutdown line in the log:\n%s", s.logs())
	}
	if got := mustPSQL(t, kept, "SELECT 40 + 2"); got != "42" {
		t.Errorf("instance %d while the server is down: %q", kept.ID, got)
	}
	mustPSQL(t, kept, "CREATE TABLE while_down (n int)")

	// The next server adopts it: same postmaster, same data, running.
	s.start()
	if got := postmasterPID(t, s, kept.ID); got != pid {
		t.Errorf("postmaster of instance %d changed from %s to %s: restarted, not adopted", kept.ID, pid, got)
	}
	in, err := s.user().Instances().Get(ctx, draupnir.Principal{}, kept.ID)
	if err != nil || in.State != draupnir.InstanceRunning {
		t.Fatalf("instance %d after restart: %v %+v", kept.ID, err, in)
	}
	mustPSQL(t, kept, "SELECT count(*) FROM while_down")
	if got := s.scrape(t)[`draupnir_instances{state="running"}`]; got != 1 {
		t.Errorf("running instances after restart = %v, want 1", got)
	}
}
