package auth

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// TestStoreDatabaseDownHidesCause checks that a token lookup failing on the
// state database says so without passing the driver's error (which names
// the database's host, user and name) to a client that may have no token.
func TestStoreDatabaseDownHidesCause(t *testing.T) {
	// Port 1 on loopback refuses connections; the pool connects lazily.
	pool, err := pgxpool.New(context.Background(), "postgres://secret-db-user@127.0.0.1:1/secret-db-name?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := NewStore(StoreOptions{Pool: pool})

	_, err = s.AuthenticateToken(context.Background(), TokenPrefix+"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	if err == nil {
		t.Fatal("a token was accepted with the state database down")
	}
	if k := draupnir.KindOf(err); k != draupnir.KindUnavailable {
		t.Fatalf("kind %v, want unavailable: %v", k, err)
	}
	msg := draupnir.ClientMessage(err)
	for _, leak := range []string{"secret-db-user", "secret-db-name", "127.0.0.1"} {
		if strings.Contains(msg, leak) {
			t.Errorf("client message %q names %q", msg, leak)
		}
	}
	// The operator still gets the cause.
	var de *draupnir.Error
	if !errors.As(err, &de) || de.Err == nil || !strings.Contains(de.Err.Error(), "127.0.0.1") {
		t.Errorf("the cause is lost: %#v", err)
	}
}
