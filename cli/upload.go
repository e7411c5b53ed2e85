package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/draupnir-db/draupnir/internal/countio"
)

// DefaultSSHPort is the port of Draupnir's SSH door unless DRAUPNIR_SSH
// names another.
const DefaultSSHPort = 2222

// sshTarget is where `images upload` sends the bytes.
type sshTarget struct {
	user, host string
	port       int
}

// parseSSHTarget parses [USER@]HOST[:PORT] (IPv6 hosts in brackets), with
// defaults for the parts left out.
func parseSSHTarget(s, defaultHost string) (sshTarget, error) {
	t := sshTarget{user: "upload", host: defaultHost, port: DefaultSSHPort}
	if s == "" {
		if t.host == "" {
			return t, errors.New("no SSH host: set DRAUPNIR_SSH to [USER@]HOST[:PORT]")
		}
		return t, nil
	}
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		t.user, s = s[:i], s[i+1:]
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		port, err := strconv.Atoi(p)
		if err != nil || port <= 0 || port > 65535 {
			return t, fmt.Errorf("DRAUPNIR_SSH: bad port %q", p)
		}
		t.host, t.port = h, port
	} else if s != "" {
		t.host = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	}
	// ssh would take a leading '-' as an option: refuse rather than quote.
	if t.host == "" || t.user == "" || strings.HasPrefix(t.host, "-") || strings.HasPrefix(t.user, "-") ||
		strings.ContainsAny(t.host+t.user, " \t\r\n@") {
		return t, fmt.Errorf("DRAUPNIR_SSH: %q is not [USER@]HOST[:PORT]", s)
	}
	return t, nil
}

// upload streams file into image id through the SSH door: ssh runs
// `images upload N` on the server with the file as its stdin.
func (a *app) upload(ctx context.Context, id int64, file string) error {
	target, err := parseSSHTarget(getenv(a.env)("DRAUPNIR_SSH"), a.env.Host)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("opening the upload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening the upload: %w", err)
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory; upload a tarball, or copy the directory with scp -r", file)
	}
	bin := a.env.SSHCommand
	if bin == "" {
		bin = "ssh"
	}
	args := []string{
		"-T", // no PTY: the bytes must pass unchanged
		"-p", strconv.Itoa(target.port),
		target.user + "@" + target.host,
		"images", "upload", strconv.FormatInt(id, 10),
	}
	if a.json {
		args = append(args, "--json")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = a.stdout
	cmd.Stderr = a.stderr
	if a.env.Terminal {
		pr := countio.NewReader(f)
		cmd.Stdin = pr
		stop := a.progress(pr, st.Size(), filepath.Base(file))
		err = cmd.Run()
		stop()
	} else {
		cmd.Stdin = f // an *os.File goes to ssh directly, without a copy
		err = cmd.Run()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		// ssh or the server has said why on stderr already.
		return &exitError{code: ExitFailure}
	}
	if err != nil {
		return fmt.Errorf("running %s: %w", bin, err)
	}
	return nil
}
