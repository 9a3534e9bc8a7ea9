package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Liveness is judged by the database's clock (now()), so replicas whose
// clocks disagree still agree on who is alive.

// A replica's session is a connection of its own holding a session-level
// advisory lock keyed by the replica's id. PostgreSQL drops the lock when
// the connection ends, which it does at once when the process dies (the
// kernel closes its sockets): so a free lock, with a quiet heartbeat, proves
// the process gone without waiting for the TTL, on any host or container.
// The heartbeat runs on the same connection, so it never waits for the pool
// (which queries stuck behind another replica's locks may exhaust).

// RegisterReplica records r with a heartbeat of now, through its session.
func (s *Store) RegisterReplica(ctx context.Context, r bap.Replica) error {
	_, err := s.sessions.get(r.ID).exec(ctx, `INSERT INTO replicas (id, host, pid, version, started_at, heartbeat_at)
		VALUES ($1, $2, $3, $4, $5, now())
		ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
			version = EXCLUDED.version, started_at = EXCLUDED.started_at, heartbeat_at = now()`,
		r.ID, r.Host, r.Pid, r.Version, bap.Timestamp(r.StartedAt))
	if err != nil {
		return fmt.Errorf("register replica %s: %w", r.ID, translate(err))
	}
	return nil
}

// HeartbeatReplica sets the replica's heartbeat to now, through its session.
func (s *Store) HeartbeatReplica(ctx context.Context, id string) error {
	tag, err := s.sessions.get(id).exec(ctx, `UPDATE replicas SET heartbeat_at = now() WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("heartbeat replica %s: %w", id, translate(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("heartbeat replica %s: %w", id, registry.ErrNotFound)
	}
	return nil
}

// DeregisterReplica deletes the replica and frees its leases in one
// statement, then ends its session.
func (s *Store) DeregisterReplica(ctx context.Context, id string) error {
	_, err := s.db.Exec(ctx, `WITH freed AS (
		UPDATE shard_leases SET replica_id = NULL WHERE replica_id = $1
	) DELETE FROM replicas WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("deregister replica %s: %w", id, translate(err))
	}
	s.sessions.end(id)
	return nil
}

// sqlReplicaGone: the heartbeat is quiet (or there is no row) and nobody
// holds the replica's lock. Trying the lock takes it for a moment only.
const sqlReplicaGone = `SELECT COALESCE((SELECT heartbeat_at < now() - $2::interval FROM replicas WHERE id = $1), true)
	AND CASE WHEN pg_try_advisory_lock($3) THEN pg_advisory_unlock($3) ELSE false END`

// ReplicaGone reports whether the replica's process is provably gone.
func (s *Store) ReplicaGone(ctx context.Context, id string, quiet time.Duration) (bool, error) {
	var gone bool
	if err := s.db.QueryRow(ctx, sqlReplicaGone, id, quiet, sessionKey(id)).Scan(&gone); err != nil {
		return false, fmt.Errorf("replica %s gone: %w", id, translate(err))
	}
	return gone, nil
}

// Replicas lists the replicas with their liveness and lease counts.
func (s *Store) Replicas(ctx context.Context, ttl time.Duration) ([]registry.ReplicaStatus, error) {
	rows, _ := s.db.Query(ctx, `SELECT r.id, r.host, r.pid, r.version, r.started_at, r.heartbeat_at,
			r.heartbeat_at > now() - $1::interval,
			(SELECT count(*) FROM shard_leases l WHERE l.replica_id = r.id)
		FROM replicas r ORDER BY r.id`, ttl)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (registry.ReplicaStatus, error) {
		var r registry.ReplicaStatus
		err := row.Scan(&r.ID, &r.Host, &r.Pid, &r.Version, &r.StartedAt, &r.HeartbeatAt, &r.Alive, &r.Shards)
		r.StartedAt, r.HeartbeatAt = bap.Timestamp(r.StartedAt), bap.Timestamp(r.HeartbeatAt)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", translate(err))
	}
	return out, nil
}

// ReplicaAlive reports whether the replica heartbeat within ttl.
func (s *Store) ReplicaAlive(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	var alive bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM replicas
		WHERE id = $1 AND heartbeat_at > now() - $2::interval)`, id, ttl).Scan(&alive)
	if err != nil {
		return false, fmt.Errorf("replica %s alive: %w", id, translate(err))
	}
	return alive, nil
}

// Leases returns every lease row.
func (s *Store) Leases(ctx context.Context) ([]registry.Lease, error) {
	rows, _ := s.db.Query(ctx, `SELECT shard, COALESCE(replica_id, ''), epoch FROM shard_leases ORDER BY shard`)
	out, err := pgx.CollectRows(rows, scanLease)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", translate(err))
	}
	return out, nil
}

func scanLease(row pgx.CollectableRow) (registry.Lease, error) {
	var l registry.Lease
	err := row.Scan(&l.Shard, &l.ReplicaID, &l.Epoch)
	return l, err
}

// sqlAcquireLease takes shard $1 for replica $2 when it is free or its
// holder is not alive ($3), creating the row on first use. It returns the
// lease as it is afterwards and whether this call took it.
const sqlAcquireLease = `WITH ins AS (
	INSERT INTO shard_leases (shard, replica_id, epoch, acquired_at)
	VALUES ($1, $2, 1, now())
	ON CONFLICT (shard) DO UPDATE SET replica_id = EXCLUDED.replica_id,
		epoch = shard_leases.epoch + 1, acquired_at = now()
	WHERE shard_leases.replica_id IS NULL OR NOT EXISTS (SELECT 1 FROM replicas r
		WHERE r.id = shard_leases.replica_id AND r.heartbeat_at > now() - $3::interval)
	RETURNING shard, replica_id, epoch
)
SELECT shard, replica_id, epoch, true FROM ins
UNION ALL
SELECT shard, COALESCE(replica_id, ''), epoch, false FROM shard_leases
WHERE shard = $1 AND NOT EXISTS (SELECT 1 FROM ins)`

// AcquireLease takes a free shard or one whose holder is dead.
func (s *Store) AcquireLease(ctx context.Context, shard int, replicaID string, ttl time.Duration) (registry.Lease, bool, error) {
	var l registry.Lease
	var took bool
	err := s.db.QueryRow(ctx, sqlAcquireLease, shard, replicaID, ttl).Scan(&l.Shard, &l.ReplicaID, &l.Epoch, &took)
	if errors.Is(err, pgx.ErrNoRows) {
		// Another replica created the shard's row while this statement
		// waited for it: the row is theirs, and this statement's snapshot
		// cannot see it.
		return registry.Lease{Shard: shard}, false, nil
	}
	if err != nil {
		return registry.Lease{}, false, fmt.Errorf("acquire lease on shard %d: %w", shard, translate(err))
	}
	return l, took, nil
}

// ReleaseLease frees the shard if l is still its lease.
func (s *Store) ReleaseLease(ctx context.Context, l registry.Lease) error {
	_, err := s.db.Exec(ctx, `UPDATE shard_leases SET replica_id = NULL
		WHERE shard = $1 AND replica_id = $2 AND epoch = $3`, l.Shard, l.ReplicaID, l.Epoch)
	if err != nil {
		return fmt.Errorf("release lease on shard %d: %w", l.Shard, translate(err))
	}
	return nil
}

// CheckLease returns ErrFenced unless l is current; in a transaction the
// lease row is share-locked until it ends, so nobody can take the shard
// while the fenced writes are made.
func (s *Store) CheckLease(ctx context.Context, l registry.Lease) error {
	sql := `SELECT EXISTS (SELECT 1 FROM shard_leases WHERE shard = $1 AND replica_id = $2 AND epoch = $3)`
	if s.inTx {
		sql = `SELECT EXISTS (SELECT 1 FROM shard_leases WHERE shard = $1 AND replica_id = $2 AND epoch = $3 FOR SHARE)`
	}
	var held bool
	if err := s.db.QueryRow(ctx, sql, l.Shard, l.ReplicaID, l.Epoch).Scan(&held); err != nil {
		return fmt.Errorf("check lease on shard %d: %w", l.Shard, translate(err))
	}
	if !held {
		return fmt.Errorf("shard %d lease of %s at epoch %d: %w", l.Shard, l.ReplicaID, l.Epoch, registry.ErrFenced)
	}
	return nil
}

// sessionKey is the advisory lock key of a replica's session.
func sessionKey(id string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("bap-engine replica "))
	_, _ = h.Write([]byte(id))
	return int64(h.Sum64())
}

// sessions are the replica sessions this Store opened, by replica id.
type sessions struct {
	cfg *pgx.ConnConfig
	mu  sync.Mutex
	by  map[string]*session
}

func newSessions(cfg *pgx.ConnConfig) *sessions {
	return &sessions{cfg: cfg, by: map[string]*session{}}
}

func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.by[id]
	if s == nil {
		s = &session{cfg: ss.cfg, key: sessionKey(id)}
		ss.by[id] = s
	}
	return s
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	s := ss.by[id]
	delete(ss.by, id)
	ss.mu.Unlock()
	if s != nil {
		s.close()
	}
}

func (ss *sessions) closeAll() {
	ss.mu.Lock()
	all := ss.by
	ss.by = map[string]*session{}
	ss.mu.Unlock()
	for _, s := range all {
		s.close()
	}
}

// session is a replica's own connection, holding its advisory lock; it is
// reopened (and the lock taken again) after an error.
type session struct {
	cfg  *pgx.ConnConfig
	key  int64
	mu   sync.Mutex
	conn *pgx.Conn
}

// sessionTimeout bounds one statement on a session. The caller's
// cancellation does not interrupt it: pgx closes a connection whose query
// is cancelled, and that would end the session, as if the process died.
const sessionTimeout = 10 * time.Second

func (s *session) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionTimeout)
	defer cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.conn.IsClosed() {
		conn, err := pgx.ConnectConfig(ctx, s.cfg)
		if err != nil {
			return pgconn.CommandTag{}, err
		}
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, s.key); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return pgconn.CommandTag{}, err
		}
		s.conn = conn
	}
	tag, err := s.conn.Exec(ctx, sql, args...)
	if err != nil {
		_ = s.conn.Close(context.WithoutCancel(ctx))
		s.conn = nil
	}
	return tag, err
}

// close releases the lock (at once: closing alone lets the server notice
// a moment later) and closes the connection.
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = s.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, s.key)
		_ = s.conn.Close(ctx)
		s.conn = nil
	}
}
