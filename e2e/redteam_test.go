package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestSharedRunPath starts a second server on its own data path but with the
// run_path of a running one (both left at the default, say). They would share
// socket directories, the instance TLS files and the state cluster's socket,
// so the second must refuse at once, name run_path, and leave the first alone.
func TestSharedRunPath(t *testing.T) {
	s := startServer(t, "")
	conf, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	other := testenv.Btrfs(t, 1<<30)
	second := strings.NewReplacer(
		"data_path = \""+s.dataPath+"\"", "data_path = \""+other+"\"",
		"insecure_port = "+strconv.Itoa(s.httpPort), "insecure_port = "+strconv.Itoa(freePort(t)),
	).Replace(string(conf))
	if second == string(conf) {
		t.Fatal("could not rewrite the config")
	}
	path := testenv.TempDir(t) + "/second.toml"
	if err := os.WriteFile(path, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.server, "--config", path, "serve").CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("a second server on run_path %s started (err %v):\n%s", s.runPath, err, out)
	}
	if !strings.Contains(string(out), "run_path") {
		t.Errorf("the refusal does not name run_path:\n%s", out)
	}
	if _, err := s.upload().Images().List(ctx, draupnir.Principal{}); err != nil {
		t.Errorf("the first server suffered: %v", err)
	}
}

// TestDestroyImageWhileCreating destroys an image while users keep creating
// instances of it. Whatever wins, the result must be consistent: either the
// image is gone with all its instances, or it is still there, ready and
// usable; no request fails with a server error.
func TestDestroyImageWhileCreating(t *testing.T) {
	s := startServer(t, "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs())
		}
	})
	b := newSource(t).BaseBackup(t, "-X", "fetch")
	ctx := context.Background()
	for round := 0; round < 3; round++ {
		im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var created []*draupnir.Instance
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
					switch {
					case err == nil:
						mu.Lock()
						created = append(created, in)
						mu.Unlock()
					case draupnir.KindOf(err) == draupnir.KindInternal:
						t.Errorf("create during destroy: %v", err)
						return
					}
				}
			}()
		}
		time.Sleep(100 * time.Millisecond)
		derr := s.upload().Images().Destroy(ctx, draupnir.Principal{}, im.ID)
		close(stop)
		wg.Wait()
		if derr != nil && draupnir.KindOf(derr) == draupnir.KindInternal {
			t.Errorf("round %d: destroy: %v", round, derr)
		}
		_, gerr := s.upload().Images().Get(ctx, draupnir.Principal{}, im.ID)
		switch {
		case errors.Is(gerr, draupnir.ErrNotFound):
			for _, in := range created {
				// Gone (410, its tombstone) or not found: either way destroyed.
				if _, err := s.user().Instances().Get(ctx, draupnir.Principal{}, in.ID); !errors.Is(err, draupnir.ErrGone) && !errors.Is(err, draupnir.ErrNotFound) {
					t.Errorf("round %d: instance %d of destroyed image %d survives (%v)", round, in.ID, im.ID, err)
				}
			}
		case gerr == nil:
			in, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			if err != nil {
				t.Fatalf("round %d: image %d survived its destroy (%v) but cannot be used: %v", round, im.ID, derr, err)
			}
			mustPSQL(t, in, "SELECT 1")
			if err := s.upload().Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
				t.Fatalf("round %d: destroying image %d again: %v", round, im.ID, err)
			}
		default:
			t.Fatal(gerr)
		}
	}
}

// TestDestroyInstanceWhileCreating destroys an instance that its owner sees
// in the list while its create is still running: the destroy may be refused
// (409), but the create must not fail half-way with a server error.
func TestDestroyInstanceWhileCreating(t *testing.T) {
	s := startServer(t, "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs())
		}
	})
	b := newSource(t).BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	ctx := context.Background()
	caught := 0
	for round := 0; round < 10 && caught < 3; round++ {
		created := make(chan error, 1)
		go func() {
			_, err := s.user().Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
			created <- err
		}()
		var derr error
		var destroyed bool
	poll:
		for {
			select {
			case err := <-created:
				created <- err
				break poll
			default:
			}
			list, err := s.user().Instances().List(ctx, draupnir.Principal{})
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range list {
				if in.State == draupnir.InstanceCreating {
					derr = s.user().Instances().Destroy(ctx, draupnir.Principal{}, in.ID)
					destroyed = true
					caught++
					break poll
				}
			}
		}
		if err := <-created; err != nil && draupnir.KindOf(err) == draupnir.KindInternal {
			t.Errorf("round %d: create whose instance was destroyed meanwhile: %v", round, err)
		}
		if destroyed && derr != nil && draupnir.KindOf(derr) == draupnir.KindInternal {
			t.Errorf("round %d: destroy of a creating instance: %v", round, derr)
		}
	}
	if caught == 0 {
		t.Skip("never saw an instance while it was created")
	}
}
