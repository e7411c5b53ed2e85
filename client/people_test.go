package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/draupnir-db/draupnir"
)

// TestBeginLogin: the server's redirect is returned, not followed; an error
// answer is the server's detail; only an absolute http(s) URL is returned.
func TestBeginLogin(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		location string
		body     string
		want     string        // the URL returned, or a substring of the error
		kind     draupnir.Kind // of the error; -1: no error
	}{
		{"the provider", http.StatusFound, "https://idp.example/auth?state=x", "", "https://idp.example/auth?state=x", -1},
		{"no login", http.StatusServiceUnavailable, "", `{"errors":[{"status":"503","code":"service_unavailable","title":"Service Unavailable","detail":"this server has no login configured"}]}`,
			"this server has no login configured", draupnir.KindUnavailable},
		{"a bad parameter", http.StatusBadRequest, "", `{"errors":[{"status":"400","code":"bad_request","title":"Bad Request","detail":"redirect_uri must be …"}]}`,
			"redirect_uri must be", draupnir.KindInvalid},
		{"a page, not a login", http.StatusOK, "", "<html>", "unexpected answer 200 OK", draupnir.KindInternal},
		{"a relative redirect", http.StatusFound, "/elsewhere", "", "not an http(s) URL", draupnir.KindInternal},
		{"another scheme", http.StatusFound, "file:///etc/passwd", "", "not an http(s) URL", draupnir.KindInternal},
		{"a custom handler", http.StatusFound, "vscode://x/y", "", "not an http(s) URL", draupnir.KindInternal},
		{"credentials in the URL", http.StatusFound, "https://user:pw@idp.example/", "", "not an http(s) URL", draupnir.KindInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			followed := false
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/authenticate" {
					followed = true
					return
				}
				q := r.URL.Query()
				if q.Get("redirect_uri") != "http://127.0.0.1:9/callback" || q.Get("state") != "st" || q.Get("code_challenge") != "ch" ||
					q.Get("code_challenge_method") != "S256" || r.Header.Get("Authorization") != "" {
					t.Errorf("request %s with Authorization %q", r.URL, r.Header.Get("Authorization"))
				}
				if tt.location != "" {
					w.Header().Set("Location", tt.location)
				}
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			got, err := New(srv.URL, "secret").BeginLogin(context.Background(), "http://127.0.0.1:9/callback", "st", "ch")
			if followed {
				t.Error("the redirect was followed")
			}
			if tt.kind == -1 {
				if err != nil || got != tt.want {
					t.Errorf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || draupnir.KindOf(err) != tt.kind || got != "" {
				t.Errorf("got %q, %v (kind %v); want an error of kind %v saying %q", got, err, draupnir.KindOf(err), tt.kind, tt.want)
			}
		})
	}
}
