package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images"
)

// TestFailedFinaliseRedacted: scripts whose error quotes production values
// fail the image; through every door, users read only that it failed, and
// the upload principal reads the error with the value.
func TestFailedFinaliseRedacted(t *testing.T) {
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	backup := filepath.Join(src.BaseBackup(t, "-X", "fetch"), "base.tar")
	ctx := context.Background()
	up := s.upload()
	tests := []struct {
		name, script, secret string
	}{
		// A cast that fails quotes the value it could not cast.
		{"cast", "\\c shop\nSELECT token::int FROM secret_tokens;", "s3cr3t-production-token"},
		// A script (or a source trigger) can raise anything.
		{"raise", "\\c shop\nDO $$ BEGIN RAISE EXCEPTION 'bad row: %', (SELECT email FROM customers WHERE id = 7); END $$;", "person7@real.example"},
		// A unique violation shows the duplicated key in DETAIL.
		{"detail", "\\c shop\nCREATE UNIQUE INDEX ON customers (split_part(email, '@', 2));", "(real.example)"},
	}
	var ids []int64
	for _, tt := range tests {
		im, err := up.CreateImage(ctx, time.Now(), tt.script)
		if err != nil {
			t.Fatal(err)
		}
		s.copyInto(t, im.ID, backup)
		if _, err := up.FinaliseImage(ctx, im.ID); !errors.Is(err, draupnir.ErrUnprocessable) {
			t.Fatalf("%s: done: %v; want the script to fail", tt.name, err)
		}
		ids = append(ids, im.ID)
	}
	// The SSH host key, accepted once.
	if out, err := s.ssh(t, keys, keys.user, "ssh", "user@127.0.0.1", "version").CombinedOutput(); err != nil {
		t.Fatalf("ssh version: %v\n%s", err, out)
	}
	for i, tt := range tests {
		id := strconv.FormatInt(ids[i], 10)
		t.Run(tt.name, func(t *testing.T) {
			// The upload principal reads the whole error, through every door.
			got, err := up.GetImage(ctx, ids[i])
			if err != nil || got.State != draupnir.ImageFailed || !strings.Contains(got.Error, tt.secret) {
				t.Fatalf("upload's GET /images/%s: %v %+v; want the error with %q", id, err, got, tt.secret)
			}
			for _, out := range []string{
				httpGet(t, s, sharedSecret, "/images/"+id),
				sshOut(t, s, keys, keys.upload, "images", "show", id),
			} {
				if !strings.Contains(out, tt.secret) {
					t.Errorf("the upload principal does not see the error:\n%s", out)
				}
			}

			// Users see that it failed, never the value.
			got, err = s.user().GetImage(ctx, ids[i])
			if err != nil || got.State != draupnir.ImageFailed || got.Error != images.FailedForOthers {
				t.Errorf("user's image: %v %+v; want failed with %q", err, got, images.FailedForOthers)
			}
			list, err := s.user().ListImages(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range list {
				if im.State == draupnir.ImageFailed && im.Error != images.FailedForOthers {
					t.Errorf("user's list: image %d has error %q", im.ID, im.Error)
				}
			}
			for door, out := range map[string]string{
				"GET /images/" + id:        httpGet(t, s, "the-integration-access-token", "/images/"+id),
				"GET /images":              httpGet(t, s, "the-integration-access-token", "/images"),
				"client images show " + id: clientOut(t, s, "images", "show", id),
				"client images list":       clientOut(t, s, "images", "list"),
				"ssh images show " + id:    sshOut(t, s, keys, keys.user, "images", "show", id),
				"ssh images list":          sshOut(t, s, keys, keys.user, "images", "list"),
				"ssh images show --json":   sshOut(t, s, keys, keys.user, "images", "show", id, "--json"),
			} {
				for _, secret := range []string{tt.secret, "s3cr3t", "real.example"} {
					if strings.Contains(out, secret) {
						t.Errorf("%s as a user shows %q:\n%s", door, secret, out)
					}
				}
				if strings.Contains(door, id) && !strings.Contains(out, "failed") {
					t.Errorf("%s as a user does not say that it failed:\n%s", door, out)
				}
			}
		})
	}
}

// httpGet returns the body of GET path with token.
func httpGet(t *testing.T, s *server, token, path string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.url+path, nil)
	req.Header.Set("Draupnir-Version", draupnir.Version)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", path, resp.StatusCode, err, b)
	}
	return string(b)
}

// clientOut runs draupnir-client as the integration-test user.
func clientOut(t *testing.T, s *server, args ...string) string {
	t.Helper()
	cmd := exec.Command(bins.client, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DRAUPNIR_URL="+s.url, "DRAUPNIR_TOKEN=the-integration-access-token")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("draupnir-client %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sshOut runs a command over the SSH door with key.
func sshOut(t *testing.T, s *server, keys *sshKeys, key string, args ...string) string {
	t.Helper()
	out, err := s.ssh(t, keys, key, "ssh", append([]string{"x@127.0.0.1"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
