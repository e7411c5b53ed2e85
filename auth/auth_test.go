package auth

import (
	"context"
	"testing"

	"github.com/draupnir-db/draupnir"
)

func TestTokens(t *testing.T) {
	const secret = "0123456789abcdef-secret"
	tests := []struct {
		name, env, token string
		want             draupnir.Principal
		ok               bool
	}{
		{"shared secret is the upload principal", "production", secret, draupnir.Principal{Name: "upload", Upload: true}, true},
		{"test token in test", "test", IntegrationTestToken, draupnir.Principal{Name: IntegrationTestUser}, true},
		{"test token refused in production", "production", IntegrationTestToken, draupnir.Principal{}, false},
		{"test token refused in development", "development", IntegrationTestToken, draupnir.Principal{}, false},
		{"wrong token", "test", "nope", draupnir.Principal{}, false},
		{"prefix of the secret", "test", secret[:10], draupnir.Principal{}, false},
		{"empty token", "test", "", draupnir.Principal{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewTokens(secret, tt.env).AuthenticateToken(context.Background(), tt.token)
			if tt.ok != (err == nil) || p != tt.want {
				t.Fatalf("got %+v, %v; want %+v ok=%v", p, err, tt.want, tt.ok)
			}
			if err != nil && draupnir.KindOf(err) != draupnir.KindUnauthorized {
				t.Fatalf("error kind %v, want unauthorized", draupnir.KindOf(err))
			}
		})
	}
	if _, err := NewTokens("", "production").AuthenticateToken(context.Background(), ""); err == nil {
		t.Fatal("an empty token matched an empty shared secret")
	}
}
