// Package lifecycle is the engine state machine and the only caller of a
// backend.Backend. Every transition updates the engine row and appends its
// audit entry in one registry transaction, through one commit path that
// refuses any change the transition table does not allow.
//
// States and transitions (SPEC §5):
//
//	             provision ok              idle sweep
//	provisioning ───────────► running ◄──────────────► sleeping
//	     │                    │  ▲  ▲        wake          │
//	     │ boot timeout/error │  │  └──── start ───────┐   │ stop
//	     ▼                    │  │                     │   ▼
//	   failed ◄── health / ───┘  └─── start ──────── stopped
//	     │        engine died              ◄── stop ──┘
//	     └── auto-restart ok ──► running
//
//	any state ── destroy ──► destroying ──► (row deleted, port freed)
//
// Transition table (bap.CanTransition holds it):
//
//	from          to
//	provisioning  running, failed, destroying
//	running       sleeping, stopped, failed, destroying, running (rotate-key)
//	sleeping      running, stopped, failed, destroying
//	stopped       running, failed, destroying
//	failed        running, failed (restart attempt failed), stopped, destroying
//	destroying    (row deleted)
//
// Upgrade (upgrade.go, SPEC §16) moves a running, sleeping or stopped
// engine to another image on the same brain, key and port: stop, snapshot
// the brain (backend.Snapshot), recreate with the new image, wait healthy;
// on failure restore the snapshot under the old image. It ends where it
// began (a sleeping engine ends running), or failed if even the old image
// does not come back. Its phase and snapshot ride on the claim's detail,
// so a takeover finishes it (the new image answers) or rolls it back.
//
// Operations are owned in the database (SPEC §15, claim.go). Each
// operation (provision, start, wake, stop, sleep, rotate-key, upgrade,
// destroy, auto-restart, and the takeover of another's) claims the engine's row —
// operation, replica id, next epoch — in the transaction that begins it;
// every later write re-reads the row under its lock and goes ahead only
// under that claim; the last write ends it. Within a process, callers of the
// same operation also join one in-memory flight (flight.go). A caller on
// another replica waits for the claim to end, then gets the same outcome
// when it was the same operation (a start that brought the engine up, a
// stop, a rotation's key, a destroy) or runs its own. Every backend call of
// an operation first checks that the claim still holds and that this
// replica's heartbeat is fresh, so a replica that lost its claim (frozen or
// cut off past its TTL) fails rather than act.
//
// Background work is the shard holder's (internal/replica): restarts,
// sleeps, marking engines failed and per-engine reconciliation run only for
// the engines of the shards this replica holds, and their claims and writes
// are fenced by the shard's lease. The orphan sweep and orphan ports run on
// the holder of the leader shard.
//
// Takeover (takeover.go): a claim whose replica is dead is finished or
// failed by the shard's holder within a second of its death being known
// (the TTL, or at once for a process of this host that is gone), and by any
// caller that needs the engine. Reconcile, at start and every minute, does
// the same for rows left in provisioning or destroying without a claim,
// fails running rows whose instance is gone, and removes instances that
// have no row: at once when the replica that created them (their label) is
// dead, after OrphanGrace otherwise.
//
// Invariants:
//   - A row in provisioning or destroying carries the claim of the
//     operation that put it there, until that operation (or a takeover)
//     ends.
//   - max_engines and max_running are checked in the transaction that
//     inserts or claims the engine, with the product's row locked.
//   - An engine's port is allocated in port_allocations from insert until
//     its row is deleted; a failed provision keeps its row and port so the
//     operator can see it, until destroyed.
//   - No plaintext engine key is stored or logged; the registry holds its
//     SHA-256 and its Fernet token.
//   - A backend that cannot be reached (backend.ErrUnavailable) never makes
//     an engine failed: the operation reports 503 and the state is kept.
//   - Operations run detached from the caller's context, bounded by
//     OpTimeout, so a caller that goes away never leaves a half-made engine;
//     Close waits for them.
package lifecycle
