// Package cli is Draupnir's command tree (images, instances, env, new, …),
// shared by the draupnir-client binary, which runs it over the HTTP API, and
// by the SSH server, which runs it in-process as the principal of the
// session's key: one set of commands, help texts, output formats and exit
// codes for both doors.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

// Exit codes of Run.
const (
	ExitOK      = 0
	ExitFailure = 1 // the command failed (server error, I/O error…)
	ExitUsage   = 2 // the command line is wrong
)

// Env describes where the command tree runs.
type Env struct {
	// SSH is true in an SSH session on the server, false in the local
	// draupnir-client. In SSH sessions nothing touches the server's files or
	// environment: `authenticate` is refused, `env` prints a snippet that
	// writes the CA file on the client, scripts come from stdin.
	SSH bool
	// Terminal is true when stderr is a terminal: spinners and progress bars
	// are drawn only then.
	Terminal bool
	// Name is the program name used in messages and help; default
	// "draupnir-client", or "draupnir" in SSH sessions.
	Name string
	// Getenv reads the local environment (DRAUPNIR_URL, DRAUPNIR_TOKEN,
	// DRAUPNIR_SSH); nil means os.Getenv. Unused in SSH sessions.
	Getenv func(string) string
	// ConfigDir and CacheDir override os.UserConfigDir and os.UserCacheDir
	// (for tests). Unused in SSH sessions.
	ConfigDir, CacheDir string
	// SSHCommand is the ssh binary `images upload` runs; default "ssh".
	SSHCommand string
	// Host is the server's host name, for `env` when the server does not name
	// one and for `images upload`; the local CLI takes it from the URL.
	Host string
	// SSHPort and SSHUser complete the ssh command line that help texts and
	// hints show in SSH sessions ("ssh -p SSHPort SSHUser@Host"): the
	// server's configured port and, for the upload principal, "upload".
	// Unused by the local CLI, which reads DRAUPNIR_SSH.
	SSHPort int
	SSHUser string
	// Interactive is true when stdin and stderr are terminals: only then may
	// a command ask a question (SSH sessions never have a terminal).
	Interactive bool
	// Logger receives the details of internal errors, which SSH clients see
	// only as a generic message; nil discards them.
	Logger *slog.Logger
}

func (e *Env) name() string {
	switch {
	case e.Name != "":
		return e.Name
	case e.SSH:
		return "draupnir"
	}
	return "draupnir-client"
}

// usageError is a mistake in the command line: exit 2 with a usage hint.
type usageError struct {
	cmd *cobra.Command
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// exitError ends the command with a code and no further message (the cause
// has been reported already, e.g. by ssh).
type exitError struct{ code int }

func (e *exitError) Error() string { return "exit status " + strconv.Itoa(e.code) }

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// app is the state of one Run: the tree is built per call so that concurrent
// SSH sessions share nothing.
type app struct {
	ctx    context.Context
	b      Backend
	env    Env
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	json   bool
}

// Run runs the command line args (without the program name) against b and
// returns the exit code: 0 on success, 1 when the command failed, 2 for
// usage errors. Errors are reported as one line on stderr.
func Run(ctx context.Context, b Backend, env Env, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// stderr is shared by spinners, progress bars and subprocesses.
	a := &app{ctx: ctx, b: b, env: env, stdin: stdin, stdout: stdout, stderr: &lockedWriter{w: stderr}}
	root := a.root()
	if args == nil {
		args = []string{} // cobra reads os.Args when given nil
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(a.stderr)
	if err := b.check(); err != nil {
		return a.report(root, err)
	}
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	if cmd != nil && cmd.Annotations[annEvalOutput] != "" && !a.json {
		// The output is meant for eval "$(…)", which succeeds on
		// nothing: give it a command that fails, so that
		// `eval "$(… env N)" && psql` stops here.
		fmt.Fprintf(a.stdout, "false # %s %s failed, the reason is on stderr\n", a.env.name(), cmd.Name())
	}
	return a.report(cmd, err)
}

// annEvalOutput marks commands whose standard output is shell code for
// eval: when they fail, Run prints a command that fails instead.
const annEvalOutput = "draupnir/eval-output"

// report prints err as one line (plus a usage hint for usage errors) and
// returns the exit code.
func (a *app) report(cmd *cobra.Command, err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if ue.cmd != nil {
			cmd = ue.cmd
		}
		fmt.Fprintf(a.stderr, "%s: %s\n", a.env.name(), oneLine(ue.msg))
		if cmd != nil {
			use := cmd.UseLine()
			if cmd.HasAvailableSubCommands() {
				use = cmd.CommandPath() + " COMMAND"
			}
			fmt.Fprintf(a.stderr, "Usage: %s\nRun '%s --help' for more.\n", use, cmd.CommandPath())
		}
		return ExitUsage
	}
	msg := err.Error()
	if !a.env.SSH && draupnir.KindOf(err) == draupnir.KindUnauthorized {
		msg = a.unauthorized()
	}
	if a.env.SSH {
		// Internal errors of the core may carry paths and other details that
		// are for the operator, not the client.
		msg = draupnir.ClientMessage(err)
		if draupnir.KindOf(err) == draupnir.KindInternal && a.env.Logger != nil {
			a.env.Logger.ErrorContext(a.ctx, "ssh command failed", "command", cmd.CommandPath(), "err", err)
		}
	}
	fmt.Fprintf(a.stderr, "%s: %s\n", a.env.name(), oneLine(msg))
	return ExitFailure
}

// oneLine keeps an error to one line (a script's error text may have many).
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if strings.ContainsAny(s, "\r\n") {
		s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\r", "")), " ")
	}
	return s
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   a.env.name(),
		Short: "On-demand PostgreSQL databases from anonymised backups",
		Long: `Draupnir hands out PostgreSQL instances made in milliseconds from anonymised
base backups ("images").

Make an instance of the newest image, then connect to it:

  ` + a.env.nameOrSSH() + ` new
  ` + a.evalExample("env N") + `

Everything is also a command of its own: list images and instances, create and
destroy them, print connection settings.`,
		Args:              a.noSubcommand,
		RunE:              a.helpOrUnknown,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
		CompletionOptions: cobra.CompletionOptions{
			DisableDefaultCmd: a.env.SSH, // a script for a shell on the server is of no use
			HiddenDefaultCmd:  false,
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c, msg: err.Error()}
	})
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print the API's JSON documents instead of tables")
	root.AddCommand(
		a.imagesCmd(),
		a.instancesCmd(),
		a.newCmd(),
		a.sourcesCmd(),
		a.envCmd(),
		a.versionCmd(),
		a.tokensCmd(),
		a.keysCmd(),
		a.logoutCmd(),
	)
	if a.b.Nodes != nil {
		root.AddCommand(a.nodesCmd())
	}
	if a.env.SSH {
		root.AddCommand(&cobra.Command{
			Use:                "authenticate",
			Hidden:             true,
			DisableFlagParsing: true,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return usagef(cmd.Root(), "authenticate is a draupnir-client command; over SSH, your key says who you are")
			},
		})
	} else {
		root.AddCommand(a.authenticateCmd())
	}
	return root
}

// nameOrSSH is how a user runs the tree: the program, or the ssh command
// line that reaches this server ("ssh -p 2222 upload@db.example.com"; "HOST"
// stands in for a host the configuration does not name).
func (e *Env) nameOrSSH() string {
	if !e.SSH {
		return e.name()
	}
	t := sshTarget{user: e.SSHUser, host: e.Host, port: e.SSHPort}
	return "ssh " + t.sshArgs()
}

func (a *app) evalExample(cmd string) string {
	return `eval "$(` + a.env.nameOrSSH() + ` ` + cmd + `)" && psql`
}

// noSubcommand rejects arguments that name no subcommand.
func (a *app) noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 || (len(args) >= 1 && args[0] == "help") {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		// cobra defaults this only on its own error path; SuggestionsFor
		// alone would suggest by prefix only.
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return &usageError{cmd: cmd, msg: msg}
}

// helpOrUnknown serves a command group called without a subcommand (help),
// or as `group help [sub]`, the form the original client documents.
func (a *app) helpOrUnknown(cmd *cobra.Command, args []string) error {
	if len(args) >= 2 && args[0] == "help" {
		sub, _, err := cmd.Find(args[1:])
		if err != nil || sub == cmd {
			return usagef(cmd, "unknown help topic %q", strings.Join(args[1:], " "))
		}
		cmd = sub
	}
	// As cobra's help command does: the flag is added lazily, and its line
	// belongs in the text.
	cmd.InitDefaultHelpFlag()
	return cmd.Help()
}

// group returns a command that only holds subcommands.
func (a *app) group(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  a.noSubcommand,
		RunE:  a.helpOrUnknown,
	}
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			// The path without the program: the message is already
			// prefixed with its name.
			path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
			return usagef(cmd, "%s takes %d argument%s, got %d", path, n, plural(n), len(args))
		}
		return nil
	}
}

// maxArgs is cobra.MaximumNArgs with a usage error.
func maxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
			return usagef(cmd, "%s takes at most %d argument%s, got %d", path, n, plural(n), len(args))
		}
		return nil
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// parseID parses a positive integer id.
func parseID(cmd *cobra.Command, what, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef(cmd, "%s must be a positive integer, not %q", what, s)
	}
	return id, nil
}
