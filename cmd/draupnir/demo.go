package main

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

// makeDemoImage gives a newcomer something to make instances of: when there
// are no images yet, it builds a small pgbench database, streams a base
// backup of it into a new image and finalises that.
func makeDemoImage(ctx context.Context, c *core, log *slog.Logger) error {
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	existing, err := c.images.List(ctx, upload)
	if err != nil || len(existing) > 0 {
		return err
	}
	log = log.With("component", "demo")
	major, err := c.sup.NewestMajor()
	if err != nil {
		return err
	}
	bin, err := c.sup.BinDir(major)
	if err != nil {
		return err
	}
	base, err := os.MkdirTemp(c.cfg.DataPath, "demo-source-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(base)
	if err := os.Chown(base, c.sup.UID(), c.sup.GID()); err != nil {
		return err
	}
	dataDir := filepath.Join(base, "data")
	log.Info("building the demo database (pgbench scale 10)")
	if err := c.sup.InitDB(ctx, major, dataDir); err != nil {
		return err
	}
	sock := filepath.Join(c.cfg.RunPath, "demo")
	proc, err := c.sup.Start(ctx, supervisor.Spec{DataDir: dataDir, SocketDir: sock, Port: 5432,
		Settings: map[string]string{"fsync": "off"}, LogFile: filepath.Join(base, "log")})
	if err != nil {
		return err
	}
	defer proc.Stop(context.WithoutCancel(ctx), supervisor.Immediate, 10*time.Second)
	if out, err := c.sup.PSQL(ctx, bin, sock, 5432, "postgres", "postgres", "CREATE DATABASE demo;"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	asPostgres := func(name string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Dir = base
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(c.sup.UID()), Gid: uint32(c.sup.GID())}}
		return cmd
	}
	if out, err := asPostgres("pgbench", "-i", "-s", "10", "-q", "-h", sock, "-p", "5432", "-U", "postgres", "demo").CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, out)
	}
	im, err := c.images.Create(ctx, upload, time.Now().UTC(), demoScript)
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
	u, uerr := c.images.OpenUpload(ctx, upload, im.ID)
	if uerr == nil {
		_, uerr = u.Extract(ctx, stdout)
		u.Close()
	}
	if err := backup.Wait(); err != nil || uerr != nil {
		return fmt.Errorf("uploading the demo backup: %v %v", err, uerr)
	}
	proc.Stop(ctx, supervisor.Fast, 30*time.Second)
	if _, err := c.images.Finalise(ctx, upload, im.ID); err != nil {
		return err
	}
	log.Info("demo image ready", "image", im.ID)
	return nil
}
