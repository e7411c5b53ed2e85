package sshd

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir"
)

// limits are the connection caps, all derived from Options.MaxConnections
// (n) so that one setting scales them together.
type limits struct {
	conns        int // authenticated connections in all (n)
	reserve      int // of conns, usable by the upload principal and nodes only
	perPrincipal int // authenticated connections of one principal
	handshakes   int // connections still in the handshake, on top of conns
	perSource    int // handshakes from one IPv4 address or IPv6 /64
}

func limitsFor(n int) limits {
	return limits{
		conns: n,
		// The upload principal can always get in while users hold the
		// rest (with n = 1 there is nothing to split).
		reserve:      min(max(n/8, 1), n-1),
		perPrincipal: max(n/4, 1),
		// Handshakes have their own room: however many are in progress,
		// they never take a slot an authenticated session needs.
		handshakes: max(n/2, 4),
		perSource:  max(n/16, 2),
	}
}

// sourceKey is what the per-source handshake cap counts by: the IPv4
// address, or the IPv6 /64 (one host usually holds a whole /64, so capping
// single IPv6 addresses would cap nothing).
func sourceKey(a net.Addr) string {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if v4 := t.IP.To4(); v4 != nil {
		return v4.String()
	}
	return t.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// limiter counts connections against limits. A connection holds a slot
// from accept to close: first a handshake slot counted against its
// source, then, once a key has been verified, an authenticated slot
// counted against its principal.
type limiter struct {
	lim limits

	mu       sync.Mutex
	sources  map[string][]*slot // handshakes per source, oldest first
	inShake  int
	seq      uint64         // of the last slot admitted
	byName   map[string]int // authenticated connections per principal
	authed   int            // authenticated connections in all
	byUpload int            // of authed, the upload principal's and nodes'

	// Refusals are logged at most once per warnEvery, with a count, so
	// that a flood cannot flood the log as well.
	lastWarn time.Time
	refused  int
}

const warnEvery = 10 * time.Second

func newLimiter(lim limits) *limiter {
	return &limiter{lim: lim, sources: map[string][]*slot{}, byName: map[string]int{}}
}

type slotState int

const (
	inHandshake slotState = iota
	authenticated
	released
)

// slot is one connection's place in the limiter.
type slot struct {
	source string
	conn   net.Conn // closed to evict the connection
	seq    uint64   // admission order

	// guarded by limiter.mu
	state     slotState
	principal string
	upload    bool
}

// admit gives a new connection a handshake slot. When the handshake room
// is full, the oldest handshake of a source holding more than the
// newcomer's source is closed to make room (of the sources holding the
// most, the one with the oldest), so that neither a few sources nor many
// keep a new source out, and a flood evicts its own idle connections
// before a fresh one; victim is that connection, for the caller to close.
func (l *limiter) admit(source string, c net.Conn) (s *slot, victim net.Conn, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	mine := len(l.sources[source])
	if mine >= l.lim.perSource {
		return nil, nil, fmt.Errorf("too many handshakes from %s (at most %d at once)", source, l.lim.perSource)
	}
	if l.inShake >= l.lim.handshakes {
		var top []*slot
		for _, list := range l.sources {
			if len(list) > len(top) || len(list) == len(top) && list[0].seq < top[0].seq {
				top = list
			}
		}
		if len(top) <= mine {
			return nil, nil, fmt.Errorf("too many handshakes in progress (at most %d at once)", l.lim.handshakes)
		}
		old := top[0]
		l.leaveHandshake(old)
		old.state = released
		victim = old.conn
	}
	l.seq++
	s = &slot{source: source, conn: c, seq: l.seq}
	l.sources[source] = append(l.sources[source], s)
	l.inShake++
	return s, victim, nil
}

// leaveHandshake takes s out of the handshake counts; l.mu is held.
func (l *limiter) leaveHandshake(s *slot) {
	list := l.sources[s.source]
	for i, x := range list {
		if x == s {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(l.sources, s.source)
	} else {
		l.sources[s.source] = list
	}
	l.inShake--
}

// authenticate moves s from the handshake room to the authenticated
// connections of principal p, if p's share and the room allow it.
func (l *limiter) authenticate(s *slot, p draupnir.Principal) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch s.state {
	case released:
		return errors.New("the connection was closed to make room for others")
	case authenticated:
		if s.principal == limiterName(p) {
			return nil
		}
		l.leaveAuthenticated(s)
	}
	name := limiterName(p)
	if l.byName[name] >= l.lim.perPrincipal {
		return fmt.Errorf("too many connections for %s (at most %d at once); close some and try again", p.Name, l.lim.perPrincipal)
	}
	// The cluster's nodes share the upload principal's reserve: users
	// holding every other connection must not stop images travelling.
	trusted := p.Upload || p.Node
	users := l.authed - l.byUpload
	if l.authed >= l.lim.conns || !trusted && users >= l.lim.conns-l.lim.reserve {
		return errors.New("the server has too many connections; try again later")
	}
	if s.state == inHandshake {
		l.leaveHandshake(s)
	}
	s.state, s.principal, s.upload = authenticated, name, trusted
	l.byName[name]++
	l.authed++
	if trusted {
		l.byUpload++
	}
	return nil
}

// leaveAuthenticated takes s out of the authenticated counts; l.mu is held.
func (l *limiter) leaveAuthenticated(s *slot) {
	if l.byName[s.principal]--; l.byName[s.principal] <= 0 {
		delete(l.byName, s.principal)
	}
	l.authed--
	if s.upload {
		l.byUpload--
	}
}

// release gives s's slot back; it is safe to call more than once.
func (l *limiter) release(s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch s.state {
	case inHandshake:
		l.leaveHandshake(s)
	case authenticated:
		l.leaveAuthenticated(s)
	}
	s.state = released
}

// handshaking reports whether s is still in the handshake.
func (l *limiter) handshaking(s *slot) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return s.state == inHandshake
}

// counts returns the connections in the handshake and authenticated.
func (l *limiter) counts() (handshakes, authed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inShake, l.authed
}

// noteRefusal counts a refusal and reports whether to log now, and how
// many refusals the log line stands for.
func (l *limiter) noteRefusal() (n int, log bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refused++
	if now := time.Now(); now.Sub(l.lastWarn) >= warnEvery {
		n, l.refused, l.lastWarn = l.refused, 0, now
		return n, true
	}
	return 0, false
}
