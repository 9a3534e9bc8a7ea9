-- Times are TEXT in one fixed-width form, 2006-01-02T15:04:05.000000Z (UTC,
-- microseconds), so they round-trip exactly and sort correctly as text.

-- +goose Up
CREATE TABLE products (
    id                  TEXT PRIMARY KEY,
    slug                TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL,
    api_key_hash        TEXT NOT NULL UNIQUE,
    prev_api_key_hash   TEXT,
    prev_key_expires_at TEXT,
    policy              TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(policy)),
    created_at          TEXT NOT NULL
) STRICT;

CREATE INDEX products_prev_api_key_hash ON products (prev_api_key_hash)
    WHERE prev_api_key_hash IS NOT NULL;

CREATE TABLE engines (
    id               TEXT PRIMARY KEY,
    product_id       TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('provisioning', 'running', 'sleeping', 'stopped', 'failed', 'destroying')),
    port             INTEGER NOT NULL,
    engine_key_hash  TEXT,
    engine_key_enc   TEXT,
    image            TEXT,
    url              TEXT,
    instance_id      TEXT,
    boot_duration_ms INTEGER,
    health_failures  INTEGER NOT NULL DEFAULT 0,
    restart_attempts INTEGER NOT NULL DEFAULT 0,
    next_restart_at  TEXT,
    last_health_at   TEXT,
    last_active_at   TEXT,
    failure_reason   TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (product_id, user_id)
) STRICT;

CREATE INDEX engines_product_created ON engines (product_id, created_at, id);
CREATE INDEX engines_status ON engines (status);

-- No foreign key to engines: a port is reserved before its engine row exists,
-- and FreeOrphanPorts repairs allocations whose engine never appeared.
CREATE TABLE port_allocations (
    port       INTEGER PRIMARY KEY,
    engine_id  TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

CREATE INDEX port_allocations_engine ON port_allocations (engine_id);

-- No foreign keys: the audit trail outlives the engines and products it names.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp   TEXT NOT NULL,
    product_id  TEXT,
    user_id     TEXT,
    engine_id   TEXT,
    action      TEXT NOT NULL CHECK (action <> ''),
    actor       TEXT NOT NULL,
    metadata    TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    duration_ms INTEGER
) STRICT;

CREATE INDEX audit_log_engine_timestamp ON audit_log (engine_id, timestamp DESC);
CREATE INDEX audit_log_product_timestamp ON audit_log (product_id, timestamp);
CREATE INDEX audit_log_timestamp ON audit_log (timestamp);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE port_allocations;
DROP TABLE engines;
DROP TABLE products;
