-- Images: uploaded base backups and their finalised, read-only snapshots.
CREATE TABLE images (
    id                   bigserial   PRIMARY KEY,
    state                text        NOT NULL DEFAULT 'created'
                         CHECK (state IN ('created', 'uploading', 'finalising', 'ready', 'failed')),
    backed_up_at         timestamptz NOT NULL,
    anonymisation_script text        NOT NULL DEFAULT '',
    error                text        NOT NULL DEFAULT '',
    size_bytes           bigint      NOT NULL DEFAULT 0,
    postgres_version     text        NOT NULL DEFAULT '',
    database_name        text        NOT NULL DEFAULT '',
    superuser_name       text        NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Instances: writable snapshots of ready images, each with its own postgres.
CREATE TABLE instances (
    id          bigserial   PRIMARY KEY,
    image_id    bigint      NOT NULL REFERENCES images (id),
    owner       text        NOT NULL,
    state       text        NOT NULL DEFAULT 'creating'
                CHECK (state IN ('creating', 'running', 'stopped', 'failed', 'destroying')),
    port        integer     NOT NULL UNIQUE,
    username    text        NOT NULL,
    -- The owner reads it back through the API, so it cannot be hashed; the
    -- state database is reachable only by the server.
    password    text        NOT NULL,
    error       text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_owner ON instances (owner);
CREATE INDEX instances_image_id ON instances (image_id);
