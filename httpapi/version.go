package httpapi

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir/wire"
)

// HeaderVersion carries the client's version in requests and, in responses,
// the version whose behaviour the answer follows.
const HeaderVersion = wire.HeaderVersion

// dialect is the behaviour a request is served with, pinned by its
// Draupnir-Version (docs/api.md, "Versions").
type dialect int

const (
	// ours: JSON:API errors arrays and our statuses.
	ours dialect = iota
	// original: what the original Draupnir (1.x, 2.0.x) answered — one
	// bare error object with its codes and texts, 422 for an image that is
	// not ready, Content-Type on 204s.
	original
)

// firstOurs is the first version of our line: versions before it (1.x,
// 2.0.x) are the original Draupnir's, whose clients and scripts we serve as
// it did; the original's 3.x and later speak another protocol.
var firstOurs = wire.Version{Major: 2, Minor: 1}

// pinning is what a request's Draupnir-Version decides.
type pinning struct {
	dialect dialect
	served  string    // the response's Draupnir-Version
	refused *apiError // nil if the version is accepted
}

// pin applies the version rule to the header value raw (docs/api.md).
func (a *api) pin(raw string) pinning {
	refuse := func(d dialect, code, format string, args ...any) pinning {
		return pinning{dialect: d, served: a.serverRaw, refused: newError(http.StatusBadRequest, code, format, args...)}
	}
	if raw == "" {
		return refuse(ours, codeMissingVersion, "the %s header is required; this server speaks %s", HeaderVersion, a.serverRaw)
	}
	if raw == a.serverRaw {
		return pinning{dialect: ours, served: a.serverRaw}
	}
	client, err := wire.ParseVersion(raw)
	if err != nil {
		return refuse(ours, codeIncompatibleVersion, "%s %q is not of the form X.Y.Z; this server speaks %s",
			HeaderVersion, truncate(raw, 64), a.serverRaw)
	}
	switch {
	case client.Major == 0:
		return refuse(original, codeIncompatibleVersion,
			"client version %s is older than any this server serves; use this server's draupnir-client (%s), or an original client from 1.0.0 to 2.0.x",
			client, a.serverRaw)
	case client.Compare(firstOurs) < 0:
		// The original line. The response repeats the client's version:
		// the original 1.0.0 client refuses any answer whose version is not
		// exactly its own.
		served := raw
		if !semverText(raw) {
			served = client.String()
		}
		return pinning{dialect: original, served: served}
	case client.Major > firstOurs.Major:
		return refuse(original, codeIncompatibleVersion,
			"client version %s speaks a different protocol (the original Draupnir's from 3.0.0 on: one binary, client certificates), which this server does not; use this server's draupnir-client (%s), or an original client from 1.0.0 to 2.0.x",
			client, a.serverRaw)
	case !a.serverOK:
		return refuse(ours, codeIncompatibleVersion, "client version %s does not match server version %s; use a client of version %s",
			client, a.serverRaw, a.serverRaw)
	case client.Major != a.server.Major || client.Minor > a.server.Minor:
		return refuse(ours, codeIncompatibleVersion,
			"client version %s is newer than server version %s; upgrade the server to %d.%d or later (or use a client of version %d.%d or older)",
			client, a.server, client.Major, client.Minor, a.server.Major, a.server.Minor)
	}
	return pinning{dialect: ours, served: a.serverRaw}
}

// semverText reports whether s holds only the characters of a semantic
// version, so that it can be repeated in a response header as it came.
func semverText(s string) bool {
	return len(s) <= 64 && strings.Trim(s, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-") == ""
}

// checkVersion refuses requests whose version the server does not serve.
func (a *api) checkVersion(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if p := pinned(c); p.refused != nil {
			return p.refused
		}
		return next(c)
	}
}

// pinned returns the request's pinning, made by base.
func pinned(c echo.Context) pinning {
	p, _ := c.Get(ctxPinning).(pinning)
	return p
}
