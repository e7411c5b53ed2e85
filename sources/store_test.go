package sources

import (
	"context"
	"testing"

	"github.com/draupnir-db/draupnir"
	"github.com/draupnir-db/draupnir/internal/testenv"
)

// TestClusterRefreshClaims: on a cluster every node that lists a source
// may schedule it; one refresh at a time holds across nodes, a refresh
// whose image has ended frees the source whatever its row says, and a
// starting node fails only its own interrupted refreshes.
func TestClusterRefreshClaims(t *testing.T) {
	ctx := context.Background()
	pool := testenv.StatePool(t)
	if _, err := pool.Exec(ctx, `INSERT INTO images (id, state, backed_up_at, source, node) VALUES
		(1, 'finalising', now(), 'app', 'a'), (2, 'created', now(), 'app', 'b'), (3, 'created', now(), 'app', 'b')`); err != nil {
		t.Fatal(err)
	}
	a, b := store{pool, "a"}, store{pool, "b"}
	if err := a.begin(ctx, "app", 1); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	err := b.begin(ctx, "app", 2)
	if draupnir.KindOf(err) != draupnir.KindConflict {
		t.Fatalf("a second node's claim while image 1 is being made = %v, want a conflict", err)
	}
	if want := `source "app" is already being refreshed on node a (image 1)`; err.Error() != want {
		t.Errorf("conflict says %q, want %q", err, want)
	}
	// b restarts: a's refresh is not b's to fail.
	if got, err := b.interrupted(ctx); err != nil || len(got) != 0 {
		t.Errorf("b's interrupted refreshes = %v, %v; a's refresh is a's", got, err)
	}
	if got, err := a.interrupted(ctx); err != nil || got["app"] != 1 {
		t.Errorf("a's interrupted refreshes = %v, %v; want app: 1", got, err)
	}
	// Image 1 ended (ready) but a died before recording it: the claim is stale.
	if _, err := pool.Exec(ctx, `UPDATE images SET state = 'ready' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if err := b.begin(ctx, "app", 3); err != nil {
		t.Fatalf("claim after image 1 ended: %v", err)
	}
}
