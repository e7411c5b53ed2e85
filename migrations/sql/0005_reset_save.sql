-- Reset: an instance whose data is being replaced by a fresh snapshot of
-- its image (image_id is already the target); reconcile finishes it.
ALTER TABLE instances DROP CONSTRAINT instances_state_check;
ALTER TABLE instances ADD CONSTRAINT instances_state_check
    CHECK (state IN ('creating', 'running', 'stopped', 'failed', 'destroying', 'warm', 'resetting'));
