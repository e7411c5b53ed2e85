package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuild builds the package from stand-in binaries and the repository's
// unit, example config and docs, then reads it back with dpkg-deb.
func TestBuild(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed")
	}
	bin := t.TempDir()
	for _, name := range []string{"draupnir", "draupnir-client"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\necho "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	deb, err := build(options{Root: "../..", BinDir: bin, OutDir: out, Version: "v1.2.3", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(deb) != out || filepath.Base(deb) != "draupnir_1.2.3_amd64.deb" {
		t.Errorf("package written to %s", deb)
	}
	dpkg := func(args ...string) string {
		t.Helper()
		b, err := exec.Command("dpkg-deb", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}

	// Contents: path → mode string as dpkg-deb -c prints it.
	listing := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(dpkg("-c", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("odd dpkg-deb -c line %q", line)
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", f[len(f)-1], f[1])
		}
		listing[strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/")] = f[0]
	}
	for path, mode := range map[string]string{
		"/usr/bin/draupnir":                     "-rwxr-xr-x",
		"/usr/bin/draupnir-client":              "-rwxr-xr-x",
		"/lib/systemd/system/draupnir.service":  "-rw-r--r--",
		"/etc/draupnir":                         "drwxr-x---",
		"/etc/draupnir/config.toml.example":     "-rw-r--r--",
		"/usr/share/doc/draupnir/operations.md": "-rw-r--r--",
	} {
		if got, ok := listing[path]; !ok {
			t.Errorf("%s is not in the package", path)
		} else if got != mode {
			t.Errorf("%s has mode %s, want %s", path, got, mode)
		}
	}
	// The operator's config must never come from (or be replaced by) the
	// package.
	if _, ok := listing["/etc/draupnir/config.toml"]; ok {
		t.Error("the package ships /etc/draupnir/config.toml")
	}

	info := dpkg("-I", deb)
	for _, want := range []string{
		"Package: draupnir", "Version: 1.2.3", "Architecture: amd64",
		"Depends: postgresql, btrfs-progs",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("control lacks %q:\n%s", want, info)
		}
	}

	// Control files: the example is a conffile, the postinst is executable,
	// valid sh, and makes the directories without starting the service.
	ctl := t.TempDir()
	dpkg("-e", deb, ctl)
	if b, err := os.ReadFile(filepath.Join(ctl, "conffiles")); err != nil || strings.TrimSpace(string(b)) != "/etc/draupnir/config.toml.example" {
		t.Errorf("conffiles = %q, %v; want the example config alone", b, err)
	}
	script := filepath.Join(ctl, "postinst")
	st, err := os.Stat(script)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o111 == 0 {
		t.Errorf("postinst has mode %v", st.Mode())
	}
	if b, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
		t.Errorf("postinst is not valid sh: %v\n%s", err, b)
	}
	b, _ := os.ReadFile(script)
	for _, want := range []string{"/var/lib/draupnir", "/etc/draupnir", "systemctl enable --now draupnir"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("postinst does not mention %q", want)
		}
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "systemctl start") || strings.HasPrefix(line, "systemctl enable") || strings.HasPrefix(line, "deb-systemd-invoke") {
			t.Errorf("postinst starts the service: %q", line)
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	bin := t.TempDir()
	tests := []struct {
		name string
		o    options
	}{
		{"no binaries", options{Root: "../..", BinDir: bin, OutDir: t.TempDir(), Version: "1.0.0", Arch: "amd64"}},
		{"version without a digit", options{Root: "../..", BinDir: bin, OutDir: t.TempDir(), Version: "dev", Arch: "amd64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := build(tt.o); err == nil {
				t.Error("built a package")
			}
		})
	}
}
