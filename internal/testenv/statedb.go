package testenv

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir/migrations"
)

// StatePool starts a throwaway cluster with Draupnir's schema applied and
// returns a pool on it: the state database that several nodes under test
// share. Both are closed at cleanup.
func StatePool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	src := SourceCluster(t, "")
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, fmt.Sprintf("host=%s port=5432 user=%s dbname=postgres", src.SocketDir, src.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(ctx, pool); err != nil {
		t.Fatalf("migrating the state database: %v", err)
	}
	return pool
}
