package wire

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// ErrorDocument is the body of an error response to our own version line:
// a JSON:API errors array (with one entry).
type ErrorDocument struct {
	Errors []ErrorObject `json:"errors"`
}

// ErrorObject is one JSON:API error.
type ErrorObject struct {
	Status string       `json:"status"` // the HTTP status, as a string
	Code   string       `json:"code"`
	Title  string       `json:"title"`
	Detail string       `json:"detail"`
	Source *ErrorSource `json:"source,omitempty"`
}

// ErrorSource names what in the request is at fault: a member of the
// document (Pointer, a JSON pointer) or a parameter.
type ErrorSource struct {
	Pointer   string `json:"pointer,omitempty"`
	Parameter string `json:"parameter,omitempty"`
}

// OriginalError is the body of an error response to the original version
// line, as the original Draupnir sent it: one bare object whose id repeats
// its code, and whose source is always there ({} when nothing is named).
type OriginalError struct {
	ID     string      `json:"id"`
	Status string      `json:"status"`
	Code   string      `json:"code"`
	Title  string      `json:"title"`
	Detail string      `json:"detail"`
	Source ErrorSource `json:"source"`
}

// ParseError reads an error body of either shape; ok is false when body is
// neither (a proxy's page, say).
func ParseError(body []byte) (e ErrorObject, ok bool) {
	var doc struct {
		Errors []ErrorObject `json:"errors"`
		OriginalError
	}
	if json.Unmarshal(body, &doc) != nil {
		return ErrorObject{}, false
	}
	if len(doc.Errors) > 0 {
		return doc.Errors[0], true
	}
	o := doc.OriginalError
	if o.Status == "" && o.Code == "" && o.Title == "" && o.Detail == "" {
		return ErrorObject{}, false
	}
	e = ErrorObject{Status: o.Status, Code: o.Code, Title: o.Title, Detail: o.Detail}
	if o.Source != (ErrorSource{}) {
		e.Source = &o.Source
	}
	return e, true
}

// Version is a Draupnir-Version: X.Y.Z.
type Version struct{ Major, Minor, Patch uint64 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Compare returns -1, 0 or 1 as v is older than, the same as or newer than w.
func (v Version) Compare(w Version) int {
	for _, d := range [...][2]uint64{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		switch {
		case d[0] < d[1]:
			return -1
		case d[0] > d[1]:
			return 1
		}
	}
	return 0
}

// ParseVersion parses X.Y.Z (decimal digits only), ignoring a pre-release or
// build suffix ("2.1.0-rc1", "2.1.0+abc").
func ParseVersion(s string) (Version, error) {
	core := s
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("version %q is not of the form X.Y.Z", s)
	}
	var n [3]uint64
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 64)
		if err != nil || strings.TrimLeft(p, "0123456789") != "" {
			return Version{}, fmt.Errorf("version %q is not of the form X.Y.Z", s)
		}
		n[i] = v
	}
	return Version{n[0], n[1], n[2]}, nil
}
