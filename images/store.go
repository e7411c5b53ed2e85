package images

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/draupnir-db/draupnir"
)

// pgStore is the images table in the state database. node is this node's
// name in a cluster ("" for a single node): images made here record it,
// and an image made ready here gets this node's ready copy in the same
// statement.
type pgStore struct {
	pool *pgxpool.Pool
	node string
}

// visible is the condition that leaves out, on a node of a cluster, images
// whose destroy is under way on the nodes: they are gone for everyone as
// soon as it begins. A single node has no copies and pays nothing for it.
func (s pgStore) visible() string {
	if s.node == "" {
		return "true"
	}
	return `NOT EXISTS (SELECT 1 FROM image_copies d WHERE d.image_id = images.id AND d.state = 'destroying')`
}

const imageColumns = `id, state, backed_up_at, anonymisation_script, error, size_bytes,
	postgres_version, database_name, superuser_name, owner, coalesce(parent_image_id, 0),
	coalesce(from_instance_id, 0), source, created_at, updated_at, node`

// row is an image as stored, with the fields the API does not show.
type row struct {
	draupnir.Image
	Superuser string
	// Node is the node that makes the image (takes its upload and
	// finalises it, or saves it from an instance).
	Node string
}

func scanImage(r pgx.Row) (*row, error) {
	var im row
	var state string
	err := r.Scan(&im.ID, &state, &im.BackedUpAt, &im.AnonymisationScript, &im.Error, &im.SizeBytes,
		&im.PostgresVersion, &im.Database, &im.Superuser, &im.Owner, &im.ParentImageID,
		&im.FromInstanceID, &im.Source, &im.CreatedAt, &im.UpdatedAt, &im.Node)
	if err != nil {
		return nil, err
	}
	im.State = draupnir.ImageState(state)
	im.BackedUpAt = im.BackedUpAt.UTC()
	im.CreatedAt = im.CreatedAt.UTC()
	im.UpdatedAt = im.UpdatedAt.UTC()
	return &im, nil
}

func notFound(id int64) error {
	return draupnir.Errorf(draupnir.KindNotFound, "image %d does not exist", id)
}

func (s pgStore) get(ctx context.Context, id int64) (*row, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `SELECT `+imageColumns+` FROM images WHERE id = $1 AND `+s.visible(), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading image %d: %w", id, err)
	}
	return im, nil
}

func (s pgStore) listAll(ctx context.Context) ([]*row, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+imageColumns+` FROM images WHERE `+s.visible()+` ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	defer rows.Close()
	var out []*row
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("listing images: %w", err)
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

func (s pgStore) insert(ctx context.Context, source string, backedUpAt time.Time, script string) (*row, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `INSERT INTO images (backed_up_at, anonymisation_script, source, node)
		VALUES ($1, $2, $3, $4) RETURNING `+imageColumns, backedUpAt, script, source, s.node))
	if err != nil {
		return nil, fmt.Errorf("creating image: %w", err)
	}
	return im, nil
}

func (s pgStore) transition(ctx context.Context, id int64, from []draupnir.ImageState, to draupnir.ImageState) (*row, bool, error) {
	fromS := make([]string, len(from))
	for i, f := range from {
		fromS[i] = string(f)
	}
	im, err := scanImage(s.pool.QueryRow(ctx, `UPDATE images SET state = $2, updated_at = now()
		WHERE id = $1 AND state = ANY($3) RETURNING `+imageColumns, id, string(to), fromS))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, err := s.get(ctx, id)
		return cur, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("updating image %d: %w", id, err)
	}
	return im, true, nil
}

// startUpload marks image id uploading if it accepts uploads (created,
// uploading or failed), clearing a failure's error: the upload is being
// fixed. It returns the image as it was when it does not.
func (s pgStore) startUpload(ctx context.Context, id int64) (*row, bool, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `UPDATE images SET state = 'uploading', error = '', updated_at = now()
		WHERE id = $1 AND state IN ('created', 'uploading', 'failed') RETURNING `+imageColumns, id))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, err := s.get(ctx, id)
		return cur, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("updating image %d: %w", id, err)
	}
	return im, true, nil
}

// insertSaved registers an image being saved from instance instanceID of
// image parent, for owner: finalising until its data is frozen. Its backup
// time is the parent's: the data is that backup's, changed by its user.
func (s pgStore) insertSaved(ctx context.Context, owner string, parent, instanceID int64) (*row, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `INSERT INTO images (state, backed_up_at, owner, parent_image_id, from_instance_id,
			database_name, superuser_name, postgres_version, node)
		SELECT 'finalising', backed_up_at, $1, id, $3, database_name, superuser_name, postgres_version, $4
		FROM images WHERE id = $2 AND state = 'ready'
		RETURNING `+imageColumns, owner, parent, instanceID, s.node))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d, which the instance was made of, is not ready", parent)
	}
	if err != nil {
		return nil, fmt.Errorf("registering a saved image: %w", err)
	}
	return im, nil
}

func (s pgStore) fail(ctx context.Context, id int64, reason string) error {
	_, err := s.pool.Exec(ctx, `UPDATE images SET state = 'failed', error = $2, updated_at = now() WHERE id = $1`, id, reason)
	return err
}

func (s pgStore) ready(ctx context.Context, id int64, size int64, version, database, superuser string) (*row, error) {
	return scanImage(s.pool.QueryRow(ctx, `WITH images AS (UPDATE images SET state = 'ready', error = '', size_bytes = $2,
			postgres_version = $3, database_name = $4, superuser_name = $5, updated_at = now()
			WHERE id = $1 RETURNING *),
		copied AS (INSERT INTO image_copies (image_id, node, state) SELECT id, $6, 'ready' FROM images WHERE $6 <> ''
			ON CONFLICT (image_id, node) DO UPDATE SET state = 'ready', error = '', updated_at = now())
		SELECT `+imageColumns+` FROM images`, id, size, version, database, superuser, s.node))
}

// scriptChanged heads the error of a failed image whose script has been
// changed since, so that `images show` says what to do next.
const scriptChanged = "The anonymisation script has changed since this failure: run done to finalise again. It failed with:"

func (s pgStore) update(ctx context.Context, id int64, patch draupnir.ImagePatch) (*row, error) {
	im, err := scanImage(s.pool.QueryRow(ctx, `UPDATE images SET
		backed_up_at = coalesce($2, backed_up_at),
		anonymisation_script = coalesce($3, anonymisation_script),
		error = CASE WHEN state = 'failed' AND $3::text IS DISTINCT FROM NULL AND $3::text IS DISTINCT FROM anonymisation_script
		               AND NOT starts_with(error, '`+scriptChanged+`')
		        THEN '`+scriptChanged+`' || E'\n' || error ELSE error END,
		updated_at = now()
		WHERE id = $1 AND state IN ('created', 'uploading', 'failed') RETURNING `+imageColumns,
		id, patch.BackedUpAt, patch.AnonymisationScript))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, err := s.get(ctx, id)
		if err != nil {
			return nil, err
		}
		return nil, draupnir.Errorf(draupnir.KindConflict, "image %d is %s; only an image that is not ready or finalising can be changed", id, cur.State)
	}
	return im, err
}

func (s pgStore) delete(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM images WHERE id = $1`, id)
	return err
}

// copies returns the copies of the images ids on the nodes of a cluster.
func (s pgStore) copies(ctx context.Context, ids []int64) (map[int64][]draupnir.ImageCopy, error) {
	rows, err := s.pool.Query(ctx, `SELECT image_id, node, state, attempts, error FROM image_copies
		WHERE image_id = ANY($1) ORDER BY image_id, node`, ids)
	if err != nil {
		return nil, fmt.Errorf("reading image copies: %w", err)
	}
	defer rows.Close()
	out := map[int64][]draupnir.ImageCopy{}
	for rows.Next() {
		var id int64
		var c draupnir.ImageCopy
		if err := rows.Scan(&id, &c.Node, &c.State, &c.Attempts, &c.Error); err != nil {
			return nil, fmt.Errorf("reading image copies: %w", err)
		}
		out[id] = append(out[id], c)
	}
	return out, rows.Err()
}

// readyHere reports whether this node holds image id ready.
func (s pgStore) readyHere(ctx context.Context, id int64) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM image_copies WHERE image_id = $1 AND node = $2 AND state = 'ready')`, id, s.node).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("reading the copy of image %d: %w", id, err)
	}
	return ok, nil
}

// markDestroying begins the destroy of image id on every node that holds
// or is copying it, and returns how many copies there are: each node
// deletes its own.
func (s pgStore) markDestroying(ctx context.Context, id int64) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE image_copies SET state = 'destroying', updated_at = now() WHERE image_id = $1`, id)
	if err != nil {
		return 0, fmt.Errorf("destroying image %d: %w", id, err)
	}
	return tag.RowsAffected(), nil
}

func (s pgStore) adopt(ctx context.Context, id int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE images SET node = $2, updated_at = now() WHERE id = $1 AND node = ''`, id, s.node)
	if err != nil {
		return false, fmt.Errorf("taking over image %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}
