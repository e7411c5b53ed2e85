package images

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// A backup whose bootstrap superuser is not "postgres" is asked for its
// name in single-user mode, and its postgres is running again afterwards.
func TestFindSuperuserNotPostgres(t *testing.T) {
	testenv.RequireRoot(t)
	sup, err := supervisor.New("postgres", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := testenv.TempDir(t)
	dir := filepath.Join(base, "data")
	bin := testenv.BinDir(t)
	uid, gid := testenv.PostgresUser(t)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	testenv.AsPostgres(t, filepath.Join(bin, "initdb"), "-D", dir, "-A", "trust", "-U", "boss", "--no-sync")
	// Single-user mode has the default search_path: an operator planted
	// there must not be what the superuser's query calls.
	plant := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "postgres"), "--single", "-D", dir, "template1")
	plant.Stdin = strings.NewReader("CREATE FUNCTION public.trap(oid, integer) RETURNS bool LANGUAGE plpgsql AS 'BEGIN RAISE EXCEPTION ''planted operator ran''; END';\n" +
		"CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = public.trap);\n")
	if out, err := plant.CombinedOutput(); err != nil {
		t.Fatalf("planting: %v\n%s", err, out)
	}
	t.Cleanup(func() { testenv.KillPostgresUnder(dir) })
	spec := supervisor.Spec{DataDir: dir, SocketDir: filepath.Join(base, "sock"), Port: privatePort,
		Settings: map[string]string{"fsync": "off"}, LogFile: filepath.Join(base, "postgres.log")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	proc, err := sup.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if proc != nil {
			proc.Stop(context.Background(), supervisor.Immediate, 5*time.Second)
		}
	}()
	s := New(Options{Supervisor: sup})
	defer s.Close()
	got, err := s.findSuperuser(ctx, spec.SocketDir, bin, dir, &proc, spec)
	if err != nil {
		t.Fatal(err)
	}
	if got != "boss" {
		t.Errorf("superuser %q, want boss", got)
	}
	if proc == nil || !proc.Alive() {
		t.Fatal("postgres is not running again after the single-user query")
	}
	if _, err := listDatabases(ctx, spec.SocketDir, got); err != nil {
		t.Errorf("cannot connect as %s afterwards: %v", got, err)
	}
}

func TestScriptError(t *testing.T) {
	script := "\\c shop\nDELETE FROM no_such_table;\n"
	for _, tt := range []struct {
		name, out string
		want      string
	}{
		{"error in the script",
			"You are now connected to database \"shop\" as user \"draupnir\".\n" +
				"psql:<stdin>:2: ERROR:  relation \"no_such_table\" does not exist\n" +
				"LINE 1: DELETE FROM no_such_table;\n" +
				"                    ^\n",
			"line 2: ERROR:  relation \"no_such_table\" does not exist\n" +
				"LINE 1: DELETE FROM no_such_table;\n" +
				"                    ^"},
		{"notices and output are dropped",
			"psql:<stdin>:1: NOTICE:  table \"x\" does not exist, skipping\n" +
				" count \n-------\n     3\n(1 row)\n\n" +
				"psql:<stdin>:2: ERROR:  permission denied for table t\n",
			"line 2: ERROR:  permission denied for table t"},
		{"the appended check names no line",
			"psql:<stdin>:9: ERROR:  the anonymisation script ended inside a transaction block (BEGIN without COMMIT)\n" +
				"CONTEXT:  PL/pgSQL function inline_code_block line 3 at RAISE\n",
			"ERROR:  the anonymisation script ended inside a transaction block (BEGIN without COMMIT)\n" +
				"CONTEXT:  PL/pgSQL function inline_code_block line 3 at RAISE"},
		{"no psql message at all", "psql: error: connection to server failed\n", "psql: error: connection to server failed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := scriptError(tt.out, errors.New("exit status 3"), script); got != tt.want {
				t.Errorf("scriptError =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestKeepSetting(t *testing.T) {
	user := map[string]bool{"search_path": true, "work_mem": true, "session_preload_libraries": false,
		"dynamic_library_path": false, "role": true, "session_authorization": true, "log_statement": false}
	for name, want := range map[string]bool{
		"search_path": true, "work_mem": true, "myapp.tenant": true,
		"session_preload_libraries": false, "dynamic_library_path": false, "log_statement": false,
		"role": false, "session_authorization": false, "no_such_setting": false,
	} {
		if got := keepSetting(name, user); got != want {
			t.Errorf("keepSetting(%q) = %v, want %v", name, got, want)
		}
	}
}
