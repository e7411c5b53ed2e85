package sources

import (
	"errors"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
)

func TestRedactConninfo(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"host=db user=repl", "host=db user=repl"},
		{"host=db password=s3cr3t user=repl", "host=db user=repl"},
		{"host=db password = 's3 cr\\'3t' user=repl", "host=db user=repl"},
		{"host = db  password='' dbname='my db'", "host=db dbname='my db'"},
		{"host=db password=s3\\ cr3t", "host=db"},
		{"postgres://repl:s3cr3t@db:5432/app?sslmode=require", "postgres://repl@db:5432/app?sslmode=require"},
		{"postgresql://db/app?user=repl&password=s3cr3t", "postgresql://db/app?user=repl"},
		{"host=db password='s3cr3t", "(not shown: unreadable)"},
		{"host=db s3cr3t", "(not shown: unreadable)"},
	}
	for _, tt := range tests {
		got := RedactConninfo(tt.in)
		if got != tt.want {
			t.Errorf("RedactConninfo(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if strings.Contains(got, "s3") {
			t.Errorf("RedactConninfo(%q) = %q shows the password", tt.in, got)
		}
	}
}

// TestBackupError checks that pg_basebackup's failures become errors that
// name the source, say what is likely wrong and never repeat the password.
func TestBackupError(t *testing.T) {
	t.Parallel()
	c := config.Source{Name: "app", Conninfo: "host=db user=repl password=pw-s3cr3t"}
	tests := []struct{ stderr, want string }{
		{"pg_basebackup: error: can only write single tablespace to stdout, database has 2", "tablespaces"},
		{`pg_basebackup: error: connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  must be superuser or replication role to start walsender`, "REPLICATION"},
		{"pg_basebackup: error: connection to server on socket \"/x/.s.PGSQL.5432\" failed: FATAL:  permission denied to start WAL sender\nDETAIL:  Only roles with the REPLICATION attribute may start a WAL sender process.", "REPLICATION"},
		{`pg_basebackup: error: connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  no pg_hba.conf entry for replication connection from host "10.0.0.2", user "repl", no encryption`, "pg_hba.conf"},
		{`pg_basebackup: error: connection to server at "db" (10.0.0.1), port 5432 failed: FATAL:  password authentication failed for user "repl" (password pw-s3cr3t)`, "authentication failed"},
		{`pg_basebackup: error: invalid connection option "no_such_option"`, "conninfo is not valid"},
		{`pg_basebackup: error: connection to server at "db" (10.0.0.1), port 5432 failed: Connection refused`, "unreachable"},
		{`pg_basebackup: error: could not translate host name "nowhere" to address: Name or service not known`, "unreachable"},
		{"pg_basebackup: error: could not get COPY data stream: ERROR:  something else", "the base backup failed"},
		{"", "the base backup failed"},
		{"pg_basebackup: error: FATAL:  \x1b]0;owned\x07\x1b[2J hostile", "the base backup failed"},
	}
	for _, tt := range tests {
		err := backupError(c, tt.stderr, errors.New("exit status 1"))
		msg := err.Error()
		if !strings.Contains(msg, `source "app"`) || !strings.Contains(msg, tt.want) {
			t.Errorf("stderr %q gives %q, want it to name the source and say %q", tt.stderr, msg, tt.want)
		}
		if strings.ContainsAny(msg, "\x1b\x07") {
			t.Errorf("stderr %q gives %q, which holds terminal escapes", tt.stderr, msg)
		}
		if strings.Contains(msg, "pw-s3cr3t") {
			t.Errorf("stderr %q gives %q, which shows the password", tt.stderr, msg)
		}
		if draupnir.KindOf(err) != draupnir.KindUnprocessable {
			t.Errorf("stderr %q gives an error of kind %v", tt.stderr, draupnir.KindOf(err))
		}
	}
}
