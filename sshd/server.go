// Package sshd is Draupnir's SSH door: an embedded SSH server (gliderlabs/ssh)
// that authenticates clients by public key only and lets the upload principal
// deliver base backups into an image's upload by SFTP (and OpenSSH's default
// scp) or by legacy scp (scp -O), while any other command line, the streamed
// "images upload <id>" included, runs through the shared CLI command tree as
// the authenticated principal. SSH clients see a virtual namespace,
// /draupnir/image_uploads/<id>[/…], and nothing of the real filesystem: the
// door maps it onto the images' uploads (draupnir.Upload), which own the
// files, and only speaks the protocols. In a cluster, the other nodes sign in
// with their registered host keys (WithNodes) as node principals, which may
// run the node protocol (NodeCommand, to ship images) and nothing else; no
// other principal may run it. There are no PTYs, no forwarding of any kind
// and no shell.
package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/draupnir-db/draupnir"
)

// Keys maps a verified public key to a principal (KindUnauthorized if unknown).
type Keys interface {
	PrincipalForKey(ctx context.Context, key gossh.PublicKey) (draupnir.Principal, error)
}

// CommandRunner runs a command line (the shared CLI command tree) as
// principal p and returns its exit status. args is nil for a plain `ssh host`.
type CommandRunner func(ctx context.Context, p draupnir.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int

// Options configure a Server.
type Options struct {
	Addr string // listen address for ListenAndServe, e.g. ":2222"
	// HostKeyPath is the server's ed25519 host key (OpenSSH PEM format); it
	// is created, 0600, if missing, and then kept so that clients'
	// known_hosts stay valid.
	HostKeyPath string
	Uploads     draupnir.Uploads
	Keys        Keys
	Commands    CommandRunner // nil: other commands are refused
	// Node runs the node protocol for principals that are nodes (see
	// WithNodes); nil: nodes are refused.
	Node NodeRunner

	IdleTimeout time.Duration // close a connection idle this long; 0: never
	MaxTimeout  time.Duration // close any connection after this long; 0: never
	// MaxConnections is how many authenticated connections may be open at
	// once (default 64); the caps on handshakes, per source, per principal
	// and the room reserved for the upload principal derive from it (see
	// limitsFor).
	MaxConnections   int
	HandshakeTimeout time.Duration // to finish key exchange and authentication; default 30s
	Log              *slog.Logger  // default slog.Default()
}

// Defaults for zero Options fields.
const (
	defaultMaxConnections   = 64
	defaultHandshakeTimeout = 30 * time.Second
	// maxSessionsPerConn matches OpenSSH's MaxSessions default.
	maxSessionsPerConn = 10
)

// ErrServerClosed is returned by Serve and ListenAndServe after Shutdown.
var ErrServerClosed = ssh.ErrServerClosed

// Server is the SSH server. Create it with New.
type Server struct {
	opts   Options
	log    *slog.Logger
	signer gossh.Signer
	srv    *ssh.Server
	lim    *limiter
}

// ciphers offers AES-GCM first: it is markedly faster than
// chacha20-poly1305 in Go on machines with AES instructions.
var ciphers = []string{
	gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305,
	gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR,
}

// ctxKeySessions holds a connection's *atomic.Int32 count of open sessions.
type ctxKey int

const ctxKeySessions ctxKey = 1

// ctxKeySlot holds a connection's *slot in the limiter.
const ctxKeySlot ctxKey = 2

// New checks opts, loads (or creates) the host key and returns a server that
// is not yet listening.
func New(opts Options) (*Server, error) {
	if opts.Uploads == nil || opts.Keys == nil {
		return nil, errors.New("sshd: Options.Uploads and Options.Keys are required")
	}
	if opts.HostKeyPath == "" {
		return nil, errors.New("sshd: Options.HostKeyPath is required")
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = defaultMaxConnections
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	signer, err := loadOrCreateHostKey(opts.HostKeyPath)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Log, signer: signer, lim: newLimiter(limitsFor(opts.MaxConnections))}
	hostSigner, ok := signer.(ssh.Signer)
	if !ok {
		return nil, errors.New("sshd: host key is not a signer")
	}
	s.srv = &ssh.Server{
		Addr:             opts.Addr,
		Handler:          s.handleSession,
		HostSigners:      []ssh.Signer{hostSigner},
		Version:          "Draupnir",
		PublicKeyHandler: s.authKey,
		// Refusing the PTY still runs the command (`ssh -tt` prints
		// "PTY allocation request failed").
		PtyCallback:  func(ssh.Context, ssh.Pty) bool { return false },
		ConnCallback: s.acceptConn,
		// nil forwarding callbacks deny; no tcpip-forward request handler
		// and no direct-tcpip channel handler exist either.
		LocalPortForwardingCallback:   nil,
		ReversePortForwardingCallback: nil,
		ServerConfigCallback: func(ctx ssh.Context) *gossh.ServerConfig {
			cfg := &gossh.ServerConfig{}
			cfg.Ciphers = ciphers
			cfg.VerifiedPublicKeyCallback = func(_ gossh.ConnMetadata, key gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
				return perms, s.verified(ctx, key)
			}
			return cfg
		},
		ConnectionFailedCallback: func(c net.Conn, err error) {
			s.log.Debug("ssh connection failed", "remote", c.RemoteAddr().String(), "err", err)
		},
		IdleTimeout:       opts.IdleTimeout,
		MaxTimeout:        opts.MaxTimeout,
		ChannelHandlers:   map[string]ssh.ChannelHandler{"session": s.sessionChannel},
		RequestHandlers:   map[string]ssh.RequestHandler{},
		SubsystemHandlers: map[string]ssh.SubsystemHandler{"sftp": s.handleSFTP},
	}
	return s, nil
}

// PublicKey returns the server's host key (for known_hosts lines).
func (s *Server) PublicKey() gossh.PublicKey { return s.signer.PublicKey() }

// Serve accepts connections on l until Shutdown; it then returns
// ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.log.Info("ssh server listening", "addr", l.Addr().String(), "host_key", gossh.FingerprintSHA256(s.signer.PublicKey()))
	return s.srv.Serve(l)
}

// ListenAndServe listens on Options.Addr and serves.
func (s *Server) ListenAndServe() error {
	addr := s.opts.Addr
	if addr == "" {
		addr = ":2222"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("ssh server: %w", err)
	}
	return s.Serve(l)
}

// Shutdown stops listening and waits for open connections to end until ctx
// is done; then it closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}

// acceptConn gives a new connection a handshake slot (or closes it at once)
// and starts its handshake timeout.
func (s *Server) acceptConn(ctx ssh.Context, c net.Conn) net.Conn {
	sl, victim, err := s.lim.admit(sourceKey(c.RemoteAddr()), c)
	if err != nil {
		s.refused(c.RemoteAddr(), err)
		return nil // the caller closes c
	}
	if victim != nil {
		s.log.Debug("ssh handshake closed to make room", "remote", victim.RemoteAddr().String())
		victim.Close()
	}
	ctx.SetValue(ctxKeySlot, sl)
	lc := &limitedConn{Conn: c, release: func() { s.lim.release(sl) }}
	lc.timer = time.AfterFunc(s.opts.HandshakeTimeout, func() {
		if s.lim.handshaking(sl) {
			s.log.Info("ssh handshake timed out", "remote", c.RemoteAddr().String())
			c.Close()
		}
	})
	ctx.SetValue(ctxKeySessions, new(atomic.Int32))
	return lc
}

// verified is called once a client has proved it holds key: the connection
// then counts against the key's principal, if its share and the room allow.
// A refusal fails the authentication with a banner that says why.
func (s *Server) verified(ctx ssh.Context, key gossh.PublicKey) error {
	p, err := s.opts.Keys.PrincipalForKey(ctx, key)
	if err != nil {
		return err
	}
	sl, ok := ctx.Value(ctxKeySlot).(*slot)
	if !ok {
		return errors.New("sshd: connection has no slot")
	}
	if err := s.lim.authenticate(sl, p); err != nil {
		s.refused(ctx.RemoteAddr(), err, "principal", p.Name)
		return &gossh.BannerError{Err: err, Message: "draupnir: " + err.Error() + "\r\n"}
	}
	// The session's identity comes from this key (also what
	// PublicKeyHandler saw last: x/crypto re-queries the key it verifies).
	ctx.SetValue(ssh.ContextKeyPublicKey, key)
	return nil
}

// refused logs a refused connection, at most once per warnEvery at Warn
// (with the count since), so that a flood does not fill the log.
func (s *Server) refused(remote net.Addr, err error, attrs ...any) {
	attrs = append([]any{"remote", remote.String(), "err", err}, attrs...)
	if n, ok := s.lim.noteRefusal(); ok {
		s.log.Warn("ssh connection refused", append(attrs, "refused", n)...)
		return
	}
	s.log.Debug("ssh connection refused", attrs...)
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	timer   *time.Timer
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.timer.Stop()
		c.release()
	})
	return err
}

// authKey only checks that the key is known. Who the client is gets decided
// again from the session's verified key (CVE-2024-45337: the callback also
// sees keys the client merely offers).
func (s *Server) authKey(ctx ssh.Context, key ssh.PublicKey) bool {
	_, err := s.opts.Keys.PrincipalForKey(ctx, key)
	if err != nil {
		if draupnir.KindOf(err) == draupnir.KindUnauthorized {
			s.log.Debug("ssh key refused", "remote", ctx.RemoteAddr().String(), "user", ctx.User(), "key", gossh.FingerprintSHA256(key))
		} else {
			s.log.Error("ssh key lookup failed", "remote", ctx.RemoteAddr().String(), "err", err)
		}
		return false
	}
	return true
}

// sessionChannel limits sessions per connection and refuses agent and X11
// forwarding requests (gliderlabs would acknowledge agent requests).
func (s *Server) sessionChannel(srv *ssh.Server, conn *gossh.ServerConn, newChan gossh.NewChannel, ctx ssh.Context) {
	if n, ok := ctx.Value(ctxKeySessions).(*atomic.Int32); ok {
		if n.Add(1) > maxSessionsPerConn {
			n.Add(-1)
			newChan.Reject(gossh.ResourceShortage, "too many sessions on one connection")
			return
		}
		defer n.Add(-1)
	}
	ssh.DefaultSessionHandler(srv, conn, restrictedChannel{newChan}, ctx)
}

type restrictedChannel struct{ gossh.NewChannel }

func (c restrictedChannel) Accept() (gossh.Channel, <-chan *gossh.Request, error) {
	ch, reqs, err := c.NewChannel.Accept()
	if err != nil {
		return ch, reqs, err
	}
	out := make(chan *gossh.Request)
	go func() {
		defer close(out)
		for r := range reqs {
			switch r.Type {
			case "auth-agent-req@openssh.com", "x11-req":
				r.Reply(false, nil)
				continue
			}
			out <- r
		}
	}()
	return ch, out, nil
}

// principal re-derives the session's principal from its verified key; on
// failure it ends the session.
func (s *Server) principal(sess ssh.Session) (draupnir.Principal, bool) {
	key := sess.PublicKey()
	if key == nil {
		fmt.Fprintln(sess.Stderr(), "draupnir: permission denied: no public key")
		sess.Exit(1)
		return draupnir.Principal{}, false
	}
	p, err := s.opts.Keys.PrincipalForKey(sess.Context(), key)
	if err != nil {
		s.log.Warn("ssh session refused", "remote", sess.RemoteAddr().String(), "key", gossh.FingerprintSHA256(key), "err", err)
		fmt.Fprintln(sess.Stderr(), "draupnir: permission denied: this key is not authorised")
		sess.Exit(1)
		return draupnir.Principal{}, false
	}
	return p, true
}

func (s *Server) namespace(sess ssh.Session, p draupnir.Principal) *namespace {
	return newNamespace(sess.Context(), p, s.opts.Uploads, s.log.With("principal", p.Name, "remote", sess.RemoteAddr().String()))
}

// handleSFTP serves the "sftp" subsystem.
func (s *Server) handleSFTP(sess ssh.Session) {
	p, ok := s.principal(sess)
	if !ok {
		return
	}
	if p.Node {
		fmt.Fprintf(sess.Stderr(), "draupnir: permission denied: a node may only speak the node protocol\n")
		sess.Exit(1)
		return
	}
	s.log.Info("ssh sftp session", "principal", p.Name, "remote", sess.RemoteAddr().String())
	ns := s.namespace(sess, p)
	err := serveSFTP(ns, sess, sess.Stderr())
	ns.Close()
	if err != nil {
		s.log.Info("ssh sftp session ended with an error", "principal", p.Name, "err", err)
		sess.Exit(1)
		return
	}
	// The exit status must precede the channel's close, or scp fails.
	sess.Exit(0)
}

// handleSession serves exec and shell requests.
func (s *Server) handleSession(sess ssh.Session) {
	p, ok := s.principal(sess)
	if !ok {
		return
	}
	sess.Exit(s.run(sess, p))
}

func (s *Server) run(sess ssh.Session, p draupnir.Principal) int {
	args, err := splitCommand(sess.RawCommand())
	if err != nil {
		// A command line that cannot be split is a usage error: exit 2,
		// as the command tree's usage errors do.
		fmt.Fprintf(sess.Stderr(), "draupnir: %v\n", err)
		return exitUsage
	}
	verb := ""
	if len(args) > 0 {
		verb = args[0]
		if len(args) > 1 {
			verb += " " + args[1]
		}
	}
	s.log.Info("ssh command", "principal", p.Name, "node", p.Node, "remote", sess.RemoteAddr().String(), "command", verb)
	if p.Node {
		return s.runNode(sess, p, args)
	}
	if status, refused := s.refuseNodeProtocol(sess, p, args); refused {
		return status
	}
	if len(args) > 0 && args[0] == "scp" {
		return s.runSCP(sess, p, args[1:])
	}
	if s.opts.Commands == nil {
		if len(args) == 0 {
			return s.fail(sess, p, draupnir.Errorf(draupnir.KindInvalid, "no interactive shell; upload with scp or sftp to %s/<image id>", uploadsRoot))
		}
		return s.fail(sess, p, draupnir.Errorf(draupnir.KindInvalid, "unknown command %q", args[0]))
	}
	return s.opts.Commands(sess.Context(), p, args, sess, sess, sess.Stderr())
}

// exitUsage is the exit status of a command line that is wrong, the same
// as the CLI's (cli.ExitUsage).
const exitUsage = 2

// fail prints err as one line on stderr and returns exit status 1.
func (s *Server) fail(sess ssh.Session, p draupnir.Principal, err error) int {
	if draupnir.KindOf(err) == draupnir.KindInternal {
		s.log.Error("ssh command failed", "principal", p.Name, "err", err)
	}
	fmt.Fprintf(sess.Stderr(), "draupnir: %s\n", draupnir.ClientMessage(err))
	return 1
}

// runSCP serves `scp -t` (legacy scp -O uploads).
func (s *Server) runSCP(sess ssh.Session, p draupnir.Principal, args []string) int {
	opts, target, err := parseSCPArgs(args)
	if err != nil {
		// Tell the client in the protocol, which it prints: the scp on
		// the other side waits for a status byte, not for stderr.
		fmt.Fprintf(sess, "\x01draupnir: %s\n", draupnir.ClientMessage(err))
		return 1
	}
	ns := s.namespace(sess, p)
	defer ns.Close()
	status, err := runSCPSink(nsSinkFS{ns}, sess, sess, opts, target)
	if err != nil {
		ns.log.Info("scp upload failed", "target", target, "err", err)
	}
	return status
}
