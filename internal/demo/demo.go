// Package demo gives a newcomer something to make instances of: on a server
// with no images yet, it builds a small pgbench database with the newest
// installed PostgreSQL, streams a base backup of it into a new image
// through the image service, as an upload would, and finalises it with a
// token anonymisation script.
package demo

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/supervisor"
)

// demoScript anonymises the demo data the way a real script would.
const demoScript = `\c demo
UPDATE pgbench_branches SET filler = 'anonymised';
`

// Images is what the demo needs of the image service (*images.Service).
type Images interface {
	draupnir.Uploads
	List(ctx context.Context, p draupnir.Principal) ([]*draupnir.Image, error)
	Create(ctx context.Context, p draupnir.Principal, backedUpAt time.Time, script string) (*draupnir.Image, error)
	Finalise(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error)
}

// Options are what Make works with.
type Options struct {
	Images     Images
	Supervisor *supervisor.Supervisor
	// Dir is where the source database is built, and removed once the
	// image is made: a directory the postgres user can traverse.
	Dir string
	// RunDir holds the source database's socket directory.
	RunDir string
	Log    *slog.Logger
}

// Make builds the demo image when there are no images yet, and does nothing
// otherwise.
func Make(ctx context.Context, opts Options) error {
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	existing, err := opts.Images.List(ctx, upload)
	if err != nil || len(existing) > 0 {
		return err
	}
	log := opts.Log.With("component", "demo")
	sup := opts.Supervisor
	major, err := sup.NewestMajor()
	if err != nil {
		return err
	}
	bin, err := sup.BinDir(major)
	if err != nil {
		return err
	}
	base, err := os.MkdirTemp(opts.Dir, "demo-source-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(base)
	if err := os.Chown(base, sup.UID(), sup.GID()); err != nil {
		return err
	}
	dataDir := filepath.Join(base, "data")
	log.Info("building the demo database (pgbench scale 10)")
	if err := sup.InitDB(ctx, major, dataDir); err != nil {
		return err
	}
	sock := filepath.Join(opts.RunDir, "demo")
	proc, err := sup.Start(ctx, supervisor.Spec{DataDir: dataDir, SocketDir: sock, Port: 5432,
		Settings: map[string]string{"fsync": "off"}, LogFile: filepath.Join(base, "log")})
	if err != nil {
		return err
	}
	defer proc.Stop(context.WithoutCancel(ctx), supervisor.Immediate, 10*time.Second)
	if out, err := sup.PSQL(ctx, bin, sock, 5432, "postgres", "postgres", "CREATE DATABASE demo;"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	asPostgres := func(name string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Dir = base
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(sup.UID()), Gid: uint32(sup.GID())}}
		return cmd
	}
	if out, err := asPostgres("pgbench", "-i", "-s", "10", "-q", "-h", sock, "-p", "5432", "-U", "postgres", "demo").CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, out)
	}
	im, err := opts.Images.Create(ctx, upload, time.Now().UTC(), demoScript)
	if err != nil {
		return err
	}
	backup := asPostgres("pg_basebackup", "-h", sock, "-p", "5432", "-U", "postgres", "-D", "-", "-Ft", "-X", "fetch", "-c", "fast")
	stdout, err := backup.StdoutPipe()
	if err != nil {
		return err
	}
	if err := backup.Start(); err != nil {
		return err
	}
	u, uerr := opts.Images.OpenUpload(ctx, upload, im.ID)
	if uerr == nil {
		_, uerr = u.Extract(ctx, stdout)
		u.Close()
	}
	if err := backup.Wait(); err != nil || uerr != nil {
		return fmt.Errorf("uploading the demo backup: %v %v", err, uerr)
	}
	proc.Stop(ctx, supervisor.Fast, 30*time.Second)
	if _, err := opts.Images.Finalise(ctx, upload, im.ID); err != nil {
		return err
	}
	log.Info("demo image ready", "image", im.ID)
	return nil
}
