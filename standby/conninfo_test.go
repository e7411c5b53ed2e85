package standby

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseConninfo(t *testing.T) {
	tests := []struct {
		in      string
		want    conninfo
		wantErr string
	}{
		{"host=db port=5432 user=rep", conninfo{"host": "db", "port": "5432", "user": "rep"}, ""},
		{"  host = db\tsslmode='verify-full' ", conninfo{"host": "db", "sslmode": "verify-full"}, ""},
		{`options='-c x=\'y z\'' user=a\ b`, conninfo{"options": "-c x='y z'", "user": "a b"}, ""},
		{"postgresql://rep@db:6543/app?sslmode=require", conninfo{"user": "rep", "host": "db", "port": "6543", "dbname": "app", "sslmode": "require"}, ""},
		{"postgres://db", conninfo{"host": "db"}, ""},
		{"", conninfo{}, ""},
		{"host=db password=secret", nil, "passfile"},
		{"postgresql://rep:secret@db/app", nil, "passfile"},
		{"postgresql://rep@db/app?password=secret", nil, "passfile"},
		{"host=db passfile=/etc/x", nil, "draupnir sets itself"},
		{"host=db replication=database", nil, "draupnir sets itself"},
		{"host", nil, `missing "="`},
		{"host='db", nil, "unterminated"},
		{"=db", nil, `missing "="`},
	}
	for _, tt := range tests {
		got, err := parseConninfo(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseConninfo(%q) error = %v, want one saying %q", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("parseConninfo(%q): the error shows the password: %v", tt.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseConninfo(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestConninfoString round-trips values that need quoting.
func TestConninfoString(t *testing.T) {
	c := conninfo{"host": "/run/a b", "application_name": `it's \ odd`, "port": "5432"}
	got, err := parseConninfo(c.String())
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Errorf("parseConninfo(%q) = %v, %v; want %v", c.String(), got, err, c)
	}
	if g := c.forGo(); len(g) != 3 {
		t.Errorf("forGo dropped known keywords: %v", g)
	}
	if g := (conninfo{"host": "h", "keepalives": "1"}).forGo(); !reflect.DeepEqual(g, conninfo{"host": "h"}) {
		t.Errorf("forGo kept a keyword pgconn does not know: %v", g)
	}
}
