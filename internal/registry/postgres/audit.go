package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// auditInsert returns an INSERT of the audit entries passed as the eight
// array parameters starting at $first (see auditArgs), with join appended to
// the FROM clause (" CROSS JOIN u" writes nothing when the CTE u changed no
// row). Empty strings become NULL; rows keep the
// order of the entries so ids ascend with it.
func auditInsert(first int, join string) string {
	p := make([]string, 8)
	for i := range p {
		p[i] = "$" + strconv.Itoa(first+i)
	}
	return `INSERT INTO audit_log ("timestamp", product_id, user_id, engine_id, action, actor, metadata, duration_ms)
SELECT x.ts, NULLIF(x.pid, '')::uuid, NULLIF(x.uid, ''), NULLIF(x.eid, '')::uuid, x.action, x.actor, NULLIF(x.meta, '')::jsonb, x.dur
FROM unnest(` + p[0] + `::timestamptz[], ` + p[1] + `::text[], ` + p[2] + `::text[], ` + p[3] + `::text[], ` +
		p[4] + `::text[], ` + p[5] + `::text[], ` + p[6] + `::text[], ` + p[7] + `::bigint[])
	WITH ORDINALITY AS x(ts, pid, uid, eid, action, actor, meta, dur, ord)` + join + `
ORDER BY x.ord`
}

// auditArgs turns entries into the eight array parameters of auditInsert. A
// zero Timestamp becomes now.
func auditArgs(entries []audit.Entry) ([]any, error) {
	n := len(entries)
	ts := make([]time.Time, n)
	pid, uid, eid := make([]string, n), make([]string, n), make([]string, n)
	action, actor, meta := make([]string, n), make([]string, n), make([]string, n)
	dur := make([]*int64, n)
	now := bap.Now()
	for i, e := range entries {
		ts[i] = now
		if !e.Timestamp.IsZero() {
			ts[i] = bap.Timestamp(e.Timestamp)
		}
		pid[i], uid[i], eid[i] = e.ProductID, e.UserID, e.EngineID
		action[i], actor[i] = string(e.Action), e.Actor
		if e.Metadata != nil {
			b, err := json.Marshal(e.Metadata)
			if err != nil {
				return nil, fmt.Errorf("audit %s metadata: %w", e.Action, err)
			}
			meta[i] = string(b)
		}
		dur[i] = e.DurationMS
	}
	return []any{ts, pid, uid, eid, action, actor, meta, dur}, nil
}

var sqlAppendAudit = auditInsert(1, "")

// AppendAudit inserts entries in one statement.
func (s *Store) AppendAudit(ctx context.Context, entries ...audit.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	args, err := auditArgs(entries)
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	if _, err := s.db.Exec(ctx, sqlAppendAudit, args...); err != nil {
		return fmt.Errorf("append audit: %w", translate(err))
	}
	return nil
}

const auditCols = `a.id, a."timestamp", COALESCE(a.product_id::text, ''), COALESCE(a.user_id, ''),
	COALESCE(a.engine_id::text, ''), a.action, a.actor, a.metadata, a.duration_ms`

// ListAudit returns a page of matching entries, newest first, and the total.
func (s *Store) ListAudit(ctx context.Context, f registry.AuditFilter) ([]audit.Entry, int, error) {
	var w conds
	for _, id := range []string{f.ProductID, f.EngineID} {
		if id != "" && !validID(id) {
			return []audit.Entry{}, 0, nil // no row can have it
		}
	}
	if f.ProductID != "" {
		w.add("a.product_id = $?::uuid", f.ProductID)
	}
	if f.EngineID != "" {
		w.add("a.engine_id = $?::uuid", f.EngineID)
	}
	if f.UserID != "" {
		w.add("a.user_id = $?", f.UserID)
	}
	if len(f.Actions) > 0 {
		actions := make([]string, len(f.Actions))
		for i, a := range f.Actions {
			actions[i] = string(a)
		}
		w.add("a.action = ANY($?::text[])", actions)
	}
	if !f.Since.IsZero() {
		w.add(`a."timestamp" >= $?`, bap.Timestamp(f.Since))
	}
	cond, args := w.where(), w.args
	return countedPage(ctx, s.db, "audit", `SELECT count(*) FROM audit_log a`+cond,
		`SELECT `+auditCols+` FROM audit_log a`+cond+` ORDER BY a."timestamp" DESC, a.id DESC`+limitOffset(len(args)),
		args, f.Limit, f.Offset, scanAudit)
}

func scanAudit(row pgx.CollectableRow) (audit.Entry, error) {
	var e audit.Entry
	var action string
	var meta []byte
	if err := row.Scan(&e.ID, &e.Timestamp, &e.ProductID, &e.UserID, &e.EngineID,
		&action, &e.Actor, &meta, &e.DurationMS); err != nil {
		return e, err
	}
	e.Timestamp = bap.Timestamp(e.Timestamp)
	e.Action = audit.Action(action)
	if meta != nil {
		if err := json.Unmarshal(meta, &e.Metadata); err != nil {
			return e, fmt.Errorf("audit %d metadata: %w", e.ID, err)
		}
	}
	return e, nil
}

// sqlAuditStats counts through the (product_id, action, timestamp) index, one
// index range per figure, so /metrics stays cheap on a long audit log.
const sqlAuditStats = `SELECT
	(SELECT count(*) FROM audit_log WHERE product_id = $1 AND action = $3 AND "timestamp" >= $2),
	(SELECT count(*) FROM audit_log WHERE product_id = $1 AND action = ANY($4::text[]) AND "timestamp" >= $2),
	(SELECT count(*) FROM audit_log WHERE product_id = $1 AND action = $5 AND "timestamp" >= $2),
	(SELECT COALESCE(avg(duration_ms), 0)::float8 FROM audit_log
		WHERE product_id = $1 AND action = $3 AND "timestamp" >= $2 AND duration_ms IS NOT NULL),
	(SELECT count(*) FROM audit_log WHERE product_id = $1 AND action = $3),
	(SELECT count(*) FROM audit_log WHERE product_id = $1 AND action = $6)`

// AuditStats computes the /metrics aggregates of a product since a time.
func (s *Store) AuditStats(ctx context.Context, productID string, since time.Time) (registry.AuditStats, error) {
	var st registry.AuditStats
	if !validID(productID) {
		return st, nil
	}
	crashes := make([]string, len(audit.CrashActions))
	for i, a := range audit.CrashActions {
		crashes[i] = string(a)
	}
	err := s.db.QueryRow(ctx, sqlAuditStats, productID, bap.Timestamp(since), string(audit.Provision),
		crashes, string(audit.AutoRestartStart), string(audit.Destroy)).
		Scan(&st.ProvisionsSince, &st.CrashesSince, &st.RestartsSince, &st.AvgBootMSSince,
			&st.TotalProvisions, &st.TotalDestroys)
	if err != nil {
		return st, fmt.Errorf("audit stats: %w", translate(err))
	}
	return st, nil
}

// PruneAudit deletes entries older than before.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM audit_log WHERE "timestamp" < $1`, bap.Timestamp(before))
	if err != nil {
		return 0, fmt.Errorf("prune audit: %w", translate(err))
	}
	return tag.RowsAffected(), nil
}
