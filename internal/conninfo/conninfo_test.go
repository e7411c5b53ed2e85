package conninfo

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Keywords
		wantErr string
	}{
		{"host=db port=5432 user=rep", Keywords{"host": "db", "port": "5432", "user": "rep"}, ""},
		{"  host = db\tsslmode='verify-full' ", Keywords{"host": "db", "sslmode": "verify-full"}, ""},
		{`options='-c x=\'y z\'' user=a\ b`, Keywords{"options": "-c x='y z'", "user": "a b"}, ""},
		{"host=a host=b", Keywords{"host": "b"}, ""},
		{"postgresql://rep@db:6543/app?sslmode=require", Keywords{"user": "rep", "host": "db", "port": "6543", "dbname": "app", "sslmode": "require"}, ""},
		{"postgres://db", Keywords{"host": "db"}, ""},
		{"postgres://rep:secret@db/app", Keywords{"user": "rep", "password": "", "host": "db", "dbname": "app"}, ""},
		{"postgres://rep@db/app?password=secret&sslmode=a&sslmode=b", Keywords{"user": "rep", "password": "secret", "host": "db", "dbname": "app", "sslmode": "b"}, ""},
		{"", Keywords{}, ""},
		{"host", nil, `missing "="`},
		{"host port=1", nil, `missing "="`},
		{"=db", nil, `missing "="`},
		{"host='db", nil, "unterminated"},
		{`host='db\'`, nil, "unterminated"},
		{"postgres://u:secret@h:port/db", nil, "not a valid postgres:// URI"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) error = %v, want one saying %q", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("Parse(%q): the error shows the password: %v", tt.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestSplit checks that Split keeps order and repeats, which Parse's map
// loses.
func TestSplit(t *testing.T) {
	t.Parallel()
	got, err := Split("b=2 a='x y' b=3")
	want := []Param{{"b", "2"}, {"a", "x y"}, {"b", "3"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Split = %v, %v; want %v", got, err, want)
	}
}

// TestWrite round-trips values that need quoting through both writers.
func TestWrite(t *testing.T) {
	t.Parallel()
	tests := []Keywords{
		{"host": "/run/a b", "application_name": `it's \ odd`, "port": "5432"},
		{"host": "db", "options": "", "user": "tab\there"},
		{"dbname": `\`, "user": "'", "host": "a=b"},
	}
	for _, k := range tests {
		got, err := Parse(k.String())
		if err != nil || !reflect.DeepEqual(got, k) {
			t.Errorf("Parse(%q) = %v, %v; want %v", k.String(), got, err, k)
		}
	}
	if got, want := (Keywords{"port": "5432", "host": "db", "sslmode": "x y"}).String(), "host=db port=5432 sslmode='x y'"; got != want {
		t.Errorf("String = %q, want %q (sorted, quoted only where needed)", got, want)
	}
	if got, want := Join([]Param{{"b", "1"}, {"a", ""}, {"b", `a'b`}}), `b=1 a='' b='a\'b'`; got != want {
		t.Errorf("Join = %q, want %q", got, want)
	}
}

func TestWith(t *testing.T) {
	t.Parallel()
	k := Keywords{"host": "db"}
	got := k.With("host", "other", "application_name", "x")
	if !reflect.DeepEqual(got, Keywords{"host": "other", "application_name": "x"}) {
		t.Errorf("With = %v", got)
	}
	if k["host"] != "db" || len(k) != 1 {
		t.Errorf("With changed its receiver: %v", k)
	}
}

func TestForGo(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want Keywords }{
		{Keywords{"host": "/run/a b", "application_name": "x", "port": "5432"}, Keywords{"host": "/run/a b", "application_name": "x", "port": "5432"}},
		{Keywords{"host": "h", "keepalives": "1"}, Keywords{"host": "h"}},
		{Keywords{"options": "-c x=y"}, Keywords{}},
	}
	for _, tt := range tests {
		if got := tt.in.ForGo(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%v.ForGo() = %v, want %v", tt.in, got, tt.want)
		}
	}
}
