package instances

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

var bob = draupnir.Principal{Name: "bob@example.com"}

const day = 24 * time.Hour

func TestExpiry(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name            string
		defaultTTL, max time.Duration
		ttl             time.Duration
		creating        bool
		want            time.Duration // from now; 0 for no expiry
		notice          string        // part of the notice; "" for none
		invalid         bool
	}{
		{name: "no ttl, no default", creating: true},
		{name: "no ttl takes the default", defaultTTL: 8 * time.Hour, creating: true, want: 8 * time.Hour},
		{name: "ttl beats the default", defaultTTL: 8 * time.Hour, ttl: 90 * time.Minute, creating: true, want: 90 * time.Minute},
		{name: "ttl in seconds", ttl: 3 * time.Second, creating: true, want: 3 * time.Second},
		{name: "ttl capped", max: 7 * day, ttl: 30 * day, creating: true, want: 7 * day, notice: "capped at instances.max_ttl (7d)"},
		{name: "no ttl under a cap gets the cap quietly", max: 7 * day, creating: true, want: 7 * day},
		{name: "extension to never without a cap", ttl: 0, want: 0},
		{name: "extension to never under a cap", max: 7 * day, ttl: 0, want: 7 * day, notice: "no expiry asked"},
		{name: "extension within the cap", max: 7 * day, ttl: 2 * day, want: 2 * day},
		{name: "negative", ttl: -time.Second, creating: true, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Service{opts: Options{DefaultTTL: tt.defaultTTL, MaxTTL: tt.max}}
			got, notices, err := s.expiry(now, tt.ttl, tt.creating)
			if tt.invalid {
				if draupnir.KindOf(err) != draupnir.KindInvalid {
					t.Fatalf("err = %v, want invalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := time.Time{}
			if tt.want != 0 {
				want = now.Add(tt.want)
			}
			if !got.Equal(want) {
				t.Errorf("expires %v, want %v", got, want)
			}
			notice := strings.Join(notices, "; ")
			if (tt.notice == "") != (notice == "") || !strings.Contains(notice, tt.notice) {
				t.Errorf("notice %q, want one with %q", notice, tt.notice)
			}
		})
	}
}

func TestUpdate(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxTTL, o.MaxProtection = 7*day, 2*day })
	ctx := context.Background()
	in, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if in.ExpiresAt.IsZero() || in.Notice != "" {
		t.Fatalf("created with expiry %v, notice %q", in.ExpiresAt, in.Notice)
	}
	d := func(d time.Duration) *time.Duration { return &d }

	got, err := e.s.Update(ctx, alice, in.ID, draupnir.InstancePatch{TTL: d(3 * day)})
	if err != nil {
		t.Fatal(err)
	}
	if !got.ExpiresAt.After(in.ExpiresAt.Add(2*day)) || got.Notice != "" {
		t.Errorf("extended to %v (notice %q), from %v", got.ExpiresAt, got.Notice, in.ExpiresAt)
	}
	got, err = e.s.Update(ctx, alice, in.ID, draupnir.InstancePatch{ProtectFor: d(30 * day)})
	if err != nil {
		t.Fatal(err)
	}
	if r := e.store.row(in.ID); !r.Protected(time.Now()) || r.Protected(time.Now().Add(2*day+time.Minute)) ||
		!strings.Contains(got.Notice, "instances.max_protection (2d)") {
		t.Errorf("protected until %v (notice %q), want 2 days, capped and said so", r.ProtectedUntil, got.Notice)
	}
	if !got.ExpiresAt.After(in.ExpiresAt.Add(2 * day)) {
		t.Errorf("protecting changed the expiry to %v", got.ExpiresAt)
	}
	if _, err := e.s.Update(ctx, alice, in.ID, draupnir.InstancePatch{ProtectFor: d(0)}); err != nil {
		t.Fatal(err)
	}
	if r := e.store.row(in.ID); r.Protected(time.Now()) {
		t.Errorf("unprotect left it protected until %v", r.ProtectedUntil)
	}
	for _, tt := range []struct {
		name string
		p    draupnir.Principal
		id   int64
		kind draupnir.Kind
	}{
		{"someone else's", bob, in.ID, draupnir.KindNotFound},
		{"absent", alice, 99, draupnir.KindNotFound},
	} {
		if _, err := e.s.Update(ctx, tt.p, tt.id, draupnir.InstancePatch{ProtectFor: d(time.Hour)}); draupnir.KindOf(err) != tt.kind {
			t.Errorf("%s: err = %v, want kind %v", tt.name, err, tt.kind)
		}
	}
	if r := e.store.row(in.ID); r.Protected(time.Now()) {
		t.Errorf("a refused change protected it")
	}
	if _, err := e.s.Update(ctx, alice, in.ID, draupnir.InstancePatch{TTL: d(-time.Hour)}); draupnir.KindOf(err) != draupnir.KindInvalid {
		t.Errorf("negative ttl: %v", err)
	}
}

// TestSweep: an expired instance goes and leaves a tombstone that its owner
// (and only they) sees as Gone; a protected one, one not yet expired, one
// without expiry and one being created or reset stay.
func TestSweep(t *testing.T) {
	var reasons []draupnir.DestroyReason
	e := newEnv(t, func(o *Options) { o.Destroyed = func(r draupnir.DestroyReason) { reasons = append(reasons, r) } })
	ctx := context.Background()
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Hour)
	rows := map[string]draupnir.Instance{
		"expired":          {ID: 1, ExpiresAt: past, State: draupnir.InstanceRunning},
		"expired stopped":  {ID: 2, ExpiresAt: past, State: draupnir.InstanceFailed},
		"protected":        {ID: 3, ExpiresAt: past, ProtectedUntil: future, State: draupnir.InstanceRunning},
		"not yet":          {ID: 4, ExpiresAt: future, State: draupnir.InstanceRunning},
		"never":            {ID: 5, State: draupnir.InstanceRunning},
		"creating":         {ID: 6, ExpiresAt: past, State: draupnir.InstanceCreating},
		"protection ended": {ID: 7, ExpiresAt: past, ProtectedUntil: past, State: draupnir.InstanceRunning},
		"warm":             {ID: 8, ExpiresAt: past, State: draupnir.InstanceWarm},
		"resetting":        {ID: 9, ExpiresAt: past, State: draupnir.InstanceResetting},
	}
	for _, r := range rows {
		r.ImageID, r.Owner, r.Port = testImage, alice.Name, minPort+int(r.ID)
		if r.State == draupnir.InstanceWarm {
			r.Owner = ""
		}
		e.store.add(r)
	}
	e.s.sweep(ctx, now)
	for name, r := range rows {
		wantGone := name == "expired" || name == "expired stopped" || name == "protection ended"
		if gone := e.store.row(r.ID) == nil; gone != wantGone {
			t.Errorf("%s: gone = %v, want %v", name, gone, wantGone)
		}
	}
	if len(reasons) != 3 || reasons[0] != draupnir.ReasonExpired {
		t.Errorf("counted %v, want 3 expired", reasons)
	}
	_, err := e.s.Get(ctx, alice, 1)
	if draupnir.KindOf(err) != draupnir.KindGone || !strings.Contains(err.Error(), "expired at "+past.UTC().Format(time.RFC3339)) {
		t.Errorf("owner's Get of an expired instance: %v, want gone saying when it expired", err)
	}
	if _, err := e.s.Get(ctx, bob, 1); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("someone else's Get of an expired instance: %v, want not found", err)
	}
	if _, err := e.s.Get(ctx, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, 1); draupnir.KindOf(err) != draupnir.KindGone {
		t.Errorf("upload principal's Get: %v, want gone", err)
	}
	list, err := e.s.Tombstones(ctx, alice)
	if err != nil || len(list) != 3 {
		t.Errorf("alice's tombstones: %v, %v", list, err)
	}
	if list, _ := e.s.Tombstones(ctx, bob); len(list) != 0 {
		t.Errorf("bob sees %v", list)
	}
	// An explicit destroy leaves no tombstone: nobody needs telling.
	if err := e.s.Destroy(ctx, alice, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Get(ctx, alice, 4); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("Get after an explicit destroy: %v, want not found", err)
	}
	// Tombstones go after TombstoneDays.
	e.s.opts.TombstoneDays = 1
	e.s.sweep(ctx, now.Add(2*day))
	if list, _ := e.s.Tombstones(ctx, alice); len(list) != 0 {
		t.Errorf("tombstones kept past tombstone_days: %v", list)
	}
}

// TestSweepRechecks: an extension or a protection that lands between the
// sweeper's list and its destroy wins.
func TestSweepRechecks(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	now := time.Now()
	in := draupnir.Instance{ID: 1, ImageID: testImage, Owner: alice.Name, Port: minPort, State: draupnir.InstanceRunning,
		ExpiresAt: now.Add(-time.Second)}
	e.store.add(in)
	stale := in // what the sweeper listed
	e.store.setLifetime(ctx, 1, lifetime{protectedUntil: ptr(now.Add(time.Hour))})
	if err := e.s.destroyLapsed(ctx, &stale, draupnir.ReasonExpired, "", now); err != nil || e.store.row(1) == nil {
		t.Errorf("protected since the list, yet destroyed (err %v)", err)
	}
	e.store.setLifetime(ctx, 1, lifetime{protectedUntil: ptr(time.Time{}), expiresAt: ptr(now.Add(time.Hour))})
	if err := e.s.destroyLapsed(ctx, &stale, draupnir.ReasonExpired, "", now); err != nil || e.store.row(1) == nil {
		t.Errorf("extended since the list, yet destroyed (err %v)", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestQuota: a user gets max_per_user instances, from the pool or not, and
// the refusal names the limit and the count; others and the upload
// principal are not held back by it, nor a save (it makes an image, not an
// instance).
func TestQuota(t *testing.T) {
	for _, warm := range []int{0, 2} {
		t.Run(map[int]string{0: "fresh", 2: "warm pool"}[warm], func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.MaxPerUser, o.WarmPool = 2, warm })
			ctx := context.Background()
			if warm > 0 {
				for range warm {
					if _, err := e.s.create(ctx, testImage, draupnir.Principal{}, draupnir.InstanceWarm, time.Time{}); err != nil {
						t.Fatal(err)
					}
				}
			}
			var first *draupnir.Instance
			for range 2 {
				in, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if first == nil {
					first = in
				}
			}
			_, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{})
			if draupnir.KindOf(err) != draupnir.KindQuotaExceeded || !strings.Contains(err.Error(), "you have 2 instances") ||
				!strings.Contains(err.Error(), "instances.max_per_user (2)") {
				t.Fatalf("third create: %v, want quota exceeded naming 2 of 2", err)
			}
			if n, _ := e.store.countOwned(ctx, alice.Name); n != 2 {
				t.Errorf("alice has %d instances after the refusal, want 2", n)
			}
			if _, err := e.s.Create(ctx, bob, testImage, draupnir.CreateOptions{}); err != nil {
				t.Errorf("bob's create: %v", err)
			}
			if _, err := e.s.Save(ctx, alice, first.ID); err != nil {
				t.Errorf("save at the quota: %v", err)
			}
			if n, _ := e.store.countOwned(ctx, alice.Name); n != 2 {
				t.Errorf("alice has %d instances after a save, want 2", n)
			}
		})
	}
}

func TestUsed(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	sample := func(xacts int64, conns ...backend) activity { return activity{at: now, xacts: xacts, conns: conns} }
	prev := sample(100)
	tests := []struct {
		name     string
		a        activity
		prev     *activity
		idleConn time.Duration
		want     bool
	}{
		{"nothing, first sample", sample(100), nil, 0, false},
		{"nothing but our own probe", sample(102), &prev, 0, false},
		{"a transaction", sample(103), &prev, 0, true},
		{"counters reset", sample(3), &prev, 0, true},
		{"first sample counts no transactions", sample(500), nil, 0, false},
		{"an idle connection", sample(101, backend{"idle", now.Add(-time.Hour)}), &prev, 0, true},
		{"an idle connection past idle_connection_timeout", sample(101, backend{"idle", now.Add(-time.Hour)}), &prev, time.Minute, false},
		{"idle in transaction past it", sample(101, backend{"idle in transaction", now.Add(-time.Hour)}), &prev, time.Minute, false},
		{"a recent idle connection", sample(101, backend{"idle", now.Add(-time.Second)}), &prev, time.Minute, true},
		{"a long query", sample(101, backend{"active", now.Add(-time.Hour)}), &prev, time.Minute, true},
	}
	for _, tt := range tests {
		if got := used(tt.a, tt.prev, tt.idleConn); got != tt.want {
			t.Errorf("%s: used = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestSweepIdle: with idle_timeout, an instance whose statistics show no
// use goes (with a tombstone saying so), one in use has its last_active_at
// moved and stays, a protected idle one stays, and one that cannot be
// sampled keeps its old last_active_at.
func TestSweepIdle(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.IdleTimeout = time.Minute })
	ctx := context.Background()
	now := time.Now()
	old := now.Add(-2 * time.Minute)
	rows := []draupnir.Instance{
		{ID: 1}, // idle
		{ID: 2}, // in use: transactions
		{ID: 3}, // in use: a connection
		{ID: 4, ProtectedUntil: now.Add(time.Hour)},
		{ID: 5, ExpiresAt: now.Add(time.Hour)}, // cannot be sampled, recently active
	}
	for _, r := range rows {
		r.ImageID, r.Owner, r.Port, r.State, r.LastActiveAt = testImage, alice.Name, minPort+int(r.ID), draupnir.InstanceRunning, old
		if r.ID == 5 {
			r.LastActiveAt = now.Add(-time.Second)
		}
		e.store.add(r)
	}
	set := func(port int, xacts int64, conns ...backend) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.use[port] = activity{at: now, xacts: xacts, conns: conns}
	}
	for id := 1; id <= 4; id++ {
		set(minPort+id, 10)
	}
	// The first pass only learns the counters; the sample taken then is
	// the baseline. Instance 3 has a client connected.
	set(minPort+3, 10, backend{"idle", now})
	e.s.opts.IdleTimeout = time.Hour // nothing goes yet
	e.s.sweep(ctx, now)
	e.s.opts.IdleTimeout = time.Minute
	set(minPort+2, 15) // the owner ran transactions
	set(minPort+1, 12) // only our probe
	now = now.Add(e.s.probeEvery())
	e.s.sweep(ctx, now)
	for id, wantGone := range map[int64]bool{1: true, 2: false, 3: false, 4: false, 5: false} {
		if gone := e.store.row(id) == nil; gone != wantGone {
			t.Errorf("instance %d: gone = %v, want %v", id, gone, wantGone)
		}
	}
	for _, id := range []int64{2, 3} {
		if r := e.store.row(id); r != nil && !r.LastActiveAt.Equal(now) {
			t.Errorf("instance %d in use: last_active_at %v, want %v", id, r.LastActiveAt, now)
		}
	}
	if r := e.store.row(4); r != nil && !r.LastActiveAt.Equal(old) {
		t.Errorf("idle protected instance marked active at %v", r.LastActiveAt)
	}
	_, err := e.s.Get(ctx, alice, 1)
	if draupnir.KindOf(err) != draupnir.KindGone || !strings.Contains(err.Error(), "nobody used it since") ||
		!strings.Contains(err.Error(), "instances.idle_timeout is 1m") {
		t.Errorf("Get of the idle instance: %v", err)
	}
}

// TestReconcileFinishesARuleDestroy: a server that stops between the
// sweeper's claim and the row's deletion leaves an instance "destroying";
// the next start's reconcile finishes it and the tombstone still says why.
func TestReconcileFinishesARuleDestroy(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	now := time.Now()
	e.store.add(draupnir.Instance{ID: 1, ImageID: testImage, Owner: alice.Name, Port: minPort, State: draupnir.InstanceRunning,
		ExpiresAt: now.Add(-time.Minute)})
	if err := e.vol.AddSubvolume(e.s.dir(1), false); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.store.claimLapsed(ctx, 1, draupnir.ReasonExpired, "it expired a minute ago", now, time.Time{}); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	// The server stops here; the next one reconciles.
	if err := e.s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if e.store.row(1) != nil {
		t.Fatal("the claimed instance is still there")
	}
	if ok, _ := e.vol.IsSubvolume(e.s.dir(1)); ok {
		t.Error("its snapshot is still there")
	}
	if _, err := e.s.Get(ctx, alice, 1); draupnir.KindOf(err) != draupnir.KindGone || !strings.Contains(err.Error(), "it expired a minute ago") {
		t.Errorf("Get after reconcile: %v, want gone with the reason", err)
	}
}

// TestImageDestroyTombstones: instances destroyed with their image answer
// their owner Gone, naming the image; warm ones leave nothing; one that
// another destroy claimed first is left to it (not torn down twice, nor
// counted twice).
func TestImageDestroyTombstones(t *testing.T) {
	var reasons []draupnir.DestroyReason
	e := newEnv(t, func(o *Options) { o.Destroyed = func(r draupnir.DestroyReason) { reasons = append(reasons, r) } })
	ctx := context.Background()
	in, err := e.s.Create(ctx, alice, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	warm, err := e.s.create(ctx, testImage, draupnir.Principal{}, draupnir.InstanceWarm, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	claimed, err := e.s.Create(ctx, bob, testImage, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := e.store.claimDestroy(ctx, claimed.ID, "", ""); !ok || err != nil {
		t.Fatalf("claiming instance %d: %v %v", claimed.ID, ok, err)
	}
	if err := e.s.DestroyAllOfImage(ctx, testImage); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Get(ctx, alice, in.ID); draupnir.KindOf(err) != draupnir.KindGone || !strings.Contains(err.Error(), "its image 1 was destroyed") {
		t.Errorf("Get: %v, want gone naming the image", err)
	}
	if list, _ := e.s.Tombstones(ctx, draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}); len(list) != 1 || list[0].ID == warm.ID {
		t.Errorf("tombstones %v, want only the owned instance's", list)
	}
	if len(reasons) != 1 || reasons[0] != draupnir.ReasonImageDestroy {
		t.Errorf("counted %v", reasons)
	}
	if r := e.store.row(claimed.ID); r == nil || r.State != draupnir.InstanceDestroying {
		t.Errorf("the instance another destroy claimed: %+v, want left to it", r)
	}
}

// TestSweepIdleProbesSparingly: an instance is sampled at most every tenth
// of the idle timeout (and at most once a sweep), not at every sweep: each
// sample forks a backend in it. Use seen at a sample still counts, and an
// idle instance still goes once the timeout has passed since its last use.
func TestSweepIdleProbesSparingly(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.IdleTimeout = 100 * time.Second
		o.SweepInterval = time.Second
	})
	var probes int
	probe := e.s.probe
	e.s.probe = func(ctx context.Context, sockDir string, port int, superuser, db string) (activity, error) {
		probes++
		return probe(ctx, sockDir, port, superuser, db)
	}
	ctx := context.Background()
	start := time.Now()
	e.store.add(draupnir.Instance{ID: 1, ImageID: testImage, Owner: alice.Name, Port: minPort, State: draupnir.InstanceRunning, LastActiveAt: start})
	e.use[minPort] = activity{at: start, xacts: 10}
	for i := 0; i < 30; i++ { // 30 sweeps, a second apart
		e.s.sweep(ctx, start.Add(time.Duration(i)*time.Second))
	}
	if probes != 3 || e.s.probeEvery() != 10*time.Second {
		t.Errorf("%d samples in 30 sweeps a second apart, every %s; want 3, every 10s", probes, e.s.probeEvery())
	}
	// The owner ran transactions: the next sample sees them.
	e.mu.Lock()
	e.use[minPort] = activity{at: start, xacts: 50}
	e.mu.Unlock()
	used := start.Add(40 * time.Second)
	e.s.sweep(ctx, used)
	if r := e.store.row(1); r == nil || !r.LastActiveAt.Equal(used) {
		t.Fatalf("after use: %+v, want last active at %v", r, used)
	}
	// Then nothing: it goes a timeout after that sample, not before.
	for at := used; at.Before(used.Add(100 * time.Second)); at = at.Add(time.Second) {
		e.s.sweep(ctx, at)
		if e.store.row(1) == nil {
			t.Fatalf("destroyed %s after its last use, before the idle timeout", at.Sub(used))
		}
	}
	e.s.sweep(ctx, used.Add(100*time.Second))
	if e.store.row(1) != nil {
		t.Error("still there a timeout after its last use")
	}
}
