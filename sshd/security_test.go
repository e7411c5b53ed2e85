package sshd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestConfinement tries to write outside the upload directories, or where the
// principal may not, in every way a client can; all must fail and write
// nothing anywhere.
func TestConfinement(t *testing.T) {
	e := newEnv(t)
	outside := testenv.TempDir(t)
	mustWrite(t, filepath.Join(outside, "target"), []byte("precious"))
	img1 := e.uploads.dir(1)
	if err := os.MkdirAll(img1, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(img1, "existing"), []byte("data"))
	// Links an earlier upload (a tar, say) might have left behind.
	if err := os.Symlink(outside, filepath.Join(img1, "evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "target"), filepath.Join(img1, "lnk")); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(e.dir, "payload")
	randomFile(t, src, 1000)
	tree := filepath.Join(e.dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(tree, "sub", "f"), []byte("x"))

	before := listAll(t, e.uploads.base)
	up := "/draupnir/image_uploads/"
	type attempt struct {
		name string
		run  func() result
		// stderr (or, for raw protocol, stdout) must contain this
		want string
	}
	var attempts []attempt
	for _, mode := range []struct {
		name  string
		flags []string
	}{{"sftp-mode", nil}, {"legacy", []string{"-O"}}} {
		for _, target := range []struct{ name, path, want string }{
			{"dotdot", up + "1/../../../tmp/x", ""},
			{"absolute elsewhere", "/etc/passwd", ""},
			{"uploads root", up, ""},
			{"ready image", up + "3", ""},
			{"unknown image", up + "9/x", ""},
			{"not an id", up + "01/x", ""},
			{"symlinked dir", up + "1/evil/x", ""},
			{"symlink", up + "1/lnk", ""},
		} {
			flags, target := mode.flags, target
			attempts = append(attempts, attempt{mode.name + " " + target.name, func() result {
				return e.scp("upload", flags, target.path, src)
			}, target.want})
		}
		flags := mode.flags
		attempts = append(attempts,
			attempt{mode.name + " recursive into symlinked dir", func() result {
				return e.scp("upload", append([]string{"-r"}, flags...), up+"1/evil", tree)
			}, ""},
			attempt{mode.name + " user key", func() result {
				return e.scp("alice", flags, up+"1", src)
			}, ""},
		)
	}
	sftpBatch := func(who, batch string) func() result {
		return func() result { return e.sftp(who, batch+"\n") }
	}
	attempts = append(attempts,
		attempt{"sftp symlink", sftpBatch("upload", "symlink /etc/passwd "+up+"1/s"), ""},
		attempt{"sftp relative symlink", sftpBatch("upload", "cd "+up+"1\nsymlink ../../../../etc s"), ""},
		attempt{"sftp hard link", sftpBatch("upload", "ln "+up+"1/existing "+up+"2/hard"), ""},
		attempt{"sftp rename to another image", sftpBatch("upload", "rename "+up+"1/existing "+up+"2/existing"), ""},
		attempt{"sftp rename out", sftpBatch("upload", "rename "+up+"1/existing /tmp/existing"), ""},
		attempt{"sftp put through symlinked dir", sftpBatch("upload", "cd "+up+"1\nput "+src+" evil/x"), ""},
		attempt{"sftp put onto symlink", sftpBatch("upload", "put "+src+" "+up+"1/lnk"), ""},
		attempt{"sftp mkdir through symlink", sftpBatch("upload", "mkdir "+up+"1/evil/d"), ""},
		attempt{"sftp chmod through symlink", sftpBatch("upload", "chmod 777 "+up+"1/lnk"), ""},
		attempt{"sftp remove the image dir", sftpBatch("upload", "rmdir "+up+"1"), ""},
		attempt{"sftp mkdir outside", sftpBatch("upload", "mkdir /draupnir/x"), ""},
		attempt{"sftp user put", sftpBatch("alice", "put "+src+" "+up+"1/x"), ""},
		attempt{"sftp user mkdir", sftpBatch("alice", "mkdir "+up+"1/x"), ""},
		attempt{"sftp ready image", sftpBatch("upload", "put "+src+" "+up+"3/x"), ""},
	)
	// Raw legacy scp records with hostile names: the server must refuse the
	// record itself.
	for _, rec := range []struct{ flags, stream string }{
		{"-t", "C0644 4 ../x\nabc\n\x00"},
		{"-t", "C0644 4 a/b\nabc\n\x00"},
		{"-t", "C0644 4 .\nabc\n\x00"},
		{"-t", "C0644 4 \nabc\n\x00"},
		{"-t", "C0644 4 /etc/x\nabc\n\x00"},
		{"-r -t", "D0755 0 ..\nC0644 4 x\nabc\n\x00E\n"},
		{"-r -t", "D0755 0 evil\n"},
		{"-t", "C0644 4 lnk\nabc\n\x00"},
		{"-t", "D0755 0 d\nE\n"},
	} {
		rec := rec
		attempts = append(attempts, attempt{fmt.Sprintf("raw scp %q", rec.stream), func() result {
			return e.ssh("upload", strings.NewReader(rec.stream), nil, "scp "+rec.flags+" "+up+"1")
		}, "\x01draupnir: "})
	}
	attempts = append(attempts, attempt{"scp download", func() result {
		return e.ssh("upload", strings.NewReader("\x00"), nil, "scp -f "+up+"1/existing")
	}, "draupnir: downloads are not supported"})

	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			r := a.run()
			if r.code == 0 {
				t.Errorf("succeeded; stdout %q stderr %q", r.stdout, r.stderr)
			}
			if a.want != "" && !strings.Contains(r.stdout+r.stderr, a.want) {
				t.Errorf("output lacks %q; stdout %q stderr %q", a.want, r.stdout, r.stderr)
			}
			if got := listAll(t, outside); !slices.Equal(got, []string{"target"}) {
				t.Fatalf("outside directory now holds %v", got)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "target")); string(b) != "precious" {
				t.Fatalf("file outside was changed to %q", b)
			}
			if got := listAll(t, e.uploads.base); !slices.Equal(got, before) {
				t.Fatalf("uploads now hold %v, want %v", got, before)
			}
		})
	}
}

func TestAuthAndForwarding(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name     string
		who      string
		extra    []string
		args     []string
		code     int
		stdout   string
		stderr   string
		noRunner bool // the command must not have run
	}{
		{"unknown key", "stranger", nil, []string{"hello"}, 255, "", "Permission denied (publickey)", true},
		// OpenSSH closes the channel itself when a forced PTY (-tt) is
		// refused (exit 255), but the server runs the command regardless.
		{"pty refused, command runs", "upload", []string{"-tt"}, []string{"hello"}, -1, "", "PTY allocation request failed", false},
		{"remote forwarding refused", "upload", []string{"-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"}, []string{"hello"}, 255, "", "remote port forwarding failed", true},
		{"stdio forwarding refused", "upload", []string{"-W", "127.0.0.1:22"}, nil, 255, "", "stdio forwarding failed", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.commands.reset()
			r := e.ssh(tt.who, nil, tt.extra, tt.args...)
			if !tt.noRunner {
				waitFor(t, func() bool {
					e.commands.mu.Lock()
					defer e.commands.mu.Unlock()
					return len(e.commands.calls) > 0
				})
			}
			if r.code != tt.code && tt.code != -1 {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", r.code, tt.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stdout %q (want %q), stderr %q (want %q)", r.stdout, tt.stdout, r.stderr, tt.stderr)
			}
			if ran := e.commands.last().args != nil; ran == tt.noRunner {
				t.Errorf("command ran: %v, want %v", ran, !tt.noRunner)
			}
		})
	}
}

func TestCommands(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name    string
		who     string
		command []string // as given to ssh, which joins them with spaces
		code    int
		args    []string
		user    string
		stderr  string
	}{
		{"user command", "alice", []string{"instances", "list"}, 0, []string{"instances", "list"}, "alice@example.com", ""},
		{"quoted words", "upload", []string{"images", "create", "--script", `'SELECT 1; -- a "b"'`, `"x y"`, `z\ w`}, 0, []string{"images", "create", "--script", `SELECT 1; -- a "b"`, "x y", "z w"}, "upload", ""},
		{"exit status passes through", "alice", []string{"fail"}, 3, []string{"fail"}, "alice@example.com", "draupnir: failing as asked"},
		{"unbalanced quote", "alice", []string{"instances", `"list`}, 2, nil, "", "draupnir: unbalanced double quote in command line"},
		{"shell syntax", "alice", []string{"instances", "list", "|", "head"}, 2, nil, "", "draupnir: shell syntax | is not supported"},
		{"upload with a user key is a normal command", "alice", []string{"images", "upload", "x"}, 0, []string{"images", "upload", "x"}, "alice@example.com", ""},
		{"a semicolon is a usage error", "alice", []string{"instances", "list;", "id"}, 2, nil, "", "draupnir: shell syntax ; is not supported"},
		{"a substitution is a usage error", "upload", []string{"env", "$(id)"}, 2, nil, "", "draupnir: shell syntax $ is not supported"},
		{"no command", "alice", nil, 0, nil, "alice@example.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.commands.reset()
			r := e.ssh(tt.who, nil, []string{"-T"}, tt.command...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q, want %q", r.stderr, tt.stderr)
			}
			c := e.commands.last()
			if tt.user == "" {
				if c.args != nil || c.p.Name != "" {
					t.Errorf("runner called with %q", c.args)
				}
				return
			}
			if c.p.Name != tt.user || !slices.Equal(c.args, tt.args) || (tt.args == nil) != (c.args == nil) {
				t.Errorf("runner got %q as %q, want %q as %q", c.args, c.p.Name, tt.args, tt.user)
			}
			if c.p.Upload != (tt.user == "upload") {
				t.Errorf("principal %+v", c.p)
			}
		})
	}
}

func TestNoCommandRunner(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Commands = nil })
	r := e.ssh("alice", nil, nil, "instances", "list")
	if r.code == 0 || strings.TrimSpace(r.stderr) != `draupnir: unknown command "instances"` {
		t.Errorf("exit %d stderr %q", r.code, r.stderr)
	}
}

func TestHostKeyPersists(t *testing.T) {
	e := newEnv(t)
	first := e.srv.PublicKey()
	fi, err := os.Stat(e.hostKey)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("host key mode %v, want 0600", fi.Mode().Perm())
	}
	if first.Type() != gossh.KeyAlgoED25519 {
		t.Errorf("host key type %s", first.Type())
	}
	// A restarted server (same options, new port) presents the same key:
	// known_hosts written for the first one still verifies it.
	oldKnown, err := os.ReadFile(e.knownHosts)
	if err != nil {
		t.Fatal(err)
	}
	e.start(e.srv.opts)
	if !bytes.Equal(e.srv.PublicKey().Marshal(), first.Marshal()) {
		t.Fatalf("host key changed across restart: %s vs %s", gossh.FingerprintSHA256(e.srv.PublicKey()), gossh.FingerprintSHA256(first))
	}
	_, rest, _ := strings.Cut(string(oldKnown), " ")
	mustWrite(t, e.knownHosts, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", e.port, rest)))
	if r := e.ssh("upload", nil, nil, "hello"); r.code != 0 {
		t.Errorf("ssh to restarted server: exit %d: %s", r.code, r.stderr)
	}
	// A key readable by others is refused.
	if err := os.Chmod(e.hostKey, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.srv.opts); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("New with a 0644 host key: %v", err)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

// stallingSigner offers its key (the server answers the query) but does not
// sign until release is closed.
type stallingSigner struct {
	gossh.Signer
	release chan struct{}
}

func (s stallingSigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	<-s.release
	return nil, errors.New("released")
}
