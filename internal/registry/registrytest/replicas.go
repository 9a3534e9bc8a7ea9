package registrytest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/registry"
)

func replicaTests() []test {
	return []test{
		{"RegisterHeartbeatList", testReplicaRegister},
		{"AliveByTTL", testReplicaAlive},
		{"DeregisterFreesLeases", testReplicaDeregister},
		{"LeaseAcquireReleaseEpochs", testLeaseLifecycle},
		{"LeaseTakenFromDeadHolder", testLeaseFromDead},
		{"LeaseConcurrentAcquireOneWinner", testLeaseConcurrent},
		{"CheckLeaseFences", testCheckLease},
		{"GoneOnlyWithoutSession", testReplicaGone},
	}
}

// GoneAfterItsStoreCloses checks ReplicaGone across two Stores on one
// database, the second standing for another process: a replica registered
// through the first is not gone while that Store is open, is gone (with a
// quiet heartbeat) once it is closed, as when its process dies, and a recent
// heartbeat alone still keeps it from being gone. Stores' own tests call it.
func GoneAfterItsStoreCloses(t *testing.T, first, second registry.Store) {
	ctx := t.Context()
	r := NewReplica(t, first)
	gone, err := second.ReplicaGone(ctx, r.ID, 0)
	require.NoError(t, err)
	require.False(t, gone, "its process holds its session")
	require.NoError(t, first.Close())
	require.Eventually(t, func() bool {
		gone, err := second.ReplicaGone(ctx, r.ID, 0)
		require.NoError(t, err)
		return gone
	}, 5*time.Second, 10*time.Millisecond, "its session ended with its process")
	gone, err = second.ReplicaGone(ctx, r.ID, time.Hour)
	require.NoError(t, err)
	require.False(t, gone, "a heartbeat younger than quiet is not gone")
}

func claimTests() []test {
	return []test{
		{"EnginesInOperation", testEnginesInOperation},
		{"CountRunning", testCountRunning},
		{"InsertMaxRunning", testInsertMaxRunning},
		{"RecordHealthFencedAndClaimed", testRecordHealthFenced},
	}
}

// NewReplica registers a replica with a fresh id and returns it.
func NewReplica(t testing.TB, s registry.Store) bap.Replica {
	t.Helper()
	r := bap.Replica{ID: uuid.NewString(), Host: "host-" + uuid.NewString()[:6], Pid: 4242,
		Version: "test", StartedAt: bap.Now()}
	require.NoError(t, s.RegisterReplica(t.Context(), r))
	return r
}

func testReplicaRegister(t *testing.T, s registry.Store) {
	ctx := t.Context()
	before := bap.Now().Add(-time.Second)
	a, b := NewReplica(t, s), NewReplica(t, s)
	list, err := s.Replicas(ctx, time.Hour)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, r := range list {
		want := a
		if r.ID == b.ID {
			want = b
		}
		require.Equal(t, want.ID, r.ID)
		require.Equal(t, want.Host, r.Host)
		require.Equal(t, want.Pid, r.Pid)
		require.Equal(t, want.Version, r.Version)
		requireTime(t, want.StartedAt, r.StartedAt, "StartedAt")
		require.True(t, r.Alive)
		require.Zero(t, r.Shards)
		require.True(t, r.HeartbeatAt.After(before), "heartbeat is now")
	}
	require.Less(t, list[0].ID, list[1].ID, "ordered by id")

	first := list[0].HeartbeatAt
	time.Sleep(5 * time.Millisecond)
	require.NoError(t, s.HeartbeatReplica(ctx, list[0].ID))
	list, err = s.Replicas(ctx, time.Hour)
	require.NoError(t, err)
	require.True(t, list[0].HeartbeatAt.After(first), "heartbeat moves forward")

	err = s.HeartbeatReplica(ctx, uuid.NewString())
	require.ErrorIs(t, err, registry.ErrNotFound, "a replica without a row must register again")

	// Registering again replaces the row.
	a.Pid, a.Version = 99, "v2"
	require.NoError(t, s.RegisterReplica(ctx, a))
	list, err = s.Replicas(ctx, time.Hour)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, r := range list {
		if r.ID == a.ID {
			require.Equal(t, 99, r.Pid)
			require.Equal(t, "v2", r.Version)
		}
	}
}

func testReplicaAlive(t *testing.T, s registry.Store) {
	ctx := t.Context()
	r := NewReplica(t, s)
	alive, err := s.ReplicaAlive(ctx, r.ID, time.Hour)
	require.NoError(t, err)
	require.True(t, alive)
	time.Sleep(20 * time.Millisecond)
	alive, err = s.ReplicaAlive(ctx, r.ID, 10*time.Millisecond)
	require.NoError(t, err)
	require.False(t, alive, "a heartbeat older than the TTL is dead")
	list, err := s.Replicas(ctx, 10*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.False(t, list[0].Alive)
	alive, err = s.ReplicaAlive(ctx, uuid.NewString(), time.Hour)
	require.NoError(t, err)
	require.False(t, alive, "no row: not alive")
}

func testReplicaDeregister(t *testing.T, s registry.Store) {
	ctx := t.Context()
	r := NewReplica(t, s)
	for shard := range 3 {
		_, took := acquire(t, s, shard, r.ID, time.Hour)
		require.True(t, took)
	}
	list, err := s.Replicas(ctx, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 3, list[0].Shards)
	require.NoError(t, s.DeregisterReplica(ctx, r.ID))
	require.NoError(t, s.DeregisterReplica(ctx, r.ID), "missing is not an error")
	list, err = s.Replicas(ctx, time.Hour)
	require.NoError(t, err)
	require.Empty(t, list)
	leases, err := s.Leases(ctx)
	require.NoError(t, err)
	require.Len(t, leases, 3)
	for _, l := range leases {
		require.Empty(t, l.ReplicaID, "the leases are free")
	}
}

func testLeaseLifecycle(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a, b := NewReplica(t, s), NewReplica(t, s)
	la, took := acquire(t, s, 5, a.ID, time.Hour)
	require.True(t, took)
	require.Equal(t, registry.Lease{Shard: 5, ReplicaID: a.ID, Epoch: 1}, la)

	cur, took := acquire(t, s, 5, b.ID, time.Hour)
	require.False(t, took, "a live holder keeps its shard")
	require.Equal(t, la, cur)
	cur, took = acquire(t, s, 5, a.ID, time.Hour)
	require.False(t, took, "re-acquiring a held shard changes nothing")
	require.Equal(t, la, cur)

	require.NoError(t, s.ReleaseLease(ctx, registry.Lease{Shard: 5, ReplicaID: a.ID, Epoch: 0}))
	leases, err := s.Leases(ctx)
	require.NoError(t, err)
	require.Equal(t, []registry.Lease{la}, leases, "a stale release changes nothing")

	require.NoError(t, s.ReleaseLease(ctx, la))
	leases, err = s.Leases(ctx)
	require.NoError(t, err)
	require.Equal(t, []registry.Lease{{Shard: 5, Epoch: 1}}, leases, "released: free, epoch kept")

	lb, took := acquire(t, s, 5, b.ID, time.Hour)
	require.True(t, took)
	require.Equal(t, registry.Lease{Shard: 5, ReplicaID: b.ID, Epoch: 2}, lb, "the epoch grows with every holder")
	acquire(t, s, 0, a.ID, time.Hour)
	leases, err = s.Leases(ctx)
	require.NoError(t, err)
	require.Equal(t, []int{0, 5}, []int{leases[0].Shard, leases[1].Shard}, "ordered by shard")
}

func testLeaseFromDead(t *testing.T, s registry.Store) {
	ctx := t.Context()
	dead, live := NewReplica(t, s), NewReplica(t, s)
	l, took := acquire(t, s, 1, dead.ID, time.Hour)
	require.True(t, took)
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, s.HeartbeatReplica(ctx, live.ID))
	got, took := acquire(t, s, 1, live.ID, 10*time.Millisecond)
	require.True(t, took, "a holder whose heartbeat is older than the TTL loses the shard")
	require.Equal(t, registry.Lease{Shard: 1, ReplicaID: live.ID, Epoch: l.Epoch + 1}, got)
	// A holder without a row at all is dead too.
	require.NoError(t, s.DeregisterReplica(ctx, live.ID))
	acquire(t, s, 2, live.ID, time.Hour)
	got, took = acquire(t, s, 2, dead.ID, time.Hour)
	require.True(t, took)
	require.Equal(t, dead.ID, got.ReplicaID)
}

func testLeaseConcurrent(t *testing.T, s registry.Store) {
	ctx := t.Context()
	const n = 8
	replicas := make([]bap.Replica, n)
	for i := range replicas {
		replicas[i] = NewReplica(t, s)
	}
	var (
		mu      sync.Mutex
		winners []registry.Lease
		wg      sync.WaitGroup
	)
	for _, r := range replicas {
		wg.Go(func() {
			l, took := acquire(t, s, 9, r.ID, time.Hour)
			if took {
				mu.Lock()
				winners = append(winners, l)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Len(t, winners, 1, "exactly one replica takes a free shard")
	leases, err := s.Leases(ctx)
	require.NoError(t, err)
	require.Equal(t, winners, leases)
}

func testReplicaGone(t *testing.T, s registry.Store) {
	ctx := t.Context()
	r := NewReplica(t, s)
	for _, quiet := range []time.Duration{0, time.Hour} {
		gone, err := s.ReplicaGone(ctx, r.ID, quiet)
		require.NoError(t, err)
		require.False(t, gone, "a registered replica with its session is not gone")
	}
	require.NoError(t, s.HeartbeatReplica(ctx, r.ID))
	gone, err := s.ReplicaGone(ctx, r.ID, 0)
	require.NoError(t, err)
	require.False(t, gone, "the heartbeat keeps the session")
	require.NoError(t, s.DeregisterReplica(ctx, r.ID))
	gone, err = s.ReplicaGone(ctx, r.ID, 0)
	require.NoError(t, err)
	require.True(t, gone, "deregistered: no row, no session")
	gone, err = s.ReplicaGone(ctx, uuid.NewString(), time.Hour)
	require.NoError(t, err)
	require.True(t, gone, "never registered")
}

func testCheckLease(t *testing.T, s registry.Store) {
	ctx := t.Context()
	a, b := NewReplica(t, s), NewReplica(t, s)
	la, _ := acquire(t, s, 3, a.ID, time.Hour)
	require.NoError(t, s.CheckLease(ctx, la))
	require.NoError(t, s.InTx(ctx, func(tx registry.Store) error { return tx.CheckLease(ctx, la) }))
	require.NoError(t, s.ReleaseLease(ctx, la))
	require.ErrorIs(t, s.CheckLease(ctx, la), registry.ErrFenced, "a released lease fences")
	lb, _ := acquire(t, s, 3, b.ID, time.Hour)
	require.ErrorIs(t, s.CheckLease(ctx, la), registry.ErrFenced, "an old epoch fences")
	err := s.InTx(ctx, func(tx registry.Store) error { return tx.CheckLease(ctx, la) })
	require.ErrorIs(t, err, registry.ErrFenced)
	require.NoError(t, s.CheckLease(ctx, lb))
	require.ErrorIs(t, s.CheckLease(ctx, registry.Lease{Shard: 99, ReplicaID: a.ID, Epoch: 1}), registry.ErrFenced,
		"a shard never leased fences")
}

func claimed(op bap.Op, owner string, epoch int64) func(*bap.Engine) {
	return func(e *bap.Engine) {
		e.Claim = bap.Claim{Op: op, Owner: owner, Epoch: epoch, StartedAt: ptr(bap.Now())}
	}
}

func testEnginesInOperation(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	NewEngine(t, s, p.ID, "idle")
	a := NewEngine(t, s, p.ID, "a", claimed(bap.OpStop, "r1", 3))
	b := NewEngine(t, s, p.ID, "b", WithStatus(bap.StateProvisioning), claimed(bap.OpProvision, "r2", 1))
	got, err := s.EnginesInOperation(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{a.ID, b.ID}, engineIDs(got))
	require.Less(t, got[0].ID, got[1].ID, "ordered by id")
	for _, e := range got {
		want := a
		if e.ID == b.ID {
			want = b
		}
		requireEngine(t, want, e, true)
	}
	// Clearing the claim takes the engine out.
	a.Claim = bap.Claim{Epoch: a.Claim.Epoch}
	require.NoError(t, s.UpdateEngine(ctx, a))
	got, err = s.EnginesInOperation(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{b.ID}, engineIDs(got))
}

func testCountRunning(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p, other := NewProduct(t, s), NewProduct(t, s)
	NewEngine(t, s, p.ID, "running")
	NewEngine(t, s, p.ID, "sleeping", WithStatus(bap.StateSleeping))
	NewEngine(t, s, p.ID, "provisioning", WithStatus(bap.StateProvisioning), claimed(bap.OpProvision, "r", 1))
	NewEngine(t, s, p.ID, "stopped", WithStatus(bap.StateStopped))
	NewEngine(t, s, p.ID, "starting", WithStatus(bap.StateStopped), claimed(bap.OpStart, "r", 2))
	NewEngine(t, s, p.ID, "waking", WithStatus(bap.StateStopped), claimed(bap.OpWake, "r", 2))
	NewEngine(t, s, p.ID, "failed", WithStatus(bap.StateFailed))
	NewEngine(t, s, p.ID, "restart-due", WithStatus(bap.StateFailed), func(e *bap.Engine) {
		e.NextRestartAt = ptr(bap.Now().Add(time.Minute))
	})
	NewEngine(t, s, p.ID, "restarting", WithStatus(bap.StateFailed), claimed(bap.OpAutoRestart, "r", 2))
	NewEngine(t, s, p.ID, "destroying", WithStatus(bap.StateDestroying), claimed(bap.OpDestroy, "r", 2))
	NewEngine(t, s, other.ID, "elsewhere")
	n, err := s.CountRunning(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, 7, n, "running, sleeping, provisioning, a restart due, and the start, wake and restart in flight")
	require.NoError(t, s.InTx(ctx, func(tx registry.Store) error {
		n, err := tx.CountRunning(ctx, p.ID)
		require.Equal(t, 7, n)
		return err
	}))
	n, err = s.CountRunning(ctx, uuid.NewString())
	require.NoError(t, err)
	require.Zero(t, n)
}

func testInsertMaxRunning(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	NewEngine(t, s, p.ID, "running")
	NewEngine(t, s, p.ID, "stopped", WithStatus(bap.StateStopped))
	insert := func(user string, q registry.Quota) error {
		now := bap.Now()
		return StepsOf(s).InsertEngine(ctx, bap.Engine{ID: uuid.NewString(), ProductID: p.ID, UserID: user,
			Status: bap.StateProvisioning, Port: 30000 + len(user), CreatedAt: now, UpdatedAt: now,
			Claim: bap.Claim{Op: bap.OpProvision, Owner: "r", Epoch: 1, StartedAt: &now}}, q)
	}
	require.NoError(t, insert("second", registry.Quota{MaxRunning: 2}))
	err := insert("third", registry.Quota{MaxRunning: 2})
	require.ErrorIs(t, err, registry.ErrQuotaExceeded, "two hold running slots already")
	require.NoError(t, insert("third", registry.Quota{MaxRunning: 3, MaxEngines: 4}))
	err = insert("fourth", registry.Quota{MaxRunning: 10, MaxEngines: 4})
	require.ErrorIs(t, err, registry.ErrQuotaExceeded, "max_engines still applies")
	err = insert("second", registry.Quota{MaxRunning: 1})
	require.ErrorIs(t, err, registry.ErrConflict, "an existing engine is the better answer")
}

func testRecordHealthFenced(t *testing.T, s registry.Store) {
	ctx := t.Context()
	p := NewProduct(t, s)
	r := NewReplica(t, s)
	lease, _ := acquire(t, s, 0, r.ID, time.Hour)
	stale := registry.Lease{Shard: 0, ReplicaID: r.ID, Epoch: lease.Epoch - 1}
	held := NewEngine(t, s, p.ID, "held")
	fenced := NewEngine(t, s, p.ID, "fenced")
	busy := NewEngine(t, s, p.ID, "busy", claimed(bap.OpStop, "other", 4))
	stopped := NewEngine(t, s, p.ID, "stopped", WithStatus(bap.StateStopped))
	at := bap.Now()
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: held.ID, OK: false, At: at, Lease: lease},
		{EngineID: fenced.ID, OK: false, At: at, Lease: stale},
		{EngineID: busy.ID, OK: false, At: at, Lease: lease},
		{EngineID: stopped.ID, OK: false, At: at},
	}))
	failures := func(id string) int {
		e, err := s.GetEngine(ctx, id)
		require.NoError(t, err)
		return e.HealthFailures
	}
	require.Equal(t, 1, failures(held.ID), "a result under the current lease counts")
	require.Zero(t, failures(fenced.ID), "a result under a lost lease is dropped")
	require.Zero(t, failures(busy.ID), "a failure during an operation says nothing")
	require.Zero(t, failures(stopped.ID), "a stopped engine is not probed")

	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: held.ID, OK: true, At: at, Lease: stale},
	}))
	e, err := s.GetEngine(ctx, held.ID)
	require.NoError(t, err)
	require.Equal(t, 1, e.HealthFailures, "a success under a lost lease is dropped too")
	require.Nil(t, e.LastHealthAt)
	require.NoError(t, s.RecordHealth(ctx, []registry.HealthResult{
		{EngineID: busy.ID, OK: true, At: at, Lease: lease},
	}))
	e, err = s.GetEngine(ctx, busy.ID)
	require.NoError(t, err)
	requireTimePtr(t, &at, e.LastHealthAt, "a success during an operation is recorded")
	require.False(t, errors.Is(s.CheckLease(ctx, lease), registry.ErrFenced))
}

// acquire is AcquireLease, failing t on an error.
func acquire(t *testing.T, s registry.Store, shard int, replicaID string, ttl time.Duration) (registry.Lease, bool) {
	t.Helper()
	l, took, err := s.AcquireLease(t.Context(), shard, replicaID, ttl)
	require.NoError(t, err)
	return l, took
}
