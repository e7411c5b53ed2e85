package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/oauth2-proxy/mockoidc"

	"github.com/draupnir-db/draupnir"
)

func TestTrustedEmail(t *testing.T) {
	tests := []struct {
		email, domain string
		want          bool
	}{
		{"jane@example.com", "@example.com", true},
		{"Jane@EXAMPLE.com", "@example.com", true},
		{"jane@example.com", "@Example.COM", true},
		{"jane@evil.example.com", "@example.com", false}, // a sub-domain is another domain
		{"jane@example.com.evil", "@example.com", false},
		{"jane@notexample.com", "@example.com", false},
		{"a@b@example.com", "@example.com", false},
		{"@example.com", "@example.com", false},
		{"jane @example.com", "@example.com", false},
		{"jane@example.com", "", false}, // no domain configured: nobody
		{"jane@example.com", "example.com", false},
	}
	for _, tt := range tests {
		if got := TrustedEmail(tt.email, tt.domain); got != tt.want {
			t.Errorf("TrustedEmail(%q, %q) = %v, want %v", tt.email, tt.domain, got, tt.want)
		}
	}
}

func TestCheckLoopbackRedirect(t *testing.T) {
	tests := []struct {
		uri string
		ok  bool
	}{
		{"http://127.0.0.1:1234/callback", true},
		{"http://[::1]:1234/callback", true},
		{"http://127.0.0.1:1234/callback?x=1", true},
		{"http://localhost:1234/callback", false}, // names can be re-pointed; RFC 8252 §8.3
		{"https://127.0.0.1:1234/callback", false},
		{"http://127.0.0.1/callback", false},
		{"http://example.com:1234/callback", false},
		{"http://127.0.0.1.evil.example:1234/", false},
		{"http://user@127.0.0.1:1234/", false},
		{"http://127.0.0.1:1234/#frag", false},
		{"javascript:alert(1)", false},
		{"", false},
	}
	for _, tt := range tests {
		err := CheckLoopbackRedirect(tt.uri)
		if (err == nil) != tt.ok {
			t.Errorf("CheckLoopbackRedirect(%q) = %v, want ok=%v", tt.uri, err, tt.ok)
		}
		if err != nil && draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Errorf("CheckLoopbackRedirect(%q): kind %v, want invalid", tt.uri, draupnir.KindOf(err))
		}
	}
}

// fakeIssuer issues tokens without a database.
type fakeIssuer struct{ issued []draupnir.Principal }

func (f *fakeIssuer) IssueToken(_ context.Context, p draupnir.Principal, _ string, _ time.Duration) (string, draupnir.Token, error) {
	f.issued = append(f.issued, p)
	return "drp_fake", draupnir.Token{ID: int64(len(f.issued)), Principal: p.Name}, nil
}

// TestLoginFlow drives Login against mockoidc, playing the browser by hand:
// Begin, the provider's redirect, Callback, Redeem.
func TestLoginFlow(t *testing.T) {
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Shutdown() })
	issuer := &fakeIssuer{}
	l, err := NewLogin(LoginOptions{
		IssuerURL: idp.Issuer(), ClientID: idp.ClientID, ClientSecret: idp.ClientSecret,
		RedirectURL: "http://draupnir.test/oauth_callback", Domain: "@example.com", Tokens: issuer,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const redirect = "http://127.0.0.1:5555/callback"
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	// start returns the query the provider sends back to /oauth_callback.
	start := func(t *testing.T, state, verifier string) url.Values {
		t.Helper()
		sum := sha256.Sum256([]byte(verifier))
		loc, err := l.Begin(ctx, redirect, state, base64.RawURLEncoding.EncodeToString(sum[:]), "S256")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := noFollow.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		u, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || !strings.HasPrefix(u.String(), "http://draupnir.test/oauth_callback") {
			t.Fatalf("provider redirected to %q (%s)", resp.Header.Get("Location"), resp.Status)
		}
		return u.Query()
	}
	back := func(t *testing.T, q url.Values) url.Values {
		t.Helper()
		loc, err := l.Callback(ctx, q)
		if err != nil {
			t.Fatalf("Callback: %v", err)
		}
		u, _ := url.Parse(loc)
		if !strings.HasPrefix(loc, redirect+"?") {
			t.Fatalf("Callback sent the browser to %q", loc)
		}
		return u.Query()
	}

	const state, verifier = "client-state-0123456789", "client-verifier-0123456789-0123456789-0123456789"
	idp.QueueUser(&mockoidc.MockUser{Subject: "1", Email: "Jane@example.com", EmailVerified: true})
	cb := start(t, state, verifier)
	got := back(t, cb)
	if got.Get("state") != state || got.Get("code") == "" {
		t.Fatalf("loopback query %v", got)
	}
	if _, err := l.Callback(ctx, cb); draupnir.KindOf(err) != draupnir.KindInvalid {
		t.Errorf("replayed callback: %v, want invalid", err)
	}
	if _, _, err := l.Redeem(ctx, got.Get("code"), verifier, "http://127.0.0.1:6666/callback", ""); err == nil {
		t.Error("redeemed for another redirect URI")
	}
	// That attempt burnt the code.
	if _, _, err := l.Redeem(ctx, got.Get("code"), verifier, redirect, ""); err == nil {
		t.Error("a code redeemed after a failed attempt")
	}

	idp.QueueUser(&mockoidc.MockUser{Subject: "1", Email: "jane@example.com", EmailVerified: true})
	got = back(t, start(t, state, verifier))
	secret, tok, err := l.Redeem(ctx, got.Get("code"), verifier, redirect, "test")
	if err != nil || secret == "" || tok.Principal != "jane@example.com" {
		t.Fatalf("Redeem = %q, %+v, %v", secret, tok, err)
	}

	// An expired code is refused.
	idp.QueueUser(&mockoidc.MockUser{Subject: "1", Email: "jane@example.com", EmailVerified: true})
	got = back(t, start(t, state, verifier))
	l.now = func() time.Time { return time.Now().Add(2 * codeTTL) }
	if _, _, err := l.Redeem(ctx, got.Get("code"), verifier, redirect, ""); err == nil {
		t.Error("an expired code was redeemed")
	}
	l.now = time.Now

	for _, bad := range []struct{ redirect, state, challenge, method string }{
		{"http://evil.example:1/cb", state, strings.Repeat("a", 43), "S256"},
		{redirect, "short", strings.Repeat("a", 43), "S256"},
		{redirect, state, strings.Repeat("a", 43), "plain"},
		{redirect, state, "too-short", "S256"},
	} {
		if _, err := l.Begin(ctx, bad.redirect, bad.state, bad.challenge, bad.method); draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Errorf("Begin(%+v) = %v, want invalid", bad, err)
		}
	}
	if len(issuer.issued) != 1 {
		t.Errorf("issued %d tokens, want 1", len(issuer.issued))
	}
}

// TestLoginProviderDownHidesCause checks that an unreachable identity
// provider is reported as unavailable without the transport error.
func TestLoginProviderDownHidesCause(t *testing.T) {
	l, err := NewLogin(LoginOptions{
		IssuerURL: "http://127.0.0.1:1/realms/x", ClientID: "id", ClientSecret: "secret",
		RedirectURL: "http://127.0.0.1:8080/oauth_callback", Domain: "@example.com", Tokens: &Store{},
	})
	if err != nil {
		t.Fatal(err)
	}
	challenge := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	_, err = l.Begin(context.Background(), "http://127.0.0.1:4321/callback", "state-state-state-state", challenge, "S256")
	if draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Fatalf("got %v, want an unavailable error", err)
	}
	if msg := draupnir.ClientMessage(err); strings.Contains(msg, "refused") || strings.Contains(msg, "dial") {
		t.Errorf("client message %q carries the transport error", msg)
	}
}

// TestLoginFloodEvictsOldest: a full table of logins in progress makes room
// for a new login instead of refusing everyone for the login lifetime.
func TestLoginFloodEvictsOldest(t *testing.T) {
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Shutdown() })
	l, err := NewLogin(LoginOptions{
		IssuerURL: idp.Issuer(), ClientID: idp.ClientID, ClientSecret: idp.ClientSecret,
		RedirectURL: "http://draupnir.test/oauth_callback", Domain: "@example.com", Tokens: &fakeIssuer{},
	})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("verifier-verifier-verifier-verifier-verifier"))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	begin := func() string {
		t.Helper()
		loc, err := l.Begin(context.Background(), "http://127.0.0.1:5555/callback", "state-state-state-state", challenge, "S256")
		if err != nil {
			t.Fatalf("Begin with %d logins in progress: %v", len(l.pending), err)
		}
		u, _ := url.Parse(loc)
		return u.Query().Get("state")
	}
	first := begin()
	for i := 1; i < maxPending; i++ {
		begin()
	}
	last := begin() // the table is full here
	l.mu.Lock()
	_, firstKept := l.pending[first]
	_, lastKept := l.pending[last]
	n := len(l.pending)
	l.mu.Unlock()
	if firstKept || !lastKept || n != maxPending {
		t.Errorf("after a flood: oldest kept %v, newest kept %v, %d pending (max %d)", firstKept, lastKept, n, maxPending)
	}
}
