package lifecycle

import (
	"context"
	"errors"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// Stop stops a running or sleeping engine; its data is kept (SPEC §5).
// Errors: ENGINE_NOT_FOUND, ENGINE_NOT_RUNNING, ENGINE_BUSY,
// BACKEND_UNAVAILABLE, BACKEND_ERROR, DATABASE_UNAVAILABLE.
func (m *Manager) Stop(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "stop", func(ctx context.Context) (res Result, err error) {
		began := time.Now()
		var productID string
		defer m.observe(&productID, "stop", began, &err)
		spec := claimSpec{
			op:   bap.OpStop,
			hard: hardBusy,
			pre: func(_ context.Context, _ registry.Store, cur bap.Engine) error {
				productID = cur.ProductID
				switch cur.Status {
				case bap.StateRunning, bap.StateSleeping:
					return nil
				}
				return bap.Errorf(bap.CodeEngineNotRunning, "Engine is not running (status %s).", cur.Status)
			},
		}
		join := func(_, after bap.Engine, gone bool) (Result, bool, error) {
			if !gone && after.Status == bap.StateStopped {
				return Result{Engine: after}, true, nil
			}
			return Result{}, false, nil
		}
		return m.runOp(ctx, engineID, spec, join, func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error) {
			if err := m.stopInstance(ctx, e.ID); err != nil {
				return Result{}, opErr(err, m.cfg.BootTimeout)
			}
			if err := m.commitStopped(ctx, c, e.Status, actor, time.Since(began), nil); err != nil {
				return Result{}, err
			}
			e, err := m.load(ctx, engineID)
			return Result{Engine: e}, err
		})
	})
}

// commitStopped records the engine of c stopped and ends the claim.
func (m *Manager) commitStopped(ctx context.Context, c *opClaim, from bap.State, actor string, d time.Duration, extra map[string]any) error {
	return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying {
			return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is destroying.")
		}
		cur.Status = bap.StateStopped
		meta := map[string]any{"from": string(from)}
		for k, v := range extra {
			meta[k] = v
		}
		return &audit.Entry{Action: audit.Stop, Actor: actor, DurationMS: ptr(d.Milliseconds()), Metadata: meta}, nil
	})
}

// stopInstance stops an instance, unpausing it first so it can handle
// SIGTERM.
func (m *Manager) stopInstance(ctx context.Context, engineID string) error {
	inst, err := m.backend.Inspect(ctx, engineID)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if inst.Status == backend.StatusPaused {
		if err := m.backend.Unpause(ctx, engineID); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return err
		}
	}
	return m.backend.Stop(ctx, engineID, m.cfg.StopGrace)
}

// Sleep puts a running engine to sleep as ORCH_SLEEP_MODE says (SPEC §7),
// if this replica holds its shard. idleSince, when non-zero, makes the
// sleep conditional: an engine active after it (a wake or admit that raced
// the sweep) is left running and Sleep reports slept=false, as it does when
// another operation holds the engine.
func (m *Manager) Sleep(ctx context.Context, engineID string, idleSince time.Time) (slept bool, err error) {
	lease, ok := m.rep.Lease(engineID)
	if !ok {
		return false, nil
	}
	res, err := m.flights.do(ctx, engineID, "sleep", func(ctx context.Context) (Result, error) {
		out, err := m.claim(ctx, engineID, claimSpec{
			op:    bap.OpSleep,
			lease: lease,
			pre: func(_ context.Context, _ registry.Store, cur bap.Engine) error {
				if cur.Status != bap.StateRunning || activeAfter(cur, idleSince) {
					return errDone
				}
				return nil
			},
		})
		if errors.Is(err, registry.ErrFenced) || errors.Is(err, errSkip) {
			return Result{}, nil
		}
		if err != nil || out.claim == nil {
			return Result{}, err
		}
		return m.underClaim(ctx, out.claim, func(ctx context.Context) (Result, error) {
			if err := m.sleepInstance(ctx, engineID); err != nil {
				return Result{}, opErr(err, m.cfg.BootTimeout)
			}
			if err := m.commitSleeping(ctx, out.claim, nil); err != nil {
				return Result{}, err
			}
			return Result{outcome: "slept"}, nil
		})
	})
	return res.outcome == "slept", err
}

// sleepInstance does to the instance what the sleep mode asks.
func (m *Manager) sleepInstance(ctx context.Context, engineID string) error {
	switch m.cfg.SleepMode {
	case SleepPause:
		return m.backend.Pause(ctx, engineID)
	case SleepStop:
		return m.stopInstance(ctx, engineID)
	}
	return nil
}

// commitSleeping records the engine of c asleep and ends the claim.
func (m *Manager) commitSleeping(ctx context.Context, c *opClaim, extra map[string]any) error {
	return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateRunning {
			return nil, nil
		}
		cur.Status = bap.StateSleeping
		meta := map[string]any{"mode": m.cfg.SleepMode}
		for k, v := range extra {
			meta[k] = v
		}
		return &audit.Entry{Action: audit.Sleep, Actor: audit.ActorSystem, Metadata: meta}, nil
	})
}

func activeAfter(e bap.Engine, idleSince time.Time) bool {
	return !idleSince.IsZero() && e.LastActiveAt != nil && e.LastActiveAt.After(idleSince)
}
