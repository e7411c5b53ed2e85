package instances

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// pgStore is the instances table in the state database, as node sees it:
// it lists, allocates ports for and pools only its own node's instances
// (node is empty on a single node), and reads and counts everyone's.
type pgStore struct {
	pool *pgxpool.Pool
	node string
}

const instanceColumns = `i.id, i.image_id, i.owner, i.state, i.port, i.username, i.password, i.error,
	i.created_at, i.updated_at, im.database_name, i.expires_at, i.protected_until, i.last_active_at, i.node`

const fromInstances = ` FROM instances i JOIN images im ON im.id = i.image_id `

func scanInstance(r pgx.Row) (*draupnir.Instance, error) {
	var in draupnir.Instance
	var state string
	var expires, protected *time.Time
	if err := r.Scan(&in.ID, &in.ImageID, &in.Owner, &state, &in.Port, &in.Username, &in.Password, &in.Error,
		&in.CreatedAt, &in.UpdatedAt, &in.Database, &expires, &protected, &in.LastActiveAt, &in.Node); err != nil {
		return nil, err
	}
	in.State = draupnir.InstanceState(state)
	in.CreatedAt = in.CreatedAt.UTC()
	in.UpdatedAt = in.UpdatedAt.UTC()
	in.LastActiveAt = in.LastActiveAt.UTC()
	if expires != nil {
		in.ExpiresAt = expires.UTC()
	}
	if protected != nil {
		in.ProtectedUntil = protected.UTC()
	}
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
	return s.list(ctx, "WHERE i.node = $1", s.node)
}

// listOwned leaves out the warm pool's instances, starting or waiting:
// they are nobody's.
func (s pgStore) listOwned(ctx context.Context, owner *string) ([]*draupnir.Instance, error) {
	if owner == nil {
		return s.list(ctx, "WHERE i.owner <> ''")
	}
	return s.list(ctx, "WHERE i.owner = $1 AND i.owner <> ''", *owner)
}

func (s pgStore) listOfImage(ctx context.Context, imageID int64, here bool) ([]*draupnir.Instance, error) {
	return s.list(ctx, "WHERE i.image_id = $1 AND i.state NOT IN ('creating', 'resetting') AND (NOT $2 OR i.node = $3)",
		imageID, here, s.node)
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

// nextID reserves the id of a new instance. Nothing is committed: the
// sequence moves on whatever happens to the id.
func (s pgStore) nextID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('instances', 'id'))`).Scan(&id); err != nil {
		return 0, fmt.Errorf("reserving an instance id: %w", err)
	}
	return id, nil
}

// insert creates the row of instance id, in state creating, on the lowest
// port of [min, max] that no other instance holds and that is not in skip.
// It returns nil, nil when no port is free.
//
// Like setDone, its commit does not wait for the disk (it runs while the
// snapshot makes btrfs commit a transaction, which an fsync would wait
// for): a row that a crash of the state database loses leaves a subvolume
// and maybe a postgres that no row owns, which Reconcile removes. What
// keeps ports and quotas apart is visible at once all the same.
func (s pgStore) insert(ctx context.Context, id, imageID int64, owner, username, password string, min, max int, skip []int32, expires time.Time) (*draupnir.Instance, error) {
	// One round trip: instance create is on the hot path.
	in, err := scanInstance(s.pool.QueryRow(ctx, `WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)),
		i AS (
			INSERT INTO instances (id, image_id, owner, port, username, password, expires_at, node)
			SELECT $9, $1, $2, p, $3, $4, $8, $10 FROM generate_series($5::int, $6::int) AS p, lazy
			WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.node = $10 AND i.port = p) AND p <> ALL($7::int[])
			ORDER BY p LIMIT 1
			ON CONFLICT (node, port) DO NOTHING
			RETURNING *)
		SELECT `+instanceColumns+` FROM i JOIN images im ON im.id = i.image_id`,
		imageID, owner, username, password, min, max, skip, nullTime(expires), id, s.node))
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
			WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.node = $5 AND i.port = p) AND p <> ALL($4::int[])
			ORDER BY p LIMIT 1), updated_at = now()
		WHERE id = $1 RETURNING port`, id, min, max, skip, s.node).Scan(&port)
	if err != nil {
		return 0, fmt.Errorf("moving instance %d to another port: %w", id, err)
	}
	return port, nil
}

// claimWarm hands a warm instance of image imageID to owner, or returns nil
// when the pool has none. SKIP LOCKED lets concurrent creates take different
// ones without waiting on each other.
func (s pgStore) claimWarm(ctx context.Context, imageID int64, owner string, expires time.Time) (*draupnir.Instance, error) {
	in, err := scanInstance(s.pool.QueryRow(ctx, `WITH i AS (
			UPDATE instances SET owner = $2, state = 'running', created_at = now(), updated_at = now(),
				expires_at = $3, last_active_at = now()
			WHERE id = (SELECT id FROM instances WHERE image_id = $1 AND state = 'warm' AND node = $4
			            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING *)
		SELECT `+instanceColumns+` FROM i JOIN images im ON im.id = i.image_id`, imageID, owner, nullTime(expires), s.node))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("taking an instance from the warm pool: %w", err)
	}
	return in, nil
}

// poolSizes returns, for every ready image made from an upload that this
// node holds (it made it, or holds a ready copy), how many warm instances
// it has here. Images saved from instances get no pool: there may be many,
// each used by few.
func (s pgStore) poolSizes(ctx context.Context) (map[int64]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT im.id, count(i.id) FROM images im
		LEFT JOIN instances i ON i.image_id = im.id AND i.state = 'warm' AND i.node = $1
		WHERE im.state = 'ready' AND im.from_instance_id IS NULL
		AND (im.node = $1 OR EXISTS (SELECT 1 FROM image_copies c
			WHERE c.image_id = im.id AND c.node = $1 AND c.state = 'ready'))
		GROUP BY im.id`, s.node)
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

// setDone records instance id, whose create or reset has just finished, as
// in state. The commit does not wait for the state database's WAL to reach
// the disk: that flush, right after the snapshot made btrfs commit a
// transaction, cost ~10 ms. Only a crash of the state database (or its
// host) within a fraction of a second can lose the change, and then the
// row still says creating or resetting, and Reconcile destroys the
// instance or redoes its reset: never half made.
func (s pgStore) setDone(ctx context.Context, id int64, state draupnir.InstanceState) error {
	_, err := s.pool.Exec(ctx, `WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
		UPDATE instances SET state = $2, error = '', updated_at = now() FROM lazy WHERE id = $1`, id, string(state))
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
func (s pgStore) claimDestroy(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = 'destroying', destroy_reason = $2, error = $3, updated_at = now()
		WHERE id = $1 AND state NOT IN ('destroying', 'resetting')`, id, string(reason), detail)
	if err != nil {
		return false, fmt.Errorf("destroying instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// claimReset marks instance id, owned by somebody and neither being created
// nor destroyed nor reset, as being reset to image imageID. Its expiry and
// protection stay; a reset is use, so idle clean-up starts counting again.
func (s pgStore) claimReset(ctx context.Context, id, imageID int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = 'resetting', image_id = $2, error = '',
			last_active_at = now(), updated_at = now()
		WHERE id = $1 AND owner <> '' AND state IN ('running', 'stopped', 'failed')`, id, imageID)
	if err != nil {
		return false, fmt.Errorf("resetting instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// delete deletes the row of instance id. One that a rule claimed
// (destroy_reason set) leaves a tombstone, in the same statement, so that a
// crash cannot lose it.
func (s pgStore) delete(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `WITH d AS (DELETE FROM instances WHERE id = $1
			RETURNING id, image_id, owner, destroy_reason, error)
		INSERT INTO instance_tombstones (id, image_id, owner, reason, detail)
		SELECT id, image_id, owner, destroy_reason, error FROM d WHERE destroy_reason <> '' AND owner <> ''
		ON CONFLICT (id) DO NOTHING`, id)
	if err != nil {
		return fmt.Errorf("deleting the row of instance %d: %w", id, err)
	}
	return nil
}

// nullTime is t for a query parameter: NULL for the zero time.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// setLifetime changes the expiry and protection of instance id; a nil
// field stays as it is, a zero time clears it. An instance being destroyed
// is not found.
func (s pgStore) setLifetime(ctx context.Context, id int64, l lifetime) (*draupnir.Instance, error) {
	var expires, protected *time.Time
	if l.expiresAt != nil {
		expires = nullTime(*l.expiresAt)
	}
	if l.protectedUntil != nil {
		protected = nullTime(*l.protectedUntil)
	}
	in, err := scanInstance(s.pool.QueryRow(ctx, `WITH i AS (
			UPDATE instances SET
				expires_at = CASE WHEN $2 THEN $3 ELSE expires_at END,
				protected_until = CASE WHEN $4 THEN $5 ELSE protected_until END,
				updated_at = now()
			WHERE id = $1 AND state <> 'destroying' AND owner <> ''
			RETURNING *)
		SELECT `+instanceColumns+` FROM i JOIN images im ON im.id = i.image_id`,
		id, l.expiresAt != nil, expires, l.protectedUntil != nil, protected))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("changing the lifetime of instance %d: %w", id, err)
	}
	return in, nil
}

// claimLapsed marks instance id as being destroyed by rule reason, if the
// rule still holds at now and the instance is not protected: an extension
// or a protection that came in since the sweeper looked wins.
func (s pgStore) claimLapsed(ctx context.Context, id int64, reason draupnir.DestroyReason, detail string, now, idleBefore time.Time) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET state = 'destroying', destroy_reason = $2, error = $5, updated_at = now()
		WHERE id = $1 AND state IN ('running', 'stopped', 'failed') AND owner <> ''
		AND (protected_until IS NULL OR protected_until <= $3)
		AND CASE $2 WHEN 'expired' THEN expires_at <= $3
		            WHEN 'idle' THEN last_active_at <= $4
		            ELSE false END`, id, string(reason), now, idleBefore, detail)
	if err != nil {
		return false, fmt.Errorf("claiming lapsed instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// countOwned returns how many instances owner has, those being created or
// destroyed too.
func (s pgStore) countOwned(ctx context.Context, owner string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM instances WHERE owner = $1`, owner).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting the instances of %s: %w", owner, err)
	}
	return n, nil
}

const tombstoneColumns = `id, image_id, owner, reason, detail, destroyed_at`

func scanTombstone(r pgx.Row) (*draupnir.Tombstone, error) {
	var t draupnir.Tombstone
	var reason string
	if err := r.Scan(&t.ID, &t.ImageID, &t.Owner, &reason, &t.Detail, &t.DestroyedAt); err != nil {
		return nil, err
	}
	t.Reason = draupnir.DestroyReason(reason)
	t.DestroyedAt = t.DestroyedAt.UTC()
	return &t, nil
}

// tombstone returns the tombstone of instance id, or nil.
func (s pgStore) tombstone(ctx context.Context, id int64) (*draupnir.Tombstone, error) {
	t, err := scanTombstone(s.pool.QueryRow(ctx, `SELECT `+tombstoneColumns+` FROM instance_tombstones WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the tombstone of instance %d: %w", id, err)
	}
	return t, nil
}

// tombstones returns owner's tombstones (everybody's for nil), newest
// first.
func (s pgStore) tombstones(ctx context.Context, owner *string) ([]*draupnir.Tombstone, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tombstoneColumns+` FROM instance_tombstones
		WHERE $1::text IS NULL OR owner = $1 ORDER BY destroyed_at DESC, id DESC`, owner)
	if err != nil {
		return nil, fmt.Errorf("listing tombstones: %w", err)
	}
	defer rows.Close()
	var out []*draupnir.Tombstone
	for rows.Next() {
		t, err := scanTombstone(rows)
		if err != nil {
			return nil, fmt.Errorf("listing tombstones: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// pruneTombstones deletes the tombstones of instances destroyed before.
func (s pgStore) pruneTombstones(ctx context.Context, before time.Time) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM instance_tombstones WHERE destroyed_at < $1`, before); err != nil {
		return fmt.Errorf("deleting old tombstones: %w", err)
	}
	return nil
}

// touch records that instance id was seen in use at t.
func (s pgStore) touch(ctx context.Context, id int64, t time.Time) error {
	if _, err := s.pool.Exec(ctx, `UPDATE instances SET last_active_at = $2 WHERE id = $1 AND last_active_at < $2`, id, t); err != nil {
		return fmt.Errorf("recording the activity of instance %d: %w", id, err)
	}
	return nil
}

// usage returns how many instances this node has (warm ones too) and how
// many ports of [min, max] they leave free.
func (s pgStore) usage(ctx context.Context, min, max int) (count, freePorts int, err error) {
	err = s.pool.QueryRow(ctx, `SELECT count(*), $2::int - count(*) FILTER (WHERE port BETWEEN $3 AND $4)
		FROM instances WHERE node = $1`, s.node, max-min+1, min, max).Scan(&count, &freePorts)
	if err != nil {
		return 0, 0, fmt.Errorf("counting the instances of this node: %w", err)
	}
	return count, freePorts, nil
}

// lockOwner takes owner's advisory lock in the state database, which
// every node shares, and holds it until release (in a transaction of its
// own, so that a lost connection lets it go too).
func (s pgStore) lockOwner(ctx context.Context, owner string) (func(), error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("locking the instances of %s: %w", owner, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('draupnir instances of ' || $1))`, owner); err != nil {
		tx.Rollback(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("locking the instances of %s: %w", owner, err)
	}
	return func() { tx.Rollback(context.WithoutCancel(ctx)) }, nil
}

func (s pgStore) unplaced(ctx context.Context) ([]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM instances WHERE node = '' ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing the instances of no node: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("listing the instances of no node: %w", err)
	}
	return ids, nil
}

func (s pgStore) adopt(ctx context.Context, id int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE instances SET node = $2, updated_at = now() WHERE id = $1 AND node = ''`, id, s.node)
	if err != nil {
		return false, fmt.Errorf("taking over instance %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}
