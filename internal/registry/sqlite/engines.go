package sqlite

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// engineCols is the column list engineDest reads, for an engines table
// aliased e. Every column tolerates NULL so that AdmitLookup's LEFT JOIN can
// read "no engine" as an empty id.
const engineCols = `COALESCE(e.id, ''), COALESCE(e.product_id, ''), COALESCE(e.user_id, ''),
	COALESCE(e.status, ''), COALESCE(e.port, 0), COALESCE(e.engine_key_hash, ''),
	COALESCE(e.engine_key_enc, ''), COALESCE(e.image, ''), COALESCE(e.url, ''),
	COALESCE(e.instance_id, ''), e.boot_duration_ms, COALESCE(e.health_failures, 0),
	COALESCE(e.restart_attempts, 0), e.next_restart_at, e.last_health_at, e.last_active_at,
	COALESCE(e.failure_reason, ''), COALESCE(e.op, ''), COALESCE(e.op_owner, ''),
	COALESCE(e.op_epoch, 0), e.op_started_at, COALESCE(e.op_detail, ''), e.created_at, e.updated_at`

// sqliteMaxParams bounds the ids bound into one IN list.
const sqliteMaxParams = 500

func engineDest(e *bap.Engine) []any {
	return []any{&e.ID, &e.ProductID, &e.UserID, &e.Status, &e.Port, &e.KeyHash, &e.KeyEnc,
		&e.Image, &e.URL, &e.InstanceID, &e.BootDurationMS, &e.HealthFailures, &e.RestartAttempts,
		nullTimeScanner{&e.NextRestartAt}, nullTimeScanner{&e.LastHealthAt},
		nullTimeScanner{&e.LastActiveAt}, &e.FailureReason, &e.Claim.Op, &e.Claim.Owner,
		&e.Claim.Epoch, nullTimeScanner{&e.Claim.StartedAt}, &e.Claim.Detail,
		timeScanner{&e.CreatedAt}, timeScanner{&e.UpdatedAt}}
}

func scanEngine(row rowScanner) (bap.Engine, error) {
	var e bap.Engine
	if err := row.Scan(engineDest(&e)...); err != nil {
		return bap.Engine{}, err
	}
	return e, nil
}

func (s *Store) queryEngines(ctx context.Context, q querier, op, query string, args ...any) ([]bap.Engine, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	return collect(op, rows, err, scanEngine)
}

// InsertEngine inserts e only if its user has no engine yet and the product
// is under q. The write connection's IMMEDIATE transaction makes the checks
// and the insert one atomic step. ErrConflict, ErrQuotaExceeded.
func (s *Store) InsertEngine(ctx context.Context, e bap.Engine, q registry.Quota) error {
	op := "insert engine " + e.ID
	return s.inTx(ctx, func(tx *Store) error {
		if err := tx.insertChecks(ctx, e, q); err != nil {
			return err
		}
		created := e.CreatedAt
		if created.IsZero() {
			created = bap.Now()
		}
		updated := e.UpdatedAt
		if updated.IsZero() {
			updated = created
		}
		_, err := tx.tx.ExecContext(ctx, `INSERT INTO engines
			(id, product_id, user_id, status, port, engine_key_hash, engine_key_enc, image, url,
			 instance_id, boot_duration_ms, health_failures, restart_attempts, next_restart_at,
			 last_health_at, last_active_at, failure_reason, op, op_owner, op_epoch, op_started_at,
			 created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			e.ID, e.ProductID, e.UserID, string(e.Status), e.Port, nullStr(e.KeyHash),
			nullStr(e.KeyEnc), nullStr(e.Image), nullStr(e.URL), nullStr(e.InstanceID),
			nullInt64(e.BootDurationMS), e.HealthFailures, e.RestartAttempts,
			nullTS(e.NextRestartAt), nullTS(e.LastHealthAt), nullTS(e.LastActiveAt),
			nullStr(e.FailureReason), nullStr(string(e.Claim.Op)), nullStr(e.Claim.Owner),
			e.Claim.Epoch, nullTS(e.Claim.StartedAt), ts(created), ts(updated))
		return translate(op, err)
	})
}

// insertChecks refuses e when its user has an engine (ErrConflict) or the
// product is at q (ErrQuotaExceeded). It runs in the IMMEDIATE transaction
// of the insert, so nothing can change between the checks and the insert.
func (s *Store) insertChecks(ctx context.Context, e bap.Engine, q registry.Quota) error {
	op := "insert engine " + e.ID
	var exists bool
	if err := s.tx.QueryRowContext(ctx,
		`SELECT EXISTS (SELECT 1 FROM engines WHERE product_id = ? AND user_id = ?)`,
		e.ProductID, e.UserID).Scan(&exists); err != nil {
		return translate(op, err)
	}
	if exists {
		return fmt.Errorf("%s: the user already has an engine: %w", op, registry.ErrConflict)
	}
	if q.MaxEngines > 0 {
		var n int
		if err := s.tx.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM engines WHERE product_id = ?`, e.ProductID).Scan(&n); err != nil {
			return translate(op, err)
		}
		if n >= q.MaxEngines {
			return fmt.Errorf("%s: product has %d engines, max_engines is %d: %w",
				op, n, q.MaxEngines, registry.ErrQuotaExceeded)
		}
	}
	if q.MaxRunning > 0 {
		n, err := s.CountRunning(ctx, e.ProductID)
		if err != nil {
			return err
		}
		if n >= q.MaxRunning {
			return fmt.Errorf("%s: product has %d engines running, max_running is %d: %w",
				op, n, q.MaxRunning, registry.ErrQuotaExceeded)
		}
	}
	return nil
}

// ProvisionEngine allocates the lowest free port and inserts e on it in one
// IMMEDIATE transaction.
func (s *Store) ProvisionEngine(ctx context.Context, e bap.Engine, q registry.Quota, portMin, portMax int) (int, error) {
	var port int
	err := s.inTx(ctx, func(tx *Store) error {
		// The checks first, so that a refused insert allocates nothing.
		if err := tx.insertChecks(ctx, e, q); err != nil {
			return err
		}
		var err error
		if port, err = tx.AllocatePort(ctx, e.ID, portMin, portMax); err != nil {
			return err
		}
		e.Port = port
		return tx.InsertEngine(ctx, e, q)
	})
	if err != nil {
		return 0, err
	}
	return port, nil
}

// GetEngine returns an engine by id. ErrNotFound.
func (s *Store) GetEngine(ctx context.Context, id string) (bap.Engine, error) {
	return one("get engine "+id, s.reader().QueryRowContext(ctx,
		`SELECT `+engineCols+` FROM engines e WHERE e.id = ?`, id), scanEngine)
}

// GetEngineByUser returns the product's engine for userID. ErrNotFound.
func (s *Store) GetEngineByUser(ctx context.Context, productID, userID string) (bap.Engine, error) {
	return one(fmt.Sprintf("get engine of user %q", userID), s.reader().QueryRowContext(ctx,
		`SELECT `+engineCols+` FROM engines e WHERE e.product_id = ? AND e.user_id = ?`,
		productID, userID), scanEngine)
}

// LockEngine re-reads an engine. Inside InTx the IMMEDIATE transaction
// already excludes every other writer, which is the lock; outside it is a
// plain read. ErrNotFound.
func (s *Store) LockEngine(ctx context.Context, id string) (bap.Engine, error) {
	return one("lock engine "+id, s.reader().QueryRowContext(ctx,
		`SELECT `+engineCols+` FROM engines e WHERE e.id = ?`, id), scanEngine)
}

// UpdateEngine writes every mutable column of e, sets updated_at to now and
// appends entries, atomically. ErrNotFound.
func (s *Store) UpdateEngine(ctx context.Context, e bap.Engine, entries ...audit.Entry) error {
	return s.inTx(ctx, func(tx *Store) error {
		tx.changed(registry.Change{Kind: registry.ChangeEngine, ID: e.ID})
		if err := tx.updateOne(ctx, "update engine "+e.ID, `UPDATE engines SET
			status = ?, port = ?, engine_key_hash = ?, engine_key_enc = ?, image = ?, url = ?,
			instance_id = ?, boot_duration_ms = ?, health_failures = ?, restart_attempts = ?,
			next_restart_at = ?, last_health_at = ?, last_active_at = ?, failure_reason = ?,
			updated_at = ?, op = ?, op_owner = ?, op_epoch = ?, op_started_at = ?, op_detail = ?
			WHERE id = ?`,
			string(e.Status), e.Port, nullStr(e.KeyHash), nullStr(e.KeyEnc), nullStr(e.Image),
			nullStr(e.URL), nullStr(e.InstanceID), nullInt64(e.BootDurationMS), e.HealthFailures,
			e.RestartAttempts, nullTS(e.NextRestartAt), nullTS(e.LastHealthAt),
			nullTS(e.LastActiveAt), nullStr(e.FailureReason), ts(bap.Now()),
			nullStr(string(e.Claim.Op)), nullStr(e.Claim.Owner), e.Claim.Epoch,
			nullTS(e.Claim.StartedAt), nullStr(e.Claim.Detail), e.ID); err != nil {
			return err
		}
		return tx.appendAudit(ctx, entries...)
	})
}

// DeleteEngine deletes the engine row, frees its ports and appends entries,
// atomically. ErrNotFound.
func (s *Store) DeleteEngine(ctx context.Context, id string, entries ...audit.Entry) error {
	op := "delete engine " + id
	return s.inTx(ctx, func(tx *Store) error {
		tx.changed(registry.Change{Kind: registry.ChangeEngine, ID: id})
		if err := tx.updateOne(ctx, op, `DELETE FROM engines WHERE id = ?`, id); err != nil {
			return err
		}
		if _, err := tx.tx.ExecContext(ctx, `DELETE FROM port_allocations WHERE engine_id = ?`, id); err != nil {
			return translate(op, err)
		}
		return tx.appendAudit(ctx, entries...)
	})
}

// ListEngines returns a page of a product's engines ordered by
// (created_at, id) and the total matching the filter, from one snapshot.
func (s *Store) ListEngines(ctx context.Context, f registry.EngineFilter) ([]bap.Engine, int, error) {
	const op = "list engines"
	if f.ProductID == "" {
		return nil, 0, errors.New("list engines: product id is required")
	}
	where := `e.product_id = ?`
	args := []any{f.ProductID}
	if f.Status != "" {
		where += ` AND e.status = ?`
		args = append(args, string(f.Status))
	}
	var (
		out   []bap.Engine
		total int
	)
	err := s.readTx(ctx, op, func(q querier) error {
		if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM engines e WHERE `+where, args...).Scan(&total); err != nil {
			return translate(op, err)
		}
		var err error
		out, err = s.queryEngines(ctx, q, op, `SELECT `+engineCols+` FROM engines e WHERE `+where+
			` ORDER BY e.created_at, e.id LIMIT ? OFFSET ?`,
			append(args, limitArg(f.Limit), max(f.Offset, 0))...)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// EnginesByStatus returns every engine in one of states, ordered by id.
func (s *Store) EnginesByStatus(ctx context.Context, states ...bap.State) ([]bap.Engine, error) {
	if len(states) == 0 {
		return []bap.Engine{}, nil
	}
	args := make([]any, len(states))
	for i, st := range states {
		args[i] = string(st)
	}
	return s.queryEngines(ctx, s.reader(), "engines by status", `SELECT `+engineCols+`
		FROM engines e WHERE e.status IN (`+placeholders(len(states))+`) ORDER BY e.id`, args...)
}

// CountByStatus counts a product's engines (every product's when productID is
// empty) per state; states without engines are absent.
func (s *Store) CountByStatus(ctx context.Context, productID string) (map[bap.State]int, error) {
	const op = "count engines by status"
	query := `SELECT status, COUNT(*) FROM engines GROUP BY status`
	var args []any
	if productID != "" {
		query = `SELECT status, COUNT(*) FROM engines WHERE product_id = ? GROUP BY status`
		args = append(args, productID)
	}
	rows, err := s.reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	out := map[bap.State]int{}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, translate(op, err)
		}
		out[bap.State(st)] = n
	}
	return out, translate(op, rows.Err())
}

// CountByProductStatus counts engines per product slug and state. A product
// without engines is present with an empty map.
func (s *Store) CountByProductStatus(ctx context.Context) (map[string]map[bap.State]int, error) {
	const op = "count engines by product and status"
	rows, err := s.reader().QueryContext(ctx, `SELECT p.slug, e.status, COUNT(e.id)
		FROM products p LEFT JOIN engines e ON e.product_id = p.id
		GROUP BY p.slug, e.status`)
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	out := map[string]map[bap.State]int{}
	for rows.Next() {
		var (
			slug string
			st   *string
			n    int
		)
		if err := rows.Scan(&slug, &st, &n); err != nil {
			return nil, translate(op, err)
		}
		m := out[slug]
		if m == nil {
			m = map[bap.State]int{}
			out[slug] = m
		}
		if st != nil {
			m[bap.State(*st)] = n
		}
	}
	return out, translate(op, rows.Err())
}

// TouchActive sets last_active_at = at for the engines; unknown ids are
// ignored.
func (s *Store) TouchActive(ctx context.Context, engineIDs []string, at time.Time) error {
	if len(engineIDs) == 0 {
		return nil
	}
	const op = "touch engines"
	return s.inTx(ctx, func(tx *Store) error {
		for start := 0; start < len(engineIDs); start += sqliteMaxParams {
			chunk := engineIDs[start:min(start+sqliteMaxParams, len(engineIDs))]
			args := make([]any, 0, len(chunk)+1)
			args = append(args, ts(at))
			for _, id := range chunk {
				args = append(args, id)
			}
			if _, err := tx.tx.ExecContext(ctx, `UPDATE engines SET last_active_at = ?
				WHERE id IN (`+placeholders(len(chunk))+`)`, args...); err != nil {
				return translate(op, err)
			}
		}
		return nil
	})
}

// RecordHealth applies a batch of probe results in one transaction.
func (s *Store) RecordHealth(ctx context.Context, results []registry.HealthResult) error {
	if len(results) == 0 {
		return nil
	}
	const op = "record health"
	// A result with a holder applies only while that replica holds the
	// engine's shard lease (?3 holder, ?4 shard, ?5 epoch).
	const fenced = `(?3 = '' OR EXISTS (SELECT 1 FROM shard_leases l
		WHERE l.shard = ?4 AND l.replica_id = ?3 AND l.epoch = ?5))`
	return s.inTx(ctx, func(tx *Store) error {
		ok, err := tx.tx.PrepareContext(ctx,
			`UPDATE engines SET last_health_at = ?1, health_failures = 0 WHERE id = ?2 AND `+fenced)
		if err != nil {
			return translate(op, err)
		}
		defer ok.Close()
		failed, err := tx.tx.PrepareContext(ctx,
			`UPDATE engines SET health_failures = health_failures + 1
			WHERE id = ?2 AND (?1 IS NULL OR updated_at <= ?1) AND op IS NULL
				AND status IN ('running', 'sleeping') AND `+fenced)
		if err != nil {
			return translate(op, err)
		}
		defer failed.Close()
		for _, r := range results {
			l := r.Lease
			if r.OK {
				_, err = ok.ExecContext(ctx, ts(r.At), r.EngineID, l.ReplicaID, l.Shard, l.Epoch)
			} else {
				var sent any // NULL: the failure always counts
				if !r.Sent.IsZero() {
					sent = ts(r.Sent)
				}
				_, err = failed.ExecContext(ctx, sent, r.EngineID, l.ReplicaID, l.Shard, l.Epoch)
			}
			if err != nil {
				return translate(op, err)
			}
		}
		return nil
	})
}

// sqlRunningSlots counts the engines of a product that hold a running slot
// (registry.Store.CountRunning).
const sqlRunningSlots = `SELECT COUNT(*) FROM engines WHERE product_id = ? AND (
	status IN ('running', 'sleeping', 'provisioning')
	OR (status = 'failed' AND next_restart_at IS NOT NULL)
	OR (status IN ('stopped', 'failed') AND op IN ('start', 'wake', 'auto-restart')))`

// CountRunning counts the product's engines that hold a running slot. The
// IMMEDIATE transaction of InTx is the lock the contract asks for.
func (s *Store) CountRunning(ctx context.Context, productID string) (int, error) {
	var n int
	if err := s.reader().QueryRowContext(ctx, sqlRunningSlots, productID).Scan(&n); err != nil {
		return 0, translate("count running engines", err)
	}
	return n, nil
}

// EnginesInOperation returns every engine with a claimed operation.
func (s *Store) EnginesInOperation(ctx context.Context) ([]bap.Engine, error) {
	return s.queryEngines(ctx, s.reader(), "engines in operation",
		`SELECT `+engineCols+` FROM engines e WHERE e.op IS NOT NULL ORDER BY e.id`)
}
