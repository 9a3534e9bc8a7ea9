package lifecycle

import (
	"context"
	"errors"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Destroy removes an engine: destroying, backend destroy (instance and data),
// then the row is deleted and its port freed with the destroy audit row.
// An operation in flight on the engine (a provision included) ends first.
// Idempotent on a destroying engine; a destroy running on another replica is
// joined. Errors: ENGINE_NOT_FOUND, BACKEND_UNAVAILABLE (the row stays
// destroying; reconciliation finishes it), DATABASE_UNAVAILABLE.
func (m *Manager) Destroy(ctx context.Context, engineID, actor string) (Result, error) {
	if e, err := m.load(ctx, engineID); err == nil && e.Status == bap.StateProvisioning {
		// Let a provision of this engine in flight here finish first.
		if err := m.flights.idle(ctx, provisionKey(e.ProductID, e.UserID)); err != nil {
			return Result{}, err
		}
	}
	return m.flights.do(ctx, engineID, "destroy", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		var productID string
		defer m.observe(&productID, "destroy", began, &err)
		join := func(before, _ bap.Engine, gone bool) (Result, bool, error) {
			if gone {
				before.Status = bap.StateDestroying
				before.Claim = bap.Claim{}
				return Result{Engine: before}, true, nil
			}
			return Result{}, false, nil
		}
		return m.runOp(ctx, engineID, claimSpec{op: bap.OpDestroy}, join,
			func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error) {
				productID = e.ProductID
				from := e.Status
				err := m.commitOp(ctx, c, false, func(cur *bap.Engine) (*audit.Entry, error) {
					cur.Status = bap.StateDestroying
					return nil, nil
				})
				if err != nil {
					return Result{}, err
				}
				if err := m.finishDestroy(ctx, c, e, actor, from, began, nil); err != nil {
					return Result{}, err
				}
				e.Status = bap.StateDestroying
				e.Claim = bap.Claim{}
				return Result{Engine: e}, nil
			})
	})
}

// finishDestroy removes the instance and data, then, under the claim, the
// row and its port with the destroy audit row.
func (m *Manager) finishDestroy(ctx context.Context, c *opClaim, e bap.Engine, actor string, from bap.State,
	began time.Time, extra map[string]any) error {
	if err := m.backend.Destroy(ctx, e.ID); err != nil {
		return opErr(err, m.cfg.BootTimeout)
	}
	meta := map[string]any{"from": string(from), "port": e.Port}
	for k, v := range extra {
		meta[k] = v
	}
	err := m.store.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, e.ID)
		if err != nil {
			return err
		}
		if cur.Claim.Owner != m.rep.ID() || cur.Claim.Epoch != c.epoch {
			return errFenced
		}
		return tx.DeleteEngine(ctx, e.ID, audit.Entry{
			ProductID:  e.ProductID,
			UserID:     e.UserID,
			EngineID:   e.ID,
			Action:     audit.Destroy,
			Actor:      actor,
			DurationMS: ptr(time.Since(began).Milliseconds()),
			Metadata:   meta,
		})
	})
	switch {
	case err == nil, errors.Is(err, registry.ErrNotFound):
		c.released = true
		return nil
	case errors.Is(err, errFenced):
		c.released = true
		return engineErr("delete engine", err)
	}
	return engineErr("delete engine", err)
}
