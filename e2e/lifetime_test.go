package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
	// A killed server's successor keeps the tombstone, and an instance that
	// expired while no server ran goes soon after the start.
	late := create(draupnir.CreateOptions{TTL: 2 * time.Second})
	s.stop(syscall.SIGKILL)
	time.Sleep(time.Until(late.ExpiresAt.Add(time.Second)))
	s.start()
	if _, err := api.Get(ctx, draupnir.Principal{}, doomed.ID); !errors.Is(err, draupnir.ErrGone) {
		t.Errorf("after a restart: %v, want gone", err)
	}
	s.waitGone(t, late.ID, 60*time.Second)
	// An image's destroy takes its instances, and says so.
	if err := s.upload().Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Get(ctx, draupnir.Principal{}, extended.ID); !errors.Is(err, draupnir.ErrGone) ||
		!strings.Contains(err.Error(), fmt.Sprintf("its image %d was destroyed", im.ID)) {
		t.Errorf("instance of a destroyed image: %v, want gone naming the image", err)
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
	if !errors.Is(err, draupnir.ErrQuotaExceeded) || !strings.Contains(err.Error(), "you have 1 instance,") ||
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
	again, err := api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatalf("create after destroying: %v", err)
	}
	if err := api.Destroy(ctx, draupnir.Principal{}, again.ID); err != nil {
		t.Fatal(err)
	}
	// Creates racing each other cannot all pass the count.
	results := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			results <- err
		}()
	}
	ok := 0
	for range 4 {
		switch err := <-results; {
		case err == nil:
			ok++
		case !errors.Is(err, draupnir.ErrQuotaExceeded):
			t.Errorf("racing create: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of 4 racing creates passed a quota of 1", ok)
	}
}

// TestIdle: with idle_timeout, an instance nobody touches goes (410, reason
// idle), and so does one whose only client sits idle past
// idle_connection_timeout; one whose client runs a query every second on
// one connection, one used by a new connection every second, and a
// protected untouched one all stay.
func TestIdle(t *testing.T) {
	s := startServer(t, "sweep_interval = \"1s\"\nidle_timeout = \"5s\"\nidle_connection_timeout = \"4s\"")
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api := s.user().Instances()
	create := func() *draupnir.Instance {
		t.Helper()
		in, err := api.Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	untouched, sitting, querying, reconnecting, protected := create(), create(), create(), create(), create()
	hour := time.Hour
	if _, err := api.Update(ctx, draupnir.Principal{}, protected.ID, draupnir.InstancePatch{ProtectFor: &hour}); err != nil {
		t.Fatal(err)
	}
	connect := func(in *draupnir.Instance) *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=require", in.Port, in.Database))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Password = in.Username, in.Password
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	idleConn := connect(sitting)
	busyConn := connect(querying)
	// The owner plants functions and operators that the sampler, a
	// superuser, would run if it resolved a name through their schema:
	// each records the call and tries to make the owner a superuser.
	if _, err := busyConn.Exec(ctx, idleTraps); err != nil {
		t.Fatalf("planting the traps: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tick := time.NewTicker(time.Second); ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			busyConn.Exec(ctx, "SELECT count(*) FROM customers")
			psql(t, reconnecting, "SELECT 1", "PGOPTIONS=-c statement_timeout=0")
		}
	}()
	defer func() { cancel(); <-done }()

	err := s.waitGone(t, untouched.ID, 60*time.Second)
	if !strings.Contains(err.Error(), "rule: idle") || !strings.Contains(err.Error(), "instances.idle_timeout is 5s") {
		t.Errorf("gone answer %q does not name the idle rule", err)
	}
	s.waitGone(t, sitting.ID, 30*time.Second)
	if err := idleConn.Ping(context.Background()); err == nil {
		t.Errorf("the idle connection still works after its instance went")
	}
	// Two idle timeouts more: the instances in use must still be there.
	time.Sleep(10 * time.Second)
	for _, in := range []*draupnir.Instance{querying, reconnecting, protected} {
		got, err := api.Get(context.Background(), draupnir.Principal{}, in.ID)
		if err != nil {
			t.Fatalf("instance %d, in use or protected, is gone: %v\n%s", in.ID, err, s.logs())
		}
		if in != protected && time.Since(got.LastActiveAt) > 5*time.Second {
			t.Errorf("instance %d in use was last active at %v", in.ID, got.LastActiveAt)
		}
	}
	var calls int
	var super bool
	if err := busyConn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM trap_calls),
		(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)`).Scan(&calls, &super); err != nil || calls != 0 || super {
		t.Errorf("the sampler ran the owner's code: %d calls, owner superuser %v (%v)", calls, super, err)
	}
	if m := s.metrics(t); !strings.Contains(m, `draupnir_instances_destroyed_by_rule_total{reason="idle"} 2`) {
		t.Errorf("metrics lack the idle destroys:\n%s", m)
	}
}

// idleTraps are look-alikes of what the idle sampler calls, in the
// instance owner's schema, a setting that would put it first, and one that
// would make the sampler's query fail, so that an instance in use looks
// idle.
const idleTraps = `CREATE TABLE public.trap_calls (at timestamptz DEFAULT pg_catalog.clock_timestamp());
GRANT ALL ON public.trap_calls TO PUBLIC;
CREATE FUNCTION public.trap() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.trap_calls DEFAULT VALUES;
	EXECUTE 'ALTER ROLE draupnir SUPERUSER';
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT public.trap(); SELECT pg_catalog.now()';
CREATE FUNCTION public.pg_backend_pid() RETURNS int LANGUAGE sql AS 'SELECT public.trap(); SELECT 0';
CREATE FUNCTION public.sum(bigint) RETURNS numeric LANGUAGE sql AS 'SELECT public.trap(); SELECT 0::numeric';
CREATE FUNCTION public.trap_ne(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT public.trap(); SELECT true';
CREATE OPERATOR public.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_ne);
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_ne);
CREATE FUNCTION public.trap_plus(bigint, bigint) RETURNS bigint LANGUAGE sql AS 'SELECT public.trap(); SELECT 0::bigint';
CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.trap_plus);
DO $$ BEGIN EXECUTE pg_catalog.format('ALTER DATABASE %I SET search_path = public, pg_catalog', pg_catalog.current_database()); END $$;
DO $$ BEGIN EXECUTE pg_catalog.format('ALTER DATABASE %I SET statement_timeout = ''1ms''', pg_catalog.current_database()); END $$;`
