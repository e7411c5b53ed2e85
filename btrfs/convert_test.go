package btrfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

func TestConvertToSubvolume(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	if _, err := EnableQuota(mnt, QuotaFull); err != nil {
		t.Fatal(err)
	}
	inst := filepath.Join(mnt, "inst")
	files := map[string][]byte{
		"pg_wal/000000010000000000000001": randomBytes(t, 1<<20),
		"pg_wal/archive_status/x.done":    nil,
		"pg_wal/000000010000000000000002": randomBytes(t, 64<<10),
		"base/1/1259":                     randomBytes(t, 8<<10),
	}
	newSubvolume(t, inst, files)
	wal := filepath.Join(inst, "pg_wal")
	os.Chmod(filepath.Join(wal, "000000010000000000000002"), 0o640)
	os.Chown(filepath.Join(wal, "000000010000000000000002"), 70, 71)
	os.Chmod(wal, 0o700)
	os.Chown(wal, 70, 71)

	if err := ConvertToSubvolume(wal); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsSubvolume(wal); err != nil || !ok {
		t.Fatalf("IsSubvolume(pg_wal) = %v, %v after converting", ok, err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(inst, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after converting: %d bytes, %v; want the %d bytes it held", name, len(got), err, len(want))
		}
	}
	for _, tt := range []struct {
		name     string
		mode     uint32
		uid, gid uint32
	}{
		{"pg_wal", unix.S_IFDIR | 0o700, 70, 71},
		{"pg_wal/000000010000000000000002", unix.S_IFREG | 0o640, 70, 71},
		{"pg_wal/000000010000000000000001", unix.S_IFREG | 0o644, 0, 0},
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(inst, tt.name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != tt.mode || st.Uid != tt.uid || st.Gid != tt.gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", tt.name, st.Mode, st.Uid, st.Gid, tt.mode, tt.uid, tt.gid)
		}
	}
	ents, _ := os.ReadDir(inst)
	if len(ents) != 2 {
		t.Errorf("the parent holds %v, want only base and pg_wal", ents)
	}
	// What is written into the new subvolume does not count against the
	// parent's limit.
	if err := LimitExclusive(inst, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := writeBytes(t, filepath.Join(wal, "big"), 16<<20); err != nil {
		t.Fatalf("writing into the converted directory: %v", err)
	}
	if err := writeBytes(t, filepath.Join(inst, "base", "big"), 16<<20); !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("writing into the parent past its limit: %v, want EDQUOT", err)
	}
	// Deleting the parent takes the nested subvolume with it, once the
	// parent may write again (taking the nested one out changes it).
	if err := LimitExclusive(inst, 0); err != nil {
		t.Fatal(err)
	}
	if err := Delete(inst); err != nil {
		t.Fatal(err)
	}
}

func TestConvertToSubvolumeRefuses(t *testing.T) {
	mnt := testenv.Btrfs(t, 1<<30)
	inst := filepath.Join(mnt, "inst")
	newSubvolume(t, inst, map[string][]byte{"linked/f": []byte("x"), "plain": []byte("y")})
	if err := os.Symlink("/etc", filepath.Join(inst, "linked", "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("linked", filepath.Join(inst, "alias")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(inst, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want error
	}{
		{"linked", unix.EINVAL}, // holds a symbolic link
		{"alias", unix.ENOTDIR}, // is one
		{"plain", unix.ENOTDIR},
		{"fifo", unix.ENOTDIR},
		{"missing", unix.ENOENT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ConvertToSubvolume(filepath.Join(inst, tt.name)); !errors.Is(err, tt.want) {
				t.Fatalf("ConvertToSubvolume(%s) = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
	// Nothing changed, nothing left behind.
	ents, _ := os.ReadDir(inst)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 4 {
		t.Errorf("the tree holds %v after the refusals", names)
	}
	if target, err := os.Readlink(filepath.Join(inst, "linked", "escape")); err != nil || target != "/etc" {
		t.Errorf("the link is %q, %v", target, err)
	}
	if ok, _ := IsSubvolume(filepath.Join(inst, "linked")); ok {
		t.Error("a refused directory became a subvolume")
	}
}
