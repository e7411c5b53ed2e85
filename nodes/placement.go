package nodes

import (
	"cmp"
	"context"
	"fmt"
	"slices"
)

// Candidate is a node that holds an image ready and is neither drained nor
// down, as placement weighs it.
type Candidate struct {
	Name string
	// Instances is how many instances somebody owns on the node now
	// (the warm pool's are a node's readiness, not its load), counted in
	// the state database rather than taken from the last heartbeat, so
	// that a burst of creates spreads.
	Instances int
	// FreePorts is the last heartbeat's free ports less the instances
	// made there since.
	FreePorts       int
	FreeMemoryBytes int64
	FreeDiskBytes   int64
}

// Rank applies the placement rule to candidates and returns those that can
// take an instance, best first. A node can take one while it has a free
// port and free disk beyond its reserve. The best has the fewest instances;
// ties go to the most free memory, then the most free disk, then the name
// that sorts first, so that the same state always gives the same choice.
func Rank(candidates []Candidate) []Candidate {
	out := slices.DeleteFunc(slices.Clone(candidates), func(c Candidate) bool {
		return c.FreePorts <= 0 || c.FreeDiskBytes <= 0
	})
	slices.SortFunc(out, func(a, b Candidate) int {
		return cmp.Or(
			cmp.Compare(a.Instances, b.Instances),
			cmp.Compare(b.FreeMemoryBytes, a.FreeMemoryBytes),
			cmp.Compare(b.FreeDiskBytes, a.FreeDiskBytes),
			cmp.Compare(a.Name, b.Name),
		)
	})
	return out
}

// ImageReady reports whether image id is ready (on some node).
func (r *Registry) ImageReady(ctx context.Context, id int64) (bool, error) {
	var ready bool
	err := r.opts.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM images WHERE id = $1 AND state = 'ready')`, id).Scan(&ready)
	if err != nil {
		return false, unavailable(fmt.Errorf("reading image %d: %w", id, err))
	}
	return ready, nil
}

// ImageNode returns the node that makes image id: "" for an image of no
// node, or no such image.
func (r *Registry) ImageNode(ctx context.Context, id int64) (string, error) {
	var node string
	err := r.opts.Pool.QueryRow(ctx, `SELECT coalesce((SELECT node FROM images WHERE id = $1), '')`, id).Scan(&node)
	if err != nil {
		return "", unavailable(fmt.Errorf("reading image %d: %w", id, err))
	}
	return node, nil
}

// Candidates returns the nodes that hold image imageID ready (the node
// that made it, or one with a ready copy) and are neither drained nor down,
// unranked.
func (r *Registry) Candidates(ctx context.Context, imageID int64) ([]Candidate, error) {
	rows, err := r.opts.Pool.Query(ctx, `
		WITH live AS (SELECT node, count(*) AS n, count(*) FILTER (WHERE owner <> '') AS owned
			FROM instances GROUP BY node)
		SELECT n.name, coalesce(l.owned, 0)::int, n.free_ports - greatest(coalesce(l.n, 0) - n.instances, 0),
			n.free_memory_bytes, n.free_disk_bytes
		FROM nodes n LEFT JOIN live l ON l.node = n.name
		WHERE NOT n.drained AND n.heartbeat_at >= now() - $2::interval
		AND (EXISTS (SELECT 1 FROM images im WHERE im.id = $1 AND im.state = 'ready' AND im.node = n.name)
		  OR EXISTS (SELECT 1 FROM image_copies c WHERE c.image_id = $1 AND c.node = n.name AND c.state = 'ready'))`,
		imageID, r.downAfter())
	if err != nil {
		return nil, unavailable(fmt.Errorf("placing an instance of image %d: %w", imageID, err))
	}
	defer rows.Close()
	var out []Candidate
	for rows.Next() {
		var c Candidate
		if err := rows.Scan(&c.Name, &c.Instances, &c.FreePorts, &c.FreeMemoryBytes, &c.FreeDiskBytes); err != nil {
			return nil, unavailable(fmt.Errorf("placing an instance of image %d: %w", imageID, err))
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable(fmt.Errorf("placing an instance of image %d: %w", imageID, err))
	}
	return out, nil
}
