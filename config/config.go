// Package config loads Draupnir's TOML configuration (by default
// /etc/draupnir/config.toml), applies DRAUPNIR_<SECTION>_<KEY> environment
// overrides, fills in defaults and validates every value, so that a mistake is
// reported at start-up with the name of the key at fault rather than surfacing
// later as a confusing runtime error.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pelletier/go-toml/v2"
	"github.com/robfig/cron/v3"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/btrfs"
	"github.com/draupnir-db/draupnir/internal/conninfo"
)

// DefaultPath is where the server looks for its configuration unless
// DRAUPNIR_CONFIG or --config says otherwise.
const DefaultPath = "/etc/draupnir/config.toml"

// Config is the whole configuration. The toml tags are the keys of the file;
// the environment variable of a key is DRAUPNIR_ + its dotted path in upper
// case with dots as underscores (http.port → DRAUPNIR_HTTP_PORT).
type Config struct {
	DatabaseURL            string `toml:"database_url"`
	DataPath               string `toml:"data_path"`
	Environment            string `toml:"environment"`
	SharedSecret           string `toml:"shared_secret"`
	TrustedUserEmailDomain string `toml:"trusted_user_email_domain"`
	SentryDSN              string `toml:"sentry_dsn"`
	PublicHostname         string `toml:"public_hostname"`
	// RunPath holds short-lived runtime files: the unix socket directories of
	// the instances and the state cluster (socket paths must stay short).
	RunPath string `toml:"run_path"`

	HTTP      HTTP      `toml:"http"`
	OAuth     OAuth     `toml:"oauth"`
	SSH       SSH       `toml:"ssh"`
	Images    Images    `toml:"images"`
	Instances Instances `toml:"instances"`
	Postgres  Postgres  `toml:"postgres"`
	// Sources are the live sources whose image series the server keeps
	// fresh ([[sources]]). Environment variables do not reach them.
	Sources []Source `toml:"sources"`

	Node    Node    `toml:"node"`
	Cluster Cluster `toml:"cluster"`
}

// Source is one [[sources]] entry: a PostgreSQL server (a primary or a
// replica) that images are refreshed from.
type Source struct {
	// Name names the source and its image series (see
	// draupnir.ValidSourceName).
	Name string `toml:"name"`
	// Conninfo is a libpq connection string of a role with the
	// REPLICATION attribute. A password in it is never shown; prefer
	// Passfile.
	Conninfo string `toml:"conninfo"`
	// Passfile is a libpq password file (PGPASSFILE) for Conninfo; it must
	// be private (mode 0600 or less).
	Passfile string `toml:"passfile"`
	// AnonymisationScript is the file holding the script that every image
	// of the source is anonymised with; it is read at each refresh.
	AnonymisationScript string `toml:"anonymisation_script"`
	// Mode is "pull" (a fresh base backup per refresh) or "follow" (a
	// streaming standby that refreshes snapshot).
	Mode string `toml:"mode"`
	// Schedule is when refreshes run on their own: five cron fields
	// ("0 3 * * *") or "@every 6h"; empty means only on demand.
	Schedule string `toml:"schedule"`
	// Keep is how many ready images of the series a successful refresh
	// keeps; older ones go once no instance uses them.
	Keep int `toml:"keep"`
	// RestoreCommand, in follow mode, lets the standby replay WAL from an
	// archive (WAL-G, pgBackRest) as well as stream it.
	RestoreCommand string `toml:"restore_command"`
}

// ParseSchedule parses a source's schedule: five cron fields (in the
// server's time zone) or a descriptor such as "@every 6h" or "@daily". The
// server uses it too, so what validates here runs there.
func ParseSchedule(spec string) (cron.Schedule, error) {
	return cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor).Parse(spec)
}

// Node names this server as one node of several sharing the state database
// at database_url. Without a name the server is a single node, as always.
type Node struct {
	// Name identifies the node in the state database: lower-case letters,
	// digits and '-', at most 63 characters.
	Name string `toml:"name"`
	// AdvertiseHost is what users connect to for instances on this node;
	// empty means public_hostname.
	AdvertiseHost string `toml:"advertise_host"`
	// APIURL is how other nodes reach this node's HTTP API.
	APIURL string `toml:"api_url"`
	// SSHAddress is how other nodes reach this node's SSH door (host:port).
	SSHAddress string `toml:"ssh_address"`
	// HeartbeatInterval is how often the node reports itself alive with
	// its capacity; a node silent for three intervals is down.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
}

// Cluster configures what the nodes of a cluster share.
type Cluster struct {
	// Copies is on how many nodes each image is kept ready; 0 means every
	// node.
	Copies int `toml:"copies"`
	// Secret signs the API calls one node forwards to another; every node
	// has the same. SecretFile, if set, is read into it at load.
	Secret     Secret `toml:"secret"`
	SecretFile string `toml:"secret_file"`
}

// Secret is a configuration value that must never reach a log or an error:
// it prints as "[redacted]".
type Secret string

// String hides the secret from fmt and log/slog's text output.
func (Secret) String() string { return "[redacted]" }

// GoString hides the secret from %#v.
func (Secret) GoString() string { return `"[redacted]"` }

// LogValue hides the secret from log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// MarshalJSON hides the secret from JSON output, such as log/slog's JSON
// handler printing a struct that holds it.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// HTTP configures the API's listeners.
type HTTP struct {
	Port           int      `toml:"port"`          // HTTPS; 0 disables it
	InsecurePort   int      `toml:"insecure_port"` // plain HTTP; 0 disables it
	Address        string   `toml:"address"`       // bind address for both, default all
	TLSCertificate string   `toml:"tls_certificate"`
	TLSPrivateKey  string   `toml:"tls_private_key"`
	ReadTimeout    Duration `toml:"read_timeout"`
	WriteTimeout   Duration `toml:"write_timeout"`
	MaxBodyBytes   int64    `toml:"max_body_bytes"`
}

// OAuth configures the OpenID Connect login of people.
type OAuth struct {
	IssuerURL    string `toml:"issuer_url"`
	RedirectURL  string `toml:"redirect_url"`
	ClientID     string `toml:"client_id"`
	ClientSecret string `toml:"client_secret"`
}

// SSH configures the embedded SSH server.
type SSH struct {
	Port                 int      `toml:"port"` // 0 disables the SSH server
	Address              string   `toml:"address"`
	HostKey              string   `toml:"host_key"`
	UploadAuthorizedKeys string   `toml:"upload_authorized_keys"`
	AuthorizedKeys       string   `toml:"authorized_keys"`
	IdleTimeout          Duration `toml:"idle_timeout"`
	MaxTimeout           Duration `toml:"max_timeout"`
	MaxConnections       int      `toml:"max_connections"`
}

// Images configures how images are made.
type Images struct {
	// KeepUploads keeps an image's raw upload (data_path/image_uploads/<id>,
	// private to root) after the image is ready, for debugging; by default
	// it is deleted then, since it holds what anonymisation removed.
	KeepUploads bool `toml:"keep_uploads"`
	// ScriptAsSuperuser runs anonymisation scripts as the backup's
	// superuser instead of as the data owners, with the source's triggers
	// and rules off meanwhile: for scripts that need a superuser.
	ScriptAsSuperuser bool `toml:"script_as_superuser"`
}

// Instances configures the postgres instances handed to users.
type Instances struct {
	MinPort         int               `toml:"min_port"`
	MaxPort         int               `toml:"max_port"`
	PostgresUser    string            `toml:"postgres_user"`
	ListenAddresses string            `toml:"listen_addresses"`
	Settings        map[string]string `toml:"settings"`
	SuperuserAccess bool              `toml:"superuser_access"`
	StartTimeout    Duration          `toml:"start_timeout"`
	// WarmPool is how many started, unassigned instances to keep ready per
	// ready image, so that a create only hands one out.
	WarmPool int `toml:"warm_pool"`
	// DiskLimit is how much each instance may write beyond what it shares
	// with its image; 0 means no limit.
	DiskLimit Size `toml:"disk_limit"`
	// DefaultTTL is the lifetime of an instance created without a ttl,
	// MaxTTL the longest one may ask for; 0 means none and no cap.
	DefaultTTL Duration `toml:"default_ttl"`
	MaxTTL     Duration `toml:"max_ttl"`
	// MaxProtection is the longest protection one may ask for at a time;
	// 0 means no cap.
	MaxProtection Duration `toml:"max_protection"`
	// MaxPerUser is how many instances one user may have; 0 means no limit.
	MaxPerUser int `toml:"max_per_user"`
	// IdleTimeout destroys an instance unused that long; 0 turns it off.
	// IdleConnectionTimeout, if not 0, counts a connection idle that long
	// as no connection.
	IdleTimeout           Duration `toml:"idle_timeout"`
	IdleConnectionTimeout Duration `toml:"idle_connection_timeout"`
	// SweepInterval is how often expiry and idleness are checked.
	SweepInterval Duration `toml:"sweep_interval"`
	// TombstoneDays is how long an instance destroyed by a rule answers
	// 410 Gone with the reason.
	TombstoneDays int `toml:"tombstone_days"`
}

// Postgres says where the PostgreSQL binaries are.
type Postgres struct {
	// BinDirs are directories (glob patterns allowed) that hold postgres,
	// initdb, psql… of one major version each.
	BinDirs []string `toml:"bin_dirs"`
}

// Duration is a time.Duration written as a string such as "30s", "8h" or
// "7d" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses "1m30s"-style durations and whole days ("7d").
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := draupnir.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration back in the same form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Size is a number of bytes written as "10GiB", "512M" or a plain number of
// bytes (units are binary, see btrfs.ParseSize).
type Size int64

// UnmarshalText parses a size; go-toml hands integers here as their text.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := btrfs.ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// MarshalText writes the size as a plain number of bytes.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }

// Default returns the configuration used for keys the file leaves out.
func Default() Config {
	return Config{
		DataPath:    "/var/lib/draupnir",
		Environment: "production",
		RunPath:     "/run/draupnir",
		HTTP: HTTP{
			Port:         8443,
			InsecurePort: 8080,
			ReadTimeout:  Duration{30 * time.Second},
			// Finalising a large image can take minutes; the request waits.
			WriteTimeout: Duration{60 * time.Minute},
			MaxBodyBytes: 1 << 20,
		},
		OAuth: OAuth{IssuerURL: "https://accounts.google.com"},
		SSH: SSH{
			Port:           2222,
			IdleTimeout:    Duration{10 * time.Minute},
			MaxTimeout:     Duration{24 * time.Hour},
			MaxConnections: 64,
		},
		Instances: Instances{
			MinPort:         6000,
			MaxPort:         6999,
			PostgresUser:    "postgres",
			ListenAddresses: "*",
			StartTimeout:    Duration{60 * time.Second},
			DiskLimit:       10 << 30,
			MaxProtection:   Duration{7 * 24 * time.Hour},
			SweepInterval:   Duration{15 * time.Second},
			TombstoneDays:   7,
		},
		Postgres: Postgres{BinDirs: []string{"/usr/lib/postgresql/*/bin"}},
		Node:     Node{HeartbeatInterval: Duration{5 * time.Second}},
	}
}

// Path returns the configuration file to read: explicit if not empty, else
// $DRAUPNIR_CONFIG, else DefaultPath.
func Path(explicit string) string {
	if explicit != "" {
		return explicit
	}
	if p := os.Getenv("DRAUPNIR_CONFIG"); p != "" {
		return p
	}
	return DefaultPath
}

// Load reads the file at path (a missing file is fine when optional is true),
// applies environment overrides from environ (os.Environ() form) and
// validates the result.
func Load(path string, optional bool, environ []string) (*Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decode(data, &cfg); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist) && optional:
	default:
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return nil, err
	}
	if err := cfg.readSecretFile(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &cfg, nil
}

// readSecretFile reads cluster.secret_file into cluster.secret. The file
// must be private to its owner: the secret lets whoever holds it speak as a
// node.
func (c *Config) readSecretFile() error {
	f := c.Cluster.SecretFile
	if f == "" {
		return nil
	}
	if c.Cluster.Secret != "" {
		return errors.New("cluster.secret_file: set cluster.secret or cluster.secret_file, not both")
	}
	if !filepath.IsAbs(f) {
		return fmt.Errorf("cluster.secret_file: must be an absolute path, got %q", f)
	}
	fi, err := os.Stat(f)
	if err != nil {
		return fmt.Errorf("cluster.secret_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("cluster.secret_file: %s is accessible by others (mode %04o): chmod 600 it", f, fi.Mode().Perm())
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return fmt.Errorf("cluster.secret_file: %w", err)
	}
	c.Cluster.Secret = Secret(strings.TrimSpace(string(data)))
	if c.Cluster.Secret == "" {
		return fmt.Errorf("cluster.secret_file: %s is empty", f)
	}
	return nil
}

func decode(data []byte, cfg *Config) error {
	// go-toml hands a number meant for a Duration to UnmarshalText without
	// saying which key it came from; catch that first so the error names it.
	var raw map[string]any
	if toml.Unmarshal(data, &raw) == nil {
		if err := checkDurations(raw); err != nil {
			return err
		}
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(cfg)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Errorf("unknown key(s): %s", strings.Join(keys, ", "))
	}
	var derr *toml.DecodeError
	if errors.As(err, &derr) {
		row, col := derr.Position()
		key := strings.Join(derr.Key(), ".")
		if key != "" {
			return fmt.Errorf("key %s (line %d, column %d): %s", key, row, col, derr.Error())
		}
		return fmt.Errorf("line %d, column %d: %s", row, col, derr.Error())
	}
	return err
}

// checkDurations reports a duration key of raw (the document as generic
// TOML) whose value is not a string, or a size key whose value is neither a
// string nor an integer.
func checkDurations(raw map[string]any) error {
	var zero Config
	return walk(reflect.ValueOf(&zero).Elem(), "", func(key string, f reflect.Value) error {
		isDuration, isSize := f.Type() == reflect.TypeOf(Duration{}), f.Type() == reflect.TypeOf(Size(0))
		if !isDuration && !isSize {
			return nil
		}
		var v any = raw
		for _, part := range strings.Split(key, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			if v, ok = m[part]; !ok {
				return nil
			}
		}
		switch v.(type) {
		case string:
			return nil
		case int64:
			if isSize {
				return nil
			}
		}
		if isSize {
			return fmt.Errorf("key %s: want a size such as \"10GiB\" or a whole number of bytes, got %v", key, v)
		}
		return fmt.Errorf("key %s: want a duration string with a unit such as \"30s\" or \"10m\", got %v", key, v)
	})
}

// applyEnv sets every key that has a DRAUPNIR_… variable in environ.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "DRAUPNIR_") {
			env[k] = v
		}
	}
	return walk(reflect.ValueOf(cfg).Elem(), "", func(key string, f reflect.Value) error {
		name := "DRAUPNIR_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		v, ok := env[name]
		if !ok {
			return nil
		}
		if err := setFromString(f, v); err != nil {
			return fmt.Errorf("environment %s (key %s): %w", name, key, err)
		}
		return nil
	})
}

// walk calls fn for every leaf field with its dotted TOML key.
func walk(v reflect.Value, prefix string, fn func(string, reflect.Value) error) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("toml")
		if tag == "" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		f := v.Field(i)
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(Duration{}) {
			if err := walk(f, key, fn); err != nil {
				return err
			}
			continue
		}
		if err := fn(key, f); err != nil {
			return err
		}
	}
	return nil
}

func setFromString(f reflect.Value, s string) error {
	switch f.Interface().(type) {
	case string, Secret:
		f.SetString(s)
	case int, int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("not an integer: %q", s)
		}
		f.SetInt(n)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", s)
		}
		f.SetBool(b)
	case Size:
		var n Size
		if err := n.UnmarshalText([]byte(s)); err != nil {
			return err
		}
		f.Set(reflect.ValueOf(n))
	case Duration:
		d, err := draupnir.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("not a duration: %q", s)
		}
		f.Set(reflect.ValueOf(Duration{d}))
	case []string:
		// PATH-like: "/a:/b" or "/a,/b".
		var list []string
		for _, e := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ':' }) {
			if e = strings.TrimSpace(e); e != "" {
				list = append(list, e)
			}
		}
		f.Set(reflect.ValueOf(list))
	case map[string]string:
		m := map[string]string{}
		if strings.TrimSpace(s) == "" { // an empty variable clears the file's table
			f.Set(reflect.ValueOf(m))
			return nil
		}
		for _, kv := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return fmt.Errorf("want name=value[,name=value…], got %q", s)
			}
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		f.Set(reflect.ValueOf(m))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// Validate checks every value and names the key at fault.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.DataPath == "" || !filepath.IsAbs(c.DataPath) {
		bad("data_path", "must be an absolute path, got %q", c.DataPath)
	}
	if c.RunPath == "" || !filepath.IsAbs(c.RunPath) {
		bad("run_path", "must be an absolute path, got %q", c.RunPath)
	} else if len(c.RunPath) > 60 {
		bad("run_path", "must be short (≤ 60 bytes): unix socket paths are limited to 107 bytes")
	}
	switch c.Environment {
	case "production", "staging", "development", "test":
	default:
		bad("environment", "must be production, staging, development or test, got %q", c.Environment)
	}
	if c.SharedSecret != "" && len(c.SharedSecret) < 16 {
		bad("shared_secret", "must be at least 16 characters")
	}
	if u := c.DatabaseURL; u != "" {
		// Never echo the value: it usually holds a password.
		if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
			if _, err := url.Parse(u); err != nil {
				bad("database_url", "is not a valid postgres:// URL")
			}
		} else if !strings.Contains(u, "=") {
			bad("database_url", "must be a postgres:// URL or a key=value connection string")
		}
	}
	if d := c.TrustedUserEmailDomain; d != "" {
		if !strings.HasPrefix(d, "@") || len(d) < 4 || strings.ContainsAny(d[1:], "@ ") {
			bad("trusted_user_email_domain", "must look like \"@example.com\", got %q", d)
		} else if _, err := mail.ParseAddress("x" + d); err != nil {
			bad("trusted_user_email_domain", "%q is not an email domain", d)
		}
	}
	checkPort := func(key string, p int, zeroOK bool) {
		if (p == 0 && !zeroOK) || p < 0 || p > 65535 {
			bad(key, "must be a port number (1-65535), got %d", p)
		}
	}
	checkPort("http.port", c.HTTP.Port, true)
	checkPort("http.insecure_port", c.HTTP.InsecurePort, true)
	checkPort("ssh.port", c.SSH.Port, true)
	checkPort("instances.min_port", c.Instances.MinPort, false)
	checkPort("instances.max_port", c.Instances.MaxPort, false)
	if c.Instances.MinPort > c.Instances.MaxPort {
		bad("instances.max_port", "must not be below instances.min_port (%d)", c.Instances.MinPort)
	}
	for _, p := range []struct {
		key  string
		port int
	}{{"http.port", c.HTTP.Port}, {"http.insecure_port", c.HTTP.InsecurePort}, {"ssh.port", c.SSH.Port}} {
		if p.port >= c.Instances.MinPort && p.port <= c.Instances.MaxPort {
			bad(p.key, "%d lies inside the instance port range %d-%d", p.port, c.Instances.MinPort, c.Instances.MaxPort)
		}
	}
	if c.HTTP.Port != 0 && (c.HTTP.TLSCertificate == "") != (c.HTTP.TLSPrivateKey == "") {
		bad("http.tls_certificate", "http.tls_certificate and http.tls_private_key go together")
	}
	if c.HTTP.MaxBodyBytes <= 0 {
		bad("http.max_body_bytes", "must be positive")
	}
	for _, u := range []struct{ key, val string }{{"oauth.issuer_url", c.OAuth.IssuerURL}, {"oauth.redirect_url", c.OAuth.RedirectURL}} {
		if u.val == "" {
			continue
		}
		if p, err := url.Parse(u.val); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			bad(u.key, "must be an absolute http(s) URL, got %q", u.val)
		}
	}
	if (c.OAuth.ClientID == "") != (c.OAuth.ClientSecret == "") {
		bad("oauth.client_id", "oauth.client_id and oauth.client_secret go together")
	}
	if c.OAuth.ClientID != "" {
		// Without them every login would fail, or be refused, at run time.
		if c.OAuth.RedirectURL == "" {
			bad("oauth.redirect_url", "is required with oauth.client_id (the server's /oauth_callback URL)")
		}
		if c.TrustedUserEmailDomain == "" {
			bad("trusted_user_email_domain", "is required with oauth.client_id: it says whose logins are accepted")
		}
	}
	for _, d := range []struct {
		key string
		d   Duration
	}{
		{"http.read_timeout", c.HTTP.ReadTimeout}, {"http.write_timeout", c.HTTP.WriteTimeout},
		{"ssh.idle_timeout", c.SSH.IdleTimeout}, {"ssh.max_timeout", c.SSH.MaxTimeout},
		{"instances.default_ttl", c.Instances.DefaultTTL}, {"instances.max_ttl", c.Instances.MaxTTL},
		{"instances.max_protection", c.Instances.MaxProtection}, {"instances.idle_timeout", c.Instances.IdleTimeout},
		{"instances.idle_connection_timeout", c.Instances.IdleConnectionTimeout},
	} {
		if d.d.Duration < 0 {
			bad(d.key, "must not be negative (0 means no limit), got %s", d.d)
		}
	}
	if c.Instances.StartTimeout.Duration <= 0 {
		bad("instances.start_timeout", "must be positive, got %s", c.Instances.StartTimeout)
	}
	if max := c.Instances.MaxTTL.Duration; max > 0 && c.Instances.DefaultTTL.Duration > max {
		bad("instances.default_ttl", "must not be longer than instances.max_ttl (%s), got %s", c.Instances.MaxTTL, c.Instances.DefaultTTL)
	}
	if c.Instances.SweepInterval.Duration < time.Second {
		bad("instances.sweep_interval", "must be at least 1s, got %s", c.Instances.SweepInterval)
	}
	if c.Instances.MaxPerUser < 0 {
		bad("instances.max_per_user", "must not be negative (0 means no limit), got %d", c.Instances.MaxPerUser)
	}
	if c.Instances.TombstoneDays < 1 {
		bad("instances.tombstone_days", "must be at least 1, got %d", c.Instances.TombstoneDays)
	}
	if c.Instances.WarmPool < 0 || c.Instances.WarmPool > 100 {
		bad("instances.warm_pool", "must be between 0 and 100, got %d", c.Instances.WarmPool)
	}
	if c.Instances.DiskLimit < 0 {
		bad("instances.disk_limit", "must not be negative (0 means no limit), got %d", c.Instances.DiskLimit)
	} else if c.Instances.DiskLimit > 0 && c.Instances.DiskLimit < 64<<20 {
		// Below that an instance cannot even finish a checkpoint.
		bad("instances.disk_limit", "must be 0 (no limit) or at least 64MiB, got %d bytes", c.Instances.DiskLimit)
	}
	if c.Instances.PostgresUser == "" || c.Instances.PostgresUser == "root" {
		bad("instances.postgres_user", "must name an unprivileged OS user (postgres refuses to run as root)")
	}
	for k, v := range c.Instances.Settings {
		if !validSettingName(k) {
			bad("instances.settings", "invalid setting name %q", k)
			continue
		}
		// Postgres setting names are case-insensitive: "Port" is port.
		switch strings.ToLower(k) {
		case "port", "listen_addresses", "unix_socket_directories", "hba_file", "ident_file", "data_directory",
			"config_file", "cluster_name", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "archive_command",
			"restore_command", "shared_preload_libraries", "log_directory":
			bad("instances.settings."+k, "is managed by draupnir and cannot be set")
		}
		if strings.ContainsFunc(v, unicode.IsControl) {
			bad("instances.settings."+k, "value must not contain control characters")
		}
	}
	if len(c.Postgres.BinDirs) == 0 {
		bad("postgres.bin_dirs", "must name at least one directory")
	}
	for _, d := range c.Postgres.BinDirs {
		if !filepath.IsAbs(d) {
			bad("postgres.bin_dirs", "must hold absolute paths, got %q", d)
		}
	}
	if c.SSH.MaxConnections <= 0 {
		bad("ssh.max_connections", "must be positive")
	}
	seen := map[string]int{}
	for i, s := range c.Sources {
		key := func(k string) string { return fmt.Sprintf("sources[%d].%s", i, k) }
		if !draupnir.ValidSourceName(s.Name) {
			bad(key("name"), "must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit, got %q", s.Name)
		} else if s.Mode == string(draupnir.SourceFollow) && len(s.Name) > 40 {
			// It names the standby's socket directory, whose path is short.
			bad(key("name"), "must be at most 40 characters in follow mode, got %d", len(s.Name))
		} else if j, dup := seen[s.Name]; dup {
			bad(key("name"), "%q is already the name of sources[%d]", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		for _, e := range s.check() {
			bad(key(e.key), "%s", e.msg)
		}
	}
	c.validateNode(bad)
	return errors.Join(errs...)
}

// MinSecretLen is the shortest cluster.secret accepted: 32 bytes, as an
// HMAC-SHA256 key should be.
const MinSecretLen = 32

// validateNode checks [node] and [cluster]: with a node name, every key
// another node or a user relies on must be there and well-formed.
func (c *Config) validateNode(bad func(key, format string, args ...any)) {
	n := c.Node
	if n.HeartbeatInterval.Duration < time.Second || n.HeartbeatInterval.Duration > time.Minute {
		bad("node.heartbeat_interval", "must be between 1s and 1m, got %s", n.HeartbeatInterval)
	}
	if c.Cluster.Copies < 0 {
		bad("cluster.copies", "must not be negative (0 means every node), got %d", c.Cluster.Copies)
	}
	// Never echo the secret, even when it is too short.
	if s := c.Cluster.Secret; s != "" && len(s) < MinSecretLen {
		bad("cluster.secret", "must be at least %d characters", MinSecretLen)
	}
	if n.Name == "" {
		for _, k := range []struct{ key, val string }{
			{"node.advertise_host", n.AdvertiseHost}, {"node.api_url", n.APIURL}, {"node.ssh_address", n.SSHAddress},
		} {
			if k.val != "" {
				bad(k.key, "needs node.name (a node of a cluster); without it the server is a single node")
			}
		}
		return
	}
	if !ValidNodeName(n.Name) {
		bad("node.name", "must be 1-63 lower-case letters, digits and '-', starting with a letter or digit, got %q", n.Name)
	}
	if c.Embedded() {
		bad("node.name", "needs database_url: the nodes of a cluster share one state database")
	}
	host := n.AdvertiseHost
	if host == "" {
		host = c.PublicHostname
	}
	switch {
	case host == "":
		bad("node.advertise_host", "is required with node.name (or set public_hostname): users connect there")
	case !validHost(host):
		bad("node.advertise_host", "must be a host name or address without port or scheme, got %q", host)
	}
	if n.APIURL == "" {
		bad("node.api_url", "is required with node.name: other nodes forward API calls there")
	} else if u, err := url.Parse(n.APIURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "" {
		bad("node.api_url", "must be an http(s) URL of the API's root such as \"https://node1.internal:8443\", got %q", n.APIURL)
	}
	if n.SSHAddress == "" {
		bad("node.ssh_address", "is required with node.name: other nodes ship images to its SSH door")
	} else if h, p, err := net.SplitHostPort(n.SSHAddress); err != nil || !validHost(h) || !validPortText(p) {
		bad("node.ssh_address", "must be host:port such as \"node1.internal:2222\", got %q", n.SSHAddress)
	}
	if c.SSH.Port == 0 {
		bad("ssh.port", "must not be 0 with node.name: nodes ship images to each other through the SSH door")
	}
	if c.Cluster.Secret == "" {
		bad("cluster.secret", "is required with node.name (or cluster.secret_file): it signs the API calls nodes forward to each other")
	}
}

// ValidNodeName reports whether name may name a node: a DNS label in lower
// case, so that it is safe in logs, paths and headers.
func ValidNodeName(name string) bool {
	if name == "" || len(name) > 63 || name[0] == '-' {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// validHost reports whether h is a bare host name or IP address.
func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if net.ParseIP(h) != nil {
		return true
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func validPortText(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n <= 65535
}

// validSettingName reports whether k looks like a postgres parameter name
// (letters, digits, '_', and '.' for extensions' parameters).
func validSettingName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// Embedded reports whether Draupnir runs its own state cluster in the data
// path, because no database_url is configured.
func (c *Config) Embedded() bool { return c.DatabaseURL == "" }

// keyError is a mistake in one key of a [[sources]] entry.
type keyError struct{ key, msg string }

// check validates the keys of s other than its name.
func (s *Source) check() []keyError {
	var errs []keyError
	bad := func(key, format string, args ...any) {
		errs = append(errs, keyError{key, fmt.Sprintf(format, args...)})
	}
	if strings.TrimSpace(s.Conninfo) == "" {
		bad("conninfo", "is required: a libpq connection string such as \"host=db.internal user=draupnir_replication\"")
	} else if _, err := pgconn.ParseConfig(s.Conninfo); err != nil {
		// pgconn's message quotes the string with its password masked;
		// say only what is wrong with it.
		msg := err.Error()
		if inner := errors.Unwrap(err); inner != nil {
			msg = inner.Error()
		}
		bad("conninfo", "is not a valid libpq connection string: %s", msg)
	} else if keys, err := conninfo.Parse(s.Conninfo); err != nil {
		bad("conninfo", "is not a valid libpq connection string")
	} else if err := CheckConninfoKeys(keys); err != nil {
		bad("conninfo", "%v", err)
	}
	if s.Passfile != "" && !filepath.IsAbs(s.Passfile) {
		bad("passfile", "must be an absolute path, got %q", s.Passfile)
	}
	if s.AnonymisationScript == "" {
		// Fail closed: a source's images are never served unanonymised.
		bad("anonymisation_script", "is required: the file of the script that anonymises every image of the source")
	} else if !filepath.IsAbs(s.AnonymisationScript) {
		bad("anonymisation_script", "must be an absolute path, got %q", s.AnonymisationScript)
	}
	switch s.Mode {
	case string(draupnir.SourcePull), string(draupnir.SourceFollow):
	default:
		bad("mode", "must be \"pull\" or \"follow\", got %q", s.Mode)
	}
	if s.Schedule != "" {
		if _, err := ParseSchedule(s.Schedule); err != nil {
			bad("schedule", "must be five cron fields (\"0 3 * * *\") or \"@every 6h\": %v", err)
		}
	}
	if s.Keep < 1 {
		bad("keep", "must be at least 1 (how many ready images of the source to keep), got %d", s.Keep)
	}
	if s.RestoreCommand != "" {
		if s.Mode != string(draupnir.SourceFollow) {
			bad("restore_command", "is only for mode = \"follow\"")
		}
		if strings.ContainsFunc(s.RestoreCommand, unicode.IsControl) {
			bad("restore_command", "must not contain control characters")
		}
	}
	return errs
}

// CheckSourceFiles checks the files that [[sources]] name, which the
// server reads at every refresh: each script is a readable regular file,
// each passfile a private one (libpq ignores a password file that others
// may read). Validate leaves this to the server's start, so that a config
// can be checked on another host.
func (c *Config) CheckSourceFiles() error {
	var errs []error
	for i, s := range c.Sources {
		bad := func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("sources[%d].%s: %s", i, key, fmt.Sprintf(format, args...)))
		}
		if s.Passfile != "" {
			if st, err := os.Stat(s.Passfile); err != nil {
				bad("passfile", "cannot be read: %v", err)
			} else if !st.Mode().IsRegular() {
				bad("passfile", "%s is not a regular file", s.Passfile)
			} else if st.Mode().Perm()&0o077 != 0 {
				bad("passfile", "%s must be private (mode 0600 or less), has %04o", s.Passfile, st.Mode().Perm())
			}
		}
		if st, err := os.Stat(s.AnonymisationScript); err != nil {
			bad("anonymisation_script", "cannot be read: %v", err)
		} else if !st.Mode().IsRegular() {
			bad("anonymisation_script", "%s is not a regular file", s.AnonymisationScript)
		}
	}
	return errors.Join(errs...)
}
