-- Image series from live sources ([[sources]] in the config).

-- The series an image belongs to: the source it was refreshed from, or the
-- series an upload named; '' for none.
ALTER TABLE images ADD COLUMN source text NOT NULL DEFAULT '';
CREATE INDEX images_source ON images (source) WHERE source <> '';

-- What outlives a restart of the server about each source's refreshes. A
-- refresh under way names its image, so that the next start can fail an
-- image that a killed server left half-made, and say why. The image of the
-- last failed refresh is kept (with its upload, the raw backup) until the
-- next refresh ends, so that failures every night do not pile up copies.
CREATE TABLE sources (
    name                 text        PRIMARY KEY,
    refreshing_image_id  bigint      REFERENCES images (id) ON DELETE SET NULL,
    last_failed_image_id bigint      REFERENCES images (id) ON DELETE SET NULL,
    last_refresh_at      timestamptz,
    last_error           text        NOT NULL DEFAULT ''
);
