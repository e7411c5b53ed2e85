package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// waitGone waits until instance id answers Gone to its owner and returns
// that error.
func (s *server) waitGone(t *testing.T, id int64, within time.Duration) error {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		_, err := s.user().Instances().Get(context.Background(), draupnir.Principal{}, id)
		if errors.Is(err, draupnir.ErrGone) {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %d still there after %s (last answer: %v)\n%s", id, within, err, s.logs())
		}
	}
}

// TestExpiry: an instance with a ttl of seconds is destroyed soon after it
// expires and answers its owner 410 with the rule and time; one extended
// and one protected meanwhile survive their first expiry; a ttl beyond
// max_ttl is capped and the answer says so; the rule shows in the list of
// tombstones, the log and the metrics.
func TestExpiry(t *testing.T) {
	s := startServer(t, "sweep_interval = \"1s\"\nmax_ttl = \"1h\"")
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	api := s.user().Instances()
	create := func(opts draupnir.CreateOptions) *draupnir.Instance {
		t.Helper()
		in, err := api.Create(ctx, draupnir.Principal{}, im.ID, opts)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	doomed := create(draupnir.CreateOptions{TTL: 3 * time.Second})
	extended := create(draupnir.CreateOptions{TTL: 3 * time.Second})
	protected := create(draupnir.CreateOptions{TTL: 3 * time.Second})
	if doomed.ExpiresAt.IsZero() || doomed.ExpiresAt.After(time.Now().Add(time.Minute)) {
		t.Fatalf("expires_at %v for a ttl of 3s", doomed.ExpiresAt)
	}
	hour := time.Hour
	if in, err := api.Update(ctx, draupnir.Principal{}, extended.ID, draupnir.InstancePatch{TTL: &hour}); err != nil ||
		!in.ExpiresAt.After(extended.ExpiresAt.Add(30*time.Minute)) {
		t.Fatalf("extend: %+v, %v", in, err)
	}
	if in, err := api.Update(ctx, draupnir.Principal{}, protected.ID, draupnir.InstancePatch{ProtectFor: &hour}); err != nil ||
		in.ProtectedUntil.IsZero() || !in.ExpiresAt.Equal(protected.ExpiresAt) {
		t.Fatalf("protect: %+v, %v", in, err)
	}
	capped := create(draupnir.CreateOptions{TTL: 30 * 24 * time.Hour})
	if !strings.Contains(capped.Notice, "capped at instances.max_ttl (1h)") || capped.ExpiresAt.After(time.Now().Add(time.Hour+time.Minute)) {
		t.Errorf("ttl of 30d under max_ttl 1h: expires %v, notice %q", capped.ExpiresAt, capped.Notice)
	}

	err := s.waitGone(t, doomed.ID, 60*time.Second)
	if !strings.Contains(err.Error(), "expired at "+doomed.ExpiresAt.UTC().Format(time.RFC3339)) {
		t.Errorf("gone answer %q does not say when it expired", err)
	}
	if _, err := psql(t, doomed, "SELECT 1"); err == nil {
		t.Errorf("the expired instance still answers on port %d", doomed.Port)
	}
	// Give the sweeper a few passes past the others' first expiry.
	time.Sleep(time.Until(protected.ExpiresAt.Add(3 * time.Second)))
	for _, in := range []*draupnir.Instance{extended, protected} {
		got, err := api.Get(ctx, draupnir.Principal{}, in.ID)
		if err != nil {
			t.Fatalf("instance %d, extended or protected, is gone: %v", in.ID, err)
		}
		if out := mustPSQL(t, got, "SELECT count(*) FROM customers"); out != "1000" {
			t.Errorf("instance %d: %s customers", in.ID, out)
		}
	}
	// Someone else learns nothing about it.
	if _, err := s.upload().Instances().Get(ctx, draupnir.Principal{}, doomed.ID); !errors.Is(err, draupnir.ErrGone) {
		t.Errorf("upload principal's Get: %v, want gone", err)
	}
	graves, err := api.Tombstones(ctx, draupnir.Principal{})
	if err != nil || len(graves) != 1 || graves[0].ID != doomed.ID || graves[0].Reason != draupnir.ReasonExpired {
		t.Errorf("tombstones %+v, %v", graves, err)
	}
	if !strings.Contains(s.logs(), "instance destroyed by a rule") {
		t.Errorf("the log does not say which rule fired:\n%s", s.logs())
	}
	if m := s.metrics(t); !strings.Contains(m, `draupnir_instances_destroyed_by_rule_total{reason="expired"} 1`) {
		t.Errorf("metrics lack the expiry:\n%s", m)
	}
	// Explicit destroy of a protected instance still works.
	if err := api.Destroy(ctx, draupnir.Principal{}, protected.ID); err != nil {
		t.Errorf("destroying a protected instance: %v", err)
	}
}

// metrics returns the server's /metrics text.
func (s *server) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestQuota: with max_per_user = 1 a user's second instance is refused with
// 403 quota_exceeded naming the limit and the count, and nothing is left
// of it; destroying the first makes room.
func TestQuota(t *testing.T) {
	s := startServer(t, "max_per_user = 1")
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	api := s.user().Instances()
	first, err := api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if !errors.Is(err, draupnir.ErrQuotaExceeded) || !strings.Contains(err.Error(), "you have 1 instances") ||
		!strings.Contains(err.Error(), "instances.max_per_user (1)") {
		t.Fatalf("second create: %v, want 403 quota_exceeded naming 1 of 1", err)
	}
	if list, _ := s.upload().Instances().List(ctx, draupnir.Principal{}); len(list) != 1 {
		t.Errorf("%d instances after the refusal, want 1", len(list))
	}
	// The upload principal has no quota.
	if _, err := s.upload().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); err != nil {
		t.Errorf("upload principal's create: %v", err)
	}
	if err := api.Destroy(ctx, draupnir.Principal{}, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); err != nil {
		t.Errorf("create after destroying: %v", err)
	}
}
