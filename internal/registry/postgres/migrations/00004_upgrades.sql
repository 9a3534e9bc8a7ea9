-- Engine upgrades and rollouts (SPEC §16). An operation's claim carries the
-- detail a takeover needs to finish or undo it (an upgrade's images and
-- snapshot); rollouts and the outcome of each engine they touched are
-- durable, so a rollout survives restarts and replica deaths.

-- +goose Up
ALTER TABLE engines ADD COLUMN op_detail text;

CREATE TABLE rollouts (
    id             uuid PRIMARY KEY,
    product_id     uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    engine_version text NOT NULL,
    percent        integer NOT NULL CHECK (percent BETWEEN 1 AND 100),
    max_parallel   integer NOT NULL CHECK (max_parallel >= 1),
    max_failures   integer NOT NULL CHECK (max_failures >= 1),
    state          text NOT NULL CHECK (state IN ('running', 'paused', 'done', 'aborted')),
    reason         text,
    -- Rolled-back upgrades before the last resume: the failure budget
    -- (max_failures) counts those after it.
    failure_base   integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
-- One rollout of a product is under way (running or paused) at a time.
CREATE UNIQUE INDEX rollouts_active_idx ON rollouts (product_id) WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_product_idx ON rollouts (product_id, created_at);

-- What a rollout did to each engine it chose. No foreign key to engines:
-- the record outlives a destroyed engine.
CREATE TABLE rollout_engines (
    rollout_id uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    engine_id  uuid NOT NULL,
    user_id    text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('upgrading', 'upgraded', 'rolled_back', 'skipped')),
    reason     text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (rollout_id, engine_id)
);

-- +goose Down
DROP TABLE rollout_engines;
DROP TABLE rollouts;
ALTER TABLE engines DROP COLUMN op_detail;
