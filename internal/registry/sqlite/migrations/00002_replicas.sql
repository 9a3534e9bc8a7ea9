-- Replicas, shard leases and operation claims (SPEC §15). With SQLite one
-- orchestrator serves the file, so there is one live replica; the tables
-- keep the Store contract the same as PostgreSQL's.

-- +goose Up
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
) STRICT;

CREATE TABLE shard_leases (
    shard       INTEGER PRIMARY KEY,
    replica_id  TEXT,
    epoch       INTEGER NOT NULL DEFAULT 0,
    acquired_at TEXT
) STRICT;

ALTER TABLE engines ADD COLUMN op TEXT;
ALTER TABLE engines ADD COLUMN op_owner TEXT;
ALTER TABLE engines ADD COLUMN op_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE engines ADD COLUMN op_started_at TEXT;
CREATE INDEX engines_op ON engines (id) WHERE op IS NOT NULL;

-- +goose Down
DROP INDEX engines_op;
ALTER TABLE engines DROP COLUMN op_started_at;
ALTER TABLE engines DROP COLUMN op_epoch;
ALTER TABLE engines DROP COLUMN op_owner;
ALTER TABLE engines DROP COLUMN op;
DROP TABLE shard_leases;
DROP TABLE replicas;
