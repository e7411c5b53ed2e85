package sshd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/images"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// fakeUploads keeps upload directories under base/image_uploads and serves
// them through the images service's own upload rules (images.OpenDir).
// Images 1 and 2 accept uploads, 3 is ready, others do not exist.
type fakeUploads struct {
	base string
	open atomic.Int64 // uploads opened and not closed
}

func (u *fakeUploads) dir(id int64) string {
	return filepath.Join(u.base, "image_uploads", strconv.FormatInt(id, 10))
}

func (u *fakeUploads) check(p draupnir.Principal, id int64) error {
	if !p.Upload {
		return draupnir.Errorf(draupnir.KindForbidden, "only the upload principal may upload")
	}
	switch id {
	case 1, 2:
		return nil
	case 3:
		return draupnir.Errorf(draupnir.KindConflict, "image 3 is ready; uploads are closed")
	}
	return draupnir.Errorf(draupnir.KindNotFound, "image %d not found", id)
}

func (u *fakeUploads) OpenUpload(ctx context.Context, p draupnir.Principal, id int64) (draupnir.Upload, error) {
	if err := u.check(p, id); err != nil {
		return nil, err
	}
	d := u.dir(id)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	up, err := images.OpenDir(d)
	if err != nil {
		return nil, err
	}
	u.open.Add(1)
	return &countedUpload{Upload: up, open: &u.open}, nil
}

// countedUpload counts itself out of fakeUploads.open when closed.
type countedUpload struct {
	draupnir.Upload
	open *atomic.Int64
	once sync.Once
}

func (c *countedUpload) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Upload.Close()
}

// commandLog records what the fake CommandRunner was asked.
type commandLog struct {
	mu    sync.Mutex
	calls []commandCall
}

type commandCall struct {
	p    draupnir.Principal
	args []string
}

func (l *commandLog) run(ctx context.Context, p draupnir.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	l.mu.Lock()
	l.calls = append(l.calls, commandCall{p, args})
	l.mu.Unlock()
	if len(args) > 0 && args[0] == "fail" {
		fmt.Fprintln(stderr, "draupnir: failing as asked")
		return 3
	}
	fmt.Fprintf(stdout, "ran %q as %s\n", args, p.Name)
	return 0
}

func (l *commandLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = nil
}

func (l *commandLog) last() commandCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.calls) == 0 {
		return commandCall{}
	}
	return l.calls[len(l.calls)-1]
}

// env is a running server with keys and an OpenSSH client setup.
type env struct {
	t          *testing.T
	dir        string // client-side scratch space
	host       string // the server's address; default 127.0.0.1
	ns         *netns // where server and clients run; nil: here
	uploads    *fakeUploads
	commands   *commandLog
	srv        *Server
	port       int
	knownHosts string
	keys       map[string]string // identity → private key file
	hostKey    string
}

type envOption func(*Options)

// users have keys in the user key file, as <name>@example.com.
var users = []string{"alice", "bob", "carol", "dave"}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return newEnvIn(t, nil, "127.0.0.1", opts...)
}

// newEnvIn is newEnv with the server listening on host in network
// namespace ns (nil: the test's own).
func newEnvIn(t *testing.T, ns *netns, host string, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, dir: testenv.TempDir(t), host: host, ns: ns, commands: &commandLog{}, keys: map[string]string{}}
	e.uploads = &fakeUploads{base: testenv.TempDir(t)}
	var uploadKeys, userKeys bytes.Buffer
	for _, id := range append([]string{"upload", "stranger"}, users...) {
		priv, pub := writeClientKey(t, filepath.Join(e.dir, id))
		e.keys[id] = priv
		switch id {
		case "upload":
			fmt.Fprintf(&uploadKeys, "%s\n", pub)
		case "stranger":
		default:
			fmt.Fprintf(&userKeys, "%s %s@example.com\n", pub, id)
		}
	}
	upath, apath := filepath.Join(e.dir, "upload_keys"), filepath.Join(e.dir, "user_keys")
	mustWrite(t, upath, uploadKeys.Bytes())
	mustWrite(t, apath, userKeys.Bytes())
	keys, err := LoadFileKeys(upath, apath)
	if err != nil {
		t.Fatal(err)
	}
	e.hostKey = filepath.Join(e.dir, "hostkeys", "ssh_host_ed25519_key")
	o := Options{
		HostKeyPath: e.hostKey,
		Uploads:     e.uploads,
		Keys:        keys,
		Commands:    e.commands.run,
		IdleTimeout: time.Minute,
		MaxTimeout:  10 * time.Minute,
		Log:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range opts {
		f(&o)
	}
	e.start(o)
	t.Cleanup(func() {
		if n := e.uploads.open.Load(); n != 0 {
			t.Errorf("%d uploads were opened and never closed", n)
		}
	})
	return e
}

// start runs a server with o on a fresh port and writes known_hosts for it.
func (e *env) start(o Options) {
	t := e.t
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	err = e.ns.do(func() error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(e.host, "0"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	e.srv = srv
	e.port = l.Addr().(*net.TCPAddr).Port
	e.knownHosts = filepath.Join(e.dir, "known_hosts")
	line := fmt.Sprintf("[%s]:%d %s", e.host, e.port, gossh.MarshalAuthorizedKey(srv.PublicKey()))
	mustWrite(t, e.knownHosts, []byte(line))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeClientKey writes an ed25519 key in OpenSSH format and returns its
// path and its authorized_keys form (without comment).
func writeClientKey(t testing.TB, path string) (string, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, path, pem.EncodeToMemory(block))
	sp, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sp)))
}

// common OpenSSH client options: no config, no agent, strict host key check.
func (e *env) sshOpts(who string) []string {
	return []string{
		"-F", "/dev/null",
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + e.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=20",
		"-o", "LogLevel=ERROR",
		"-c", "aes128-gcm@openssh.com",
		"-i", e.keys[who],
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) exec(stdin io.Reader, name string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if e.ns != nil {
		name, args = "nsenter", append([]string{"--net=" + e.ns.path, name}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=")
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if stdin == nil {
		cmd.Stdin = strings.NewReader("")
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// ssh runs `ssh who@host args…` (args are joined by ssh with spaces).
func (e *env) ssh(who string, stdin io.Reader, extra []string, args ...string) result {
	// extra first: for ssh, the first value of an option wins.
	a := append(append([]string{}, extra...), e.sshOpts(who)...)
	a = append(a, "-p", strconv.Itoa(e.port), who+"@"+e.host)
	return e.exec(stdin, "ssh", append(a, args...)...)
}

// scp runs scp with flags, copying srcs to the remote target.
func (e *env) scp(who string, flags []string, target string, srcs ...string) result {
	a := append(e.sshOpts(who), "-P", strconv.Itoa(e.port))
	a = append(a, flags...)
	a = append(a, srcs...)
	host := e.host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return e.exec(nil, "scp", append(a, who+"@"+host+":"+target)...)
}

// sftp runs an sftp batch.
func (e *env) sftp(who string, batch string) result {
	bf := filepath.Join(e.dir, "batch")
	mustWrite(e.t, bf, []byte(batch))
	a := append(e.sshOpts(who), "-P", strconv.Itoa(e.port), "-b", bf, who+"@"+e.host)
	return e.exec(nil, "sftp", a...)
}

// randomFile writes size random bytes and returns the path and its sha256.
func randomFile(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// treeSums maps every entry below root to a description (dir, or file sum).
func treeSums(t testing.TB, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.IsDir():
			m[rel] = "dir"
		case d.Type().IsRegular():
			m[rel] = fileSum(t, p)
		default:
			m[rel] = d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// listAll returns every path below root (for "nothing was written" checks).
func listAll(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}
