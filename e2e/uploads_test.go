package e2e

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// rewriteTar copies the tar archive from into a new file, with prefix put
// before every member name, the members named in drop (prefix included) left
// out, and extra appended; it returns the new file's path.
func rewriteTar(t testing.TB, from, prefix string, drop []string, extra []tarEntry) string {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	path := filepath.Join(testenv.TempDir(t), filepath.Base(from))
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	skip := map[string]bool{}
	for _, d := range drop {
		skip[d] = true
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h.Name = prefix + h.Name
		if skip[h.Name] {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range extra {
		h := &tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		switch {
		case e.symlink:
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestUploadLinks plants links in real base backups — in tarballs, in a WAL
// archive, in a streamed upload and in data directories copied into the
// upload, nested under pgdata/ (which finalise moves up a level) and not —
// aimed at another user's instance, another image, the state database's
// configuration and the host. Every upload is refused with a message that
// says why, and the targets stay as they were.
func TestUploadLinks(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	fetch := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	stream := src.BaseBackup(t, "-X", "stream")
	ctx := context.Background()
	up := s.upload()

	other := s.readyImage(t, anonymise, fetch)
	in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, other.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rel := mustPSQL(t, in, "SELECT pg_relation_filepath('customers')") // base/<db>/<relfilenode>
	count := mustPSQL(t, in, "SELECT count(*) FROM customers")
	inFile := filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10), rel)
	imageFile := filepath.Join(s.layout().Snapshots(), strconv.FormatInt(other.ID, 10), rel)
	stateConf := filepath.Join(s.layout().State(), "postgresql.conf")
	host := filepath.Join(testenv.TempDir(t), "host-secret")
	if err := os.WriteFile(host, []byte("lc_messages = 'host secret'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Where a link one level above the data directory lands after the move.
	beside := filepath.Join(s.layout().Snapshots(), "x")
	targets := map[string]string{}
	for _, p := range []string{inFile, imageFile, stateConf, host} {
		targets[p] = testenv.Run(t, "sha256sum", p)
	}

	// A data directory as `scp -r` or a copy leaves it, with extra links.
	copied := func(t *testing.T, plant func(dir string)) string {
		dir := filepath.Join(testenv.TempDir(t), "pgdata")
		os.Mkdir(dir, 0o700)
		testenv.Run(t, "tar", "-xf", fetch, "-C", dir)
		plant(dir)
		return dir
	}
	up3 := "../../../" // from base/<db>/ in work or an instance to their parent
	cases := []struct {
		name   string
		files  func(t *testing.T) []string
		reason string
	}{
		{"nested relation link into another user's instance", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "pgdata/", []string{"pgdata/" + rel},
				[]tarEntry{{name: "pgdata/" + rel, link: up3 + strconv.FormatInt(in.ID, 10) + "/" + rel, symlink: true}})}
		}, "symbolic links are not allowed"},
		{"nested relation link into another image", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "pgdata/", []string{"pgdata/" + rel},
				[]tarEntry{{name: "pgdata/" + rel, link: up3 + strconv.FormatInt(other.ID, 10) + "/" + rel, symlink: true}})}
		}, "symbolic links are not allowed"},
		{"nested pg_ident.conf escaping after the move", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "pgdata/", []string{"pgdata/pg_ident.conf"},
				[]tarEntry{{name: "pgdata/pg_ident.conf", link: "../x", symlink: true}})}
		}, "symbolic links are not allowed"},
		{"absolute pg_hba.conf", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "", []string{"pg_hba.conf"}, []tarEntry{{name: "pg_hba.conf", link: host, symlink: true}})}
		}, "symbolic links are not allowed"},
		{"postgresql.auto.conf link inside the tree", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "", []string{"postgresql.auto.conf"},
				[]tarEntry{{name: "postgresql.auto.conf", link: "global/pg_control", symlink: true}})}
		}, "symbolic links are not allowed"},
		{"link in pg_wal.tar", func(t *testing.T) []string {
			return []string{filepath.Join(stream, "base.tar"), rewriteTar(t, filepath.Join(stream, "pg_wal.tar"), "", nil,
				[]tarEntry{{name: "archive_status/000000010000000000000099.ready", link: "../../global/pg_control", symlink: true}})}
		}, "symbolic links are not allowed"},
		{"nested hard link onto pg_control", func(t *testing.T) []string {
			return []string{rewriteTar(t, fetch, "pgdata/", []string{"pgdata/pg_hba.conf"},
				[]tarEntry{{name: "pgdata/pg_hba.conf", link: "pgdata/global/pg_control"}})}
		}, "hard links are not allowed"},
		{"copied data directory: postgresql.conf into the state database", func(t *testing.T) []string {
			return []string{copied(t, func(dir string) {
				os.Remove(filepath.Join(dir, "postgresql.conf"))
				os.Symlink("../../state/postgresql.conf", filepath.Join(dir, "postgresql.conf"))
			})}
		}, `symbolic link, "postgresql.conf" -> "../../state/postgresql.conf"`},
		{"copied data directory: relation link into another user's instance", func(t *testing.T) []string {
			return []string{copied(t, func(dir string) {
				os.Remove(filepath.Join(dir, rel))
				os.Symlink(up3+strconv.FormatInt(in.ID, 10)+"/"+rel, filepath.Join(dir, rel))
			})}
		}, "a link could reach files outside the image"},
		{"copied data directory: hard link", func(t *testing.T) []string {
			return []string{copied(t, func(dir string) {
				os.Remove(filepath.Join(dir, "pg_ident.conf"))
				os.Link(filepath.Join(dir, "global", "pg_control"), filepath.Join(dir, "pg_ident.conf"))
			})}
		}, "hard link"},
	}
	check := func(t *testing.T) {
		t.Helper()
		for p, sum := range targets {
			if got := testenv.Run(t, "sha256sum", p); got != sum {
				t.Errorf("%s changed", p)
			}
		}
		for _, p := range []string{beside, filepath.Join(s.dataPath, "x")} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s was created", p)
			}
		}
		if got := mustPSQL(t, in, "SELECT count(*) FROM customers"); got != count {
			t.Errorf("the other user's instance has %s customers, had %s", got, count)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), "")
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range c.files(t) {
				testenv.Run(t, "cp", "-a", f, s.uploadDir(im.ID)+"/")
			}
			_, err = up.Images().Finalise(ctx, draupnir.Principal{}, im.ID)
			if !errors.Is(err, draupnir.ErrUnprocessable) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("done: %v; want 422 saying %q", err, c.reason)
			}
			if got, _ := up.Images().Get(ctx, draupnir.Principal{}, im.ID); got.State != draupnir.ImageFailed || !strings.Contains(got.Error, c.reason) {
				t.Errorf("image after done: %s %q", got.State, got.Error)
			}
			check(t)
		})
	}
	t.Run("streamed", func(t *testing.T) {
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), "")
		if err != nil {
			t.Fatal(err)
		}
		tarball := rewriteTar(t, fetch, "pgdata/", []string{"pgdata/" + rel},
			[]tarEntry{{name: "pgdata/" + rel, link: up3 + strconv.FormatInt(in.ID, 10) + "/" + rel, symlink: true}})
		f, err := os.Open(tarball)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(im.ID, 10))
		cmd.Stdin = f
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "symbolic links are not allowed") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("streaming a tarball with a link: %v, %q; want one line saying why and a non-zero exit", err, out)
		}
		if ents, _ := os.ReadDir(s.uploadDir(im.ID)); len(ents) != 0 {
			t.Errorf("a refused streaming upload left %d entries", len(ents))
		}
		check(t)
	})
}

// readableBy returns the paths under roots (directories and regular files)
// that OS user who can open for reading: a file's contents, a directory's
// listing.
func readableBy(t testing.TB, who string, roots ...string) []string {
	t.Helper()
	var paths []string
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err == nil && (d.IsDir() || d.Type().IsRegular()) {
				paths = append(paths, p)
			}
			return nil
		})
	}
	cmd := exec.Command("runuser", "-u", who, "--", "sh", "-c",
		`while IFS= read -r p; do if true 2>/dev/null <"$p"; then printf '%s\n' "$p"; fi; done`)
	cmd.Stdin = strings.NewReader(strings.Join(paths, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reading as %s: %v", who, err)
	}
	return strings.Fields(string(out))
}

// checkPrivate fails unless dir and everything in it belong to root and are
// closed to others: 0700 directories, 0600 files.
func checkPrivate(t testing.TB, dir string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n++
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm() != want || !(d.IsDir() || d.Type().IsRegular()) {
			t.Errorf("%s: %v owned by uid %d, want mode %#o owned by root", p, fi.Mode(), st.Uid, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Errorf("%s holds nothing", dir)
	}
}

// TestUploadsPrivate: uploads through every door are private to root, stay
// so while kept, survive a failed finalise so that done can be retried, and
// are gone once the image is ready (unless images.keep_uploads); no local
// user can read an upload, an image, an instance or the server's keys.
func TestUploadsPrivate(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	gz := src.BaseBackup(t, "-z", "-X", "stream")
	fetch := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	// A copy readable by everyone, as a client's file may be: its mode must
	// not carry over.
	open := filepath.Join(testenv.TempDir(t), "base.tar")
	testenv.Run(t, "cp", fetch, open)
	os.Chmod(open, 0o644)
	ctx := context.Background()
	up := s.upload()
	run := func(t *testing.T, cmd *exec.Cmd) {
		t.Helper()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
	}
	target := func(id int64) string {
		return "upload@127.0.0.1:/draupnir/image_uploads/" + strconv.FormatInt(id, 10) + "/"
	}
	newImage := func(t *testing.T, script string) int64 {
		im, err := up.Images().Create(ctx, draupnir.Principal{}, time.Now(), script)
		if err != nil {
			t.Fatal(err)
		}
		return im.ID
	}
	doors := []struct {
		name   string
		script string
		upload func(t *testing.T, id int64)
	}{
		{"scp", "\\c shop\nDELETE FROM no_such_table;", func(t *testing.T, id int64) {
			run(t, s.ssh(t, keys, keys.upload, "scp", filepath.Join(gz, "base.tar.gz"), filepath.Join(gz, "pg_wal.tar.gz"), target(id)))
		}},
		{"scp -O -p", anonymise, func(t *testing.T, id int64) {
			run(t, s.ssh(t, keys, keys.upload, "scp", "-O", "-p", open, target(id)))
		}},
		{"sftp", anonymise, func(t *testing.T, id int64) {
			batch := filepath.Join(testenv.TempDir(t), "batch")
			os.WriteFile(batch, []byte("cd /draupnir/image_uploads/"+strconv.FormatInt(id, 10)+
				"\nput -p "+open+"\nmkdir notes\nchmod 755 notes\nchmod 644 base.tar\n"), 0o600)
			run(t, s.ssh(t, keys, keys.upload, "sftp", "-b", batch, "upload@127.0.0.1"))
		}},
		{"streaming", anonymise, func(t *testing.T, id int64) {
			cmd := s.ssh(t, keys, keys.upload, "ssh", "upload@127.0.0.1", "images", "upload", strconv.FormatInt(id, 10))
			f, err := os.Open(open)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd.Stdin = f
			run(t, cmd)
		}},
	}
	ids := make([]int64, len(doors))
	for i, d := range doors {
		t.Run("upload by "+d.name, func(t *testing.T) {
			ids[i] = newImage(t, d.script)
			d.upload(t, ids[i])
			checkPrivate(t, s.uploadDir(ids[i]))
			if got := readableBy(t, "nobody", s.uploadDir(ids[i])); len(got) != 0 {
				t.Errorf("readable by nobody: %v", got)
			}
		})
	}
	t.Run("a failed finalise keeps the upload", func(t *testing.T) {
		if _, err := up.Images().Finalise(ctx, draupnir.Principal{}, ids[0]); !errors.Is(err, draupnir.ErrUnprocessable) {
			t.Fatalf("done with a failing script: %v", err)
		}
		checkPrivate(t, s.uploadDir(ids[0]))
		script := anonymise
		if _, err := up.Images().Update(ctx, draupnir.Principal{}, ids[0], draupnir.ImagePatch{AnonymisationScript: &script}); err != nil {
			t.Fatal(err)
		}
	})
	for i, d := range doors {
		t.Run("done after "+d.name+" deletes the upload", func(t *testing.T) {
			im, err := up.Images().Finalise(ctx, draupnir.Principal{}, ids[i])
			if err != nil || !im.Ready() {
				t.Fatalf("done: %v\n%s", err, s.logs())
			}
			if _, err := os.Lstat(s.uploadDir(ids[i])); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the upload of a ready image is still there: %v", err)
			}
		})
	}

	// Kept for debugging: still private, and deleted by the next start
	// without the option.
	s.stop(syscall.SIGTERM)
	plain, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(s.config, append(plain, "\n[images]\nkeep_uploads = true\n"...), 0o600)
	s.start()
	kept := newImage(t, anonymise)
	run(t, s.ssh(t, keys, keys.upload, "scp", open, target(kept)))
	if im, err := up.Images().Finalise(ctx, draupnir.Principal{}, kept); err != nil || !im.Ready() {
		t.Fatalf("done: %v", err)
	}
	checkPrivate(t, s.uploadDir(kept))

	t.Run("nothing is readable by other local users", func(t *testing.T) {
		in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, kept, draupnir.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The sweep can see a readable file when there is one. The access
		// rules every instance shares are public on purpose: postgres reads
		// them, and they hold no secret.
		control := filepath.Join(testenv.TempDir(t), "public")
		os.WriteFile(control, []byte("x"), 0o644)
		// The rules' file is named after a hash of its contents.
		hba, _ := filepath.Glob(filepath.Join(s.runPath, "instance_pg_hba*.conf"))
		if len(hba) != 1 {
			t.Fatalf("instance access rules: %v, want one file", hba)
		}
		want := []string{hba[0], control}
		got := readableBy(t, "nobody", s.dataPath, s.runPath, control)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("readable by nobody (only %v should be):\n%s", want, strings.Join(got, "\n"))
		}
		if !strings.Contains(strings.Join(readableBy(t, "postgres", s.dataPath), "\n"), filepath.Join(s.layout().Instances(), strconv.FormatInt(in.ID, 10))) {
			t.Error("the sweep as postgres cannot read the instance's files; it proves nothing")
		}
		// Whatever runs as postgres (an instance's server, a script's \!)
		// cannot reach the raw backups.
		if got := readableBy(t, "postgres", s.layout().Uploads()); len(got) != 0 {
			t.Errorf("readable by postgres: %v", got)
		}
	})

	// An upload as an older version left it, world-readable.
	old := newImage(t, anonymise)
	run(t, s.ssh(t, keys, keys.upload, "scp", open, target(old)))
	os.Chmod(s.uploadDir(old), 0o755)
	os.Chmod(filepath.Join(s.uploadDir(old), "base.tar"), 0o644)

	s.stop(syscall.SIGTERM)
	os.WriteFile(s.config, plain, 0o600)
	s.start()
	if _, err := os.Lstat(s.uploadDir(kept)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a kept upload survived a start without images.keep_uploads: %v", err)
	}
	if got := readableBy(t, "nobody", s.uploadDir(old)); len(got) != 0 {
		t.Errorf("an older upload is still readable by nobody after a start: %v", got)
	}
	if im, err := up.Images().Get(ctx, draupnir.Principal{}, kept); err != nil || !im.Ready() {
		t.Errorf("image %d after the start: %v %+v", kept, err, im)
	}
}
