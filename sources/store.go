package sources

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// store is the sources table: what outlives a restart about refreshes.
type store struct{ pool *pgxpool.Pool }

type stored struct {
	lastRefreshAt time.Time
	lastError     string
}

// begin records that a refresh of name is making image id.
func (s store) begin(ctx context.Context, name string, id int64) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO sources (name, refreshing_image_id) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET refreshing_image_id = $2`, name, id)
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
	rows, err := s.pool.Query(ctx, `SELECT name, refreshing_image_id FROM sources WHERE refreshing_image_id IS NOT NULL`)
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
