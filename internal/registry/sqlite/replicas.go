package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Liveness is judged by this process's clock: with SQLite one process
// serves the file (ClaimServing), so there is only one clock. A replica's
// session is its registration through this Store (this process): a replica
// no Store of this process registered is gone.

// RegisterReplica records r with a heartbeat of now and opens its session.
func (s *Store) RegisterReplica(ctx context.Context, r bap.Replica) error {
	s.sessions.open(r.ID)
	_, err := s.writer().ExecContext(ctx, `INSERT INTO replicas (id, host, pid, version, started_at, heartbeat_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
			version = excluded.version, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
		r.ID, r.Host, r.Pid, r.Version, ts(r.StartedAt), ts(time.Now()))
	return translate("register replica "+r.ID, err)
}

// HeartbeatReplica sets the replica's heartbeat to now.
func (s *Store) HeartbeatReplica(ctx context.Context, id string) error {
	return s.updateOne(ctx, "heartbeat replica "+id,
		`UPDATE replicas SET heartbeat_at = ? WHERE id = ?`, ts(time.Now()), id)
}

// DeregisterReplica deletes the replica and frees its leases, and ends its
// session.
func (s *Store) DeregisterReplica(ctx context.Context, id string) error {
	op := "deregister replica " + id
	err := s.inTx(ctx, func(tx *Store) error {
		if _, err := tx.tx.ExecContext(ctx, `UPDATE shard_leases SET replica_id = NULL WHERE replica_id = ?`, id); err != nil {
			return translate(op, err)
		}
		_, err := tx.tx.ExecContext(ctx, `DELETE FROM replicas WHERE id = ?`, id)
		return translate(op, err)
	})
	if err == nil {
		s.sessions.end(id)
	}
	return err
}

// ReplicaGone reports whether the replica's heartbeat is quiet (or it has
// no row) and no Store of this process registered it.
func (s *Store) ReplicaGone(ctx context.Context, id string, quiet time.Duration) (bool, error) {
	if s.sessions.holds(id) {
		return false, nil
	}
	var recent bool
	err := s.reader().QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM replicas
		WHERE id = ? AND heartbeat_at >= ?)`, id, ts(time.Now().Add(-quiet))).Scan(&recent)
	if err != nil {
		return false, translate("replica "+id+" gone", err)
	}
	return !recent, nil
}

// sessions are the replicas registered through a Store (and its
// transactions' Stores), until deregistered or closed. Every Store of this
// process on the same file sees them (processSessions): that is the process
// that serves the file.
type sessions struct {
	path string
	mu   sync.Mutex
	mine map[string]bool
}

// processSessions counts, per database file and replica id, the Stores of
// this process holding the replica's session.
var processSessions = struct {
	mu sync.Mutex
	by map[string]map[string]int
}{by: map[string]map[string]int{}}

func newSessions(path string) *sessions { return &sessions{path: path, mine: map[string]bool{}} }

func (ss *sessions) open(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.mine[id] {
		return
	}
	ss.mine[id] = true
	processSessions.mu.Lock()
	defer processSessions.mu.Unlock()
	if processSessions.by[ss.path] == nil {
		processSessions.by[ss.path] = map[string]int{}
	}
	processSessions.by[ss.path][id]++
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if !ss.mine[id] {
		return
	}
	delete(ss.mine, id)
	release(ss.path, id)
}

func (ss *sessions) holds(id string) bool {
	processSessions.mu.Lock()
	defer processSessions.mu.Unlock()
	return processSessions.by[ss.path][id] > 0
}

func (ss *sessions) endAll() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id := range ss.mine {
		release(ss.path, id)
	}
	ss.mine = map[string]bool{}
}

func release(path, id string) {
	processSessions.mu.Lock()
	defer processSessions.mu.Unlock()
	if n := processSessions.by[path][id] - 1; n > 0 {
		processSessions.by[path][id] = n
	} else {
		delete(processSessions.by[path], id)
	}
}

// Replicas lists the replicas with their liveness and lease counts.
func (s *Store) Replicas(ctx context.Context, ttl time.Duration) ([]registry.ReplicaStatus, error) {
	const op = "list replicas"
	rows, err := s.reader().QueryContext(ctx, `SELECT r.id, r.host, r.pid, r.version, r.started_at,
			r.heartbeat_at, r.heartbeat_at > ?,
			(SELECT COUNT(*) FROM shard_leases l WHERE l.replica_id = r.id)
		FROM replicas r ORDER BY r.id`, ts(time.Now().Add(-ttl)))
	return collect(op, rows, err, func(row rowScanner) (registry.ReplicaStatus, error) {
		var r registry.ReplicaStatus
		err := row.Scan(&r.ID, &r.Host, &r.Pid, &r.Version, timeScanner{&r.StartedAt},
			timeScanner{&r.HeartbeatAt}, &r.Alive, &r.Shards)
		return r, err
	})
}

// ReplicaAlive reports whether the replica heartbeat within ttl.
func (s *Store) ReplicaAlive(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	var alive bool
	err := s.reader().QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM replicas
		WHERE id = ? AND heartbeat_at > ?)`, id, ts(time.Now().Add(-ttl))).Scan(&alive)
	if err != nil {
		return false, translate("replica "+id+" alive", err)
	}
	return alive, nil
}

// Leases returns every lease row.
func (s *Store) Leases(ctx context.Context) ([]registry.Lease, error) {
	const op = "list leases"
	rows, err := s.reader().QueryContext(ctx, `SELECT shard, COALESCE(replica_id, ''), epoch
		FROM shard_leases ORDER BY shard`)
	return collect(op, rows, err, func(row rowScanner) (registry.Lease, error) {
		var l registry.Lease
		err := row.Scan(&l.Shard, &l.ReplicaID, &l.Epoch)
		return l, err
	})
}

// AcquireLease takes a free shard or one whose holder is dead.
func (s *Store) AcquireLease(ctx context.Context, shard int, replicaID string, ttl time.Duration) (registry.Lease, bool, error) {
	op := fmt.Sprintf("acquire lease on shard %d", shard)
	var (
		l    registry.Lease
		took bool
	)
	err := s.inTx(ctx, func(tx *Store) error {
		now := time.Now()
		var holder *string
		err := tx.tx.QueryRowContext(ctx, `SELECT replica_id, epoch FROM shard_leases WHERE shard = ?`, shard).
			Scan(&holder, &l.Epoch)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			l = registry.Lease{Shard: shard, ReplicaID: replicaID, Epoch: 1}
			took = true
			_, err = tx.tx.ExecContext(ctx, `INSERT INTO shard_leases (shard, replica_id, epoch, acquired_at)
				VALUES (?, ?, 1, ?)`, shard, replicaID, ts(now))
			return translate(op, err)
		case err != nil:
			return translate(op, err)
		}
		l.Shard = shard
		if holder != nil {
			l.ReplicaID = *holder
			var alive bool
			if err := tx.tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM replicas
				WHERE id = ? AND heartbeat_at > ?)`, *holder, ts(now.Add(-ttl))).Scan(&alive); err != nil {
				return translate(op, err)
			}
			if alive {
				return nil
			}
		}
		l = registry.Lease{Shard: shard, ReplicaID: replicaID, Epoch: l.Epoch + 1}
		took = true
		_, err = tx.tx.ExecContext(ctx, `UPDATE shard_leases SET replica_id = ?, epoch = ?, acquired_at = ?
			WHERE shard = ?`, replicaID, l.Epoch, ts(now), shard)
		return translate(op, err)
	})
	if err != nil {
		return registry.Lease{}, false, err
	}
	return l, took, nil
}

// ReleaseLease frees the shard if l is still its lease.
func (s *Store) ReleaseLease(ctx context.Context, l registry.Lease) error {
	_, err := s.writer().ExecContext(ctx, `UPDATE shard_leases SET replica_id = NULL
		WHERE shard = ? AND replica_id = ? AND epoch = ?`, l.Shard, l.ReplicaID, l.Epoch)
	return translate(fmt.Sprintf("release lease on shard %d", l.Shard), err)
}

// CheckLease returns ErrFenced unless l is current. In a transaction the
// single writer is the lock that keeps it current until the transaction
// ends.
func (s *Store) CheckLease(ctx context.Context, l registry.Lease) error {
	var held bool
	err := s.reader().QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM shard_leases
		WHERE shard = ? AND replica_id = ? AND epoch = ?)`, l.Shard, l.ReplicaID, l.Epoch).Scan(&held)
	if err != nil {
		return translate(fmt.Sprintf("check lease on shard %d", l.Shard), err)
	}
	if !held {
		return fmt.Errorf("shard %d lease of %s at epoch %d: %w", l.Shard, l.ReplicaID, l.Epoch, registry.ErrFenced)
	}
	return nil
}

// absPath names a database file the same way however it was opened.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}
