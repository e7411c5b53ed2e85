-- Warm-pool instances: started, owned by nobody ('') until a create claims one.
ALTER TABLE instances DROP CONSTRAINT instances_state_check;
ALTER TABLE instances ADD CONSTRAINT instances_state_check
    CHECK (state IN ('creating', 'running', 'stopped', 'failed', 'destroying', 'warm'));
CREATE INDEX instances_warm ON instances (image_id) WHERE state = 'warm';
