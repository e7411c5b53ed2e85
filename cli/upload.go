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

// upload sends files into image id through the SSH door, one
// `images upload N --name NAME` per file, in order; replace empties the
// upload before the first. Every file is checked before any is sent.
func (a *app) upload(ctx context.Context, id int64, files []string, replace bool) error {
	target, err := parseSSHTarget(getenv(a.env)("DRAUPNIR_SSH"), a.env.Host)
	if err != nil {
		return err
	}
	seen := map[string]string{}
	for _, file := range files {
		st, err := os.Stat(file)
		if err != nil {
			return fmt.Errorf("opening the upload: %w", err)
		}
		if st.IsDir() {
			return fmt.Errorf("%s is a directory; upload its tarballs, or copy a data directory with scp -r", file)
		}
		name := filepath.Base(file)
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("%s and %s have the same name, and the upload keeps one file of each name", prev, file)
		}
		seen[name] = file
	}
	for i, file := range files {
		if err := a.uploadFile(ctx, target, id, file, replace && i == 0); err != nil {
			if rest := files[i+1:]; len(rest) > 0 {
				fmt.Fprintf(a.stderr, "%s: not uploaded: %s\n", a.env.name(), strings.Join(rest, ", "))
			}
			return err
		}
	}
	return nil
}

// uploadFile sends one file: ssh runs `images upload N --name NAME` on the
// server with the file as its stdin.
func (a *app) uploadFile(ctx context.Context, target sshTarget, id int64, file string, replace bool) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("opening the upload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening the upload: %w", err)
	}
	bin := a.env.SSHCommand
	if bin == "" {
		bin = "ssh"
	}
	args := []string{
		"-T", // no PTY: the bytes must pass unchanged
		"-p", strconv.Itoa(target.port),
		target.user + "@" + target.host,
		// ssh joins the words with spaces for the server to split again.
		"images", "upload", strconv.FormatInt(id, 10), "--name", ShellQuote(filepath.Base(file)),
	}
	if replace {
		args = append(args, "--replace")
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
