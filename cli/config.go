package cli

import (
	"bufio"
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
	var noBrowser bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "authenticate [--url URL] [--no-browser | --token TOKEN]",
		Short: "Log in and store your access token",
		Long: `Log in through your organisation's identity provider and store the server's
URL and your access token in a file only you can read (` + "`draupnir/config.json`" + `
under your configuration directory).

The login runs in a browser: $BROWSER if set, else the system's browser. With
--no-browser, or when no browser can be started (a machine without a
display), the URL to open is printed instead; open it in a browser on this
machine, since the login ends with a redirect to a listener on 127.0.0.1.

--token stores a token you already have instead ("-" reads it from standard
input). DRAUPNIR_URL and DRAUPNIR_TOKEN, when set, take precedence over the
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
			} else {
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
			if who != "" {
				_, err = fmt.Fprintf(a.stderr, "Logged in to %s as %s; the token is stored in %s.\n", cfg.URL, who, path)
				return err
			}
			_, err = fmt.Fprintf(a.stderr, "Stored the token for %s in %s.\n", cfg.URL, path)
			return err
		},
	}
	cmd.Flags().StringVar(&token, "token", "", `store this access token instead of logging in ("-": read it from standard input)`)
	cmd.Flags().StringVar(&serverURL, "url", "", "the server's URL (default: the stored one, or "+DefaultURL+")")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "print the login URL instead of opening a browser")
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
