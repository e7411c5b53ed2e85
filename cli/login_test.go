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
			r := run(t, newFakeBackend().backend(), Env{ConfigDir: dir}, "", "authenticate", "--url", srv.URL, "--no-browser", "--timeout", "10s")
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

// TestAuthenticateChecksToken: --token stores only a token the server
// accepts, never touches the stored configuration otherwise, and --no-check
// skips the question.
func TestAuthenticateChecksToken(t *testing.T) {
	srv := loginServer(t, nil, "good-token")
	dir := t.TempDir()
	env := Env{ConfigDir: dir, Getenv: func(string) string { return "" }}
	stored := func() Config {
		t.Helper()
		var cfg Config
		if err := loadConfigFile(env, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	r := run(t, newFakeBackend().backend(), env, "", "authenticate", "--url", srv.URL, "--token", "good-token")
	if r.code != 0 || !strings.Contains(r.stderr, "accepts the token") {
		t.Fatalf("a good token: exit %d, %s", r.code, r.stderr)
	}
	if cfg := stored(); cfg.Token != "good-token" || cfg.URL != srv.URL {
		t.Fatalf("stored %+v", cfg)
	}

	refused := []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"unknown token", "", []string{"--token", "bad-token"}, "does not accept this token"},
		{"unknown token on stdin", "bad-token\n", []string{"--token", "-"}, "does not accept this token"},
		{"a good token with a bad one's prefix", "", []string{"--token", "good-token-not"}, "does not accept this token"},
		{"a token for a server that is not there", "", []string{"--url", "http://127.0.0.1:1", "--token", "good-token"}, "--no-check"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, newFakeBackend().backend(), env, tt.stdin, append([]string{"authenticate"}, tt.args...)...)
			if r.code != ExitFailure || !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "nothing was stored") {
				t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.stderr, tt.want)
			}
			if cfg := stored(); cfg.Token != "good-token" || cfg.URL != srv.URL {
				t.Errorf("the stored configuration changed to %+v", cfg)
			}
		})
	}

	r = run(t, newFakeBackend().backend(), env, "", "authenticate", "--token", "offline-token", "--no-check")
	if r.code != 0 || !strings.Contains(r.stderr, "without checking") || stored().Token != "offline-token" {
		t.Errorf("--no-check: exit %d, %s, stored %+v", r.code, r.stderr, stored())
	}
	if r := run(t, newFakeBackend().backend(), env, "", "authenticate", "--no-check", "--no-browser"); r.code != ExitUsage {
		t.Errorf("--no-check without --token: exit %d, %s", r.code, r.stderr)
	}

	// The environment's token wins: say so.
	env.Getenv = func(k string) string { return map[string]string{"DRAUPNIR_TOKEN": "x"}[k] }
	r = run(t, newFakeBackend().backend(), env, "", "authenticate", "--token", "good-token")
	if r.code != 0 || !strings.Contains(r.stderr, "DRAUPNIR_TOKEN is set") {
		t.Errorf("with DRAUPNIR_TOKEN set: exit %d, %s", r.code, r.stderr)
	}
}

// TestUnauthorizedSpeaksCLI: the server's 401 becomes how to log in, or
// which token was refused and how to replace it.
func TestUnauthorizedSpeaksCLI(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "draupnir", "config.json")
	if _, err := storeConfig(Env{ConfigDir: dir}, Config{URL: "https://d.example", Token: "stale"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		configDir string
		env       map[string]string
		want      string
	}{
		{"no token anywhere", t.TempDir(), nil,
			"draupnir-client: not logged in: set DRAUPNIR_TOKEN or run draupnir-client authenticate\n"},
		{"an empty DRAUPNIR_TOKEN is none", t.TempDir(), map[string]string{"DRAUPNIR_TOKEN": ""},
			"draupnir-client: not logged in: set DRAUPNIR_TOKEN or run draupnir-client authenticate\n"},
		{"the stored token", dir, nil,
			"draupnir-client: the server at https://d.example does not accept the access token stored in " + path +
				" (expired, revoked, or for another server): run draupnir-client authenticate to log in again\n"},
		{"DRAUPNIR_TOKEN over the stored one", dir, map[string]string{"DRAUPNIR_TOKEN": "typo", "DRAUPNIR_URL": "https://e.example"},
			"draupnir-client: the server at https://e.example does not accept the access token in DRAUPNIR_TOKEN (mistyped, expired or revoked): " +
				"set DRAUPNIR_TOKEN to a valid token, or unset it and run draupnir-client authenticate\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend()
			b.err = draupnir.Errorf(draupnir.KindUnauthorized, "an Authorization: Bearer <token> header is required")
			env := Env{ConfigDir: tt.configDir, Getenv: func(k string) string { return tt.env[k] }}
			for _, args := range [][]string{{"instances", "list"}, {"new"}, {"images", "show", "1"}} {
				if r := run(t, b.backend(), env, "", args...); r.code != ExitFailure || r.stderr != tt.want {
					t.Errorf("%q: exit %d, stderr %q; want 1, %q", args, r.code, r.stderr, tt.want)
				}
			}
		})
	}
	// Over SSH there is no token to speak of.
	b := newFakeBackend()
	b.err = draupnir.Errorf(draupnir.KindUnauthorized, "no such key")
	if r := run(t, b.backend(), Env{SSH: true}, "", "instances", "list"); r.stderr != "draupnir: no such key\n" {
		t.Errorf("ssh: %q", r.stderr)
	}
}

// peopleFake is a fake with People whose Logout answers logoutErr.
type peopleFake struct {
	*fake
	logoutErr error
	logouts   int
}

func (p *peopleFake) backend() Backend {
	b := p.fake.backend()
	b.People = p
	return b
}

func (p *peopleFake) ListTokens(context.Context) ([]draupnir.Token, error) { return nil, nil }
func (p *peopleFake) RevokeToken(context.Context, int64) error             { return nil }
func (p *peopleFake) Logout(context.Context) error {
	p.logouts++
	return p.logoutErr
}
func (p *peopleFake) ListKeys(context.Context) ([]draupnir.Key, error) { return nil, nil }
func (p *peopleFake) AddKey(context.Context, string) (draupnir.Key, error) {
	return draupnir.Key{}, nil
}
func (p *peopleFake) RemoveKey(context.Context, int64) error { return nil }

// TestLogoutAlwaysForgets: whatever the server says about revoking, the
// stored token is gone (the URL stays), and the message says what happened
// on the server.
func TestLogoutAlwaysForgets(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		envTok  string
		code    int
		want    []string
		nothing bool // no token anywhere
	}{
		{name: "revoked", code: 0, want: []string{"Logged out: removed the token from ", "; the server revoked the token."}},
		{name: "the upload principal's shared secret", err: draupnir.Errorf(draupnir.KindForbidden,
			"the upload principal has no access tokens or registered keys; its keys are configured in ssh.upload_authorized_keys"),
			code: 0, want: []string{"did not revoke the token", "shared secret", "removed the token from "}},
		{name: "a configured user token", err: draupnir.Errorf(draupnir.KindConflict, "this token is configured on the server and cannot be revoked by logging out"),
			code: 0, want: []string{"did not revoke the token", "configured there", "removed the token from "}},
		{name: "already expired", err: draupnir.Errorf(draupnir.KindUnauthorized, "the access token is not valid"),
			code: 0, want: []string{"already stopped accepting the token", "removed the token from "}},
		{name: "server unreachable", err: &draupnir.Error{Kind: draupnir.KindUnavailable, Msg: "cannot reach the Draupnir server at http://x: connection refused"},
			code: 1, want: []string{"but the token could not be revoked", "connection refused", "stays valid", "removed the token from "}},
		{name: "the environment's token", envTok: "envtok", code: 0,
			want: []string{"the server revoked the token", "removed the stored token from ", "unset DRAUPNIR_TOKEN"}},
		{name: "not logged in", nothing: true, code: 0, want: []string{"Not logged in"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			env := Env{ConfigDir: dir, Getenv: func(k string) string { return map[string]string{"DRAUPNIR_TOKEN": tt.envTok}[k] }}
			if !tt.nothing {
				if _, err := storeConfig(env, Config{URL: "https://d.example", Token: "filetok"}); err != nil {
					t.Fatal(err)
				}
			}
			b := &peopleFake{fake: newFakeBackend(), logoutErr: tt.err}
			r := run(t, b.backend(), env, "", "logout")
			if r.code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tt.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Errorf("more than one line: %q", r.stderr)
			}
			if tt.nothing {
				if b.logouts != 0 {
					t.Error("logout without a token asked the server")
				}
				return
			}
			var cfg Config
			if err := loadConfigFile(env, &cfg); err != nil || cfg != (Config{URL: "https://d.example"}) {
				t.Errorf("stored after logout: %+v, %v", cfg, err)
			}
			if b.logouts != 1 {
				t.Errorf("%d revocations asked, want 1", b.logouts)
			}
		})
	}
}
