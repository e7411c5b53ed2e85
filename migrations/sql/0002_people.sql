-- Draupnir access tokens of people, issued after an OpenID Connect login.
-- Only the SHA-256 of a token is stored: a copy of this table lets nobody in.
CREATE TABLE access_tokens (
    id           bigserial   PRIMARY KEY,
    token_hash   bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    principal    text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX access_tokens_principal ON access_tokens (principal);

-- SSH public keys that people registered; a key belongs to one user.
CREATE TABLE ssh_keys (
    id          bigserial   PRIMARY KEY,
    fingerprint text        NOT NULL UNIQUE, -- SHA256:… as ssh-keygen -l prints it
    principal   text        NOT NULL,
    public_key  text        NOT NULL,        -- authorized_keys form, without options
    comment     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ssh_keys_principal ON ssh_keys (principal);
