package lifecycle

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/backend/backendtest"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/registrytest"
	"github.com/september/bap-engine/internal/registry/sqlite"
	"github.com/september/bap-engine/internal/secret"
)

// repairingStore runs a repair pass right after each provision's insert,
// before the provision goes on: the moment a pass on a busy machine can
// list a new row.
type repairingStore struct {
	registry.Store
	repair func(context.Context)
}

func (s *repairingStore) ProvisionEngine(ctx context.Context, e bap.Engine, q registry.Quota, portMin, portMax int) (int, error) {
	port, err := s.Store.ProvisionEngine(ctx, e, q, portMin, portMax)
	if err == nil {
		s.repair(ctx)
	}
	return port, err
}

// TestQueuedProvisionKeepsItsClaim: a provision that waited for a slot
// longer than leftoverAge keeps the claim its insert writes when a repair
// pass lists the new row before the operation goes on; the claim is not
// taken for a leftover, and the provision ends running (a burst once got
// ENGINE_BUSY from exactly this).
func TestQueuedProvisionKeepsItsClaim(t *testing.T) {
	defer func(d time.Duration) { leftoverAge = d }(leftoverAge)
	leftoverAge = 50 * time.Millisecond

	ctx := context.Background()
	inner, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = inner.Close() })
	store := &repairingStore{Store: inner}
	fake := backendtest.NewFake()
	t.Cleanup(fake.Close)
	fake.SetBootDelay(300 * time.Millisecond) // the first provision holds the only slot that long
	key, err := secret.NewFernetKey()
	require.NoError(t, err)
	sealer, err := secret.NewSealer(key)
	require.NoError(t, err)
	portMin, portMax := backendtest.PortRange(t, 10)
	m := New(store, fake, sealer, Config{
		PortMin:                 portMin,
		PortMax:                 portMax,
		BootTimeout:             10 * time.Second,
		StopGrace:               time.Second,
		DefaultImage:            "september-engine:test",
		MaxConcurrentProvisions: 1,
	})
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	var provisions sync.WaitGroup
	store.repair = func(ctx context.Context) {
		_, err := m.RepairInterrupted(ctx)
		require.NoError(t, err)
	}
	p := registrytest.NewProduct(t, inner)

	results := make(chan error, 2)
	for _, u := range []bap.UserID{"first", "queued"} {
		provisions.Go(func() {
			_, err := m.Provision(ctx, p, u, "", "test")
			results <- err
		})
		time.Sleep(50 * time.Millisecond) // "first" takes the slot, "queued" waits for it
	}
	provisions.Wait()
	close(results)
	for err := range results {
		require.NoError(t, err)
	}
	for _, u := range []string{"first", "queued"} {
		e, err := inner.GetEngineByUser(ctx, p.ID, u)
		require.NoError(t, err)
		require.Equal(t, bap.StateRunning, e.Status, u)
		require.False(t, e.Claim.Held(), "%s: the claim ended with the provision", u)
	}
}
