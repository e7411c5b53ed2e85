package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// DefaultURL is the server the client talks to when nothing says otherwise.
const DefaultURL = "http://localhost:8080"

// Config is the local client's configuration: where the server is and the
// token that authenticates the user.
type Config struct {
	URL   string `json:"url"`
	Token string `json:"token,omitempty"`
}

// configPath returns the file `authenticate` writes.
func configPath(env Env) (string, error) {
	dir := env.ConfigDir
	if dir == "" {
		d, err := os.UserConfigDir()
		if err != nil {
			return "", fmt.Errorf("finding the configuration directory: %w", err)
		}
		dir = d
	}
	return filepath.Join(dir, "draupnir", "config.json"), nil
}

func getenv(env Env) func(string) string {
	if env.Getenv != nil {
		return env.Getenv
	}
	return os.Getenv
}

// LoadConfig returns the local client's configuration: DRAUPNIR_URL and
// DRAUPNIR_TOKEN from the environment, else what `authenticate` stored, else
// DefaultURL and no token. If the stored file cannot be read, the error says
// why and the returned Config still holds the environment and defaults, so
// that help and `authenticate` keep working.
func LoadConfig(env Env) (Config, error) {
	var cfg Config
	fileErr := loadConfigFile(env, &cfg)
	if fileErr != nil {
		cfg = Config{}
	}
	get := getenv(env)
	if v := get("DRAUPNIR_URL"); v != "" {
		cfg.URL = v
	}
	if v := get("DRAUPNIR_TOKEN"); v != "" {
		cfg.Token = v
	}
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	return cfg, fileErr
}

func loadConfigFile(env Env, cfg *Config) error {
	path, err := configPath(env)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("reading the client configuration: %w", err)
	}
	if err := json.Unmarshal(b, cfg); err != nil {
		return fmt.Errorf("%s is not valid JSON (run authenticate again): %w", path, err)
	}
	return nil
}

// tokenFrom says where LoadConfig(env) takes the token from: "DRAUPNIR_TOKEN",
// the configuration file's path, or "" when neither has one.
func tokenFrom(env Env) string {
	if getenv(env)("DRAUPNIR_TOKEN") != "" {
		return "DRAUPNIR_TOKEN"
	}
	var cfg Config
	if loadConfigFile(env, &cfg) == nil && cfg.Token != "" {
		if path, err := configPath(env); err == nil {
			return path
		}
	}
	return ""
}

// unauthorized is the CLI's word for the server's 401: how to log in, or
// which token the server refused and how to replace it.
func (a *app) unauthorized() string {
	cfg, _ := LoadConfig(a.env) // what main gave the client
	name := a.env.name()
	switch from := tokenFrom(a.env); from {
	case "":
		return fmt.Sprintf("not logged in: set DRAUPNIR_TOKEN or run %s authenticate", name)
	case "DRAUPNIR_TOKEN":
		return fmt.Sprintf("the server at %s does not accept the access token in DRAUPNIR_TOKEN (mistyped, expired or revoked): "+
			"set DRAUPNIR_TOKEN to a valid token, or unset it and run %s authenticate", cfg.URL, name)
	default:
		return fmt.Sprintf("the server at %s does not accept the access token stored in %s (expired, revoked, or for another server): "+
			"run %s authenticate to log in again", cfg.URL, from, name)
	}
}

// checkToken asks the server at serverURL whether it accepts token, with a
// request that any principal may make.
func checkToken(ctx context.Context, serverURL, token string) error {
	_, err := client.New(serverURL, token).Images().List(ctx, draupnir.Principal{})
	switch {
	case err == nil:
		return nil
	case draupnir.KindOf(err) == draupnir.KindUnauthorized:
		// Not wrapped: this is not the stored token's 401 that report
		// rewords.
		return fmt.Errorf("the server at %s does not accept this token (mistyped, expired, revoked, or for another server); nothing was stored", serverURL)
	}
	return fmt.Errorf("could not check the token with the server at %s, so nothing was stored (--no-check stores it unchecked): %w", serverURL, err)
}

// HostOf returns the host name of a server URL, for Env.Host.
func HostOf(serverURL string) string {
	u, err := url.Parse(serverURL)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

func (a *app) authenticateCmd() *cobra.Command {
	var token, serverURL string
	var noBrowser, noCheck bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "authenticate [--url URL] [--no-browser | --token TOKEN [--no-check]]",
		Short: "Log in and store your access token",
		Long: `Log in through your organisation's identity provider and store the server's
URL and your access token in a file only you can read (` + "`draupnir/config.json`" + `
under your configuration directory).

The login runs in a browser: $BROWSER if set, else the system's browser. With
--no-browser, or when no browser can be started (a machine without a
display), the URL to open is printed instead; open it in a browser on this
machine, since the login ends with a redirect to a listener on 127.0.0.1.

If the server cannot log anyone in (no login configured, its identity
provider down), authenticate says why at once and opens nothing.

--token stores a token you already have instead ("-" reads it from standard
input), once the server has accepted it; --no-check stores it without asking
(offline). DRAUPNIR_URL and DRAUPNIR_TOKEN, when set, take precedence over the
stored values.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(a.env)
			if err != nil {
				// A broken file is what authenticate repairs.
				cfg = Config{URL: DefaultURL}
			}
			if serverURL != "" {
				u, err := url.Parse(serverURL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return usagef(cmd, "--url must be an http:// or https:// URL, not %q", serverURL)
				}
				cfg.URL = strings.TrimRight(serverURL, "/")
			}
			who := ""
			if cmd.Flags().Changed("token") {
				if token == "-" {
					if a.env.Terminal {
						fmt.Fprint(a.stderr, "Access token: ")
					}
					token, err = readSecret(a.stdin, a.stderr)
					if err != nil {
						return fmt.Errorf("reading the token: %w", err)
					}
				}
				token = strings.TrimSpace(token)
				if token == "" {
					return usagef(cmd, "the token is empty")
				}
				if !noCheck {
					if err := checkToken(cmd.Context(), cfg.URL, token); err != nil {
						return err
					}
				}
			} else {
				if noCheck {
					return usagef(cmd, "--no-check goes with --token: a login's token comes from the server")
				}
				if timeout <= 0 {
					return usagef(cmd, "--timeout must be positive")
				}
				t, err := a.browserLogin(cmd.Context(), cfg.URL, noBrowser, timeout)
				if err != nil {
					return err
				}
				token, who = t.Secret, t.Principal
			}
			cfg.Token = token
			path, err := storeConfig(a.env, cfg)
			if err != nil {
				return err
			}
			switch {
			case who != "":
				fmt.Fprintf(a.stderr, "Logged in to %s as %s; the token is stored in %s.\n", cfg.URL, who, path)
			case noCheck:
				fmt.Fprintf(a.stderr, "Stored the token for %s in %s without checking it.\n", cfg.URL, path)
			default:
				fmt.Fprintf(a.stderr, "The server at %s accepts the token; it is stored in %s.\n", cfg.URL, path)
			}
			if getenv(a.env)("DRAUPNIR_TOKEN") != "" {
				fmt.Fprintln(a.stderr, "DRAUPNIR_TOKEN is set and takes precedence over the stored token: unset it to use this one.")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", `store this access token instead of logging in ("-": read it from standard input)`)
	cmd.Flags().StringVar(&serverURL, "url", "", "the server's URL (default: the stored one, or "+DefaultURL+")")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "print the login URL instead of opening a browser")
	cmd.Flags().BoolVar(&noCheck, "no-check", false, "with --token: store it without asking the server whether it accepts it")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the login to finish")
	cmd.MarkFlagsMutuallyExclusive("token", "no-browser")
	return cmd
}

// storeConfig writes cfg to the client's configuration file (0600) and
// returns its path.
func storeConfig(env Env, cfg Config) (string, error) {
	path, err := configPath(env)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("storing the token: %w", err)
	}
	return path, nil
}

// readSecret reads one line from r without echoing it when r is a terminal.
func readSecret(r io.Reader, echo io.Writer) (string, error) {
	if f, ok := r.(*os.File); ok {
		fd := int(f.Fd())
		if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
			quiet := *old
			quiet.Lflag &^= unix.ECHO
			quiet.Lflag |= unix.ICANON | unix.ISIG
			if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err == nil {
				defer func() {
					_ = unix.IoctlSetTermios(fd, unix.TCSETS, old)
					fmt.Fprintln(echo) // the user's Enter was not echoed
				}()
			}
		}
	}
	return readLine(r)
}

// readLine reads one line without buffering beyond it.
func readLine(r io.Reader) (string, error) {
	if r == nil {
		return "", errors.New("no standard input")
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		if errors.Is(err, io.EOF) {
			return "", errors.New("no token on standard input")
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}
