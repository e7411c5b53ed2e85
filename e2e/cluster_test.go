package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/nodes"
	"github.com/draupnir-db/draupnir/wire"
)

// clusterNode is one draupnir serve of a test cluster.
type clusterNode struct {
	*server
	name, host string
	keys       *sshKeys
}

// startCluster starts n nodes sharing one state PostgreSQL (started here),
// each on its own loop-mounted btrfs, ports and run path, node i
// advertising 127.0.0.i to users.
func startCluster(t *testing.T, n int) ([]*clusterNode, *testenv.Source) {
	t.Helper()
	build(t)
	state := testenv.SourceCluster(t, "CREATE DATABASE draupnir")
	dbURL := fmt.Sprintf("host=%s port=5432 user=postgres dbname=draupnir", state.SocketDir)
	secret := randomHex(24)
	var out []*clusterNode
	for i := 1; i <= n; i++ {
		c := &clusterNode{name: fmt.Sprintf("node%d", i), host: fmt.Sprintf("127.0.0.%d", i), keys: &sshKeys{}}
		// Dotted keys: the [instances] table and what follows it are the
		// harness's.
		c.server = startServerTop(t, 3<<30, func(s *server) string {
			return fmt.Sprintf(`database_url = %q
node.name = %q
node.advertise_host = %q
node.api_url = "http://127.0.0.1:%d"
node.ssh_address = "127.0.0.1:%d"
node.heartbeat_interval = "1s"
cluster.secret = %q`, dbURL, c.name, c.host, s.httpPort, s.sshPort, secret)
		}, "", c.keys)
		out = append(out, c)
	}
	return out, state
}

// eventually polls cond for up to a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("gave up waiting until %s", what)
}

// TestCluster runs three nodes on one machine: creates through any node
// spread over the nodes holding the image and connect on the node they
// report; calls about an instance reach its node; a drained node takes no
// creates; a node killed with -9 leaves the others creating and its
// instances unavailable until it is back; nobody without the cluster's
// secret speaks as a node.
func TestCluster(t *testing.T) {
	cl, _ := startCluster(t, 3)
	n1, n2, n3 := cl[0], cl[1], cl[2]
	ctx := context.Background()
	nobody := draupnir.Principal{} // the client's token says who

	src := newSource(t)
	backup := src.BaseBackup(t, "-X", "fetch") + "/base.tar"
	im := n1.readyImage(t, anonymise, backup)
	waitShipped(t, n2, im.ID, cl...)

	byNode := map[string][]*draupnir.Instance{}
	host := map[string]string{}
	for _, n := range cl {
		host[n.name] = n.host
	}
	for i := range 6 {
		door := cl[i%3]
		in, err := door.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatalf("create %d through %s: %v\n%s", i, door.name, err, door.logs())
		}
		if in.Hostname != host[in.Node] {
			t.Errorf("instance %d on %s has hostname %q, want %q", in.ID, in.Node, in.Hostname, host[in.Node])
		}
		// It answers on the address it reports, with the anonymised data.
		got := mustPSQLOn(t, in, "SELECT inet_server_addr()::text || ' ' || count(*) FROM customers WHERE email LIKE '%@real.example'")
		if got != in.Hostname+"/32 0" && got != in.Hostname+" 0" {
			t.Errorf("instance %d answers %q, want from %s with no real emails", in.ID, got, in.Hostname)
		}
		byNode[in.Node] = append(byNode[in.Node], in)
	}
	for _, n := range cl {
		if len(byNode[n.name]) != 2 {
			t.Errorf("%s got %d of 6 instances, want 2 (the fewest instances first)", n.name, len(byNode[n.name]))
		}
	}

	t.Run("calls reach the instance's node", func(t *testing.T) {
		in := byNode["node3"][0]
		got, err := n1.user().Instances().Get(ctx, nobody, in.ID)
		if err != nil || got.Password != in.Password || got.State != draupnir.InstanceRunning || got.Node != "node3" {
			t.Fatalf("GET of node3's instance through node1 = %+v, %v", got, err)
		}
		ttl := time.Hour
		if got, err := n2.user().Instances().Update(ctx, nobody, in.ID, draupnir.InstancePatch{TTL: &ttl}); err != nil || got.ExpiresAt.IsZero() {
			t.Errorf("PATCH through node2 = %+v, %v", got, err)
		}
		if got, err := n1.user().Instances().Reset(ctx, nobody, in.ID, 0); err != nil || got.Port != in.Port {
			t.Errorf("reset through node1 = %+v, %v", got, err)
		}
		if err := n2.user().Instances().Destroy(ctx, nobody, in.ID); err != nil {
			t.Fatalf("DELETE through node2: %v", err)
		}
		if _, err := n3.user().Instances().Get(ctx, nobody, in.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
			t.Errorf("GET after destroy = %v, want not found", err)
		}
		byNode["node3"] = byNode["node3"][1:]
	})

	t.Run("the SSH door forwards too", func(t *testing.T) {
		in := byNode["node2"][1]
		id := strconv.FormatInt(in.ID, 10)
		out, err := n1.ssh(t, n1.keys, n1.keys.user, "ssh", "user@127.0.0.1", "instances", "show", id).CombinedOutput()
		if err != nil || !strings.Contains(string(out), in.Password) {
			t.Fatalf("instances show %s on node1 over SSH: %v\n%s", id, err, out)
		}
		// The attacker's key on node1 gets node2's answer for them: none.
		out, err = n1.ssh(t, n1.keys, n1.keys.attacker, "ssh", "attacker@127.0.0.1", "instances", "destroy", id).CombinedOutput()
		if err == nil || strings.Contains(string(out), in.Password) {
			t.Fatalf("the attacker's destroy of %s through node1: %v\n%s", id, err, out)
		}
		out, err = n3.ssh(t, n3.keys, n3.keys.user, "ssh", "user@127.0.0.1", "instances", "destroy", id).CombinedOutput()
		if err != nil {
			t.Fatalf("instances destroy %s on node3 over SSH: %v\n%s", id, err, out)
		}
		if _, err := n2.user().Instances().Get(ctx, nobody, in.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
			t.Errorf("GET on node2 after the destroy through node3's SSH door = %v, want not found", err)
		}
		byNode["node2"] = byNode["node2"][:1]
	})

	t.Run("an image is finalised where it was uploaded", func(t *testing.T) {
		// Made on node2, which took the POST /images.
		im2, err := n2.upload().Images().Create(ctx, nobody, time.Now(), anonymise)
		if err != nil {
			t.Fatal(err)
		}
		n2.copyInto(t, im2.ID, backup)
		done, err := n3.upload().Images().Finalise(ctx, nobody, im2.ID)
		if err != nil || !done.Ready() {
			t.Fatalf("done through node3 of an image uploaded to node2: %+v, %v\n%s", done, err, n2.logs())
		}
		in, err := n1.user().Instances().Create(ctx, nobody, im2.ID, draupnir.CreateOptions{})
		if err != nil {
			t.Fatalf("create of the new image: %+v, %v", in, err)
		}
		// Wherever it is placed, the image is ready there: node2, or a
		// node it was shipped to already.
		if got, _ := n1.upload().Images().Get(ctx, nobody, im2.ID); copyState(got, in.Node) != "ready" {
			t.Errorf("instance of image %d placed on %s, where it is not ready: %+v", im2.ID, in.Node, got.Nodes)
		}
		if err := n1.user().Instances().Destroy(ctx, nobody, in.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("nodes list and drain", func(t *testing.T) {
		list, err := n2.upload().Nodes().List(ctx, nobody)
		if err != nil || len(list) != 3 {
			t.Fatalf("GET /nodes = %v, %v", list, err)
		}
		for _, n := range list {
			if n.Down || n.Drained || n.FreePorts <= 0 || n.FreeDiskBytes <= 0 || n.FreeMemoryBytes <= 0 {
				t.Errorf("node %+v", n)
			}
		}
		if _, err := n1.user().Nodes().List(ctx, nobody); draupnir.KindOf(err) != draupnir.KindForbidden {
			t.Errorf("GET /nodes as a user = %v, want forbidden", err)
		}
		out, err := n3.ssh(t, n3.keys, n3.keys.upload, "ssh", "upload@127.0.0.1", "nodes", "drain", "node1").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "drained") {
			t.Fatalf("nodes drain over SSH: %v\n%s", err, out)
		}
		for range 3 {
			in, err := n1.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
			if err != nil || in.Node == "node1" {
				t.Fatalf("create with node1 drained: %+v, %v", in, err)
			}
			byNode[in.Node] = append(byNode[in.Node], in)
		}
		if _, err := n1.upload().Nodes().Undrain(ctx, nobody, "node1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("nobody without the secret speaks as a node", func(t *testing.T) {
		victim := byNode["node2"][0]
		for _, token := range []string{"the-integration-access-token", sharedSecret, ""} {
			for _, r := range []struct{ method, path string }{
				{"GET", "/instances"}, {"GET", "/instances/" + strconv.FormatInt(victim.ID, 10)},
				{"DELETE", "/instances/" + strconv.FormatInt(victim.ID, 10)},
			} {
				req, _ := http.NewRequest(r.method, n2.url+r.path, nil)
				req.Header.Set(wire.HeaderVersion, draupnir.Version)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				req.Header.Set(nodes.HeaderForwardedBy, "node1")
				req.Header.Set(nodes.HeaderForwardedTo, "node2")
				req.Header.Set(nodes.HeaderForwardedFor, draupnir.UploadPrincipal)
				req.Header.Set(nodes.HeaderForwardedAt, strconv.FormatInt(time.Now().Unix(), 10))
				req.Header.Set(nodes.HeaderNonce, randomHex(16))
				req.Header.Set(nodes.HeaderSignature, randomHex(32))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusForbidden {
					t.Errorf("forged forward %s %s with token %q: %s, want 403", r.method, r.path, token, resp.Status)
				}
			}
		}
		if got, err := n2.user().Instances().Get(ctx, nobody, victim.ID); err != nil || got.State != draupnir.InstanceRunning {
			t.Errorf("the victim after forged calls: %+v, %v", got, err)
		}
	})

	t.Run("kill -9 of a node", func(t *testing.T) {
		dead := byNode["node2"][0]
		n2.stop(syscall.SIGKILL)
		eventually(t, "node1 sees node2 down", func() bool {
			list, err := n1.upload().Nodes().List(ctx, nobody)
			for _, n := range list {
				if n.Name == "node2" {
					return err == nil && n.Down
				}
			}
			return false
		})
		got, err := n1.user().Instances().Get(ctx, nobody, dead.ID)
		if err != nil || got.State != draupnir.InstanceUnavailable || got.Node != "node2" {
			t.Errorf("GET of the dead node's instance = %+v, %v; want it unavailable", got, err)
		}
		list, err := n3.user().Instances().List(ctx, nobody)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list {
			if (in.Node == "node2") != (in.State == draupnir.InstanceUnavailable) {
				t.Errorf("listed %d on %s as %s", in.ID, in.Node, in.State)
			}
		}
		if err := n1.user().Instances().Destroy(ctx, nobody, dead.ID); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("DELETE of the dead node's instance = %v, want unavailable", err)
		}
		for i := range 4 {
			in, err := cl[i%2*2].user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
			if err != nil || in.Node == "node2" {
				t.Fatalf("create with node2 dead: %+v, %v", in, err)
			}
			mustPSQLOn(t, in, "SELECT 1")
		}

		n2.start()
		eventually(t, "node2's instance answers through node1 again", func() bool {
			got, err := n1.user().Instances().Get(ctx, nobody, dead.ID)
			return err == nil && got.State == draupnir.InstanceRunning
		})
		if got := mustPSQLOn(t, dead, "SELECT count(*) FROM customers"); got != "1000" {
			t.Errorf("node2's instance after its restart: %q", got)
		}
		if err := n3.user().Instances().Destroy(ctx, nobody, dead.ID); err != nil {
			t.Errorf("DELETE through node3 after the restart: %v", err)
		}
	})
}

// TestClusterStateDatabaseDown: with the shared state database gone, every
// node refuses writes with 503 and its instances keep running; once it is
// back, the nodes create again.
func TestClusterStateDatabaseDown(t *testing.T) {
	cl, state := startCluster(t, 2)
	n1, n2 := cl[0], cl[1]
	ctx := context.Background()
	nobody := draupnir.Principal{}
	src := newSource(t)
	im := n1.readyImage(t, anonymise, src.BaseBackup(t, "-X", "fetch")+"/base.tar")
	in, err := n2.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	pgctl := filepath.Join(state.Bin, "pg_ctl")
	testenv.AsPostgres(t, pgctl, "-D", state.Dir, "-m", "fast", "-w", "stop")
	for _, n := range cl {
		if _, err := n.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{}); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("create through %s with the state database down = %v, want 503", n.name, err)
		}
		if err := n.user().Instances().Destroy(ctx, nobody, in.ID); draupnir.KindOf(err) != draupnir.KindUnavailable {
			t.Errorf("destroy through %s with the state database down = %v, want 503", n.name, err)
		}
	}
	if got := mustPSQLOn(t, in, "SELECT count(*) FROM customers"); got != "1000" {
		t.Errorf("the instance with the state database down: %q", got)
	}

	testenv.AsPostgres(t, pgctl, "-D", state.Dir, "-w", "-l", filepath.Join(filepath.Dir(state.Dir), "log"), "-o",
		fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c port=5432 -c fsync=off", state.SocketDir), "start")
	eventually(t, "a create works again", func() bool {
		_, err := n2.user().Instances().Create(ctx, nobody, im.ID, draupnir.CreateOptions{})
		return err == nil
	})
	if got, err := n2.user().Instances().Get(ctx, nobody, in.ID); err != nil || got.State != draupnir.InstanceRunning {
		t.Errorf("the instance once the state database is back: %+v, %v", got, err)
	}
}

// mustPSQLOn runs sql on instance in at the host it reports.
func mustPSQLOn(t testing.TB, in *draupnir.Instance, sql string) string {
	t.Helper()
	out, err := psql(t, in, sql, "PGHOST="+in.Hostname)
	if err != nil {
		t.Fatalf("psql on instance %d (%s:%d): %v\n%s", in.ID, in.Hostname, in.Port, err, out)
	}
	return out
}
