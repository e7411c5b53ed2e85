package standby

import (
	"reflect"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir/internal/conninfo"
)

// TestParseConninfo checks the standby's own refusal of what Draupnir sets
// or must not hold; internal/conninfo tests the reading itself.
func TestParseConninfo(t *testing.T) {
	tests := []struct {
		in      string
		want    conninfo.Keywords
		wantErr string
	}{
		{"host=db port=5432 user=rep", conninfo.Keywords{"host": "db", "port": "5432", "user": "rep"}, ""},
		{"postgresql://rep@db:6543/app?sslmode=require", conninfo.Keywords{"user": "rep", "host": "db", "port": "6543", "dbname": "app", "sslmode": "require"}, ""},
		{"host=db password=secret", nil, "passfile"},
		{"host=db password=''", nil, "passfile"},
		{"postgresql://rep:secret@db/app", nil, "passfile"},
		{"postgresql://rep@db/app?password=secret", nil, "passfile"},
		{"host=db passfile=/etc/x", nil, "draupnir sets itself"},
		{"host=db replication=database", nil, "draupnir sets itself"},
		{"postgres://db/app?replication=true", nil, "draupnir sets itself"},
		{"host", nil, `missing "="`},
		{"host='db", nil, "unterminated"},
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
