package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// The tests in this file plant traps in a real source cluster — as an
// application role and as the source's superuser — take a base backup,
// finalise it and prove each trap inert: nothing ran with more rights than
// its own role, no source role can log in, system objects have a fresh
// cluster's privileges, and no removed value is left in the image's files.

// hostileSQL runs as the source's superuser in database postgres after
// newSource's shop data exists. Every planted function records where it ran
// and with which rights into public.pwned of its database.
const hostileRolesSQL = `
ALTER ROLE app PASSWORD 'app-secret-pw';
CREATE ROLE boss SUPERUSER LOGIN PASSWORD 'boss-secret-pw';
SET password_encryption = 'md5';
CREATE ROLE reader LOGIN PASSWORD 'reader-secret-pw';
RESET password_encryption;
CREATE ROLE draupnir LOGIN PASSWORD 'planted-instance-role-pw';
GRANT pg_read_server_files, pg_execute_server_program TO draupnir;
GRANT draupnir TO app;
GRANT pg_read_server_files TO app;
GRANT pg_write_server_files TO reader;
GRANT boss TO reader;
`

// recordSQL creates, in one database, the table traps write to and the
// function that writes it.
const recordSQL = `
CREATE TABLE public.pwned (what text, who text, su bool);
GRANT ALL ON public.pwned TO PUBLIC;
CREATE FUNCTION public.record(what text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO public.pwned VALUES (what, current_user,
    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user));
END $f$;
GRANT EXECUTE ON FUNCTION public.record(text) TO PUBLIC;
`

// appTrapsSQL runs as the application role app in shop: functions that
// would beat built-ins in name resolution, row and statement triggers and a
// rule on the tables the script changes.
const appTrapsSQL = `
SET ROLE app;
CREATE FUNCTION public.format(text, name) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('public.format(text,name)'); RETURN pg_catalog.format($1, $2); END $f$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('public.format(text,text)'); RETURN pg_catalog.format($1, $2); END $f$;
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('public.quote_ident(name)'); RETURN pg_catalog.quote_ident($1::text); END $f$;
CREATE SCHEMA evil;
CREATE FUNCTION evil.pg_get_function_identity_arguments(oid) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('evil.pg_get_function_identity_arguments'); RETURN ''; END $f$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('evil.now'); RETURN pg_catalog.statement_timestamp(); END $f$;
CREATE FUNCTION public.trap() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('trigger ' || TG_NAME); RETURN COALESCE(NEW, OLD); END $f$;
CREATE TRIGGER on_update BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION public.trap();
CREATE TRIGGER on_delete AFTER DELETE ON secret_tokens FOR EACH STATEMENT EXECUTE FUNCTION public.trap();
CREATE TRIGGER always_update AFTER UPDATE ON customers FOR EACH STATEMENT EXECUTE FUNCTION public.trap();
ALTER TABLE customers ENABLE ALWAYS TRIGGER always_update;
CREATE RULE on_update_rule AS ON UPDATE TO customers DO ALSO SELECT public.record('rule');
RESET ROLE;
`

// superTrapsSQL runs as the source's superuser in shop: event triggers,
// settings that put the application's schema first, privileges on system
// objects and functions planted among them.
const superTrapsSQL = `
CREATE FUNCTION public.evt() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('event ' || TG_EVENT || ' ' || TG_TAG); END $f$;
CREATE EVENT TRIGGER e_start ON ddl_command_start EXECUTE FUNCTION public.evt();
CREATE EVENT TRIGGER e_end ON ddl_command_end EXECUTE FUNCTION public.evt();
CREATE EVENT TRIGGER e_drop ON sql_drop EXECUTE FUNCTION public.evt();
CREATE EVENT TRIGGER e_rewrite ON table_rewrite EXECUTE FUNCTION public.evt();
ALTER EVENT TRIGGER e_end ENABLE ALWAYS;
ALTER DATABASE shop SET search_path = evil, pg_catalog, public;
ALTER ROLE postgres SET search_path = evil, pg_catalog, public;
ALTER ROLE ALL SET search_path = evil, pg_catalog, public;
GRANT EXECUTE ON FUNCTION pg_catalog.lo_import(text) TO app;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text) TO app;
ALTER FUNCTION pg_catalog.pg_read_binary_file(text) OWNER TO app;
ALTER FUNCTION pg_catalog.pg_stat_file(text) SECURITY DEFINER;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text) TO PUBLIC;
GRANT ALTER SYSTEM ON PARAMETER archive_command TO app;
GRANT SET ON PARAMETER log_statement TO PUBLIC;
GRANT SELECT ON pg_catalog.pg_authid TO app;
GRANT SELECT (rolpassword) ON pg_catalog.pg_authid TO PUBLIC;
GRANT USAGE ON SCHEMA pg_catalog TO app WITH GRANT OPTION;
UPDATE pg_catalog.pg_language SET lanpltrusted = true WHERE lanname = 'c';
GRANT USAGE ON LANGUAGE c TO PUBLIC;
CREATE FUNCTION pg_catalog.evil_sd() RETURNS bool LANGUAGE sql SECURITY DEFINER
  AS 'SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user';
GRANT EXECUTE ON FUNCTION pg_catalog.evil_sd() TO PUBLIC;
CREATE FUNCTION pg_catalog.evil_oideq(oid, integer) RETURNS bool LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('pg_catalog.=(oid,integer)'); RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $f$;
CREATE OPERATOR pg_catalog.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = pg_catalog.evil_oideq);
CREATE FUNCTION public.super_sd() RETURNS bool LANGUAGE sql SECURITY DEFINER
  AS 'SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user';
GRANT EXECUTE ON FUNCTION public.super_sd() TO PUBLIC;
CREATE FUNCTION pg_catalog.format(text, name) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.record('pg_catalog.format(text,name)'); RETURN pg_catalog.format($1, VARIADIC ARRAY[$2::text]); END $f$;
CREATE EXTENSION postgres_fdw;
CREATE SERVER prod FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '192.0.2.1', dbname 'prod', connect_timeout '1');
CREATE USER MAPPING FOR app SERVER prod OPTIONS (user 'produser', password 'prod-fdw-secret');
CREATE USER MAPPING FOR PUBLIC SERVER prod OPTIONS (user 'anyone', password 'public-fdw-secret');
CREATE SUBSCRIPTION from_prod CONNECTION 'host=192.0.2.1 dbname=prod user=repl password=subscription-secret connect_timeout=1'
  PUBLICATION everything WITH (connect = false, slot_name = 'from_prod');
ALTER SUBSCRIPTION from_prod ENABLE;
ALTER TABLE customers ADD COLUMN card text;
UPDATE customers SET card = '4000-1234-5678-' || lpad(id::text, 4, '0');
CREATE STATISTICS customer_stats (mcv) ON email, card FROM customers;
ANALYZE;
`

// templateTrapsSQL runs in template1 and, made connectable for the purpose,
// template0: what a database created from them inherits.
const templateTrapsSQL = `
GRANT EXECUTE ON FUNCTION pg_catalog.lo_import(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC;
`

// anonymiseHostile is the script: it overwrites the e-mail addresses and
// card numbers and deletes the tokens.
const anonymiseHostile = `\c shop
DELETE FROM secret_tokens;
UPDATE customers SET email = 'customer' || id || '@example.com', card = 'card-' || id;
`

// hostileSource is newSource with every trap above planted.
func hostileSource(t *testing.T) *testenv.Source {
	t.Helper()
	src := newSource(t)
	src.SQL(t, "postgres", hostileRolesSQL)
	src.SQL(t, "shop", recordSQL)
	src.SQL(t, "shop", appTrapsSQL)
	src.SQL(t, "shop", superTrapsSQL)
	src.SQL(t, "template1", templateTrapsSQL)
	src.SQL(t, "postgres", "ALTER DATABASE template0 ALLOW_CONNECTIONS true")
	src.SQL(t, "template0", templateTrapsSQL)
	src.SQL(t, "postgres", "ALTER DATABASE template0 ALLOW_CONNECTIONS false")
	// The traps fired while they were set; only what finalise fires counts.
	src.SQL(t, "shop", "DELETE FROM public.pwned")
	// Last: they change every later session on the source too.
	src.SQL(t, "postgres", `ALTER ROLE ALL SET session_preload_libraries = 'auto_explain';
ALTER DATABASE shop SET dynamic_library_path = '/tmp';
ALTER DATABASE shop SET session_replication_role = replica;
ALTER DATABASE shop SET work_mem = '8MB';
ALTER DATABASE shop SET myapp.tenant = 'acme'`)
	return src
}

// psqlIn is psql on another database of the instance.
func psqlIn(t *testing.T, in *draupnir.Instance, db, sql string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-p", strconv.Itoa(in.Port), "-U", in.Username, "-d", db, "-c", sql)
	cmd.Env = append(append(os.Environ(), "PGHOST=127.0.0.1", "PGPASSWORD="+in.Password, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=require"), env...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestHostileSource(t *testing.T) {
	s := startServer(t, "")
	src := hostileSource(t)
	verifiers := strings.Fields(src.SQL(t, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL"))
	if len(verifiers) < 4 {
		t.Fatalf("the source has %d password hashes, want at least 4", len(verifiers))
	}
	b := src.BaseBackup(t, "-z", "-X", "stream")
	im := s.readyImage(t, anonymiseHostile, filepath.Join(b, "base.tar.gz"), filepath.Join(b, "pg_wal.tar.gz"))
	in, err := s.user().Instances().Create(context.Background(), draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("nothing planted ran as a superuser", func(t *testing.T) {
		if got := mustPSQL(t, in, "SELECT string_agg(what || ' as ' || who, '; ') FROM pwned WHERE su OR who <> 'draupnir'"); got != "" {
			t.Errorf("planted code ran with more than the data owners' rights during finalise: %s", got)
		}
		// The traps were live: the script's changes fired the triggers and
		// the rule, as the instance role.
		got := mustPSQL(t, in, "SELECT string_agg(DISTINCT what, ', ' ORDER BY what) FROM pwned")
		for _, want := range []string{"trigger on_update", "trigger always_update", "trigger on_delete", "rule"} {
			if !strings.Contains(got, want) {
				t.Errorf("trap %q did not fire during the script (fired: %s); the test proves nothing", want, got)
			}
		}
	})

	t.Run("only the instance role logs in, and no password is left", func(t *testing.T) {
		if got := mustPSQL(t, in, "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolcanlogin"); got != "draupnir,postgres" {
			t.Errorf("roles that can log in: %s; want draupnir (and the bootstrap superuser, on the private socket only)", got)
		}
		if got := mustPSQL(t, in, "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolsuper"); got != "postgres" {
			t.Errorf("superusers: %s; want only the bootstrap superuser", got)
		}
		if got := mustPSQL(t, in, "SELECT string_agg(b.rolname, ',') FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE b.rolname LIKE 'pg\\_%' OR b.rolsuper"); got != "" {
			t.Errorf("memberships in predefined or superuser roles survived: %s", got)
		}
		for _, login := range []struct{ user, password string }{
			{"app", "app-secret-pw"}, {"boss", "boss-secret-pw"}, {"reader", "reader-secret-pw"},
			{"draupnir", "planted-instance-role-pw"}, {"draupnir_from_source", "planted-instance-role-pw"},
		} {
			if out, err := psql(t, in, "SELECT 1", "PGUSER="+login.user, "PGPASSWORD="+login.password); err == nil {
				t.Errorf("source role %s logged in with its production password: %s", login.user, out)
			}
		}
	})

	t.Run("system objects have a fresh cluster's privileges", func(t *testing.T) {
		for _, db := range []string{in.Database, "template1"} {
			for _, q := range []string{
				"SELECT lo_import('/etc/hostname')",
				"SELECT pg_read_file('/etc/hostname')",
				"SELECT pg_ls_dir('.')",
				"SELECT pg_read_binary_file('/etc/hostname')",
				"SELECT pg_stat_file('/etc/hostname')",
				"ALTER SYSTEM SET archive_command = 'id'",
				"SET log_statement = 'all'",
				"SELECT rolpassword FROM pg_authid",
				"CREATE FUNCTION c_fn() RETURNS int LANGUAGE c AS 'x', 'y'",
				"SELECT pg_catalog.evil_sd()",
			} {
				if out, err := psqlIn(t, in, db, q); err == nil {
					t.Errorf("in %s, the instance role could %q: %s", db, q, out)
				}
			}
		}
		if got := mustPSQL(t, in, "SELECT string_agg(o.oprname || '(' || o.oprleft::regtype || ',' || o.oprright::regtype || ')', ', ') FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE n.nspname = 'pg_catalog' AND o.oid >= 16384"); got != "" {
			t.Errorf("operators planted in pg_catalog are still there: %s", got)
		}
		if got := mustPSQL(t, in, "SELECT public.super_sd()"); got != "f" {
			t.Errorf("a SECURITY DEFINER function of the source's superuser runs as a superuser: %s", got)
		}
		// A database made from either template inherits none of it.
		for _, tmpl := range []string{"template1", "template0"} {
			mustPSQL(t, in, "CREATE DATABASE from_"+tmpl+" TEMPLATE "+tmpl)
			if out, err := psqlIn(t, in, "from_"+tmpl, "SELECT lo_import('/etc/hostname')"); err == nil {
				t.Errorf("a database made from %s lets the instance role use lo_import: %s", tmpl, out)
			}
		}
	})

	t.Run("no way out to the source's network with its credentials", func(t *testing.T) {
		if got := mustPSQL(t, in, "SELECT count(*) FROM pg_subscription"); got != "0" {
			t.Errorf("%s subscriptions survived: their workers connect to production", got)
		}
		if got := mustPSQL(t, in, "SET ROLE app; SELECT count(*) FROM pg_user_mappings WHERE umoptions IS NOT NULL"); got != "0" {
			t.Errorf("%s user mappings keep their options (production credentials)", got)
		}
	})

	t.Run("only settings any user may make survive on roles and databases", func(t *testing.T) {
		got := mustPSQL(t, in, "SELECT string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting")
		for _, planted := range []string{"session_preload_libraries", "dynamic_library_path", "session_replication_role"} {
			if strings.Contains(got, planted) {
				t.Errorf("the source's %s survived on a role or database: %s", planted, got)
			}
		}
		if got := mustPSQL(t, in, "SELECT current_setting('session_replication_role')"); got != "origin" {
			t.Errorf("instance sessions run with session_replication_role = %s", got)
		}
		if got := mustPSQL(t, in, "SELECT current_setting('work_mem') || '|' || current_setting('myapp.tenant')"); got != "8MB|acme" {
			t.Errorf("the application's own settings were lost: %s", got)
		}
	})

	t.Run("event triggers are back, and fire as the instance role", func(t *testing.T) {
		if got := mustPSQL(t, in, "SELECT string_agg(evtname || '=' || evtenabled::text, ',' ORDER BY evtname) FROM pg_event_trigger"); got != "e_drop=O,e_end=A,e_rewrite=O,e_start=O" {
			t.Errorf("event triggers: %s", got)
		}
	})

	t.Run("statistics describe only the anonymised data", func(t *testing.T) {
		stats := mustPSQL(t, in, "SELECT string_agg(COALESCE(most_common_vals::text, '') || COALESCE(histogram_bounds::text, ''), ' ') FROM pg_stats WHERE tablename = 'customers' AND attname IN ('email', 'card')")
		if stats == "" {
			t.Fatal("no statistics on customers: the image was not analysed")
		}
		ext := mustPSQL(t, in, "SELECT most_common_vals::text FROM pg_stats_ext WHERE statistics_name = 'customer_stats'")
		for _, secret := range []string{"real.example", "4000-1234"} {
			if strings.Contains(stats, secret) || strings.Contains(ext, secret) {
				t.Errorf("statistics still show %q", secret)
			}
		}
	})

	t.Run("no removed value is left in the image's files", func(t *testing.T) {
		secrets := append([]string{"real.example", "4000-1234-5678", "s3cr3t-production-token",
			"prod-fdw-secret", "public-fdw-secret", "subscription-secret"}, verifiers...)
		found := grepTree(t, filepath.Join(s.layout().Snapshots(), strconv.FormatInt(im.ID, 10)), secrets)
		for _, f := range found {
			t.Error(f)
		}
	})
}

// TestHostileSourceScriptAsSuperuser runs the script as the superuser, as
// images.script_as_superuser asks: the source's triggers and rules must not
// fire while it runs, and are back afterwards.
func TestHostileSourceScriptAsSuperuser(t *testing.T) {
	s := startServer(t, "[images]\nscript_as_superuser = true\n")
	src := hostileSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymiseHostile+"SELECT count(*) FROM pg_authid;\n", filepath.Join(b, "base.tar"))
	in, err := s.user().Instances().Create(context.Background(), draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustPSQL(t, in, "SELECT string_agg(what || ' as ' || who, '; ') FROM pwned"); got != "" {
		t.Errorf("source code ran during a superuser script: %s", got)
	}
	if got := mustPSQL(t, in, "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal"); got != "always_update=A,on_delete=O,on_update=O" {
		t.Errorf("triggers after finalise: %s", got)
	}
	if got := mustPSQL(t, in, "SELECT ev_enabled FROM pg_rewrite WHERE rulename = 'on_update_rule'"); got != "O" {
		t.Errorf("rule after finalise: %q", got)
	}
	if got := mustPSQL(t, in, "SELECT count(*) FROM customers WHERE email LIKE '%real.example'"); got != "0" {
		t.Errorf("%s customers keep their real address", got)
	}
}

// grepTree lists the files under root that contain any of needles.
func grepTree(t *testing.T, root string, needles []string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, []byte(n)) {
				rel, _ := filepath.Rel(root, path)
				found = append(found, rel+" holds "+strconv.Quote(n))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
