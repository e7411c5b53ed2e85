package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// writeConfig writes body to a fresh config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantErr fails unless err is non-nil and contains every one of want.
func wantErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

func TestLoadFullFile(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, `
database_url = "postgres://draupnir:pw@db:5432/draupnir"
data_path = "/srv/draupnir"
environment = "staging"
shared_secret = "0123456789abcdef-secret"
trusted_user_email_domain = "@example.com"
sentry_dsn = "https://key@sentry.example.com/1"
public_hostname = "draupnir.example.com"
run_path = "/run/dr"

[http]
port = 443
insecure_port = 80
address = "127.0.0.1"
tls_certificate = "/etc/draupnir/tls.crt"
tls_private_key = "/etc/draupnir/tls.key"
read_timeout = "30s"
write_timeout = "2m30s"
max_body_bytes = 4096

[oauth]
issuer_url = "https://id.example.com"
redirect_url = "https://draupnir.example.com/oauth_callback"
client_id = "client"
client_secret = "client-secret"

[ssh]
port = 22
address = "::1"
host_key = "/etc/draupnir/host_key"
upload_authorized_keys = "/etc/draupnir/upload_keys"
authorized_keys = "/etc/draupnir/keys"
idle_timeout = "5m"
max_timeout = "12h"
max_connections = 8

[instances]
min_port = 7000
max_port = 7100
postgres_user = "pg"
listen_addresses = "10.0.0.1"
superuser_access = true
start_timeout = "45s"
disk_limit = "2GiB"
default_ttl = "8h"
max_ttl = "7d"
max_per_user = 3
idle_timeout = "90m"

[instances.settings]
work_mem = "64MB"

[images]
keep_uploads = true

[postgres]
bin_dirs = ["/opt/pg15/bin", "/opt/pg16/bin"]

[node]
name = "node-1"
advertise_host = "n1.example.com"
api_url = "https://n1.internal:8443"
ssh_address = "n1.internal:2222"
heartbeat_interval = "2s"

[cluster]
copies = 2
secret = "0123456789abcdef0123456789abcdef"
`)
	got, err := Load(p, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		DatabaseURL:            "postgres://draupnir:pw@db:5432/draupnir",
		DataPath:               "/srv/draupnir",
		Environment:            "staging",
		SharedSecret:           "0123456789abcdef-secret",
		TrustedUserEmailDomain: "@example.com",
		SentryDSN:              "https://key@sentry.example.com/1",
		PublicHostname:         "draupnir.example.com",
		RunPath:                "/run/dr",
		HTTP: HTTP{
			Port: 443, InsecurePort: 80, Address: "127.0.0.1",
			TLSCertificate: "/etc/draupnir/tls.crt", TLSPrivateKey: "/etc/draupnir/tls.key",
			ReadTimeout: Duration{30 * time.Second}, WriteTimeout: Duration{150 * time.Second},
			MaxBodyBytes: 4096,
		},
		OAuth: OAuth{
			IssuerURL:    "https://id.example.com",
			RedirectURL:  "https://draupnir.example.com/oauth_callback",
			ClientID:     "client",
			ClientSecret: "client-secret",
		},
		SSH: SSH{
			Port: 22, Address: "::1", HostKey: "/etc/draupnir/host_key",
			UploadAuthorizedKeys: "/etc/draupnir/upload_keys", AuthorizedKeys: "/etc/draupnir/keys",
			IdleTimeout: Duration{5 * time.Minute}, MaxTimeout: Duration{12 * time.Hour}, MaxConnections: 8,
		},
		Images: Images{KeepUploads: true},
		Instances: Instances{
			MinPort: 7000, MaxPort: 7100, PostgresUser: "pg", ListenAddresses: "10.0.0.1",
			Settings: map[string]string{"work_mem": "64MB"}, SuperuserAccess: true,
			StartTimeout: Duration{45 * time.Second}, DiskLimit: 2 << 30,
			DefaultTTL: Duration{8 * time.Hour}, MaxTTL: Duration{7 * 24 * time.Hour}, MaxPerUser: 3,
			IdleTimeout: Duration{90 * time.Minute}, MaxProtection: Duration{7 * 24 * time.Hour},
			SweepInterval: Duration{15 * time.Second}, TombstoneDays: 7,
		},
		Postgres: Postgres{BinDirs: []string{"/opt/pg15/bin", "/opt/pg16/bin"}},
		Node: Node{
			Name: "node-1", AdvertiseHost: "n1.example.com", APIURL: "https://n1.internal:8443",
			SSHAddress: "n1.internal:2222", HeartbeatInterval: Duration{2 * time.Second},
		},
		Cluster: Cluster{Copies: 2, Secret: "0123456789abcdef0123456789abcdef"},
	}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", *got, want)
	}
	if got.Embedded() {
		t.Error("Embedded() with a database_url")
	}
}

// oauthLogin is the least configuration that turns on the login of people.
const oauthLogin = "trusted_user_email_domain = \"@corp.example\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\nredirect_url = \"https://d.example/oauth_callback\""

// TestLoadOriginalKeys checks that every key of the original Draupnir's
// config is honoured on its own, on top of the defaults.
func TestLoadOriginalKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, toml string
		get       func(*Config) any
		want      any
	}{
		{"database_url", `database_url = "postgres://u@h/db"`, func(c *Config) any { return c.DatabaseURL }, "postgres://u@h/db"},
		{"data_path", `data_path = "/data"`, func(c *Config) any { return c.DataPath }, "/data"},
		{"environment", `environment = "development"`, func(c *Config) any { return c.Environment }, "development"},
		{"shared_secret", `shared_secret = "a-long-shared-secret"`, func(c *Config) any { return c.SharedSecret }, "a-long-shared-secret"},
		{"trusted_user_email_domain", `trusted_user_email_domain = "@corp.example"`, func(c *Config) any { return c.TrustedUserEmailDomain }, "@corp.example"},
		{"sentry_dsn", `sentry_dsn = "https://k@s.example/2"`, func(c *Config) any { return c.SentryDSN }, "https://k@s.example/2"},
		{"http.port", "[http]\nport = 9443", func(c *Config) any { return c.HTTP.Port }, 9443},
		{"http.insecure_port", "[http]\ninsecure_port = 9080", func(c *Config) any { return c.HTTP.InsecurePort }, 9080},
		{"http.tls_certificate", "[http]\ntls_certificate = \"/c.pem\"\ntls_private_key = \"/k.pem\"", func(c *Config) any { return c.HTTP.TLSCertificate }, "/c.pem"},
		{"http.tls_private_key", "[http]\ntls_certificate = \"/c.pem\"\ntls_private_key = \"/k.pem\"", func(c *Config) any { return c.HTTP.TLSPrivateKey }, "/k.pem"},
		{"oauth.redirect_url", "[oauth]\nredirect_url = \"https://d.example/cb\"", func(c *Config) any { return c.OAuth.RedirectURL }, "https://d.example/cb"},
		{"oauth.client_id", oauthLogin, func(c *Config) any { return c.OAuth.ClientID }, "id"},
		{"oauth.client_secret", oauthLogin, func(c *Config) any { return c.OAuth.ClientSecret }, "s"},
		{"instances.disk_limit", "[instances]\ndisk_limit = \"512M\"", func(c *Config) any { return c.Instances.DiskLimit }, Size(512 << 20)},
		{"instances.disk_limit in bytes", "[instances]\ndisk_limit = 1073741824", func(c *Config) any { return c.Instances.DiskLimit }, Size(1 << 30)},
		{"instances.disk_limit off", "[instances]\ndisk_limit = 0", func(c *Config) any { return c.Instances.DiskLimit }, Size(0)},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			t.Parallel()
			c, err := Load(writeConfig(t, tt.toml), false, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(c); got != tt.want {
				t.Errorf("%s = %v, want %v", tt.key, got, tt.want)
			}
			def := Default()
			if tt.get(&def) == tt.want {
				t.Fatalf("test value %v is the default, so the test proves nothing", tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, toml string
		want       []string
	}{
		{"unknown top-level key", "data_path = \"/d\"\ndata_pth = \"/d\"", []string{"unknown key", "data_pth"}},
		{"unknown key in section", "[http]\nport = 1\nprot = 2", []string{"unknown key", "http.prot"}},
		{"unknown section", "[htp]\nport = 1", []string{"unknown key", "htp"}},
		{"unknown keys all named", "bogus = 1\n[ssh]\nbogus2 = 2", []string{"bogus", "ssh.bogus2"}},
		{"port not a number", "[http]\nport = \"abc\"", []string{"http.port", "line 2"}},
		{"list not a list", "[postgres]\nbin_dirs = \"/usr/bin\"", []string{"postgres.bin_dirs", "line 2"}},
		{"bool not a bool", "[instances]\nsuperuser_access = \"yes\"", []string{"instances.superuser_access", "line 2"}},
		{"setting not a string", "[instances.settings]\nmax_connections = 20", []string{"instances.settings.max_connections", "line 2"}},
		{"bad duration", "[http]\nread_timeout = \"soon\"", []string{"http.read_timeout", "line 2", "soon"}},
		{"duration without unit", "[ssh]\nidle_timeout = 30", []string{"ssh.idle_timeout", "30s"}},
		{"duration as number in inline table", "ssh = { max_timeout = 1.5 }", []string{"ssh.max_timeout"}},
		{"syntax error", "data_path = \n", []string{"line 1"}},
		{"invalid value from file", "[instances]\npostgres_user = \"root\"", []string{"instances.postgres_user"}},
		{"disk_limit not a size", "[instances]\ndisk_limit = \"lots\"", []string{"instances.disk_limit", "line 2", "lots"}},
		{"disk_limit unknown unit", "[instances]\ndisk_limit = \"10GB2\"", []string{"instances.disk_limit", "line 2"}},
		{"disk_limit negative", "[instances]\ndisk_limit = -1", []string{"instances.disk_limit"}},
		{"disk_limit too small", "[instances]\ndisk_limit = \"1MiB\"", []string{"instances.disk_limit", "64MiB"}},
		{"disk_limit fractional", "[instances]\ndisk_limit = 1.5", []string{"instances.disk_limit"}},
		{"default_ttl beyond max_ttl", "[instances]\ndefault_ttl = \"8d\"\nmax_ttl = \"7d\"", []string{"instances.default_ttl", "max_ttl"}},
		{"max_ttl negative", "[instances]\nmax_ttl = \"-1h\"", []string{"instances.max_ttl"}},
		{"idle_timeout not a duration", "[instances]\nidle_timeout = \"7days\"", []string{"instances.idle_timeout", "line 2"}},
		{"max_per_user negative", "[instances]\nmax_per_user = -1", []string{"instances.max_per_user"}},
		{"sweep_interval too short", "[instances]\nsweep_interval = \"10ms\"", []string{"instances.sweep_interval"}},
		{"tombstone_days zero", "[instances]\ntombstone_days = 0", []string{"instances.tombstone_days"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := writeConfig(t, tt.toml)
			_, err := Load(p, false, nil)
			wantErr(t, err, append(tt.want, p)...)
		})
	}
}

func TestLoadDurations(t *testing.T) {
	t.Parallel()
	c, err := Load(writeConfig(t, "[http]\nread_timeout = \"30s\"\nwrite_timeout = \"1h2m\"\n[instances]\nstart_timeout = \"1500ms\""), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for key, tt := range map[string]struct{ got, want time.Duration }{
		"http.read_timeout":       {c.HTTP.ReadTimeout.Duration, 30 * time.Second},
		"http.write_timeout":      {c.HTTP.WriteTimeout.Duration, 62 * time.Minute},
		"instances.start_timeout": {c.Instances.StartTimeout.Duration, 1500 * time.Millisecond},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", key, tt.got, tt.want)
		}
	}
	b, err := c.HTTP.WriteTimeout.MarshalText()
	if err != nil || string(b) != "1h2m0s" {
		t.Errorf("MarshalText = %q, %v; want \"1h2m0s\"", b, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope.toml")
	c, err := Load(missing, true, nil)
	if err != nil {
		t.Fatalf("optional missing file: %v", err)
	}
	if def := Default(); !reflect.DeepEqual(*c, def) {
		t.Errorf("optional missing file gave %+v, want the defaults %+v", *c, def)
	}
	if !c.Embedded() {
		t.Error("the default config does not use the embedded state cluster")
	}
	_, err = Load(missing, false, nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("explicit missing file: err = %v, want ErrNotExist", err)
	}
	wantErr(t, err, missing)

	// Optional only excuses a missing file, not an unreadable one.
	_, err = Load(t.TempDir(), true, nil)
	if err == nil {
		t.Error("a directory as config file loaded without error")
	}
}

func TestLoadEnv(t *testing.T) {
	t.Parallel()
	file := "data_path = \"/from/file\"\n[http]\nport = 9443\n[instances.settings]\nwork_mem = \"4MB\"\nfsync = \"off\"\n"
	tests := []struct {
		env  string
		get  func(*Config) any
		want any
	}{
		{"DRAUPNIR_DATA_PATH=/from/env", func(c *Config) any { return c.DataPath }, "/from/env"},
		{"DRAUPNIR_HTTP_PORT=1443", func(c *Config) any { return c.HTTP.Port }, 1443},
		{"DRAUPNIR_HTTP_MAX_BODY_BYTES=2048", func(c *Config) any { return c.HTTP.MaxBodyBytes }, int64(2048)},
		{"DRAUPNIR_SHARED_SECRET=with=equals-and-long", func(c *Config) any { return c.SharedSecret }, "with=equals-and-long"},
		{"DRAUPNIR_SSH_IDLE_TIMEOUT=90s", func(c *Config) any { return c.SSH.IdleTimeout.Duration }, 90 * time.Second},
		{"DRAUPNIR_INSTANCES_SUPERUSER_ACCESS=true", func(c *Config) any { return c.Instances.SuperuserAccess }, true},
		{"DRAUPNIR_INSTANCES_DISK_LIMIT=3G", func(c *Config) any { return c.Instances.DiskLimit }, Size(3 << 30)},
		{"DRAUPNIR_INSTANCES_DISK_LIMIT=0", func(c *Config) any { return c.Instances.DiskLimit }, Size(0)},
		{"DRAUPNIR_IMAGES_KEEP_UPLOADS=1", func(c *Config) any { return c.Images.KeepUploads }, true},
		{"DRAUPNIR_INSTANCES_SETTINGS=work_mem=64MB,max_connections=20",
			func(c *Config) any { return c.Instances.Settings },
			map[string]string{"work_mem": "64MB", "max_connections": "20"}},
		{"DRAUPNIR_INSTANCES_SETTINGS=", func(c *Config) any { return c.Instances.Settings }, map[string]string{}},
		{"DRAUPNIR_POSTGRES_BIN_DIRS=/usr/lib/postgresql/15/bin:/opt/pg/16/bin",
			func(c *Config) any { return c.Postgres.BinDirs },
			[]string{"/usr/lib/postgresql/15/bin", "/opt/pg/16/bin"}},
		{"DRAUPNIR_POSTGRES_BIN_DIRS=/a/bin, /b/bin", func(c *Config) any { return c.Postgres.BinDirs }, []string{"/a/bin", "/b/bin"}},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Parallel()
			// Unrelated variables, including other DRAUPNIR_ ones, are ignored.
			env := []string{"PATH=/bin", "DRAUPNIR_CONFIG=/elsewhere", "DRAUPNIR_TOKEN=x", tt.env}
			c, err := Load(writeConfig(t, file), false, env)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s: got %#v, want %#v", tt.env, got, tt.want)
			}
		})
	}
	// Without the variables, the file's values stand.
	c, err := Load(writeConfig(t, file), false, []string{"HTTP_PORT=1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataPath != "/from/file" || c.HTTP.Port != 9443 {
		t.Errorf("file values not kept: data_path %q, http.port %d", c.DataPath, c.HTTP.Port)
	}
}

func TestLoadBadEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  string
		want []string
	}{
		{"DRAUPNIR_HTTP_PORT=abc", []string{"DRAUPNIR_HTTP_PORT", "abc"}},
		{"DRAUPNIR_SSH_MAX_CONNECTIONS=1.5", []string{"DRAUPNIR_SSH_MAX_CONNECTIONS"}},
		{"DRAUPNIR_INSTANCES_SUPERUSER_ACCESS=maybe", []string{"DRAUPNIR_INSTANCES_SUPERUSER_ACCESS"}},
		{"DRAUPNIR_HTTP_READ_TIMEOUT=30", []string{"DRAUPNIR_HTTP_READ_TIMEOUT"}},
		{"DRAUPNIR_INSTANCES_SETTINGS=work_mem", []string{"DRAUPNIR_INSTANCES_SETTINGS"}},
		{"DRAUPNIR_INSTANCES_SETTINGS==64MB", []string{"DRAUPNIR_INSTANCES_SETTINGS"}},
		{"DRAUPNIR_INSTANCES_DISK_LIMIT=big", []string{"DRAUPNIR_INSTANCES_DISK_LIMIT", "big"}},
		{"DRAUPNIR_INSTANCES_DISK_LIMIT=1K", []string{"instances.disk_limit"}},
		// Well-formed but invalid: Validate names the key.
		{"DRAUPNIR_HTTP_PORT=70000", []string{"http.port"}},
		{"DRAUPNIR_DATA_PATH=relative", []string{"data_path"}},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Parallel()
			_, err := Load(filepath.Join(t.TempDir(), "absent.toml"), true, []string{tt.env})
			wantErr(t, err, tt.want...)
		})
	}
}

// TestValidate covers every rule of Validate, each by one change to the
// (valid) defaults, and checks that the error names the key.
func TestValidate(t *testing.T) {
	t.Parallel()
	def := Default()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
		key    string // "" means valid
	}{
		{"relative data_path", func(c *Config) { c.DataPath = "data" }, "data_path"},
		{"empty data_path", func(c *Config) { c.DataPath = "" }, "data_path"},
		{"relative run_path", func(c *Config) { c.RunPath = "run" }, "run_path"},
		{"long run_path", func(c *Config) { c.RunPath = "/" + strings.Repeat("r", 70) }, "run_path"},
		{"unknown environment", func(c *Config) { c.Environment = "prod" }, "environment"},
		{"test environment", func(c *Config) { c.Environment = "test" }, ""},
		{"short shared_secret", func(c *Config) { c.SharedSecret = "short" }, "shared_secret"},
		{"database_url URL", func(c *Config) { c.DatabaseURL = "postgresql://u:p@h/db?sslmode=require" }, ""},
		{"database_url key=value", func(c *Config) { c.DatabaseURL = "host=/run/pg dbname=draupnir" }, ""},
		{"database_url nonsense", func(c *Config) { c.DatabaseURL = "db.example.com" }, "database_url"},
		{"database_url bad URL", func(c *Config) { c.DatabaseURL = "postgres://u:p@h:port/db" }, "database_url"},
		{"domain without @", func(c *Config) { c.TrustedUserEmailDomain = "example.com" }, "trusted_user_email_domain"},
		{"login without redirect_url", func(c *Config) {
			c.OAuth.ClientID, c.OAuth.ClientSecret, c.TrustedUserEmailDomain = "id", "s", "@example.com"
		}, "oauth.redirect_url"},
		{"login without trusted domain", func(c *Config) {
			c.OAuth.ClientID, c.OAuth.ClientSecret, c.OAuth.RedirectURL = "id", "s", "https://d.example/oauth_callback"
		}, "trusted_user_email_domain"},
		{"domain with two @", func(c *Config) { c.TrustedUserEmailDomain = "@a@example.com" }, "trusted_user_email_domain"},
		{"domain with space", func(c *Config) { c.TrustedUserEmailDomain = "@exa mple.com" }, "trusted_user_email_domain"},
		{"domain not a domain", func(c *Config) { c.TrustedUserEmailDomain = "@ex<>ample" }, "trusted_user_email_domain"},
		{"negative http.port", func(c *Config) { c.HTTP.Port = -1 }, "http.port"},
		{"huge http.insecure_port", func(c *Config) { c.HTTP.InsecurePort = 65536 }, "http.insecure_port"},
		{"ssh.port disabled", func(c *Config) { c.SSH.Port = 0 }, ""},
		{"huge ssh.port", func(c *Config) { c.SSH.Port = 100000 }, "ssh.port"},
		{"zero min_port", func(c *Config) { c.Instances.MinPort = 0 }, "instances.min_port"},
		{"huge max_port", func(c *Config) { c.Instances.MaxPort = 70000 }, "instances.max_port"},
		{"inverted port range", func(c *Config) { c.Instances.MinPort, c.Instances.MaxPort = 6500, 6400 }, "instances.max_port"},
		{"http.port in instance range", func(c *Config) { c.HTTP.Port = 6001 }, "http.port"},
		{"insecure_port in instance range", func(c *Config) { c.HTTP.InsecurePort = 6999 }, "http.insecure_port"},
		{"ssh.port in instance range", func(c *Config) { c.SSH.Port = 6000 }, "ssh.port"},
		{"certificate without key", func(c *Config) { c.HTTP.TLSCertificate = "/c.pem" }, "http.tls_certificate"},
		{"key without certificate", func(c *Config) { c.HTTP.TLSPrivateKey = "/k.pem" }, "http.tls_certificate"},
		{"zero max_body_bytes", func(c *Config) { c.HTTP.MaxBodyBytes = 0 }, "http.max_body_bytes"},
		{"relative issuer_url", func(c *Config) { c.OAuth.IssuerURL = "accounts.google.com" }, "oauth.issuer_url"},
		{"ftp redirect_url", func(c *Config) { c.OAuth.RedirectURL = "ftp://d.example/cb" }, "oauth.redirect_url"},
		{"client_id without secret", func(c *Config) { c.OAuth.ClientID = "id" }, "oauth.client_id"},
		{"negative read_timeout", func(c *Config) { c.HTTP.ReadTimeout.Duration = -time.Second }, "http.read_timeout"},
		{"negative write_timeout", func(c *Config) { c.HTTP.WriteTimeout.Duration = -time.Second }, "http.write_timeout"},
		{"negative idle_timeout", func(c *Config) { c.SSH.IdleTimeout.Duration = -time.Second }, "ssh.idle_timeout"},
		{"no ssh.max_timeout", func(c *Config) { c.SSH.MaxTimeout.Duration = 0 }, ""},
		{"negative max_timeout", func(c *Config) { c.SSH.MaxTimeout.Duration = -time.Second }, "ssh.max_timeout"},
		{"zero start_timeout", func(c *Config) { c.Instances.StartTimeout.Duration = 0 }, "instances.start_timeout"},
		{"root postgres_user", func(c *Config) { c.Instances.PostgresUser = "root" }, "instances.postgres_user"},
		{"empty postgres_user", func(c *Config) { c.Instances.PostgresUser = "" }, "instances.postgres_user"},
		{"managed setting", func(c *Config) { c.Instances.Settings = map[string]string{"port": "1"} }, "instances.settings.port"},
		{"managed setting in capitals", func(c *Config) { c.Instances.Settings = map[string]string{"HBA_File": "/x"} }, "instances.settings.HBA_File"},
		{"cluster_name is managed", func(c *Config) { c.Instances.Settings = map[string]string{"cluster_name": "x"} }, "instances.settings.cluster_name"},
		{"setting name with =", func(c *Config) { c.Instances.Settings = map[string]string{"a=b": "1"} }, "instances.settings"},
		{"empty setting name", func(c *Config) { c.Instances.Settings = map[string]string{"": "1"} }, "instances.settings"},
		{"setting value with newline", func(c *Config) { c.Instances.Settings = map[string]string{"work_mem": "1MB\nport=5"} }, "instances.settings.work_mem"},
		{"extension setting", func(c *Config) { c.Instances.Settings = map[string]string{"auto_explain.log_min_duration": "1s"} }, ""},
		{"no bin_dirs", func(c *Config) { c.Postgres.BinDirs = nil }, "postgres.bin_dirs"},
		{"relative bin_dirs", func(c *Config) { c.Postgres.BinDirs = []string{"bin"} }, "postgres.bin_dirs"},
		{"zero max_connections", func(c *Config) { c.SSH.MaxConnections = 0 }, "ssh.max_connections"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.change(&c)
			err := c.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("valid change rejected: %v", err)
				}
				return
			}
			wantErr(t, err, tt.key+":")
		})
	}
}

// clusterNode is a valid node of a cluster, for TestValidateNode to break.
func clusterNode() Config {
	c := Default()
	c.DatabaseURL = "postgres://draupnir@state.internal/draupnir"
	c.Node = Node{
		Name: "n1", AdvertiseHost: "n1.example.com", APIURL: "http://10.0.0.1:8080",
		SSHAddress: "10.0.0.1:2222", HeartbeatInterval: Duration{5 * time.Second},
	}
	c.Cluster.Secret = Secret(strings.Repeat("s", MinSecretLen))
	return c
}

func TestValidateNode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*Config)
		key    string // "" means valid
	}{
		{"valid node", func(c *Config) {}, ""},
		{"single node keeps working", func(c *Config) { *c = Default() }, ""},
		{"name without database_url", func(c *Config) { c.DatabaseURL = "" }, "node.name"},
		{"name with capitals", func(c *Config) { c.Node.Name = "Node1" }, "node.name"},
		{"name with slash", func(c *Config) { c.Node.Name = "../n1" }, "node.name"},
		{"name with leading dash", func(c *Config) { c.Node.Name = "-n1" }, "node.name"},
		{"name too long", func(c *Config) { c.Node.Name = strings.Repeat("n", 64) }, "node.name"},
		{"advertise_host from public_hostname", func(c *Config) { c.Node.AdvertiseHost, c.PublicHostname = "", "db.example.com" }, ""},
		{"no advertise_host", func(c *Config) { c.Node.AdvertiseHost = "" }, "node.advertise_host"},
		{"advertise_host with port", func(c *Config) { c.Node.AdvertiseHost = "n1.example.com:5432" }, "node.advertise_host"},
		{"advertise_host URL", func(c *Config) { c.Node.AdvertiseHost = "https://n1.example.com" }, "node.advertise_host"},
		{"advertise_host IPv6", func(c *Config) { c.Node.AdvertiseHost = "fd00::1" }, ""},
		{"no api_url", func(c *Config) { c.Node.APIURL = "" }, "node.api_url"},
		{"api_url without scheme", func(c *Config) { c.Node.APIURL = "n1.internal:8080" }, "node.api_url"},
		{"api_url ftp", func(c *Config) { c.Node.APIURL = "ftp://n1.internal" }, "node.api_url"},
		{"api_url with user", func(c *Config) { c.Node.APIURL = "https://u:p@n1.internal" }, "node.api_url"},
		{"api_url with path", func(c *Config) { c.Node.APIURL = "https://n1.internal/api" }, "node.api_url"},
		{"api_url with trailing slash", func(c *Config) { c.Node.APIURL = "https://n1.internal/" }, ""},
		{"no ssh_address", func(c *Config) { c.Node.SSHAddress = "" }, "node.ssh_address"},
		{"ssh_address without port", func(c *Config) { c.Node.SSHAddress = "n1.internal" }, "node.ssh_address"},
		{"ssh_address port 0", func(c *Config) { c.Node.SSHAddress = "n1.internal:0" }, "node.ssh_address"},
		{"ssh_address IPv6", func(c *Config) { c.Node.SSHAddress = "[fd00::1]:2222" }, ""},
		{"heartbeat too fast", func(c *Config) { c.Node.HeartbeatInterval.Duration = 10 * time.Millisecond }, "node.heartbeat_interval"},
		{"heartbeat too slow", func(c *Config) { c.Node.HeartbeatInterval.Duration = time.Hour }, "node.heartbeat_interval"},
		{"no secret", func(c *Config) { c.Cluster.Secret = "" }, "cluster.secret"},
		{"short secret", func(c *Config) { c.Cluster.Secret = "short-secret" }, "cluster.secret"},
		{"negative copies", func(c *Config) { c.Cluster.Copies = -1 }, "cluster.copies"},
		{"no SSH door", func(c *Config) { c.SSH.Port = 0 }, "ssh.port"},
		{"node keys without a name", func(c *Config) { *c = Default(); c.Node.APIURL = "http://n1:8080" }, "node.api_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := clusterNode()
			tt.change(&c)
			err := c.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("valid change rejected: %v", err)
				}
				return
			}
			wantErr(t, err, tt.key+":")
		})
	}
}

// TestClusterSecretFile reads the secret from a private file and refuses
// files others could read, and never repeats the secret in an error or in
// printed configuration.
func TestClusterSecretFile(t *testing.T) {
	t.Parallel()
	secret := "cluster-secret-" + strings.Repeat("x", 40)
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	node := "database_url = \"postgres://s/db\"\npublic_hostname = \"n1\"\n[node]\nname = \"n1\"\napi_url = \"http://n1:8080\"\nssh_address = \"n1:2222\"\n"
	good := write("good", secret+"\n", 0o600)
	c, err := Load(writeConfig(t, node+"[cluster]\nsecret_file = \""+good+"\""), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Cluster.Secret) != secret {
		t.Errorf("secret read from the file is %q", string(c.Cluster.Secret))
	}
	for _, out := range []string{fmt.Sprint(c.Cluster), fmt.Sprintf("%+v %#v %v", *c, c.Cluster, c.Cluster.Secret)} {
		if strings.Contains(out, secret) {
			t.Errorf("printed configuration reveals the secret: %s", out)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "cluster", c.Cluster, "secret", c.Cluster.Secret)
	if strings.Contains(buf.String(), secret) {
		t.Errorf("logged configuration reveals the secret: %s", buf.String())
	}

	tests := []struct {
		name, cluster string
		want          []string
	}{
		{"readable by others", "secret_file = \"" + write("open", secret, 0o644) + "\"", []string{"cluster.secret_file", "chmod 600"}},
		{"readable by group", "secret_file = \"" + write("group", secret, 0o640) + "\"", []string{"cluster.secret_file", "chmod 600"}},
		{"missing", "secret_file = \"" + filepath.Join(dir, "none") + "\"", []string{"cluster.secret_file"}},
		{"relative", "secret_file = \"secret\"", []string{"cluster.secret_file", "absolute"}},
		{"empty", "secret_file = \"" + write("empty", "\n", 0o600) + "\"", []string{"cluster.secret_file", "empty"}},
		{"too short", "secret_file = \"" + write("short", "short-"+secret[:10], 0o600) + "\"", []string{"cluster.secret:"}},
		{"both", "secret = \"" + secret + "\"\nsecret_file = \"" + good + "\"", []string{"cluster.secret_file", "not both"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, node+"[cluster]\n"+tt.cluster), false, nil)
			wantErr(t, err, tt.want...)
			if err != nil && strings.Contains(err.Error(), secret[:20]) {
				t.Errorf("error %q reveals the secret", err)
			}
		})
	}
	// The environment sets it too, as every key.
	c, err = Load(writeConfig(t, node), false, []string{"DRAUPNIR_CLUSTER_SECRET=" + secret})
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Cluster.Secret) != secret {
		t.Errorf("secret from DRAUPNIR_CLUSTER_SECRET is %q", string(c.Cluster.Secret))
	}
}

// TestValidateHidesSecrets checks that errors about secret-bearing keys do
// not repeat the secret, since start-up errors end up in logs.
func TestValidateHidesSecrets(t *testing.T) {
	t.Parallel()
	c := Default()
	c.SharedSecret = "hunter2"
	c.DatabaseURL = "postgres://u:s3cr3t@h:port/db"
	err := c.Validate()
	wantErr(t, err, "shared_secret", "database_url")
	for _, secret := range []string{"hunter2", "s3cr3t"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q reveals the secret %q", err, secret)
		}
	}
}

// TestPath changes the environment, so it does not run in parallel.
func TestPath(t *testing.T) {
	tests := []struct {
		name, explicit, env, want string
	}{
		{"explicit wins", "/x.toml", "/env.toml", "/x.toml"},
		{"environment next", "", "/env.toml", "/env.toml"},
		{"default last", "", "", DefaultPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DRAUPNIR_CONFIG", tt.env)
			if got := Path(tt.explicit); got != tt.want {
				t.Errorf("Path(%q) with DRAUPNIR_CONFIG=%q = %q, want %q", tt.explicit, tt.env, got, tt.want)
			}
		})
	}
}

const examplePath = "../draupnir.example.toml"

// TestExampleLoads keeps the example file loadable.
func TestExampleLoads(t *testing.T) {
	t.Parallel()
	c, err := Load(examplePath, false, nil)
	if err != nil {
		t.Fatalf("the example config does not load: %v", err)
	}
	if len(c.Instances.Settings) == 0 {
		t.Error("the example's [instances.settings] table was not read")
	}
}

// leafKeys returns the dotted TOML key of every leaf field of Config.
func leafKeys(t *testing.T) []string {
	t.Helper()
	var keys []string
	var c Config
	err := walk(reflect.ValueOf(&c).Elem(), "", func(key string, _ reflect.Value) error {
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 30 { // guard against walk silently skipping sections
		t.Fatalf("walk found only %d keys: %v", len(keys), keys)
	}
	// The keys of a [[sources]] entry.
	st := reflect.TypeOf(Source{})
	for i := 0; i < st.NumField(); i++ {
		keys = append(keys, "sources."+st.Field(i).Tag.Get("toml"))
	}
	return keys
}

// TestExampleDocumentsEveryKey checks that every key of Config is set in the
// example file, with a comment just above it (or above the group of keys it
// belongs to).
func TestExampleDocumentsEveryKey(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	// line[key] is the line number of "key = …"; lines are the file's lines.
	line := map[string]int{}
	var lines []string
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		lines = append(lines, l)
		switch {
		case strings.HasPrefix(l, "["):
			section = strings.Trim(l, "[]") + "."
		case l != "" && !strings.HasPrefix(l, "#"):
			k, _, _ := strings.Cut(l, "=")
			line[section+strings.TrimSpace(k)] = len(lines) - 1
		}
	}
	for _, key := range leafKeys(t) {
		var v any = doc
		for _, part := range strings.Split(key, ".") {
			if entries, ok := v.([]any); ok && len(entries) > 0 { // [[sources]]: its first entry
				v = entries[0]
			}
			m, _ := v.(map[string]any)
			v = m[part]
		}
		if v == nil {
			t.Errorf("key %s is missing from %s", key, examplePath)
			continue
		}
		n, ok := line[key]
		if !ok { // a table such as [instances.settings]
			for i, l := range lines {
				if l == "["+key+"]" || l == "[["+key+"]]" {
					n, ok = i, true
				}
			}
		}
		if !ok {
			t.Errorf("key %s: cannot find its line in %s", key, examplePath)
			continue
		}
		// Walk up over the keys of the same group to the comment.
		for n > 0 && lines[n-1] != "" && !strings.HasPrefix(lines[n-1], "#") && !strings.HasPrefix(lines[n-1], "[") {
			n--
		}
		if n == 0 || !strings.HasPrefix(lines[n-1], "#") {
			t.Errorf("key %s has no comment above it in %s", key, examplePath)
		}
	}
}

// TestValidateSources checks every [[sources]] key's rule, each error
// naming the entry and the key.
func TestValidateSources(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "app.sql")
	passfile := filepath.Join(dir, "pgpass")
	open := filepath.Join(dir, "open-pgpass")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{script, 0o644}, {passfile, 0o600}, {open, 0o644}} {
		if err := os.WriteFile(f.path, []byte("x\n"), f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(f.path, f.mode) // whatever the umask
	}
	good := func() Source {
		return Source{Name: "app", Conninfo: "host=db.internal user=draupnir_replication", Passfile: passfile,
			AnonymisationScript: script, Mode: "pull", Schedule: "@every 6h", Keep: 3}
	}
	tests := []struct {
		name   string
		change func(*Source)
		key    string // "" means valid
	}{
		{"valid", func(s *Source) {}, ""},
		{"follow with restore_command", func(s *Source) { s.Mode, s.RestoreCommand = "follow", "wal-g wal-fetch %f %p" }, ""},
		{"cron schedule", func(s *Source) { s.Schedule = "30 3 * * 1-5" }, ""},
		{"no schedule", func(s *Source) { s.Schedule = "" }, ""},
		{"URL conninfo", func(s *Source) { s.Conninfo = "postgres://repl@db.internal:5433/app" }, ""},
		{"no passfile", func(s *Source) { s.Passfile = "" }, ""},
		{"empty name", func(s *Source) { s.Name = "" }, "sources[0].name"},
		{"name with a slash", func(s *Source) { s.Name = "../app" }, "sources[0].name"},
		{"name in capitals", func(s *Source) { s.Name = "App" }, "sources[0].name"},
		{"no conninfo", func(s *Source) { s.Conninfo = " " }, "sources[0].conninfo"},
		{"conninfo nonsense", func(s *Source) { s.Conninfo = "host=db port" }, "sources[0].conninfo"},
		{"conninfo bad URL", func(s *Source) { s.Conninfo = "postgres://u:p@h:port/db" }, "sources[0].conninfo"},
		{"conninfo with a password", func(s *Source) { s.Conninfo = "host=db user=repl password=pw" }, "sources[0].conninfo"},
		{"conninfo with a quoted password", func(s *Source) { s.Conninfo = "host=db password = 'p w' user=repl" }, "sources[0].conninfo"},
		{"URL with a password", func(s *Source) { s.Conninfo = "postgres://repl:pw@db/app" }, "sources[0].conninfo"},
		{"URL with a password parameter", func(s *Source) { s.Conninfo = "postgres://repl@db/app?password=pw" }, "sources[0].conninfo"},
		{"URL with an empty password", func(s *Source) { s.Conninfo = "postgres://repl:@db/app" }, "sources[0].conninfo"},
		{"conninfo with passfile", func(s *Source) { s.Conninfo = "host=db passfile=/root/.pgpass" }, "sources[0].conninfo"},
		{"conninfo with replication", func(s *Source) { s.Conninfo = "host=db replication=database" }, "sources[0].conninfo"},
		{"conninfo unterminated quote", func(s *Source) { s.Conninfo = "host='db" }, "sources[0].conninfo"},
		{"long follow name", func(s *Source) { s.Mode, s.Name = "follow", strings.Repeat("a", 41) }, "sources[0].name"},
		{"long pull name", func(s *Source) { s.Name = strings.Repeat("a", 63) }, ""},
		{"relative passfile", func(s *Source) { s.Passfile = "pgpass" }, "sources[0].passfile"},
		{"no script", func(s *Source) { s.AnonymisationScript = "" }, "sources[0].anonymisation_script"},
		{"relative script", func(s *Source) { s.AnonymisationScript = "app.sql" }, "sources[0].anonymisation_script"},
		{"no mode", func(s *Source) { s.Mode = "" }, "sources[0].mode"},
		{"unknown mode", func(s *Source) { s.Mode = "push" }, "sources[0].mode"},
		{"six cron fields", func(s *Source) { s.Schedule = "0 0 3 * * *" }, "sources[0].schedule"},
		{"bad every", func(s *Source) { s.Schedule = "@every soon" }, "sources[0].schedule"},
		{"zero keep", func(s *Source) { s.Keep = 0 }, "sources[0].keep"},
		{"restore_command in pull mode", func(s *Source) { s.RestoreCommand = "cp /a/%f %p" }, "sources[0].restore_command"},
		{"restore_command with newline", func(s *Source) {
			s.Mode, s.RestoreCommand = "follow", "cp /a/%f %p\narchive_command='x'"
		}, "sources[0].restore_command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			s := good()
			tt.change(&s)
			c.Sources = []Source{s}
			err := errors.Join(c.Validate(), c.CheckSourceFiles())
			if tt.key == "" {
				if err != nil {
					t.Fatalf("valid source rejected: %v", err)
				}
				return
			}
			wantErr(t, err, tt.key+":")
		})
	}
	files := []struct {
		name   string
		change func(*Source)
		key    string
	}{
		{"missing passfile", func(s *Source) { s.Passfile = filepath.Join(dir, "none") }, "sources[0].passfile"},
		{"readable passfile", func(s *Source) { s.Passfile = open }, "sources[0].passfile"},
		{"directory passfile", func(s *Source) { s.Passfile = dir }, "sources[0].passfile"},
		{"missing script", func(s *Source) { s.AnonymisationScript = filepath.Join(dir, "none.sql") }, "sources[0].anonymisation_script"},
		{"directory script", func(s *Source) { s.AnonymisationScript = dir }, "sources[0].anonymisation_script"},
	}
	for _, tt := range files {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			s := good()
			tt.change(&s)
			c.Sources = []Source{s}
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate judges files: %v", err)
			}
			wantErr(t, c.CheckSourceFiles(), tt.key+":")
		})
	}
	t.Run("duplicate name", func(t *testing.T) {
		t.Parallel()
		c := Default()
		c.Sources = []Source{good(), good()}
		wantErr(t, c.Validate(), "sources[1].name:", "sources[0]")
	})
	t.Run("password hidden", func(t *testing.T) {
		t.Parallel()
		c := Default()
		s := good()
		s.Conninfo = "host=db user=repl password=s3cr3t"
		c.Sources = []Source{s}
		err := c.Validate()
		wantErr(t, err, "sources[0].conninfo:")
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error %q reveals the password", err)
		}
	})
}

// TestSourcesNotFromEnvironment checks that an environment variable cannot
// stand for [[sources]], and says so rather than being ignored.
func TestSourcesNotFromEnvironment(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"), true, []string{"DRAUPNIR_SOURCES=app"})
	wantErr(t, err, "DRAUPNIR_SOURCES", "cannot be set from the environment")
}
