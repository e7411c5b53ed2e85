-- How long instances live: an expiry (extended by PATCH), a protection
-- lease that keeps every rule off, and the last time the instance was seen
-- in use (for idle clean-up). NULL means none.
ALTER TABLE instances
    ADD COLUMN expires_at      timestamptz,
    ADD COLUMN protected_until timestamptz,
    ADD COLUMN last_active_at  timestamptz NOT NULL DEFAULT now(),
    -- The rule that claimed the instance for destruction ('' for none or
    -- an explicit destroy); its row's deletion then leaves a tombstone.
    ADD COLUMN destroy_reason  text        NOT NULL DEFAULT '';
CREATE INDEX instances_expires_at ON instances (expires_at) WHERE expires_at IS NOT NULL;

-- What remains of an instance that a rule destroyed (expiry, idle clean-up,
-- its image's destroy), so that its owner learns why and when it went.
-- Kept for instances.tombstone_days; ids are never reused (bigserial).
CREATE TABLE instance_tombstones (
    id           bigint      PRIMARY KEY,
    image_id     bigint      NOT NULL,
    owner        text        NOT NULL,
    reason       text        NOT NULL CHECK (reason IN ('expired', 'idle', 'image_destroy')),
    detail       text        NOT NULL DEFAULT '',
    destroyed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instance_tombstones_owner ON instance_tombstones (owner);
