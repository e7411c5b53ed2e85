package standby

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// conninfo is a libpq connection string taken apart into its keywords, so
// that Draupnir can add its own (passfile, application_name) whatever form
// the operator wrote, and check what it must not hold.
type conninfo map[string]string

// parseConninfo reads a libpq connection string in either form: keyword =
// value pairs (values optionally single-quoted, with \' and \\) or a
// postgres:// URI. It refuses a password: one in the connection string
// would reach pg_basebackup's argv and the standby's configuration, which
// a snapshot carries into every image; passwords belong in the passfile.
func parseConninfo(s string) (conninfo, error) {
	var c conninfo
	var err error
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		c, err = parseURI(s)
	} else {
		c, err = parseKeywords(s)
	}
	if err != nil {
		return nil, err
	}
	if _, ok := c["password"]; ok {
		return nil, errors.New("conninfo holds a password: put it in the source's passfile instead (a line host:port:replication:user:password)")
	}
	for _, k := range []string{"replication", "passfile"} {
		if _, ok := c[k]; ok {
			return nil, fmt.Errorf("conninfo sets %s, which draupnir sets itself", k)
		}
	}
	return c, nil
}

func parseKeywords(s string) (conninfo, error) {
	c := conninfo{}
	i := 0
	skip := func() {
		for i < len(s) && strings.ContainsRune(" \t\n\r", rune(s[i])) {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return c, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !strings.ContainsRune(" \t\n\r", rune(s[i])) {
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
				ch := s[i]
				i++
				if ch == '\\' && i < len(s) {
					v.WriteByte(s[i])
					i++
					continue
				}
				if ch == '\'' {
					closed = true
					break
				}
				v.WriteByte(ch)
			}
			if !closed {
				return nil, fmt.Errorf("conninfo: unterminated quoted value of %s", key)
			}
		} else {
			for i < len(s) && !strings.ContainsRune(" \t\n\r", rune(s[i])) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		c[key] = v.String()
	}
}

func parseURI(s string) (conninfo, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url's message repeats the URI, which may hold a password.
		return nil, errors.New("conninfo: not a valid postgres:// URI")
	}
	c := conninfo{}
	if u.User != nil {
		c["user"] = u.User.Username()
		if _, ok := u.User.Password(); ok {
			c["password"] = ""
		}
	}
	host := u.Host
	if h, p, ok := strings.Cut(host, ":"); ok && !strings.Contains(host, "[") && !strings.Contains(host, ",") {
		host = h
		c["port"] = p
	}
	if host != "" {
		c["host"] = host
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		c["dbname"] = db
	}
	for k, vs := range u.Query() {
		if len(vs) > 0 {
			c[k] = vs[len(vs)-1]
		}
	}
	return c, nil
}

// with returns a copy of c with the given keywords (pairs) set.
func (c conninfo) with(kv ...string) conninfo {
	d := make(conninfo, len(c)+len(kv)/2)
	for k, v := range c {
		d[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		d[kv[i]] = kv[i+1]
	}
	return d
}

// String is the keyword = value form, keywords sorted, every value quoted.
func (c conninfo) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := strings.ReplaceAll(strings.ReplaceAll(c[k], `\`, `\\`), `'`, `\'`)
		parts = append(parts, k+"='"+v+"'")
	}
	return strings.Join(parts, " ")
}

// goKeywords are the libpq keywords pgconn understands; others (keepalives,
// say) it would send to the server as run-time parameters, which fails.
var goKeywords = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "user": true, "dbname": true,
	"passfile": true, "sslmode": true, "sslrootcert": true, "sslcert": true,
	"sslkey": true, "sslpassword": true, "sslsni": true, "connect_timeout": true,
	"target_session_attrs": true, "application_name": true, "service": true,
	"servicefile": true,
}

// forGo keeps the keywords pgconn understands.
func (c conninfo) forGo() conninfo {
	d := conninfo{}
	for k, v := range c {
		if goKeywords[k] {
			d[k] = v
		}
	}
	return d
}
