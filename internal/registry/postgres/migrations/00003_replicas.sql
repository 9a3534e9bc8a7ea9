-- Several orchestrators on one database (SPEC §15): the replicas and their
-- heartbeats, the shard leases that divide background work, and the
-- operation claimed on each engine's row with its fencing epoch.

-- +goose Up
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- One row per shard ever leased; replica_id NULL: free. The epoch grows
-- with every change of holder and is never reset.
CREATE TABLE shard_leases (
    shard       integer PRIMARY KEY,
    replica_id  text,
    epoch       bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz
);

ALTER TABLE engines
    ADD COLUMN op            text,
    ADD COLUMN op_owner      text,
    ADD COLUMN op_epoch      bigint NOT NULL DEFAULT 0,
    ADD COLUMN op_started_at timestamptz;
-- Takeover scans read the few engines with an operation in flight.
CREATE INDEX engines_op_idx ON engines (id) WHERE op IS NOT NULL;

-- +goose Down
DROP INDEX engines_op_idx;
ALTER TABLE engines DROP COLUMN op_started_at, DROP COLUMN op_epoch, DROP COLUMN op_owner, DROP COLUMN op;
DROP TABLE shard_leases;
DROP TABLE replicas;
