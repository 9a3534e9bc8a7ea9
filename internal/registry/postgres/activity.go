package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// TouchActive sets last_active_at for the engines in one statement.
func (s *Store) TouchActive(ctx context.Context, engineIDs []string, at time.Time) error {
	ids := validIDs(engineIDs)
	if len(ids) == 0 {
		return nil
	}
	_, err := s.db.Exec(ctx, `UPDATE engines SET last_active_at = $2 WHERE id = ANY($1::text[]::uuid[])`,
		ids, bap.Timestamp(at))
	if err != nil {
		return fmt.Errorf("touch active: %w", translate(err))
	}
	return nil
}

// sqlRecordHealth applies per-engine summaries of a batch of probes: whether
// a success resets the failure count, the time of the last success, and the
// send times of the failures after it ($4[lo:hi], NULL: unknown), each of
// which counts unless the row was updated after it, an operation is claimed
// on it or it is not probed any more. A summary with a holder ($7) applies
// only while that replica holds the shard lease ($8, $9). Rows locked by a
// transition are skipped: an operation is deciding the engine's fate, and a
// health batch must never wait for it.
const sqlRecordHealth = `UPDATE engines e SET
	health_failures = CASE WHEN r.reset THEN 0 ELSE e.health_failures END +
		CASE WHEN e.op IS NULL AND e.status IN ('running', 'sleeping') THEN
			(SELECT count(*) FROM unnest(($4::timestamptz[])[r.lo:r.hi]) AS f(sent)
				WHERE f.sent IS NULL OR e.updated_at <= f.sent)::int
		ELSE 0 END,
	last_health_at = COALESCE(r.ok_at, e.last_health_at)
FROM unnest($1::text[]::uuid[], $2::bool[], $3::timestamptz[], $5::int[], $6::int[], $7::text[], $8::int[], $9::bigint[])
	AS r(id, reset, ok_at, lo, hi, holder, shard, epoch)
WHERE e.id = r.id AND (r.holder = '' OR EXISTS (SELECT 1 FROM shard_leases l
	WHERE l.shard = r.shard AND l.replica_id = r.holder AND l.epoch = r.epoch))
	AND e.id IN (SELECT id FROM engines WHERE id = ANY($1::text[]::uuid[]) FOR UPDATE SKIP LOCKED)`

// RecordHealth applies a batch of probe results in one statement. Results
// are folded per engine in order first, so several results for one engine
// count as they would one by one: a success resets what came before it,
// and each failure after the last success is judged on its own send time.
// The last result's lease fences the engine's summary.
func (s *Store) RecordHealth(ctx context.Context, results []registry.HealthResult) error {
	type summary struct {
		reset bool
		okAt  *time.Time
		sent  []*time.Time // of the failures after the last success
		lease registry.Lease
	}
	byID := map[string]*summary{}
	var order []string
	for _, r := range results {
		if !validID(r.EngineID) {
			continue
		}
		sm := byID[r.EngineID]
		if sm == nil {
			sm = &summary{}
			byID[r.EngineID] = sm
			order = append(order, r.EngineID)
		}
		sm.lease = r.Lease
		if r.OK {
			at := bap.Timestamp(r.At)
			sm.reset, sm.okAt, sm.sent = true, &at, sm.sent[:0]
			continue
		}
		var sent *time.Time
		if !r.Sent.IsZero() {
			sent = &r.Sent
		}
		sm.sent = append(sm.sent, sent)
	}
	if len(order) == 0 {
		return nil
	}
	resets := make([]bool, len(order))
	okAt := make([]*time.Time, len(order))
	sent := make([]*time.Time, 0, len(results))
	lo := make([]int32, len(order))
	hi := make([]int32, len(order))
	holders := make([]string, len(order))
	shards := make([]int32, len(order))
	epochs := make([]int64, len(order))
	for i, id := range order {
		sm := byID[id]
		resets[i], okAt[i] = sm.reset, sm.okAt
		// PostgreSQL arrays count from 1; [n+1:n] is empty.
		lo[i] = int32(len(sent) + 1)
		sent = append(sent, sm.sent...)
		hi[i] = int32(len(sent))
		holders[i], shards[i], epochs[i] = sm.lease.ReplicaID, int32(sm.lease.Shard), sm.lease.Epoch
	}
	if _, err := s.db.Exec(ctx, sqlRecordHealth, order, resets, okAt, sent, lo, hi, holders, shards, epochs); err != nil {
		return fmt.Errorf("record health: %w", translate(err))
	}
	return nil
}
