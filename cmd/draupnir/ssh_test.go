package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/config"
	"github.com/draupnir-db/draupnir/mock"
)

// uploadsAs is an image service whose uploads record who opened them and
// refuse.
type uploadsAs struct {
	*mock.Images
	mu *sync.Mutex
	as *[]draupnir.Principal
}

func (u uploadsAs) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	*u.as = append(*u.as, p)
	return nil, draupnir.Errorf(draupnir.KindConflict, "image %d takes no uploads", id)
}

// TestSSHCommandsActAsKey checks the wiring of the SSH door's command tree:
// every service call, uploads included, acts as the principal of the
// session's key, and a session without one is refused before any call.
func TestSSHCommandsActAsKey(t *testing.T) {
	lines := [][]string{
		{"images", "list"}, {"images", "show", "1"}, {"images", "done", "2"}, {"instances", "list"},
		{"instances", "show", "1"}, {"new"}, {"instances", "destroy", "1"}, {"images", "upload", "2"},
	}
	for _, p := range []draupnir.Principal{
		{Name: "alice@example.com"},
		{Name: draupnir.UploadPrincipal, Upload: true},
		{}, // sshd never runs a command for no key; the wiring must not either
	} {
		imgs := mock.NewImages()
		insts := mock.NewInstances(imgs)
		var uploaders []draupnir.Principal
		c := &core{doorImages: uploadsAs{Images: imgs, mu: new(sync.Mutex), as: &uploaders}, doorInstances: insts}
		run := sshCommands(&config.Config{}, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
		for _, args := range lines {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), p, args, strings.NewReader(""), &stdout, &stderr)
			if p.Name == "" && (code != 1 || stderr.String() != "draupnir: internal error; the server log has the details\n") {
				t.Errorf("no principal, %v: exit %d, stderr %q", args, code, stderr.String())
			}
		}
		got := append(append(imgs.Principals(), insts.Principals()...), uploaders...)
		if p.Name == "" {
			if len(got) != 0 {
				t.Errorf("no principal: the services were called %d times", len(got))
			}
			continue
		}
		if len(imgs.Calls()) < 4 || len(insts.Calls()) < 3 || len(uploaders) != 1 {
			t.Errorf("%s: calls: images %v, instances %v, uploads %d", p.Name, imgs.Calls(), insts.Calls(), len(uploaders))
		}
		for _, as := range got {
			if as != p {
				t.Errorf("%s: a call acted as %+v", p.Name, as)
			}
		}
	}
}
