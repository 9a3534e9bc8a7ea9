// Package lifecycle is the engine state machine and the only caller of a
// backend.Backend. Every transition updates the engine row and appends its
// audit entry in one registry transaction; transitions of one engine are
// serialized, and a caller of an operation already in flight for that engine
// joins it and gets its result.
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
// Invariants:
//   - A row in provisioning or destroying has an operation in flight, or is
//     finished by reconciliation after a crash.
//   - An engine's port is allocated in port_allocations from insert until its
//     row is deleted; a failed provision keeps its row and port so the
//     operator can see it, until destroyed.
//   - No plaintext engine key is stored or logged; the registry holds its
//     SHA-256 and its Fernet token.
//   - A backend that cannot be reached (backend.ErrUnavailable) never makes
//     an engine failed: the operation reports 503 and the state is kept.
//   - Operations run detached from the caller's context (bounded by their own
//     timeouts), so a caller that goes away never leaves a half-made engine.
package lifecycle
