// Package registry defines the Store: the durable record of products, engines,
// port allocations and the audit log. Implementations live in postgres/ and
// sqlite/; registrytest holds the conformance suite both pass. A Store has no
// side effects beyond its database and the changes it reports to its
// watchers (Watcher): it never calls a backend.
package registry

import (
	"context"
	"errors"
	"time"

	"github.com/september/bap-engine/internal/audit"
	"github.com/september/bap-engine/internal/bap"
)

// Errors returned by every Store implementation (wrapped with context).
var (
	// ErrNotFound: the row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique constraint was hit (slug, (product_id,user_id), port).
	ErrConflict = errors.New("conflict")
	// ErrQuotaExceeded: ProvisionEngine refused because the product is at a limit.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrPortExhausted: no free port in the requested range.
	ErrPortExhausted = errors.New("port range exhausted")
	// ErrUnavailable: the database cannot be reached.
	ErrUnavailable = errors.New("database unavailable")
	// ErrFenced: a write was refused because the writer no longer holds
	// the shard lease it named (CheckLease).
	ErrFenced = errors.New("lease lost")
)

// Quota bounds ProvisionEngine. Zero means no limit.
type Quota struct {
	// MaxEngines counts the product's engines in any state.
	MaxEngines int
	// MaxRunning counts the product's engines that hold a running slot
	// (see CountRunning).
	MaxRunning int
}

// EngineFilter selects engines for ListEngines.
type EngineFilter struct {
	ProductID string    // required
	Status    bap.State // empty: any
	Limit     int       // 0: no limit
	Offset    int
}

// AuditFilter selects audit rows, newest first.
type AuditFilter struct {
	ProductID string // empty: any
	EngineID  string // empty: any
	UserID    string // empty: any
	Actions   []audit.Action
	Since     time.Time // zero: no lower bound
	Limit     int       // 0: no limit
	Offset    int
}

// AuditStats are the per-product aggregates GET /metrics shows.
type AuditStats struct {
	ProvisionsSince int
	CrashesSince    int // actions in audit.CrashActions
	RestartsSince   int // auto_restart_start
	AvgBootMSSince  float64
	TotalProvisions int
	TotalDestroys   int
}

// HealthResult is one probe outcome for RecordHealth.
type HealthResult struct {
	EngineID string
	OK       bool
	// At is when the outcome was known (last_health_at of a success).
	At time.Time
	// Sent is when the probe was sent. A failure counts only if the
	// engine's row was last updated no later: a probe that an operation
	// (a stop, a wake, a new key; in this process or another) overtook
	// says nothing about the engine as it is now. Zero: it always counts.
	// A failure never counts while an operation is claimed on the engine
	// or when it is in neither running nor sleeping.
	Sent time.Time
	// Lease, when its ReplicaID is set, fences the result: it is applied
	// only while that replica holds the engine's shard with that epoch.
	Lease Lease
}

// Lease is a replica's hold on one shard of the engines (SPEC §15). Epoch
// grows with every change of holder; it is the fencing token of the
// background work done on the shard's engines.
type Lease struct {
	Shard     int
	ReplicaID string // empty: nobody holds the shard
	Epoch     int64
}

// ReplicaStatus is a registered replica as Replicas reports it.
type ReplicaStatus struct {
	bap.Replica
	// Alive: its heartbeat is younger than the TTL, by the database's clock.
	Alive bool
	// Shards is how many shard leases it holds.
	Shards int
}

// PortAllocation is one row of port_allocations.
type PortAllocation struct {
	Port      int
	EngineID  string
	CreatedAt time.Time
}

// Store is the registry. Every method may return ErrUnavailable when the
// database cannot be reached. Methods called on the Store given to an InTx
// callback run in that transaction; elsewhere each method is atomic on its own.
type Store interface {
	// InTx runs fn in one transaction, committed if fn returns nil and rolled
	// back otherwise (also when ctx is cancelled). Nested InTx joins the outer
	// transaction.
	InTx(ctx context.Context, fn func(tx Store) error) error
	// Ping checks the database is reachable and migrated.
	Ping(ctx context.Context) error
	// Close releases the connections.
	Close() error
	// Watcher: every store reports its changes, for caches that drop rows
	// when they change (WatchChanges).
	Watcher

	// CreateProduct inserts p (ID and CreatedAt set by the caller) and the
	// audit entry. ErrConflict when the slug exists.
	CreateProduct(ctx context.Context, p bap.Product, e audit.Entry) error
	// GetProduct returns a product by id. ErrNotFound.
	GetProduct(ctx context.Context, id string) (bap.Product, error)
	// GetProductBySlug returns a product by slug. ErrNotFound.
	GetProductBySlug(ctx context.Context, slug string) (bap.Product, error)
	// GetProductByKeyHash returns the product whose current key hash is h, or
	// whose previous key hash is h and still valid at now. ErrNotFound.
	GetProductByKeyHash(ctx context.Context, h string, now time.Time) (bap.Product, error)
	// ListProducts returns every product ordered by slug.
	ListProducts(ctx context.Context) ([]bap.Product, error)
	// UpdatePolicy replaces a product's policy and appends e. ErrNotFound.
	UpdatePolicy(ctx context.Context, productID string, p bap.Policy, e audit.Entry) (bap.Product, error)
	// RotateProductKey makes newHash the current key hash, keeps the old one
	// valid until graceUntil, and appends e. ErrNotFound.
	RotateProductKey(ctx context.Context, productID, newHash string, graceUntil time.Time, e audit.Entry) error

	// AdmitLookup authenticates and finds in one round trip: the product whose
	// key hash (current, or previous within grace at now) is keyHash, and its
	// engine for userID (nil when none). ErrNotFound when no product matches.
	AdmitLookup(ctx context.Context, keyHash, userID string, now time.Time) (bap.Product, *bap.Engine, error)

	// ProvisionEngine allocates the lowest free port in [portMin, portMax]
	// for e and inserts e on it (e.Port is ignored), only if the product is
	// under q: one atomic step, which also holds the port allocation's
	// serialization for as short a time as the database allows (PostgreSQL:
	// one round trip). It returns the port. ErrQuotaExceeded, ErrConflict
	// (engine for that user exists), ErrPortExhausted; nothing is left
	// behind on an error.
	ProvisionEngine(ctx context.Context, e bap.Engine, q Quota, portMin, portMax int) (int, error)
	// CountRunning counts the product's engines that hold a running slot
	// for max_running: those running, sleeping or provisioning, those failed
	// with a restart scheduled (they keep their slot on the restart path),
	// and those stopped or failed with a start, wake or auto-restart
	// claimed. Inside
	// InTx it first locks the product row, so that a check and the claim
	// that follows are atomic against other replicas' checks.
	CountRunning(ctx context.Context, productID string) (int, error)
	// ListPortAllocations returns all allocations ordered by port.
	ListPortAllocations(ctx context.Context) ([]PortAllocation, error)
	// FreeOrphanPorts deletes allocations whose engine row does not exist and
	// returns how many it freed.
	FreeOrphanPorts(ctx context.Context) (int, error)

	// GetEngine returns an engine by id. ErrNotFound.
	GetEngine(ctx context.Context, id string) (bap.Engine, error)
	// GetEngineByUser returns the product's engine for userID. ErrNotFound.
	GetEngineByUser(ctx context.Context, productID, userID string) (bap.Engine, error)
	// LockEngine re-reads an engine holding a row lock until the transaction
	// ends (inside InTx; SQLite's single writer makes the lock implicit).
	// ErrNotFound.
	LockEngine(ctx context.Context, id string) (bap.Engine, error)
	// UpdateEngine writes every mutable column of e (status, port, key hash,
	// key token, image, url, instance id, boot duration, counters, times,
	// failure reason, claim; UpdatedAt is set to now) and appends entries,
	// atomically. ErrNotFound.
	UpdateEngine(ctx context.Context, e bap.Engine, entries ...audit.Entry) error
	// DeleteEngine deletes the engine row, frees its port and appends entries,
	// atomically. ErrNotFound.
	DeleteEngine(ctx context.Context, id string, entries ...audit.Entry) error
	// ListEngines returns a page of a product's engines ordered by
	// (created_at, id) and the total matching the filter.
	ListEngines(ctx context.Context, f EngineFilter) ([]bap.Engine, int, error)
	// ListFleet returns a page of engines of every product (or of
	// f.ProductID) with their product's slug, in f's order, and the total
	// matching the filter.
	ListFleet(ctx context.Context, f FleetFilter) ([]FleetEngine, int, error)
	// EnginesByStatus returns every engine (all products) in one of states,
	// ordered by id.
	EnginesByStatus(ctx context.Context, states ...bap.State) ([]bap.Engine, error)
	// EnginesInOperation returns every engine with a claimed operation,
	// ordered by id.
	EnginesInOperation(ctx context.Context) ([]bap.Engine, error)
	// CountByStatus counts a product's engines per state (all products when
	// productID is empty). States with no engine are absent.
	CountByStatus(ctx context.Context, productID string) (map[bap.State]int, error)
	// CountByProductStatus counts engines per product slug and state (fleet
	// metrics).
	CountByProductStatus(ctx context.Context) (map[string]map[bap.State]int, error)
	// TouchActive sets last_active_at = at for the engines (coalesced admits).
	TouchActive(ctx context.Context, engineIDs []string, at time.Time) error
	// RecordHealth applies a batch of probe results in one transaction: a
	// success sets last_health_at and zeroes health_failures; a failure
	// increments health_failures unless the row was updated after the
	// probe was sent (HealthResult.Sent), an operation is claimed on it, or
	// it is neither running nor sleeping. A result whose Lease is no longer
	// held is dropped. Engines that vanished are skipped.
	RecordHealth(ctx context.Context, results []HealthResult) error

	// RegisterReplica records r as a live replica (heartbeat now, by the
	// database's clock), replacing a row with the same id, and opens the
	// replica's session: a hold on the database that lasts while this Store
	// (this process) is connected, and ends with it however it ends (see
	// ReplicaGone).
	RegisterReplica(ctx context.Context, r bap.Replica) error
	// HeartbeatReplica sets the replica's heartbeat to now, through its
	// session (re-opened if it was lost), never waiting for the connections
	// other work uses. ErrNotFound when its row is gone (it was declared
	// dead and removed).
	HeartbeatReplica(ctx context.Context, id string) error
	// DeregisterReplica deletes the replica's row, frees the leases it
	// holds and ends its session. Missing is not an error.
	DeregisterReplica(ctx context.Context, id string) error
	// ReplicaGone reports whether a replica's process is provably gone: its
	// heartbeat is older than quiet (or it has no row) and no session holds
	// its place on the database any more (its connection was closed by its
	// death). A replica frozen or cut off with its connection open is not
	// gone: only its TTL ends it.
	ReplicaGone(ctx context.Context, id string, quiet time.Duration) (bool, error)
	// Replicas lists the registered replicas ordered by id, each alive
	// when its heartbeat is younger than ttl by the database's clock.
	Replicas(ctx context.Context, ttl time.Duration) ([]ReplicaStatus, error)
	// ReplicaAlive reports whether the replica's heartbeat is younger than
	// ttl; a replica without a row is not alive.
	ReplicaAlive(ctx context.Context, id string, ttl time.Duration) (bool, error)
	// Leases returns every shard lease ever taken, ordered by shard.
	Leases(ctx context.Context) ([]Lease, error)
	// AcquireLease gives shard to replicaID with the next epoch when nobody
	// holds it or its holder is not alive (ttl); it returns the lease and
	// true, or the current lease and false when a live replica holds it
	// (replicaID itself included).
	AcquireLease(ctx context.Context, shard int, replicaID string, ttl time.Duration) (Lease, bool, error)
	// ReleaseLease frees l's shard if l is still its lease.
	ReleaseLease(ctx context.Context, l Lease) error
	// CheckLease returns ErrFenced unless l is the shard's current lease.
	// Inside InTx the lease is locked against change until the
	// transaction ends, so the writes that follow are fenced by it.
	CheckLease(ctx context.Context, l Lease) error

	// CreateRollout inserts r (ID and times set by the caller) and appends
	// e. ErrConflict when the product has a rollout under way (running or
	// paused); ErrNotFound when the product does not exist.
	CreateRollout(ctx context.Context, r bap.Rollout, e audit.Entry) error
	// GetRollout returns a rollout by id. ErrNotFound.
	GetRollout(ctx context.Context, id string) (bap.Rollout, error)
	// ListRollouts returns a product's rollouts, newest first.
	ListRollouts(ctx context.Context, productID string) ([]bap.Rollout, error)
	// RolloutsInState returns every rollout in one of states, oldest first.
	RolloutsInState(ctx context.Context, states ...bap.RolloutState) ([]bap.Rollout, error)
	// UpdateRollout writes r's percent, state, reason and failure base (UpdatedAt is set
	// to now) and appends entries, atomically. ErrNotFound.
	UpdateRollout(ctx context.Context, r bap.Rollout, entries ...audit.Entry) error
	// SetRolloutEngine records (inserts or replaces) a rollout's outcome
	// for one engine; UpdatedAt is set to now. ErrNotFound when the rollout
	// does not exist.
	SetRolloutEngine(ctx context.Context, re bap.RolloutEngine) error
	// RolloutEngines returns the outcomes a rollout recorded, by engine id.
	RolloutEngines(ctx context.Context, rolloutID string) ([]bap.RolloutEngine, error)

	// AppendAudit inserts entries (Timestamp zero means now).
	AppendAudit(ctx context.Context, entries ...audit.Entry) error
	// ListAudit returns matching entries newest first (timestamp desc, id
	// desc) and the total matching.
	ListAudit(ctx context.Context, f AuditFilter) ([]audit.Entry, int, error)
	// AuditStats computes /metrics aggregates for a product since a time.
	AuditStats(ctx context.Context, productID string, since time.Time) (AuditStats, error)
	// AuditHourly counts the entries of actions since a time per hour and
	// action, for one product (all when productID is empty), ordered by
	// hour then action. Hours and actions without entries are absent.
	AuditHourly(ctx context.Context, productID string, since time.Time, actions []audit.Action) ([]AuditHour, error)
	// AuditDurations counts the entries of action since a time by
	// duration_ms, for one product (all when productID is empty): counts[i]
	// holds durations below boundsMS[i] and at or above boundsMS[i-1], and
	// counts[len(boundsMS)] those at or above the last bound. boundsMS
	// ascends. Entries without a duration are not counted.
	AuditDurations(ctx context.Context, productID string, action audit.Action, since time.Time, boundsMS []int64) ([]int, error)
	// PruneAudit deletes entries older than before and returns how many.
	PruneAudit(ctx context.Context, before time.Time) (int64, error)
}
