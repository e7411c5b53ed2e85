// Command draupnir-deb builds Draupnir's Debian package (make deb): it lays
// out the server and client binaries, the systemd unit, the example
// configuration as a conffile next to where the real one goes, the operations
// guide and a postinst that makes the directories and prints the next steps
// without starting anything, then has dpkg-deb, which every Debian system
// has, write the archive with everything owned by root.
package main

import (
	"context"
	"crypto/md5"
	_ "embed"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/draupnir-db/draupnir"
)

//go:embed postinst.sh
var postinst []byte

// options say where the package's parts are and where it goes.
type options struct {
	Root    string // repository root: dist/, docs/, draupnir.example.toml
	BinDir  string // built draupnir and draupnir-client
	OutDir  string // where the .deb is written
	Version string
	Arch    string // Debian architecture, e.g. amd64
}

// depends are what the server runs at run time: postgres (and psql for the
// anonymisation scripts) from postgresql, btrfs and mkfs.btrfs from
// btrfs-progs; mount and losetup come with the essential util-linux/mount.
var depends = []string{"postgresql", "btrfs-progs"}

// description is the control file's Description: a synopsis line, then the
// extended description (each of its lines is indented by one space there).
const description = "On-demand PostgreSQL databases from anonymised base backups\n" +
	"Draupnir hands developers PostgreSQL instances made in milliseconds as\n" +
	"btrfs snapshots of anonymised base backups, through an HTTP API, an SSH\n" +
	"server and a command-line client (draupnir-client)."

// A file is one regular file of the package.
type file struct {
	src, dst string
	mode     fs.FileMode
	conffile bool // dpkg keeps the operator's edits on upgrade
}

// dirModes are the modes of directories that differ from 0755.
var dirModes = map[string]fs.FileMode{
	"/etc/draupnir": 0o750, // the real config.toml, secrets included, goes here
}

// Debian policy: a version starts with a digit and holds only these
// characters; an architecture is lower-case letters, digits and dashes.
// Checked here so that neither can add lines to the control file.
var (
	validVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~:-]*$`)
	validArch    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

func main() {
	var o options
	flag.StringVar(&o.Root, "root", ".", "repository root")
	flag.StringVar(&o.BinDir, "bin", "bin", "directory holding the built draupnir and draupnir-client")
	flag.StringVar(&o.OutDir, "out", "build", "directory the .deb is written into")
	flag.StringVar(&o.Version, "version", draupnir.Version, "package version")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "Debian architecture of the binaries")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: draupnir-deb [-root DIR] [-bin DIR] [-out DIR] [-version V] [-arch A]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	path, err := build(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "draupnir-deb: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// build writes the package into o.OutDir and returns its path.
func build(ctx context.Context, o options) (string, error) {
	version := strings.TrimPrefix(o.Version, "v")
	if !validVersion.MatchString(version) {
		return "", fmt.Errorf("version %q must start with a digit and hold only letters, digits and .+~:- (Debian policy)", o.Version)
	}
	if !validArch.MatchString(o.Arch) {
		return "", fmt.Errorf("architecture %q is not a Debian architecture name", o.Arch)
	}
	for _, bin := range []string{"draupnir", "draupnir-client"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, bin)); err != nil {
			return "", fmt.Errorf("%w (run make build first)", err)
		}
	}
	files := []file{
		{src: filepath.Join(o.BinDir, "draupnir"), dst: "/usr/bin/draupnir", mode: 0o755},
		{src: filepath.Join(o.BinDir, "draupnir-client"), dst: "/usr/bin/draupnir-client", mode: 0o755},
		{src: filepath.Join(o.Root, "dist", "draupnir.service"), dst: "/lib/systemd/system/draupnir.service", mode: 0o644},
		// The real config.toml is the operator's and never in the package.
		{src: filepath.Join(o.Root, "draupnir.example.toml"), dst: "/etc/draupnir/config.toml.example", mode: 0o644, conffile: true},
		{src: filepath.Join(o.Root, "docs", "operations.md"), dst: "/usr/share/doc/draupnir/operations.md", mode: 0o644},
	}

	tmp, err := os.MkdirTemp("", "draupnir-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree") // its mode is the archive's "./"
	if err := mkdir(tree, 0o755); err != nil {
		return "", err
	}
	lay, err := layOut(tree, files)
	if err != nil {
		return "", fmt.Errorf("laying out the package: %w", err)
	}
	control := fmt.Sprintf("Package: draupnir\nVersion: %s\nSection: database\nPriority: optional\n"+
		"Architecture: %s\nMaintainer: Draupnir maintainers <draupnir@example.com>\nInstalled-Size: %d\n"+
		"Depends: %s\nHomepage: https://github.com/draupnir-db/draupnir\nDescription: %s\n",
		version, o.Arch, lay.installedKiB, strings.Join(depends, ", "), strings.ReplaceAll(description, "\n", "\n "))
	meta := []struct {
		name    string
		content []byte
		mode    fs.FileMode
	}{
		{"control", []byte(control), 0o644},
		{"conffiles", []byte(lay.conffiles), 0o644},
		{"md5sums", []byte(lay.md5sums), 0o644},
		{"postinst", postinst, 0o755},
	}
	debian := filepath.Join(tree, "DEBIAN")
	if err := mkdir(debian, 0o755); err != nil {
		return "", err
	}
	for _, m := range meta {
		if err := writeFile(filepath.Join(debian, m.name), m.content, m.mode); err != nil {
			return "", err
		}
	}

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(o.OutDir, fmt.Sprintf("draupnir_%s_%s.deb", version, o.Arch))
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--root-owner-group", "--build", tree, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		return "", fmt.Errorf("dpkg-deb --build %s: %w\n%s", out, err, b)
	}
	return out, nil
}

// layout is what the control files say about the laid-out tree.
type layout struct {
	conffiles    string // one absolute path a line
	md5sums      string // "digest  relative/path" lines, as dpkg expects
	installedKiB int64  // as dpkg-gencontrol counts: KiB per file rounded up, 1 per directory
}

// layOut copies files into tree with their modes set exactly (whatever the
// umask), makes their directories 0755 or as dirModes says, and returns what
// the control files need.
func layOut(tree string, files []file) (layout, error) {
	var l layout
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.dst); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return l, err
		}
	}
	for d := range dirs {
		mode, ok := dirModes[d]
		if !ok {
			mode = 0o755
		}
		if err := os.Chmod(filepath.Join(tree, d), mode); err != nil {
			return l, err
		}
		l.installedKiB++
	}
	for _, f := range files {
		sum, size, err := copyFile(f.src, filepath.Join(tree, f.dst), f.mode)
		if err != nil {
			return l, err
		}
		l.md5sums += sum + "  " + strings.TrimPrefix(f.dst, "/") + "\n"
		l.installedKiB += (size + 1023) / 1024
		if f.conffile {
			l.conffiles += f.dst + "\n"
		}
	}
	return l, nil
}

// copyFile copies src to dst with mode and returns dst's MD5 (which dpkg
// uses to check installed files) and size.
func copyFile(src, dst string, mode fs.FileMode) (sum string, size int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	h := md5.New()
	size, err = io.Copy(io.MultiWriter(out, h), in)
	if err == nil {
		err = out.Chmod(mode)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("copying %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

func mkdir(dir string, mode fs.FileMode) error {
	if err := os.Mkdir(dir, mode); err != nil {
		return err
	}
	return os.Chmod(dir, mode)
}

func writeFile(name string, content []byte, mode fs.FileMode) error {
	if err := os.WriteFile(name, content, mode); err != nil {
		return err
	}
	return os.Chmod(name, mode)
}
