package sources

import (
	"net/url"
	"strings"

	"github.com/draupnir-db/draupnir/config"
)

// RedactConninfo returns conninfo without its password, for display: a
// URI's password and password parameter, or a keyword string's password.
// A string it cannot read is not shown at all. (The configuration refuses
// passwords in conninfo; this holds whatever a config of another version
// let through.)
func RedactConninfo(conninfo string) string {
	const unreadable = "(not shown: unreadable)"
	if config.IsConninfoURI(conninfo) {
		u, err := url.Parse(conninfo)
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
	params, ok := config.SplitConninfo(conninfo)
	if !ok {
		return unreadable
	}
	var out []string
	for _, p := range params {
		if p.Key != "password" {
			out = append(out, p.Key+"="+quoteValue(p.Value))
		}
	}
	return strings.Join(out, " ")
}

// quoteValue writes v as a libpq connection string value.
func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
