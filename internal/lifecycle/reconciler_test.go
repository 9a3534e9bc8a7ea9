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
	"github.com/september/bap-engine/internal/registry"
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
		Every:       time.Second, // a pass may take its whole period: not too short for a loaded race build
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

// TestProvisionsBeyondTheLimitWaitThenAreRefusedWhole: with one provision
// slot, a second provision waits for the first; one that waits longer than
// the queue allows is refused with RATE_LIMITED and a Retry-After, having
// created nothing.
func TestProvisionsBeyondTheLimitWaitThenAreRefusedWhole(t *testing.T) {
	fake := backendtest.NewFake()
	t.Cleanup(fake.Close)
	fake.SetBootDelay(300 * time.Millisecond)
	en := newEnv(t, fake, envOptions{})
	lm := en.manager(func(c *lifecycle.Config) {
		c.MaxConcurrentProvisions = 1
		c.ProvisionQueueWait = 5 * time.Second
	})
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := lm.Provision(ctx, en.product, "first", "", "test")
		first <- err
	}()
	require.Eventually(t, func() bool {
		_, err := en.store.GetEngineByUser(ctx, en.product.ID, "first")
		return err == nil
	}, 5*time.Second, time.Millisecond)
	began := time.Now()
	_, err := lm.Provision(ctx, en.product, "second", "", "test")
	require.NoError(t, err, "the second waits its turn")
	require.NoError(t, <-first)
	require.Greater(t, time.Since(began), 100*time.Millisecond, "it waited for the first")

	impatient := en.manager(func(c *lifecycle.Config) {
		c.MaxConcurrentProvisions = 1
		c.ProvisionQueueWait = 50 * time.Millisecond
	})
	go func() { _, _ = impatient.Provision(ctx, en.product, "third", "", "test") }()
	require.Eventually(t, func() bool {
		_, err := en.store.GetEngineByUser(ctx, en.product.ID, "third")
		return err == nil
	}, 5*time.Second, time.Millisecond)
	_, err = impatient.Provision(ctx, en.product, "fourth", "", "test")
	require.Equal(t, bap.CodeRateLimited, errCode(err))
	e, _ := bap.AsError(err)
	require.GreaterOrEqual(t, e.RetryAfter, time.Second)
	_, err = en.store.GetEngineByUser(ctx, en.product.ID, "fourth")
	require.ErrorIs(t, err, registry.ErrNotFound, "nothing of the refused provision exists")
	_, n, err := en.store.ListAudit(ctx, registry.AuditFilter{ProductID: en.product.ID, UserID: "fourth"})
	require.NoError(t, err)
	require.Zero(t, n, "nor any audit row")
	require.NoError(t, impatient.Close(ctx))
}
