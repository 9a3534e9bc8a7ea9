package registrytest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func changeTests() []test {
	return []test{
		{"WritesReportedBeforeTheyReturn", testChangesReported},
		{"TransactionReportsWhenItEnds", testChangesInTx},
		{"LiveFirstLostLast", testChangesLiveAndLost},
	}
}

// ChangeRecorder collects what a Watcher reports.
type ChangeRecorder struct {
	mu      sync.Mutex
	changes []registry.Change
}

// Record is the function to give WatchChanges.
func (r *ChangeRecorder) Record(c registry.Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

// All returns what was reported so far.
func (r *ChangeRecorder) All() []registry.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

// Has reports whether c was reported.
func (r *ChangeRecorder) Has(c registry.Change) bool {
	return slices.Contains(r.All(), c)
}

// Watch starts s.WatchChanges into a new recorder, waits for ChangesLive
// and stops the watch when the test ends (checking it returned ctx's
// error).
func Watch(t *testing.T, s registry.Store) *ChangeRecorder {
	t.Helper()
	rec := &ChangeRecorder{}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- s.WatchChanges(ctx, rec.Record) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
	})
	require.Eventually(t, func() bool { return rec.Has(registry.Change{Kind: registry.ChangesLive}) },
		10*time.Second, 5*time.Millisecond, "the watch never went live")
	return rec
}

func engineChange(id string) registry.Change {
	return registry.Change{Kind: registry.ChangeEngine, ID: id}
}

func productChange(id string) registry.Change {
	return registry.Change{Kind: registry.ChangeProduct, ID: id}
}

// testChangesReported: every write that changes what an admit reads is
// reported by the time it returns; reads and the frequent bookkeeping
// writes are not.
func testChangesReported(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	other := NewEngine(t, s, p.ID, "u2")
	rec := Watch(t, s)

	_, err := s.GetEngine(ctx, e.ID)
	require.NoError(t, err)
	require.NoError(t, s.TouchActive(ctx, []string{other.ID}, bap.Now()))
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{{EngineID: other.ID, OK: true, At: bap.Now()}}))

	e.Status = bap.StateStopped
	require.NoError(t, s.UpdateEngine(ctx, e, audit.Entry{EngineID: e.ID, Action: audit.Stop, Actor: audit.ActorSystem}))
	require.True(t, rec.Has(engineChange(e.ID)), "UpdateEngine reported before it returned")

	pol, err := bap.ParsePolicy([]byte(`{"max_engines": 3}`))
	require.NoError(t, err)
	_, err = s.UpdatePolicy(ctx, p.ID, pol, audit.Entry{ProductID: p.ID, Action: audit.PolicyUpdate, Actor: audit.ActorAdmin})
	require.NoError(t, err)
	require.True(t, rec.Has(productChange(p.ID)), "UpdatePolicy reported before it returned")

	p2 := NewProduct(t, s)
	require.NoError(t, s.RotateProductKey(ctx, p2.ID, RandomKeyHash(), bap.Now().Add(time.Minute),
		audit.Entry{ProductID: p2.ID, Action: audit.PlatformKeyRotated, Actor: audit.ActorAdmin}))
	require.True(t, rec.Has(productChange(p2.ID)), "RotateProductKey reported before it returned")

	require.NoError(t, s.DeleteEngine(ctx, e.ID, audit.Entry{EngineID: e.ID, Action: audit.Destroy, Actor: audit.ActorSystem}))
	require.True(t, rec.Has(engineChange(e.ID)), "DeleteEngine reported before it returned")

	require.False(t, rec.Has(engineChange(other.ID)), "touches and probe results are not reported")
}

// testChangesInTx: a change made in a transaction is reported once the
// transaction ends (so a reader never re-reads the old row after the
// report), whether it committed or rolled back.
func testChangesInTx(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	rec := Watch(t, s)

	require.NoError(t, s.InTx(ctx, func(tx registry.Store) error {
		cur, err := tx.LockEngine(ctx, e.ID)
		if err != nil {
			return err
		}
		cur.Status = bap.StateSleeping
		if err := tx.UpdateEngine(ctx, cur); err != nil {
			return err
		}
		require.False(t, rec.Has(engineChange(e.ID)), "reported before the transaction committed")
		return nil
	}))
	require.True(t, rec.Has(engineChange(e.ID)), "reported when the transaction committed")

	e2 := NewEngine(t, s, p.ID, "u2")
	err := s.InTx(ctx, func(tx registry.Store) error {
		if err := tx.DeleteEngine(ctx, e2.ID); err != nil {
			return err
		}
		return errBoom
	})
	require.ErrorIs(t, err, errBoom)
	require.True(t, rec.Has(engineChange(e2.ID)), "a rolled-back change is reported too")
	_, err = s.GetEngine(ctx, e2.ID)
	require.NoError(t, err, "the delete rolled back")
}

// testChangesLiveAndLost: the watch starts with ChangesLive and ends with
// ChangesLost and ctx's error; nothing is reported after it returned.
func testChangesLiveAndLost(t *testing.T, s registry.Store) {
	rec := &ChangeRecorder{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.WatchChanges(ctx, rec.Record) }()
	require.Eventually(t, func() bool { return len(rec.All()) > 0 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, registry.Change{Kind: registry.ChangesLive}, rec.All()[0])
	cancel()
	select {
	case err := <-done:
		require.True(t, errors.Is(err, context.Canceled), "WatchChanges returned %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("WatchChanges did not return after its context ended")
	}
	all := rec.All()
	require.Equal(t, registry.Change{Kind: registry.ChangesLost}, all[len(all)-1])

	p := NewProduct(t, s)
	e := NewEngine(t, s, p.ID, "u1")
	require.NoError(t, s.DeleteEngine(t.Context(), e.ID))
	require.Len(t, rec.All(), len(all), "nothing is reported after the watch returned")
}
