package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/draupnir-db/draupnir"
)

// Lifetimes of the login's one-time values.
const (
	// loginTTL bounds the time a person has to log in at the provider.
	loginTTL = 10 * time.Minute
	// codeTTL bounds the time between the redirect to the CLI's loopback
	// listener and the CLI redeeming the code: a few requests' worth.
	codeTTL = 60 * time.Second
	// maxPending bounds the logins and codes held in memory, so that a flood
	// of /authenticate requests cannot exhaust it.
	maxPending = 10000
)

// TokenIssuer issues Draupnir access tokens; *Store is one.
type TokenIssuer interface {
	IssueToken(ctx context.Context, p draupnir.Principal, description string, ttl time.Duration) (string, draupnir.Token, error)
}

// LoginOptions configure a Login.
type LoginOptions struct {
	IssuerURL    string // OIDC discovery: IssuerURL/.well-known/openid-configuration
	ClientID     string
	ClientSecret string
	RedirectURL  string // this server's /oauth_callback, as registered at the provider
	// Domain is trusted_user_email_domain ("@example.com"): only verified
	// emails ending with it may log in. Empty refuses every login.
	Domain string
	Tokens TokenIssuer
	// TokenTTL is the lifetime of issued tokens; ≤ 0: DefaultTokenTTL.
	TokenTTL time.Duration
	// HTTPClient talks to the provider; nil: a client with a 30 s timeout.
	HTTPClient *http.Client
	Log        *slog.Logger
}

// Login runs the OpenID Connect authorisation-code flow for the CLI. The
// server is the OAuth client towards the provider (state, nonce and PKCE),
// and the CLI is a public client of the server (its own state and PKCE,
// with a loopback redirect URI, RFC 8252): the browser's part is a chain of
// plain redirects, and the access token only ever travels in the CLI's
// direct request to the server.
type Login struct {
	opts LoginOptions
	log  *slog.Logger
	now  func() time.Time

	discoverMu sync.Mutex
	provider   *oidc.Provider // nil until discovery succeeded

	mu      sync.Mutex
	pending map[string]*pendingLogin // by the state sent to the provider
	codes   map[[32]byte]*loginCode  // by the SHA-256 of the one-time code
}

// pendingLogin is a login between /authenticate and /oauth_callback.
type pendingLogin struct {
	nonce, verifier string // towards the provider
	clientRedirect  string // the CLI's loopback URI
	clientState     string
	clientChallenge string // S256 of the CLI's verifier
	expires         time.Time
}

// loginCode is a successful login waiting for the CLI to redeem it.
type loginCode struct {
	principal      draupnir.Principal
	clientRedirect string
	challenge      string
	expires        time.Time
}

// NewLogin returns a Login. The provider is discovered on first use, so
// that a provider that is down does not keep the server from starting.
func NewLogin(opts LoginOptions) (*Login, error) {
	if opts.ClientID == "" || opts.ClientSecret == "" {
		return nil, fmt.Errorf("oauth.client_id and oauth.client_secret are required for logins")
	}
	if opts.IssuerURL == "" {
		return nil, fmt.Errorf("oauth.issuer_url is required for logins")
	}
	if u, err := url.Parse(opts.RedirectURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("oauth.redirect_url must be this server's absolute /oauth_callback URL, got %q", opts.RedirectURL)
	}
	if opts.Tokens == nil {
		return nil, fmt.Errorf("auth: LoginOptions.Tokens is required")
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Domain == "" {
		opts.Log.Warn("trusted_user_email_domain is not set: every login will be refused")
	}
	return &Login{
		opts:    opts,
		log:     opts.Log,
		now:     time.Now,
		pending: map[string]*pendingLogin{},
		codes:   map[[32]byte]*loginCode{},
	}, nil
}

// discover returns the provider, fetching its discovery document once.
func (l *Login) discover(ctx context.Context) (*oidc.Provider, error) {
	l.discoverMu.Lock()
	defer l.discoverMu.Unlock()
	if l.provider != nil {
		return l.provider, nil
	}
	// The provider keeps the HTTP client of this context to fetch signing
	// keys later, and ignores its cancellation.
	dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, l.opts.HTTPClient), 30*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(dctx, l.opts.IssuerURL)
	if err != nil {
		// The issuer is public (browsers are sent there); the cause, which
		// may name internal hosts and proxies, is for the log only.
		l.log.WarnContext(ctx, "identity provider discovery failed", "issuer", l.opts.IssuerURL, "err", err)
		return nil, &draupnir.Error{Kind: draupnir.KindUnavailable,
			Msg: fmt.Sprintf("the identity provider %s cannot be reached; try again shortly", l.opts.IssuerURL), Err: err}
	}
	l.provider = p
	return p, nil
}

func (l *Login) oauthConfig(p *oidc.Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     l.opts.ClientID,
		ClientSecret: l.opts.ClientSecret,
		RedirectURL:  l.opts.RedirectURL,
		Endpoint:     p.Endpoint(),
		Scopes:       []string{oidc.ScopeOpenID, "email"},
	}
}

// randomString returns n random bytes, base64url.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// CheckLoopbackRedirect accepts only the CLI's loopback listener as a
// redirect target: http to a literal loopback address with a port (RFC 8252
// §7.3), so that a login can never be sent anywhere else.
func CheckLoopbackRedirect(raw string) error {
	invalid := func(why string) error {
		return &draupnir.Error{Kind: draupnir.KindInvalid, Field: "redirect_uri",
			Msg: "redirect_uri must be http://127.0.0.1:PORT/… or http://[::1]:PORT/… (the CLI's loopback listener): " + why}
	}
	if len(raw) > 512 {
		return invalid("too long")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("not a URL")
	}
	if u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return invalid("wrong form")
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() || u.Port() == "" {
		return invalid("not a loopback address with a port")
	}
	return nil
}

// validClientValue accepts the CLI's state and PKCE values: RFC 7636's
// unreserved characters, 16 to 128 of them.
func validClientValue(s string) bool {
	if len(s) < 16 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~", r)) {
			return false
		}
	}
	return true
}

// Begin starts a login for the CLI listening at redirectURI with its state
// and S256 code challenge, and returns the provider's URL to send the
// browser to.
func (l *Login) Begin(ctx context.Context, redirectURI, state, challenge, method string) (string, error) {
	if err := CheckLoopbackRedirect(redirectURI); err != nil {
		return "", err
	}
	if !validClientValue(state) {
		return "", &draupnir.Error{Kind: draupnir.KindInvalid, Field: "state", Msg: "state must be 16-128 characters of A-Z a-z 0-9 - . _ ~"}
	}
	if method != "" && method != "S256" {
		return "", &draupnir.Error{Kind: draupnir.KindInvalid, Field: "code_challenge_method", Msg: "code_challenge_method must be S256"}
	}
	if len(challenge) != 43 || !validClientValue(challenge) {
		return "", &draupnir.Error{Kind: draupnir.KindInvalid, Field: "code_challenge", Msg: "code_challenge must be the 43-character S256 challenge of a PKCE verifier"}
	}
	p, err := l.discover(ctx)
	if err != nil {
		return "", err
	}
	pl := &pendingLogin{
		nonce:           randomString(32),
		verifier:        oauth2.GenerateVerifier(),
		clientRedirect:  redirectURI,
		clientState:     state,
		clientChallenge: challenge,
		expires:         l.now().Add(loginTTL),
	}
	providerState := randomString(32)
	l.mu.Lock()
	l.sweepLocked()
	if len(l.pending) >= maxPending {
		// Make room by forgetting the oldest login rather than refusing
		// this one: a flood of /authenticate requests then only hurts a
		// login that is slower than the flood is to fill the table.
		var oldest string
		for k, v := range l.pending {
			if oldest == "" || v.expires.Before(l.pending[oldest].expires) {
				oldest = k
			}
		}
		delete(l.pending, oldest)
	}
	l.pending[providerState] = pl
	l.mu.Unlock()
	return l.oauthConfig(p).AuthCodeURL(providerState, oidc.Nonce(pl.nonce), oauth2.S256ChallengeOption(pl.verifier)), nil
}

// sweepLocked forgets expired logins and codes.
func (l *Login) sweepLocked() {
	now := l.now()
	for k, v := range l.pending {
		if now.After(v.expires) {
			delete(l.pending, k)
		}
	}
	for k, v := range l.codes {
		if now.After(v.expires) {
			delete(l.codes, k)
		}
	}
}

// Callback handles the provider's redirect to /oauth_callback (its query
// in q). It returns where to send the browser: the CLI's loopback with a
// one-time code, or with error and error_description if the login was
// refused. A state this server did not issue, or one already used, is a
// KindInvalid error: there is no CLI to tell.
func (l *Login) Callback(ctx context.Context, q url.Values) (string, error) {
	state := q.Get("state")
	l.mu.Lock()
	pl, ok := l.pending[state]
	delete(l.pending, state) // single use, whatever happens next
	l.mu.Unlock()
	if state == "" || !ok {
		return "", draupnir.Errorf(draupnir.KindInvalid, "this login is unknown or was already completed; run authenticate again")
	}
	refuse := func(code, why string) (string, error) {
		return clientRedirect(pl.clientRedirect, url.Values{
			"error": {code}, "error_description": {why}, "state": {pl.clientState},
		}), nil
	}
	if l.now().After(pl.expires) {
		return refuse("access_denied", "the login took too long; run authenticate again")
	}
	if e := q.Get("error"); e != "" {
		l.log.InfoContext(ctx, "login refused by the identity provider", "error", truncate(e, 100), "description", truncate(q.Get("error_description"), 200))
		return refuse("access_denied", "the identity provider refused the login: "+truncate(e, 100))
	}
	p, err := l.login(ctx, q.Get("code"), pl)
	if err != nil {
		if draupnir.KindOf(err) == draupnir.KindForbidden {
			l.log.InfoContext(ctx, "login refused", "reason", err.Error())
			return refuse("access_denied", draupnir.ClientMessage(err))
		}
		l.log.WarnContext(ctx, "login failed", "err", err)
		return refuse("server_error", "the login could not be completed: "+draupnir.ClientMessage(err))
	}
	code := randomString(32)
	l.mu.Lock()
	l.sweepLocked()
	full := len(l.codes) >= maxPending
	if !full {
		l.codes[sha256.Sum256([]byte(code))] = &loginCode{
			principal: p, clientRedirect: pl.clientRedirect, challenge: pl.clientChallenge,
			expires: l.now().Add(codeTTL),
		}
	}
	l.mu.Unlock()
	if full {
		return refuse("temporarily_unavailable", "too many logins in progress; try again in a few minutes")
	}
	l.log.InfoContext(ctx, "login succeeded", "principal", p.Name)
	return clientRedirect(pl.clientRedirect, url.Values{"code": {code}, "state": {pl.clientState}}), nil
}

// idClaims are the ID token claims a login looks at.
type idClaims struct {
	Email         string          `json:"email"`
	EmailVerified json.RawMessage `json:"email_verified"`
}

// verified reads email_verified, which some providers send as a string.
func (c idClaims) verified() bool {
	s := strings.Trim(string(c.EmailVerified), `"`)
	return s == "true"
}

// login exchanges the provider's code and checks the ID token: signature,
// issuer, audience and expiry (go-oidc), nonce, verified email and domain.
// Refusals are KindForbidden.
func (l *Login) login(ctx context.Context, code string, pl *pendingLogin) (draupnir.Principal, error) {
	if code == "" {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the identity provider sent no code")
	}
	prov, err := l.discover(ctx)
	if err != nil {
		return draupnir.Principal{}, err
	}
	ctx = oidc.ClientContext(ctx, l.opts.HTTPClient)
	tok, err := l.oauthConfig(prov).Exchange(ctx, code, oauth2.VerifierOption(pl.verifier))
	if err != nil {
		return draupnir.Principal{}, fmt.Errorf("exchanging the code at the identity provider: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the identity provider sent no ID token")
	}
	idt, err := prov.Verifier(&oidc.Config{ClientID: l.opts.ClientID, Now: l.now}).Verify(ctx, raw)
	if err != nil {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the ID token is not valid: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(pl.nonce)) != 1 {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the ID token's nonce does not match this login")
	}
	var c idClaims
	if err := idt.Claims(&c); err != nil {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the ID token's claims cannot be read: %w", err)
	}
	email := strings.ToLower(strings.TrimSpace(c.Email))
	switch {
	case email == "":
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the identity provider gave no email address (is the email scope allowed?)")
	case !c.verified():
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "the email address %s is not verified", email)
	case !TrustedEmail(email, l.opts.Domain):
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindForbidden, "%s is not an address of the trusted domain", email)
	}
	return draupnir.Principal{Name: email}, nil
}

// TrustedEmail reports whether email is a single address whose domain is
// exactly domain ("@example.com"; case-insensitive). A sub-domain is not
// the domain.
func TrustedEmail(email, domain string) bool {
	if !strings.HasPrefix(domain, "@") || len(domain) < 2 {
		return false
	}
	email = strings.ToLower(email)
	if strings.Count(email, "@") != 1 || strings.IndexFunc(email, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return false
	}
	return strings.HasSuffix(email, strings.ToLower(domain)) && len(email) > len(domain)
}

// clientRedirect appends q to the CLI's loopback URI.
func clientRedirect(base string, q url.Values) string {
	u, _ := url.Parse(base) // checked by Begin
	v := u.Query()
	for k, vs := range q {
		v[k] = vs
	}
	u.RawQuery = v.Encode()
	return u.String()
}

// Redeem exchanges a one-time login code for an access token. The code
// works once, within a minute, for the redirect URI it was sent to, and
// only with the verifier whose S256 is the challenge Begin was given.
func (l *Login) Redeem(ctx context.Context, code, verifier, redirectURI, description string) (string, draupnir.Token, error) {
	h := sha256.Sum256([]byte(code))
	l.mu.Lock()
	c, ok := l.codes[h]
	delete(l.codes, h) // a wrong verifier burns the code too
	l.mu.Unlock()
	invalid := draupnir.Errorf(draupnir.KindInvalid, "the login code is unknown, already used, expired or not yours; run authenticate again")
	if !ok || l.now().After(c.expires) {
		return "", draupnir.Token{}, invalid
	}
	if redirectURI != "" && redirectURI != c.clientRedirect {
		return "", draupnir.Token{}, invalid
	}
	got := oauth2.S256ChallengeFromVerifier(verifier)
	if verifier == "" || subtle.ConstantTimeCompare([]byte(got), []byte(c.challenge)) != 1 {
		return "", draupnir.Token{}, invalid
	}
	return l.opts.Tokens.IssueToken(ctx, c.principal, description, l.opts.TokenTTL)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
