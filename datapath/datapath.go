// Package datapath knows the layout of a server's data path (image uploads,
// image snapshots, instances, the standbys of followed sources, the embedded
// state cluster, keys) and of the
// run path beside it, the permissions each part needs so that the postgres
// user can reach what it must and nothing else, and the locks that keep a
// second server off a data path or run path that one already uses. Every
// other package is handed the directories it works in; none of them names a
// part of the data path itself.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/draupnir-db/draupnir/btrfs"
)

// Layout names the parts of a data path (on btrfs, kept across restarts)
// and of its run path (short paths for unix sockets and other files that
// need not survive a reboot).
type Layout struct {
	Data string // data_path
	Run  string // run_path
}

// Uploads holds each image's raw upload, in a directory named by its id.
func (l Layout) Uploads() string { return filepath.Join(l.Data, "image_uploads") }

// Snapshots holds each image's finalised, read-only btrfs snapshot.
func (l Layout) Snapshots() string { return filepath.Join(l.Data, "image_snapshots") }

// Receive is where images shipped from other nodes of a cluster land until
// they are checked: private to root (replicate makes it).
func (l Layout) Receive() string { return filepath.Join(l.Data, "image_receive") }

// Instances holds each instance's writable snapshot of its image.
func (l Layout) Instances() string { return filepath.Join(l.Data, "instances") }

// State is the data directory of the embedded state cluster.
func (l Layout) State() string { return filepath.Join(l.Data, "state") }

// Standbys holds one subvolume per followed source, each the data directory
// of a streaming replica of that source (package standby). Their data is the
// source's raw, unanonymised data: nothing in here is ever served.
func (l Layout) Standbys() string { return filepath.Join(l.Data, "standbys") }

// Keys holds the server's private keys: the instance CA and the SSH host key.
func (l Layout) Keys() string { return filepath.Join(l.Data, "keys") }

// StateSockets is the socket directory of the embedded state cluster.
func (l Layout) StateSockets() string { return filepath.Join(l.Run, "state") }

// StandbySockets holds each standby's private socket directory.
func (l Layout) StandbySockets() string { return filepath.Join(l.Run, "standbys") }

// lockName is the file flocked in both the data path and the run path.
const lockName = "draupnir.lock"

// Lock is a data path and run path held by this server; Release lets them go.
type Lock struct {
	data, run *os.File
}

// Acquire makes l usable by one server: it checks that the data path is on
// btrfs, takes the data path's lock, creates the parts that are missing with
// their permissions, and takes the run path's lock. A second server on the
// same data path would fight the first over its instances and, on its way
// out, stop the state cluster they share; one on another data path but the
// same run path would share socket directories, the instances' TLS files
// and the state cluster's socket. Both are refused with an error that names
// the path at fault. The locks go with the process, however it ends.
func Acquire(l Layout) (*Lock, error) {
	ok, err := btrfs.IsBtrfs(l.Data)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("data_path %s: %w", l.Data, err)
	}
	if !ok {
		return nil, fmt.Errorf("data_path %s is not on a btrfs filesystem; run `draupnir setup --data-path %s` to loop-mount one there", l.Data, l.Data)
	}
	data, held, err := flock(l.Data)
	if err != nil {
		return nil, fmt.Errorf("data_path: %w", err)
	}
	if held {
		return nil, fmt.Errorf("another draupnir is already serving data_path %s", l.Data)
	}
	if err := l.makeParts(); err != nil {
		data.Close()
		return nil, err
	}
	run, held, err := flock(l.Run)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("run_path: %w", err)
	}
	if held {
		data.Close()
		return nil, fmt.Errorf("another draupnir is already using run_path %s; give each server its own run_path", l.Run)
	}
	return &Lock{data: data, run: run}, nil
}

// makeParts creates the data path's parts and the run path, and sets the
// modes that let the postgres user through without letting it, or any
// other local user, list what is inside.
func (l Layout) makeParts() error {
	for _, d := range []string{l.Uploads(), l.Snapshots(), l.Instances(), l.Standbys()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// The postgres user must reach the snapshots inside.
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(l.Keys(), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(l.Run, 0o755); err != nil {
		return fmt.Errorf("run_path: %w", err)
	}
	// Each standby's socket directory inside is the postgres user's and
	// 0700; this parent only lets it through.
	if err := os.MkdirAll(l.StandbySockets(), 0o711); err != nil {
		return fmt.Errorf("run_path: %w", err)
	}
	if err := os.Chmod(l.StandbySockets(), 0o711); err != nil {
		return fmt.Errorf("run_path: %w", err)
	}
	// The postgres user must reach the data path and the run path; keep
	// both traversable but not listable by others.
	for _, d := range []string{l.Data, l.Run} {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	return nil
}

// flock opens dir's lock file and takes it without waiting; held reports
// that it could not, which (it cannot wait) means another holds it.
func flock(dir string) (f *os.File, held bool, err error) {
	f, err = os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, true, nil
	}
	return f, false, nil
}

// Release lets the run path and the data path go, in that order.
func (k *Lock) Release() {
	k.run.Close()
	k.data.Close()
}
