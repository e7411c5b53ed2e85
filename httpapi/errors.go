package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// Error codes, stable for clients to branch on.
const (
	codeBadRequest          = "bad_request"
	codeInvalidJSON         = "invalid_json"
	codeUnsupportedMedia    = "unsupported_media_type"
	codeMissingVersion      = "missing_version"
	codeIncompatibleVersion = "incompatible_version"
	codeUnauthorized        = "unauthorized"
	codeForbidden           = "forbidden"
	codeNotFound            = "not_found"
	codeMethodNotAllowed    = "method_not_allowed"
	codeConflict            = "conflict"
	codeUnprocessable       = "unprocessable_entity"
	codePayloadTooLarge     = "payload_too_large"
	codeInsufficientStorage = "insufficient_storage"
	codeUnavailable         = "service_unavailable"
	codeInternal            = "internal_server_error"
	codeUnsupportedLogin    = "unsupported_login"
	codeGone                = "gone"
	codeQuotaExceeded       = "quota_exceeded"
)

// statusClientClosed is logged for requests whose client disconnected
// before the answer was ready; it is never sent.
const statusClientClosed = 499

// apiError is an error the handlers return to have it rendered: as a
// JSON:API errors document for our own version line, as the original's
// single object for the original line (see render).
type apiError struct {
	Status  int
	Code    string
	Detail  string
	Pointer string // JSON pointer into the request document, if a member is at fault
	cause   error  // for the log only
	// orig, if set, is the original's own answer to this case (its status
	// may differ from ours), for requests of the original line.
	orig *wire.OriginalError
}

func (e *apiError) Error() string { return e.Detail }
func (e *apiError) Unwrap() error { return e.cause }

func newError(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Detail: fmt.Sprintf(format, args...)}
}

// document is e for our own line.
func (e *apiError) document() wire.ErrorDocument {
	o := wire.ErrorObject{
		Status: strconv.Itoa(e.Status),
		Code:   e.Code,
		Title:  http.StatusText(e.Status),
		Detail: e.Detail,
	}
	if e.Pointer != "" {
		o.Source = &wire.ErrorSource{Pointer: e.Pointer}
	}
	return wire.ErrorDocument{Errors: []wire.ErrorObject{o}}
}

// original is e for the original line, with its status: the original's
// object where it defined one for the case, otherwise ours in its shape,
// with the original's code and title for the kinds of error it had.
func (e *apiError) original() (int, wire.OriginalError) {
	if e.orig != nil {
		status, err := strconv.Atoi(e.orig.Status)
		if err != nil {
			status = e.Status
		}
		return status, *e.orig
	}
	code, title, detail := e.Code, http.StatusText(e.Status), e.Detail
	switch e.Code {
	case codeUnauthorized:
		// The original clients and specs know this one by heart.
		detail = "You do not have permission to view this resource"
	case codeNotFound:
		code, title = "resource_not_found", "Resource Not Found"
	case codeInvalidJSON:
		code, title = codeBadRequest, "Invalid JSON"
	case codeMissingVersion:
		code, title = "missing_api_version_header", "Missing API Version Header"
	case codeIncompatibleVersion:
		code, title = "invalid_api_version", "Invalid API Version"
	}
	return e.Status, wire.OriginalError{ID: code, Status: strconv.Itoa(e.Status), Code: code, Title: title,
		Detail: detail, Source: wire.ErrorSource{Pointer: e.Pointer}}
}

// originalError is one of the original's own error objects.
func originalError(status int, code, title, detail, parameter string) *wire.OriginalError {
	return &wire.OriginalError{ID: code, Status: strconv.Itoa(status), Code: code, Title: title, Detail: detail,
		Source: wire.ErrorSource{Parameter: parameter}}
}

// The original's answers about the image_id of a new instance.
func imageNotReady() *wire.OriginalError {
	return originalError(http.StatusUnprocessableEntity, codeUnprocessable, "Image Not Ready",
		"The specified image is not ready to be used", "image_id")
}

func imageNotFound() *wire.OriginalError {
	return originalError(http.StatusNotFound, "resource_not_found", "Image Not Found",
		"The image you specified could not be found", "")
}

func badImageID() *wire.OriginalError {
	return originalError(http.StatusBadRequest, codeBadRequest, "Bad Request",
		"The image ID provided is not valid", "image_id")
}

// fromDomain maps an error from the core to the API error a client sees.
// Internal errors keep their cause for the log and show a generic detail.
func fromDomain(err error) *apiError {
	kind := draupnir.KindOf(err)
	e := &apiError{Detail: draupnir.ClientMessage(err), cause: err}
	switch kind {
	case draupnir.KindNotFound:
		e.Status, e.Code = http.StatusNotFound, codeNotFound
	case draupnir.KindConflict:
		e.Status, e.Code = http.StatusConflict, codeConflict
	case draupnir.KindInvalid:
		e.Status, e.Code = http.StatusBadRequest, codeBadRequest
		var de *draupnir.Error
		if errors.As(err, &de) && de.Field != "" {
			e.Status, e.Code = http.StatusUnprocessableEntity, codeUnprocessable
			e.Pointer = "/data/attributes/" + de.Field
		}
	case draupnir.KindUnprocessable:
		e.Status, e.Code = http.StatusUnprocessableEntity, codeUnprocessable
	case draupnir.KindForbidden:
		e.Status, e.Code = http.StatusForbidden, codeForbidden
	case draupnir.KindUnauthorized:
		e.Status, e.Code = http.StatusUnauthorized, codeUnauthorized
	case draupnir.KindUnavailable:
		e.Status, e.Code = http.StatusServiceUnavailable, codeUnavailable
	case draupnir.KindInsufficientStorage:
		e.Status, e.Code = http.StatusInsufficientStorage, codeInsufficientStorage
	case draupnir.KindGone:
		e.Status, e.Code = http.StatusGone, codeGone
	case draupnir.KindQuotaExceeded:
		e.Status, e.Code = http.StatusForbidden, codeQuotaExceeded
	default:
		e.Status, e.Code = http.StatusInternalServerError, codeInternal
	}
	return e
}

// fromEcho maps the errors Echo's router and helpers produce.
func fromEcho(he *echo.HTTPError, c echo.Context) *apiError {
	r := c.Request()
	switch he.Code {
	case http.StatusNotFound:
		return newError(http.StatusNotFound, codeNotFound, "no route for %s %s", r.Method, truncate(r.URL.Path, 200))
	case http.StatusMethodNotAllowed:
		return newError(http.StatusMethodNotAllowed, codeMethodNotAllowed, "%s is not allowed on %s", r.Method, truncate(r.URL.Path, 200))
	case http.StatusRequestEntityTooLarge:
		return newError(http.StatusRequestEntityTooLarge, codePayloadTooLarge, "request body is too large")
	case http.StatusUnsupportedMediaType:
		return newError(http.StatusUnsupportedMediaType, codeUnsupportedMedia, "only application/json is supported")
	}
	if he.Code >= 400 && he.Code < 500 {
		return &apiError{Status: he.Code, Code: codeBadRequest, Detail: http.StatusText(he.Code), cause: he}
	}
	return &apiError{Status: http.StatusInternalServerError, Code: codeInternal, cause: he}
}

// handleError is Echo's HTTPErrorHandler: every error, whether from a
// handler, a middleware or the router, is rendered as an error document of
// the request's dialect.
func (a *api) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	if errors.Is(err, context.Canceled) && c.Request().Context().Err() != nil {
		// The client went away; there is no one to answer. Record nginx's
		// "client closed request" so the request log does not say 200.
		c.Response().Status = statusClientClosed
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he):
		ae = fromEcho(he, c)
	default:
		ae = fromDomain(err)
	}
	if ae.Code == codeInternal {
		ae = a.unavailable(c, ae)
	}
	if ae.Status >= 500 {
		a.logFailure(c, ae, err)
	}
	if ae.Code == codeInternal {
		// Never show the cause: it may name paths, queries or hosts.
		id, _ := c.Get(ctxRequestID).(string)
		ae = &apiError{Status: ae.Status, Code: ae.Code,
			Detail: fmt.Sprintf("internal error; the server log has the details (request id %s)", id)}
	}
	status, body := ae.Status, any(ae.document())
	if pinned(c).dialect == original {
		status, body = ae.original()
	}
	if status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="draupnir"`)
	}
	if c.Request().Method == http.MethodHead {
		c.Response().WriteHeader(status)
		return
	}
	if err := writeJSON(c, status, body); err != nil {
		a.log.DebugContext(c.Request().Context(), "writing error response", "err", err)
	}
}

// unavailable turns an internal error into 503 when the service is
// unhealthy (the state database is down, say): the request failed because
// of that, and the client should try again rather than report a bug.
func (a *api) unavailable(c echo.Context, ae *apiError) *apiError {
	if a.health == nil {
		return ae
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), time.Second)
	defer cancel()
	herr := a.health.Check(ctx)
	if herr == nil {
		return ae
	}
	return &apiError{Status: http.StatusServiceUnavailable, Code: codeUnavailable,
		Detail: "the service is temporarily unavailable (" + draupnir.ClientMessage(herr) + "); try again shortly",
		cause:  ae.cause}
}

// logFailure logs a server-side failure with its cause: at error level for
// internal errors, at warning level for the expected ones (port pool
// exhausted, disk full, state database down).
func (a *api) logFailure(c echo.Context, ae *apiError, err error) {
	id, _ := c.Get(ctxRequestID).(string)
	level := slog.LevelWarn
	if ae.Code == codeInternal {
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.String("request_id", id),
		slog.String("method", c.Request().Method),
		slog.String("path", c.Request().URL.Path),
		slog.Int("status", ae.Status),
		slog.String("err", err.Error()),
	}
	var de *draupnir.Error
	if errors.As(err, &de) && de.Err != nil {
		attrs = append(attrs, slog.String("cause", de.Err.Error()))
	}
	a.log.LogAttrs(c.Request().Context(), level, "request failed", attrs...)
}

// truncate shortens client-supplied text echoed in error details.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
