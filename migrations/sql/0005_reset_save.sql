-- Reset: an instance whose data is being replaced by a fresh snapshot of
-- its image (image_id is already the target); reconcile finishes it.
ALTER TABLE instances DROP CONSTRAINT instances_state_check;
ALTER TABLE instances ADD CONSTRAINT instances_state_check
    CHECK (state IN ('creating', 'running', 'stopped', 'failed', 'destroying', 'warm', 'resetting'));

-- Save: images made from an instance's data. owner is who saved it ('' for
-- images made from uploads); the lineage survives the destruction of the
-- parent image (set to NULL) and of the instance (kept as a number).
ALTER TABLE images ADD COLUMN owner text NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN parent_image_id bigint REFERENCES images (id) ON DELETE SET NULL;
ALTER TABLE images ADD COLUMN from_instance_id bigint;
