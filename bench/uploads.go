package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/draupnir-db/draupnir"
)

// cipher is the one both servers are measured with: the fastest OpenSSH
// offers on x86 with AES-NI (FIELD-NOTES: chacha20 is ~25% slower for both).
const cipher = "aes128-gcm@openssh.com"

// sshKeys are the files the SSH side of a run needs.
type sshKeys struct {
	client  string // private key of the upload principal, also root's key for OpenSSH
	authKey string // its public key, as authorized_keys
}

func makeSSHKeys(ctx context.Context, dir string) (*sshKeys, error) {
	k := &sshKeys{client: filepath.Join(dir, "client_ed25519")}
	if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", k.client).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ssh-keygen: %w: %s", err, tail(out))
	}
	k.authKey = k.client + ".pub"
	return k, nil
}

// openSSHd is the reference: OpenSSH's sshd on a spare loopback port with a
// temporary configuration.
type openSSHd struct {
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

func startOpenSSHd(ctx context.Context, e *env, undo *cleanups) (*openSSHd, error) {
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/sshd"); serr != nil {
			return nil, fmt.Errorf("OpenSSH's sshd is missing (apt-get install openssh-server): %w", err)
		}
		sshd = "/usr/sbin/sshd"
	}
	dir := filepath.Join(e.work, "opensshd")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ssh-keygen: %w: %s", err, tail(out))
	}
	// sshd insists on its privilege separation directory.
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/run/sshd", 0o755); err != nil {
			return nil, err
		}
		undo.push(func(context.Context) error { return os.Remove("/run/sshd") })
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile none
AuthorizedKeysFile %s
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
`, port, hostKey, e.keys.authKey)), 0o600); err != nil {
		return nil, err
	}
	s := &openSSHd{port: port, cmd: exec.Command(sshd, "-D", "-e", "-f", conf)}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	undo.push(func(context.Context) error {
		// The whole group (per-connection children too); it keeps no state
		// worth a clean exit.
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-s.exited:
			return nil
		case <-time.After(10 * time.Second):
			return fmt.Errorf("sshd (pid %d) did not exit on SIGKILL", s.cmd.Process.Pid)
		}
	})
	if err := waitListening(ctx, port, s.exited); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "log"))
		return nil, fmt.Errorf("sshd: %w: %s", err, tail(b))
	}
	return s, nil
}

func waitListening(ctx context.Context, port int, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited during start-up")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on port %d: %w", port, err)
		}
	}
}

// sshCmd builds an OpenSSH client command (ssh or scp) to 127.0.0.1:port as
// login, with the bench key and cipher, trusting whatever host key it meets
// (both servers are ours, on loopback).
func (e *env) sshCmd(ctx context.Context, prog string, port int, args ...string) *exec.Cmd {
	portFlag := "-p"
	if prog == "scp" {
		portFlag = "-P"
	}
	base := []string{"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-F", "/dev/null",
		"-c", cipher, "-i", e.keys.client, portFlag, strconv.Itoa(port)}
	return exec.CommandContext(ctx, prog, append(base, args...)...)
}

// runTimed runs cmd (stdin from the file in, if any) and returns how long it
// took.
func runTimed(cmd *exec.Cmd, in string) (time.Duration, error) {
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return d, fmt.Errorf("%v: %w: %s", cmd.Args, err, out.String())
	}
	return d, nil
}

// uploads measures the SSH door's uploads against OpenSSH's sshd with the
// same client, cipher, file and target filesystem, alternating between the
// two so that drift hits both alike.
func (e *env) uploads(ctx context.Context) error {
	var undo cleanups
	// A closure: a deferred method value would copy the empty slice now.
	defer func() { undo.run(context.WithoutCancel(ctx), e.log) }()
	var err error
	if e.openssh, err = startOpenSSHd(ctx, e, &undo); err != nil {
		return err
	}
	// One tar holding the WAL too, so that a streamed upload can be
	// finalised.
	backup, err := e.src.baseBackup(ctx, "upload", "fetch")
	if err != nil {
		return err
	}
	undo.push(func(context.Context) error { return os.RemoveAll(backup) })
	file := filepath.Join(backup, "base.tar")
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	size := float64(fi.Size())
	ref := filepath.Join(e.mnt, "opensshd-target")
	if err := os.Mkdir(ref, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(ref)

	type mode struct {
		key, name, goal string
		ours            func(id int64) *exec.Cmd
		theirs          func() *exec.Cmd
		stdin           bool
	}
	target := func(id int64) string {
		return "upload@127.0.0.1:/draupnir/image_uploads/" + strconv.FormatInt(id, 10) + "/"
	}
	modes := []mode{
		{"scp_sftp", "upload by scp (SFTP mode)", "≥ 0.9× OpenSSH sshd, same client and cipher",
			func(id int64) *exec.Cmd { return e.sshCmd(ctx, "scp", e.srv.sshPort, file, target(id)) },
			func() *exec.Cmd { return e.sshCmd(ctx, "scp", e.openssh.port, file, "root@127.0.0.1:"+ref+"/") }, false},
		{"scp_legacy", "upload by scp -O", "≥ 0.9× OpenSSH sshd, same client and cipher",
			func(id int64) *exec.Cmd { return e.sshCmd(ctx, "scp", e.srv.sshPort, "-O", file, target(id)) },
			func() *exec.Cmd { return e.sshCmd(ctx, "scp", e.openssh.port, "-O", file, "root@127.0.0.1:"+ref+"/") }, false},
		{"stream", "streaming upload: ssh host images upload N < base.tar", "≥ 0.9× ssh sshd tar -x < base.tar",
			func(id int64) *exec.Cmd {
				return e.sshCmd(ctx, "ssh", e.srv.sshPort, "upload@127.0.0.1", "images", "upload", strconv.FormatInt(id, 10))
			},
			func() *exec.Cmd {
				return e.sshCmd(ctx, "ssh", e.openssh.port, "root@127.0.0.1", "tar", "-x", "-C", ref)
			}, true},
	}
	var streamedImage int64
	for _, m := range modes {
		for i := 0; i < e.cfg.CompareSamples; i++ {
			in := ""
			if m.stdin {
				in = file
			}
			d, err := runTimed(m.theirs(), in)
			if err != nil {
				return fmt.Errorf("OpenSSH %s: %w", m.name, err)
			}
			e.rep.sample("upload_"+m.key+"_openssh_ms", d)
			if err := emptyDir(ref); err != nil {
				return err
			}

			im, err := e.upload.Images().Create(ctx, draupnir.Principal{}, time.Now(), trivialScript)
			if err != nil {
				return err
			}
			d, err = runTimed(m.ours(im.ID), in)
			if err != nil {
				e.upload.Images().Destroy(context.WithoutCancel(ctx), draupnir.Principal{}, im.ID)
				return fmt.Errorf("draupnir %s: %w\nserver log: %s", m.name, err, e.srv.logTail())
			}
			e.rep.sample("upload_"+m.key+"_draupnir_ms", d)
			if m.key == "stream" && streamedImage == 0 {
				streamedImage = im.ID // finalised below
				continue
			}
			if err := e.upload.Images().Destroy(ctx, draupnir.Principal{}, im.ID); err != nil {
				return err
			}
		}
		ours := Summarize(e.rep.Samples["upload_"+m.key+"_draupnir_ms"])
		theirs := Summarize(e.rep.Samples["upload_"+m.key+"_openssh_ms"])
		rate := func(msv float64) float64 { return size / (1 << 20) / (msv / 1000) }
		ratio := theirs.P50 / ours.P50 // throughput ratio
		e.rep.Values["upload_"+m.key+"_ratio"] = ratio
		e.rep.add(Figure{
			Name:     fmt.Sprintf("%s, %s, -c %s, n=%d", m.name, fmtBytes(size), cipher, ours.N),
			Goal:     m.goal,
			Measured: fmt.Sprintf("draupnir %.0f MiB/s (%s), OpenSSH %.0f MiB/s (%s)", rate(ours.P50), fmtMS(ours.P50), rate(theirs.P50), fmtMS(theirs.P50)),
			Ratio:    fmt.Sprintf("%.2f×", ratio),
			Status:   verdict(ratio >= 0.9),
		})
	}

	// Finalise after a streaming upload: the data is already extracted.
	if streamedImage != 0 {
		t0 := time.Now()
		done, err := e.upload.Images().Finalise(ctx, draupnir.Principal{}, streamedImage)
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("finalising the streamed image %d: %w", streamedImage, err)
		}
		if !done.Ready() {
			return fmt.Errorf("streamed image %d is %s after done: %s", streamedImage, done.State, done.Error)
		}
		e.rep.sample("finalise_after_stream_ms", d)
		e.rep.add(Figure{
			Name:     fmt.Sprintf("finalise after a streaming upload (%s), trivial script", fmtBytes(size)),
			Goal:     "a few seconds",
			Measured: fmtMS(ms(d)),
			Status:   Info,
		})
		if err := e.upload.Images().Destroy(ctx, draupnir.Principal{}, streamedImage); err != nil {
			return err
		}
	}
	return nil
}

// emptyDir removes everything inside dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if err := os.RemoveAll(filepath.Join(dir, ent.Name())); err != nil {
			return err
		}
	}
	return nil
}
