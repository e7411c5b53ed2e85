package config

import (
	"net/url"
	"strings"
)

// ConninfoParam is one keyword = value of a libpq connection string.
type ConninfoParam struct{ Key, Value string }

// IsConninfoURI reports whether conninfo is in libpq's URI form
// (postgres://…) rather than keyword = value pairs.
func IsConninfoURI(conninfo string) bool {
	return strings.HasPrefix(conninfo, "postgres://") || strings.HasPrefix(conninfo, "postgresql://")
}

// SplitConninfo reads a libpq keyword = value connection string, in order:
// values may be single-quoted, with backslash escapes inside and outside
// quotes. It reports false for a string libpq would not read.
func SplitConninfo(s string) ([]ConninfoParam, bool) {
	var out []ConninfoParam
	i := 0
	space := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	skip := func() {
		for i < len(s) && space(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out, true
		}
		start := i
		for i < len(s) && s[i] != '=' && !space(s[i]) {
			i++
		}
		key := s[start:i]
		skip()
		if i >= len(s) || s[i] != '=' || key == "" {
			return nil, false
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
				return nil, false
			}
		} else {
			for i < len(s) && !space(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		out = append(out, ConninfoParam{key, v.String()})
	}
}

// conninfoKeys returns the keywords conninfo sets, in either form; a URI's
// password counts as "password".
func conninfoKeys(conninfo string) (map[string]bool, bool) {
	keys := map[string]bool{}
	if IsConninfoURI(conninfo) {
		u, err := url.Parse(conninfo)
		if err != nil {
			return nil, false
		}
		if _, set := u.User.Password(); set {
			keys["password"] = true
		}
		for k := range u.Query() {
			keys[k] = true
		}
		return keys, true
	}
	params, ok := SplitConninfo(conninfo)
	for _, p := range params {
		keys[p.Key] = true
	}
	return keys, ok
}
