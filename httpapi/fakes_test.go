package httpapi

import (
	"context"

	"github.com/draupnir-db/draupnir"
)

// Small in-memory stand-ins for the core services, enough to exercise the
// door: they keep state, enforce visibility like the real services, record
// what they were asked, and can be told to fail.

// fakeAuth knows a fixed set of tokens.
type fakeAuth struct {
	tokens map[string]draupnir.Principal
	err    error // returned for every token when set
}

func (f *fakeAuth) AuthenticateToken(ctx context.Context, token string) (draupnir.Principal, error) {
	if f.err != nil {
		return draupnir.Principal{}, f.err
	}
	p, ok := f.tokens[token]
	if !ok {
		return draupnir.Principal{}, draupnir.Errorf(draupnir.KindUnauthorized, "unknown token")
	}
	return p, nil
}

type fakeHealth struct{ err error }

func (f fakeHealth) Check(context.Context) error { return f.err }
