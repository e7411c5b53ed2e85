// Package e2e drives the real draupnir binaries through their real doors —
// HTTP, SSH and the CLI — on a loop-mounted btrfs with real postgres.
// Scenarios that are sequences of commands are testscript files in
// testdata/cli (see TestCLI); what needs Go to orchestrate (concurrency,
// killed processes, faults, hostile archives) is Go.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
	"github.com/draupnir-db/draupnir/datapath"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

const sharedSecret = "e2e-shared-secret-0123456789"

// bins holds the binaries built once for all tests.
var bins struct {
	once   sync.Once
	dir    string
	err    error
	server string
	client string
}

func build(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t) // every test that runs the server
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "draupnir-e2e-bin-")
		if bins.err != nil {
			return
		}
		os.Chmod(bins.dir, 0o755)
		bins.server = filepath.Join(bins.dir, "draupnir")
		bins.client = filepath.Join(bins.dir, "draupnir-client")
		for pkg, out := range map[string]string{"../cmd/draupnir": bins.server, "../cmd/draupnir-client": bins.client} {
			if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
				bins.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// server is a running draupnir serve.
type server struct {
	t        testing.TB
	dataPath string
	runPath  string
	config   string
	httpPort int
	sshPort  int
	minPort  int
	url      string
	cmd      *exec.Cmd
	log      *bytes.Buffer
	logMu    *sync.Mutex
	exited   chan struct{}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startServer mounts a fresh btrfs, writes a test config (extra is appended
// to it) and starts draupnir serve on it; everything goes at cleanup.
func startServer(t testing.TB, extra string) *server {
	t.Helper()
	return startServerSSH(t, extra, nil)
}

// sshKeys are the client keys of an SSH-enabled test server.
type sshKeys struct {
	dir                              string
	upload, user, stranger, attacker string // private key files
	knownHosts                       string
}

// instancePorts is the size of a test server's instance port range; the
// two ports after it are the server's HTTP and SSH ports.
const instancePorts = 90

// portRanges hands each server of this test process its own block of 100
// instance ports, starting at a random block.
var portRanges struct {
	sync.Mutex
	next int
}

func nextPortRange() int {
	portRanges.Lock()
	defer portRanges.Unlock()
	if portRanges.next == 0 {
		portRanges.next = int(time.Now().UnixNano() % 120)
	}
	portRanges.next = (portRanges.next + 1) % 120
	return 20000 + portRanges.next*100
}

// startServerSSH is startServer with the SSH door on when keys is not nil:
// keys.upload is an upload key, keys.user a key of the user named in its
// comment, keys.attacker a key of another user (attacker@example.com),
// keys.stranger a key the server does not know.
func startServerSSH(t testing.TB, extra string, keys *sshKeys) *server {
	t.Helper()
	return startServerSize(t, 6<<30, extra, keys)
}

// startServerSize is startServerSSH on a btrfs of size bytes.
func startServerSize(t testing.TB, size int64, extra string, keys *sshKeys) *server {
	t.Helper()
	return startServerTop(t, size, nil, extra, keys)
}

// startServerTop is startServerSize with the top-level keys (such as
// database_url) that top, if not nil, returns for the server (whose ports
// are chosen by then).
func startServerTop(t testing.TB, size int64, top func(*server) string, extra string, keys *sshKeys) *server {
	t.Helper()
	build(t)
	mnt := testenv.Btrfs(t, size)
	minPort := nextPortRange()
	s := &server{
		t:        t,
		dataPath: mnt,
		runPath:  "/run/draupnir-e2e-" + randomHex(4),
		// The server's own ports too, so that a restart finds them free: a
		// port from the ephemeral range may meanwhile be a client's.
		httpPort: minPort + instancePorts,
		sshPort:  minPort + instancePorts + 1,
		// A range of our own, away from other tests running at once and below
		// the ephemeral ports (32768+) that client connections take.
		minPort: minPort,
	}
	s.url = "http://127.0.0.1:" + strconv.Itoa(s.httpPort)
	t.Cleanup(func() { os.RemoveAll(s.runPath) })
	s.config = filepath.Join(testenv.TempDir(t), "config.toml")
	conf := ""
	if top != nil {
		conf = top(s) + "\n"
	}
	conf += fmt.Sprintf(`data_path = %q
run_path = %q
environment = "test"
shared_secret = %q
public_hostname = "localhost"
[http]
address = "127.0.0.1"
insecure_port = %d
port = 0
%s
[instances]
min_port = %d
max_port = %d
%s`, s.dataPath, s.runPath, sharedSecret, s.httpPort, s.sshSection(t, keys), s.minPort, s.minPort+instancePorts-1, extra)
	if err := os.WriteFile(s.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	// Registered after the mount's cleanup, so it runs before the unmount.
	t.Cleanup(func() { s.stop(syscall.SIGTERM) })
	return s
}

// sshSection makes the client keys and returns the config's [ssh] table.
func (s *server) sshSection(t testing.TB, keys *sshKeys) string {
	if keys == nil {
		return "[ssh]\nport = 0"
	}
	keys.dir = testenv.TempDir(t)
	gen := func(name, comment string) string {
		path := filepath.Join(keys.dir, name)
		testenv.Run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
		return path
	}
	keys.upload = gen("upload", "uploader")
	keys.user = gen("user", "integration-test@draupnir.test")
	keys.stranger = gen("stranger", "stranger@example.com")
	keys.attacker = gen("attacker", "attacker@example.com")
	keys.knownHosts = filepath.Join(keys.dir, "known_hosts")
	uploadKeys := filepath.Join(keys.dir, "upload_authorized_keys")
	userKeys := filepath.Join(keys.dir, "authorized_keys")
	pub := func(path string) []byte {
		b, err := os.ReadFile(path + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	os.WriteFile(uploadKeys, pub(keys.upload), 0o600)
	os.WriteFile(userKeys, append(pub(keys.user), pub(keys.attacker)...), 0o600)
	return fmt.Sprintf("[ssh]\nport = %d\naddress = \"127.0.0.1\"\nupload_authorized_keys = %q\nauthorized_keys = %q",
		s.sshPort, uploadKeys, userKeys)
}

// ssh runs an OpenSSH client (ssh, scp or sftp) against the server with the
// given key, trusting the host key on first use.
func (s *server) ssh(t testing.TB, keys *sshKeys, key, prog string, args ...string) *exec.Cmd {
	portFlag := "-p"
	if prog != "ssh" {
		portFlag = "-P"
	}
	base := []string{"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
		"-o", "UserKnownHostsFile=" + keys.knownHosts, "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
		"-i", key, portFlag, strconv.Itoa(s.sshPort)}
	return exec.Command(prog, append(base, args...)...)
}

// start runs draupnir serve and waits for its health check.
func (s *server) start() {
	t := s.t
	t.Helper()
	s.log = &bytes.Buffer{}
	s.logMu = &sync.Mutex{}
	s.cmd = exec.Command(bins.server, "--config", s.config, "serve")
	w := &lockedWriter{mu: s.logMu, w: s.log}
	s.cmd.Stdout, s.cmd.Stderr = w, w
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.url + "/health_check")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-s.exited:
			t.Fatalf("draupnir serve exited during start-up:\n%s", s.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("draupnir serve did not become healthy:\n%s", s.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the server and waits for it to exit.
func (s *server) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(sig)
		select {
		case <-s.exited:
		case <-time.After(60 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
			s.t.Errorf("draupnir serve did not stop on %v", sig)
		}
	}
	if sig == syscall.SIGTERM && s.cmd.ProcessState != nil && !s.cmd.ProcessState.Success() {
		s.t.Errorf("draupnir serve exited with %v after SIGTERM:\n%s", s.cmd.ProcessState, s.logs())
	}
	s.cmd = nil
}

func (s *server) logs() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// upload and user are API clients for the two kinds of principal.
func (s *server) upload() *client.Client { return client.New(s.url, sharedSecret) }
func (s *server) user() *client.Client   { return client.New(s.url, "the-integration-access-token") }

// layout names the parts of the server's data path and run path.
func (s *server) layout() datapath.Layout {
	return datapath.Layout{Data: s.dataPath, Run: s.runPath}
}

func (s *server) uploadDir(id int64) string {
	return filepath.Join(s.layout().Uploads(), strconv.FormatInt(id, 10))
}

// copyInto copies files into image id's upload directory, as scp would.
func (s *server) copyInto(t testing.TB, id int64, files ...string) {
	t.Helper()
	for _, f := range files {
		testenv.Run(t, "cp", "-r", f, s.uploadDir(id)+"/")
	}
}

// readyImage creates an image with script, uploads files into it and
// finalises it, failing the test unless it becomes ready.
func (s *server) readyImage(t testing.TB, script string, files ...string) *draupnir.Image {
	t.Helper()
	ctx := context.Background()
	im, err := s.upload().Images().Create(ctx, draupnir.Principal{}, time.Now(), script)
	if err != nil {
		t.Fatal(err)
	}
	s.copyInto(t, im.ID, files...)
	done, err := s.upload().Images().Finalise(ctx, draupnir.Principal{}, im.ID)
	if err != nil {
		t.Fatalf("finalising image %d: %v\n%s", im.ID, err, s.logs())
	}
	if !done.Ready() {
		t.Fatalf("image %d is %s after done", im.ID, done.State)
	}
	return done
}

// psql runs sql on an instance over TCP with its credentials and returns
// the unaligned output.
func psql(t testing.TB, in *draupnir.Instance, sql string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-p", strconv.Itoa(in.Port), "-U", in.Username, "-d", in.Database, "-c", sql)
	// Later entries win, so env can override these.
	cmd.Env = append(append(os.Environ(), "PGHOST=127.0.0.1", "PGPASSWORD="+in.Password, "PGCONNECT_TIMEOUT=10", "PGSSLMODE=require"), env...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func mustPSQL(t testing.TB, in *draupnir.Instance, sql string) string {
	t.Helper()
	out, err := psql(t, in, sql)
	if err != nil {
		t.Fatalf("psql on instance %d (port %d): %v\n%s", in.ID, in.Port, err, out)
	}
	return out
}

// shopSQL is the data every image test starts from: an application
// database with a secret to anonymise, owned by an application role.

const shopSQL = `CREATE ROLE admins SUPERUSER NOLOGIN;
GRANT admins TO app;
SET ROLE app;
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL);
INSERT INTO customers (email) SELECT 'person' || n || '@real.example' FROM generate_series(1, 1000) n;
CREATE TABLE secret_tokens (token text);
INSERT INTO secret_tokens VALUES ('s3cr3t-production-token');
RESET ROLE;
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
INSERT INTO audit (what) VALUES ('made by the superuser');
SELECT lo_from_bytea(90001, 'a large object');`

// anonymise is a script of the kind the original README shows.
const anonymise = `\c shop
DELETE FROM secret_tokens;
UPDATE customers SET email = 'customer' || id || '@example.com';`

func newSource(t testing.TB) *testenv.Source {
	t.Helper()
	src := testenv.SourceCluster(t, "CREATE ROLE app LOGIN")
	src.SQL(t, "postgres", "CREATE DATABASE shop OWNER app")
	src.SQL(t, "shop", shopSQL)
	return src
}
