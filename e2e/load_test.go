package e2e

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// The load test is short in `go test`; `make loadtest` (or these flags, or
// DRAUPNIR_LOAD_DURATION / DRAUPNIR_LOAD_CLIENTS) runs it longer and wider.
var (
	loadDuration = flag.Duration("load.duration", 0, "how long TestLoad runs (default 10s, or $DRAUPNIR_LOAD_DURATION)")
	loadClients  = flag.Int("load.clients", 0, "concurrent clients in TestLoad (default 10, or $DRAUPNIR_LOAD_CLIENTS)")
)

func loadSettings(t testing.TB) (time.Duration, int) {
	d, n := *loadDuration, *loadClients
	if d == 0 {
		d = 10 * time.Second
		if v := os.Getenv("DRAUPNIR_LOAD_DURATION"); v != "" {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				t.Fatalf("DRAUPNIR_LOAD_DURATION: %v", err)
			}
		}
	}
	if n == 0 {
		n = 10
		if v := os.Getenv("DRAUPNIR_LOAD_CLIENTS"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 1 {
				t.Fatalf("DRAUPNIR_LOAD_CLIENTS: %q is not a positive number", v)
			}
		}
	}
	return d, n
}

// statusCounter counts the server's 5xx answers as the client sees them.
type statusCounter struct {
	next        http.RoundTripper
	total, s5xx atomic.Int64
}

func (c *statusCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	c.total.Add(1)
	if err == nil && resp.StatusCode >= 500 {
		c.s5xx.Add(1)
	}
	return resp, err
}

// latencies collects durations of one kind of operation.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return "none"
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))].Round(time.Millisecond) }
	return fmt.Sprintf("n=%d p50=%v p95=%v max=%v", len(s), q(0.5), q(0.95), s[len(s)-1].Round(time.Millisecond))
}

// TestLoad runs concurrent clients that create an instance, query it and
// destroy it, over HTTP and (one client in five) over SSH, for a bounded
// time on loopback. No answer may be a 5xx, no operation may fail, and
// nothing may be left over at the end.
func TestLoad(t *testing.T) {
	duration, clients := loadSettings(t)
	keys := &sshKeys{}
	s := startServerSSH(t, "", keys)
	src := newSource(t)
	b := src.BaseBackup(t, "-X", "fetch")
	im := s.readyImage(t, anonymise, filepath.Join(b, "base.tar"))
	counter := &statusCounter{next: &http.Transport{MaxIdleConnsPerHost: clients}}
	api := client.New(s.url, "the-integration-access-token", client.WithHTTPClient(&http.Client{Transport: counter, Timeout: 2 * time.Minute}))
	ctx := context.Background()
	rssStart := serverRSS(s)

	var create, createSSH, query, destroy latencies
	var errMu sync.Mutex
	var errs []string
	fail := func(format string, args ...any) {
		errMu.Lock()
		errs = append(errs, fmt.Sprintf(format, args...))
		errMu.Unlock()
	}
	idRE := regexp.MustCompile(`(?m)^ID:\s+(\d+)$`)
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		overSSH := c%5 == 4
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				start := time.Now()
				var in *draupnir.Instance
				if overSSH {
					out, err := s.ssh(t, keys, keys.user, "ssh", "user@127.0.0.1", "instances", "create", strconv.FormatInt(im.ID, 10)).CombinedOutput()
					m := idRE.FindSubmatch(out)
					if err != nil || m == nil {
						fail("ssh instances create: %v %s", err, out)
						return
					}
					createSSH.add(time.Since(start))
					id, _ := strconv.ParseInt(string(m[1]), 10, 64)
					if in, err = api.Instances().Get(ctx, draupnir.Principal{}, id); err != nil {
						fail("get instance %d: %v", id, err)
						return
					}
				} else {
					var err error
					if in, err = api.Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{}); err != nil {
						fail("create: %v", err)
						return
					}
					create.add(time.Since(start))
				}
				start = time.Now()
				if n, err := countCustomers(ctx, in); err != nil || n != 1000 {
					fail("query instance %d: %d customers, %v", in.ID, n, err)
				}
				query.add(time.Since(start))
				start = time.Now()
				if overSSH {
					if out, err := s.ssh(t, keys, keys.user, "ssh", "user@127.0.0.1", "instances", "destroy", strconv.FormatInt(in.ID, 10)).CombinedOutput(); err != nil {
						fail("ssh instances destroy %d: %v %s", in.ID, err, out)
						return
					}
				} else if err := api.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
					fail("destroy %d: %v", in.ID, err)
					return
				}
				destroy.add(time.Since(start))
			}
		}()
	}
	wg.Wait()
	rssEnd := serverRSS(s)

	t.Logf("load: %d clients for %v on loopback", clients, duration)
	t.Logf("create (HTTP):  %s", create.summary())
	t.Logf("create (SSH):   %s", createSSH.summary())
	t.Logf("query:          %s", query.summary())
	t.Logf("destroy:        %s", destroy.summary())
	t.Logf("cycles/s: %.1f; HTTP requests: %d, 5xx: %d; server RSS %d MiB → %d MiB",
		float64(len(destroy.d))/duration.Seconds(), counter.total.Load(), counter.s5xx.Load(), rssStart>>20, rssEnd>>20)
	for i, e := range errs {
		if i == 10 {
			t.Errorf("… and %d more failures", len(errs)-10)
			break
		}
		t.Error(e)
	}
	if n := counter.s5xx.Load(); n != 0 {
		t.Errorf("%d answers were 5xx", n)
	}
	if len(destroy.d) == 0 {
		t.Fatal("no create/query/destroy cycle completed")
	}

	// Nothing left: rows, subvolumes, processes, socket directories, ports.
	if left := checkConsistent(t, s); len(left) != 0 {
		t.Errorf("%d instances left after the load", len(left))
	}
	if pids := postgresUnder(s.layout().Instances()); len(pids) != 0 {
		t.Errorf("postgres processes left under instances/: %v", pids)
	}
	for p := s.minPort; p < s.minPort+instancePorts; p++ {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			t.Errorf("port %d of the instance range is still taken: %v", p, err)
			continue
		}
		l.Close()
	}
}

// countCustomers queries an instance over TLS with its credentials.
func countCustomers(ctx context.Context, in *draupnir.Instance) (int, error) {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(in.Username, in.Password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(in.Port)), Path: in.Database,
		RawQuery: "sslmode=require&connect_timeout=10"}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM customers").Scan(&n)
	return n, err
}

// serverRSS is the resident memory of the draupnir server process.
func serverRSS(s *server) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(s.cmd.Process.Pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
