package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

func tokenOf(r *wire.TokenResource) draupnir.Token {
	a := &r.Attributes
	return draupnir.Token{ID: int64(r.ID), Secret: a.Token, Principal: a.Principal, Description: a.Description,
		CreatedAt: a.CreatedAt.Time, ExpiresAt: a.ExpiresAt.Time, LastUsedAt: a.LastUsedAt.Time, Current: a.Current}
}

func keyOf(r *wire.KeyResource) draupnir.Key {
	a := &r.Attributes
	return draupnir.Key{ID: int64(r.ID), Fingerprint: a.Fingerprint, PublicKey: a.PublicKey, Comment: a.Comment,
		Principal: a.Principal, CreatedAt: a.CreatedAt.Time}
}

// LoginURL is the page the browser opens to log in: the server sends it on
// to the identity provider, and in the end back to redirectURI (the CLI's
// loopback listener) with state and a one-time code for RedeemLogin, whose
// verifier has the S256 challenge given here.
func (c *Client) LoginURL(redirectURI, state, challenge string) string {
	q := url.Values{
		"redirect_uri":          {redirectURI},
		"state":                 {state},
		"code_challenge":        {challenge},
		"code_challenge_method": {"S256"},
	}
	return c.base + "/authenticate?" + q.Encode()
}

// BeginLogin starts a login as the browser would by opening LoginURL, but
// without following the server's redirect: it returns the identity
// provider's URL that the browser is to open. A server that cannot start a
// login (none configured, the provider unreachable, a parameter refused)
// answers with an error here, before anyone waits for a browser.
func (c *Client) BeginLogin(ctx context.Context, redirectURI, state, challenge string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.LoginURL(redirectURI, state, challenge), nil)
	if err != nil {
		return "", fmt.Errorf("bad server URL %q: %w", c.base, err)
	}
	// Our version asks for errors in our shape; the route needs no token.
	req.Header.Set(wire.HeaderVersion, c.version)
	req.Header.Set("Accept", "application/json")
	hc := *c.http
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Do(req)
	if err != nil {
		return "", c.unreachable(req, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxResponseBytes)
	if resp.StatusCode != http.StatusFound {
		if resp.StatusCode < 400 {
			return "", fmt.Errorf("%s %s: unexpected answer %s; is it a Draupnir server?", req.Method, req.URL.Redacted(), resp.Status)
		}
		return "", c.responseError(req, resp, body)
	}
	_, _ = io.Copy(io.Discard, body)
	// The browser is told to open this, so only a web page will do: never
	// another scheme a desktop would hand to some other program.
	raw := resp.Header.Get("Location")
	loc, err := url.Parse(raw)
	if err != nil || (loc.Scheme != "https" && loc.Scheme != "http") || loc.Host == "" || loc.User != nil {
		if len(raw) > 200 {
			raw = raw[:200] + "…"
		}
		return "", fmt.Errorf("%s sent the login to %q, which is not an http(s) URL", c.base, raw)
	}
	return loc.String(), nil
}

// RedeemLogin exchanges the one-time code of a login for an access token
// (Token.Secret). description says where the token is used.
func (c *Client) RedeemLogin(ctx context.Context, code, verifier, redirectURI, description string) (draupnir.Token, error) {
	body := wire.NewRequest(wire.TypeTokenRequests, 0, wire.TokenRequest{
		Code: &code, CodeVerifier: &verifier, RedirectURI: &redirectURI, Description: &description})
	var doc wire.Document[wire.TokenResource]
	if err := c.do(ctx, http.MethodPost, "/authenticate/token", body, http.StatusCreated, &doc); err != nil {
		return draupnir.Token{}, err
	}
	return tokenOf(&doc.Data), nil
}

// ListTokens returns the caller's unexpired access tokens.
func (c *Client) ListTokens(ctx context.Context) ([]draupnir.Token, error) {
	var doc wire.Document[[]wire.TokenResource]
	if err := c.do(ctx, http.MethodGet, "/tokens", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]draupnir.Token, len(doc.Data))
	for i := range doc.Data {
		out[i] = tokenOf(&doc.Data[i])
	}
	return out, nil
}

// RevokeToken revokes the caller's token id.
func (c *Client) RevokeToken(ctx context.Context, id int64) error {
	return c.do(ctx, http.MethodDelete, "/tokens/"+strconv.FormatInt(id, 10), nil, http.StatusNoContent, nil)
}

// Logout revokes the token this client authenticates with.
func (c *Client) Logout(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/tokens/current", nil, http.StatusNoContent, nil)
}

// ListKeys returns the caller's registered SSH keys.
func (c *Client) ListKeys(ctx context.Context) ([]draupnir.Key, error) {
	var doc wire.Document[[]wire.KeyResource]
	if err := c.do(ctx, http.MethodGet, "/keys", nil, http.StatusOK, &doc); err != nil {
		return nil, err
	}
	out := make([]draupnir.Key, len(doc.Data))
	for i := range doc.Data {
		out[i] = keyOf(&doc.Data[i])
	}
	return out, nil
}

// AddKey registers an SSH public key (a line of a .pub file) for the
// caller, so that `ssh` sessions with it act as the caller.
func (c *Client) AddKey(ctx context.Context, publicKey string) (draupnir.Key, error) {
	body := wire.NewRequest(wire.TypeKeys, 0, wire.KeyCreate{PublicKey: &publicKey})
	var doc wire.Document[wire.KeyResource]
	if err := c.do(ctx, http.MethodPost, "/keys", body, http.StatusCreated, &doc); err != nil {
		return draupnir.Key{}, err
	}
	return keyOf(&doc.Data), nil
}

// RemoveKey removes the caller's registered key id.
func (c *Client) RemoveKey(ctx context.Context, id int64) error {
	return c.do(ctx, http.MethodDelete, "/keys/"+strconv.FormatInt(id, 10), nil, http.StatusNoContent, nil)
}
