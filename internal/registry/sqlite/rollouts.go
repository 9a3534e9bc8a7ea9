package sqlite

import (
	"context"
	"strings"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
)

const rolloutCols = `id, product_id, engine_version, percent, max_parallel, max_failures,
	state, COALESCE(reason, ''), failure_base, created_at, updated_at`

func scanRollout(row rowScanner) (bap.Rollout, error) {
	var r bap.Rollout
	err := row.Scan(&r.ID, &r.ProductID, &r.EngineVersion, &r.Percent, &r.MaxParallel, &r.MaxFailures,
		&r.State, &r.Reason, &r.FailureBase, timeScanner{&r.CreatedAt}, timeScanner{&r.UpdatedAt})
	return r, err
}

// CreateRollout inserts r and appends e in one transaction.
func (s *Store) CreateRollout(ctx context.Context, r bap.Rollout, e audit.Entry) error {
	const op = "create rollout"
	return s.inTx(ctx, func(tx *Store) error {
		_, err := tx.tx.ExecContext(ctx, `INSERT INTO rollouts (id, product_id, engine_version, percent,
			max_parallel, max_failures, state, reason, failure_base, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.ID, r.ProductID, r.EngineVersion, r.Percent, r.MaxParallel, r.MaxFailures, string(r.State),
			nullStr(r.Reason), r.FailureBase, ts(r.CreatedAt), ts(r.UpdatedAt))
		if err != nil {
			return translate(op, err)
		}
		return tx.appendAudit(ctx, e)
	})
}

// GetRollout returns a rollout by id.
func (s *Store) GetRollout(ctx context.Context, id string) (bap.Rollout, error) {
	return one("get rollout "+id, s.reader().QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`, id), scanRollout)
}

func (s *Store) queryRollouts(ctx context.Context, op, query string, args ...any) ([]bap.Rollout, error) {
	rows, err := s.reader().QueryContext(ctx, query, args...)
	return collect(op, rows, err, scanRollout)
}

// ListRollouts returns the product's rollouts, newest first.
func (s *Store) ListRollouts(ctx context.Context, productID string) ([]bap.Rollout, error) {
	return s.queryRollouts(ctx, "list rollouts", `SELECT `+rolloutCols+` FROM rollouts
		WHERE product_id = ? ORDER BY created_at DESC, id DESC`, productID)
}

// RolloutsInState returns the rollouts in one of states, oldest first.
func (s *Store) RolloutsInState(ctx context.Context, states ...bap.RolloutState) ([]bap.Rollout, error) {
	if len(states) == 0 {
		return []bap.Rollout{}, nil
	}
	args := make([]any, len(states))
	for i, st := range states {
		args[i] = string(st)
	}
	in := strings.TrimSuffix(strings.Repeat("?, ", len(states)), ", ")
	return s.queryRollouts(ctx, "rollouts in state", `SELECT `+rolloutCols+` FROM rollouts
		WHERE state IN (`+in+`) ORDER BY created_at, id`, args...)
}

// UpdateRollout writes r's percent, state and reason and appends entries.
func (s *Store) UpdateRollout(ctx context.Context, r bap.Rollout, entries ...audit.Entry) error {
	return s.inTx(ctx, func(tx *Store) error {
		if err := tx.updateOne(ctx, "update rollout "+r.ID, `UPDATE rollouts SET percent = ?, state = ?,
			reason = ?, failure_base = ?, updated_at = ? WHERE id = ?`,
			r.Percent, string(r.State), nullStr(r.Reason), r.FailureBase, ts(bap.Now()), r.ID); err != nil {
			return err
		}
		return tx.appendAudit(ctx, entries...)
	})
}

// SetRolloutEngine inserts or replaces a rollout's outcome for an engine.
func (s *Store) SetRolloutEngine(ctx context.Context, re bap.RolloutEngine) error {
	_, err := s.writer().ExecContext(ctx, `INSERT INTO rollout_engines (rollout_id, engine_id, user_id, outcome, reason, updated_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (rollout_id, engine_id) DO UPDATE SET user_id = excluded.user_id,
			outcome = excluded.outcome, reason = excluded.reason, updated_at = excluded.updated_at`,
		re.RolloutID, re.EngineID, re.UserID, string(re.Outcome), nullStr(re.Reason), ts(bap.Now()))
	return translate("set rollout engine", err)
}

// RolloutEngines returns a rollout's recorded outcomes by engine id.
func (s *Store) RolloutEngines(ctx context.Context, rolloutID string) ([]bap.RolloutEngine, error) {
	const op = "rollout engines"
	rows, err := s.reader().QueryContext(ctx, `SELECT rollout_id, engine_id, user_id, outcome,
		COALESCE(reason, ''), updated_at FROM rollout_engines WHERE rollout_id = ? ORDER BY engine_id`, rolloutID)
	return collect(op, rows, err, func(row rowScanner) (bap.RolloutEngine, error) {
		var re bap.RolloutEngine
		err := row.Scan(&re.RolloutID, &re.EngineID, &re.UserID, &re.Outcome, &re.Reason, timeScanner{&re.UpdatedAt})
		return re, err
	})
}
