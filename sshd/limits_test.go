package sshd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

func TestSourceKey(t *testing.T) {
	tests := []struct {
		addr, want string
	}{
		{"127.0.0.1", "127.0.0.1"},
		{"127.0.0.2", "127.0.0.2"},
		{"::ffff:192.0.2.7", "192.0.2.7"}, // IPv4 on a dual-stack socket
		{"::1", "::/64"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"fe80::1", "fe80::/64"},
	}
	for _, tt := range tests {
		got := sourceKey(&net.TCPAddr{IP: net.ParseIP(tt.addr), Port: 22})
		if got != tt.want {
			t.Errorf("sourceKey(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

func TestLimitsFor(t *testing.T) {
	for _, n := range []int{1, 2, 3, 8, 16, 64, 1000} {
		l := limitsFor(n)
		if l.conns != n || l.reserve < 0 || l.reserve >= max(n, 2) || n > 1 && l.reserve < 1 ||
			l.perPrincipal < 1 || l.perPrincipal > n || l.perSource < 1 || l.perSource > l.handshakes {
			t.Errorf("limitsFor(%d) = %+v", n, l)
		}
	}
	if l := limitsFor(64); l != (limits{conns: 64, reserve: 8, perPrincipal: 16, handshakes: 32, perSource: 4}) {
		t.Errorf("limitsFor(64) = %+v; docs/ssh.md states these numbers", l)
	}
}

func TestLimiter(t *testing.T) {
	upload := draupnir.Principal{Name: "upload", Upload: true}
	user := func(name string) draupnir.Principal { return draupnir.Principal{Name: name} }
	admit := func(t *testing.T, l *limiter, src string) (*slot, net.Conn) {
		t.Helper()
		s, victim, err := l.admit(src, nil)
		if err != nil {
			t.Fatalf("admit from %s: %v", src, err)
		}
		return s, victim
	}
	t.Run("per source", func(t *testing.T) {
		l := newLimiter(limits{conns: 8, handshakes: 8, perSource: 2, perPrincipal: 8})
		admit(t, l, "a")
		s, _ := admit(t, l, "a")
		if _, _, err := l.admit("a", nil); err == nil {
			t.Fatal("third handshake from one source admitted")
		}
		admit(t, l, "b")
		if err := l.authenticate(s, user("x")); err != nil {
			t.Fatal(err)
		}
		admit(t, l, "a") // authenticating freed its handshake slot
	})
	t.Run("a full room evicts the oldest of the biggest source", func(t *testing.T) {
		l := newLimiter(limits{conns: 8, handshakes: 4, perSource: 3, perPrincipal: 8})
		a1, a2 := &net.TCPConn{}, &net.TCPConn{}
		for _, c := range []net.Conn{a1, a2} {
			if _, v, err := l.admit("a", c); err != nil || v != nil {
				t.Fatal(err, v)
			}
		}
		admit(t, l, "b")
		admit(t, l, "c")
		// d holds nothing; a holds two: a's oldest goes.
		d1, victim := admit(t, l, "d")
		if victim != a1 {
			t.Fatalf("victim %v, want a's oldest", victim)
		}
		// Every source holds one now: nobody is evicted for d's second…
		if _, _, err := l.admit("d", nil); err == nil {
			t.Fatal("admitted d's second with the room full of single handshakes")
		}
		// …but a new source evicts the oldest of them (a's second).
		if _, victim := admit(t, l, "e"); victim != a2 {
			t.Fatalf("victim %v, want a's second", victim)
		}
		// The evicted connection cannot authenticate any more.
		if err := l.authenticate(&slot{state: released}, user("x")); err == nil {
			t.Fatal("an evicted connection authenticated")
		}
		if h, _ := l.counts(); h != 4 {
			t.Errorf("%d handshakes counted, want 4", h)
		}
		l.release(d1)
		l.release(d1) // twice is harmless
		if h, _ := l.counts(); h != 3 {
			t.Errorf("%d handshakes counted, want 3", h)
		}
	})
	t.Run("principals and the upload reserve", func(t *testing.T) {
		l := newLimiter(limits{conns: 6, reserve: 2, perPrincipal: 3, handshakes: 100, perSource: 100})
		auth := func(p draupnir.Principal) (*slot, error) {
			s, _, err := l.admit(p.Name, nil)
			if err != nil {
				t.Fatal(err)
			}
			return s, l.authenticate(s, p)
		}
		var alice []*slot
		for i := 0; i < 3; i++ {
			s, err := auth(user("alice"))
			if err != nil {
				t.Fatal(err)
			}
			alice = append(alice, s)
		}
		if _, err := auth(user("alice")); err == nil || !strings.Contains(err.Error(), "too many connections for alice") {
			t.Fatalf("alice's fourth: %v", err)
		}
		if _, err := auth(user("bob")); err != nil {
			t.Fatal(err)
		}
		// Users hold 4 of 6: the other 2 are the upload principal's.
		if _, err := auth(user("carol")); err == nil || !strings.Contains(err.Error(), "too many connections;") {
			t.Fatalf("carol into the reserve: %v", err)
		}
		// The reserve is the upload principal's and the nodes'.
		if _, err := auth(draupnir.Principal{Name: "n1", Node: true}); err != nil {
			t.Fatalf("a node into the reserve: %v", err)
		}
		if _, err := auth(upload); err != nil {
			t.Fatalf("upload: %v", err)
		}
		if _, err := auth(upload); err == nil {
			t.Fatal("upload beyond the total")
		}
		l.release(alice[0])
		if _, err := auth(user("carol")); err != nil {
			t.Fatalf("carol after alice left one: %v", err)
		}
		if h, a := l.counts(); h != 3 || a != 6 {
			t.Errorf("counts %d handshakes, %d authenticated; want 3, 6", h, a)
		}
	})
}

// TestHandshakeFlood floods the real server with connections that never
// authenticate, from several addresses, and checks that the upload key and
// a user still get in with OpenSSH.
func TestHandshakeFlood(t *testing.T) {
	lim := limitsFor(defaultMaxConnections)
	tests := []struct {
		name      string
		addresses int // flooding from 127.0.0.2, 127.0.0.3, …
		each      int
		greeted   int // connections the server answered (0: any)
	}{
		// As measured against the old caps: 80 connections, 16 per address.
		{"five addresses, sixteen each", 5, 16, 5 * lim.perSource},
		// More addresses than the handshake room holds at the per-source
		// cap: newcomers evict the oldest handshakes of the biggest holders.
		{"twenty addresses, four each", 20, 4, 0},
		{"forty addresses, one each", 40, 1, 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var flood, greeted []net.Conn
			t.Cleanup(func() { closeAll(flood) })
			for a := 0; a < tt.addresses; a++ {
				src := fmt.Sprintf("127.0.0.%d", a+2)
				for i := 0; i < tt.each; i++ {
					c := e.dial(t, src)
					flood = append(flood, c)
					if greets(t, c) {
						greeted = append(greeted, c)
					}
				}
			}
			want := min(tt.addresses*min(tt.each, lim.perSource), lim.handshakes)
			if h, _ := e.srv.lim.counts(); h != want {
				t.Errorf("%d handshakes held, want %d", h, want)
			}
			if tt.greeted != 0 && len(greeted) != tt.greeted {
				t.Errorf("%d connections answered, want %d", len(greeted), tt.greeted)
			}
			// Those evicted to make room were really closed.
			if closed := waitClosed(t, greeted, len(greeted)-want); closed != len(greeted)-want {
				t.Errorf("%d answered connections closed, want %d", closed, len(greeted)-want)
			}
			e.mustGetIn("upload", "alice")
		})
	}
	t.Run("stalled handshakes that offered a known key", func(t *testing.T) {
		// Public keys are public: offering the upload key without ever
		// signing is still a handshake, counted against its source.
		e := newEnv(t)
		signer := e.signer(t, "upload")
		release := make(chan struct{})
		var stalled []net.Conn
		t.Cleanup(func() { closeAll(stalled); close(release) })
		for i := 0; i < lim.perSource; i++ {
			c := e.dial(t, "127.0.0.2")
			stalled = append(stalled, c)
			cfg := &gossh.ClientConfig{
				User:            "upload",
				Auth:            []gossh.AuthMethod{gossh.PublicKeys(stallingSigner{signer, release})},
				HostKeyCallback: gossh.InsecureIgnoreHostKey(),
			}
			go gossh.NewClientConn(c, e.host, cfg) // ends when c closes
		}
		waitFor(t, func() bool { h, _ := e.srv.lim.counts(); return h == lim.perSource })
		if r := e.ssh("upload", nil, []string{"-b", "127.0.0.2"}, "hello"); r.code != 255 {
			t.Errorf("one handshake more from the stalled address: exit %d, want 255; %s", r.code, r.stderr)
		}
		e.mustGetIn("upload", "alice")
	})
	t.Run("handshake timeout", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { o.HandshakeTimeout = 100 * time.Millisecond })
		c := e.dial(t, "127.0.0.1")
		defer c.Close()
		// Say nothing: the server must hang up (well before this deadline).
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("server kept a silent connection open")
		}
		waitFor(t, func() bool { h, _ := e.srv.lim.counts(); return h == 0 })
	})
}

// TestIPv6Flood floods from many addresses of one IPv6 /64, inside a network
// namespace of its own: the /64 gets one source's share, and clients from
// another /64 get in.
func TestIPv6Flood(t *testing.T) {
	ns := newNetns(t)
	const flooders = 20
	var addrs []string
	for i := 1; i <= flooders; i++ {
		addrs = append(addrs, fmt.Sprintf("fd00:64::%x/64", i))
	}
	ns.addAddrs(t, append(addrs, "fd00:64::99/64", "fd00:65::1/64")...)
	e := newEnvIn(t, ns, "fd00:65::1")
	lim := limitsFor(defaultMaxConnections)
	var flood []net.Conn
	t.Cleanup(func() { closeAll(flood) })
	var greeted int
	for i := 1; i <= flooders; i++ {
		for j := 0; j < 2; j++ { // under any per-address cap
			c := e.dial(t, fmt.Sprintf("fd00:64::%x", i))
			flood = append(flood, c)
			if greets(t, c) {
				greeted++
			}
		}
	}
	if h, _ := e.srv.lim.counts(); greeted != lim.perSource || h != greeted {
		t.Errorf("%d connections from one /64 answered, %d held, want %d", greeted, h, lim.perSource)
	}
	if r := e.ssh("upload", nil, []string{"-b", "fd00:64::99"}, "hello"); r.code != 255 {
		t.Errorf("from a fresh address of the flooding /64: exit %d, want 255; %s", r.code, r.stderr)
	}
	e.mustGetIn("upload", "alice")
}

// TestPrincipalCaps has one principal, then every user, hold as many
// authenticated connections as they may: the others, and the upload
// principal in its reserved room, still get in.
func TestPrincipalCaps(t *testing.T) {
	const n = 16
	lim := limitsFor(n) // 4 per principal, 2 reserved for upload
	e := newEnv(t, func(o *Options) { o.MaxConnections = n })
	held := map[string][]*gossh.Client{}
	t.Cleanup(func() {
		for _, cs := range held {
			for _, c := range cs {
				c.Close()
			}
		}
	})
	hold := func(who string, k int) {
		t.Helper()
		for i := 0; i < k; i++ {
			c, err := e.client(who)
			if err != nil {
				t.Fatalf("%s's connection %d: %v", who, i+1, err)
			}
			// Sessions open on each connection, as an interactive user would.
			for j := 0; j < maxSessionsPerConn; j++ {
				if _, err := c.NewSession(); err != nil {
					t.Fatalf("%s's session %d: %v", who, j+1, err)
				}
			}
			held[who] = append(held[who], c)
		}
	}
	hold("alice", lim.perPrincipal)
	e.mustBeRefused("alice", "too many connections for alice@example.com (at most 4 at once)")
	e.mustGetIn("upload", "bob")

	// Fill the users' room: 4 + 4 + 4 + 2 of 16, 2 left for upload.
	hold("bob", lim.perPrincipal)
	hold("carol", lim.perPrincipal)
	hold("dave", n-lim.reserve-3*lim.perPrincipal)
	e.mustBeRefused("dave", "the server has too many connections")
	e.mustGetIn("upload")
	hold("upload", lim.reserve)
	e.mustBeRefused("upload", "the server has too many connections")

	held["alice"][0].Close()
	waitFor(t, func() bool { _, a := e.srv.lim.counts(); return a == n-1 })
	e.mustGetIn("dave")
}

// dial opens a raw TCP connection to the server from address src.
func (e *env) dial(t *testing.T, src string) net.Conn {
	t.Helper()
	var c net.Conn
	err := e.ns.do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(e.host, strconv.Itoa(e.port)))
		return err
	})
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	return c
}

func (e *env) signer(t *testing.T, who string) gossh.Signer {
	t.Helper()
	data, err := os.ReadFile(e.keys[who])
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

// client is an authenticated Go SSH connection of who.
func (e *env) client(who string) (*gossh.Client, error) {
	return gossh.Dial("tcp", net.JoinHostPort(e.host, strconv.Itoa(e.port)), &gossh.ClientConfig{
		User:            who,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(e.signer(e.t, who))},
		HostKeyCallback: gossh.FixedHostKey(e.srv.PublicKey()),
		Timeout:         10 * time.Second,
	})
}

// mustGetIn checks that each of who runs a command with OpenSSH.
func (e *env) mustGetIn(who ...string) {
	e.t.Helper()
	for _, w := range who {
		if r := e.ssh(w, nil, nil, "hello"); r.code != 0 || !strings.Contains(r.stdout, "ran") {
			e.t.Errorf("%s: exit %d, stdout %q, stderr %q", w, r.code, r.stdout, r.stderr)
		}
	}
}

// mustBeRefused checks that OpenSSH, as who, is refused and prints why.
func (e *env) mustBeRefused(who, why string) {
	e.t.Helper()
	// The reason comes as an authentication banner, which OpenSSH prints
	// from LogLevel INFO on (the first -o wins).
	r := e.ssh(who, nil, []string{"-o", "LogLevel=INFO"}, "hello")
	if r.code != 255 || !strings.Contains(r.stderr, "draupnir: "+why) {
		e.t.Errorf("%s: exit %d, stderr %q; want 255 and %q", who, r.code, r.stderr, why)
	}
}

// greets reports whether the server answered c with its version line
// (true) or closed it at once (false).
func greets(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	line := make([]byte, 0, 64)
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			if len(line) == 0 && errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return false
			}
			t.Fatalf("reading the server's version: %v after %q", err, line)
		}
		if line = append(line, b[0]); b[0] == '\n' {
			if !strings.HasPrefix(string(line), "SSH-2.0-Draupnir") {
				t.Fatalf("server said %q", line)
			}
			return true
		}
	}
}

// waitClosed waits until want of cs have been closed by the server (up to
// waitFor's patience) and returns how many were.
func waitClosed(t *testing.T, cs []net.Conn, want int) int {
	t.Helper()
	var closed atomic.Int32
	for _, c := range cs {
		go func() {
			if _, err := io.Copy(io.Discard, c); err == nil || !errors.Is(err, net.ErrClosed) {
				closed.Add(1) // EOF or reset from the server, not our own Close
			}
		}()
	}
	for i := 0; i < 1000 && int(closed.Load()) < want; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return int(closed.Load())
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
