package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/draupnir-db/draupnir"
)

// fakePeople records who asked.
type fakePeople struct{ callers []string }

func (f *fakePeople) note(p draupnir.Principal) { f.callers = append(f.callers, p.Name) }

func (f *fakePeople) ListTokens(_ context.Context, p draupnir.Principal, _ string) ([]draupnir.Token, error) {
	f.note(p)
	return []draupnir.Token{{ID: 1, Principal: p.Name, ExpiresAt: time.Now().Add(time.Hour), Current: true}}, nil
}
func (f *fakePeople) RevokeToken(_ context.Context, p draupnir.Principal, id int64) error {
	f.note(p)
	return draupnir.Errorf(draupnir.KindNotFound, "token %d does not exist", id)
}
func (f *fakePeople) Logout(context.Context, string) error { return nil }
func (f *fakePeople) AddKey(_ context.Context, p draupnir.Principal, line string) (draupnir.Key, error) {
	f.note(p)
	return draupnir.Key{ID: 3, Principal: p.Name, PublicKey: line, Fingerprint: "SHA256:x"}, nil
}
func (f *fakePeople) ListKeys(_ context.Context, p draupnir.Principal) ([]draupnir.Key, error) {
	f.note(p)
	return nil, nil
}
func (f *fakePeople) RemoveKey(_ context.Context, p draupnir.Principal, _ int64) error {
	f.note(p)
	return nil
}

// fakeLogin refuses every code.
type fakeLogin struct{}

func (fakeLogin) Begin(context.Context, string, string, string, string) (string, error) {
	return "", draupnir.Errorf(draupnir.KindInvalid, "bad redirect_uri")
}
func (fakeLogin) Callback(context.Context, url.Values) (string, error) {
	return "", draupnir.Errorf(draupnir.KindInvalid, "unknown state")
}
func (fakeLogin) Redeem(context.Context, string, string, string, string) (string, draupnir.Token, error) {
	return "", draupnir.Token{}, draupnir.Errorf(draupnir.KindInvalid, "unknown code")
}

func TestPeopleRoutes(t *testing.T) {
	people := &fakePeople{}
	e := newEnv(t, func(o *Options) { o.People = people; o.Login = fakeLogin{} })
	const redeem = `{"data":{"type":"token_requests","attributes":{"code":"c","code_verifier":"v"}}}`
	tests := []struct {
		name string
		r    req
		want int
	}{
		{"tokens need a token", req{method: "GET", path: "/tokens", token: "-"}, http.StatusUnauthorized},
		{"the upload principal has no tokens", req{method: "GET", path: "/tokens", token: uploadToken}, http.StatusForbidden},
		{"the upload principal registers no keys", req{method: "POST", path: "/keys", token: uploadToken,
			body: `{"data":{"type":"keys","attributes":{"public_key":"ssh-ed25519 AAAA"}}}`}, http.StatusForbidden},
		{"a user lists tokens", req{method: "GET", path: "/tokens"}, http.StatusOK},
		{"someone else's token", req{method: "DELETE", path: "/tokens/9"}, http.StatusNotFound},
		{"logout", req{method: "DELETE", path: "/tokens/current"}, http.StatusNoContent},
		{"a user adds a key", req{method: "POST", path: "/keys", body: `{"data":{"type":"keys","attributes":{"public_key":"ssh-ed25519 AAAA"}}}`}, http.StatusCreated},
		{"a key needs public_key", req{method: "POST", path: "/keys", body: `{"data":{"type":"keys","attributes":{}}}`}, http.StatusUnprocessableEntity},
		{"a user removes a key", req{method: "DELETE", path: "/keys/3"}, http.StatusNoContent},
		{"login needs no token", req{method: "GET", path: "/authenticate?redirect_uri=x", token: "-", version: "-"}, http.StatusBadRequest},
		{"unknown state is 4xx", req{method: "GET", path: "/oauth_callback?state=forged&code=x", token: "-", version: "-"}, http.StatusBadRequest},
		{"redeeming needs the version", req{method: "POST", path: "/authenticate/token", token: "-", version: "-", body: redeem}, http.StatusBadRequest},
		{"a bad code is 400", req{method: "POST", path: "/authenticate/token", token: "-", body: redeem}, http.StatusBadRequest},
		{"redeeming needs a verifier", req{method: "POST", path: "/authenticate/token", token: "-",
			body: `{"data":{"type":"token_requests","attributes":{"code":"c"}}}`}, http.StatusUnprocessableEntity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if rec := e.do(t, tt.r); rec.Code != tt.want {
				t.Fatalf("%s %s: %d, want %d: %s", tt.r.method, tt.r.path, rec.Code, tt.want, rec.Body)
			}
		})
	}
	for _, c := range people.callers {
		if c == uploader.Name {
			t.Errorf("the upload principal reached the people service")
		}
	}

	// Without a login configured, the login routes say so.
	e = newEnv(t, nil)
	if rec := e.do(t, req{method: "GET", path: "/authenticate", token: "-", version: "-"}); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/authenticate without a login: %d, want 503", rec.Code)
	}
	if rec := e.do(t, req{method: "GET", path: "/tokens"}); rec.Code != http.StatusNotFound {
		t.Errorf("/tokens without People: %d, want 404", rec.Code)
	}
}
