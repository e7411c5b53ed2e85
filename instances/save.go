package instances

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/diskspace"
)

// Save makes a new ready image, owned by p, of the current data of instance
// id, which keeps running: the image service registers and freezes it, from
// a copy this service makes (see copyData).
func (s *Service) Save(ctx context.Context, p draupnir.Principal, id int64) (*draupnir.Image, error) {
	in, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !p.CanSee(in.Owner) || in.Owner == "" {
		return nil, notFound(id)
	}
	if err := s.elsewhere(ctx, in); err != nil {
		return nil, err
	}
	if in.State != draupnir.InstanceRunning {
		return nil, draupnir.Errorf(draupnir.KindConflict, "instance %d is %s; only a running instance can be saved", id, in.State)
	}
	im, err := s.opts.Images.Ready(ctx, in.ImageID)
	if err != nil {
		return nil, err
	}
	if err := diskspace.Ensure(s.opts.Dir); err != nil {
		return nil, err
	}
	return s.opts.Images.SaveImage(ctx, draupnir.ImageSave{
		Owner:          p.Name,
		ParentImageID:  in.ImageID,
		FromInstanceID: id,
		Copy: func(ctx context.Context, dst string) error {
			return s.copyData(ctx, in, im, dst)
		},
	})
}

// copyData writes a crash-consistent copy of the running instance in's data
// directory as the new subvolume dst: a checkpoint first, so that the copy's
// recovery has little WAL to replay, then a btrfs snapshot, atomic, of the
// data directory. A WAL of its own subvolume (with a disk limit) is not in
// that snapshot; its files are copied after it, which is what recovery
// needs: every change in the snapshot's data files had its WAL written
// before them.
func (s *Service) copyData(ctx context.Context, in *draupnir.Instance, im *draupnir.ReadyImage, dst string) error {
	if err := s.checkpoint(ctx, s.sockDir(in.ID), in.Port, im.Superuser, im.Database); err != nil {
		return err
	}
	dir := s.dir(in.ID)
	if err := s.volumes.Snapshot(dir, dst, false); err != nil {
		return fmt.Errorf("snapshotting instance %d: %w", in.ID, err)
	}
	wal := filepath.Join(dir, "pg_wal")
	if ok, _ := s.volumes.IsSubvolume(wal); ok {
		if err := s.copyWAL(ctx, wal, filepath.Join(dst, "pg_wal")); err != nil {
			return fmt.Errorf("copying the WAL of instance %d: %w", in.ID, err)
		}
	}
	return nil
}

// copyWAL copies the WAL subvolume src into the snapshot's dst. There the
// snapshot left the empty placeholder btrfs makes for a nested subvolume,
// which takes no files: it gives way to a directory like src.
func (s *Service) copyWAL(ctx context.Context, src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("no owner for %s", src)
	}
	if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	if err := os.Chown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return s.copyTree(ctx, src, dst)
}

// checkpoint runs CHECKPOINT in the instance on sockDir and port, as its
// superuser.
func checkpoint(ctx context.Context, sockDir string, port int, superuser, db string) error {
	conn, err := superuserConn(ctx, sockDir, port, superuser, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpointing the instance: %w", err)
	}
	return nil
}

// copyTree copies the files of directory src into directory dst, which
// exists, as reflinks where the filesystem has them (btrfs does): the WAL
// shares its blocks with the instance's until either changes.
func copyTree(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(dst); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", "--", src+"/.", dst+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
