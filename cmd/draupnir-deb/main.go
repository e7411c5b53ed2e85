// Command draupnir-deb builds Draupnir's Debian package (make deb) with nfpm
// used as a library: the server and client binaries, the systemd unit, the
// example configuration as a conffile next to where the real one goes, the
// operations guide, and a postinst that makes the directories and prints the
// next steps without starting anything.
package main

import (
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"

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
	path, err := build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "draupnir-deb: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// build writes the package into o.OutDir and returns its path.
func build(o options) (string, error) {
	version := strings.TrimPrefix(o.Version, "v")
	if version == "" || version[0] < '0' || version[0] > '9' {
		return "", fmt.Errorf("version %q must start with a digit (Debian policy)", o.Version)
	}
	for _, bin := range []string{"draupnir", "draupnir-client"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, bin)); err != nil {
			return "", fmt.Errorf("%w (run make build first)", err)
		}
	}
	tmp, err := os.MkdirTemp("", "draupnir-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	script := filepath.Join(tmp, "postinst")
	if err := os.WriteFile(script, postinst, 0o755); err != nil {
		return "", err
	}

	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m}
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          "draupnir",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none", // the version is used as given
		Section:       "database",
		Priority:      "optional",
		Maintainer:    "Draupnir maintainers <draupnir@example.com>",
		Homepage:      "https://github.com/draupnir-db/draupnir",
		Description: "On-demand PostgreSQL databases from anonymised base backups\n" +
			"Draupnir hands developers PostgreSQL instances made in milliseconds as\n" +
			"btrfs snapshots of anonymised base backups, through an HTTP API, an SSH\n" +
			"server and a command-line client (draupnir-client).",
		Overridables: nfpm.Overridables{
			Depends: depends,
			Contents: files.Contents{
				{Source: filepath.Join(o.BinDir, "draupnir"), Destination: "/usr/bin/draupnir", FileInfo: mode(0o755)},
				{Source: filepath.Join(o.BinDir, "draupnir-client"), Destination: "/usr/bin/draupnir-client", FileInfo: mode(0o755)},
				{Source: filepath.Join(o.Root, "dist", "draupnir.service"), Destination: "/lib/systemd/system/draupnir.service", FileInfo: mode(0o644)},
				// A conffile: dpkg keeps local edits on upgrade. The real
				// config.toml is the operator's and never in the package.
				{Source: filepath.Join(o.Root, "draupnir.example.toml"), Destination: "/etc/draupnir/config.toml.example",
					Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				{Destination: "/etc/draupnir", Type: files.TypeDir, FileInfo: mode(0o750)},
				{Source: filepath.Join(o.Root, "docs", "operations.md"), Destination: "/usr/share/doc/draupnir/operations.md", FileInfo: mode(0o644)},
			},
			Scripts: nfpm.Scripts{PostInstall: script},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("preparing the package contents: %w", err)
	}
	pkger, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(o.OutDir, pkger.ConventionalFileName(info))
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	if err := pkger.Package(info, f); err != nil {
		f.Close()
		os.Remove(out)
		return "", fmt.Errorf("writing %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(out)
		return "", errors.Join(fmt.Errorf("writing %s", out), err)
	}
	return out, nil
}
