package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
)

// headerRequestID names the response header that tells a client which id the
// server logged the request under.
const headerRequestID = "X-Request-Id"

// Keys of values stored on the echo.Context.
const (
	ctxPrincipal = "draupnir.principal"
	ctxRequestID = "draupnir.request_id"
	ctxPinning   = "draupnir.pinning"
)

// base runs for every request, routed or not: it pins the behaviour the
// request's Draupnir-Version asks for and stamps that version and a request
// id on the response, turns panics into 500s, renders errors before logging
// so that the log has the final status, and logs one line.
func (a *api) base(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		id := newRequestID()
		c.Set(ctxRequestID, id)
		pin := a.pin(strings.TrimSpace(c.Request().Header.Get(HeaderVersion)))
		c.Set(ctxPinning, pin)
		h := c.Response().Header()
		h.Set(HeaderVersion, pin.served)
		h.Set(headerRequestID, id)
		h.Set("Cache-Control", "no-store") // instance documents carry passwords

		err := a.recovering(next, c)
		if err != nil {
			c.Error(err)
		}

		r := c.Request()
		attrs := []slog.Attr{
			slog.String("request_id", id),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", c.Response().Status),
			slog.Duration("duration", time.Since(start)),
		}
		if p, ok := c.Get(ctxPrincipal).(draupnir.Principal); ok {
			attrs = append(attrs, slog.String("principal", p.Name))
		}
		if err != nil && c.Response().Status < 500 {
			// Client errors are safe to log by their client message; server
			// errors were logged with their cause by handleError.
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		a.log.LogAttrs(r.Context(), slog.LevelInfo, "http request", attrs...)
		return nil
	}
}

// recovering calls next, converting a panic into an internal error.
func (a *api) recovering(next echo.HandlerFunc, c echo.Context) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v) // the server's way of aborting a response; let it through
			}
			err = fmt.Errorf("panic serving %s %s: %v\n%s", c.Request().Method, c.Request().URL.Path, v, debug.Stack())
		}
	}()
	return next(c)
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// authenticate resolves the bearer token to a principal; a request another
// node forwarded is authenticated by authenticateForward instead.
func (a *api) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if isForwarded(c.Request()) {
			p, err := a.authenticateForward(c)
			if err != nil {
				return err
			}
			c.Set(ctxPrincipal, p)
			return next(c)
		}
		token, ok := bearerToken(c.Request().Header.Get("Authorization"))
		if !ok {
			return newError(http.StatusUnauthorized, codeUnauthorized,
				"an Authorization: Bearer <token> header is required")
		}
		p, err := a.auth.AuthenticateToken(c.Request().Context(), token)
		if err != nil {
			if draupnir.KindOf(err) == draupnir.KindUnauthorized {
				return &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized,
					Detail: "the access token is not valid", cause: err}
			}
			return fmt.Errorf("authenticating a bearer token: %w", err)
		}
		c.Set(ctxPrincipal, p)
		if a.forwards != nil {
			r := c.Request()
			c.SetRequest(r.WithContext(a.forwards.Origin(r.Context(), r.Header.Get("Authorization"))))
		}
		return next(c)
	}
}

// isForwarded reports whether r claims to be forwarded by a node: it has
// any of the Draupnir-Forward… headers, so that none of them is ever
// ignored.
func isForwarded(r *http.Request) bool {
	for k := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "draupnir-forward") {
			return true
		}
	}
	return false
}

// bearerToken extracts the token of an "Authorization: Bearer <token>"
// header; the scheme is case-insensitive (RFC 7235).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// requireUpload lets only the upload principal through, so that image
// mutations are refused at the door even if a service forgot to check.
func (a *api) requireUpload(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !principal(c).Upload {
			return newError(http.StatusForbidden, codeForbidden, "only the upload principal may manage images")
		}
		return next(c)
	}
}

// checkBody enforces the body rules for requests that carry a body: JSON
// only, and at most maxBody bytes.
func (a *api) checkBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if !hasBody(r) {
			return next(c)
		}
		if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
			if ct == "" {
				return newError(http.StatusUnsupportedMediaType, codeUnsupportedMedia,
					"request has a body but no Content-Type; send Content-Type: application/json")
			}
			return newError(http.StatusUnsupportedMediaType, codeUnsupportedMedia,
				"Content-Type %q is not supported; send application/json", truncate(ct, 100))
		}
		if r.ContentLength > a.maxBody {
			return newError(http.StatusRequestEntityTooLarge, codePayloadTooLarge,
				"request body is %d bytes; the limit is %d", r.ContentLength, a.maxBody)
		}
		r.Body = http.MaxBytesReader(c.Response(), r.Body, a.maxBody)
		return next(c)
	}
}

func hasBody(r *http.Request) bool {
	if r.ContentLength > 0 {
		return true
	}
	// -1: unknown length (chunked, HTTP/2 without content-length).
	return r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody
}

// isJSON reports whether a Content-Type is application/json, with any
// parameters (charset=utf-8, say).
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// principal returns the authenticated principal; authenticate ran before
// any handler that calls it.
func principal(c echo.Context) draupnir.Principal {
	p, _ := c.Get(ctxPrincipal).(draupnir.Principal)
	return p
}
