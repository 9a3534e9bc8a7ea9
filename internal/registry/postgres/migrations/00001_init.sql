-- +goose Up
CREATE TABLE products (
    id                  uuid PRIMARY KEY,
    slug                text NOT NULL,
    display_name        text NOT NULL DEFAULT '',
    api_key_hash        text NOT NULL,
    prev_api_key_hash   text,
    prev_key_expires_at timestamptz,
    policy              jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL,
    CONSTRAINT products_slug_key UNIQUE (slug)
);
-- Every product-authenticated request looks a product up by key hash.
CREATE INDEX products_api_key_hash_idx ON products (api_key_hash);
CREATE INDEX products_prev_api_key_hash_idx ON products (prev_api_key_hash)
    WHERE prev_api_key_hash IS NOT NULL;

CREATE TABLE engines (
    id               uuid PRIMARY KEY,
    product_id       uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    user_id          text NOT NULL,
    status           text NOT NULL CHECK (status IN
                         ('provisioning', 'running', 'sleeping', 'stopped', 'failed', 'destroying')),
    port             integer,
    engine_key_hash  text,
    engine_key_enc   text,
    image            text,
    url              text,
    instance_id      text,
    boot_duration_ms bigint,
    health_failures  integer NOT NULL DEFAULT 0,
    restart_attempts integer NOT NULL DEFAULT 0,
    next_restart_at  timestamptz,
    last_health_at   timestamptz,
    last_active_at   timestamptz,
    failure_reason   text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CONSTRAINT engines_product_id_user_id_key UNIQUE (product_id, user_id)
);
-- Listing a product's engines pages by (created_at, id).
CREATE INDEX engines_product_created_idx ON engines (product_id, created_at, id);
-- The health loop and reconciliation select engines by state fleet-wide.
CREATE INDEX engines_status_idx ON engines (status);

-- No foreign key to engines: a port is reserved before its engine row is
-- inserted, and reconciliation frees allocations whose engine is gone.
CREATE TABLE port_allocations (
    port       integer PRIMARY KEY,
    engine_id  uuid NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX port_allocations_engine_id_idx ON port_allocations (engine_id);

-- No foreign keys: the audit log outlives the products and engines it names.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    "timestamp" timestamptz NOT NULL,
    product_id  uuid,
    user_id     text,
    engine_id   uuid,
    action      text NOT NULL,
    actor       text NOT NULL,
    metadata    jsonb,
    duration_ms bigint
);
CREATE INDEX audit_log_engine_ts_idx ON audit_log (engine_id, "timestamp" DESC, id DESC);
CREATE INDEX audit_log_product_ts_idx ON audit_log (product_id, "timestamp" DESC, id DESC);
-- GET /metrics counts a product's actions since a time, index-only.
CREATE INDEX audit_log_product_action_ts_idx ON audit_log (product_id, action, "timestamp") INCLUDE (duration_ms);
-- Fleet-wide listing and retention pruning go by time alone.
CREATE INDEX audit_log_ts_idx ON audit_log ("timestamp" DESC, id DESC);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE port_allocations;
DROP TABLE engines;
DROP TABLE products;
