package instances

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHBARules(t *testing.T) {
	got := hbaRules("draupnir")
	want := "# Written by draupnir for every instance.\n" +
		"local all all trust\n" +
		"hostssl all \"draupnir\" all scram-sha-256\n"
	if got != want {
		t.Errorf("hbaRules = %q, want %q", got, want)
	}
}

func TestTempFileLimit(t *testing.T) {
	tests := []struct {
		disk int64
		want string
	}{
		{0, ""},
		{-1, ""},
		{128 << 20, "65536kB"},
		{10 << 30, "5242880kB"},
		{1 << 50, "2147483647kB"}, // postgres' maximum
	}
	for _, tt := range tests {
		if got := tempFileLimit(tt.disk); got != tt.want {
			t.Errorf("tempFileLimit(%d) = %q, want %q", tt.disk, got, tt.want)
		}
	}
}

func TestSettingsCurrent(t *testing.T) {
	dir := t.TempDir()
	opts := `/usr/lib/postgresql/15/bin/postgres "-D" "/d" "-p" "6000" "-c" "listen_addresses=*" "-c" "hba_file=/run/h.conf" "-c" "temp_file_limit=65536kB" "-c" "work_mem=4MB"` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "postmaster.opts"), []byte(opts), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		settings map[string]string
		want     bool
	}{
		{"same", map[string]string{"hba_file": "/run/h.conf", "temp_file_limit": "65536kB"}, true},
		{"none", map[string]string{}, true},
		{"new setting", map[string]string{"hba_file": "/run/h.conf", "shared_preload_libraries": "auth_delay"}, false},
		{"changed value", map[string]string{"temp_file_limit": "131072kB"}, false},
		{"prefix of a value", map[string]string{"work_mem": "4"}, false},
	}
	for _, tt := range tests {
		if got := settingsCurrent(dir, tt.settings); got != tt.want {
			t.Errorf("%s: settingsCurrent = %v, want %v", tt.name, got, tt.want)
		}
	}
	if settingsCurrent(t.TempDir(), map[string]string{}) {
		t.Error("settingsCurrent without postmaster.opts = true")
	}
}

func TestPkgLibDir(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, want := pkgLibDir(bin), filepath.Join(root, "lib"); got != want {
		t.Errorf("without pg_config: pkgLibDir = %q, want %q", got, want)
	}
	script := "#!/bin/sh\necho /opt/pg/lib/postgresql\n"
	if err := os.WriteFile(filepath.Join(bin, "pg_config"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, want := pkgLibDir(bin), "/opt/pg/lib/postgresql"; got != want {
		t.Errorf("with pg_config: pkgLibDir = %q, want %q", got, want)
	}
	// A pg_config that answers nonsense is not believed.
	if err := os.WriteFile(filepath.Join(bin, "pg_config"), []byte("#!/bin/sh\necho relative\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, want := pkgLibDir(bin), filepath.Join(root, "lib"); got != want {
		t.Errorf("with a confused pg_config: pkgLibDir = %q, want %q", got, want)
	}
}
