package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/draupnir-db/draupnir"
)

// People manages the caller's access tokens and registered SSH keys: the
// HTTP client does. SSH sessions have none (a key already says who you
// are), so the commands are draupnir-client commands.
type People interface {
	ListTokens(ctx context.Context) ([]draupnir.Token, error)
	RevokeToken(ctx context.Context, id int64) error
	Logout(ctx context.Context) error
	ListKeys(ctx context.Context) ([]draupnir.Key, error)
	AddKey(ctx context.Context, publicKey string) (draupnir.Key, error)
	RemoveKey(ctx context.Context, id int64) error
}

// people returns the backend's People, or a usage error naming cmd.
func (a *app) people(cmd *cobra.Command) (People, error) {
	p := a.b.People
	if p == nil || a.env.SSH {
		return nil, usagef(cmd, "%s is a draupnir-client command: log in with draupnir-client authenticate, then run it there", cmd.CommandPath())
	}
	return p, nil
}

// peopleGroup is a command group whose every subcommand needs People: the
// gate is on the group, so a new subcommand is gated too.
func (a *app) peopleGroup(use, short string) *cobra.Command {
	cmd := a.group(use, short)
	cmd.Hidden = a.env.SSH
	cmd.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		_, err := a.people(c)
		return err
	}
	return cmd
}

func (a *app) tokensCmd() *cobra.Command {
	cmd := a.peopleGroup("tokens", "List and revoke your access tokens")
	cmd.Long = `Every 'authenticate' issues an access token that stays valid until it
expires or is revoked. List yours, and revoke the ones you no longer use (a
lost laptop, say). 'logout' revokes the one this client uses.`
	cmd.AddCommand(
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List your access tokens",
			Args:    exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				p, _ := a.people(cmd)
				list, err := p.ListTokens(cmd.Context())
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, list)
				}
				if len(list) == 0 {
					_, err := fmt.Fprintln(a.stdout, "No access tokens.")
					return err
				}
				tw := table(a.stdout)
				fmt.Fprintln(tw, "ID\tCURRENT\tCREATED AT\tEXPIRES AT\tLAST USED AT\tDESCRIPTION")
				for _, t := range list {
					cur := ""
					if t.Current {
						cur = "*"
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", t.ID, cur, timeStr(t.CreatedAt), timeStr(t.ExpiresAt),
						timeStr(t.LastUsedAt), dash(t.Description))
				}
				return tw.Flush()
			},
		},
		&cobra.Command{
			Use:   "revoke ID",
			Short: "Revoke your access token ID",
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID(cmd, "token id", args[0])
				if err != nil {
					return err
				}
				p, _ := a.people(cmd)
				if err := p.RevokeToken(cmd.Context(), id); err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stderr, "Revoked token %d.\n", id)
				return err
			},
		},
	)
	return cmd
}

func (a *app) logoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "logout",
		Short:  "Revoke this client's access token and forget it",
		Hidden: a.env.SSH,
		Long: `Revoke the access token this client uses on the server, and remove it from
the configuration file. The token is forgotten locally whatever the server
answers: a token configured on the server (the upload principal's shared
secret, say) cannot be revoked by logging out and stays valid until the
operator changes it. DRAUPNIR_TOKEN cannot be unset for you: unset it too.`,
		Args: exactArgs(0),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			_, err := a.people(cmd)
			return err
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, _ := a.people(cmd)
			from := tokenFrom(a.env)
			if from == "" {
				_, err := fmt.Fprintln(a.stderr, "Not logged in (no DRAUPNIR_TOKEN, no stored token): nothing to do.")
				return err
			}
			// Revoke first, while the client holds the token; forget it
			// whatever the server says.
			revokeErr := p.Logout(cmd.Context())
			forgot, forgetErr := forgetToken(a.env)

			var parts []string
			switch {
			case forgot != "" && forgot == from:
				parts = append(parts, "removed the token from "+forgot)
			case forgot != "":
				parts = append(parts, "removed the stored token from "+forgot)
			}
			fail := false
			switch k := draupnir.KindOf(revokeErr); {
			case revokeErr == nil:
				parts = append(parts, "the server revoked the token")
			case k == draupnir.KindUnauthorized:
				parts = append(parts, "the server had already stopped accepting the token (expired or revoked)")
			case k == draupnir.KindForbidden || k == draupnir.KindConflict || k == draupnir.KindNotFound:
				// 403: the upload principal; 409: a configured user token;
				// 404: a server without revocable tokens.
				parts = append(parts, "the server did not revoke the token: it is configured there (such as the upload "+
					"principal's shared secret) and stays valid until the server's operator changes it")
			default:
				parts = append(parts, "but the token could not be revoked on the server ("+oneLine(revokeErr.Error())+
					"), so it stays valid until it expires or 'tokens revoke' revokes it from another login")
				fail = true
			}
			if from == "DRAUPNIR_TOKEN" {
				parts = append(parts, "unset DRAUPNIR_TOKEN in your shell too")
			}
			msg := "Logged out: " + strings.Join(parts, "; ")
			fmt.Fprintln(a.stderr, msg+".")
			switch {
			case forgetErr != nil:
				return forgetErr
			case fail:
				return &exitError{code: ExitFailure}
			}
			return nil
		},
	}
}

// forgetToken removes the token from the configuration file, keeping the
// URL, and returns the file's path if it held one.
func forgetToken(env Env) (string, error) {
	var cfg Config
	if err := loadConfigFile(env, &cfg); err != nil {
		return "", fmt.Errorf("the stored token could not be removed: %w", err)
	}
	if cfg.Token == "" {
		return "", nil
	}
	cfg.Token = ""
	return storeConfig(env, cfg)
}

func (a *app) keysCmd() *cobra.Command {
	cmd := a.peopleGroup("keys", "Register the SSH keys that act as you on `ssh draupnir`")
	cmd.Long = `Keys you register here authenticate SSH sessions to the server as you:
'ssh draupnir-host instances list' then lists your instances.`
	cmd.AddCommand(
		&cobra.Command{
			Use:   "add [FILE]",
			Short: "Register a public key (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; - reads standard input)",
			Args: func(cmd *cobra.Command, args []string) error {
				if len(args) > 1 {
					return usagef(cmd, "%s takes at most one file", cmd.CommandPath())
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				file := ""
				if len(args) == 1 {
					file = args[0]
				}
				line, from, err := a.readPublicKey(file)
				if err != nil {
					return err
				}
				p, _ := a.people(cmd)
				k, err := p.AddKey(cmd.Context(), line)
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, k)
				}
				_, err = fmt.Fprintf(a.stdout, "Registered %s (%s) from %s.\n", k.Fingerprint, dash(k.Comment), from)
				return err
			},
		},
		&cobra.Command{
			Use:     "list",
			Aliases: []string{"ls"},
			Short:   "List your registered keys",
			Args:    exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				p, _ := a.people(cmd)
				list, err := p.ListKeys(cmd.Context())
				if err != nil {
					return err
				}
				if a.json {
					return writeJSON(a.stdout, list)
				}
				if len(list) == 0 {
					_, err := fmt.Fprintln(a.stdout, "No keys.")
					return err
				}
				tw := table(a.stdout)
				fmt.Fprintln(tw, "FINGERPRINT\tTYPE\tCOMMENT\tADDED AT")
				for _, k := range list {
					typ, _, _ := strings.Cut(k.PublicKey, " ")
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Fingerprint, typ, dash(k.Comment), timeStr(k.CreatedAt))
				}
				return tw.Flush()
			},
		},
		&cobra.Command{
			Use:     "remove FINGERPRINT",
			Aliases: []string{"rm"},
			Short:   "Remove a registered key (by its SHA256:… fingerprint, as 'keys list' prints it)",
			Args:    exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				p, _ := a.people(cmd)
				list, err := p.ListKeys(cmd.Context())
				if err != nil {
					return err
				}
				want := args[0]
				if !strings.HasPrefix(want, "SHA256:") {
					want = "SHA256:" + want
				}
				for _, k := range list {
					if k.Fingerprint == want {
						if err := p.RemoveKey(cmd.Context(), k.ID); err != nil {
							return err
						}
						_, err := fmt.Fprintf(a.stderr, "Removed %s.\n", k.Fingerprint)
						return err
					}
				}
				return fmt.Errorf("you have no registered key %s ('keys list' shows yours)", want)
			},
		},
	)
	return cmd
}

// readPublicKey reads a public key line from file ("-": stdin; "": the
// first default key that exists) and says where it came from.
func (a *app) readPublicKey(file string) (line, from string, err error) {
	read := func(r io.Reader) (string, error) {
		b, err := io.ReadAll(io.LimitReader(r, 16<<10))
		if err != nil {
			return "", err
		}
		s := strings.TrimSpace(string(b))
		if strings.Contains(s, "PRIVATE KEY") {
			return "", errors.New("this is a private key; give the .pub file")
		}
		return s, nil
	}
	switch file {
	case "-":
		line, err = read(a.stdin)
		return line, "standard input", err
	case "":
		home, herr := os.UserHomeDir()
		if herr != nil {
			return "", "", fmt.Errorf("finding your home directory: %w", herr)
		}
		for _, name := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
			path := filepath.Join(home, ".ssh", name)
			if f, oerr := os.Open(path); oerr == nil {
				line, err = read(f)
				f.Close()
				return line, path, err
			}
		}
		return "", "", errors.New("no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; name the public key file")
	}
	f, err := os.Open(file)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	line, err = read(f)
	return line, file, err
}
