package images

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir"
)

// This file holds what finalise does to a booted backup, as its superuser,
// so that nothing the source planted outlives it with more rights than its
// own role: the source is assumed hostile. Its sessions pin search_path and
// run with event triggers off; roles lose their logins and passwords; system
// objects get back the privileges a fresh initdb gives them; and afterwards
// nothing the script removed is left in the files (rewrite, re-analyse).

// cluster is the privately booted backup finalise works on.
type cluster struct {
	sockDir   string
	superuser string // the bootstrap superuser's name
	major     int
}

func (c *cluster) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := connect(ctx, c.sockDir, c.superuser, db)
	if err != nil {
		return nil, fmt.Errorf("connecting to database %s of the private postgres: %w", db, err)
	}
	return conn, nil
}

// runSQL runs statements, built by finalise itself, one after another.
func runSQL(ctx context.Context, conn *pgx.Conn, stmts ...string) error {
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %w", firstLine(q), err)
		}
	}
	return nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes s as a string constant; sessions pin
// standard_conforming_strings on, so only quotes need doubling.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// database is one database of the cluster, templates included.
type database struct {
	name      string
	allowConn bool
}

func (c *cluster) databases(ctx context.Context, conn *pgx.Conn) ([]database, error) {
	rows, err := conn.Query(ctx, `SELECT datname::pg_catalog.text, datallowconn FROM pg_catalog.pg_database`)
	if err != nil {
		return nil, fmt.Errorf("listing databases: %w", err)
	}
	var dbs []database
	for rows.Next() {
		var d database
		if err := rows.Scan(&d.name, &d.allowConn); err != nil {
			return nil, err
		}
		dbs = append(dbs, d)
	}
	return dbs, rows.Err()
}

// hardening is what finalise changed for its own work and puts back at the
// end: event triggers it turned off, databases it opened for connections.
type hardening struct {
	c          *cluster
	base       *baseline
	superusers map[uint32]bool // the source's superusers, demoted but the bootstrap one
	closedDBs  []string        // datallowconn was false
	eventTrigs map[string][]stateOf
	userTrigs  map[string][]tableTrigger
}

// stateOf is an event trigger or rule and its enabled state ('O', 'R', 'A').
type stateOf struct {
	name, state string
}

type tableTrigger struct {
	table, name, state string
	rule               bool
}

// harden prepares the booted cluster for the anonymisation script: every
// database reachable, event triggers off, system privileges reset, roles
// without logins but the instance role, which owns the data.
func (c *cluster) harden(ctx context.Context, base *baseline) (*hardening, error) {
	h := &hardening{c: c, base: base, eventTrigs: map[string][]stateOf{}, userTrigs: map[string][]tableTrigger{}}
	return h, h.again(ctx)
}

// again makes one pass of the hardening; finalise repeats it after the
// script, which may have created databases, roles, grants and objects (as
// superuser, if so configured). Every step is idempotent.
func (h *hardening) again(ctx context.Context) error {
	conn, err := h.c.connect(ctx, "template1")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	dbs, err := h.c.databases(ctx, conn)
	if err != nil {
		return err
	}
	// template0 and databases closed to connections can still be copied by
	// CREATE DATABASE … TEMPLATE: they are hardened too.
	for _, d := range dbs {
		if !d.allowConn {
			if err := runSQL(ctx, conn, "ALTER DATABASE "+quoteIdent(d.name)+" ALLOW_CONNECTIONS true"); err != nil {
				return err
			}
			h.closedDBs = append(h.closedDBs, d.name)
		}
	}
	if err := h.eachDatabase(ctx, dbs, h.disableEventTriggers); err != nil {
		return err
	}
	if err := h.roles(ctx, conn); err != nil {
		return err
	}
	if err := h.eachDatabase(ctx, dbs, func(ctx context.Context, conn *pgx.Conn, db string) error {
		if err := h.systemPrivileges(ctx, conn); err != nil {
			return err
		}
		if err := outboundCredentials(ctx, conn); err != nil {
			return err
		}
		return h.ownership(ctx, conn, db)
	}); err != nil {
		return err
	}
	return h.shared(ctx, conn)
}

// shared resets what the source set cluster-wide: parameter privileges
// (GRANT SET / ALTER SYSTEM ON PARAMETER; a fresh cluster has none), and the
// ALTER ROLE / ALTER DATABASE … SET settings that only a superuser can make
// (session_preload_libraries could load a file planted in the backup into
// every instance session, as the postgres OS user). Settings any user may
// make — search_path, work_mem, an application's own — stay: they are part
// of how the data is used.
func (h *hardening) shared(ctx context.Context, conn *pgx.Conn) error {
	if h.c.major >= 15 {
		if err := runSQL(ctx, conn, "DELETE FROM pg_catalog.pg_parameter_acl"); err != nil {
			return err
		}
	}
	userSettable := map[string]bool{}
	rows, err := conn.Query(ctx, `SELECT s.name, s.context OPERATOR(pg_catalog.=) 'user'::pg_catalog.text FROM pg_catalog.pg_show_all_settings() s`)
	if err != nil {
		return fmt.Errorf("listing settings: %w", err)
	}
	for rows.Next() {
		var name string
		var user bool
		if err := rows.Scan(&name, &user); err != nil {
			return err
		}
		userSettable[strings.ToLower(name)] = user
	}
	if err := rows.Err(); err != nil {
		return err
	}
	type setting struct {
		db, role uint32
		config   []string
	}
	var settings []setting
	rows, err = conn.Query(ctx, `SELECT setdatabase, setrole, setconfig FROM pg_catalog.pg_db_role_setting`)
	if err != nil {
		return fmt.Errorf("listing role and database settings: %w", err)
	}
	for rows.Next() {
		var st setting
		if err := rows.Scan(&st.db, &st.role, &st.config); err != nil {
			return err
		}
		settings = append(settings, st)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var stmts []string
	for _, st := range settings {
		var keep []string
		for _, kv := range st.config {
			name, _, _ := strings.Cut(kv, "=")
			name = strings.ToLower(name)
			if keepSetting(name, userSettable) {
				keep = append(keep, kv)
			}
		}
		if len(keep) == len(st.config) {
			continue
		}
		where := " WHERE setdatabase OPERATOR(pg_catalog.=) " + oidLiteral(st.db) + " AND setrole OPERATOR(pg_catalog.=) " + oidLiteral(st.role)
		if len(keep) == 0 {
			stmts = append(stmts, "DELETE FROM pg_catalog.pg_db_role_setting"+where)
			continue
		}
		elems := make([]string, len(keep))
		for i, kv := range keep {
			elems[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(kv) + `"`
		}
		stmts = append(stmts, "UPDATE pg_catalog.pg_db_role_setting SET setconfig = "+
			quoteLiteral("{"+strings.Join(elems, ",")+"}")+"::pg_catalog.text[]"+where)
	}
	return runSQL(ctx, conn, stmts...)
}

// keepSetting reports whether a role or database setting of the source may
// stay: parameters any user may set, and the custom ones of applications
// (a dotted name no loaded module defines) — but not those that pick the
// session's identity.
func keepSetting(name string, userSettable map[string]bool) bool {
	switch name {
	case "role", "session_authorization":
		return false
	}
	if user, known := userSettable[name]; known {
		return user
	}
	return strings.Contains(name, ".")
}

// eachDatabase runs fn on a fresh pinned session in every database of dbs.
func (h *hardening) eachDatabase(ctx context.Context, dbs []database, fn func(context.Context, *pgx.Conn, string) error) error {
	for _, d := range dbs {
		conn, err := h.c.connect(ctx, d.name)
		if err != nil {
			return err
		}
		err = fn(ctx, conn, d.name)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("database %s: %w", d.name, err)
		}
	}
	return nil
}

// disableEventTriggers turns every event trigger of db off: they would fire
// on finalise's own DDL, as superuser. ALTER EVENT TRIGGER fires none. It
// also removes triggers and rules on system catalogs (only possible with
// allow_system_table_mods on the source), which finalise's catalog updates
// would otherwise fire.
func (h *hardening) disableEventTriggers(ctx context.Context, conn *pgx.Conn, db string) error {
	rows, err := conn.Query(ctx, `SELECT evtname::pg_catalog.text, evtenabled::pg_catalog.text FROM pg_catalog.pg_event_trigger
		WHERE evtenabled OPERATOR(pg_catalog.<>) 'D'::"char"`)
	if err != nil {
		return fmt.Errorf("listing event triggers: %w", err)
	}
	var trigs []stateOf
	for rows.Next() {
		var t stateOf
		if err := rows.Scan(&t.name, &t.state); err != nil {
			return err
		}
		trigs = append(trigs, t)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range trigs {
		if err := runSQL(ctx, conn, "ALTER EVENT TRIGGER "+quoteIdent(t.name)+" DISABLE"); err != nil {
			return err
		}
		h.eventTrigs[db] = append(h.eventTrigs[db], t)
	}
	return runSQL(ctx, conn,
		`DELETE FROM pg_catalog.pg_trigger WHERE tgrelid OPERATOR(pg_catalog.<) '16384'::pg_catalog.oid`,
		`DELETE FROM pg_catalog.pg_rewrite WHERE ev_class OPERATOR(pg_catalog.<) '16384'::pg_catalog.oid
		   AND ev_type OPERATOR(pg_catalog.<>) '1'::"char"`)
}

// restoreEventTriggers puts back the event triggers finalise turned off:
// in instances they fire on the instance role's DDL, with its rights.
func (h *hardening) restoreEventTriggers(ctx context.Context) error {
	for db, trigs := range h.eventTrigs {
		conn, err := h.c.connect(ctx, db)
		if err != nil {
			return err
		}
		for _, t := range trigs {
			mode := map[string]string{"O": "ENABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}[t.state]
			if mode == "" {
				continue
			}
			// The script may have dropped it.
			if err := runSQL(ctx, conn, "ALTER EVENT TRIGGER "+quoteIdent(t.name)+" "+mode); err != nil && !isUndefined(err) {
				conn.Close(ctx)
				return err
			}
		}
		conn.Close(ctx)
	}
	return nil
}

// reopen closes again the databases that did not allow connections.
func (h *hardening) reopen(ctx context.Context) error {
	if len(h.closedDBs) == 0 {
		return nil
	}
	conn, err := h.c.connect(ctx, "template1")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, db := range slices.Compact(slices.Sorted(slices.Values(h.closedDBs))) {
		if err := runSQL(ctx, conn, "ALTER DATABASE "+quoteIdent(db)+" ALLOW_CONNECTIONS false"); err != nil && !isUndefined(err) {
			return err
		}
	}
	return nil
}

func isUndefined(err error) bool {
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) {
		c := pe.SQLState()
		return c == "42704" || c == "3D000"
	}
	return false
}

// roles leaves exactly one role that can log in over the network, the
// instance role, and no password anywhere. The bootstrap superuser keeps its
// login: only the private unix socket reaches it. The source's other
// superusers are demoted (their objects go to the instance role first), every
// membership in a predefined role or the bootstrap superuser is revoked, and
// the instance role is made a member of every application role so that it
// can do with the data what they could.
func (h *hardening) roles(ctx context.Context, conn *pgx.Conn) error {
	type role struct {
		oid                 uint32
		name                string
		super, login, passw bool
	}
	rows, err := conn.Query(ctx, `SELECT oid, rolname::pg_catalog.text, rolsuper, rolcanlogin, rolpassword IS NOT NULL FROM pg_catalog.pg_authid`)
	if err != nil {
		return fmt.Errorf("listing roles: %w", err)
	}
	var roles []role
	for rows.Next() {
		var r role
		if err := rows.Scan(&r.oid, &r.name, &r.super, &r.login, &r.passw); err != nil {
			return err
		}
		roles = append(roles, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if h.superusers == nil {
		h.superusers = map[uint32]bool{}
		names := map[string]bool{}
		for _, r := range roles {
			names[r.name] = true
		}
		for _, r := range roles {
			if r.super {
				h.superusers[r.oid] = true
			}
			// A role of the source named like the instance role would hand
			// its memberships, settings and objects to every instance.
			if r.name == draupnir.InstanceRole {
				if r.oid == bootstrapOID {
					return unprocessable("the backup's bootstrap superuser is called %q, the name draupnir gives the instance role; rename it on the source", draupnir.InstanceRole)
				}
				to := draupnir.InstanceRole + "_from_source"
				for i := 2; names[to]; i++ {
					to = draupnir.InstanceRole + "_from_source_" + strconv.Itoa(i)
				}
				if err := runSQL(ctx, conn, "ALTER ROLE "+quoteIdent(r.name)+" RENAME TO "+quoteIdent(to)); err != nil {
					return err
				}
				names[to] = true
			}
		}
		if err := runSQL(ctx, conn, "CREATE ROLE "+quoteIdent(draupnir.InstanceRole)+
			" LOGIN NOSUPERUSER NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS INHERIT PASSWORD NULL"); err != nil {
			return err
		}
		return h.roles(ctx, conn)
	}
	var stmts []string
	isMember := map[string]bool{}
	for _, r := range roles {
		if r.super && r.oid != bootstrapOID {
			h.superusers[r.oid] = true // made by a script run as superuser
		}
		switch {
		case r.oid == bootstrapOID:
			if r.passw {
				stmts = append(stmts, "ALTER ROLE "+quoteIdent(r.name)+" PASSWORD NULL")
			}
		case r.oid < 16384: // predefined roles cannot log in or hold passwords
		case r.name == draupnir.InstanceRole:
			stmts = append(stmts, "ALTER ROLE "+quoteIdent(r.name)+
				" LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD NULL CONNECTION LIMIT -1 VALID UNTIL 'infinity'")
		default:
			stmts = append(stmts, "ALTER ROLE "+quoteIdent(r.name)+
				" NOLOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD NULL")
			// What a superuser owned goes to the instance role directly;
			// membership in a demoted superuser gives nothing more.
			if !h.superusers[r.oid] {
				isMember[r.name] = false
			}
		}
	}
	if err := runSQL(ctx, conn, stmts...); err != nil {
		return err
	}
	mrows, err := conn.Query(ctx, `SELECT g.oid, g.rolname::pg_catalog.text, m.rolname::pg_catalog.text, gr.rolname::pg_catalog.text
		FROM pg_catalog.pg_auth_members am
		JOIN pg_catalog.pg_authid g ON g.oid OPERATOR(pg_catalog.=) am.roleid
		JOIN pg_catalog.pg_authid m ON m.oid OPERATOR(pg_catalog.=) am.member
		JOIN pg_catalog.pg_authid gr ON gr.oid OPERATOR(pg_catalog.=) am.grantor`)
	if err != nil {
		return fmt.Errorf("listing role memberships: %w", err)
	}
	stmts = stmts[:0]
	for mrows.Next() {
		var goid uint32
		var grp, member, grantor string
		if err := mrows.Scan(&goid, &grp, &member, &grantor); err != nil {
			return err
		}
		switch {
		case goid < 16384 || h.superusers[goid]: // predefined roles, the source's superusers
			stmts = append(stmts, "REVOKE "+quoteIdent(grp)+" FROM "+quoteIdent(member)+" GRANTED BY "+quoteIdent(grantor))
		case member == draupnir.InstanceRole:
			if _, ok := isMember[grp]; ok {
				isMember[grp] = true
			} else {
				stmts = append(stmts, "REVOKE "+quoteIdent(grp)+" FROM "+quoteIdent(member)+" GRANTED BY "+quoteIdent(grantor))
			}
		}
	}
	if err := mrows.Err(); err != nil {
		return err
	}
	for grp, member := range isMember {
		if !member {
			stmts = append(stmts, "GRANT "+quoteIdent(grp)+" TO "+quoteIdent(draupnir.InstanceRole))
		}
	}
	slices.Sort(stmts)
	return runSQL(ctx, conn, stmts...)
}

// systemPrivileges gives the system objects of the connected database the
// privileges, owners and flags of a fresh cluster: a source's GRANT EXECUTE
// ON lo_import, SECURITY DEFINER on a catalog function, a trusted untrusted
// language. Functions planted in a system schema that no extension owns are
// moved out of it, so that no name resolution finds them there.
func (h *hardening) systemPrivileges(ctx context.Context, conn *pgx.Conn) error {
	names, err := roleNames(ctx, conn)
	if err != nil {
		return err
	}
	super := names[bootstrapOID]
	var stmts []string
	fns, err := readSysFuncs(ctx, conn, names)
	if err != nil {
		return err
	}
	var planted []string
	for key, f := range fns {
		want, ok := h.base.funcs[key]
		if !ok {
			if !f.extension {
				planted = append(planted, key)
			}
			continue
		}
		set := []string{}
		if f.acl != want.acl {
			lit, err := aclLiteral(want.acl, super)
			if err != nil {
				return err
			}
			set = append(set, "proacl = "+lit)
		}
		if f.secdef != want.secdef {
			set = append(set, "prosecdef = "+strconv.FormatBool(want.secdef))
		}
		if f.config && !want.config {
			set = append(set, "proconfig = NULL")
		}
		if f.owner != bootstrapOID {
			set = append(set, "proowner = '10'::pg_catalog.oid")
		}
		if len(set) > 0 {
			stmts = append(stmts, catalogUpdate("pg_proc", set, f.oid))
		}
	}
	rels, err := readSysRelations(ctx, conn, names)
	if err != nil {
		return err
	}
	for key, r := range rels {
		want, ok := h.base.relations[key]
		if !ok {
			continue
		}
		set := []string{}
		if r.acl != want {
			lit, err := aclLiteral(want, super)
			if err != nil {
				return err
			}
			set = append(set, "relacl = "+lit)
		}
		if r.owner != bootstrapOID {
			set = append(set, "relowner = '10'::pg_catalog.oid")
		}
		if len(set) > 0 {
			stmts = append(stmts, catalogUpdate("pg_class", set, r.oid))
		}
	}
	cols, err := readSysColumns(ctx, conn, names)
	if err != nil {
		return err
	}
	for key, col := range cols {
		want := h.base.columns[key] // "" (NULL) unless initdb grants on the column
		if col.acl == want {
			continue
		}
		lit, err := aclLiteral(want, super)
		if err != nil {
			return err
		}
		stmts = append(stmts, "UPDATE pg_catalog.pg_attribute SET attacl = "+lit+
			" WHERE attrelid OPERATOR(pg_catalog.=) "+oidLiteral(col.oid)+
			" AND attnum OPERATOR(pg_catalog.=) '"+strconv.Itoa(int(col.attnum))+"'::pg_catalog.int2")
	}
	nsps, err := readSysSchemas(ctx, conn, names)
	if err != nil {
		return err
	}
	for key, n := range nsps {
		want, ok := h.base.schemas[key]
		if !ok || (n.acl == want && n.owner == bootstrapOID) {
			continue
		}
		lit, err := aclLiteral(want, super)
		if err != nil {
			return err
		}
		stmts = append(stmts, catalogUpdate("pg_namespace", []string{"nspacl = " + lit, "nspowner = '10'::pg_catalog.oid"}, n.oid))
	}
	langs, err := readLanguages(ctx, conn, names)
	if err != nil {
		return err
	}
	for key, l := range langs {
		want, ok := h.base.languages[key]
		if !ok {
			// A language the source added is trusted only if its handler is
			// that of a language PostgreSQL ships as trusted.
			want = sysLanguage{trusted: l.trusted && trustedHandlers[l.handler]}
			if l.acl == "" && l.trusted == want.trusted {
				continue
			}
			want.acl = ""
		} else if l.acl == want.acl && l.trusted == want.trusted && l.owner == bootstrapOID {
			continue
		}
		lit, err := aclLiteral(want.acl, super)
		if err != nil {
			return err
		}
		owner := ""
		if ok {
			owner = ", lanowner = '10'::pg_catalog.oid"
		}
		stmts = append(stmts, catalogUpdate("pg_language", []string{"lanpltrusted = " + strconv.FormatBool(want.trusted), "lanacl = " + lit + owner}, l.oid))
	}
	slices.Sort(stmts)
	// Operators too: one planted in pg_catalog (=(oid, integer), say) would
	// be found by every session, pinned or not, and call its function
	// wherever that was moved.
	ops, err := plantedOperators(ctx, conn)
	if err != nil {
		return err
	}
	if len(planted)+len(ops) > 0 {
		slices.Sort(planted)
		stmts = append(stmts, "CREATE SCHEMA IF NOT EXISTS draupnir_moved AUTHORIZATION "+quoteIdent(super))
		for _, fn := range planted {
			stmts = append(stmts, "ALTER ROUTINE "+fn+" SET SCHEMA draupnir_moved")
		}
		for _, op := range ops {
			stmts = append(stmts, "ALTER OPERATOR "+op+" SET SCHEMA draupnir_moved")
		}
	}
	return runSQL(ctx, conn, stmts...)
}

// plantedOperators lists the operators in system schemas that initdb did
// not make (every object it makes has an OID below 16384) and that no
// extension owns, as ALTER OPERATOR signatures.
func plantedOperators(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname::pg_catalog.text, o.oprname::pg_catalog.text,
		  CASE WHEN o.oprleft OPERATOR(pg_catalog.=) '0'::pg_catalog.oid THEN 'NONE'
		       ELSE pg_catalog.format_type(o.oprleft, NULL::pg_catalog.int4) END,
		  pg_catalog.format_type(o.oprright, NULL::pg_catalog.int4)
		FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
		WHERE `+inSystemSchema+` AND o.oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid OPERATOR(pg_catalog.=) '2617'::pg_catalog.oid
		    AND d.objid OPERATOR(pg_catalog.=) o.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char")
		ORDER BY 1, 2, 3, 4`)
	if err != nil {
		return nil, fmt.Errorf("listing operators: %w", err)
	}
	var ops []string
	for rows.Next() {
		var nsp, name, left, right string
		if err := rows.Scan(&nsp, &name, &left, &right); err != nil {
			return nil, err
		}
		// Operator names are symbols, written as they are; the schema
		// is quoted, the types come formatted by PostgreSQL.
		ops = append(ops, quoteIdent(nsp)+"."+name+" ("+left+", "+right+")")
	}
	return ops, rows.Err()
}

// catalogUpdate writes an UPDATE of the row oid of a system catalog.
func catalogUpdate(catalog string, set []string, oid uint32) string {
	return "UPDATE pg_catalog." + catalog + " SET " + strings.Join(set, ", ") + " WHERE oid OPERATOR(pg_catalog.=) " + oidLiteral(oid)
}

func oidLiteral(oid uint32) string {
	return "'" + strconv.FormatUint(uint64(oid), 10) + "'::pg_catalog.oid"
}

// trustedHandlers are the call handlers of the procedural languages
// PostgreSQL ships as trusted.
var trustedHandlers = map[string]bool{
	"pg_catalog.plpgsql_call_handler": true,
	"pg_catalog.plperl_call_handler":  true,
	"pg_catalog.pltcl_call_handler":   true,
}

// ownership hands the instance role what the source's superusers owned in
// the connected database: the database, and every schema, relation,
// routine, type and large object outside the system schemas and extensions
// (sequences owned by a column follow their table). A SECURITY DEFINER
// routine that a superuser owned goes to the instance role wherever it is,
// extensions included, so it no longer runs as a superuser.
func (h *hardening) ownership(ctx context.Context, conn *pgx.Conn, db string) error {
	supers := make([]string, 0, len(h.superusers))
	for oid := range h.superusers {
		supers = append(supers, strconv.FormatUint(uint64(oid), 10))
	}
	owners := "'{" + strings.Join(supers, ",") + "}'::pg_catalog.oid[]"
	to := " OWNER TO " + quoteIdent(draupnir.InstanceRole)
	stmts := []string{"ALTER DATABASE " + quoteIdent(db) + to}
	query := func(q string, row func(rows pgx.Rows) (string, error)) error {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			return fmt.Errorf("listing objects to hand to the instance role: %w", err)
		}
		for rows.Next() {
			s, err := row(rows)
			if err != nil {
				return err
			}
			if s != "" {
				stmts = append(stmts, s)
			}
		}
		return rows.Err()
	}
	notExt := func(classOID, alias string, extra string) string {
		return `NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid OPERATOR(pg_catalog.=) '` + classOID + `'::pg_catalog.oid
			AND d.objid OPERATOR(pg_catalog.=) ` + alias + `.oid AND (d.deptype OPERATOR(pg_catalog.=) 'e'::"char"` + extra + `))`
	}
	const userSchema = `NOT (n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema,pg_toast}'::pg_catalog.name[]))
		AND NOT n.nspname::pg_catalog.text OPERATOR(pg_catalog.^@) 'pg_temp_'::pg_catalog.text
		AND NOT n.nspname::pg_catalog.text OPERATOR(pg_catalog.^@) 'pg_toast_temp_'::pg_catalog.text`
	err := query(`SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_namespace n
		WHERE n.nspowner OPERATOR(pg_catalog.=) ANY (`+owners+`) AND `+userSchema+` AND `+notExt("2615", "n", ""),
		func(rows pgx.Rows) (string, error) {
			var nsp string
			err := rows.Scan(&nsp)
			return "ALTER SCHEMA " + quoteIdent(nsp) + to, err
		})
	if err != nil {
		return err
	}
	err = query(`SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relkind::pg_catalog.text FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
		WHERE c.relowner OPERATOR(pg_catalog.=) ANY (`+owners+`)
		  AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f,S}'::"char"[]) AND `+userSchema+` AND `+
		notExt("1259", "c", ` OR (c.relkind OPERATOR(pg_catalog.=) 'S'::"char" AND d.deptype OPERATOR(pg_catalog.=) ANY ('{a,i}'::"char"[]))`),
		func(rows pgx.Rows) (string, error) {
			var nsp, rel, kind string
			if err := rows.Scan(&nsp, &rel, &kind); err != nil {
				return "", err
			}
			what := map[string]string{"v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}[kind]
			if what == "" {
				what = "TABLE"
			}
			return "ALTER " + what + " " + quoteIdent(nsp) + "." + quoteIdent(rel) + to, nil
		})
	if err != nil {
		return err
	}
	err = query(`SELECT n.nspname::pg_catalog.text, p.proname::pg_catalog.text, pg_catalog.pg_get_function_identity_arguments(p.oid),
		  n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema}'::pg_catalog.name[]) OR NOT `+notExt("1255", "p", "")+`, p.prosecdef
		FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
		WHERE p.proowner OPERATOR(pg_catalog.=) ANY (`+owners+`)
		  AND p.oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid`,
		func(rows pgx.Rows) (string, error) {
			var nsp, name, args string
			var system, secdef bool
			if err := rows.Scan(&nsp, &name, &args, &system, &secdef); err != nil {
				return "", err
			}
			if system && !secdef {
				return "", nil
			}
			return "ALTER ROUTINE " + quoteIdent(nsp) + "." + quoteIdent(name) + "(" + args + ")" + to, nil
		})
	if err != nil {
		return err
	}
	err = query(`SELECT n.nspname::pg_catalog.text, t.typname::pg_catalog.text FROM pg_catalog.pg_type t
		JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace
		WHERE t.typowner OPERATOR(pg_catalog.=) ANY (`+owners+`)
		  AND t.typtype OPERATOR(pg_catalog.=) ANY ('{e,d,r,m}'::"char"[]) AND t.typrelid OPERATOR(pg_catalog.=) '0'::pg_catalog.oid
		  AND NOT (n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema}'::pg_catalog.name[])) AND `+notExt("1247", "t", ""),
		func(rows pgx.Rows) (string, error) {
			var nsp, typ string
			err := rows.Scan(&nsp, &typ)
			return "ALTER TYPE " + quoteIdent(nsp) + "." + quoteIdent(typ) + to, err
		})
	if err != nil {
		return err
	}
	// Large objects have owners too: a superuser's are unreadable otherwise.
	err = query(`SELECT m.oid::pg_catalog.int8 FROM pg_catalog.pg_largeobject_metadata m
		WHERE m.lomowner OPERATOR(pg_catalog.=) ANY (`+owners+`)`,
		func(rows pgx.Rows) (string, error) {
			var oid int64
			err := rows.Scan(&oid)
			return "ALTER LARGE OBJECT " + strconv.FormatInt(oid, 10) + to, err
		})
	if err != nil {
		return err
	}
	return runSQL(ctx, conn, stmts...)
}

// disableUserTriggers turns off, in every database, the triggers and rules
// the source put on its tables, for a script that runs as superuser: they
// would run as superuser too. restoreUserTriggers puts them back.
func (h *hardening) disableUserTriggers(ctx context.Context) error {
	conn, err := h.c.connect(ctx, "template1")
	if err != nil {
		return err
	}
	dbs, err := h.c.databases(ctx, conn)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	return h.eachDatabase(ctx, dbs, func(ctx context.Context, conn *pgx.Conn, db string) error {
		rows, err := conn.Query(ctx, `SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, t.tgname::pg_catalog.text, t.tgenabled::pg_catalog.text, false
			FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
			JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
			WHERE NOT t.tgisinternal AND t.tgenabled OPERATOR(pg_catalog.<>) 'D'::"char"
			UNION ALL
			SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, r.rulename::pg_catalog.text, r.ev_enabled::pg_catalog.text, true
			FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.ev_class
			JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
			WHERE r.ev_type OPERATOR(pg_catalog.<>) '1'::"char" AND r.ev_enabled OPERATOR(pg_catalog.<>) 'D'::"char"`)
		if err != nil {
			return fmt.Errorf("listing triggers and rules: %w", err)
		}
		var trigs []tableTrigger
		for rows.Next() {
			var nsp, rel string
			var t tableTrigger
			if err := rows.Scan(&nsp, &rel, &t.name, &t.state, &t.rule); err != nil {
				return err
			}
			t.table = quoteIdent(nsp) + "." + quoteIdent(rel)
			trigs = append(trigs, t)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, t := range trigs {
			what := " TRIGGER "
			if t.rule {
				what = " RULE "
			}
			if err := runSQL(ctx, conn, "ALTER TABLE "+t.table+" DISABLE"+what+quoteIdent(t.name)); err != nil {
				return err
			}
			h.userTrigs[db] = append(h.userTrigs[db], t)
		}
		return nil
	})
}

func (h *hardening) restoreUserTriggers(ctx context.Context) error {
	for db, trigs := range h.userTrigs {
		conn, err := h.c.connect(ctx, db)
		if err != nil {
			if isUndefined(err) {
				continue
			}
			return err
		}
		for _, t := range trigs {
			what := " TRIGGER "
			if t.rule {
				what = " RULE "
			}
			mode := map[string]string{"O": " ENABLE", "R": " ENABLE REPLICA", "A": " ENABLE ALWAYS"}[t.state]
			if err := runSQL(ctx, conn, "ALTER TABLE "+t.table+mode+what+quoteIdent(t.name)); err != nil && !isUndefined(err) {
				conn.Close(ctx)
				return err
			}
		}
		conn.Close(ctx)
	}
	return nil
}

// scrub leaves in every database only what the instances serve: relations
// the script changed (updated, deleted or rolled back rows: the old versions
// stay in their pages) are rewritten, and statistics are made anew, so that
// no removed value is left in the files or in pg_statistic. It waits until
// the script's sessions are gone, since a session reports its counts when it
// ends.
func (h *hardening) scrub(ctx context.Context) error {
	conn, err := h.c.connect(ctx, "template1")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var others int
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_activity(NULL::pg_catalog.int4) a
			WHERE a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
			  AND a.backend_type OPERATOR(pg_catalog.=) 'client backend'::pg_catalog.text`).Scan(&others); err != nil {
			return fmt.Errorf("waiting for the script's sessions to end: %w", err)
		}
		if others == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	dbs, err := h.c.databases(ctx, conn)
	if err != nil {
		return err
	}
	shared := map[string]bool{}
	return h.eachDatabase(ctx, dbs, func(ctx context.Context, conn *pgx.Conn, db string) error {
		// Changed since the backup booted (recovery resets the counters),
		// by the script or by finalise itself (roles, privileges). A TOAST
		// table is rewritten with its table.
		rows, err := conn.Query(ctx, `SELECT DISTINCT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relisshared
			FROM pg_catalog.pg_class x
			JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.oid OR c.reltoastrelid OPERATOR(pg_catalog.=) x.oid
			JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
			WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,m}'::"char"[])
			  AND x.relpersistence OPERATOR(pg_catalog.<>) 't'::"char"
			  AND (pg_catalog.pg_stat_get_tuples_updated(x.oid) OPERATOR(pg_catalog.>) '0'::pg_catalog.int8
			    OR pg_catalog.pg_stat_get_tuples_deleted(x.oid) OPERATOR(pg_catalog.>) '0'::pg_catalog.int8
			    OR pg_catalog.pg_stat_get_dead_tuples(x.oid) OPERATOR(pg_catalog.>) '0'::pg_catalog.int8
			    OR c.oid OPERATOR(pg_catalog.=) ANY ('{1260,2619,3429,1418,6100,1417,2964,1213}'::pg_catalog.oid[]))`)
		if err != nil {
			return fmt.Errorf("listing changed tables: %w", err)
		}
		var rewrite []string
		for rows.Next() {
			var nsp, rel string
			var isShared bool
			if err := rows.Scan(&nsp, &rel, &isShared); err != nil {
				return err
			}
			name := quoteIdent(nsp) + "." + quoteIdent(rel)
			if isShared {
				if shared[name] {
					continue
				}
				shared[name] = true
			}
			rewrite = append(rewrite, name)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		slices.Sort(rewrite)
		// pg_statistic last: ANALYZE refills it, and its old rows with them.
		var stmts []string
		for _, r := range rewrite {
			if r != "pg_catalog.pg_statistic" && r != "pg_catalog.pg_statistic_ext_data" {
				stmts = append(stmts, "VACUUM (FULL) "+r)
			}
		}
		stmts = append(stmts,
			"DELETE FROM pg_catalog.pg_statistic",
			"DELETE FROM pg_catalog.pg_statistic_ext_data",
			"ANALYZE",
			"VACUUM (FULL) pg_catalog.pg_statistic",
			"VACUUM (FULL) pg_catalog.pg_statistic_ext_data")
		return runSQL(ctx, conn, stmts...)
	})
}

// superuserAccess makes the instance role a superuser, for servers that
// hand one out (instances.superuser_access).
func (c *cluster) superuserAccess(ctx context.Context) error {
	conn, err := c.connect(ctx, "template1")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return runSQL(ctx, conn, "ALTER ROLE "+quoteIdent(draupnir.InstanceRole)+" SUPERUSER")
}

// outboundCredentials removes from the connected database what would let an
// instance reach the source's network with the source's credentials:
// subscriptions (their workers connect to the publisher, production, and
// would stream unanonymised rows in) are dropped without contacting it, and
// user mappings lose their options (user names, passwords, keys), so a
// foreign server can no longer be logged into as production's users
// (postgres_fdw and dblink refuse non-superusers without a password).
func outboundCredentials(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT s.subname::pg_catalog.text FROM pg_catalog.pg_subscription s
		WHERE s.subdbid OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
		  WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())`)
	if err != nil {
		return fmt.Errorf("listing subscriptions: %w", err)
	}
	var stmts []string
	for rows.Next() {
		var sub string
		if err := rows.Scan(&sub); err != nil {
			return err
		}
		q := quoteIdent(sub)
		stmts = append(stmts, "ALTER SUBSCRIPTION "+q+" DISABLE",
			"ALTER SUBSCRIPTION "+q+" SET (slot_name = NONE)", "DROP SUBSCRIPTION "+q)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	// Directly in the catalog: ALTER USER MAPPING would call the foreign
	// data wrapper's validator, a function the source chose, as superuser.
	stmts = append(stmts, `UPDATE pg_catalog.pg_user_mapping SET umoptions = NULL WHERE umoptions IS NOT NULL`)
	return runSQL(ctx, conn, stmts...)
}
