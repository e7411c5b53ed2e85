package instances

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// pgStore is the instances table in the state database.
type pgStore struct{ pool *pgxpool.Pool }

const instanceColumns = `i.id, i.image_id, i.owner, i.state, i.port, i.username, i.password, i.error,
	i.created_at, i.updated_at, im.database_name`

const fromInstances = ` FROM instances i JOIN images im ON im.id = i.image_id `

func scanInstance(r pgx.Row) (*draupnir.Instance, error) {
	var in draupnir.Instance
	var state string
	if err := r.Scan(&in.ID, &in.ImageID, &in.Owner, &state, &in.Port, &in.Username, &in.Password, &in.Error,
		&in.CreatedAt, &in.UpdatedAt, &in.Database); err != nil {
		return nil, err
	}
	in.State = draupnir.InstanceState(state)
	in.CreatedAt = in.CreatedAt.UTC()
	in.UpdatedAt = in.UpdatedAt.UTC()
	return &in, nil
}

func notFound(id int64) error {
	return draupnir.Errorf(draupnir.KindNotFound, "instance %d does not exist", id)
}

func (s pgStore) get(ctx context.Context, id int64) (*draupnir.Instance, error) {
	in, err := scanInstance(s.pool.QueryRow(ctx, `SELECT `+instanceColumns+fromInstances+`WHERE i.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading instance %d: %w", id, err)
	}
	return in, nil
}

func (s pgStore) listAll(ctx context.Context) ([]*draupnir.Instance, error) {
	return s.list(ctx, "")
}

// listOwned leaves out the warm pool's instances, starting or waiting:
// they are nobody's.
func (s pgStore) listOwned(ctx context.Context, owner *string) ([]*draupnir.Instance, error) {
	if owner == nil {
		return s.list(ctx, "WHERE i.owner <> ''")
	}
	return s.list(ctx, "WHERE i.owner = $1 AND i.owner <> ''", *owner)
}

func (s pgStore) listOfImage(ctx context.Context, imageID int64) ([]*draupnir.Instance, error) {
	return s.list(ctx, "WHERE i.image_id = $1 AND i.state NOT IN ('creating', 'resetting')", imageID)
}

func (s pgStore) list(ctx context.Context, where string, args ...any) ([]*draupnir.Instance, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+instanceColumns+fromInstances+where+` ORDER BY i.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing instances: %w", err)
	}
	defer rows.Close()
	var out []*draupnir.Instance
	for rows.Next() {
		in, err := scanInstance(rows)
		if err != nil {
			return nil, fmt.Errorf("listing instances: %w", err)
		}
		out = append(out, in)
	}
	return out, rows.Err()
}

// insert creates an instance row on the lowest port of [min, max] that no
// other instance holds and that is not in skip. It returns nil, nil when no
// port is free.
func (s pgStore) insert(ctx context.Context, imageID int64, owner, username, password string, min, max int, skip []int32) (*draupnir.Instance, error) {
	// One round trip: instance create is on the hot path.
	in, err := scanInstance(s.pool.QueryRow(ctx, `WITH i AS (
			INSERT INTO instances (image_id, owner, port, username, password)
			SELECT $1, $2, p, $3, $4 FROM generate_series($5::int, $6::int) AS p
			WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.port = p) AND p <> ALL($7::int[])
			ORDER BY p LIMIT 1
			ON CONFLICT (port) DO NOTHING
			RETURNING *)
		SELECT `+instanceColumns+` FROM i JOIN images im ON im.id = i.image_id`,
		imageID, owner, username, password, min, max, skip))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("creating an instance row: %w", err)
	}
	return in, nil
}

// movePort gives instance id another free port, not in skip.
func (s pgStore) movePort(ctx context.Context, id int64, min, max int, skip []int32) (int, error) {
	var port int
	err := s.pool.QueryRow(ctx, `UPDATE instances SET port = (
			SELECT p FROM generate_series($2::int, $3::int) AS p
			WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.port = p) AND p <> ALL($4::int[])
			ORDER BY p LIMIT 1), updated_at = now()
		WHERE id = $1 RETURNING port`, id, min, max, skip).Scan(&port)
	if err != nil {
		return 0, fmt.Errorf("moving instance %d to another port: %w", id, err)
	}
	return port, nil
}

// claimWarm hands a warm instance of image imageID to owner, or returns nil
// when the pool has none. SKIP LOCKED lets concurrent creates take different
// ones without waiting on each other.
func (s pgStore) claimWarm(ctx context.Context, imageID int64, owner string) (*draupnir.Instance, error) {
	in, err := scanInstance(s.pool.QueryRow(ctx, `WITH i AS (
			UPDATE instances SET owner = $2, state = 'running', created_at = now(), updated_at = now()
			WHERE id = (SELECT id FROM instances WHERE image_id = $1 AND state = 'warm'
			            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING *)
		SELECT `+instanceColumns+` FROM i JOIN images im ON im.id = i.image_id`, imageID, owner))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("taking an instance from the warm pool: %w", err)
	}
	return in, nil
}

// poolSizes returns, for every ready image made from an upload, how many
// warm instances it has. Images saved from instances get no pool: there may
// be many, each used by few.
func (s pgStore) poolSizes(ctx context.Context) (map[int64]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT im.id, count(i.id) FROM images im
		LEFT JOIN instances i ON i.image_id = im.id AND i.state = 'warm'
		WHERE im.state = 'ready' AND im.from_instance_id IS NULL GROUP BY im.id`)
	if err != nil {
		return nil, fmt.Errorf("counting warm instances: %w", err)
	}
	defer rows.Close()
	sizes := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		sizes[id] = n
	}
	return sizes, rows.Err()
}

func (s pgStore) setState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) error {
	_, err := s.pool.Exec(ctx, `UPDATE instances SET state = $2, error = $3, updated_at = now() WHERE id = $1`,
		id, string(state), reason)
	if err != nil {
		return fmt.Errorf("recording instance %d as %s: %w", id, state, err)
	}
	return nil
}

// setLiveState is setState for the crash-recovery path: it leaves alone an
// instance that is being destroyed or reset (or is gone) and reports whether it
// changed anything.
func (s pgStore) setLiveState(ctx context.Context, id int64, state draupnir.InstanceState, reason string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = $2, error = $3, updated_at = now()
		WHERE id = $1 AND state NOT IN ('destroying', 'resetting')`, id, string(state), reason)
	if err != nil {
		return false, fmt.Errorf("recording instance %d as %s: %w", id, state, err)
	}
	return tag.RowsAffected() == 1, nil
}

// claimDestroy marks instance id as being destroyed, unless another request
// got there first or it is being reset.
func (s pgStore) claimDestroy(ctx context.Context, id int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = 'destroying', updated_at = now()
		WHERE id = $1 AND state NOT IN ('destroying', 'resetting')`, id)
	if err != nil {
		return false, fmt.Errorf("destroying instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// claimReset marks instance id, owned by somebody and neither being created
// nor destroyed nor reset, as being reset to image imageID.
func (s pgStore) claimReset(ctx context.Context, id, imageID int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = 'resetting', image_id = $2, error = '', updated_at = now()
		WHERE id = $1 AND owner <> '' AND state IN ('running', 'stopped', 'failed')`, id, imageID)
	if err != nil {
		return false, fmt.Errorf("resetting instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

func (s pgStore) delete(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM instances WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("deleting the row of instance %d: %w", id, err)
	}
	return nil
}
