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

// Start brings a stopped, sleeping or failed engine to running (SPEC §5):
// the instance is recreated on the same data and port if it is gone.
// Errors: ENGINE_NOT_FOUND, ENGINE_ALREADY_RUNNING, ENGINE_BUSY,
// QUOTA_EXCEEDED, BOOT_TIMEOUT, BACKEND_UNAVAILABLE, BACKEND_ERROR,
// DATABASE_UNAVAILABLE.
func (m *Manager) Start(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "start", func(ctx context.Context) (Result, error) {
		return m.bringUp(ctx, engineID, actor, bap.OpStart)
	})
}

// Wake brings a sleeping (or stopped) engine back to running and is the
// idempotent form of Start used by admit: a running engine is success, and a
// wake that meets a sleep in flight waits for it and undoes it. Errors: as
// Start, without ENGINE_ALREADY_RUNNING.
func (m *Manager) Wake(ctx context.Context, engineID, actor string) (Result, error) {
	return m.flights.do(ctx, engineID, "wake", func(ctx context.Context) (Result, error) {
		return m.bringUp(ctx, engineID, actor, bap.OpWake)
	})
}

func (m *Manager) bringUp(ctx context.Context, engineID, actor string, op bap.Op) (res Result, err error) {
	began := time.Now()
	action := audit.Start
	if op == bap.OpWake {
		action = audit.Wake
	}
	var productID string
	defer m.observe(&productID, string(action), began, &err)
	spec := claimSpec{
		op:   op,
		hard: hardBusy,
		pre: func(ctx context.Context, tx registry.Store, cur bap.Engine) error {
			productID = cur.ProductID
			switch cur.Status {
			case bap.StateRunning:
				if op == bap.OpWake {
					return errDone
				}
				return bap.Errorf(bap.CodeEngineAlreadyRunning, "Engine is already running.")
			case bap.StateStopped:
				return m.checkMaxRunning(ctx, tx, cur.ProductID)
			case bap.StateFailed:
				if cur.NextRestartAt == nil {
					// It gave up its running slot; a restart pending keeps it.
					return m.checkMaxRunning(ctx, tx, cur.ProductID)
				}
			}
			return nil
		},
	}
	// A start on another replica that brought the engine up is this
	// caller's start too.
	join := func(_, after bap.Engine, gone bool) (Result, bool, error) {
		switch {
		case gone:
			return Result{}, true, bap.Errorf(bap.CodeEngineNotFound, "Engine not found.")
		case after.Status == bap.StateRunning:
			return Result{Engine: after}, true, nil
		case after.Status == bap.StateFailed && after.FailureReason != "":
			return Result{}, true, failureErr(after.FailureReason, m.cfg.BootTimeout)
		}
		return Result{}, false, nil
	}
	return m.runOp(ctx, engineID, spec, join, func(ctx context.Context, c *opClaim, e bap.Engine) (Result, error) {
		productID = e.ProductID
		inst, boot, err := m.ensureRunning(ctx, e)
		if err != nil {
			return Result{}, m.failBringUp(ctx, c, e, action, actor, err)
		}
		if err := m.commitRunning(ctx, c, e.Status, inst, boot, action, actor, nil); err != nil {
			return Result{}, err
		}
		e, err = m.load(ctx, engineID)
		return Result{Engine: e}, err
	})
}

// commitRunning records that the engine of c runs again after an action
// (start, wake, auto-restart, a takeover), resetting its failure counters,
// and ends the claim.
func (m *Manager) commitRunning(ctx context.Context, c *opClaim, from bap.State, inst backend.Instance,
	boot time.Duration, action audit.Action, actor string, extra map[string]any) error {
	return m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, bap.Errorf(bap.CodeEngineBusy, "Engine is %s.", cur.Status)
		}
		cur.Status = bap.StateRunning
		if inst.ID != "" {
			cur.InstanceID = inst.ID
		}
		cur.URL = m.addr(*cur)
		cur.HealthFailures = 0
		cur.RestartAttempts = 0
		cur.NextRestartAt = nil
		cur.FailureReason = ""
		cur.LastActiveAt = ptr(bap.Now())
		meta := map[string]any{"from": string(from)}
		for k, v := range extra {
			meta[k] = v
		}
		return &audit.Entry{Action: action, Actor: actor, DurationMS: ptr(boot.Milliseconds()), Metadata: meta}, nil
	})
}

// failBringUp records a failed start/wake. An unreachable backend leaves the
// state alone; anything else makes the engine failed with the reason. The
// claim ends either way.
func (m *Manager) failBringUp(ctx context.Context, c *opClaim, e bap.Engine, action audit.Action, actor string, cause error) error {
	if errors.Is(cause, backend.ErrUnavailable) || errors.Is(cause, registry.ErrUnavailable) || errors.Is(cause, errFenced) {
		// Not the engine's fault, or no longer this replica's to record.
		return opErr(cause, m.cfg.BootTimeout)
	}
	reason := failureReason(cause)
	m.log.WarnContext(ctx, string(action)+" failed", "engine_id", e.ID, "reason", reason)
	err := m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status == bap.StateDestroying || cur.Status == bap.StateProvisioning {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		return &audit.Entry{
			Action:   audit.StartFailed,
			Actor:    actor,
			Metadata: map[string]any{"reason": reason, "op": string(action)},
		}, nil
	})
	if err != nil {
		m.log.ErrorContext(ctx, "record failed start", "engine_id", e.ID, "err", err)
	}
	return opErr(cause, m.cfg.BootTimeout)
}

// addr is the engine's address: the one the backend gives now, or, when it
// knows none (a Pod that is not there), the one recorded. For docker and
// subprocess both are the port's; a Kubernetes engine moves to its new
// Pod's IP each time its Pod is made again, and the commit that follows
// records it.
func (m *Manager) addr(e bap.Engine) string {
	if u := m.backend.URL(e.ID, e.Port); u != "" {
		return u
	}
	return e.URL
}

// ensureRunning makes the engine's instance run and answer /health: it is
// unpaused, started, or recreated on the same data when gone.
func (m *Manager) ensureRunning(ctx context.Context, e bap.Engine) (backend.Instance, time.Duration, error) {
	began := time.Now()
	inst, err := m.backend.Inspect(ctx, e.ID)
	recreate := func() (backend.Instance, error) {
		spec, err := m.specOf(ctx, e)
		if err != nil {
			return backend.Instance{}, err
		}
		return m.createAndStart(ctx, spec)
	}
	switch {
	case errors.Is(err, backend.ErrNotFound):
		inst, err = recreate()
	case err != nil:
	case inst.Status == backend.StatusPaused:
		err = m.backend.Unpause(ctx, e.ID)
	case inst.Status != backend.StatusRunning:
		err = m.backend.Start(ctx, e.ID)
		if errors.Is(err, backend.ErrNotFound) {
			inst, err = recreate()
		}
	}
	if err != nil {
		return backend.Instance{}, 0, err
	}
	if err := m.waitHealthy(ctx, m.addr(e), m.cfg.BootTimeout); err != nil {
		return backend.Instance{}, 0, err
	}
	if inst.ID == "" {
		if fresh, err := m.backend.Inspect(ctx, e.ID); err == nil {
			inst = fresh
		}
	}
	d := time.Since(began)
	m.obs.Boot(e.ProductID, d)
	return inst, d, nil
}
