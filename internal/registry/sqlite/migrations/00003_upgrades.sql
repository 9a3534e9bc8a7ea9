-- Engine upgrades and rollouts (SPEC §16). An operation's claim carries the
-- detail a takeover needs to finish or undo it (an upgrade's images and
-- snapshot); rollouts and the outcome of each engine they touched are
-- durable, so a rollout survives restarts.

-- +goose Up
ALTER TABLE engines ADD COLUMN op_detail TEXT;

CREATE TABLE rollouts (
    id             TEXT PRIMARY KEY,
    product_id     TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    engine_version TEXT NOT NULL,
    percent        INTEGER NOT NULL CHECK (percent BETWEEN 1 AND 100),
    max_parallel   INTEGER NOT NULL CHECK (max_parallel >= 1),
    max_failures   INTEGER NOT NULL CHECK (max_failures >= 1),
    state          TEXT NOT NULL CHECK (state IN ('running', 'paused', 'done', 'aborted')),
    reason         TEXT,
    failure_base   INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX rollouts_active ON rollouts (product_id) WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_product ON rollouts (product_id, created_at);

CREATE TABLE rollout_engines (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    engine_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('upgrading', 'upgraded', 'rolled_back', 'skipped')),
    reason     TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (rollout_id, engine_id)
) STRICT;

-- +goose Down
DROP TABLE rollout_engines;
DROP TABLE rollouts;
ALTER TABLE engines DROP COLUMN op_detail;
