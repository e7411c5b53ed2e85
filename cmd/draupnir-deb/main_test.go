package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// contents are the package's files: where they come from (relative to the
// repository root, or a stand-in binary's name) and their mode.
var contents = []struct {
	path, src, mode string
}{
	{"/usr/bin/draupnir", "draupnir", "-rwxr-xr-x"},
	{"/usr/bin/draupnir-client", "draupnir-client", "-rwxr-xr-x"},
	{"/lib/systemd/system/draupnir.service", "../../dist/draupnir.service", "-rw-r--r--"},
	{"/etc/draupnir/config.toml.example", "../../draupnir.example.toml", "-rw-r--r--"},
	{"/usr/share/doc/draupnir/operations.md", "../../docs/operations.md", "-rw-r--r--"},
}

// testPackage builds the package from stand-in binaries and the repository's
// unit, example config and docs, under a umask that would spoil every mode
// the build did not set itself. It returns the package and the stand-ins'
// directory.
func testPackage(t *testing.T) (deb, bin string) {
	t.Helper()
	bin = t.TempDir()
	for _, name := range []string{"draupnir", "draupnir-client"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\necho "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	old := syscall.Umask(0o077)
	deb, err := build(context.Background(), options{Root: "../..", BinDir: bin, OutDir: out, Version: "v1.2.3", Arch: "amd64"})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(deb) != out || filepath.Base(deb) != "draupnir_1.2.3_amd64.deb" {
		t.Errorf("package written to %s", deb)
	}
	return deb, bin
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	b, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
	}
	return string(b)
}

// TestBuild reads the package back with dpkg-deb: its files, their modes and
// owner, its control fields and its maintainer files.
func TestBuild(t *testing.T) {
	deb, bin := testPackage(t)

	// Contents: path → mode string as dpkg-deb -c prints it.
	listing := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("odd dpkg-deb -c line %q", line)
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", f[len(f)-1], f[1])
		}
		listing[strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/")] = f[0]
	}
	want := map[string]string{
		"":                        "drwxr-xr-x",
		"/etc":                    "drwxr-xr-x",
		"/etc/draupnir":           "drwxr-x---",
		"/lib":                    "drwxr-xr-x",
		"/lib/systemd":            "drwxr-xr-x",
		"/lib/systemd/system":     "drwxr-xr-x",
		"/usr":                    "drwxr-xr-x",
		"/usr/bin":                "drwxr-xr-x",
		"/usr/share":              "drwxr-xr-x",
		"/usr/share/doc":          "drwxr-xr-x",
		"/usr/share/doc/draupnir": "drwxr-xr-x",
	}
	for _, c := range contents {
		want[c.path] = c.mode
	}
	for path, mode := range want {
		if got, ok := listing[path]; !ok {
			t.Errorf("%s is not in the package", path)
		} else if got != mode {
			t.Errorf("%s has mode %s, want %s", path, got, mode)
		}
	}
	for path := range listing {
		if _, ok := want[path]; !ok {
			t.Errorf("the package holds %s too", path)
		}
	}

	fields := map[string]string{
		"Package":      "draupnir",
		"Version":      "1.2.3",
		"Architecture": "amd64",
		"Section":      "database",
		"Priority":     "optional",
		"Depends":      "postgresql, btrfs-progs",
		"Maintainer":   "Draupnir maintainers <draupnir@example.com>",
		"Homepage":     "https://github.com/draupnir-db/draupnir",
	}
	for field, want := range fields {
		if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, field)); got != want {
			t.Errorf("control field %s = %q, want %q", field, got, want)
		}
	}
	// The sizes of the stand-ins and the repository files, at least 1 KiB.
	if size := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Installed-Size")); len(size) < 2 || size[0] == '0' {
		t.Errorf("Installed-Size = %q", size)
	}
	// The synopsis, then the extended description, each line of it kept.
	if desc, want := run(t, "dpkg-deb", "-f", deb, "Description"), strings.ReplaceAll(description, "\n", "\n ")+"\n"; desc != want {
		t.Errorf("Description:\n%s\nwant:\n%s", desc, want)
	}

	// Control files: the example is a conffile, md5sums is right, the
	// postinst is executable, valid sh, and makes the directories without
	// starting the service.
	ctl := t.TempDir()
	run(t, "dpkg-deb", "-e", deb, ctl)
	if b, err := os.ReadFile(filepath.Join(ctl, "conffiles")); err != nil || string(b) != "/etc/draupnir/config.toml.example\n" {
		t.Errorf("conffiles = %q, %v; want the example config alone", b, err)
	}
	sums, err := os.ReadFile(filepath.Join(ctl, "md5sums"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range contents {
		src := c.src
		if !strings.Contains(src, "/") {
			src = filepath.Join(bin, src)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		sum := md5.Sum(b)
		if line := "\n" + hex.EncodeToString(sum[:]) + "  " + c.path[1:] + "\n"; !bytes.Contains(append([]byte("\n"), sums...), []byte(line)) {
			t.Errorf("md5sums lacks %q:\n%s", line, sums)
		}
	}
	script := filepath.Join(ctl, "postinst")
	st, err := os.Stat(script)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("postinst has mode %v", st.Mode())
	}
	if b, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
		t.Errorf("postinst is not valid sh: %v\n%s", err, b)
	}
	b, _ := os.ReadFile(script)
	if !bytes.Equal(b, postinst) {
		t.Error("the package's postinst is not postinst.sh")
	}
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
	if ents, _ := os.ReadDir(ctl); len(ents) != 4 {
		t.Errorf("control files %v, want control, conffiles, md5sums and postinst", ents)
	}
}

// TestUnpack has dpkg unpack the package into a scratch root, as the first
// half of an install: dpkg accepts it, registers the conffile and puts each
// file where it belongs with its bytes and mode. (The postinst runs only on
// configure, which would touch the real /etc and /var/lib.)
func TestUnpack(t *testing.T) {
	deb, bin := testPackage(t)
	root := t.TempDir()
	admin := filepath.Join(root, "var", "lib", "dpkg")
	for _, d := range []string{"info", "updates"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(admin, "status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "dpkg", "--root="+root, "--log="+filepath.Join(root, "dpkg.log"), "--force-not-root", "--unpack", deb)

	status := run(t, "dpkg-query", "--admindir="+admin, "-W", "-f", "${Status}|${Conffiles}", "draupnir")
	if st, conf, _ := strings.Cut(status, "|"); st != "install ok unpacked" || !strings.HasPrefix(strings.TrimSpace(conf), "/etc/draupnir/config.toml.example ") {
		t.Errorf("dpkg-query: %q, want unpacked with the example config as its conffile", status)
	}
	for _, c := range contents {
		src := c.src
		if !strings.Contains(src, "/") {
			src = filepath.Join(bin, src)
		}
		dst := filepath.Join(root, c.path)
		if c.path == "/etc/draupnir/config.toml.example" {
			dst += ".dpkg-new" // a conffile takes its name on configure
		}
		want, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Errorf("unpacked: %v", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s", c.path, c.src)
		}
		if fi, _ := os.Stat(dst); fi.Mode().String() != c.mode {
			t.Errorf("%s unpacked with mode %v, want %s", c.path, fi.Mode(), c.mode)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc", "draupnir")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("/etc/draupnir unpacked as %v, %v; want mode 0750", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc", "draupnir", "config.toml")); err == nil {
		t.Error("the package ships /etc/draupnir/config.toml")
	}
}

func TestBuildRefuses(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"draupnir", "draupnir-client"} {
		if err := os.WriteFile(filepath.Join(bin, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	onlyServer := t.TempDir()
	if err := os.WriteFile(filepath.Join(onlyServer, "draupnir"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, bin, version, arch, wantErr string
	}{
		{"no binaries", t.TempDir(), "1.0.0", "amd64", "make build"},
		{"no client", onlyServer, "1.0.0", "amd64", "draupnir-client"},
		{"version without a digit", bin, "dev", "amd64", "Debian policy"},
		{"empty version", bin, "", "amd64", "Debian policy"},
		{"version adding a control field", bin, "1.0\nDepends: evil", "amd64", "Debian policy"},
		{"version with a space", bin, "1.0 beta", "amd64", "Debian policy"},
		{"architecture adding a control field", bin, "1.0.0", "amd64\nPre-Depends: evil", "architecture"},
		{"architecture with a slash", bin, "1.0.0", "../amd64", "architecture"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			_, err := build(context.Background(), options{Root: "../..", BinDir: tt.bin, OutDir: out, Version: tt.version, Arch: tt.arch})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("build = %v, want an error containing %q", err, tt.wantErr)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("left %v behind", ents)
			}
		})
	}
}
