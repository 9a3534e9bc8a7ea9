package lifecycle

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
)

// MarkFailed moves a running (or sleeping) engine to failed because the
// health loop or a crash event says it is down: it records action
// (health_failed or engine_died) with reason and schedules the first
// restart attempt at nextRestart. It reports false when the engine was not
// in a state that can fail this way (already failed, stopped, gone, or an
// operation on it is in flight, which then decides its fate).
func (m *Manager) MarkFailed(ctx context.Context, engineID string, action audit.Action, reason string, nextRestart time.Time) (bool, error) {
	res, err := m.flights.do(ctx, engineID, "mark-failed", func(ctx context.Context) (Result, error) {
		var marked bool
		err := m.commit(ctx, engineID, func(cur *bap.Engine) (*audit.Entry, error) {
			if cur.Status != bap.StateRunning && cur.Status != bap.StateSleeping {
				return nil, nil
			}
			cur.Status = bap.StateFailed
			cur.FailureReason = reason
			cur.RestartAttempts = 0
			cur.NextRestartAt = ptr(bap.Timestamp(nextRestart))
			marked = true
			return &audit.Entry{Action: action, Actor: audit.ActorSystem,
				Metadata: map[string]any{"reason": reason, "health_failures": cur.HealthFailures}}, nil
		})
		if marked {
			return Result{outcome: "marked"}, err
		}
		return Result{}, err
	})
	return res.outcome == "marked", err
}

// RestartOutcome says what one auto-restart attempt did.
type RestartOutcome string

// Restart outcomes.
const (
	RestartSucceeded RestartOutcome = "succeeded"
	RestartFailed    RestartOutcome = "failed"   // attempt failed, next one scheduled
	RestartGaveUp    RestartOutcome = "gave_up"  // attempts exhausted: stays failed
	RestartSkipped   RestartOutcome = "skipped"  // not failed / not due any more
	RestartDeferred  RestartOutcome = "deferred" // backend unreachable: retried later, not counted
	restartBusy      RestartOutcome = "busy"     // another operation owns the engine
)

// AutoRestart makes one auto-restart attempt of a failed engine (SPEC §8):
// audit auto_restart_start, stop then start (recreate if gone), wait healthy
// while the engine stays failed; success → running with counters reset and
// auto_restart_success; failure → auto_restart_failed and the next attempt
// scheduled after backoff(attempts) — or auto_restart_gave_up when
// maxAttempts are used. An unreachable backend defers the attempt without
// counting it.
func (m *Manager) AutoRestart(ctx context.Context, engineID string, maxAttempts int, backoff func(n int) time.Duration) (RestartOutcome, error) {
	res, err := m.flights.do(ctx, engineID, "auto-restart", func(ctx context.Context) (Result, error) {
		out, err := m.autoRestart(ctx, engineID, maxAttempts, backoff)
		return Result{outcome: string(out)}, err
	})
	if res.outcome == "" {
		return restartBusy, err
	}
	return RestartOutcome(res.outcome), err
}

func (m *Manager) autoRestart(ctx context.Context, engineID string, maxAttempts int, backoff func(n int) time.Duration) (RestartOutcome, error) {
	e, err := m.load(ctx, engineID)
	if err != nil {
		return RestartSkipped, err
	}
	if e.Status != bap.StateFailed || e.NextRestartAt == nil {
		return RestartSkipped, nil
	}
	attempt := e.RestartAttempts
	if attempt >= maxAttempts {
		return m.giveUp(ctx, e, attempt)
	}
	err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateFailed {
			return nil, errSkip
		}
		return &audit.Entry{Action: audit.AutoRestartStart, Actor: audit.ActorSystem,
			Metadata: map[string]any{"attempt": attempt + 1, "reason": cur.FailureReason}}, nil
	})
	if errors.Is(err, errSkip) {
		return RestartSkipped, nil
	}
	if err != nil {
		return RestartSkipped, err
	}
	began := time.Now()
	err = m.stopInstance(ctx, e.ID)
	var inst backend.Instance
	if err == nil {
		inst, _, err = m.ensureRunning(ctx, e)
	}
	if errors.Is(err, backend.ErrUnavailable) {
		m.log.Warn("auto-restart deferred: backend unavailable", "engine_id", e.ID, "err", err)
		return RestartDeferred, nil
	}
	if err == nil {
		err = m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
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
	out := RestartFailed
	cerr := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
		if cur.Status != bap.StateFailed {
			return nil, errSkip
		}
		cur.RestartAttempts = next
		cur.FailureReason = reason
		if next >= maxAttempts {
			cur.NextRestartAt = nil
			out = RestartGaveUp
		} else {
			cur.NextRestartAt = ptr(bap.Timestamp(time.Now().Add(backoff(next))))
		}
		return &audit.Entry{Action: audit.AutoRestartFailed, Actor: audit.ActorSystem,
			DurationMS: ptr(time.Since(began).Milliseconds()),
			Metadata:   map[string]any{"attempt": next, "reason": reason}}, nil
	})
	if errors.Is(cerr, errSkip) {
		return RestartSkipped, nil
	}
	if cerr != nil {
		return RestartSkipped, cerr
	}
	if out == RestartGaveUp {
		if err := m.store.AppendAudit(ctx, audit.Entry{ProductID: e.ProductID, UserID: e.UserID, EngineID: e.ID,
			Action: audit.AutoRestartGaveUp, Actor: audit.ActorSystem,
			Metadata: map[string]any{"attempts": next, "reason": reason}}); err != nil {
			return out, storeErr("audit give-up", err)
		}
	}
	return out, nil
}

// giveUp records that no attempt is left for an engine that still had a
// restart scheduled (e.g. the maximum was lowered).
func (m *Manager) giveUp(ctx context.Context, e bap.Engine, attempts int) (RestartOutcome, error) {
	err := m.commit(ctx, e.ID, func(cur *bap.Engine) (*audit.Entry, error) {
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

// errSkip aborts a commit whose engine changed state meanwhile.
var errSkip = errors.New("engine changed state")

// WatchCrashes consumes the backend's events until ctx ends: an engine whose
// instance stopped on its own is marked failed (engine_died) with its first
// restart due after backoff(0), so it is on the restart path within a second
// of its death.
func (m *Manager) WatchCrashes(ctx context.Context, backoff func(n int) time.Duration, onCrash func(engineID string)) {
	for ev := range m.backend.Events(ctx) {
		marked, err := m.MarkFailed(ctx, ev.EngineID, audit.EngineDied,
			"engine exited with code "+strconv.Itoa(ev.ExitCode), time.Now().Add(backoff(0)))
		if err != nil {
			m.log.Warn("record engine death", "engine_id", ev.EngineID, "err", err)
			continue
		}
		if marked {
			m.log.Warn("engine died", "engine_id", ev.EngineID, "exit_code", ev.ExitCode)
			if onCrash != nil {
				onCrash(ev.EngineID)
			}
		}
	}
}
