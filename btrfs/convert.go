package btrfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ConvertToSubvolume replaces the directory at path with a subvolume that
// holds the same tree: files are reflinked (no data is copied), and modes
// and owners are kept. A subvolume is accounted, and can be limited, apart
// from the one containing it. Only directories and regular files may be in
// the tree; anything else is an error, and path is left as it was.
func ConvertToSubvolume(path string) error {
	if err := convertToSubvolume(path); err != nil {
		return fmt.Errorf("btrfs convert %s to a subvolume: %w", path, err)
	}
	return nil
}

func convertToSubvolume(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("not a directory: %w", unix.ENOTDIR)
	}
	tmp, old := path+".subvolume", path+".directory"
	if err := createSubvolume(tmp); err != nil {
		return err
	}
	if err := copyTree(path, tmp); err != nil {
		return errors.Join(err, Delete(tmp))
	}
	// Two renames, so that a crash leaves the tree under one of the names.
	if err := os.Rename(path, old); err != nil {
		return errors.Join(err, Delete(tmp))
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(err, os.Rename(old, path), Delete(tmp))
	}
	return os.RemoveAll(old)
}

// copyTree copies the directory src into the existing directory dst,
// reflinking files, and gives dst src's mode and owner.
func copyTree(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		switch e.Type() {
		case os.ModeDir:
			if err := os.Mkdir(d, 0o700); err != nil {
				return err
			}
			if err := copyTree(s, d); err != nil {
				return err
			}
		case 0:
			if err := cloneFile(s, d); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s is neither a file nor a directory: %w", s, unix.EINVAL)
		}
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return unix.Chmod(dst, st.Mode&0o7777)
}

// cloneFile makes dst a reflinked copy of the regular file src, with its
// mode and owner.
func cloneFile(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(in.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file: %w", src, unix.EINVAL)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("reflinking %s: %w", src, err)
	}
	if err := unix.Fchown(int(out.Fd()), int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Fchmod(int(out.Fd()), st.Mode&0o7777); err != nil {
		return err
	}
	return out.Close()
}
