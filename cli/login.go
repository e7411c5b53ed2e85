package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
)

// loginResult is what the loopback listener received.
type loginResult struct {
	code string
	err  error
}

func randomURLString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// browserLogin runs the login: a loopback listener receives the server's
// redirect with a one-time code (RFC 8252), which is redeemed with this
// process's PKCE verifier. It returns the issued token.
func (a *app) browserLogin(ctx context.Context, serverURL string, noBrowser bool, timeout time.Duration) (draupnir.Token, error) {
	c := client.New(serverURL, "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return draupnir.Token{}, fmt.Errorf("listening on the loopback interface for the login: %w", err)
	}
	defer l.Close()
	redirectURI := fmt.Sprintf("http://%s/callback", l.Addr())
	state := randomURLString(32)
	verifier := randomURLString(32)
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])

	results := make(chan loginResult, 1)
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if r.URL.Path != "/callback" || subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1 {
				// Not our login (a stale tab, or someone probing): ignore it.
				http.Error(w, "This is not the login this client is waiting for.", http.StatusBadRequest)
				return
			}
			var res loginResult
			switch {
			case q.Get("error") != "":
				why := q.Get("error_description")
				if why == "" {
					why = q.Get("error")
				}
				res.err = fmt.Errorf("the login was refused: %s", oneLine(why))
			case q.Get("code") == "":
				res.err = errors.New("the server sent no login code")
			default:
				res.code = q.Get("code")
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Referrer-Policy", "no-referrer")
			if res.err != nil {
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprintf(w, "<!doctype html><title>Draupnir</title><p>%s</p>\n", html.EscapeString(res.err.Error()))
			} else {
				fmt.Fprint(w, "<!doctype html><title>Draupnir</title><p>You are logged in to Draupnir. You can close this window.</p>\n")
			}
			select {
			case results <- res:
			default: // a second hit after the first: nothing more to do
			}
		}),
	}
	go srv.Serve(l)
	defer srv.Close()

	// The CLI takes the login's first step itself, so that a server that
	// cannot log anyone in (none configured, its identity provider down)
	// says so now rather than in a browser while the CLI waits.
	loginURL, err := c.BeginLogin(ctx, redirectURI, state, challenge)
	if err != nil {
		return draupnir.Token{}, loginError(serverURL, err)
	}
	opened := false
	if !noBrowser {
		if err := a.openBrowser(loginURL); err == nil {
			opened = true
		} else {
			fmt.Fprintf(a.stderr, "Could not open a browser (%v).\n", err)
		}
	}
	if opened {
		fmt.Fprintf(a.stderr, "Opened your browser to log in. If it did not open, visit this URL:\n\n    %s\n\n", loginURL)
	} else {
		fmt.Fprintf(a.stderr, "To log in, open this URL in a browser on this machine:\n\n    %s\n\n", loginURL)
	}
	fmt.Fprintln(a.stderr, "Waiting for the login to finish…")

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var res loginResult
	select {
	case res = <-results:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return draupnir.Token{}, fmt.Errorf("the login did not finish within %s; run authenticate again", timeout)
		}
		return draupnir.Token{}, ctx.Err()
	}
	if res.err != nil {
		return draupnir.Token{}, res.err
	}
	host, _ := os.Hostname()
	desc := "draupnir-client"
	if host != "" {
		desc += " on " + host
	}
	return c.RedeemLogin(ctx, res.code, verifier, redirectURI, desc)
}

// loginError explains why a login could not start; a server that cannot be
// reached is already said to be so.
func loginError(serverURL string, err error) error {
	var de *draupnir.Error
	if errors.As(err, &de) && de.Err != nil {
		return err // a transport error: "cannot reach the Draupnir server at …"
	}
	return fmt.Errorf("cannot log in at %s: %w", serverURL, err)
}

// openBrowser opens url with $BROWSER if set (a command, or a
// colon-separated list of them, with %s for the URL), else the platform's
// opener. It does not wait for the browser to close.
func (a *app) openBrowser(url string) error {
	var candidates [][]string
	if b := getenv(a.env)("BROWSER"); b != "" {
		for _, c := range strings.Split(b, ":") {
			f := strings.Fields(c)
			if len(f) == 0 {
				continue
			}
			substituted := false
			for i := range f {
				if strings.Contains(f[i], "%s") {
					f[i] = strings.ReplaceAll(f[i], "%s", url)
					substituted = true
				}
			}
			if !substituted {
				f = append(f, url)
			}
			candidates = append(candidates, f)
		}
	} else {
		switch runtime.GOOS {
		case "darwin":
			candidates = [][]string{{"open", url}}
		case "windows":
			candidates = [][]string{{"rundll32", "url.dll,FileProtocolHandler", url}}
		default:
			if getenv(a.env)("DISPLAY") == "" && getenv(a.env)("WAYLAND_DISPLAY") == "" {
				return errors.New("no display; set $BROWSER to use a text browser")
			}
			candidates = [][]string{{"xdg-open", url}, {"sensible-browser", url}}
		}
	}
	err := errors.New("no browser configured")
	for _, c := range candidates {
		path, lerr := exec.LookPath(c[0])
		if lerr != nil {
			err = lerr
			continue
		}
		cmd := exec.Command(path, c[1:]...)
		cmd.Stdout, cmd.Stderr = nil, nil
		if err = cmd.Start(); err == nil {
			go cmd.Wait() // reap it whenever it exits
			return nil
		}
	}
	return err
}
