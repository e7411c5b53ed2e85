package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"github.com/oauth2-proxy/mockoidc"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/client"
	"github.com/draupnir-db/draupnir/internal/testenv"
	"github.com/draupnir-db/draupnir/supervisor"
)

// oidcEnv is a server whose people log in at a mockoidc identity provider.
type oidcEnv struct {
	s    *server
	keys *sshKeys
	idp  *mockoidc.MockOIDC
	// callback is the provider-facing redirect URL: a redirector in the test
	// (the server's port is chosen inside startServer, after the config
	// needs the URL), which sends the browser on to the server.
	callback string
}

// twistedUser is a mockoidc user whose ID token claims a test can bend.
type twistedUser struct {
	*mockoidc.MockUser
	twist func(*mockoidc.IDTokenClaims)
}

func (u twistedUser) Claims(scope []string, c *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	u.twist(c)
	return u.MockUser.Claims(scope, c)
}

func person(email string, verified bool) *mockoidc.MockUser {
	return &mockoidc.MockUser{Subject: "sub-" + email, Email: email, EmailVerified: verified}
}

func startOIDC(t *testing.T) *oidcEnv {
	t.Helper()
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Shutdown() })
	env := &oidcEnv{idp: idp, keys: &sshKeys{}}
	var target struct {
		sync.Mutex
		url string
	}
	redir := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target.Lock()
		defer target.Unlock()
		http.Redirect(w, r, target.url+r.URL.RequestURI(), http.StatusFound)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go redir.Serve(l)
	t.Cleanup(func() { redir.Close() })
	env.callback = "http://" + l.Addr().String() + "/oauth_callback"

	t.Setenv("DRAUPNIR_TRUSTED_USER_EMAIL_DOMAIN", "@example.com")
	extra := fmt.Sprintf("[oauth]\nissuer_url = %q\nclient_id = %q\nclient_secret = %q\nredirect_url = %q\n",
		idp.Issuer(), idp.ClientID, idp.ClientSecret, env.callback)
	env.s = startServerSSH(t, extra, env.keys)
	target.Lock()
	target.url = env.s.url
	target.Unlock()
	return env
}

// browser follows redirects like a browser (with cookies), but not into
// the CLI's loopback listener when stopAt says so.
func browser(stopAt func(*url.URL) bool) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if stopAt != nil && stopAt(req.URL) {
			return http.ErrUseLastResponse
		}
		if len(via) > 10 {
			return errors.New("too many redirects")
		}
		return nil
	}}
}

// cliLogin plays the CLI: a loopback listener, state and PKCE.
type cliLogin struct {
	redirect, state, verifier, challenge string
	got                                  chan url.Values
}

func newCLILogin(t *testing.T) *cliLogin {
	t.Helper()
	c := &cliLogin{state: randomURL(), verifier: randomURL(), got: make(chan url.Values, 4)}
	sum := sha256.Sum256([]byte(c.verifier))
	c.challenge = base64.RawURLEncoding.EncodeToString(sum[:])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.got <- r.URL.Query()
		io.WriteString(w, "ok")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c.redirect = "http://" + l.Addr().String() + "/callback"
	return c
}

func randomURL() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (e *oidcEnv) loginURL(c *cliLogin) string {
	return client.New(e.s.url, "").LoginURL(c.redirect, c.state, c.challenge)
}

// login runs the browser's part and returns what the loopback received.
func (e *oidcEnv) login(t *testing.T, c *cliLogin) url.Values {
	t.Helper()
	resp, err := browser(nil).Get(e.loginURL(c))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	resp.Body.Close()
	select {
	case q := <-c.got:
		if q.Get("state") != c.state {
			t.Fatalf("loopback got state %q, want %q", q.Get("state"), c.state)
		}
		return q
	default:
		t.Fatalf("the browser ended at %s (%s) without reaching the loopback", resp.Request.URL, resp.Status)
		return nil
	}
}

func (e *oidcEnv) redeem(ctx context.Context, c *cliLogin, code, verifier string) (draupnir.Token, error) {
	return client.New(e.s.url, "").RedeemLogin(ctx, code, verifier, c.redirect, "e2e")
}

// stateDB connects to the server's embedded state database.
func (e *oidcEnv) stateDB(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		e.s.layout().StateSockets(), supervisor.StatePort, supervisor.StateDatabase))
	if err != nil {
		t.Fatalf("connecting to the state database: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestOIDCLogin(t *testing.T) {
	e := startOIDC(t)
	ctx := context.Background()
	var jane draupnir.Token

	t.Run("happy path, then the code is spent", func(t *testing.T) {
		e.idp.QueueUser(person("Jane@Example.com", true))
		c := newCLILogin(t)
		q := e.login(t, c)
		if q.Get("error") != "" || q.Get("code") == "" {
			t.Fatalf("loopback got %v, want a code", q)
		}
		tok, err := e.redeem(ctx, c, q.Get("code"), c.verifier)
		if err != nil {
			t.Fatalf("redeem: %v", err)
		}
		if !strings.HasPrefix(tok.Secret, "drp_") || tok.Principal != "jane@example.com" || !tok.ExpiresAt.After(time.Now()) {
			t.Fatalf("token %+v", tok)
		}
		jane = tok
		if _, err := client.New(e.s.url, tok.Secret).Instances().List(ctx, draupnir.Principal{}); err != nil {
			t.Fatalf("the new token does not work: %v", err)
		}
		if _, err := e.redeem(ctx, c, q.Get("code"), c.verifier); draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Fatalf("replayed code: %v, want a 400", err)
		}
	})

	t.Run("token stored only as its hash", func(t *testing.T) {
		db := e.stateDB(t)
		sum := sha256.Sum256([]byte(jane.Secret))
		var n int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM access_tokens WHERE token_hash = $1 AND principal = 'jane@example.com'", sum[:]).Scan(&n); err != nil || n != 1 {
			t.Fatalf("rows with the token's hash: %d, %v", n, err)
		}
		var leaked bool
		if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM access_tokens t WHERE strpos(t::text, $1) > 0 OR strpos(encode(token_hash, 'escape'), $1) > 0)", jane.Secret).Scan(&leaked); err != nil || leaked {
			t.Fatalf("the token appears in clear in the state database (%v)", err)
		}
	})

	t.Run("wrong verifier burns the code", func(t *testing.T) {
		e.idp.QueueUser(person("jane@example.com", true))
		c := newCLILogin(t)
		q := e.login(t, c)
		if _, err := e.redeem(ctx, c, q.Get("code"), randomURL()); draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Fatalf("wrong verifier: %v, want a 400", err)
		}
		if _, err := e.redeem(ctx, c, q.Get("code"), c.verifier); draupnir.KindOf(err) != draupnir.KindInvalid {
			t.Fatalf("code after a wrong verifier: %v, want a 400", err)
		}
	})

	refused := []struct {
		name string
		user mockoidc.User
		why  string
	}{
		{"email outside the domain", person("eve@evil.example", true), "trusted domain"},
		{"sub-domain is not the domain", person("eve@evil.example.com", true), "trusted domain"},
		{"unverified email", person("jane@example.com", false), "not verified"},
		{"wrong audience", twistedUser{person("jane@example.com", true), func(c *mockoidc.IDTokenClaims) {
			c.Audience = jwt.ClaimStrings{"someone-else"}
		}}, "not valid"},
		{"expired ID token", twistedUser{person("jane@example.com", true), func(c *mockoidc.IDTokenClaims) {
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
			c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-2 * time.Hour))
		}}, "not valid"},
		{"wrong nonce", twistedUser{person("jane@example.com", true), func(c *mockoidc.IDTokenClaims) {
			c.Nonce = "not-the-nonce"
		}}, "nonce"},
	}
	for _, tt := range refused {
		t.Run("refused: "+tt.name, func(t *testing.T) {
			e.idp.QueueUser(tt.user)
			c := newCLILogin(t)
			q := e.login(t, c)
			if q.Get("code") != "" || q.Get("error") == "" || !strings.Contains(q.Get("error_description"), tt.why) {
				t.Fatalf("loopback got %v, want an error saying %q", q, tt.why)
			}
		})
	}

	t.Run("provider error reaches the CLI", func(t *testing.T) {
		// Stop where the provider sends the browser back, and send it back
		// as a provider that refused the login would.
		c2 := newCLILogin(t)
		stop := func(u *url.URL) bool { return strings.HasSuffix(u.Path, "/oauth_callback") }
		resp, err := browser(stop).Get(e.loginURL(c2))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cb, _ := url.Parse(resp.Header.Get("Location"))
		q := url.Values{"state": {cb.Query().Get("state")}, "error": {"access_denied"}}
		resp, err = browser(nil).Get(e.callback + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := <-c2.got; got.Get("error") != "access_denied" || got.Get("code") != "" {
			t.Fatalf("loopback got %v", got)
		}
	})

	t.Run("forged and replayed state get 4xx", func(t *testing.T) {
		get := func(u string) int {
			resp, err := browser(func(*url.URL) bool { return true }).Get(u)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if st := get(e.s.url + "/oauth_callback?code=abc&state=forged-state"); st < 400 || st >= 500 {
			t.Errorf("forged state: %d, want 4xx", st)
		}
		e.idp.QueueUser(person("jane@example.com", true))
		c := newCLILogin(t)
		stop := func(u *url.URL) bool { return strings.HasSuffix(u.Path, "/oauth_callback") }
		resp, err := browser(stop).Get(e.loginURL(c))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cb, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || cb.Query().Get("state") == "" {
			t.Fatalf("provider redirect %q", resp.Header.Get("Location"))
		}
		callback := e.s.url + "/oauth_callback?" + cb.RawQuery
		if st := get(callback); st != http.StatusFound {
			t.Fatalf("first callback: %d, want 302", st)
		}
		if st := get(callback); st < 400 || st >= 500 {
			t.Errorf("replayed callback: %d, want 4xx", st)
		}
	})

	t.Run("only loopback redirect URIs", func(t *testing.T) {
		for _, ru := range []string{"http://evil.example:8080/callback", "https://127.0.0.1:1/cb", "http://127.0.0.1/cb", "http://10.0.0.1:80/cb"} {
			c := &cliLogin{redirect: ru, state: randomURL(), challenge: "x" + randomURL()[:42]}
			resp, err := browser(func(*url.URL) bool { return true }).Get(e.loginURL(c))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("redirect_uri %s: %d, want 400", ru, resp.StatusCode)
			}
		}
	})

	t.Run("tokens list, revoke and logout", func(t *testing.T) {
		e.idp.QueueUser(person("jane@example.com", true))
		c := newCLILogin(t)
		second, err := e.redeem(ctx, c, e.login(t, c).Get("code"), c.verifier)
		if err != nil {
			t.Fatal(err)
		}
		list, err := client.New(e.s.url, jane.Secret).ListTokens(ctx)
		if err != nil || len(list) != 2 {
			t.Fatalf("tokens: %+v, %v", list, err)
		}
		for _, tk := range list {
			if tk.Secret != "" || tk.Current != (tk.ID == jane.ID) {
				t.Errorf("listed token %+v", tk)
			}
		}
		// Nobody else's tokens can be revoked.
		if err := e.s.user().RevokeToken(ctx, second.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
			t.Errorf("another user revoking: %v, want 404", err)
		}
		if err := client.New(e.s.url, jane.Secret).RevokeToken(ctx, second.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := client.New(e.s.url, second.Secret).Instances().List(ctx, draupnir.Principal{}); draupnir.KindOf(err) != draupnir.KindUnauthorized {
			t.Errorf("revoked token: %v, want 401", err)
		}
	})

	t.Run("the real draupnir-client authenticate --no-browser", func(t *testing.T) {
		e.idp.QueueUser(person("bob@example.com", true))
		home := testenv.TempDir(t)
		env := append(cleanEnv(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "DRAUPNIR_URL="+e.s.url)
		cmd := exec.Command(bins.client, "authenticate", "--no-browser", "--timeout", "60s")
		cmd.Env = env
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		sc := bufio.NewScanner(stderr)
		var out strings.Builder
		loginURL := ""
		for loginURL == "" && sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if f := strings.TrimSpace(sc.Text()); strings.HasPrefix(f, "http") {
				loginURL = f
			}
		}
		if loginURL == "" {
			t.Fatalf("no login URL printed:\n%s", out.String())
		}
		// The CLI took the first step itself: the URL is the provider's.
		if !strings.HasPrefix(loginURL, e.idp.Issuer()) {
			t.Errorf("login URL %s is not the identity provider's (%s)", loginURL, e.idp.Issuer())
		}
		// curl stands in for the browser.
		if b, err := exec.Command("curl", "-sSfL", "--max-redirs", "10", loginURL).CombinedOutput(); err != nil {
			t.Fatalf("curl -L: %v\n%s", err, b)
		}
		rest, _ := io.ReadAll(stderr)
		out.Write(rest)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("authenticate: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "bob@example.com") {
			t.Errorf("authenticate did not say who logged in:\n%s", out.String())
		}
		cfgPath := filepath.Join(home, ".config", "draupnir", "config.json")
		st, err := os.Stat(cfgPath)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("stored config: %v, %v", st, err)
		}
		run := func(args ...string) (string, error) {
			c := exec.Command(bins.client, args...)
			c.Env = env
			b, err := c.CombinedOutput()
			return string(b), err
		}
		if out, err := run("instances", "list"); err != nil {
			t.Fatalf("instances list with the stored token: %v\n%s", err, out)
		}
		if out, err := run("tokens", "list"); err != nil || !strings.Contains(out, "*") {
			t.Fatalf("tokens list: %v\n%s", err, out)
		}
		stored, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct{ Token string }
		if err := json.Unmarshal(stored, &cfg); err != nil || cfg.Token == "" {
			t.Fatalf("stored config %s: %v", stored, err)
		}
		if out, err := run("logout"); err != nil || !strings.Contains(out, "the server revoked the token") {
			t.Fatalf("logout: %v\n%s", err, out)
		}
		if b, err := os.ReadFile(cfgPath); err != nil || strings.Contains(string(b), cfg.Token) {
			t.Errorf("the token is still in %s after logout (%v)", cfgPath, err)
		}
		if out, err := run("instances", "list"); err == nil || !strings.Contains(out, "not logged in") {
			t.Fatalf("instances list after logout: %v\n%s", err, out)
		}
		// The revoked token, given back, is refused by the server, and
		// named by where it came from.
		env = append(env, "DRAUPNIR_TOKEN="+cfg.Token)
		if out, err := run("instances", "list"); err == nil || !strings.Contains(out, "does not accept the access token in DRAUPNIR_TOKEN") {
			t.Fatalf("instances list with the revoked token: %v\n%s", err, out)
		}
		if out, err := run("authenticate", "--token", cfg.Token); err == nil || !strings.Contains(out, "does not accept this token") {
			t.Fatalf("authenticate --token with the revoked token: %v\n%s", err, out)
		}
	})

	t.Run("the test token only in environment test", func(t *testing.T) {
		if _, err := e.s.user().Instances().List(ctx, draupnir.Principal{}); err != nil {
			t.Fatalf("test token in test: %v", err)
		}
		e.s.stop(syscall.SIGTERM)
		t.Setenv("DRAUPNIR_ENVIRONMENT", "production")
		e.s.start()
		if _, err := e.s.user().Instances().List(ctx, draupnir.Principal{}); draupnir.KindOf(err) != draupnir.KindUnauthorized {
			t.Errorf("test token in production: %v, want 401", err)
		}
		if _, err := client.New(e.s.url, jane.Secret).Instances().List(ctx, draupnir.Principal{}); err != nil {
			t.Errorf("a stored token after a restart: %v", err)
		}
		e.s.stop(syscall.SIGTERM)
		os.Unsetenv("DRAUPNIR_ENVIRONMENT") // t.Setenv restores it at the end; the server restarts now
		e.s.start()
	})
}

// TestOIDCProviderDown: with an identity provider that cannot be reached,
// the real draupnir-client authenticate stops at once with the server's
// reason, before it offers a URL or waits for a browser.
func TestOIDCProviderDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	t.Setenv("DRAUPNIR_TRUSTED_USER_EMAIL_DOMAIN", "@example.com")
	s := startServer(t, fmt.Sprintf("[oauth]\nissuer_url = %q\nclient_id = \"c\"\nclient_secret = \"s\"\nredirect_url = \"http://127.0.0.1:1/oauth_callback\"\n", dead))
	home := testenv.TempDir(t)
	cmd := exec.Command(bins.client, "authenticate", "--no-browser", "--timeout", "60s")
	cmd.Env = append(cleanEnv(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "DRAUPNIR_URL="+s.url)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("authenticate: %v, want exit 1\n%s", err, out)
	}
	if want := "cannot log in at " + s.url + ": the identity provider " + dead + " cannot be reached"; !strings.Contains(string(out), want) ||
		strings.Contains(string(out), "open this URL") || strings.Contains(string(out), "Waiting") {
		t.Errorf("authenticate said:\n%s\nwant only %q", out, want)
	}
	if _, err := os.Stat(filepath.Join(home, ".config", "draupnir", "config.json")); err == nil {
		t.Error("a configuration was stored")
	}
}

// cleanEnv is the test's environment without DRAUPNIR_ variables and
// browsers.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DRAUPNIR_") || strings.HasPrefix(kv, "BROWSER=") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// TestSSHKeyRegistry registers a key through the API and uses it with real
// ssh, checks ownership across HTTP and SSH, and removes the key again.
func TestSSHKeyRegistry(t *testing.T) {
	e := startOIDC(t)
	ctx := context.Background()
	e.idp.QueueUser(person("alice@example.com", true))
	c := newCLILogin(t)
	tok, err := e.redeem(ctx, c, e.login(t, c).Get("code"), c.verifier)
	if err != nil {
		t.Fatal(err)
	}
	alice := client.New(e.s.url, tok.Secret)

	key := filepath.Join(e.keys.dir, "alice")
	testenv.Run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice-laptop", "-f", key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	sshAs := func(keyPath string, args ...string) (string, error) {
		b, err := e.s.ssh(t, e.keys, keyPath, "ssh", append([]string{"x@127.0.0.1"}, args...)...).CombinedOutput()
		return string(b), err
	}
	if out, err := sshAs(key, "instances", "list"); err == nil {
		t.Fatalf("an unregistered key got in:\n%s", out)
	}

	k, err := alice.AddKey(ctx, string(pub))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Fingerprint, "SHA256:") || k.Comment != "alice-laptop" || k.Principal != "alice@example.com" {
		t.Errorf("registered key %+v", k)
	}
	// A key belongs to one user; the configured keys cannot be taken.
	if _, err := e.s.user().AddKey(ctx, string(pub)); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("another user registering the same key: %v, want 409", err)
	}
	uploadPub, _ := os.ReadFile(e.keys.upload + ".pub")
	if _, err := alice.AddKey(ctx, string(uploadPub)); draupnir.KindOf(err) != draupnir.KindConflict {
		t.Errorf("registering the upload key: %v, want 409", err)
	}
	if _, err := e.s.upload().AddKey(ctx, string(pub)); draupnir.KindOf(err) != draupnir.KindForbidden {
		t.Errorf("the upload principal registering a key: %v, want 403", err)
	}
	if _, err := alice.AddKey(ctx, "ssh-ed25519 not-base64"); draupnir.KindOf(err) != draupnir.KindUnprocessable {
		t.Errorf("a malformed key: %v, want 422", err)
	}

	// Ownership across the doors: alice's instance is hers only.
	im := e.s.readyImage(t, anonymise, filepath.Join(newSource(t).BaseBackup(t, "-X", "fetch"), "base.tar"))
	in, err := alice.Instances().Create(ctx, draupnir.Principal{}, im.ID, draupnir.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatInt(in.ID, 10)
	out, err := sshAs(key, "instances", "list")
	if err != nil || !strings.Contains(out, id) {
		t.Fatalf("alice's registered key: instances list: %v\n%s", err, out)
	}
	if out, err := sshAs(key, "instances", "show", id); err != nil {
		t.Fatalf("alice's instance over SSH: %v\n%s", err, out)
	}
	if _, err := e.s.user().Instances().Get(ctx, draupnir.Principal{}, in.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("another user over HTTP: %v, want 404", err)
	}
	if out, err := sshAs(e.keys.user, "instances", "show", id); err == nil || !strings.Contains(out, "does not exist") {
		t.Errorf("another user over SSH: %v\n%s", err, out)
	}
	if out, err := sshAs(e.keys.user, "instances", "list"); err != nil || strings.Contains(out, " "+id+" ") {
		t.Errorf("another user's list over SSH shows alice's instance: %v\n%s", err, out)
	}
	if err := alice.Instances().Destroy(ctx, draupnir.Principal{}, in.ID); err != nil {
		t.Fatal(err)
	}

	keys, err := alice.ListKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Fingerprint != k.Fingerprint {
		t.Fatalf("keys: %+v, %v", keys, err)
	}
	if err := e.s.user().RemoveKey(ctx, k.ID); draupnir.KindOf(err) != draupnir.KindNotFound {
		t.Errorf("another user removing alice's key: %v, want 404", err)
	}
	if err := alice.RemoveKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if out, err := sshAs(key, "instances", "list"); err == nil {
		t.Fatalf("a removed key still works:\n%s", out)
	}
}
