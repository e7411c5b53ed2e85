package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images"
)

// dirUploads opens uploads in base/<id> with the images service's own
// rules; image 3 is ready.
type dirUploads struct{ base string }

func (d dirUploads) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	if !p.Upload {
		return nil, draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may upload into images")
	}
	if id == 3 {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image 3 is ready; uploads are closed")
	}
	dir := filepath.Join(d.base, strconv.FormatInt(id, 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return images.OpenDir(dir)
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// TestSSHStreamUpload is `images upload N` in an SSH session: the command
// tree streams stdin into the image's upload and says what arrived; a
// refusal is one line.
func TestSSHStreamUpload(t *testing.T) {
	base := t.TempDir()
	backup := tarOf(t, map[string]string{"PG_VERSION": "15\n", "global/pg_control": "x", "base/1/1": strings.Repeat("y", 5000)})
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	env := Env{SSH: true, Name: "draupnir"}
	tests := []struct {
		name   string
		p      draupnir.Principal
		stdin  string
		image  string
		code   int
		stdout string // regexp
		stderr string
	}{
		{"a backup", upload, string(backup), "1", 0, `^Uploaded ` + sizeStr(int64(len(backup))) + ` \(3 files\) into image 1 in [0-9.]+m?s\. Next: images done 1\n$`, ""},
		{"a user", draupnir.Principal{Name: "alice@example.com"}, string(backup), "2", 1, "", "draupnir: only the upload principal may upload into images\n"},
		{"a ready image", upload, string(backup), "3", 1, "", "draupnir: image 3 is ready; uploads are closed\n"},
		{"not a tar", upload, "15\n", "2", 1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, Backend{Uploads: dirUploads{base: base}, Principal: tt.p}, env, tt.stdin, "images", "upload", tt.image)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.code, r.stderr)
			}
			if tt.stdout != "" && !regexp.MustCompile(tt.stdout).MatchString(r.stdout) {
				t.Errorf("stdout %q does not match %q", r.stdout, tt.stdout)
			}
			if tt.stderr != "" && r.stderr != tt.stderr {
				t.Errorf("stderr %q, want %q", r.stderr, tt.stderr)
			}
			if tt.code != 0 && (!strings.HasPrefix(r.stderr, "draupnir: ") || strings.Count(r.stderr, "\n") != 1) {
				t.Errorf("stderr is not one line starting with \"draupnir: \": %q", r.stderr)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(base, "1", "base", "1", "1")); err != nil || len(b) != 5000 {
		t.Errorf("the backup was not extracted: %d bytes, %v", len(b), err)
	}
	if ents, _ := os.ReadDir(filepath.Join(base, "2")); len(ents) != 0 {
		t.Errorf("a refused upload left %d entries", len(ents))
	}
}

func TestSizeStr(t *testing.T) {
	for n, want := range map[int64]string{0: "-", 1023: "1023 B", 1024: "1.0 KiB", 129394278: "123.4 MiB", 5 << 30: "5.0 GiB", 3 << 40: "3.0 TiB"} {
		if got := sizeStr(n); got != want {
			t.Errorf("sizeStr(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestSSHUploadByName is `images upload N --name FILE` in an SSH session:
// every upload says whether it added or replaced, and what is beside it.
func TestSSHUploadByName(t *testing.T) {
	base := t.TempDir()
	upload := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	b := Backend{Uploads: dirUploads{base: base}, Principal: upload}
	env := Env{SSH: true, Name: "draupnir"}
	tests := []struct {
		args   []string
		code   int
		stdout string // regexp
		stderr string
	}{
		{[]string{"--name", "base.tar.gz"}, 0, `^Uploaded base\.tar\.gz \(4 B\) into image 1 in [0-9.]+m?s\. Next: images done 1\n$`, ""},
		{[]string{"--name", "pg_wal.tar.gz"}, 0, `^Uploaded pg_wal\.tar\.gz \(4 B\) into image 1 in [0-9.]+m?s, added; beside it: base\.tar\.gz\. Next`, ""},
		{[]string{"--name", "base.tar.gz"}, 0, `^Uploaded base\.tar\.gz \(4 B\) into image 1 in [0-9.]+m?s, replacing the earlier base\.tar\.gz; beside it: pg_wal\.tar\.gz\. Next`, ""},
		{[]string{"--name", "backup.tar", "--replace"}, 0, `^Uploaded backup\.tar \(4 B\) into image 1 in [0-9.]+m?s, replacing the earlier upload \(base\.tar\.gz, pg_wal\.tar\.gz\)\. Next`, ""},
		{[]string{"--name", "notes.txt"}, 1, "", `draupnir: "notes.txt" is not the name of a tar archive`},
		{[]string{"--replace"}, 2, "", "--replace goes with --name"},
	}
	for _, tt := range tests {
		r := run(t, b, env, "data", append([]string{"images", "upload", "1"}, tt.args...)...)
		if r.code != tt.code || (tt.stdout != "" && !regexp.MustCompile(tt.stdout).MatchString(r.stdout)) || !strings.Contains(r.stderr, tt.stderr) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", tt.args, r.code, r.stdout, r.stderr)
		}
	}
	// --json says the same.
	r := run(t, b, env, "data", "images", "upload", "1", "--name", "pg_wal.tar", "--json")
	for _, want := range []string{`"name": "pg_wal.tar"`, `"replaced": []`, `"backup.tar",`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("--json lacks %s: %s", want, r.stdout)
		}
	}
}

// TestUploadFiles runs `images upload N FILE…` with a stand-in ssh: one
// ssh per file, named, --replace with the first only; every file is
// checked before any is sent, and a failure says which were not sent.
func TestUploadFiles(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	fakeSSH := filepath.Join(dir, "ssh")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\ncat > /dev/null\ncase \"$*\" in *fail.tar*) exit 1;; esac\n"
	if err := os.WriteFile(fakeSSH, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(name string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		os.WriteFile(p, []byte("x"), 0o600)
		return p
	}
	base, wal, fail, odd := file("base.tar.gz"), file("pg_wal.tar.gz"), file("fail.tar"), file("it's.tar")
	other := file("other/base.tar.gz")
	env := Env{SSHCommand: fakeSSH, Host: "db.example.com"}
	tests := []struct {
		name   string
		args   []string
		code   int
		ran    string
		stderr string
	}{
		{"both files of a backup", []string{base, wal}, 0,
			"-T -p 2222 upload@db.example.com images upload 3 --name base.tar.gz\n-T -p 2222 upload@db.example.com images upload 3 --name pg_wal.tar.gz\n", ""},
		{"--replace goes with the first", []string{"--replace", base, wal}, 0,
			"-T -p 2222 upload@db.example.com images upload 3 --name base.tar.gz --replace\n-T -p 2222 upload@db.example.com images upload 3 --name pg_wal.tar.gz\n", ""},
		{"a name the server splits as one word", []string{odd}, 0, `-T -p 2222 upload@db.example.com images upload 3 --name 'it'\''s.tar'` + "\n", ""},
		{"a failure stops the rest", []string{fail, base, wal}, 1,
			"-T -p 2222 upload@db.example.com images upload 3 --name fail.tar\n", "not uploaded: " + base + ", " + wal},
		{"two files of one name", []string{base, other}, 1, "", "have the same name"},
		{"a missing file", []string{base, filepath.Join(dir, "missing.tar")}, 1, "", "missing.tar"},
		{"a directory", []string{base, dir}, 1, "", "is a directory"},
		{"no file", nil, 2, "", "takes 2 arguments or more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(log)
			r := run(t, newFakeBackend().backend(), env, "", append([]string{"images", "upload", "3"}, tt.args...)...)
			ran, _ := os.ReadFile(log)
			if r.code != tt.code || string(ran) != tt.ran || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("exit %d, ran %q, stderr %q; want %d, %q, %q", r.code, ran, r.stderr, tt.code, tt.ran, tt.stderr)
			}
		})
	}
}
