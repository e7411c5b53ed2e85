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
type dirUploads struct {
	ImageService // nil: the upload tests call nothing else
	base         string
}

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
			r := run(t, CoreBackend(dirUploads{base: base}, nil, tt.p), env, tt.stdin, "images", "upload", tt.image)
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
