package health_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/health"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/registry"
)

// sweeper runs an IdleSweeper for a test and hands out its passes.
type sweeper struct {
	passes chan health.IdleStats
	tick   chan time.Time
	first  bool
}

func startSweeper(t *testing.T, store registry.Store, lm *lifecycle.Manager, cfg health.IdleConfig) *sweeper {
	t.Helper()
	s := &sweeper{passes: make(chan health.IdleStats, 100), tick: make(chan time.Time), first: true}
	cfg.Tick = s.tick
	cfg.Logger = cmpLogger(cfg.Logger)
	cfg.OnPass = func(st health.IdleStats) { s.passes <- st }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sw := health.NewIdleSweeper(store, lm, cfg)
	go func() { done <- sw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return s
}

// sweep returns the next pass: the initial one first, then one per tick.
func (s *sweeper) sweep(t *testing.T) health.IdleStats {
	t.Helper()
	if !s.first {
		select {
		case s.tick <- time.Now():
		case <-time.After(waitBound):
			t.Fatal("sweeper did not take the tick")
		}
	}
	s.first = false
	select {
	case st := <-s.passes:
		return st
	case <-time.After(waitBound):
		t.Fatal("no idle pass reported")
	}
	return health.IdleStats{}
}

// TestIdleSweep puts idle engines to sleep in each sleep mode and leaves
// recently active ones running: mark changes the status only, pause freezes
// the instance, stop stops it; a paused or stopped sleeper is then not
// probed, a marked one is.
func TestIdleSweep(t *testing.T) {
	t.Parallel()
	want := map[string]backend.Status{
		lifecycle.SleepMark:  backend.StatusRunning,
		lifecycle.SleepPause: backend.StatusPaused,
		lifecycle.SleepStop:  backend.StatusExited,
	}
	for mode, instStatus := range want {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOptions{sleepMode: mode})
			idle, _ := e.provision(t, "idle")
			busy, _ := e.provision(t, "busy")
			never, _ := e.provision(t, "never-admitted")

			// The sweeper's clock is two hours ahead; busy was admitted "just
			// now" on that clock, never has no last_active_at at all (its
			// creation counts).
			ahead := time.Now().Add(2 * time.Hour)
			now := func() time.Time { return ahead }
			ctx := context.Background()
			require.NoError(t, e.store.TouchActive(ctx, []string{busy.ID}, bap.Timestamp(ahead.Add(-time.Minute))))
			got := e.engine(t, never.ID)
			got.LastActiveAt = nil
			require.NoError(t, e.store.UpdateEngine(ctx, got))

			s := startSweeper(t, e.store, e.lm, health.IdleConfig{IdleTimeout: time.Hour, Now: now})
			st := s.sweep(t)
			require.Equal(t, 3, st.Running)
			require.Equal(t, 2, st.Idle)
			require.Equal(t, 2, st.Slept)
			require.Zero(t, st.Kept)
			require.Zero(t, st.Errors)

			for _, id := range []string{idle.ID, never.ID} {
				require.Equal(t, bap.StateSleeping, e.engine(t, id).Status)
				inst, err := e.be.Inspect(ctx, id)
				require.NoError(t, err)
				require.Equal(t, instStatus, inst.Status)
				actions := e.actions(t, id)
				require.Equal(t, audit.Sleep, actions[len(actions)-1])
			}
			require.Equal(t, bap.StateRunning, e.engine(t, busy.ID).Status)

			// Nothing is left to do on the next pass.
			st = s.sweep(t)
			require.Equal(t, 1, st.Running)
			require.Zero(t, st.Idle)

			c := startChecker(t, e, fastConfig(), true, false)
			cst := c.sweep(t)
			require.Zero(t, cst.Failed)
			if mode == lifecycle.SleepMark {
				require.Equal(t, 3, cst.Probed, "mark-mode sleepers keep running and are probed")
			} else {
				require.Equal(t, 1, cst.Probed, "only the running engine is probed")
			}

			// Waking brings the sleeper back to a running instance.
			res, err := e.lm.Wake(ctx, idle.ID, "test")
			require.NoError(t, err)
			require.Equal(t, bap.StateRunning, res.Engine.Status)
			inst, err := e.be.Inspect(ctx, idle.ID)
			require.NoError(t, err)
			require.Equal(t, backend.StatusRunning, inst.Status)
		})
	}
}

// raceStore lets an admit land between the sweep's read of the running
// engines and its sleep call, as a real admit can.
type raceStore struct {
	registry.Store
	admit func()
}

func (r *raceStore) EnginesByStatus(ctx context.Context, states ...bap.State) ([]bap.Engine, error) {
	engines, err := r.Store.EnginesByStatus(ctx, states...)
	if err == nil && r.admit != nil {
		r.admit()
	}
	return engines, err
}

// eachSleepMode runs fn as a parallel subtest per sleep mode, on an env
// that puts engines to sleep in that mode.
func eachSleepMode(t *testing.T, fn func(t *testing.T, mode string, e *env)) {
	t.Helper()
	for _, mode := range []string{lifecycle.SleepMark, lifecycle.SleepPause, lifecycle.SleepStop} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			fn(t, mode, newEnv(t, envOptions{sleepMode: mode}))
		})
	}
}

// TestIdleSweepLosesToAdmit: an engine admitted after the sweep decided it
// was idle is not put to sleep.
func TestIdleSweepLosesToAdmit(t *testing.T) {
	t.Parallel()
	eachSleepMode(t, func(t *testing.T, mode string, e *env) {
		en, key := e.provision(t, "racer")
		ahead := time.Now().Add(2 * time.Hour)
		ctx := context.Background()
		rs := &raceStore{Store: e.store, admit: func() {
			// Runs on the sweeper's goroutine: report, do not FailNow.
			if err := e.store.TouchActive(ctx, []string{en.ID}, bap.Timestamp(ahead)); err != nil {
				t.Error(err)
			}
		}}
		s := startSweeper(t, rs, e.lm, health.IdleConfig{IdleTimeout: time.Hour,
			Now: func() time.Time { return ahead }})
		st := s.sweep(t)
		require.Equal(t, 1, st.Idle, "the sweep saw the engine idle")
		require.Zero(t, st.Slept)
		require.Equal(t, 1, st.Kept, "the admit won")
		got := e.engine(t, en.ID)
		require.Equal(t, bap.StateRunning, got.Status)
		require.NotContains(t, e.actions(t, en.ID), audit.Sleep)
		require.Equal(t, 1, execute(t, got, key), "the engine still serves")
	})
}

// TestIdleSweepDisabled: IdleTimeout 0 turns the sweeper off.
func TestIdleSweepDisabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	sw := health.NewIdleSweeper(e.store, e.lm, health.IdleConfig{})
	require.NoError(t, sw.Run(context.Background()))
	require.Panics(t, func() { health.NewIdleSweeper(e.store, e.lm, health.IdleConfig{IdleTimeout: -time.Second}) })
}
