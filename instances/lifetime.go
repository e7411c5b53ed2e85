package instances

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/draupnir-db/draupnir"
)

// expiry returns when an instance asked to live for ttl from now expires
// (zero: never), capped at MaxTTL, with a notice when it was capped. On a
// create (creating) a ttl of 0 means DefaultTTL; on an extension it means
// "no expiry".
func (s *Service) expiry(now time.Time, ttl time.Duration, creating bool) (time.Time, []string, error) {
	if ttl < 0 {
		return time.Time{}, nil, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "ttl",
			Msg: fmt.Sprintf("ttl must not be negative, got %s", ttl)}
	}
	if ttl == 0 && creating {
		ttl = s.opts.DefaultTTL
	}
	var notices []string
	if max := s.opts.MaxTTL; max > 0 && (ttl == 0 || ttl > max) {
		if ttl > 0 || !creating {
			asked := "no expiry"
			if ttl > 0 {
				asked = "a ttl of " + draupnir.FormatDuration(ttl)
			}
			notices = append(notices, fmt.Sprintf("%s asked; capped at instances.max_ttl (%s)", asked, draupnir.FormatDuration(max)))
		}
		ttl = max
	}
	if ttl == 0 {
		return time.Time{}, notices, nil
	}
	return now.Add(ttl).UTC().Truncate(time.Second), notices, nil
}

// protection returns until when an instance asked to be protected for d
// from now is protected (zero: not), capped at MaxProtection.
func (s *Service) protection(now time.Time, d time.Duration) (time.Time, []string, error) {
	if d < 0 {
		return time.Time{}, nil, &draupnir.Error{Kind: draupnir.KindInvalid, Field: "protect_for",
			Msg: fmt.Sprintf("protect_for must not be negative, got %s", d)}
	}
	if d == 0 {
		return time.Time{}, nil, nil
	}
	var notices []string
	if max := s.opts.MaxProtection; max > 0 && d > max {
		notices = append(notices, fmt.Sprintf("protection for %s asked; capped at instances.max_protection (%s)",
			draupnir.FormatDuration(d), draupnir.FormatDuration(max)))
		d = max
	}
	return now.Add(d).UTC().Truncate(time.Second), notices, nil
}

// Update extends or protects instance id for p.
func (s *Service) Update(ctx context.Context, p draupnir.Principal, id int64, patch draupnir.InstancePatch) (*draupnir.Instance, error) {
	in, err := s.Get(ctx, p, id)
	if err != nil {
		return nil, err
	}
	if in.State == draupnir.InstanceDestroying {
		return nil, draupnir.Errorf(draupnir.KindConflict, "instance %d is being destroyed", id)
	}
	now := time.Now()
	var l lifetime
	var notices []string
	if patch.TTL != nil {
		t, n, err := s.expiry(now, *patch.TTL, false)
		if err != nil {
			return nil, err
		}
		l.expiresAt, notices = &t, append(notices, n...)
	}
	if patch.ProtectFor != nil {
		t, n, err := s.protection(now, *patch.ProtectFor)
		if err != nil {
			return nil, err
		}
		l.protectedUntil, notices = &t, append(notices, n...)
	}
	if l.expiresAt == nil && l.protectedUntil == nil {
		return in, nil
	}
	in, err = s.store.setLifetime(ctx, id, l)
	if err != nil {
		return nil, err
	}
	s.log.Info("instance lifetime changed", "instance", id, "owner", in.Owner, "by", p.Name,
		"expires_at", logTime(in.ExpiresAt), "protected_until", logTime(in.ProtectedUntil))
	in.Notice = strings.Join(notices, "; ")
	return s.decorate(in), nil
}

// lockQuota takes portMu and, on a node of a cluster where p has a quota,
// p's lock in the state database, so that counting p's instances and
// adding one is a single step on every node at once: concurrent creates
// placed on several nodes cannot all pass the quota.
func (s *Service) lockQuota(ctx context.Context, p draupnir.Principal) (unlock func(), err error) {
	s.portMu.Lock()
	if s.opts.Node == "" || s.opts.MaxPerUser <= 0 || p.Upload || p.Name == "" {
		return s.portMu.Unlock, nil
	}
	release, err := s.store.lockOwner(ctx, p.Name)
	if err != nil {
		s.portMu.Unlock()
		return nil, err
	}
	return func() { release(); s.portMu.Unlock() }, nil
}

// checkQuota refuses p one instance more than MaxPerUser. The upload
// principal and the warm pool (no principal) have no quota.
func (s *Service) checkQuota(ctx context.Context, p draupnir.Principal) error {
	if s.opts.MaxPerUser <= 0 || p.Upload || p.Name == "" {
		return nil
	}
	n, err := s.store.countOwned(ctx, p.Name)
	if err != nil {
		return err
	}
	if n >= s.opts.MaxPerUser {
		return draupnir.Errorf(draupnir.KindQuotaExceeded,
			"you have %s, the most instances.max_per_user (%d) allows; destroy one first", countOf(n, "instance"), s.opts.MaxPerUser)
	}
	return nil
}

// claimWarm hands p a warm instance of image imageID, within p's quota, or
// returns nil when the pool has none.
func (s *Service) claimWarm(ctx context.Context, imageID int64, p draupnir.Principal, expires time.Time) (*draupnir.Instance, error) {
	unlock, err := s.lockQuota(ctx, p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.checkQuota(ctx, p); err != nil {
		return nil, err
	}
	return s.store.claimWarm(ctx, imageID, p.Name, expires)
}

// StartSweeper destroys, until Close, the instances whose expiry passed
// (within SweepInterval of it) and, with IdleTimeout, those unused that
// long, unless they are protected. Call it after Reconcile.
func (s *Service) StartSweeper() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(s.opts.SweepInterval)
		defer tick.Stop()
		for {
			s.sweep(s.base, time.Now())
			select {
			case <-s.base.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// lapsed returns the rule under which in is to be destroyed at now, or ""
// for none: never while it is protected, nor while it is being created,
// reset or destroyed, nor a warm one. idle is instances.idle_timeout (0: off).
func lapsed(in *draupnir.Instance, now time.Time, idle time.Duration) (draupnir.DestroyReason, string) {
	switch {
	case in.Owner == "", in.Protected(now):
		return "", ""
	case in.State != draupnir.InstanceRunning && in.State != draupnir.InstanceStopped && in.State != draupnir.InstanceFailed:
		return "", ""
	case !in.ExpiresAt.IsZero() && !now.Before(in.ExpiresAt):
		return draupnir.ReasonExpired, "it expired at " + in.ExpiresAt.UTC().Format(time.RFC3339)
	case idle > 0 && !in.LastActiveAt.IsZero() && now.Sub(in.LastActiveAt) >= idle:
		return draupnir.ReasonIdle, fmt.Sprintf("nobody used it since %s (instances.idle_timeout is %s)",
			in.LastActiveAt.UTC().Format(time.RFC3339), draupnir.FormatDuration(idle))
	}
	return "", ""
}

// sweep destroys every instance that a rule says must go at now.
func (s *Service) sweep(ctx context.Context, now time.Time) {
	// This node's only: another node's instances are its own to sweep
	// (lapsed skips the warm pool's, which are nobody's).
	list, err := s.store.listAll(ctx)
	if err != nil {
		s.log.Error("sweeper could not list the instances", "err", err)
		return
	}
	if s.opts.IdleTimeout > 0 {
		s.watchIdle(ctx, list, now)
	}
	for _, in := range list {
		reason, detail := lapsed(in, now, s.opts.IdleTimeout)
		if reason == "" {
			continue
		}
		if err := s.destroyLapsed(ctx, in, reason, detail, now); err != nil {
			s.log.Error("sweeper could not destroy an instance", "instance", in.ID, "reason", reason, "err", err)
		}
	}
	if s.opts.TombstoneDays > 0 {
		if err := s.store.pruneTombstones(ctx, now.AddDate(0, 0, -s.opts.TombstoneDays)); err != nil {
			s.log.Error("sweeper could not delete old tombstones", "err", err)
		}
	}
}

// destroyLapsed destroys in under rule reason, if the rule still holds
// when the state database is asked (an extension or protection may have
// come in since the list).
func (s *Service) destroyLapsed(ctx context.Context, in *draupnir.Instance, reason draupnir.DestroyReason, detail string, now time.Time) error {
	ok, err := s.store.claimLapsed(ctx, in.ID, reason, detail, now, now.Add(-s.opts.IdleTimeout))
	if err != nil || !ok {
		return err
	}
	if err := s.teardown(ctx, in.ID); err != nil {
		// Left "destroying": the next start's reconcile finishes it.
		return err
	}
	s.destroyedBy(in, reason, detail)
	return nil
}

// gone is the error for instance id that the store does not have (notFound):
// if a rule destroyed it, p, its owner, learns which rule and when.
func (s *Service) gone(ctx context.Context, p draupnir.Principal, id int64, notFound error) error {
	t, err := s.store.tombstone(ctx, id)
	if err != nil {
		return err
	}
	if t == nil || !p.CanSee(t.Owner) {
		return notFound
	}
	return &draupnir.Error{Kind: draupnir.KindGone, Msg: fmt.Sprintf("instance %d was destroyed at %s because %s (rule: %s)",
		id, t.DestroyedAt.UTC().Format(time.RFC3339), t.Detail, t.Reason)}
}

// Tombstones returns what remains of p's instances that rules destroyed
// (everybody's for the upload principal), newest first.
func (s *Service) Tombstones(ctx context.Context, p draupnir.Principal) ([]*draupnir.Tombstone, error) {
	if p.Upload {
		return s.store.tombstones(ctx, nil)
	}
	return s.store.tombstones(ctx, &p.Name)
}

// logTime is t for the log: RFC 3339, or "none" for the zero time.
func logTime(t time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return t.UTC().Format(time.RFC3339)
}

// countOf writes n things, singular or plural.
func countOf(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return strconv.Itoa(n) + " " + thing + "s"
}
