package nodes

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

func newRegistry(pool *pgxpool.Pool, name, key string, c draupnir.NodeCapacity) *Registry {
	return New(Options{
		Pool: pool,
		Self: draupnir.Node{Name: name, AdvertiseHost: name + ".example.com", APIURL: "http://" + name + ":8080",
			SSHAddress: name + ":2222", SSHPublicKey: key, CACertificate: "CA of " + name},
		Interval: time.Second,
		Capacity: func(context.Context) (draupnir.NodeCapacity, error) { return c, nil },
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

func TestRegistry(t *testing.T) {
	pool := testenv.StatePool(t)
	ctx := context.Background()
	capA := draupnir.NodeCapacity{FreeDiskBytes: 10 << 30, FreeMemoryBytes: 4 << 30, Instances: 3, FreePorts: 97}
	a := newRegistry(pool, "a", "ssh-ed25519 AAAA-a", capA)
	b := newRegistry(pool, "b", "ssh-ed25519 AAAA-b", draupnir.NodeCapacity{})
	for _, r := range []*Registry{a, b} {
		if err := r.Register(ctx); err != nil {
			t.Fatal(err)
		}
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
		t.Fatalf("List = %+v, want a and b", list)
	}
	got := list[0]
	if got.NodeCapacity != capA || got.Down || got.Drained || got.SSHPublicKey != "ssh-ed25519 AAAA-a" ||
		got.AdvertiseHost != "a.example.com" || got.CACertificate != "CA of a" || got.APIURL != "http://a:8080" || got.SSHAddress != "a:2222" {
		t.Errorf("node a = %+v", got)
	}

	t.Run("drain and undrain", func(t *testing.T) {
		n, err := b.Drain(ctx, "a")
		if err != nil || !n.Drained {
			t.Fatalf("Drain = %+v, %v", n, err)
		}
		// A restart keeps it drained: draining outlives the process.
		if err := a.Register(ctx); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.Get(ctx, "a"); !n.Drained {
			t.Error("a restart undrained the node")
		}
		if n, err := b.Undrain(ctx, "a"); err != nil || n.Drained {
			t.Fatalf("Undrain = %+v, %v", n, err)
		}
		for _, f := range []func(context.Context, string) (*draupnir.Node, error){b.Drain, b.Undrain, b.Get} {
			if _, err := f(ctx, "nope"); draupnir.KindOf(err) != draupnir.KindNotFound {
				t.Errorf("unknown node: %v, want not found", err)
			}
		}
	})

	t.Run("silent node is down, a beat brings it back", func(t *testing.T) {
		// Age the heartbeat in the database rather than wait.
		if _, err := pool.Exec(ctx, `UPDATE nodes SET heartbeat_at = now() - interval '2.9 seconds' WHERE name = 'a'`); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.Get(ctx, "a"); n.Down {
			t.Error("down before three intervals")
		}
		if _, err := pool.Exec(ctx, `UPDATE nodes SET heartbeat_at = now() - interval '3.1 seconds' WHERE name = 'a'`); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.Get(ctx, "a"); !n.Down {
			t.Error("not down after three intervals")
		}
		if err := a.Beat(ctx); err != nil {
			t.Fatal(err)
		}
		if n, _ := b.Get(ctx, "a"); n.Down {
			t.Error("still down after a beat")
		}
	})

	t.Run("a live node's name is not taken by another key", func(t *testing.T) {
		impostor := newRegistry(pool, "a", "ssh-ed25519 AAAA-impostor", draupnir.NodeCapacity{})
		err := impostor.Register(ctx)
		if err == nil || !strings.Contains(err.Error(), "taken") {
			t.Fatalf("Register of a live name with another key = %v", err)
		}
		if n, _ := b.Get(ctx, "a"); n.SSHPublicKey != "ssh-ed25519 AAAA-a" {
			t.Errorf("the impostor replaced the key: %q", n.SSHPublicKey)
		}
		// Once the node is down, a replacement machine may take the name.
		if _, err := pool.Exec(ctx, `UPDATE nodes SET heartbeat_at = now() - interval '1 minute' WHERE name = 'a'`); err != nil {
			t.Fatal(err)
		}
		if err := impostor.Register(ctx); err != nil {
			t.Fatalf("Register of a down node's name: %v", err)
		}
		if err := a.Register(ctx); err == nil {
			t.Error("the old machine took its name back from the live replacement")
		}
	})

	t.Run("a removed row comes back with the next beat", func(t *testing.T) {
		if _, err := pool.Exec(ctx, `DELETE FROM nodes WHERE name = 'b'`); err != nil {
			t.Fatal(err)
		}
		if err := b.Beat(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, "b"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the heartbeat loop beats", func(t *testing.T) {
		if _, err := pool.Exec(ctx, `UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE name = 'b'`); err != nil {
			t.Fatal(err)
		}
		b.Start()
		defer b.Close()
		for range 500 {
			if n, _ := b.Get(ctx, "b"); !n.Down {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("the loop never beat")
	})

	t.Run("doors: only the upload principal", func(t *testing.T) {
		s := Service{Registry: b}
		user := draupnir.Principal{Name: "alice@example.com"}
		if _, err := s.List(ctx, user); draupnir.KindOf(err) != draupnir.KindForbidden {
			t.Errorf("List as a user: %v", err)
		}
		if _, err := s.Drain(ctx, user, "b"); draupnir.KindOf(err) != draupnir.KindForbidden {
			t.Errorf("Drain as a user: %v", err)
		}
		if _, err := s.Undrain(ctx, user, "b"); draupnir.KindOf(err) != draupnir.KindForbidden {
			t.Errorf("Undrain as a user: %v", err)
		}
		if n, _ := b.Get(ctx, "b"); n.Drained {
			t.Error("a user drained a node")
		}
		up := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
		if list, err := s.List(ctx, up); err != nil || len(list) != 2 {
			t.Errorf("List as upload = %v, %v", list, err)
		}
	})
}

// TestStateDatabaseDown: membership calls fail as unavailable (503), and
// the heartbeat loop survives.
func TestStateDatabaseDown(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "host=/nonexistent port=5432 user=postgres dbname=postgres connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	r := newRegistry(pool, "a", "k", draupnir.NodeCapacity{})
	ctx := context.Background()
	if err := r.Register(ctx); draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Errorf("Register = %v, want unavailable", err)
	}
	if _, err := r.List(ctx); draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Errorf("List = %v, want unavailable", err)
	}
	if _, err := r.Drain(ctx, "a"); draupnir.KindOf(err) != draupnir.KindUnavailable {
		t.Errorf("Drain = %v, want unavailable", err)
	}
}

func TestSingle(t *testing.T) {
	ctx := context.Background()
	up := draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}
	if list, err := (Single{}).List(ctx, up); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v", list, err)
	}
	if _, err := (Single{}).Drain(ctx, up, "a"); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("Drain = %v", err)
	}
	if _, err := (Single{}).List(ctx, draupnir.Principal{Name: "u"}); draupnir.KindOf(err) != draupnir.KindForbidden {
		t.Errorf("List as a user = %v", err)
	}
}

func TestMemAvailable(t *testing.T) {
	tests := []struct {
		name, in string
		want     int64
		ok       bool
	}{
		{"normal", "MemTotal:       16318412 kB\nMemFree:  1 kB\nMemAvailable:    8000000 kB\n", 8000000 << 10, true},
		{"missing", "MemTotal:       16318412 kB\n", 0, false},
		{"odd unit", "MemAvailable:    8000000 MB\n", 0, false},
		{"garbage", "MemAvailable:    lots kB\n", 0, false},
	}
	for _, tt := range tests {
		got, err := memAvailable([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("%s: memAvailable = %d, %v", tt.name, got, err)
		}
	}
}

func TestHostPublicKey(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "host")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := HostPublicKey(p)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(got))
	if err != nil {
		t.Fatalf("not an authorized_keys line: %q: %v", got, err)
	}
	signer, _ := gossh.NewSignerFromKey(priv)
	if !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) || strings.Contains(got, "\n") {
		t.Errorf("HostPublicKey = %q, not the key's public half", got)
	}
	if _, err := HostPublicKey(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing key gave no error")
	}
}

// TestCandidates: only nodes that hold the image ready and are neither
// drained nor down are candidates; instances are counted live, owned ones
// only, and free ports lessened by the instances made since the beat.
func TestCandidates(t *testing.T) {
	pool := testenv.StatePool(t)
	ctx := context.Background()
	capacity := draupnir.NodeCapacity{FreeDiskBytes: 1 << 30, FreeMemoryBytes: 1 << 30, Instances: 1, FreePorts: 10}
	regs := map[string]*Registry{}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		regs[name] = newRegistry(pool, name, "key-"+name, capacity)
		if err := regs[name].Register(ctx); err != nil {
			t.Fatal(err)
		}
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO images (id, state, backed_up_at, anonymisation_script, database_name, node)
		VALUES (1, 'ready', now(), '', 'app', 'a'), (2, 'uploading', now(), '', 'app', 'a')`)
	exec(`INSERT INTO image_copies (image_id, node, state) VALUES
		(1, 'b', 'ready'), (1, 'c', 'copying'), (1, 'd', 'ready'), (1, 'e', 'ready'), (1, 'f', 'failed')`)
	exec(`UPDATE nodes SET drained = true WHERE name = 'd'`)
	exec(`UPDATE nodes SET heartbeat_at = now() - interval '1 minute' WHERE name = 'e'`)
	// On a: two owned and one warm; on b: one owned.
	exec(`INSERT INTO instances (image_id, owner, port, username, password, node, state) VALUES
		(1, 'alice', 6000, 'u', 'p', 'a', 'running'), (1, 'bob', 6001, 'u', 'p', 'a', 'running'),
		(1, '', 6002, 'u', 'p', 'a', 'warm'), (1, 'carol', 6000, 'u', 'p', 'b', 'running')`)
	got, err := regs["f"].Candidates(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []Candidate{
		{Name: "a", Instances: 2, FreePorts: 8, FreeMemoryBytes: 1 << 30, FreeDiskBytes: 1 << 30},
		{Name: "b", Instances: 1, FreePorts: 10, FreeMemoryBytes: 1 << 30, FreeDiskBytes: 1 << 30},
	}
	slices.SortFunc(got, func(x, y Candidate) int { return strings.Compare(x.Name, y.Name) })
	if !slices.Equal(got, want) {
		t.Errorf("Candidates = %+v\nwant %+v", got, want)
	}
	if r := Rank(got); r[0].Name != "b" {
		t.Errorf("Rank picks %s, want b (fewer owned instances)", r[0].Name)
	}
	for id, want := range map[int64]bool{1: true, 2: false, 3: false} {
		if ready, err := regs["a"].ImageReady(ctx, id); err != nil || ready != want {
			t.Errorf("ImageReady(%d) = %v, %v", id, ready, err)
		}
	}
	if got, _ := regs["a"].Candidates(ctx, 2); len(got) != 0 {
		t.Errorf("candidates for an image not ready: %+v", got)
	}
}
