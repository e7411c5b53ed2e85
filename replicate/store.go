package replicate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// store is image_copies (and what shipping reads of images) in the state
// database. Each node writes only its own rows, except an image's destroy,
// which marks every copy of it.
type store struct{ pool *pgxpool.Pool }

// candidate is a ready image this node holds no ready copy of.
type candidate struct {
	ID, ParentID  int64
	Size          int64
	Origin        string   // the node that made it
	ReadyOn       []string // nodes holding it ready
	ParentReadyOn []string // nodes holding its parent ready
	Attempts      int
	Age           time.Duration // since the last attempt ended
}

// candidates lists the ready images, not being destroyed and not made
// here, that node holds no copy of or whose copy failed; oldest first, so
// that a series' earlier image arrives before the later ones that can be
// sent incrementally against it.
func (s store) candidates(ctx context.Context, node string) ([]candidate, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT i.id, par.id, i.size_bytes,
			coalesce(nullif(i.node, ''), (SELECT min(o.node) FROM image_copies o WHERE o.image_id = i.id AND o.state = 'ready'), ''),
			array(SELECT r.node FROM image_copies r WHERE r.image_id = i.id AND r.state = 'ready' ORDER BY r.node),
			array(SELECT r.node FROM image_copies r WHERE r.image_id = par.id AND r.state = 'ready' ORDER BY r.node),
			coalesce(c.attempts, 0), coalesce(extract(epoch FROM now() - c.updated_at), 0)
		FROM images i LEFT JOIN image_copies c ON c.image_id = i.id AND c.node = $1,
			-- The series' previous ready image, else the image it was saved from.
			LATERAL (SELECT coalesce((SELECT max(p.id) FROM images p
				WHERE i.source <> '' AND p.source = i.source AND p.id < i.id AND p.state = 'ready'), i.parent_image_id, 0) AS id) par
		WHERE i.state = 'ready' AND i.node <> $1
			AND (c.state IS NULL OR c.state = 'failed')
			AND NOT EXISTS (SELECT 1 FROM image_copies d WHERE d.image_id = i.id AND d.state = 'destroying')
		ORDER BY i.id`, node)
	if err != nil {
		return nil, fmt.Errorf("listing images to copy: %w", err)
	}
	defer rows.Close()
	var out []candidate
	for rows.Next() {
		var c candidate
		var age float64
		if err := rows.Scan(&c.ID, &c.ParentID, &c.Size, &c.Origin, &c.ReadyOn, &c.ParentReadyOn, &c.Attempts, &age); err != nil {
			return nil, fmt.Errorf("listing images to copy: %w", err)
		}
		c.Age = time.Duration(age * float64(time.Second))
		out = append(out, c)
	}
	return out, rows.Err()
}

// claim starts an attempt at copying image id to node: a new 'copying' row,
// or a failed one taken up again. ok is false when the row is in another
// state or the image is gone.
func (s store) claim(ctx context.Context, id int64, node string) (attempt int, ok bool, err error) {
	err = s.pool.QueryRow(ctx, `
		INSERT INTO image_copies (image_id, node, state, attempts) VALUES ($1, $2, 'copying', 1)
		ON CONFLICT (image_id, node) DO UPDATE SET state = 'copying', attempts = image_copies.attempts + 1, updated_at = now()
			WHERE image_copies.state = 'failed'
		RETURNING attempts`, id, node).Scan(&attempt)
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, false, nil
	case errors.As(err, &pe) && pe.Code == "23503": // the image is gone
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("claiming the copy of image %d: %w", id, err)
	}
	return attempt, true, nil
}

// ready marks node's copy of image id ready, if it is still being copied
// (false: the image is being destroyed).
func (s store) ready(ctx context.Context, id int64, node string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE image_copies SET state = 'ready', error = '', updated_at = now()
		WHERE image_id = $1 AND node = $2 AND state = 'copying'`, id, node)
	return tag.RowsAffected() == 1, err
}

// failed records a failed attempt at node's copy of image id.
func (s store) failed(ctx context.Context, id int64, node, reason string) error {
	_, err := s.pool.Exec(ctx, `UPDATE image_copies SET state = 'failed', error = $3, updated_at = now()
		WHERE image_id = $1 AND node = $2 AND state = 'copying'`, id, node, reason)
	return err
}

// interrupted turns node's copies in progress into failed attempts.
func (s store) interrupted(ctx context.Context, node string) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE image_copies SET state = 'failed',
		error = 'interrupted by a stop of the node', updated_at = now()
		WHERE node = $1 AND state = 'copying'`, node)
	if err != nil {
		return 0, fmt.Errorf("reconciling image copies: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ownReady gives every ready image made on node its ready copy, in case a
// crash came between the two.
func (s store) ownReady(ctx context.Context, node string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO image_copies (image_id, node, state)
		SELECT id, $1, 'ready' FROM images WHERE node = $1 AND state = 'ready'
		ON CONFLICT (image_id, node) DO NOTHING`, node)
	if err != nil {
		return fmt.Errorf("reconciling image copies: %w", err)
	}
	return nil
}

// copyState is the state of node's copy of image id ("" for none).
func (s store) copyState(ctx context.Context, id int64, node string) (string, error) {
	var state string
	err := s.pool.QueryRow(ctx, `SELECT state FROM image_copies WHERE image_id = $1 AND node = $2`, id, node).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the copy of image %d: %w", id, err)
	}
	return state, nil
}

// destroying lists the images whose destroy node has yet to carry out.
func (s store) destroying(ctx context.Context, node string) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT image_id FROM image_copies WHERE node = $1 AND state = 'destroying' ORDER BY image_id`, node)
	if err != nil {
		return nil, fmt.Errorf("listing image destroys: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// dropCopy deletes node's row of a destroyed image id and, when no node
// holds a copy any more, the image's row (gone).
func (s store) dropCopy(ctx context.Context, id int64, node string) (gone bool, err error) {
	if _, err := s.pool.Exec(ctx, `DELETE FROM image_copies WHERE image_id = $1 AND node = $2`, id, node); err != nil {
		return false, fmt.Errorf("deleting the copy of image %d: %w", id, err)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM images WHERE id = $1
		AND NOT EXISTS (SELECT 1 FROM image_copies WHERE image_id = $1)`, id)
	if err != nil {
		return false, fmt.Errorf("deleting image %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// forgetRemoved deletes the copies of nodes that are no longer registered
// (removed for good), and the rows of images being destroyed that no node
// holds a copy of any more; it returns how many of each.
func (s store) forgetRemoved(ctx context.Context) (copies, images int64, err error) {
	var destroyed []int64
	rows, err := s.pool.Query(ctx, `DELETE FROM image_copies c
		WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.name = c.node)
		RETURNING image_id, state = 'destroying'`)
	if err != nil {
		return 0, 0, fmt.Errorf("forgetting removed nodes' image copies: %w", err)
	}
	for rows.Next() {
		var id int64
		var destroying bool
		if err := rows.Scan(&id, &destroying); err != nil {
			rows.Close()
			return 0, 0, fmt.Errorf("forgetting removed nodes' image copies: %w", err)
		}
		copies++
		if destroying {
			destroyed = append(destroyed, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("forgetting removed nodes' image copies: %w", err)
	}
	if len(destroyed) == 0 {
		return copies, 0, nil
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM images i WHERE i.id = ANY($1)
		AND NOT EXISTS (SELECT 1 FROM image_copies c WHERE c.image_id = i.id)`, destroyed)
	if err != nil {
		return copies, 0, fmt.Errorf("deleting destroyed images: %w", err)
	}
	return copies, tag.RowsAffected(), nil
}
