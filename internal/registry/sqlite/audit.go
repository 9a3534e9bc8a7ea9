package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// AppendAudit inserts entries in one transaction (Timestamp zero means now).
func (s *Store) AppendAudit(ctx context.Context, entries ...audit.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	return s.inTx(ctx, func(tx *Store) error { return tx.appendAudit(ctx, entries...) })
}

// appendAudit inserts entries in the current transaction.
func (s *Store) appendAudit(ctx context.Context, entries ...audit.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	const op = "append audit"
	now := bap.Now()
	stmt, err := s.tx.PrepareContext(ctx, `INSERT INTO audit_log
		(timestamp, product_id, user_id, engine_id, action, actor, metadata, duration_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return translate(op, err)
	}
	defer stmt.Close()
	for _, e := range entries {
		if e.Action == "" {
			return errors.New("append audit: entry has no action")
		}
		at := e.Timestamp
		if at.IsZero() {
			at = now
		}
		var meta any
		if len(e.Metadata) > 0 {
			b, err := json.Marshal(e.Metadata)
			if err != nil {
				return fmt.Errorf("append audit %s: metadata: %w", e.Action, err)
			}
			meta = string(b)
		}
		if _, err := stmt.ExecContext(ctx, ts(at), nullStr(e.ProductID), nullStr(e.UserID),
			nullStr(e.EngineID), string(e.Action), e.Actor, meta, nullInt64(e.DurationMS)); err != nil {
			return translate(fmt.Sprintf("%s %s", op, e.Action), err)
		}
	}
	return nil
}

// ListAudit returns matching entries newest first (timestamp desc, id desc)
// and the total matching, from one snapshot.
func (s *Store) ListAudit(ctx context.Context, f registry.AuditFilter) ([]audit.Entry, int, error) {
	const op = "list audit"
	var w conds
	if f.ProductID != "" {
		w.add("product_id = ?", f.ProductID)
	}
	if f.EngineID != "" {
		w.add("engine_id = ?", f.EngineID)
	}
	if f.UserID != "" {
		w.add("user_id = ?", f.UserID)
	}
	if len(f.Actions) > 0 {
		actions := make([]any, len(f.Actions))
		for i, a := range f.Actions {
			actions[i] = string(a)
		}
		w.add("action IN ("+placeholders(len(f.Actions))+")", actions...)
	}
	if !f.Since.IsZero() {
		w.add("timestamp >= ?", ts(f.Since))
	}
	where, args := w.where(), w.args

	var (
		out   []audit.Entry
		total int
	)
	err := s.readTx(ctx, op, func(q querier) error {
		if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_log`+where, args...).Scan(&total); err != nil {
			return translate(op, err)
		}
		rows, err := q.QueryContext(ctx, `SELECT id, timestamp, COALESCE(product_id, ''),
			COALESCE(user_id, ''), COALESCE(engine_id, ''), action, actor, metadata, duration_ms
			FROM audit_log`+where+` ORDER BY timestamp DESC, id DESC LIMIT ? OFFSET ?`,
			append(args, limitArg(f.Limit), max(f.Offset, 0))...)
		if err != nil {
			return translate(op, err)
		}
		defer rows.Close()
		out = []audit.Entry{}
		for rows.Next() {
			var (
				e    audit.Entry
				meta sql.NullString
			)
			if err := rows.Scan(&e.ID, timeScanner{&e.Timestamp}, &e.ProductID, &e.UserID,
				&e.EngineID, &e.Action, &e.Actor, &meta, &e.DurationMS); err != nil {
				return translate(op, err)
			}
			if meta.Valid {
				if err := json.Unmarshal([]byte(meta.String), &e.Metadata); err != nil {
					return fmt.Errorf("%s: metadata of entry %d: %w", op, e.ID, err)
				}
			}
			out = append(out, e)
		}
		return translate(op, rows.Err())
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// AuditStats computes the /metrics aggregates of a product in one scan of
// its audit rows.
func (s *Store) AuditStats(ctx context.Context, productID string, since time.Time) (registry.AuditStats, error) {
	sinceTS := ts(since)
	crash := make([]any, len(audit.CrashActions))
	for i, a := range audit.CrashActions {
		crash[i] = string(a)
	}
	args := []any{string(audit.Provision), sinceTS}
	args = append(args, crash...)
	args = append(args, sinceTS,
		string(audit.AutoRestartStart), sinceTS,
		string(audit.Provision), sinceTS,
		string(audit.Provision),
		string(audit.Destroy),
		productID)
	var st registry.AuditStats
	err := s.reader().QueryRowContext(ctx, `SELECT
		COALESCE(SUM(action = ? AND timestamp >= ?), 0),
		COALESCE(SUM(action IN (`+placeholders(len(crash))+`) AND timestamp >= ?), 0),
		COALESCE(SUM(action = ? AND timestamp >= ?), 0),
		COALESCE(AVG(CASE WHEN action = ? AND timestamp >= ? THEN duration_ms END), 0.0),
		COALESCE(SUM(action = ?), 0),
		COALESCE(SUM(action = ?), 0)
		FROM audit_log WHERE product_id = ?`, args...).
		Scan(&st.ProvisionsSince, &st.CrashesSince, &st.RestartsSince, &st.AvgBootMSSince,
			&st.TotalProvisions, &st.TotalDestroys)
	if err != nil {
		return registry.AuditStats{}, translate("audit stats", err)
	}
	return st, nil
}

// PruneAudit deletes entries older than before and returns how many.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	const op = "prune audit"
	res, err := s.writer().ExecContext(ctx, `DELETE FROM audit_log WHERE timestamp < ?`, ts(before))
	if err != nil {
		return 0, translate(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, translate(op, err)
	}
	return n, nil
}
