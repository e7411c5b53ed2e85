package btrfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The primary btrfs superblock sits at 64 KiB; its magic at offset 0x40.
const (
	superblockOffset = 64 << 10
	superMagicOffset = 0x40
	superMagic       = "_BHRfS_M"

	// probeBytes is how much of an existing image must be zero for SetupLoop
	// to format it: it covers the superblocks of every common filesystem.
	probeBytes = 1 << 20
)

// SetupLoop makes dir usable as a Draupnir data path on a machine where it is
// not on btrfs: it creates (if missing) a sparse file image of size bytes,
// formats it with mkfs.btrfs unless it already holds a btrfs filesystem, and
// mounts it with -o loop at dir, creating dir. If dir is already on btrfs it
// does nothing. It never formats an image that holds any data and never
// mounts over a non-empty directory. The returned hint tells the operator how
// to make the mount permanent.
func SetupLoop(ctx context.Context, dir, image string, size int64) (hint string, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("setup btrfs at %s: %w", dir, err)
	}
	image, err = filepath.Abs(image)
	if err != nil {
		return "", fmt.Errorf("setup btrfs image %s: %w", image, err)
	}
	if rel, err := filepath.Rel(dir, image); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		// The mount would hide the image, and the next SetupLoop would find
		// dir not empty.
		return "", fmt.Errorf("setup btrfs at %s: the image %s must not be inside the directory it is mounted on", dir, image)
	}
	hint = fstabHint(dir, image)

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("setup btrfs at %s: %w", dir, err)
	}
	if ok, err := IsBtrfs(dir); err != nil {
		return "", fmt.Errorf("setup btrfs at %s: %w", dir, err)
	} else if ok {
		if src, ok := loopBackingFile(dir); ok && src == image {
			return hint, nil
		}
		return dir + " is already on btrfs; nothing to do", nil
	}
	if empty, err := isEmptyDir(dir); err != nil {
		return "", fmt.Errorf("setup btrfs at %s: %w", dir, err)
	} else if !empty {
		return "", fmt.Errorf("setup btrfs at %s: directory is not empty; mounting over it would hide its contents", dir)
	}

	if err := prepareImage(ctx, image, size); err != nil {
		return "", fmt.Errorf("setup btrfs image %s: %w", image, err)
	}
	if out, err := exec.CommandContext(ctx, "mount", "-t", "btrfs", "-o", "loop", image, dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mount %s at %s: %w: %s", image, dir, err, strings.TrimSpace(string(out)))
	}
	if ok, err := IsBtrfs(dir); err != nil || !ok {
		return "", fmt.Errorf("mount %s at %s: the directory is not btrfs after mounting (%v)", image, dir, err)
	}
	return hint, nil
}

// prepareImage creates and formats image unless it already holds btrfs.
func prepareImage(ctx context.Context, image string, size int64) error {
	f, err := os.OpenFile(image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	created := err == nil
	switch {
	case created:
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(image)
			return fmt.Errorf("create sparse file of %d bytes: %w", size, err)
		}
	case errors.Is(err, fs.ErrExist):
		kind, err := probeImage(image)
		if err != nil {
			return err
		}
		switch kind {
		case imageBtrfs:
			return nil
		case imageData:
			return errors.New("the file exists and holds data that is not btrfs; refusing to format it")
		}
		// imageZero: a file left by an earlier attempt that never got formatted.
	default:
		return fmt.Errorf("create: %w", err)
	}
	// No -f: mkfs.btrfs itself refuses to overwrite a filesystem it recognises.
	if out, err := exec.CommandContext(ctx, "mkfs.btrfs", "-q", image).CombinedOutput(); err != nil {
		if created {
			os.Remove(image) // so that a retry with a better size starts afresh
		}
		return fmt.Errorf("mkfs.btrfs: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

type imageKind int

const (
	imageZero  imageKind = iota // no data in the probed range
	imageBtrfs                  // btrfs superblock present
	imageData                   // something else
)

func probeImage(image string) (imageKind, error) {
	f, err := os.Open(image)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	buf := make([]byte, probeBytes)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read: %w", err)
	}
	buf = buf[:n]
	if m := superblockOffset + superMagicOffset; len(buf) >= m+len(superMagic) && string(buf[m:m+len(superMagic)]) == superMagic {
		return imageBtrfs, nil
	}
	if bytes.IndexFunc(buf, func(r rune) bool { return r != 0 }) >= 0 {
		return imageData, nil
	}
	return imageZero, nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// loopBackingFile returns the file behind the loop device mounted at dir, if
// dir is a mount point of one.
func loopBackingFile(dir string) (string, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	var source string
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 10 || unescapeMount(f[4]) != dir {
			continue
		}
		for i := 5; i < len(f)-2; i++ {
			if f[i] == "-" {
				source = unescapeMount(f[i+2]) // the last match is the visible mount
				break
			}
		}
	}
	dev, ok := strings.CutPrefix(source, "/dev/")
	if !ok || !strings.HasPrefix(dev, "loop") {
		return "", false
	}
	b, err = os.ReadFile(filepath.Join("/sys/block", dev, "loop", "backing_file"))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// unescapeMount undoes the octal escapes (\040 for a space…) of mountinfo
// and fstab fields.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// escapeMount escapes the characters that would split an fstab field.
func escapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\', '#':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func fstabHint(dir, image string) string {
	return fmt.Sprintf("%s is a loop-mounted btrfs file; to mount it at boot, add this line to /etc/fstab:\n%s %s btrfs loop,nofail 0 0",
		dir, escapeMount(image), escapeMount(dir))
}

// Unmount unmounts dir. The loop device of a SetupLoop mount is freed with it
// (mount -o loop sets autoclear). A filesystem that is briefly busy is retried
// until ctx is done or a few seconds have passed.
func Unmount(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	wait := 10 * time.Millisecond
	for {
		err := unix.Unmount(dir, 0)
		if err == nil {
			return nil
		}
		if err != unix.EBUSY && err != unix.EINTR {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmount %s: %w (%w)", dir, err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// ParseSize parses a size such as "20G", "512M", "1T" or "1048576". Units are
// binary (K = 1024) and may be written K, KB or KiB, in any case.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	if num == "" {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit K, M, G, T or P", s)
	}
	shift, ok := unitShift(strings.ToUpper(unit))
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (want K, M, G, T or P)", s, unit)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n << shift, nil
}

// unitShift maps "", "B", "K", "KB", "KIB", "M", … to a power of two.
func unitShift(unit string) (uint, bool) {
	if unit == "" || unit == "B" {
		return 0, true
	}
	i := strings.IndexByte("KMGTP", unit[0])
	if i < 0 {
		return 0, false
	}
	switch unit[1:] {
	case "", "B", "IB":
		return uint(i+1) * 10, true
	}
	return 0, false
}
