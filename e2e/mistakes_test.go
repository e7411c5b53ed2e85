package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestUploadMistakes makes the upload mistakes a new user makes, with real
// backups and real OpenSSH clients: none of them costs the image. A done
// with no usable upload is refused and leaves the image as it was; a
// finalise that failed because of the upload is fixed by uploading again,
// by scp, sftp or a stream, and done again.
func TestUploadMistakes(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	stream := src.BaseBackup(t, "-z", "-X", "stream") // base.tar.gz and pg_wal.tar.gz
	base, wal := filepath.Join(stream, "base.tar.gz"), filepath.Join(stream, "pg_wal.tar.gz")
	fetch := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	ctx := context.Background()
	up := s.upload()

	run := func(t *testing.T, cmd *exec.Cmd) string {
		t.Helper()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
		return string(out)
	}
	dest := func(id int64) string {
		return "upload@127.0.0.1:/draupnir/image_uploads/" + strconv.FormatInt(id, 10) + "/"
	}
	sftp := func(t *testing.T, id int64, batch string) string {
		t.Helper()
		f := filepath.Join(t.TempDir(), "batch")
		os.WriteFile(f, []byte("cd /draupnir/image_uploads/"+strconv.FormatInt(id, 10)+"\n"+batch), 0o600)
		return run(t, s.ssh(t, keys, keys.upload, "sftp", "-b", f, "upload@127.0.0.1"))
	}
	create := func(t *testing.T) int64 {
		t.Helper()
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		return im.ID
	}
	state := func(t *testing.T, id int64, want draupnir.ImageState, wantErr string) {
		t.Helper()
		im, err := up.Images().Get(ctx, draupnir.Principal{}, id)
		if err != nil {
			t.Fatal(err)
		}
		if im.State != want || !strings.Contains(im.Error, wantErr) || (wantErr == "" && im.Error != "") {
			t.Fatalf("image %d is %s (error %q), want %s with %q", id, im.State, im.Error, want, wantErr)
		}
	}
	// refused checks that done is refused with reason, through the API
	// and over SSH, and leaves the image in state.
	refused := func(t *testing.T, id int64, st draupnir.ImageState, reason string) {
		t.Helper()
		_, err := up.Images().Finalise(ctx, draupnir.Principal{}, id)
		if draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), "cannot be finalised yet, and is left as it was") || !strings.Contains(err.Error(), reason) {
			t.Fatalf("done: %v; want a refusal saying %q", err, reason)
		}
		out, err := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "done", strconv.FormatInt(id, 10)).CombinedOutput()
		if err == nil || !strings.Contains(string(out), reason) || strings.Count(string(out), "\n") != 1 {
			t.Fatalf("ssh images done: %v\n%s", err, out)
		}
		state(t, id, st, "")
	}
	done := func(t *testing.T, id int64) {
		t.Helper()
		im, err := up.Images().Finalise(ctx, draupnir.Principal{}, id)
		if err != nil || !im.Ready() {
			t.Fatalf("done: %v %+v\n%s", err, im, s.logs())
		}
	}
	// failed finalises image id, which must fail saying reason.
	failed := func(t *testing.T, id int64, reason string) {
		t.Helper()
		if _, err := up.Images().Finalise(ctx, draupnir.Principal{}, id); draupnir.KindOf(err) != draupnir.KindUnprocessable || !strings.Contains(err.Error(), reason) {
			t.Fatalf("done: %v; want it to fail saying %q", err, reason)
		}
		state(t, id, draupnir.ImageFailed, reason)
	}

	t.Run("done with nothing uploaded", func(t *testing.T) {
		id := create(t)
		refused(t, id, draupnir.ImageCreated, "nothing has been uploaded into it")
		// Looking does not count as uploading.
		sftp(t, id, "ls\n")
		refused(t, id, draupnir.ImageCreated, "nothing has been uploaded into it")
		run(t, s.ssh(t, keys, keys.upload, "scp", base, wal, dest(id)))
		done(t, id)
	})
	t.Run("only the WAL, then the base beside it", func(t *testing.T) {
		id := create(t)
		run(t, s.ssh(t, keys, keys.upload, "scp", wal, dest(id)))
		refused(t, id, draupnir.ImageUploading, "the upload holds only pg_wal.tar.gz")
		run(t, s.ssh(t, keys, keys.upload, "scp", base, dest(id)))
		done(t, id)
	})
	t.Run("scp -r of the backup's directory", func(t *testing.T) {
		id := create(t)
		dir := filepath.Join(testenv.TempDir(t), "backup")
		testenv.Run(t, "cp", "-r", stream, dir)
		run(t, s.ssh(t, keys, keys.upload, "scp", "-r", dir, dest(id)))
		refused(t, id, draupnir.ImageUploading, "the upload holds a directory, backup/, with no PG_VERSION")
		sftp(t, id, "rm backup/*\nrmdir backup\n")
		run(t, s.ssh(t, keys, keys.upload, "scp", base, wal, dest(id)))
		done(t, id)
	})
	t.Run("a file that is no backup", func(t *testing.T) {
		id := create(t)
		notes := filepath.Join(t.TempDir(), "notes.txt")
		os.WriteFile(notes, []byte("not a backup"), 0o600)
		run(t, s.ssh(t, keys, keys.upload, "scp", notes, dest(id)))
		refused(t, id, draupnir.ImageUploading, "no archive (.tar, .tar.gz…) other than the WAL and no PG_VERSION")
	})

	// Finalise fails on the upload: the image takes a new upload.
	t.Run("an unsafe archive, fixed over sftp", func(t *testing.T) {
		id := create(t)
		hostile := rewriteTar(t, fetch, "", nil, []tarEntry{{name: "pg_tblspc/16400", link: "/srv/ts", symlink: true}})
		run(t, s.ssh(t, keys, keys.upload, "scp", hostile, dest(id)))
		failed(t, id, "tablespaces")
		// A failed image can be looked at without changing it.
		if out := sftp(t, id, "ls -l\n"); !strings.Contains(out, "base.tar") {
			t.Errorf("sftp ls of the failed upload: %s", out)
		}
		state(t, id, draupnir.ImageFailed, "tablespaces")
		// Its first change makes it uploading again, the error gone.
		sftp(t, id, "rename base.tar hostile.tar\n")
		state(t, id, draupnir.ImageUploading, "")
		sftp(t, id, "rm hostile.tar\nput "+fetch+"\n")
		done(t, id)
	})
	t.Run("no PG_VERSION, replaced by scp", func(t *testing.T) {
		id := create(t)
		empty := rewriteTar(t, fetch, "", []string{"PG_VERSION"}, nil)
		run(t, s.ssh(t, keys, keys.upload, "scp", empty, dest(id)))
		failed(t, id, "no PG_VERSION")
		run(t, s.ssh(t, keys, keys.upload, "scp", fetch, dest(id))) // the same name: replaced
		state(t, id, draupnir.ImageUploading, "")
		done(t, id)
	})
	t.Run("a truncated archive, replaced by a stream", func(t *testing.T) {
		id := create(t)
		b, err := os.ReadFile(base)
		if err != nil {
			t.Fatal(err)
		}
		cut := filepath.Join(t.TempDir(), "base.tar.gz")
		os.WriteFile(cut, b[:len(b)/2], 0o600)
		run(t, s.ssh(t, keys, keys.upload, "scp", cut, wal, dest(id)))
		failed(t, id, "truncated archive")
		cmd := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(id, 10))
		f, err := os.Open(fetch)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
		run(t, cmd)
		state(t, id, draupnir.ImageUploading, "")
		done(t, id)
	})
}
