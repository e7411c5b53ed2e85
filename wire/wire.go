// Package wire holds the documents of Draupnir's HTTP API and their JSON
// encoding: the resources the server renders and the Go client reads, the
// request bodies the client writes and the server reads, both shapes of error
// body (our JSON:API errors array and the original Draupnir's single object),
// and the version numbers of the Draupnir-Version header. The server
// (httpapi), the client (client) and the CLI's --json output all use these
// types, so that the two ends of the wire cannot drift apart. Ids are JSON
// strings, as JSON:API requires and the original server sent them; integer
// attributes (image_id, port) are JSON numbers; both are read from either
// form. Timestamps are RFC 3339 in UTC to the second, and null when unset.
package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// HeaderVersion carries the client's version in requests and, in responses,
// the version whose behaviour the answer follows.
const HeaderVersion = "Draupnir-Version"

// Resource types.
const (
	TypeImages        = "images"
	TypeInstances     = "instances"
	TypeTokens        = "tokens"
	TypeTokenRequests = "token_requests"
	TypeKeys          = "keys"
	TypeTombstones    = "tombstones"
	TypeSources       = "sources"
	TypeNodes         = "nodes"
)

// Marshal encodes v as the API sends documents: compact, ending in a newline,
// and without HTML escaping (documents carry SQL and PEM, not HTML).
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ID is a resource id. It is written as a JSON string ("7") and read from a
// string or a number.
type ID int64

// MarshalJSON writes the id as a string.
func (id ID) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, strconv.FormatInt(int64(id), 10)), nil
}

// UnmarshalJSON reads 7, "7", "" or null (the last two as 0, no id).
func (id *ID) UnmarshalJSON(b []byte) error {
	n, err := parseInt(b)
	*id = ID(n)
	return err
}

// Int is an integer attribute (image_id, port). It is written as a JSON
// number and read from a number or a numeric string, as earlier servers and
// documents had both.
type Int int64

// UnmarshalJSON reads 5678, "5678", "" or null (the last two as 0).
func (n *Int) UnmarshalJSON(b []byte) error {
	v, err := parseInt(b)
	*n = Int(v)
	return err
}

// parseInt reads an integer written as a JSON number or string.
func parseInt(b []byte) (int64, error) {
	s := string(b)
	if s == "null" {
		return 0, nil
	}
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return 0, err
		}
		if s == "" {
			return 0, nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer", b)
	}
	return n, nil
}

// Time is a timestamp as the API renders it: RFC 3339 in UTC to the second,
// or null when unset (the zero time).
type Time struct{ time.Time }

// NewTime returns t as the API renders it.
func NewTime(t time.Time) Time {
	if t.IsZero() {
		return Time{}
	}
	return Time{t.UTC().Truncate(time.Second)}
}

// MarshalJSON writes the time, or null for the zero time.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return strconv.AppendQuote(nil, t.UTC().Format(time.RFC3339)), nil
}

// UnmarshalJSON reads an RFC 3339 timestamp; null and "" are the zero time.
func (t *Time) UnmarshalJSON(b []byte) error {
	var s *string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a timestamp must be an RFC 3339 string: %w", err)
	}
	if s == nil || *s == "" {
		*t = Time{}
		return nil
	}
	v, err := time.Parse(time.RFC3339, *s)
	if err != nil {
		return err
	}
	*t = Time{v.UTC()}
	return nil
}

// RequestTime formats a timestamp for a request body (backed_up_at): RFC
// 3339 in UTC, keeping fractions of a second.
func RequestTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
