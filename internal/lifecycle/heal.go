package lifecycle

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

// MarkFailed moves a running (or sleeping) engine to failed because the
// health loop, a crash event or reconciliation says it is down: it records
// action (health_failed, engine_died, reconcile_failed) with reason and
// schedules the first restart attempt after the restart policy's first
// delay. still, when set, must hold for the row as locked (the evidence is
// still about this engine as it is now: no transition overtook it). It runs
// only on the replica that holds the engine's shard, fenced by its lease,
// and reports false when it did nothing: the shard is not this replica's,
// the engine was not in a state that can fail this way, still did not hold,
// or an operation holds it (and decides its fate).
func (m *Manager) MarkFailed(ctx context.Context, engineID string, action audit.Action, reason string,
	still func(cur bap.Engine) bool) (bool, error) {
	lease, ok := m.rep.Lease(engineID)
	if !ok {
		return false, nil
	}
	var marked bool
	err := m.commitLeased(ctx, engineID, lease, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateRunning && cur.Status != bap.StateSleeping {
			return nil, nil
		}
		if still != nil && !still(*cur) {
			return nil, nil
		}
		cur.Status = bap.StateFailed
		cur.FailureReason = reason
		cur.RestartAttempts = 0
		cur.NextRestartAt = ptr(bap.Timestamp(time.Now().Add(m.cfg.Restart.Delay(0))))
		marked = true
		return &audit.Entry{Action: action, Actor: audit.ActorSystem,
			Metadata: map[string]any{"reason": reason, "health_failures": cur.HealthFailures}}, nil
	})
	switch {
	case errors.Is(err, errSkip), errors.Is(err, registry.ErrFenced):
		return false, nil
	case err != nil:
		return false, err
	}
	return marked, nil
}

// RestartOutcome says what one auto-restart attempt did.
type RestartOutcome string

// Restart outcomes.
const (
	RestartSucceeded RestartOutcome = "succeeded"
	RestartFailed    RestartOutcome = "failed"   // attempt failed, next one scheduled
	RestartGaveUp    RestartOutcome = "gave_up"  // attempts exhausted: stays failed
	RestartSkipped   RestartOutcome = "skipped"  // not failed, not due, not this replica's, or busy
	RestartDeferred  RestartOutcome = "deferred" // backend unreachable: retried later, not counted
)

// AutoRestart makes one auto-restart attempt of a failed engine (SPEC §8),
// on the replica that holds its shard: audit auto_restart_start, stop then
// start (recreate if gone), wait healthy while the engine stays failed;
// success → running with counters reset and auto_restart_success; failure →
// auto_restart_failed and the next attempt scheduled by the restart policy
// — or auto_restart_gave_up when its attempts are used. An unreachable
// backend defers the attempt without counting it. The attempt is an
// operation claimed on the engine's row, so two replicas never restart one
// engine.
func (m *Manager) AutoRestart(ctx context.Context, engineID string) (RestartOutcome, error) {
	lease, ok := m.rep.Lease(engineID)
	if !ok {
		return RestartSkipped, nil
	}
	res, err := m.flights.do(ctx, engineID, "auto-restart", func(ctx context.Context) (Result, error) {
		out, err := m.autoRestart(ctx, engineID, lease)
		return Result{outcome: string(out)}, err
	})
	if res.outcome == "" {
		return RestartSkipped, err
	}
	return RestartOutcome(res.outcome), err
}

func (m *Manager) autoRestart(ctx context.Context, engineID string, lease registry.Lease) (RestartOutcome, error) {
	maxAttempts := m.cfg.Restart.MaxAttempts
	var gaveUp bool
	out, err := m.claim(ctx, engineID, claimSpec{
		op:    bap.OpAutoRestart,
		lease: lease,
		pre: func(_ context.Context, _ registry.Store, cur bap.Engine) error {
			if cur.Status != bap.StateFailed || cur.NextRestartAt == nil {
				return errDone
			}
			gaveUp = cur.RestartAttempts >= maxAttempts
			return nil
		},
	})
	switch {
	case errors.Is(err, registry.ErrFenced), errors.Is(err, errSkip):
		return RestartSkipped, nil
	case err != nil:
		return RestartSkipped, err
	case out.claim == nil:
		return RestartSkipped, nil
	}
	var outcome RestartOutcome
	_, err = m.underClaim(ctx, out.claim, func(ctx context.Context) (Result, error) {
		var err error
		if gaveUp {
			outcome, err = m.giveUp(ctx, out.claim, out.cur.RestartAttempts)
		} else {
			outcome, err = m.restartAttempt(ctx, out.claim, out.cur)
		}
		return Result{}, err
	})
	return outcome, err
}

// restartAttempt is one attempt on the engine of c (claimed, failed).
func (m *Manager) restartAttempt(ctx context.Context, c *opClaim, e bap.Engine) (RestartOutcome, error) {
	maxAttempts := m.cfg.Restart.MaxAttempts
	attempt := e.RestartAttempts
	err := m.commitOp(ctx, c, false, func(cur *bap.Engine) (*audit.Entry, error) {
		return &audit.Entry{Action: audit.AutoRestartStart, Actor: audit.ActorSystem,
			Metadata: map[string]any{"attempt": attempt + 1, "reason": cur.FailureReason}}, nil
	})
	if err != nil {
		return RestartSkipped, err
	}
	began := time.Now()
	err = m.stopInstance(ctx, e.ID)
	var inst backend.Instance
	if err == nil {
		inst, _, err = m.ensureRunning(ctx, e)
	}
	if errors.Is(err, errFenced) {
		return RestartSkipped, nil // taken over by another replica
	}
	if errors.Is(err, backend.ErrUnavailable) {
		m.log.WarnContext(ctx, "auto-restart deferred: backend unavailable", "engine_id", e.ID, "err", err)
		return RestartDeferred, nil
	}
	if err == nil {
		err = m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status != bap.StateFailed {
				return nil, errSkip
			}
			cur.Status = bap.StateRunning
			cur.InstanceID = inst.ID
			cur.HealthFailures = 0
			cur.RestartAttempts = 0
			cur.NextRestartAt = nil
			cur.FailureReason = ""
			return &audit.Entry{Action: audit.AutoRestartSuccess, Actor: audit.ActorSystem,
				DurationMS: ptr(time.Since(began).Milliseconds()),
				Metadata:   map[string]any{"attempt": attempt + 1}}, nil
		})
		if errors.Is(err, errSkip) {
			return RestartSkipped, nil
		}
		if err != nil {
			return RestartSkipped, err
		}
		return RestartSucceeded, nil
	}
	reason := failureReason(err)
	next := attempt + 1
	outcome := RestartFailed
	err = m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateFailed {
			return nil, errSkip
		}
		cur.RestartAttempts = next
		cur.FailureReason = reason
		if next >= maxAttempts {
			cur.NextRestartAt = nil
			outcome = RestartGaveUp
		} else {
			cur.NextRestartAt = ptr(bap.Timestamp(time.Now().Add(m.cfg.Restart.Delay(next))))
		}
		return &audit.Entry{Action: audit.AutoRestartFailed, Actor: audit.ActorSystem,
			DurationMS: ptr(time.Since(began).Milliseconds()),
			Metadata:   map[string]any{"attempt": next, "reason": reason}}, nil
	})
	if errors.Is(err, errSkip) {
		return RestartSkipped, nil
	}
	if err != nil {
		return RestartSkipped, err
	}
	if outcome == RestartGaveUp {
		if err := m.store.AppendAudit(ctx, audit.Entry{ProductID: e.ProductID, UserID: e.UserID, EngineID: e.ID,
			Action: audit.AutoRestartGaveUp, Actor: audit.ActorSystem,
			Metadata: map[string]any{"attempts": next, "reason": reason}}); err != nil {
			return outcome, storeErr("audit give-up", err)
		}
	}
	return outcome, nil
}

// giveUp records that no attempt is left for an engine that still had a
// restart scheduled (e.g. the maximum was lowered).
func (m *Manager) giveUp(ctx context.Context, c *opClaim, attempts int) (RestartOutcome, error) {
	err := m.commitOp(ctx, c, true, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateFailed || cur.NextRestartAt == nil {
			return nil, errSkip
		}
		cur.NextRestartAt = nil
		return &audit.Entry{Action: audit.AutoRestartGaveUp, Actor: audit.ActorSystem,
			Metadata: map[string]any{"attempts": attempts, "reason": cur.FailureReason}}, nil
	})
	if errors.Is(err, errSkip) {
		return RestartSkipped, nil
	}
	return RestartGaveUp, err
}

// WatchCrashes consumes the backend's events until ctx ends: an engine of
// this replica's shards whose instance stopped on its own is marked failed
// (engine_died) with its first restart due after the policy's first delay,
// so it is on the restart path within a second of its death — unless a
// transition since the death (a restart) made the event about an instance
// that is no more. Every replica may hear of a death; only the shard's
// holder acts.
func (m *Manager) WatchCrashes(ctx context.Context, onCrash func(engineID string)) {
	for ev := range m.backend.Events(ctx) {
		at := bap.Timestamp(ev.At)
		notSince := func(cur bap.Engine) bool { return ev.At.IsZero() || !cur.UpdatedAt.After(at) }
		marked, err := m.MarkFailed(ctx, ev.EngineID, audit.EngineDied, "engine exited with code "+strconv.Itoa(ev.ExitCode), notSince)
		if err != nil {
			m.log.WarnContext(ctx, "record engine death", "engine_id", ev.EngineID, "err", err)
			continue
		}
		if marked {
			m.log.WarnContext(ctx, "engine died", "engine_id", ev.EngineID, "exit_code", ev.ExitCode)
			if onCrash != nil {
				onCrash(ev.EngineID)
			}
		}
	}
}
