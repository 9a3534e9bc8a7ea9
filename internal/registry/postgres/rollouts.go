package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

const rolloutCols = `id::text, product_id::text, engine_version, percent, max_parallel, max_failures,
	state, COALESCE(reason, ''), failure_base, created_at, updated_at`

func scanRollout(row pgx.CollectableRow) (bap.Rollout, error) {
	var r bap.Rollout
	err := row.Scan(&r.ID, &r.ProductID, &r.EngineVersion, &r.Percent, &r.MaxParallel, &r.MaxFailures,
		&r.State, &r.Reason, &r.FailureBase, &r.CreatedAt, &r.UpdatedAt)
	r.CreatedAt, r.UpdatedAt = bap.Timestamp(r.CreatedAt), bap.Timestamp(r.UpdatedAt)
	return r, err
}

// CreateRollout inserts r and appends e in one transaction.
func (s *Store) CreateRollout(ctx context.Context, r bap.Rollout, e audit.Entry) error {
	if !validID(r.ID) || !validID(r.ProductID) {
		return fmt.Errorf("create rollout: product %s: %w", r.ProductID, registry.ErrNotFound)
	}
	return s.InTx(ctx, func(tx registry.Store) error {
		t := tx.(*Store)
		_, err := t.db.Exec(ctx, `INSERT INTO rollouts (id, product_id, engine_version, percent, max_parallel,
			max_failures, state, reason, failure_base, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''), $9, $10, $11)`,
			r.ID, r.ProductID, r.EngineVersion, r.Percent, r.MaxParallel, r.MaxFailures, string(r.State),
			r.Reason, r.FailureBase, bap.Timestamp(r.CreatedAt), bap.Timestamp(r.UpdatedAt))
		if err != nil {
			return fmt.Errorf("create rollout: %w", translate(err))
		}
		return t.AppendAudit(ctx, e)
	})
}

// GetRollout returns a rollout by id.
func (s *Store) GetRollout(ctx context.Context, id string) (bap.Rollout, error) {
	if !validID(id) {
		return bap.Rollout{}, fmt.Errorf("get rollout %s: %w", id, registry.ErrNotFound)
	}
	rows, _ := s.db.Query(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE id = $1`, id)
	r, err := pgx.CollectExactlyOneRow(rows, scanRollout)
	if err != nil {
		return r, fmt.Errorf("get rollout %s: %w", id, notFound(err))
	}
	return r, nil
}

// ListRollouts returns the product's rollouts, newest first.
func (s *Store) ListRollouts(ctx context.Context, productID string) ([]bap.Rollout, error) {
	if !validID(productID) {
		return []bap.Rollout{}, nil
	}
	rows, _ := s.db.Query(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE product_id = $1
		ORDER BY created_at DESC, id DESC`, productID)
	out, err := pgx.CollectRows(rows, scanRollout)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", translate(err))
	}
	return out, nil
}

// RolloutsInState returns the rollouts in one of states, oldest first.
func (s *Store) RolloutsInState(ctx context.Context, states ...bap.RolloutState) ([]bap.Rollout, error) {
	names := make([]string, len(states))
	for i, st := range states {
		names[i] = string(st)
	}
	rows, _ := s.db.Query(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE state = ANY($1::text[])
		ORDER BY created_at, id`, names)
	out, err := pgx.CollectRows(rows, scanRollout)
	if err != nil {
		return nil, fmt.Errorf("rollouts in state: %w", translate(err))
	}
	return out, nil
}

// UpdateRollout writes r's percent, state and reason and appends entries.
func (s *Store) UpdateRollout(ctx context.Context, r bap.Rollout, entries ...audit.Entry) error {
	if !validID(r.ID) {
		return fmt.Errorf("update rollout %s: %w", r.ID, registry.ErrNotFound)
	}
	return s.InTx(ctx, func(tx registry.Store) error {
		t := tx.(*Store)
		tag, err := t.db.Exec(ctx, `UPDATE rollouts SET percent = $2, state = $3, reason = NULLIF($4, ''),
			failure_base = $5, updated_at = $6 WHERE id = $1`, r.ID, r.Percent, string(r.State), r.Reason, r.FailureBase, bap.Now())
		if err != nil {
			return fmt.Errorf("update rollout %s: %w", r.ID, translate(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("update rollout %s: %w", r.ID, registry.ErrNotFound)
		}
		return t.AppendAudit(ctx, entries...)
	})
}

// SetRolloutEngine inserts or replaces a rollout's outcome for an engine.
func (s *Store) SetRolloutEngine(ctx context.Context, re bap.RolloutEngine) error {
	if !validID(re.RolloutID) || !validID(re.EngineID) {
		return fmt.Errorf("set rollout engine: %w", registry.ErrNotFound)
	}
	_, err := s.db.Exec(ctx, `INSERT INTO rollout_engines (rollout_id, engine_id, user_id, outcome, reason, updated_at)
		VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6)
		ON CONFLICT (rollout_id, engine_id) DO UPDATE SET user_id = excluded.user_id,
			outcome = excluded.outcome, reason = excluded.reason, updated_at = excluded.updated_at`,
		re.RolloutID, re.EngineID, re.UserID, string(re.Outcome), re.Reason, bap.Now())
	if err != nil {
		return fmt.Errorf("set rollout engine: %w", translate(err))
	}
	return nil
}

// RolloutEngines returns a rollout's recorded outcomes by engine id.
func (s *Store) RolloutEngines(ctx context.Context, rolloutID string) ([]bap.RolloutEngine, error) {
	if !validID(rolloutID) {
		return []bap.RolloutEngine{}, nil
	}
	rows, _ := s.db.Query(ctx, `SELECT rollout_id::text, engine_id::text, user_id, outcome,
		COALESCE(reason, ''), updated_at FROM rollout_engines WHERE rollout_id = $1 ORDER BY engine_id`, rolloutID)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (bap.RolloutEngine, error) {
		var re bap.RolloutEngine
		err := row.Scan(&re.RolloutID, &re.EngineID, &re.UserID, &re.Outcome, &re.Reason, &re.UpdatedAt)
		re.UpdatedAt = bap.Timestamp(re.UpdatedAt)
		return re, err
	})
	if err != nil {
		return nil, fmt.Errorf("rollout engines: %w", translate(err))
	}
	return out, nil
}
