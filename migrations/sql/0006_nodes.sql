-- Several nodes sharing this state database. A single node (no [node] name
-- configured) keeps node = '' on every row and never writes to nodes or
-- image_copies, so it behaves exactly as before.

-- The servers of the cluster. Each node upserts its own row at start and
-- beats every few seconds; a node whose heartbeat_at is older than a few
-- intervals is "down" (computed when read, never stored).
CREATE TABLE nodes (
    name              text        PRIMARY KEY,
    -- What users connect to for instances on this node.
    advertise_host    text        NOT NULL,
    -- How other nodes reach this node's HTTP API and SSH door.
    api_url           text        NOT NULL,
    ssh_address       text        NOT NULL,
    -- The authorized_keys line of this node's SSH host key: it is also the
    -- key the node signs in with at other nodes' SSH doors, where only a
    -- key found here may speak the node protocol.
    ssh_public_key    text        NOT NULL,
    drained           boolean     NOT NULL DEFAULT false,
    started_at        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    -- Capacity as of the last heartbeat.
    free_disk_bytes   bigint      NOT NULL DEFAULT 0,
    free_memory_bytes bigint      NOT NULL DEFAULT 0,
    instances         integer     NOT NULL DEFAULT 0,
    free_ports        integer     NOT NULL DEFAULT 0
);

-- Where an instance runs, and where an image was made (its upload_host).
ALTER TABLE instances ADD COLUMN node text NOT NULL DEFAULT '';
ALTER TABLE images    ADD COLUMN node text NOT NULL DEFAULT '';
-- Ports are a node's own: two nodes may hand out the same number.
ALTER TABLE instances DROP CONSTRAINT instances_port_key;
ALTER TABLE instances ADD CONSTRAINT instances_node_port_key UNIQUE (node, port);
CREATE INDEX instances_node ON instances (node);

-- Which nodes hold an image's frozen snapshot, or are receiving it. The
-- node that finalised the image has a 'ready' row as soon as it is ready.
CREATE TABLE image_copies (
    image_id   bigint      NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    node       text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('copying', 'ready', 'failed', 'destroying')),
    error      text        NOT NULL DEFAULT '',
    attempts   integer     NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, node)
);
CREATE INDEX image_copies_node ON image_copies (node);
