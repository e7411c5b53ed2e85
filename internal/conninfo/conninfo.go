// Package conninfo reads, edits and writes libpq connection strings, in both
// of libpq's forms: keyword = value pairs (values optionally single-quoted,
// with backslash escapes) and postgres:// URIs. It holds no policy: which
// keywords a source may set is decided by its callers (config and standby
// share config.CheckConninfoKeys), and what to hide when showing one by
// sources.
package conninfo

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Param is one keyword = value pair of a connection string.
type Param struct{ Key, Value string }

// IsURI reports whether s is in libpq's URI form (postgres://…) rather than
// keyword = value pairs.
func IsURI(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Split reads a connection string in keyword = value form, keeping the
// pairs' order and any repeated keyword. It refuses a string libpq would
// not read.
func Split(s string) ([]Param, error) {
	var out []Param
	i := 0
	skip := func() {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skip()
		if i >= len(s) || s[i] != '=' || key == "" {
			return nil, fmt.Errorf("conninfo: missing \"=\" after %q", key)
		}
		i++
		skip()
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				if s[i] == '\\' && i+1 < len(s) {
					v.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '\'' {
					i++
					closed = true
					break
				}
				v.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("conninfo: unterminated quoted value of %s", key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		out = append(out, Param{key, v.String()})
	}
}

// Join writes params in keyword = value form, quoting the values that need
// it, so that Split reads them back.
func Join(params []Param) string {
	parts := make([]string, 0, len(params))
	for _, p := range params {
		parts = append(parts, p.Key+"="+quote(p.Value))
	}
	return strings.Join(parts, " ")
}

// quote writes v as a connection string value.
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Keywords is a connection string taken apart into its keywords, so that
// Draupnir can add its own whatever form the operator wrote. A repeated
// keyword keeps its last value, as in libpq.
type Keywords map[string]string

// Parse reads a connection string in either form. A URI's user, host,
// port and database become the keywords libpq gives them; a password in
// its user part becomes "password" with an empty value, so that callers
// can see one is there without holding it.
func Parse(s string) (Keywords, error) {
	if IsURI(s) {
		return parseURI(s)
	}
	params, err := Split(s)
	if err != nil {
		return nil, err
	}
	k := Keywords{}
	for _, p := range params {
		k[p.Key] = p.Value
	}
	return k, nil
}

func parseURI(s string) (Keywords, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url's message repeats the URI, which may hold a password.
		return nil, errors.New("conninfo: not a valid postgres:// URI")
	}
	k := Keywords{}
	if u.User != nil {
		k["user"] = u.User.Username()
		if _, ok := u.User.Password(); ok {
			k["password"] = ""
		}
	}
	host := u.Host
	if h, p, ok := strings.Cut(host, ":"); ok && !strings.Contains(host, "[") && !strings.Contains(host, ",") {
		host = h
		k["port"] = p
	}
	if host != "" {
		k["host"] = host
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		k["dbname"] = db
	}
	for key, vs := range u.Query() {
		if len(vs) > 0 {
			k[key] = vs[len(vs)-1]
		}
	}
	return k, nil
}

// With returns a copy of k with the given keywords (pairs) set.
func (k Keywords) With(kv ...string) Keywords {
	d := make(Keywords, len(k)+len(kv)/2)
	for key, v := range k {
		d[key] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		d[kv[i]] = kv[i+1]
	}
	return d
}

// String is the keyword = value form, keywords sorted.
func (k Keywords) String() string {
	keys := make([]string, 0, len(k))
	for key := range k {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	params := make([]Param, 0, len(keys))
	for _, key := range keys {
		params = append(params, Param{key, k[key]})
	}
	return Join(params)
}

// ForGo keeps the keywords pgconn understands: it would send any other
// (keepalives, say) to the server as a run-time parameter, which fails.
func (k Keywords) ForGo() Keywords {
	d := Keywords{}
	for key, v := range k {
		if pgconnKnows(key) {
			d[key] = v
		}
	}
	return d
}

func pgconnKnows(key string) bool {
	switch key {
	case "host", "hostaddr", "port", "user", "dbname", "passfile", "sslmode",
		"sslrootcert", "sslcert", "sslkey", "sslpassword", "sslsni",
		"connect_timeout", "target_session_attrs", "application_name",
		"service", "servicefile":
		return true
	}
	return false
}
