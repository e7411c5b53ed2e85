package sources

import (
	"net/url"

	"github.com/draupnir-db/draupnir/internal/conninfo"
)

// RedactConninfo returns s without its password, for display: a URI's
// password and password parameter, or a keyword string's password. A
// string it cannot read is not shown at all. (The configuration refuses
// passwords in conninfo; this holds whatever a config of another version
// let through.)
func RedactConninfo(s string) string {
	const unreadable = "(not shown: unreadable)"
	if conninfo.IsURI(s) {
		u, err := url.Parse(s)
		if err != nil {
			return unreadable
		}
		if u.User != nil {
			u.User = url.User(u.User.Username())
		}
		if q := u.Query(); q.Has("password") {
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	params, err := conninfo.Split(s)
	if err != nil {
		return unreadable
	}
	var kept []conninfo.Param
	for _, p := range params {
		if p.Key != "password" {
			kept = append(kept, p)
		}
	}
	return conninfo.Join(kept)
}
