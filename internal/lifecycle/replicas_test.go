package lifecycle_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/backend"
	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/lifecycle"
	"github.com/september/bap-engine/internal/replica"
)

// twoReplicas is one store and one backend shared by two Managers, each
// acting as its own registered replica (on hosts of their own), as two
// orchestrator processes would.
func twoReplicas(t *testing.T) (en *env, fake *backendtest.Fake, a, b *lifecycle.Manager) {
	t.Helper()
	fake = backendtest.NewFake()
	t.Cleanup(fake.Close)
	en = newEnv(t, fake, envOptions{wrap: func(be backend.Backend) backend.Backend {
		return slowStops{Backend: be, delay: 200 * time.Millisecond}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	mk := func(host string) *lifecycle.Manager {
		rep := replica.New(en.store, replica.Config{TTL: 5 * time.Second, Tick: 50 * time.Millisecond, Host: host})
		require.NoError(t, rep.Start(ctx))
		wg.Go(func() { _ = rep.Run(ctx) })
		return en.manager(func(c *lifecycle.Config) { c.Replica = rep })
	}
	return en, fake, mk("host-a"), mk("host-b")
}

// TestCallsOnTwoReplicasJoinOneOperation: a start, a stop and a rotation
// called through two replicas at once run one backend operation each, and
// both callers get its outcome; the key the database holds is the one the
// engine accepts.
func TestCallsOnTwoReplicasJoinOneOperation(t *testing.T) {
	en, fake, a, b := twoReplicas(t)
	ctx := context.Background()
	fake.SetBootDelay(200 * time.Millisecond) // operations overlap
	res, err := a.Provision(ctx, en.product, "alice", "", "test")
	require.NoError(t, err)
	id := res.Engine.ID

	// both calls op through A and, once A's operation holds the engine,
	// through B.
	both := func(op bap.Op, call func(m *lifecycle.Manager) (lifecycle.Result, error)) []lifecycle.Result {
		t.Helper()
		out := make([]lifecycle.Result, 2)
		var errA error
		done := make(chan struct{})
		go func() {
			defer close(done)
			out[0], errA = call(a)
		}()
		require.Eventually(t, func() bool {
			e, err := en.store.GetEngine(ctx, id)
			return err == nil && e.Claim.Op == op
		}, 5*time.Second, time.Millisecond)
		var errB error
		out[1], errB = call(b)
		<-done
		require.NoError(t, errA)
		require.NoError(t, errB, "B joins A's %s", op)
		return out
	}

	stops := fake.Calls(backendtest.MethodStop)
	got := both(bap.OpStop, func(m *lifecycle.Manager) (lifecycle.Result, error) { return m.Stop(ctx, id, "test") })
	require.Equal(t, bap.StateStopped, got[0].Engine.Status)
	require.Equal(t, bap.StateStopped, got[1].Engine.Status)
	require.Equal(t, 1, fake.Calls(backendtest.MethodStop)-stops, "one stop for two callers")

	starts := fake.Calls(backendtest.MethodStart)
	got = both(bap.OpStart, func(m *lifecycle.Manager) (lifecycle.Result, error) { return m.Start(ctx, id, "test") })
	require.Equal(t, bap.StateRunning, got[0].Engine.Status)
	require.Equal(t, bap.StateRunning, got[1].Engine.Status)
	require.Equal(t, 1, fake.Calls(backendtest.MethodStart)-starts, "one start for two callers")

	got = both(bap.OpRotateKey, func(m *lifecycle.Manager) (lifecycle.Result, error) { return m.RotateKey(ctx, id, "test") })
	require.Equal(t, got[0].APIKey, got[1].APIKey, "the joined caller gets the rotation's key")
	cur, err := en.store.GetEngine(ctx, id)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, keyStatus(t, cur.URL, got[0].APIKey), "the engine accepts the key the database holds")
	require.Equal(t, http.StatusUnauthorized, keyStatus(t, cur.URL, res.APIKey))
	require.Equal(t, []audit.Action{audit.Provision, audit.Stop, audit.Start, audit.RotateKey}, auditActions(t, en.store, id))

	got = both(bap.OpDestroy, func(m *lifecycle.Manager) (lifecycle.Result, error) { return m.Destroy(ctx, id, "test") })
	require.Equal(t, id, got[1].Engine.ID)
	require.Equal(t, 1, fake.Calls(backendtest.MethodDestroy), "one destroy for two callers")
}

// slowStops makes Stop and Destroy take a while, so that operations of two
// replicas overlap.
type slowStops struct {
	backend.Backend
	delay time.Duration
}

func (s slowStops) Stop(ctx context.Context, id string, grace time.Duration) error {
	time.Sleep(s.delay)
	return s.Backend.Stop(ctx, id, grace)
}

func (s slowStops) Destroy(ctx context.Context, id string) error {
	time.Sleep(s.delay)
	return s.Backend.Destroy(ctx, id)
}

// TestBackgroundWorkIsTheShardHolders: marking failed, sleeping and
// restarting an engine happen only on the replica that holds its shard.
func TestBackgroundWorkIsTheShardHolders(t *testing.T) {
	en, _, a, b := twoReplicas(t)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		return a.Replica().Held()+b.Replica().Held() == replica.Shards && a.Replica().Held() > 0 && b.Replica().Held() > 0
	}, 5*time.Second, 10*time.Millisecond)
	res, err := a.Provision(ctx, en.product, "bob", "", "test")
	require.NoError(t, err)
	id := res.Engine.ID
	holder, other := a, b
	if _, ok := a.Replica().Lease(id); !ok {
		holder, other = b, a
	}

	marked, err := other.MarkFailed(ctx, id, audit.HealthFailed, "not mine", nil)
	require.NoError(t, err)
	require.False(t, marked, "another replica's shard")
	slept, err := other.Sleep(ctx, id, time.Time{})
	require.NoError(t, err)
	require.False(t, slept)
	marked, err = holder.MarkFailed(ctx, id, audit.HealthFailed, "stale evidence",
		func(bap.Engine) bool { return false })
	require.NoError(t, err)
	require.False(t, marked, "evidence the locked row no longer supports")
	marked, err = holder.MarkFailed(ctx, id, audit.HealthFailed, "probes failed", nil)
	require.NoError(t, err)
	require.True(t, marked)
	out, err := other.AutoRestart(ctx, id)
	require.NoError(t, err)
	require.Equal(t, lifecycle.RestartSkipped, out)
	out, err = holder.AutoRestart(ctx, id)
	require.NoError(t, err)
	require.Equal(t, lifecycle.RestartSucceeded, out)
	require.Equal(t, []audit.Action{audit.Provision, audit.HealthFailed, audit.AutoRestartStart, audit.AutoRestartSuccess},
		auditActions(t, en.store, id))
}

func keyStatus(t *testing.T, url, key string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/brain", nil)
	require.NoError(t, err)
	req.Header.Set("X-Engine-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}
