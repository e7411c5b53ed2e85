package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// writeJSON renders v with the given status as application/json.
func writeJSON(c echo.Context, status int, v any) error {
	b, err := wire.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding a %d response: %w", status, err)
	}
	h := c.Response().Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	c.Response().WriteHeader(status)
	_, err = c.Response().Write(b)
	return err
}

// noContent answers 204. The original line's answers carried
// Content-Type: application/json even then, and its specs check it.
func noContent(c echo.Context) error {
	if pinned(c).dialect == original {
		c.Response().Header().Set("Content-Type", "application/json")
	}
	return c.NoContent(http.StatusNoContent)
}

// Reading request documents.

// inDocument is the envelope of a request document as the server reads it:
// raw, so that absent, empty and wrongly typed members can be told apart.
// Members other than these are refused, so that typos do not pass silently;
// meta and jsonapi are allowed by JSON:API and ignored.
type inDocument struct {
	Data    json.RawMessage `json:"data"`
	Meta    json.RawMessage `json:"meta"`
	JSONAPI json.RawMessage `json:"jsonapi"`
}

type inResource struct {
	Type       *string         `json:"type"`
	ID         json.RawMessage `json:"id"`
	Attributes json.RawMessage `json:"attributes"`
	Meta       json.RawMessage `json:"meta"`
}

// imageCreate is a decoded POST /images document.
type imageCreate struct {
	BackedUpAt          time.Time
	AnonymisationScript string
	Source              string
}

// instanceCreate is a decoded POST /instances document: ImageID, or Source
// for the newest ready image of a series.
type instanceCreate struct {
	ImageID int64
	Source  string
	Options draupnir.CreateOptions
}

// decodeImageCreate decodes and validates a POST /images document. Errors
// are *apiError client errors.
func decodeImageCreate(r io.Reader) (imageCreate, error) {
	res, err := decodeResource(r, wire.TypeImages)
	if err != nil {
		return imageCreate{}, err
	}
	if err := noClientID(res); err != nil {
		return imageCreate{}, err
	}
	var attrs wire.ImageChange
	if err := decodeAttributes(res, &attrs); err != nil {
		return imageCreate{}, err
	}
	if attrs.BackedUpAt == nil {
		return imageCreate{}, missing("backed_up_at")
	}
	t, err := parseTime("backed_up_at", *attrs.BackedUpAt)
	if err != nil {
		return imageCreate{}, err
	}
	out := imageCreate{BackedUpAt: t}
	if attrs.AnonymisationScript != nil {
		out.AnonymisationScript = *attrs.AnonymisationScript
	}
	if attrs.Source != nil {
		if !draupnir.ValidSourceName(*attrs.Source) {
			return imageCreate{}, badSource()
		}
		out.Source = *attrs.Source
	}
	return out, nil
}

// decodeImagePatch decodes a PATCH /images/:id document; a resource id, if
// given, must be the one in the URL.
func decodeImagePatch(r io.Reader, id int64) (draupnir.ImagePatch, error) {
	res, err := decodeResource(r, wire.TypeImages)
	if err != nil {
		return draupnir.ImagePatch{}, err
	}
	if err := sameID(res, id); err != nil {
		return draupnir.ImagePatch{}, err
	}
	var attrs wire.ImageChange
	if err := decodeAttributes(res, &attrs); err != nil {
		return draupnir.ImagePatch{}, err
	}
	if attrs.Source != nil {
		return draupnir.ImagePatch{}, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "an image's source is set when it is created and cannot change", Pointer: "/data/attributes/source"}
	}
	var patch draupnir.ImagePatch
	if attrs.BackedUpAt != nil {
		t, err := parseTime("backed_up_at", *attrs.BackedUpAt)
		if err != nil {
			return draupnir.ImagePatch{}, err
		}
		patch.BackedUpAt = &t
	}
	patch.AnonymisationScript = attrs.AnonymisationScript
	return patch, nil
}

// decodeInstanceCreate decodes a POST /instances document. image_id may be
// a number or a numeric string.
func decodeInstanceCreate(r io.Reader) (instanceCreate, error) {
	res, err := decodeResource(r, wire.TypeInstances)
	if err != nil {
		return instanceCreate{}, err
	}
	if err := noClientID(res); err != nil {
		return instanceCreate{}, err
	}
	var attrs wire.InstanceCreate
	if err := decodeAttributes(res, &attrs); err != nil {
		return instanceCreate{}, err
	}
	noImageID := len(attrs.ImageID) == 0 || string(attrs.ImageID) == "null"
	var out instanceCreate
	switch {
	case attrs.Source != nil && !noImageID:
		return instanceCreate{}, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "give image_id or source, not both", Pointer: "/data/attributes/source"}
	case attrs.Source != nil:
		if !draupnir.ValidSourceName(*attrs.Source) {
			return instanceCreate{}, badSource()
		}
		out.Source = *attrs.Source
	case noImageID:
		return instanceCreate{}, missing("image_id")
	default:
		id, ok := parseIDValue(attrs.ImageID)
		if !ok {
			return instanceCreate{}, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
				Detail:  "image_id must be a positive integer (a number or a numeric string)",
				Pointer: "/data/attributes/image_id"}
		}
		out.ImageID = id
	}
	if attrs.TTL != nil {
		if out.Options.TTL, err = parseDuration("ttl", *attrs.TTL); err != nil {
			return instanceCreate{}, err
		}
	}
	return out, nil
}

// decodeInstancePatch decodes a PATCH /instances/:id document; a resource
// id, if given, must be the one in the URL.
func decodeInstancePatch(r io.Reader, id int64) (draupnir.InstancePatch, error) {
	res, err := decodeResource(r, wire.TypeInstances)
	if err != nil {
		return draupnir.InstancePatch{}, err
	}
	if err := sameID(res, id); err != nil {
		return draupnir.InstancePatch{}, err
	}
	var attrs wire.InstanceChange
	if err := decodeAttributes(res, &attrs); err != nil {
		return draupnir.InstancePatch{}, err
	}
	var patch draupnir.InstancePatch
	for _, f := range []struct {
		name string
		raw  *string
		dst  **time.Duration
	}{{"ttl", attrs.TTL, &patch.TTL}, {"protect_for", attrs.ProtectFor, &patch.ProtectFor}} {
		if f.raw == nil {
			continue
		}
		d, err := parseDuration(f.name, *f.raw)
		if err != nil {
			return draupnir.InstancePatch{}, err
		}
		*f.dst = &d
	}
	if patch.TTL == nil && patch.ProtectFor == nil {
		return draupnir.InstancePatch{}, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "nothing to change: give ttl (extend) or protect_for (protect)", Pointer: "/data/attributes"}
	}
	return patch, nil
}

// parseDuration reads a duration attribute: "90m", "8h", "7d", or "0".
func parseDuration(attr, s string) (time.Duration, error) {
	d, err := draupnir.ParseDuration(s)
	if err == nil && d < 0 {
		err = fmt.Errorf("must not be negative")
	}
	if err != nil {
		return 0, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail:  fmt.Sprintf("%s must be a duration such as \"90m\", \"8h\" or \"7d\" (\"0\" for none), not %q", attr, truncate(s, 64)),
			Pointer: "/data/attributes/" + attr}
	}
	return d, nil
}

// decodeInstanceReset reads the optional body of POST /instances/:id/reset
// and returns the image to reset to: 0, for the instance's own, when the
// body or its image_id is absent.
func decodeInstanceReset(r io.Reader) (int64, error) {
	body, err := io.ReadAll(r)
	if e := tooLarge(err); e != nil {
		return 0, e
	}
	if err != nil {
		return 0, newError(http.StatusBadRequest, codeInvalidJSON, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return 0, nil
	}
	res, err := decodeResource(bytes.NewReader(body), wire.TypeInstances)
	if err != nil {
		return 0, err
	}
	if err := noClientID(res); err != nil {
		return 0, err
	}
	var attrs wire.InstanceReset
	if len(res.Attributes) > 0 && string(res.Attributes) != "null" {
		if err := decodeAttributes(res, &attrs); err != nil {
			return 0, err
		}
	}
	if len(attrs.ImageID) == 0 || string(attrs.ImageID) == "null" {
		return 0, nil
	}
	id, ok := parseIDValue(attrs.ImageID)
	if !ok {
		return 0, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail:  "image_id must be a positive integer (a number or a numeric string)",
			Pointer: "/data/attributes/image_id"}
	}
	return id, nil
}

// noBody accepts an empty body, or a document with an empty resource of
// type instances, for requests that take no attributes.
func noBody(r io.Reader) error {
	body, err := io.ReadAll(r)
	if e := tooLarge(err); e != nil {
		return e
	}
	if err != nil {
		return newError(http.StatusBadRequest, codeInvalidJSON, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	res, err := decodeResource(bytes.NewReader(body), wire.TypeInstances)
	if err != nil {
		return err
	}
	if err := noClientID(res); err != nil {
		return err
	}
	var attrs struct{}
	if len(res.Attributes) > 0 && string(res.Attributes) != "null" {
		return decodeAttributes(res, &attrs)
	}
	return nil
}

// decodeResource reads a whole request document and checks its envelope and
// resource type. An empty type is taken for the expected one: the original
// client sends "type":"" (and "id":"") in every body it writes.
func decodeResource(r io.Reader, wantType string) (*inResource, error) {
	var doc inDocument
	if err := decodeStrict(r, &doc); err != nil {
		return nil, err
	}
	if len(doc.Data) == 0 || string(doc.Data) == "null" {
		return nil, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "the document needs a data object", Pointer: "/data"}
	}
	var res inResource
	if err := decodeValue(doc.Data, &res, "/data"); err != nil {
		return nil, err
	}
	switch {
	case res.Type == nil:
		return nil, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: fmt.Sprintf("data.type is required and must be %q", wantType), Pointer: "/data/type"}
	case *res.Type != wantType && *res.Type != "":
		return nil, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail:  fmt.Sprintf("data.type must be %q, not %q", wantType, truncate(*res.Type, 64)),
			Pointer: "/data/type"}
	}
	return &res, nil
}

// decodeAttributes strictly decodes the resource's attributes into v.
func decodeAttributes(res *inResource, v any) error {
	if len(res.Attributes) == 0 || string(res.Attributes) == "null" {
		return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "data.attributes is required", Pointer: "/data/attributes"}
	}
	return decodeValue(res.Attributes, v, "/data/attributes")
}

// decodeStrict decodes the request body, which must hold exactly one JSON
// value, into the struct v (see decodeValue).
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	var raw json.RawMessage
	err := dec.Decode(&raw)
	if err == nil {
		_, err = dec.Token()
		if err == io.EOF {
			return decodeValue(raw, v, "")
		}
		if e := tooLarge(err); e != nil {
			return e
		}
		return newError(http.StatusBadRequest, codeInvalidJSON, "unexpected data after the JSON document")
	}
	if e := tooLarge(err); e != nil {
		return e
	}
	var syntax *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF):
		return newError(http.StatusBadRequest, codeInvalidJSON, "the request body is empty; send a JSON document")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return newError(http.StatusBadRequest, codeInvalidJSON, "the JSON document is truncated")
	case errors.As(err, &syntax):
		return newError(http.StatusBadRequest, codeInvalidJSON, "malformed JSON at byte %d: %v", syntax.Offset, syntax)
	}
	return newError(http.StatusBadRequest, codeInvalidJSON, "invalid JSON document: %v", err)
}

// decodeValue decodes the valid JSON value raw into the struct v. Unlike
// encoding/json, member names must match v's json tags exactly (JSON:API
// names are case-sensitive), and unknown members are refused. prefix is the
// JSON pointer of raw in the document, for error sources.
func decodeValue(raw json.RawMessage, v any, prefix string) error {
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err == nil {
			known := jsonMembers(v)
			names := make([]string, 0, len(members))
			for name := range members {
				names = append(names, name)
			}
			slices.Sort(names) // report the same member every time
			for _, name := range names {
				if !slices.Contains(known, name) {
					e := newError(http.StatusBadRequest, codeInvalidJSON, "unknown member %q in %s", truncate(name, 64), memberName(prefix, ""))
					e.Pointer = prefix + "/" + escapePointer(name)
					return e
				}
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		return nil
	}
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		e := newError(http.StatusBadRequest, codeInvalidJSON, "%s has the wrong type: got a JSON %s", memberName(prefix, typ.Field), typ.Value)
		e.Pointer = prefix
		if typ.Field != "" {
			e.Pointer = prefix + "/" + strings.ReplaceAll(typ.Field, ".", "/")
		}
		return e
	}
	return newError(http.StatusBadRequest, codeInvalidJSON, "invalid %s: %v", memberName(prefix, ""), err)
}

// jsonMembers lists the json tag names of the struct v points to.
func jsonMembers(v any) []string {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var names []string
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// escapePointer escapes a member name for a JSON pointer (RFC 6901).
func escapePointer(name string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(name)
}

func memberName(prefix, field string) string {
	p := strings.TrimPrefix(strings.ReplaceAll(prefix, "/", "."), ".")
	switch {
	case field == "":
		if p == "" {
			return "the document"
		}
		return p
	case p == "":
		return field
	}
	return p + "." + field
}

// tooLarge turns http.MaxBytesReader's error into a 413, and returns nil
// for any other error.
func tooLarge(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return newError(http.StatusRequestEntityTooLarge, codePayloadTooLarge,
			"request body is larger than the limit of %d bytes", mbe.Limit)
	}
	return nil
}

// hasID reports whether the resource names an id; null and "" (what the
// original client sends) name none.
func hasID(res *inResource) bool {
	id := string(res.ID)
	return id != "" && id != "null" && id != `""`
}

// sameID refuses a resource id other than id, the one in the URL.
func sameID(res *inResource, id int64) error {
	if hasID(res) {
		got, ok := parseIDValue(res.ID)
		if !ok || got != id {
			return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
				Detail: fmt.Sprintf("data.id must be %d, the id in the URL", id), Pointer: "/data/id"}
		}
	}
	return nil
}

func noClientID(res *inResource) error {
	if hasID(res) {
		return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail: "client-generated ids are not supported; leave data.id out", Pointer: "/data/id"}
	}
	return nil
}

func badSource() error {
	return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
		Detail:  "source must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit",
		Pointer: "/data/attributes/source"}
}

func missing(attr string) error {
	return &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
		Detail: attr + " is required", Pointer: "/data/attributes/" + attr}
}

func parseTime(attr, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &apiError{Status: http.StatusUnprocessableEntity, Code: codeUnprocessable,
			Detail:  fmt.Sprintf("%s must be an RFC 3339 timestamp such as 2017-05-01T12:00:00Z, not %q", attr, truncate(s, 64)),
			Pointer: "/data/attributes/" + attr}
	}
	return t.UTC(), nil
}

// parseIDValue accepts a JSON number or string holding a positive integer
// that fits int64.
func parseIDValue(raw json.RawMessage) (int64, bool) {
	s := string(raw)
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return 0, false
		}
		s = str
	}
	return parseID(s)
}

// parseID parses a positive decimal integer that fits int64; signs, spaces,
// fractions and exponents are refused.
func parseID(s string) (int64, bool) {
	if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}
