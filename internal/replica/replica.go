package replica

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/september/bap-engine/internal/bap"
	"github.com/september/bap-engine/internal/loop"
	"github.com/september/bap-engine/internal/registry"
)

// Shards is the fixed number of shards engines fall into.
const Shards = 64

// forgetAfter: a replica dead for this many TTLs is deleted from the table
// (until then GET /replicas shows it, not alive).
const forgetAfter = 30

// LeaderShard's holder runs the work that must run once (the orphan sweep,
// orphan ports, audit pruning).
const LeaderShard = 0

// ShardOf is the shard of an engine: FNV-1a of its id, modulo Shards.
func ShardOf(engineID string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(engineID))
	return int(h.Sum32() % Shards)
}

// Config tunes a Replica. Zero values take the defaults.
type Config struct {
	// TTL is how long a replica without heartbeat stays alive
	// (ORCH_REPLICA_TTL_S, default 10 s).
	TTL time.Duration
	// Heartbeat is the heartbeat period (default TTL/4).
	Heartbeat time.Duration
	// Tick is how often liveness and leases are re-read and rebalanced
	// (default min(TTL/10, 1 s)).
	Tick time.Duration
	// Host, Pid and Version describe this process (defaults: the hostname,
	// the pid, "dev").
	Host    string
	Pid     int
	Version string
	// Exclusive says no other process can use the database (SQLite's file
	// lock): every other replica row is dead at start.
	Exclusive bool
	// Logger receives rebalancing events (default slog.Default()).
	Logger *slog.Logger
	// OnShards, when set, is called (on the replica's goroutine) after the
	// set of held shards changed.
	OnShards func(held int)
}

// Replica is this process as one of the orchestrators sharing a database.
type Replica struct {
	store registry.Store
	cfg   Config
	id    string
	log   *slog.Logger
	solo  bool

	mu sync.RWMutex
	// held are the leases this replica holds, valid until validUntil (a
	// monotonic reading). They are only ever set from a read made after a
	// successful heartbeat.
	held       map[int]registry.Lease
	validUntil time.Time
	// live are the replicas alive at the last read.
	live map[string]bool

	started  time.Time
	lastBeat time.Time
	// validity counts the times this replica's validity was lost (a
	// lapsed heartbeat, or a row found deleted): a rebalance that read
	// before such a loss must not install what it read.
	validity atomic.Uint64
	// generation counts the changes of the held set.
	generation atomic.Uint64
}

// New returns a Replica with a fresh id. Nothing is written until Start.
func New(store registry.Store, cfg Config) *Replica {
	if store == nil {
		panic("replica.New: store is required")
	}
	if cfg.TTL < 0 || cfg.Heartbeat < 0 || cfg.Tick < 0 {
		panic("replica.New: negative duration")
	}
	cfg.TTL = cmp.Or(cfg.TTL, 10*time.Second)
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, cfg.TTL/4)
	cfg.Tick = cmp.Or(cfg.Tick, min(cfg.TTL/10, time.Second))
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	cfg.Pid = cmp.Or(cfg.Pid, os.Getpid())
	cfg.Version = cmp.Or(cfg.Version, "dev")
	return &Replica{
		store:   store,
		cfg:     cfg,
		id:      uuid.NewString(),
		log:     cmp.Or(cfg.Logger, slog.Default()).With("component", "replica"),
		held:    map[int]registry.Lease{},
		live:    map[string]bool{},
		started: bap.Now(),
	}
}

// Solo returns a Replica that holds every shard without leases and is never
// registered: for a Manager used alone in tests and tools, where nothing
// else shares the database. Its leases fence nothing, and any claim it
// finds that is not its own counts as a dead replica's; so never give two
// Managers on one database a Solo replica each.
func Solo(store registry.Store) *Replica {
	r := New(store, Config{})
	r.solo = true
	for s := range Shards {
		r.held[s] = registry.Lease{Shard: s}
	}
	return r
}

// ID is this replica's id.
func (r *Replica) ID() string { return r.id }

// TTL is the liveness TTL.
func (r *Replica) TTL() time.Duration { return r.cfg.TTL }

// Valid reports whether this replica may act on its leases now: its last
// heartbeat is fresh enough that nobody can have declared it dead. An
// Exclusive replica stays valid from its first heartbeat until Deregister:
// no other process can open the database to take over, so a heartbeat
// delayed by a busy database (a burst of writes on SQLite) stops nothing.
func (r *Replica) Valid() bool {
	if r.solo {
		return true
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.freshLocked()
}

// freshLocked is Valid under r.mu.
func (r *Replica) freshLocked() bool {
	if r.cfg.Exclusive {
		return !r.validUntil.IsZero()
	}
	return time.Now().Before(r.validUntil)
}

// Lease returns the lease of the engine's shard if this replica holds it
// and is Valid.
func (r *Replica) Lease(engineID string) (registry.Lease, bool) {
	return r.ShardLease(ShardOf(engineID))
}

// ShardLease returns the lease of shard if this replica holds it and is
// Valid.
func (r *Replica) ShardLease(shard int) (registry.Lease, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	l, ok := r.held[shard]
	if !ok || (!r.solo && !r.freshLocked()) {
		return registry.Lease{}, false
	}
	return l, true
}

// Leader returns the lease that makes this replica the one that runs the
// once-only work, if it holds it.
func (r *Replica) Leader() (registry.Lease, bool) { return r.ShardLease(LeaderShard) }

// Held is how many shards this replica holds (while Valid).
func (r *Replica) Held() int {
	if !r.Valid() {
		return 0
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.held)
}

// Alive reports whether a replica is alive, asking the database; this
// replica is alive while Valid.
func (r *Replica) Alive(ctx context.Context, id string) (bool, error) {
	if id == r.id {
		return r.Valid(), nil
	}
	if id == "" {
		return false, nil
	}
	return r.store.ReplicaAlive(ctx, id, r.cfg.TTL)
}

// KnownAlive reports whether a replica was alive at the last rebalance (no
// database round trip; may be a Tick stale). Use Alive before acting on a
// "dead" answer.
func (r *Replica) KnownAlive(id string) bool {
	if id == r.id {
		return r.Valid()
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.live[id]
}

// Start registers the replica, declares dead the replicas it can prove
// dead (this host's, whose process is gone; every other one when
// Exclusive) and takes its first shards, so that work can begin at once.
// Call Run afterwards.
func (r *Replica) Start(ctx context.Context) error {
	if r.solo {
		return nil
	}
	if err := r.heartbeat(ctx); err != nil {
		return fmt.Errorf("register replica: %w", err)
	}
	if err := r.rebalance(ctx); err != nil {
		return fmt.Errorf("take shards: %w", err)
	}
	r.log.Info("replica registered", "replica_id", r.id, "host", r.cfg.Host, "pid", r.cfg.Pid,
		"shards", r.Held(), "ttl", r.cfg.TTL)
	return nil
}

// Run heartbeats and rebalances until ctx ends, and returns nil. The two
// run apart, each call bounded, so a rebalance slowed by a busy database
// never delays a heartbeat. It does not deregister: call Deregister once
// this process's operations are over.
func (r *Replica) Run(ctx context.Context) error {
	if r.solo {
		<-ctx.Done()
		return nil
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = loop.Run(ctx, loop.Config{Name: "replica heartbeat", Every: r.cfg.Heartbeat,
			MaxBackoff: r.cfg.Heartbeat, Timeout: r.cfg.Heartbeat, Logger: r.log}, r.heartbeat)
	})
	_ = loop.Run(ctx, loop.Config{Name: "replica rebalance", Every: r.cfg.Tick, MaxBackoff: r.cfg.Tick,
		Timeout: r.cfg.TTL / 2, Logger: r.log}, r.rebalance)
	wg.Wait()
	return nil
}

// Deregister ends this replica's part (a graceful stop): it drops every
// lease locally, then deletes its row and frees its leases, so the others
// take its shards at once. Call it after Run returned and once no operation
// of this process runs any more.
func (r *Replica) Deregister(ctx context.Context) {
	if r.solo {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r.mu.Lock()
	r.held = map[int]registry.Lease{}
	r.validUntil = time.Time{}
	r.mu.Unlock()
	if err := r.store.DeregisterReplica(ctx, r.id); err != nil {
		r.log.Warn("deregister replica", "replica_id", r.id, "err", err)
		return
	}
	r.log.Info("replica deregistered", "replica_id", r.id)
}

// heartbeat refreshes the replica's row and extends local validity from
// the moment it was sent. A row found gone means others declared this
// replica dead (and may have taken its work): everything held is dropped
// before the row is created again. A heartbeat after validity lapsed
// likewise forgets every lease; the next rebalance re-reads them.
func (r *Replica) heartbeat(ctx context.Context) error {
	sent := time.Now()
	err := r.store.HeartbeatReplica(ctx, r.id)
	if errors.Is(err, registry.ErrNotFound) {
		if !r.lastBeat.IsZero() {
			r.log.Warn("replica row gone (declared dead): dropping everything, registering again", "replica_id", r.id)
			r.invalidate()
		}
		sent = time.Now()
		err = r.store.RegisterReplica(ctx, bap.Replica{ID: r.id, Host: r.cfg.Host, Pid: r.cfg.Pid,
			Version: r.cfg.Version, StartedAt: r.started})
	}
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	r.mu.Lock()
	if !r.freshLocked() && len(r.held) > 0 {
		r.log.Warn("heartbeat lapsed: leases forgotten until re-read", "replica_id", r.id, "held", len(r.held))
		r.held = map[int]registry.Lease{}
		r.validity.Add(1)
		r.generation.Add(1)
	}
	r.validUntil = sent.Add(r.cfg.TTL * 3 / 4)
	r.lastBeat = sent
	r.mu.Unlock()
	return nil
}

// invalidate makes this replica hold nothing and act on nothing until its
// next successful heartbeat and rebalance.
func (r *Replica) invalidate() {
	r.mu.Lock()
	r.held = map[int]registry.Lease{}
	r.validUntil = time.Time{}
	r.validity.Add(1)
	r.generation.Add(1)
	r.mu.Unlock()
}

// rebalance reads liveness and leases, declares provably dead replicas
// dead, releases the shards this replica should give up and acquires those
// it should take.
func (r *Replica) rebalance(ctx context.Context) error {
	if !r.Valid() {
		return nil // nothing to do until a heartbeat gets through
	}
	validity := r.validity.Load()
	statuses, err := r.store.Replicas(ctx, r.cfg.TTL)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, st := range statuses {
		if st.ID == r.id {
			live[st.ID] = true
			continue
		}
		if st.Alive {
			dead, err := r.provablyDead(ctx, st.Replica)
			if err != nil {
				return err
			}
			if !dead {
				live[st.ID] = true
				continue
			}
		}
		forgotten := !st.Alive && time.Since(st.HeartbeatAt) > forgetAfter*r.cfg.TTL
		if st.Alive || r.cfg.Exclusive || forgotten {
			if !forgotten {
				r.log.Warn("replica declared dead: its process is gone", "dead_replica", st.ID, "host", st.Host, "pid", st.Pid)
			}
			if err := r.store.DeregisterReplica(ctx, st.ID); err != nil {
				return err
			}
		}
	}
	ids := make([]string, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	leases, err := r.store.Leases(ctx)
	if err != nil {
		return err
	}
	current := make(map[int]registry.Lease, Shards)
	for _, l := range leases {
		current[l.Shard] = l
	}
	held := map[int]registry.Lease{}
	var give []registry.Lease
	var want []int
	for s := range Shards {
		mine := Owner(s, ids) == r.id
		l := current[s]
		switch {
		case l.ReplicaID == r.id && mine:
			held[s] = l
		case l.ReplicaID == r.id:
			give = append(give, l)
		case mine && (l.ReplicaID == "" || !live[l.ReplicaID]):
			want = append(want, s)
		}
	}
	// Give up first, locally then in the database: nobody takes a shard
	// while this replica may still act on it.
	if !r.setHeld(validity, held, live) {
		return nil
	}
	for _, l := range give {
		if err := r.store.ReleaseLease(ctx, l); err != nil {
			return err
		}
	}
	for _, s := range want {
		l, took, err := r.store.AcquireLease(ctx, s, r.id, r.cfg.TTL)
		if err != nil {
			return err
		}
		if took {
			held[s] = l
		}
	}
	if len(give) > 0 || len(want) > 0 {
		r.log.Info("shards rebalanced", "replica_id", r.id, "released", len(give), "acquired", len(want),
			"held", len(held), "replicas", len(ids))
	}
	r.setHeld(validity, held, live)
	return nil
}

// setHeld installs what a rebalance read, unless this replica's validity
// was lost since the read began (it reports false then).
func (r *Replica) setHeld(validity uint64, held map[int]registry.Lease, live map[string]bool) bool {
	r.mu.Lock()
	if r.validity.Load() != validity {
		r.mu.Unlock()
		return false
	}
	changed := len(held) != len(r.held)
	for s, l := range held {
		if r.held[s] != l {
			changed = true
		}
	}
	r.held = maps(held)
	r.live = live
	r.mu.Unlock()
	if changed {
		r.generation.Add(1)
		if r.cfg.OnShards != nil {
			r.cfg.OnShards(len(held))
		}
	}
	return true
}

// Generation changes whenever the set of shards this replica holds
// changes, so loops that filter engines by shard know to re-read at once.
func (r *Replica) Generation() uint64 { return r.generation.Load() }

func maps(m map[int]registry.Lease) map[int]registry.Lease {
	out := make(map[int]registry.Lease, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// provablyDead reports whether another replica's process is known to be
// gone before its TTL says so: its heartbeat has been quiet for more than a
// heartbeat period and a half, and its session on the database ended (the
// connection a process holds until it dies). A replica frozen or cut off
// keeps its session, and only its TTL ends it. With an exclusive database
// every other replica is dead.
func (r *Replica) provablyDead(ctx context.Context, other bap.Replica) (bool, error) {
	if r.cfg.Exclusive {
		return true, nil
	}
	return r.store.ReplicaGone(ctx, other.ID, r.cfg.Heartbeat*3/2)
}

// Owner is the replica (of ids, the live set) that should hold shard:
// rendezvous hashing, so every replica computes the same answer from the
// same set and a change of the set moves only the shards it must. "" when
// ids is empty.
func Owner(shard int, ids []string) string {
	var best string
	var bestScore uint64
	for _, id := range ids {
		h := fnv.New64a()
		_, _ = h.Write([]byte(id))
		score := mix(h.Sum64() ^ (uint64(shard)+1)*0x9e3779b97f4a7c15)
		if best == "" || score > bestScore || (score == bestScore && id < best) {
			best, bestScore = id, score
		}
	}
	return best
}

// mix is SplitMix64's finalizer: every input bit moves every output bit, so
// scores of one replica across shards are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
