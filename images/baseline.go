package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir/supervisor"
)

// baseline is what a fresh initdb of one PostgreSQL major version gives the
// system objects finalise resets: the privileges, owners and flags that a
// backup may carry changed. Keys name objects, not OIDs, because the OIDs of
// objects initdb creates after bootstrap depend on the machine's locales.
type baseline struct {
	funcs     map[string]sysFunc     // "schema"."name"(identity args)
	relations map[string]string      // "schema"."name" → ACL (aclKey)
	columns   map[string]string      // "schema"."rel"."column" → ACL, where initdb sets one
	schemas   map[string]string      // system schema → ACL
	languages map[string]sysLanguage // "lanname"
}

type sysFunc struct {
	acl    string
	secdef bool
	config bool // proconfig is set
}

type sysLanguage struct {
	trusted bool
	acl     string
}

// baselineFor returns the baseline of major, making a throwaway cluster the
// first time it is asked for (a second or two, once per server process).
func (s *Service) baselineFor(ctx context.Context, major string) (*baseline, error) {
	s.baseMu.Lock()
	defer s.baseMu.Unlock()
	if b, ok := s.baselines[major]; ok {
		return b, nil
	}
	b, err := s.readBaseline(ctx, major)
	if err != nil {
		return nil, fmt.Errorf("reading the system privileges of a fresh PostgreSQL %s cluster: %w", major, err)
	}
	s.baselines[major] = b
	return b, nil
}

// WarmUp reads the baseline of major in the background, so that the first
// finalise does not wait for it.
func (s *Service) WarmUp(major string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if _, err := s.baselineFor(s.base, major); err != nil && s.base.Err() == nil {
			s.log.Warn("could not read the system privileges of a fresh cluster ahead of time; the first finalise tries again", "version", major, "err", err)
		}
	}()
}

func (s *Service) readBaseline(ctx context.Context, major string) (*baseline, error) {
	sup := s.postgres
	tmp, err := os.MkdirTemp(s.opts.RunDir, "baseline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	data, sock := filepath.Join(tmp, "data"), filepath.Join(tmp, "s")
	if err := sup.InitDB(ctx, major, data); err != nil {
		return nil, err
	}
	proc, err := sup.Start(ctx, supervisor.Spec{DataDir: data, SocketDir: sock, Port: privatePort,
		Settings: map[string]string{"fsync": "off"}, LogFile: filepath.Join(tmp, "log")})
	if err != nil {
		return nil, err
	}
	defer proc.Stop(context.WithoutCancel(ctx), supervisor.Immediate, 10*time.Second)
	conn, err := connect(ctx, sock, "postgres", "template1")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	names, err := roleNames(ctx, conn)
	if err != nil {
		return nil, err
	}
	b := &baseline{funcs: map[string]sysFunc{}, relations: map[string]string{}, columns: map[string]string{},
		schemas: map[string]string{}, languages: map[string]sysLanguage{}}
	fns, err := readSysFuncs(ctx, conn, names)
	if err != nil {
		return nil, err
	}
	for k, f := range fns {
		b.funcs[k] = sysFunc{acl: f.acl, secdef: f.secdef, config: f.config}
	}
	for _, x := range []struct {
		read func(context.Context, *pgx.Conn, map[uint32]string) (map[string]*sysObject, error)
		into map[string]string
	}{{readSysRelations, b.relations}, {readSysColumns, b.columns}, {readSysSchemas, b.schemas}} {
		objs, err := x.read(ctx, conn, names)
		if err != nil {
			return nil, err
		}
		for k, o := range objs {
			x.into[k] = o.acl
		}
	}
	langs, err := readLanguages(ctx, conn, names)
	if err != nil {
		return nil, err
	}
	for k, l := range langs {
		b.languages[k] = sysLanguage{trusted: l.trusted, acl: l.acl}
	}
	if len(b.funcs) == 0 || len(b.relations) == 0 {
		return nil, fmt.Errorf("the fresh cluster shows no system objects")
	}
	return b, nil
}

// An ACL is compared and written as its items, grantee and privilege each,
// from aclexplode: never through aclitem's text form, whose role names and
// quoting differ between clusters. "" stands for a NULL ACL (the object's
// defaults), which differs from an empty one (no privileges at all).
type aclItem struct {
	grantee   uint32
	privilege string
	grantable bool
}

// publicOID and bootstrapOID are the grantee of PUBLIC in aclexplode's output
// and the bootstrap superuser, the same in every cluster.
const (
	publicOID    = 0
	bootstrapOID = 10
)

// aclKey writes items in a form that compares across clusters: grantees by
// name (predefined roles have the same names everywhere), the bootstrap
// superuser and PUBLIC by a mark of their own.
func aclKey(null bool, items []aclItem, names map[uint32]string) string {
	if null {
		return ""
	}
	parts := make([]string, 0, len(items))
	for _, it := range items {
		g := "@public"
		switch {
		case it.grantee == bootstrapOID:
			g = "@super"
		case it.grantee != publicOID:
			g = names[it.grantee]
		}
		parts = append(parts, fmt.Sprintf("%s:%s:%t", g, it.privilege, it.grantable))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// aclLiteral turns a key made by aclKey back into an aclitem[] literal for
// a cluster whose bootstrap superuser is super, granted by super.
func aclLiteral(key, super string) (string, error) {
	if key == "" {
		return "NULL", nil
	}
	body := strings.TrimSuffix(strings.TrimPrefix(key, "{"), "}")
	byGrantee := map[string]*strings.Builder{}
	var order []string
	if body != "" {
		for _, part := range strings.Split(body, ",") {
			f := strings.Split(part, ":")
			if len(f) != 3 {
				return "", fmt.Errorf("malformed privilege %q", part)
			}
			letter, ok := privilegeLetters[f[1]]
			if !ok {
				return "", fmt.Errorf("unknown privilege %q", f[1])
			}
			g := f[0]
			if byGrantee[g] == nil {
				byGrantee[g] = &strings.Builder{}
				order = append(order, g)
			}
			byGrantee[g].WriteString(letter)
			if f[2] == "true" {
				byGrantee[g].WriteString("*")
			}
		}
	}
	items := make([]string, 0, len(order))
	for _, g := range order {
		name := g
		switch g {
		case "@public":
			name = ""
		case "@super":
			name = super
		}
		items = append(items, aclName(name)+"="+byGrantee[g].String()+"/"+aclName(super))
	}
	return quoteLiteral("{"+strings.Join(items, ",")+"}") + "::pg_catalog.aclitem[]", nil
}

// aclName writes a role name as one aclitem element of an array literal:
// double-quoted, with the quoting aclitem and the array both need.
func aclName(name string) string {
	if name == "" {
		return ""
	}
	// aclitem doubles a double quote inside a quoted name; the array
	// element then escapes every quote and backslash once more.
	inner := `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(inner)
}

var privilegeLetters = map[string]string{
	"SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d", "TRUNCATE": "D", "REFERENCES": "x",
	"TRIGGER": "t", "EXECUTE": "X", "USAGE": "U", "CREATE": "C", "CONNECT": "c", "TEMPORARY": "T",
	"SET": "s", "ALTER SYSTEM": "A",
}

// The catalog queries below run as superuser on clusters a source may have
// filled: they call only built-in functions with arguments of exactly their
// declared types (so no overload planted anywhere can be a better match),
// compare with operators of identical operand types, and use no cast a
// source could have defined. Everything else is done in Go.

// sysObject is a system object whose privileges finalise resets.
type sysObject struct {
	oid       uint32
	key       string // schema.name(args) for functions, schema.name[.column] otherwise
	acl       string // aclKey
	secdef    bool
	config    bool
	extension bool // member of an extension
	owner     uint32
	trusted   bool   // languages
	handler   string // languages: schema.name of the call handler
	attnum    int16  // columns
}

// readObjects runs query, whose first columns are oid, key parts (text[]),
// acl IS NULL, and then extra columns scanned into extra(o), and fills in
// the ACL items from aclQuery (oid, grantee, privilege_type, is_grantable).
func readObjects(ctx context.Context, conn *pgx.Conn, what, query, aclQuery string, names map[uint32]string,
	extra func(o *sysObject) []any) (map[string]*sysObject, error) {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", what, err)
	}
	objs := map[string]*sysObject{}
	byOID := map[uint32][]*sysObject{}
	nulls := map[*sysObject]bool{}
	for rows.Next() {
		o := &sysObject{}
		var parts []string
		var null bool
		dst := []any{&o.oid, &parts, &null}
		if extra != nil {
			dst = append(dst, extra(o)...)
		}
		if err := rows.Scan(dst...); err != nil {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
		for i, p := range parts {
			if i < len(parts)-1 || !strings.HasSuffix(p, ")") {
				parts[i] = quoteIdent(p)
			}
		}
		if len(parts) == 3 && strings.HasSuffix(parts[2], ")") { // schema, name, (args)
			o.key = parts[0] + "." + parts[1] + parts[2]
		} else {
			o.key = strings.Join(parts, ".")
		}
		objs[o.key] = o
		byOID[o.oid] = append(byOID[o.oid], o)
		nulls[o] = null
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing %s: %w", what, err)
	}
	items := map[*sysObject][]aclItem{}
	arows, err := conn.Query(ctx, aclQuery)
	if err != nil {
		return nil, fmt.Errorf("listing the privileges of %s: %w", what, err)
	}
	for arows.Next() {
		var oid uint32
		var attnum int16
		var it aclItem
		if err := arows.Scan(&oid, &attnum, &it.grantee, &it.privilege, &it.grantable); err != nil {
			return nil, fmt.Errorf("listing the privileges of %s: %w", what, err)
		}
		for _, o := range byOID[oid] {
			if o.attnum == attnum {
				items[o] = append(items[o], it)
			}
		}
	}
	if err := arows.Err(); err != nil {
		return nil, fmt.Errorf("listing the privileges of %s: %w", what, err)
	}
	for o, null := range nulls {
		o.acl = aclKey(null, items[o], names)
	}
	return objs, nil
}

const inSystemSchema = `n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema}'::pg_catalog.name[])`

func readSysFuncs(ctx context.Context, conn *pgx.Conn, names map[uint32]string) (map[string]*sysObject, error) {
	return readObjects(ctx, conn, "system functions",
		`SELECT p.oid, ARRAY[n.nspname::pg_catalog.text, p.proname::pg_catalog.text,
		  '(' OPERATOR(pg_catalog.||) pg_catalog.pg_get_function_identity_arguments(p.oid) OPERATOR(pg_catalog.||) ')'],
		  p.proacl IS NULL, p.prosecdef, p.proconfig IS NOT NULL, p.proowner,
		  EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid OPERATOR(pg_catalog.=) '1255'::pg_catalog.oid
		          AND d.objid OPERATOR(pg_catalog.=) p.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char")
		FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
		WHERE `+inSystemSchema,
		`SELECT p.oid, 0::pg_catalog.int2, a.grantee, a.privilege_type, a.is_grantable
		FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace,
		  LATERAL pg_catalog.aclexplode(p.proacl) a WHERE `+inSystemSchema,
		names, func(o *sysObject) []any { return []any{&o.secdef, &o.config, &o.owner, &o.extension} })
}

func readSysRelations(ctx context.Context, conn *pgx.Conn, names map[uint32]string) (map[string]*sysObject, error) {
	return readObjects(ctx, conn, "system relations",
		`SELECT c.oid, ARRAY[n.nspname::pg_catalog.text, c.relname::pg_catalog.text], c.relacl IS NULL, c.relowner
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
		WHERE `+inSystemSchema,
		`SELECT c.oid, 0::pg_catalog.int2, a.grantee, a.privilege_type, a.is_grantable
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace,
		  LATERAL pg_catalog.aclexplode(c.relacl) a WHERE `+inSystemSchema,
		names, func(o *sysObject) []any { return []any{&o.owner} })
}

// readSysColumns lists the columns of system relations that have privileges
// of their own (a source may have granted SELECT (rolpassword) ON pg_authid).
func readSysColumns(ctx context.Context, conn *pgx.Conn, names map[uint32]string) (map[string]*sysObject, error) {
	return readObjects(ctx, conn, "column privileges of system relations",
		`SELECT c.oid, ARRAY[n.nspname::pg_catalog.text, c.relname::pg_catalog.text, a.attname::pg_catalog.text], false, a.attnum
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
		JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
		WHERE `+inSystemSchema+` AND a.attacl IS NOT NULL`,
		`SELECT c.oid, a.attnum, x.grantee, x.privilege_type, x.is_grantable
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid
		JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace,
		  LATERAL pg_catalog.aclexplode(a.attacl) x WHERE `+inSystemSchema,
		names, func(o *sysObject) []any { return []any{&o.attnum} })
}

func readSysSchemas(ctx context.Context, conn *pgx.Conn, names map[uint32]string) (map[string]*sysObject, error) {
	return readObjects(ctx, conn, "system schemas",
		`SELECT n.oid, ARRAY[n.nspname::pg_catalog.text], n.nspacl IS NULL, n.nspowner
		FROM pg_catalog.pg_namespace n WHERE `+inSystemSchema,
		`SELECT n.oid, 0::pg_catalog.int2, a.grantee, a.privilege_type, a.is_grantable
		FROM pg_catalog.pg_namespace n, LATERAL pg_catalog.aclexplode(n.nspacl) a WHERE `+inSystemSchema,
		names, func(o *sysObject) []any { return []any{&o.owner} })
}

func readLanguages(ctx context.Context, conn *pgx.Conn, names map[uint32]string) (map[string]*sysObject, error) {
	return readObjects(ctx, conn, "languages",
		`SELECT l.oid, ARRAY[l.lanname::pg_catalog.text], l.lanacl IS NULL, l.lanpltrusted, l.lanowner,
		  COALESCE(n.nspname::pg_catalog.text OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) p.proname::pg_catalog.text, '')
		FROM pg_catalog.pg_language l
		LEFT JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) l.lanplcallfoid
		LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace`,
		`SELECT l.oid, 0::pg_catalog.int2, a.grantee, a.privilege_type, a.is_grantable
		FROM pg_catalog.pg_language l, LATERAL pg_catalog.aclexplode(l.lanacl) a`,
		names, func(o *sysObject) []any { return []any{&o.trusted, &o.owner, &o.handler} })
}

// roleNames maps every role's OID to its name.
func roleNames(ctx context.Context, conn *pgx.Conn) (map[uint32]string, error) {
	rows, err := conn.Query(ctx, `SELECT oid, rolname::pg_catalog.text FROM pg_catalog.pg_authid`)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	names := map[uint32]string{}
	for rows.Next() {
		var oid uint32
		var name string
		if err := rows.Scan(&oid, &name); err != nil {
			return nil, err
		}
		names[oid] = name
	}
	return names, rows.Err()
}
