package sources

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// store is the sources table: what outlives a restart about refreshes.
// On a node of a cluster the table is every node's: node names this one
// (empty on a single node).
type store struct {
	pool *pgxpool.Pool
	node string
}

type stored struct {
	lastRefreshAt time.Time
	lastError     string
}

// begin records that a refresh of name is making image id. It fails with
// a conflict while another refresh of name is recorded whose image is
// still being made: on a cluster, every node that lists a source may
// schedule it, and one of them wins. A refresh whose image is ready,
// failed or gone has ended, whatever its row still says.
func (s store) begin(ctx context.Context, name string, id int64) error {
	var other int64
	err := s.pool.QueryRow(ctx, `INSERT INTO sources AS s (name, refreshing_image_id) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET refreshing_image_id = $2
			WHERE s.refreshing_image_id IS NULL OR s.refreshing_image_id = $2 OR NOT EXISTS (
				SELECT 1 FROM images i WHERE i.id = s.refreshing_image_id AND i.state IN ('created', 'uploading', 'finalising'))
		RETURNING 0`, name, id).Scan(&other)
	if errors.Is(err, pgx.ErrNoRows) {
		var node string
		_ = s.pool.QueryRow(ctx, `SELECT i.id, i.node FROM sources s JOIN images i ON i.id = s.refreshing_image_id
			WHERE s.name = $1`, name).Scan(&other, &node)
		where := ""
		if node != "" {
			where = " on node " + node
		}
		return draupnir.Errorf(draupnir.KindConflict, "source %q is already being refreshed%s (image %d)", name, where, other)
	}
	if err != nil {
		return fmt.Errorf("recording a refresh of source %q: %w", name, err)
	}
	return nil
}

// end records that the refresh of name that made image id ended, failed
// with reason if it is not empty. It returns the image of the failed
// refresh before it, if any, which is now the caller's to destroy: a failed
// image is kept only until the next refresh ends.
func (s store) end(ctx context.Context, name string, id int64, reason string) (prevFailed int64, err error) {
	var failed *int64
	if reason != "" && id != 0 {
		failed = &id
	}
	var prev *int64
	// old is read from the statement's snapshot, before the upsert (a
	// FOR UPDATE would see the row the upsert changed, and skip it). One
	// refresh of a source runs at a time, so nothing races it.
	err = s.pool.QueryRow(ctx, `WITH old AS (SELECT last_failed_image_id FROM sources WHERE name = $1)
		INSERT INTO sources AS s (name, last_refresh_at, last_error, last_failed_image_id) VALUES ($1, now(), $2, $3)
		ON CONFLICT (name) DO UPDATE SET refreshing_image_id = NULL, last_refresh_at = now(), last_error = $2,
			last_failed_image_id = $3
		RETURNING (SELECT last_failed_image_id FROM old)`, name, reason, failed).Scan(&prev)
	if err != nil {
		return 0, fmt.Errorf("recording the end of a refresh of source %q: %w", name, err)
	}
	if prev == nil || *prev == id {
		return 0, nil
	}
	return *prev, nil
}

// interrupted returns the image of every refresh still recorded as under
// way, by source: at a start, those a stopped server left.
func (s store) interrupted(ctx context.Context) (map[string]int64, error) {
	// Only this node's: another node's refresh may be under way (a node
	// that is down fails its own when it starts again).
	rows, err := s.pool.Query(ctx, `SELECT s.name, s.refreshing_image_id FROM sources s
		JOIN images i ON i.id = s.refreshing_image_id WHERE i.node = $1`, s.node)
	if err != nil {
		return nil, fmt.Errorf("reading interrupted refreshes: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var name string
		var id int64
		if err := rows.Scan(&name, &id); err != nil {
			return nil, fmt.Errorf("reading interrupted refreshes: %w", err)
		}
		out[name] = id
	}
	return out, rows.Err()
}

// all returns what is recorded of every source, by name.
func (s store) all(ctx context.Context) (map[string]stored, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, last_refresh_at, last_error FROM sources`)
	if err != nil {
		return nil, fmt.Errorf("reading sources: %w", err)
	}
	defer rows.Close()
	out := map[string]stored{}
	for rows.Next() {
		var name string
		var at *time.Time
		var st stored
		if err := rows.Scan(&name, &at, &st.lastError); err != nil {
			return nil, fmt.Errorf("reading sources: %w", err)
		}
		if at != nil {
			st.lastRefreshAt = at.UTC()
		}
		out[name] = st
	}
	return out, rows.Err()
}
