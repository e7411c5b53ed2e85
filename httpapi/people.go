package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// Login runs people's OpenID Connect login; *auth.Login satisfies it.
type Login interface {
	// Begin returns the identity provider's URL for a login of the CLI
	// listening at redirectURI.
	Begin(ctx context.Context, redirectURI, state, challenge, method string) (string, error)
	// Callback returns where to send the browser back from the provider.
	Callback(ctx context.Context, q url.Values) (string, error)
	// Redeem exchanges the CLI's one-time code for an access token.
	Redeem(ctx context.Context, code, verifier, redirectURI, description string) (string, draupnir.Token, error)
}

// People manages people's access tokens and SSH keys; *auth.Store
// satisfies it.
type People interface {
	ListTokens(ctx context.Context, p draupnir.Principal, current string) ([]draupnir.Token, error)
	RevokeToken(ctx context.Context, p draupnir.Principal, id int64) error
	Logout(ctx context.Context, token string) error
	AddKey(ctx context.Context, p draupnir.Principal, line string) (draupnir.Key, error)
	ListKeys(ctx context.Context, p draupnir.Principal) ([]draupnir.Key, error)
	RemoveKey(ctx context.Context, p draupnir.Principal, id int64) error
}

// routePeople registers the login routes (outside bearer authentication: a
// person without a token must reach them) and the token and key routes
// (users only; the gate is on the route group, not on an argument).
func (a *api) routePeople(e *echo.Echo, login Login, people People) {
	a.login, a.people = login, people
	e.GET("/authenticate", a.beginLogin)
	e.GET("/oauth_callback", a.oauthCallback)
	e.POST("/authenticate/token", a.redeemLogin, a.checkVersion, a.checkBody)
	e.POST("/access_tokens", originalLogin)
	if people == nil {
		return
	}
	user := []echo.MiddlewareFunc{a.checkVersion, a.authenticate, a.requireUser, a.checkBody}
	e.GET("/tokens", a.listTokens, user...)
	e.DELETE("/tokens/current", a.logout, user...)
	e.DELETE("/tokens/:id", a.revokeToken, user...)
	e.GET("/keys", a.listKeys, user...)
	e.POST("/keys", a.addKey, user...)
	e.DELETE("/keys/:id", a.removeKey, user...)
}

// requireUser lets only people through: the upload principal has no tokens
// or registered keys of its own.
func (a *api) requireUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if principal(c).Upload {
			return newError(http.StatusForbidden, codeForbidden,
				"the upload principal has no access tokens or registered keys; its keys are configured in ssh.upload_authorized_keys")
		}
		return next(c)
	}
}

func (a *api) loginConfigured() error {
	if a.login == nil {
		return newError(http.StatusServiceUnavailable, codeUnavailable,
			"this server has no login configured (oauth.client_id, oauth.client_secret, oauth.redirect_url); "+
				"ask its operator for an access token and store it with `draupnir-client authenticate --token -`")
	}
	return nil
}

// queryError turns a client mistake in a query parameter into a 400 (there
// is no document for a pointer to point into).
func queryError(err error) error {
	if k := draupnir.KindOf(err); k == draupnir.KindInvalid {
		return &apiError{Status: http.StatusBadRequest, Code: codeBadRequest, Detail: draupnir.ClientMessage(err), cause: err}
	}
	return err
}

// redirect answers 302 to loc without letting the code in it leak through a
// Referer header.
func redirect(c echo.Context, loc string) error {
	c.Response().Header().Set("Referrer-Policy", "no-referrer")
	return c.Redirect(http.StatusFound, loc)
}

// originalLogin answers the original Draupnir's login (GET
// /authenticate?state=… opened in a browser, and POST /access_tokens from
// its client), which this server does not offer, with what to do instead.
func originalLogin(echo.Context) error {
	return newError(http.StatusGone, codeUnsupportedLogin,
		"this server does not offer the original Draupnir's login; log in with this server's client, "+
			"`draupnir-client authenticate`, and give an original client the access token it stores (as its refresh_token)")
}

// beginLogin is GET /authenticate?redirect_uri=…&state=…&code_challenge=…
// (the browser's first stop): it redirects to the identity provider.
func (a *api) beginLogin(c echo.Context) error {
	q := c.QueryParams()
	if q.Has("state") && !q.Has("redirect_uri") && !q.Has("code_challenge") {
		return originalLogin(c)
	}
	if err := a.loginConfigured(); err != nil {
		return err
	}
	loc, err := a.login.Begin(c.Request().Context(), q.Get("redirect_uri"), q.Get("state"),
		q.Get("code_challenge"), q.Get("code_challenge_method"))
	if err != nil {
		return queryError(err)
	}
	return redirect(c, loc)
}

// oauthCallback is where the identity provider sends the browser back; it
// redirects to the CLI's loopback listener with a one-time code or an error.
func (a *api) oauthCallback(c echo.Context) error {
	if err := a.loginConfigured(); err != nil {
		return err
	}
	loc, err := a.login.Callback(c.Request().Context(), c.QueryParams())
	if err != nil {
		return queryError(err)
	}
	return redirect(c, loc)
}

// tokenResource renders t; secret is set only when the token is issued.
func tokenResource(t draupnir.Token, secret string) wire.TokenResource {
	return wire.TokenResource{Type: wire.TypeTokens, ID: wire.ID(t.ID), Attributes: wire.TokenAttributes{
		Token:       secret,
		Principal:   t.Principal,
		Description: t.Description,
		CreatedAt:   wire.NewTime(t.CreatedAt),
		ExpiresAt:   wire.NewTime(t.ExpiresAt),
		LastUsedAt:  wire.NewTime(t.LastUsedAt),
		Current:     t.Current,
	}}
}

// redeemLogin is POST /authenticate/token: the CLI's code and verifier for
// an access token.
func (a *api) redeemLogin(c echo.Context) error {
	if err := a.loginConfigured(); err != nil {
		return err
	}
	res, err := decodeResource(c.Request().Body, wire.TypeTokenRequests)
	if err != nil {
		return err
	}
	if err := noClientID(res); err != nil {
		return err
	}
	var attrs wire.TokenRequest
	if err := decodeAttributes(res, &attrs); err != nil {
		return err
	}
	if attrs.Code == nil || *attrs.Code == "" {
		return missing("code")
	}
	if attrs.CodeVerifier == nil || *attrs.CodeVerifier == "" {
		return missing("code_verifier")
	}
	var redirectURI, description string
	if attrs.RedirectURI != nil {
		redirectURI = *attrs.RedirectURI
	}
	if attrs.Description != nil {
		description = *attrs.Description
	}
	secret, t, err := a.login.Redeem(c.Request().Context(), *attrs.Code, *attrs.CodeVerifier, redirectURI, description)
	if err != nil {
		if draupnir.KindOf(err) == draupnir.KindInvalid {
			return &apiError{Status: http.StatusBadRequest, Code: codeBadRequest, Detail: draupnir.ClientMessage(err), cause: err}
		}
		return err
	}
	c.Set(ctxPrincipal, draupnir.Principal{Name: t.Principal}) // for the request log
	return writeJSON(c, http.StatusCreated, wire.Document[wire.TokenResource]{Data: tokenResource(t, secret)})
}

func (a *api) listTokens(c echo.Context) error {
	token, _ := bearerToken(c.Request().Header.Get("Authorization"))
	list, err := a.people.ListTokens(c.Request().Context(), principal(c), token)
	if err != nil {
		return err
	}
	data := make([]wire.TokenResource, 0, len(list))
	for _, t := range list {
		data = append(data, tokenResource(t, ""))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.TokenResource]{Data: data})
}

func (a *api) revokeToken(c echo.Context) error {
	id, err := pathID(c, "token")
	if err != nil {
		return err
	}
	if err := a.people.RevokeToken(c.Request().Context(), principal(c), id); err != nil {
		return err
	}
	return noContent(c)
}

// logout is DELETE /tokens/current: revoke the token of this request.
func (a *api) logout(c echo.Context) error {
	token, _ := bearerToken(c.Request().Header.Get("Authorization"))
	if err := a.people.Logout(c.Request().Context(), token); err != nil {
		return err
	}
	return noContent(c)
}

func keyResource(k draupnir.Key) wire.KeyResource {
	return wire.KeyResource{Type: wire.TypeKeys, ID: wire.ID(k.ID), Attributes: wire.KeyAttributes{
		Fingerprint: k.Fingerprint,
		PublicKey:   k.PublicKey,
		Comment:     k.Comment,
		Principal:   k.Principal,
		CreatedAt:   wire.NewTime(k.CreatedAt),
	}}
}

func (a *api) listKeys(c echo.Context) error {
	list, err := a.people.ListKeys(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	data := make([]wire.KeyResource, 0, len(list))
	for _, k := range list {
		data = append(data, keyResource(k))
	}
	return writeJSON(c, http.StatusOK, wire.Document[[]wire.KeyResource]{Data: data})
}

func (a *api) addKey(c echo.Context) error {
	res, err := decodeResource(c.Request().Body, wire.TypeKeys)
	if err != nil {
		return err
	}
	if err := noClientID(res); err != nil {
		return err
	}
	var attrs wire.KeyCreate
	if err := decodeAttributes(res, &attrs); err != nil {
		return err
	}
	if attrs.PublicKey == nil || strings.TrimSpace(*attrs.PublicKey) == "" {
		return missing("public_key")
	}
	k, err := a.people.AddKey(c.Request().Context(), principal(c), *attrs.PublicKey)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", fmt.Sprintf("/keys/%d", k.ID))
	return writeJSON(c, http.StatusCreated, wire.Document[wire.KeyResource]{Data: keyResource(k)})
}

func (a *api) removeKey(c echo.Context) error {
	id, err := pathID(c, "key")
	if err != nil {
		return err
	}
	if err := a.people.RemoveKey(c.Request().Context(), principal(c), id); err != nil {
		return err
	}
	return noContent(c)
}
