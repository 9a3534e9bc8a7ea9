package replica_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/september/bap-engine/internal/registry/storetest"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/pgtest"
	"github.com/september/bap-engine/internal/registry"
	"github.com/september/bap-engine/internal/registry/postgres"
	"github.com/september/bap-engine/internal/replica"
	"github.com/september/bap-engine/internal/testmain"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m)) }

// fast is a replica configuration for tests: a 1 s TTL, rebalanced every
// 50 ms.
func fast(host string) replica.Config {
	return replica.Config{TTL: time.Second, Tick: 50 * time.Millisecond, Host: host, Version: "test"}
}

// running is a started replica whose Run goroutine the test can stop, as a
// crash (stop) or gracefully (stop, then Deregister).
type running struct {
	*replica.Replica
	cancel context.CancelFunc
	done   chan struct{}
}

func start(t *testing.T, s registry.Store, cfg replica.Config) *running {
	t.Helper()
	r := replica.New(s, cfg)
	require.NoError(t, r.Start(t.Context()))
	ctx, cancel := context.WithCancel(context.Background())
	rr := &running{Replica: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rr.done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(rr.stop)
	return rr
}

// stop ends Run without deregistering: to the others it is a crash.
func (r *running) stop() {
	r.cancel()
	<-r.done
}

// held is which shards r holds now (valid leases only).
func held(r *replica.Replica) map[int]registry.Lease {
	out := map[int]registry.Lease{}
	for s := range replica.Shards {
		if l, ok := r.ShardLease(s); ok {
			out[s] = l
		}
	}
	return out
}

// requireDivided checks that the replicas hold every shard between them,
// none twice, each as rendezvous hashing over them says, and that the
// database agrees.
func requireDivided(t *testing.T, s registry.Store, rs ...*replica.Replica) bool {
	t.Helper()
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID()
	}
	owner := map[int]string{}
	for _, r := range rs {
		for shard, l := range held(r) {
			if prev, dup := owner[shard]; dup {
				t.Fatalf("shard %d held by %s and %s", shard, prev, r.ID())
			}
			owner[shard] = r.ID()
			require.Equal(t, r.ID(), l.ReplicaID)
		}
	}
	if len(owner) != replica.Shards {
		return false
	}
	for shard, id := range owner {
		if replica.Owner(shard, ids) != id {
			return false
		}
	}
	leases, err := s.Leases(t.Context())
	require.NoError(t, err)
	for _, l := range leases {
		if owner[l.Shard] != l.ReplicaID {
			return false
		}
	}
	return true
}

func TestShardOfIsStableAndSpread(t *testing.T) {
	id := uuid.NewString()
	require.Equal(t, replica.ShardOf(id), replica.ShardOf(id))
	counts := make([]int, replica.Shards)
	const n = 64000
	for range n {
		counts[replica.ShardOf(uuid.NewString())]++
	}
	for s, c := range counts {
		require.InDelta(t, n/replica.Shards, c, n/replica.Shards/4, "shard %d", s)
	}
}

func TestOwnerBalancesAndMovesOnlyWhatItMust(t *testing.T) {
	ids := []string{uuid.NewString(), uuid.NewString(), uuid.NewString()}
	before := map[int]string{}
	per := map[string]int{}
	for s := range replica.Shards {
		before[s] = replica.Owner(s, ids)
		per[before[s]]++
	}
	for _, id := range ids {
		require.GreaterOrEqual(t, per[id], 10, "each of 3 replicas gets a fair share: %v", per)
	}
	joined := uuid.NewString()
	moved := 0
	for s := range replica.Shards {
		now := replica.Owner(s, append([]string{joined}, ids...))
		if now != before[s] {
			require.Equal(t, joined, now, "a join moves shards only to the newcomer")
			moved++
		}
	}
	require.Positive(t, moved)
	for s := range replica.Shards {
		now := replica.Owner(s, ids[1:])
		if before[s] != ids[0] {
			require.Equal(t, before[s], now, "a death moves only the dead replica's shards")
		}
	}
	require.Empty(t, replica.Owner(0, nil))
}

func TestReplicasDivideShardsAndTakeOverTheDead(t *testing.T) {
	for name, open := range map[string]func(testing.TB) registry.Store{"postgres": storetest.Postgres} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			a := start(t, s, fast("host-a"))
			require.Len(t, held(a.Replica), replica.Shards, "alone, a replica holds every shard")
			b := start(t, s, fast("host-b"))
			require.Eventually(t, func() bool { return requireDivided(t, s, a.Replica, b.Replica) },
				5*time.Second, 10*time.Millisecond)
			require.Greater(t, len(held(b.Replica)), 10)
			require.Greater(t, len(held(a.Replica)), 10)
			c := start(t, s, fast("host-c"))
			require.Eventually(t, func() bool { return requireDivided(t, s, a.Replica, b.Replica, c.Replica) },
				5*time.Second, 10*time.Millisecond)
			byB := held(b.Replica)

			// B crashes: it stops acting first (its leases lapse locally),
			// then A and C take its shards with new epochs.
			died := time.Now()
			b.stop()
			require.Eventually(t, func() bool { return !b.Valid() }, 2*time.Second, 5*time.Millisecond)
			require.Empty(t, held(b.Replica), "a replica whose heartbeat is stale holds nothing")
			require.Eventually(t, func() bool { return requireDivided(t, s, a.Replica, c.Replica) },
				5*time.Second, 10*time.Millisecond)
			t.Logf("shards moved %s after the crash (TTL 1 s)", time.Since(died).Round(time.Millisecond))
			for shard, old := range byB {
				l, ok := a.ShardLease(shard)
				if !ok {
					l, ok = c.ShardLease(shard)
				}
				require.True(t, ok)
				require.Greater(t, l.Epoch, old.Epoch, "a moved shard has a new epoch")
				require.ErrorIs(t, s.CheckLease(t.Context(), old), registry.ErrFenced, "B's old lease fences")
			}
			list, err := s.Replicas(t.Context(), time.Second)
			require.NoError(t, err)
			for _, r := range list {
				require.Equal(t, r.ID != b.ID(), r.Alive, "%s alive", r.ID)
			}

			// A stops gracefully: C takes its shards at once.
			a.stop()
			a.Deregister(t.Context())
			require.Eventually(t, func() bool { return requireDivided(t, s, c.Replica) },
				time.Second, 10*time.Millisecond, "a deregistered replica's shards move without waiting a TTL")
		})
	}
}

// TestFrozenReplicaRejoins: a replica that cannot heartbeat for longer than
// its TTL (a frozen process) loses its leases to the others and holds
// nothing meanwhile; when it runs again it re-reads before acting and takes
// a share again, under new epochs.
func TestFrozenReplicaRejoins(t *testing.T) {
	s := storetest.Postgres(t)
	a := start(t, s, fast("host-a"))
	b := start(t, s, fast("host-b"))
	require.Eventually(t, func() bool { return requireDivided(t, s, a.Replica, b.Replica) }, 5*time.Second, 10*time.Millisecond)
	before := held(b.Replica)

	b.stop() // frozen: no heartbeat, no rebalance
	require.Eventually(t, func() bool { return len(held(a.Replica)) == replica.Shards }, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, held(b.Replica))

	again := &running{Replica: b.Replica, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	again.cancel = cancel
	go func() {
		defer close(again.done)
		_ = b.Run(ctx)
	}()
	t.Cleanup(again.stop)
	require.Eventually(t, func() bool { return requireDivided(t, s, a.Replica, b.Replica) }, 5*time.Second, 10*time.Millisecond)
	for shard, l := range held(b.Replica) {
		if old, had := before[shard]; had {
			require.Greater(t, l.Epoch, old.Epoch, "shard %d came back under a new epoch", shard)
		}
	}
}

// TestDeadProcessIsDeadBeforeItsTTL: a replica whose process ended (its
// Store, and so its session on the database, closed) is dead once its
// heartbeat has been quiet for a heartbeat period and a half, without
// waiting for its TTL; one whose process is alive but frozen (no heartbeat,
// session held) waits for its TTL.
func TestDeadProcessIsDeadBeforeItsTTL(t *testing.T) {
	url := pgtest.URL(t)
	openAt := func() registry.Store {
		st, err := postgres.Open(t.Context(), url)
		require.NoError(t, err)
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	s := openAt()
	cfg := fast("anywhere")
	cfg.TTL = time.Hour // only proof can make a replica dead here
	cfg.Heartbeat = 100 * time.Millisecond

	deadStore, frozenStore := openAt(), openAt()
	dead := start(t, deadStore, cfg)
	frozen := start(t, frozenStore, cfg)
	require.Eventually(t, func() bool { return requireDivided(t, s, dead.Replica, frozen.Replica) }, 5*time.Second, 10*time.Millisecond)
	deadShards, frozenShards := held(dead.Replica), held(frozen.Replica)

	dead.stop()
	require.NoError(t, deadStore.Close()) // the process is gone: its session ends
	frozen.stop()                         // frozen: no heartbeat, session kept

	r := start(t, s, cfg)
	// The dead replica's shards are split between the living: r takes its
	// share of them at once, though the TTL is an hour.
	live := []string{r.ID(), frozen.ID()}
	mine := 0
	require.Eventually(t, func() bool {
		got := held(r.Replica)
		mine = 0
		for shard := range deadShards {
			if replica.Owner(shard, live) != r.ID() {
				continue
			}
			mine++
			if _, ok := got[shard]; !ok {
				return false
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond, "the dead process's shards are taken within seconds, TTL an hour")
	require.Positive(t, mine)
	got := held(r.Replica)
	for shard := range frozenShards {
		_, ok := got[shard]
		require.False(t, ok, "shard %d of the frozen replica: only its TTL frees it", shard)
	}
	list, err := s.Replicas(t.Context(), time.Hour)
	require.NoError(t, err)
	ids := []string{}
	for _, x := range list {
		ids = append(ids, x.ID)
	}
	require.ElementsMatch(t, []string{r.ID(), frozen.ID()}, ids, "the dead replica is removed")
}

// TestExclusiveReplicaOwnsTheDatabase: with SQLite's file lock there is one
// orchestrator, so every other replica row is dead at start.
func TestExclusiveReplicaOwnsTheDatabase(t *testing.T) {
	s := storetest.SQLite(t)
	ctx := t.Context()
	other := bap.Replica{ID: uuid.NewString(), Host: "somewhere", Pid: 1, Version: "old", StartedAt: bap.Now()}
	require.NoError(t, s.RegisterReplica(ctx, other))
	for shard := range replica.Shards {
		_, _, err := s.AcquireLease(ctx, shard, other.ID, time.Hour)
		require.NoError(t, err)
	}
	cfg := fast("here")
	cfg.TTL = time.Hour
	cfg.Exclusive = true
	r := start(t, s, cfg)
	require.Len(t, held(r.Replica), replica.Shards)
	alive, err := s.ReplicaAlive(ctx, other.ID, time.Hour)
	require.NoError(t, err)
	require.False(t, alive)
}

// failingHeartbeats makes HeartbeatReplica fail from a moment on.
type failingHeartbeats struct {
	registry.Store
	fail chan struct{}
}

func (f *failingHeartbeats) HeartbeatReplica(ctx context.Context, id string) error {
	select {
	case <-f.fail:
		return errors.New("database unreachable")
	default:
		return f.Store.HeartbeatReplica(ctx, id)
	}
}

// TestLeasesLapseWithoutHeartbeat: a replica that cannot reach the database
// stops trusting its leases after three quarters of a TTL, before anyone may
// call it dead; when it gets through again it re-reads before holding
// anything.
func TestLeasesLapseWithoutHeartbeat(t *testing.T) {
	s := &failingHeartbeats{Store: storetest.SQLite(t), fail: make(chan struct{})}
	r := start(t, s, fast("host"))
	require.True(t, r.Valid())
	require.Len(t, held(r.Replica), replica.Shards)
	close(s.fail)
	began := time.Now()
	require.Eventually(t, func() bool { return !r.Valid() }, 2*time.Second, 5*time.Millisecond)
	require.Less(t, time.Since(began), time.Second, "validity lapses before the TTL")
	_, ok := r.Lease(uuid.NewString())
	require.False(t, ok)
	_, ok = r.Leader()
	require.False(t, ok)
	require.Empty(t, held(r.Replica))
}

// TestExclusiveReplicaOutlivesSlowHeartbeats: with SQLite's file lock
// nobody can take over, so heartbeats that fail (a database busy with a
// burst of writes) do not stop this replica from acting.
func TestExclusiveReplicaOutlivesSlowHeartbeats(t *testing.T) {
	s := &failingHeartbeats{Store: storetest.SQLite(t), fail: make(chan struct{})}
	cfg := fast("host")
	cfg.Exclusive = true
	r := start(t, s, cfg)
	require.True(t, r.Valid())
	close(s.fail)
	time.Sleep(3 * cfg.TTL)
	require.True(t, r.Valid())
	require.Len(t, held(r.Replica), replica.Shards)
	_, ok := r.Lease(uuid.NewString())
	require.True(t, ok)
	r.stop()
	r.Deregister(t.Context())
	require.False(t, r.Valid(), "deregistered, it acts no more")
}

// TestDeclaredDeadReplicaDropsEverything: a replica that finds its row
// deleted (others declared it dead) holds nothing until it registered and
// rebalanced again.
func TestDeclaredDeadReplicaDropsEverything(t *testing.T) {
	s := storetest.SQLite(t)
	r := start(t, s, fast("host"))
	require.Len(t, held(r.Replica), replica.Shards)
	gen := r.Generation()
	require.NoError(t, s.DeregisterReplica(t.Context(), r.ID()))
	require.Eventually(t, func() bool { return r.Generation() != gen }, 2*time.Second, time.Millisecond,
		"the held set changed when the row was found gone")
	require.Eventually(t, func() bool { return len(held(r.Replica)) == replica.Shards }, 5*time.Second, 10*time.Millisecond,
		"registered again, it takes its shards again")
	alive, err := s.ReplicaAlive(t.Context(), r.ID(), time.Second)
	require.NoError(t, err)
	require.True(t, alive)
}

func TestSoloHoldsEverythingUnfenced(t *testing.T) {
	r := replica.Solo(storetest.SQLite(t))
	require.True(t, r.Valid())
	require.Len(t, held(r), replica.Shards)
	l, ok := r.Lease(uuid.NewString())
	require.True(t, ok)
	require.Empty(t, l.ReplicaID, "a solo replica's leases fence nothing")
	require.NoError(t, r.Start(t.Context()))
	alive, err := r.Alive(t.Context(), r.ID())
	require.NoError(t, err)
	require.True(t, alive)
}

// deadPid returns the pid of a process that has exited.
func deadPid(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	require.NoError(t, err)
	_, err = p.Wait()
	require.NoError(t, err)
	return p.Pid
}
