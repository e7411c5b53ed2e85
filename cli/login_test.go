package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/wire"
)

// loginServer is an httptest Draupnir server for the login commands: its
// /authenticate answers with begin, and GET /images accepts only the
// bearer token good.
func loginServer(t *testing.T, begin http.HandlerFunc, good string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	if begin != nil {
		mux.HandleFunc("GET /authenticate", begin)
	}
	mux.HandleFunc("GET /images", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+good {
			writeAPIError(w, http.StatusUnauthorized, "the access token is not valid")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"data":[]}`))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.HeaderVersion, draupnir.Version)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func writeAPIError(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(wire.ErrorDocument{Errors: []wire.ErrorObject{{
		Status: http.StatusText(status), Code: "x", Title: http.StatusText(status), Detail: detail}}})
}

// TestAuthenticateFailsBeforeWaiting plants servers that cannot start a
// login: authenticate must give their reason at once, print no URL to open
// and store nothing. A --timeout bounds the wait should it wait anyway.
func TestAuthenticateFailsBeforeWaiting(t *testing.T) {
	tests := []struct {
		name  string
		begin http.HandlerFunc
		want  string
	}{
		{"no login configured", func(w http.ResponseWriter, r *http.Request) {
			writeAPIError(w, http.StatusServiceUnavailable, "this server has no login configured (oauth.client_id, …)")
		}, "this server has no login configured"},
		{"identity provider down", func(w http.ResponseWriter, r *http.Request) {
			writeAPIError(w, http.StatusServiceUnavailable, "the identity provider https://idp.example cannot be reached; try again shortly")
		}, "the identity provider https://idp.example cannot be reached"},
		{"not a Draupnir login route", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("<html>welcome</html>"))
		}, "unexpected answer 200 OK"},
		{"redirect to another scheme", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		}, `"file:///etc/passwd", which is not an http(s) URL`},
		{"redirect to a script", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "javascript:alert(1)")
			w.WriteHeader(http.StatusFound)
		}, "not an http(s) URL"},
		{"no route at all", nil, "cannot log in at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := loginServer(t, tt.begin, "good")
			dir := t.TempDir()
			r := run(t, newFakeBackend(), Env{ConfigDir: dir}, "", "authenticate", "--url", srv.URL, "--no-browser", "--timeout", "10s")
			if r.code != ExitFailure || !strings.Contains(r.stderr, tt.want) || !strings.HasPrefix(r.stderr, "draupnir-client: cannot log in at "+srv.URL+": ") {
				t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, tt.want)
			}
			if strings.Contains(r.stderr, "open this URL") || strings.Contains(r.stderr, "Waiting") {
				t.Errorf("authenticate offered a URL to open:\n%s", r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dir, "draupnir", "config.json")); err == nil {
				t.Error("a configuration was stored")
			}
		})
	}
}

// TestAuthenticateGivesTheProvidersURL: the URL to open is the one the
// server's first step redirects to, asked for with the CLI's own loopback
// redirect, state and S256 challenge.
func TestAuthenticateGivesTheProvidersURL(t *testing.T) {
	got := make(chan string, 1)
	srv := loginServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.RawQuery
		http.Redirect(w, r, "https://idp.example/authorize?state=s1", http.StatusFound)
	}, "good")
	// Stop waiting once the CLI waits for the browser.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &cancelOn{word: "Waiting", cancel: cancel}
	a := &app{ctx: ctx, env: Env{Getenv: func(string) string { return "" }}, stderr: stderr}
	if _, err := a.browserLogin(ctx, srv.URL, true, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("browserLogin: %v, want it cancelled while waiting", err)
	}
	var q string
	select {
	case q = <-got:
	default:
		t.Fatal("the CLI did not ask the server's login route before waiting")
	}
	for _, want := range []string{"redirect_uri=http%3A%2F%2F127.0.0.1%3A", "code_challenge_method=S256", "state=", "code_challenge="} {
		if !strings.Contains(q, want) {
			t.Errorf("the login was begun with %q, which lacks %q", q, want)
		}
	}
	if !strings.Contains(stderr.String(), "\n    https://idp.example/authorize?state=s1\n") {
		t.Errorf("the provider's URL was not offered:\n%s", stderr.String())
	}
}

// cancelOn is a writer that cancels once word was written.
type cancelOn struct {
	strings.Builder
	word   string
	cancel func()
}

func (c *cancelOn) Write(p []byte) (int, error) {
	n, err := c.Builder.Write(p)
	if strings.Contains(c.String(), c.word) {
		c.cancel()
	}
	return n, err
}
