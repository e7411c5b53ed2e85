package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// forwarding measures what placing an instance on another node costs: two
// nodes of a cluster, a and b, share a state database (on the source
// cluster) and their data path's filesystem (each in its own directory);
// the image is ready on b only. Creates sent to b are served there; those
// sent to a are forwarded to b (one signed HTTP round trip more). The two
// series alternate, so drift hits both alike.
func (e *env) forwarding(ctx context.Context) error {
	const stateDB = "draupnir_nodes"
	if err := e.src.sql(ctx, "postgres", "CREATE DATABASE "+stateDB); err != nil {
		return err
	}
	secret := randomHex(24)
	dbURL := fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", e.src.sock, e.src.port, stateDB)
	// Beyond the main server's ports.
	base := e.cfg.PortBase + e.cfg.portSpan()
	span := e.cfg.Samples + 10
	nodes := map[string]*server{}
	for i, name := range []string{"a", "b"} {
		dataPath := filepath.Join(e.mnt, "node-"+name)
		if err := os.Mkdir(dataPath, 0o755); err != nil {
			return err
		}
		runPath := "/run/draupnir-bench-" + randomHex(4)
		e.undo.push(func(context.Context) error { return os.RemoveAll(runPath) })
		spec := serverSpec{name: "node-" + name, dataPath: dataPath, runPath: runPath,
			portBase: base + i*span, portSpan: span,
			// One copy: the image must stay on b alone, even now that
			// nodes ship images to each other.
			top: fmt.Sprintf("database_url = %q\nnode.name = %q\nnode.heartbeat_interval = \"1s\"\ncluster.copies = 1", dbURL, name),
			env: []string{"DRAUPNIR_CLUSTER_SECRET=" + secret}}
		srv, err := e.startNode(ctx, spec)
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		nodes[name] = srv
	}
	a, b := nodes["a"], nodes["b"]
	upB := client.New(b.url, b.secret)
	image, _, err := e.imageOn(ctx, b, upB, filepath.Join(e.mnt, "node-b", "image_uploads"), e.backup, trivialScript)
	if err != nil {
		return err
	}
	direct, forwarded := client.New(b.url, userToken).Instances(), client.New(a.url, userToken).Instances()
	once := func(via client.Instances, key string, record bool) error {
		t0 := time.Now()
		in, err := via.Create(ctx, draupnir.Principal{}, image, draupnir.CreateOptions{})
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("creating an instance (%s): %w", key, err)
		}
		defer via.Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID)
		if in.Node != "b" {
			return fmt.Errorf("an instance of an image only b holds was placed on %q", in.Node)
		}
		if record {
			e.rep.sample(key, d)
		}
		return nil
	}
	if err := e.quiesce(ctx); err != nil {
		return err
	}
	// One unrecorded warm-up each (connections, caches), then alternate.
	for i := 0; i <= e.cfg.Samples; i++ {
		if err := once(direct, "node_direct_create_api_ms", i > 0); err != nil {
			return err
		}
		if err := once(forwarded, "node_forwarded_create_api_ms", i > 0); err != nil {
			return err
		}
	}
	d := Summarize(e.rep.Samples["node_direct_create_api_ms"])
	f := Summarize(e.rep.Samples["node_forwarded_create_api_ms"])
	e.rep.Values["forwarded_minus_direct_create_p50_ms"] = f.P50 - d.P50
	e.rep.add(Figure{
		Name:     fmt.Sprintf("POST /instances through a node that forwards it to the node holding the image, n=%d", f.N),
		Goal:     "p50 ≤ the direct create's p50 + 5 ms",
		Measured: fmt.Sprintf("forwarded p50 %s, p95 %s; direct p50 %s, p95 %s", fmtMS(f.P50), fmtMS(f.P95), fmtMS(d.P50), fmtMS(d.P95)),
		Ratio:    fmt.Sprintf("%+.1f ms", f.P50-d.P50),
		Status:   verdict(f.P50 <= d.P50+5),
	})
	return e.forwardedGets(ctx, direct, forwarded, image)
}

// forwardedGets times GET /instances/:id of an instance on b, through b
// and through a: with nothing else in the call, what a forward itself
// costs.
func (e *env) forwardedGets(ctx context.Context, direct, forwarded client.Instances, image int64) error {
	in, err := direct.Create(ctx, draupnir.Principal{}, image, draupnir.CreateOptions{})
	if err != nil {
		return err
	}
	defer direct.Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, in.ID)
	for i := 0; i <= e.cfg.ListSamples; i++ {
		for _, s := range []struct {
			via client.Instances
			key string
		}{{direct, "node_direct_get_ms"}, {forwarded, "node_forwarded_get_ms"}} {
			t0 := time.Now()
			if _, err := s.via.Get(ctx, draupnir.Principal{}, in.ID); err != nil {
				return err
			}
			if i > 0 {
				e.rep.sample(s.key, time.Since(t0))
			}
		}
	}
	d := Summarize(e.rep.Samples["node_direct_get_ms"])
	f := Summarize(e.rep.Samples["node_forwarded_get_ms"])
	e.rep.add(Figure{
		Name:     fmt.Sprintf("GET /instances/:id of an instance on another node (the forward alone), n=%d", f.N),
		Goal:     "p50 ≤ the direct GET's p50 + 5 ms",
		Measured: fmt.Sprintf("forwarded p50 %s, p95 %s; direct p50 %s, p95 %s", fmtMS(f.P50), fmtMS(f.P95), fmtMS(d.P50), fmtMS(d.P95)),
		Ratio:    fmt.Sprintf("%+.1f ms", f.P50-d.P50),
		Status:   verdict(f.P50 <= d.P50+5),
	})
	return nil
}

// startNode starts a node of a cluster as spec says, on ports chosen here
// so that its [node] addresses (set from the environment) can name them.
func (e *env) startNode(ctx context.Context, spec serverSpec) (*server, error) {
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	sshPort, err := freePort()
	if err != nil {
		return nil, err
	}
	spec.env = append(spec.env,
		fmt.Sprintf("DRAUPNIR_NODE_API_URL=http://127.0.0.1:%d", httpPort),
		fmt.Sprintf("DRAUPNIR_NODE_SSH_ADDRESS=127.0.0.1:%d", sshPort),
		"DRAUPNIR_NODE_ADVERTISE_HOST=127.0.0.1")
	spec.httpPort, spec.sshPort = httpPort, sshPort
	return e.startServerSpec(ctx, e.undo, spec)
}
