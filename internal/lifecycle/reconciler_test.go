package lifecycle_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
)

// TestReconcilerRepairsOnItsSchedule runs the Reconciler loop: its quick
// pass takes over an operation whose replica is dead within its period,
// and its full pass fails a running engine whose instance vanished.
func TestReconcilerRepairsOnItsSchedule(t *testing.T) {
	fake := backendtest.NewFake()
	t.Cleanup(fake.Close)
	en := newEnv(t, fake, envOptions{restart: lifecycle.RestartPolicy{BackoffBase: time.Hour}})
	ctx := context.Background()
	lost, err := en.lm.Provision(ctx, en.product, "lost", "", "test")
	require.NoError(t, err)
	stopping, err := en.lm.Provision(ctx, en.product, "stopping", "", "test")
	require.NoError(t, err)

	// A stop claimed by a replica that no longer exists, and an instance
	// that vanished behind the orchestrator's back.
	e, err := en.store.GetEngine(ctx, stopping.Engine.ID)
	require.NoError(t, err)
	e.Claim = bap.Claim{Op: bap.OpStop, Owner: uuid.NewString(), Epoch: e.Claim.Epoch + 1, StartedAt: &e.UpdatedAt}
	require.NoError(t, en.store.UpdateEngine(ctx, e))
	require.NoError(t, fake.Destroy(ctx, lost.Engine.ID))

	var mu sync.Mutex
	var passes []lifecycle.ReconcileStats
	r := lifecycle.NewReconciler(en.lm, lifecycle.ReconcilerConfig{
		Every:       200 * time.Millisecond,
		RepairEvery: 20 * time.Millisecond,
		OnPass: func(st lifecycle.ReconcileStats, err error) {
			require.NoError(t, err)
			mu.Lock()
			passes = append(passes, st)
			mu.Unlock()
		},
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- r.Run(runCtx) }()
	require.Eventually(t, func() bool {
		s, err := en.store.GetEngine(ctx, stopping.Engine.ID)
		require.NoError(t, err)
		l, err := en.store.GetEngine(ctx, lost.Engine.ID)
		require.NoError(t, err)
		return s.Status == bap.StateStopped && !s.Claim.Held() && l.Status == bap.StateFailed
	}, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(passes) >= 2
	}, 10*time.Second, 10*time.Millisecond, "the full pass repeats")
	cancel()
	require.NoError(t, <-done)
	require.NoError(t, en.lm.Close(ctx))

	mu.Lock()
	lostSeen := 0
	for _, st := range passes {
		lostSeen += st.RunningLost
	}
	mu.Unlock()
	require.Equal(t, 1, lostSeen, "the vanished engine is failed once")
	require.Equal(t, []audit.Action{audit.Provision, audit.Stop}, auditActions(t, en.store, stopping.Engine.ID))
	require.Equal(t, []audit.Action{audit.Provision, audit.ReconcileFailed}, auditActions(t, en.store, lost.Engine.ID))
}
