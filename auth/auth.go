// Package auth decides who a request comes from. For now it knows the static
// tokens of the original Draupnir: the shared secret, which authenticates the
// trusted upload principal, and — only when environment is "test" — the
// integration-test token, which authenticates a normal user. Every comparison
// runs in constant time, and no token is ever logged.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"

	"github.com/draupnir-db/draupnir"
)

// IntegrationTestToken is the token the original Draupnir's integration tests
// use. It is accepted only in the test environment.
const IntegrationTestToken = "the-integration-access-token"

// IntegrationTestUser is the principal that IntegrationTestToken stands for.
const IntegrationTestUser = "integration-test@draupnir.test"

// Tokens authenticates bearer tokens.
type Tokens struct {
	sharedSecret [32]byte
	hasSecret    bool
	testToken    bool
}

// NewTokens returns an authenticator for the given shared secret (empty: no
// upload token) that accepts IntegrationTestToken only if environment is
// "test".
func NewTokens(sharedSecret, environment string) *Tokens {
	t := &Tokens{testToken: environment == "test"}
	if sharedSecret != "" {
		t.sharedSecret = sha256.Sum256([]byte(sharedSecret))
		t.hasSecret = true
	}
	return t
}

// AuthenticateToken returns the principal of token, or a KindUnauthorized error.
func (t *Tokens) AuthenticateToken(_ context.Context, token string) (draupnir.Principal, error) {
	// Hash first so the comparison takes the same time whatever the length.
	h := sha256.Sum256([]byte(token))
	if token != "" && t.hasSecret && subtle.ConstantTimeCompare(h[:], t.sharedSecret[:]) == 1 {
		return draupnir.Principal{Name: draupnir.UploadPrincipal, Upload: true}, nil
	}
	test := sha256.Sum256([]byte(IntegrationTestToken))
	if subtle.ConstantTimeCompare(h[:], test[:]) == 1 && t.testToken {
		return draupnir.Principal{Name: IntegrationTestUser}, nil
	}
	return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "the access token is not valid")
}
