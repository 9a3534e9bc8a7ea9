// Package discovery is admit: the call a product makes on every user
// request to get the user's engine URL and key (SPEC §5, "Admit"). It is the
// only place that auto-provisions.
//
// The flow of Service.Admit:
//
//	validate user_id (422)
//	→ AdmitLookup: product by key hash + its engine for the user, one query
//	  (no product: 401 INVALID_PLATFORM_KEY)
//	→ rate limit (policy.Limiter, rate_limit_rpm; 429 RATE_LIMITED)
//	→ by the engine's state:
//	    none          auto_provision ? provision (joins one in flight) : deny engine_not_found
//	    sleeping      auto_wake ? wake : deny engine_sleeping
//	    stopped       auto_wake ? wake : deny engine_stopped
//	    provisioning  wait for it, then decide on the state it reaches
//	    failed        deny engine_unhealthy
//	    destroying    deny engine_busy
//	    running       admit
//
// A denial or an error gives the rate-limit slot back. A provision that lost
// the race to insert the row (another caller or process) re-reads the engine
// and continues with it, so any number of concurrent auto-provision admits
// for a new user share one engine.
//
// What stays off the hot path (an admit of a running engine costs one
// database query and, on a key-cache miss, one Fernet decryption):
// last_active_at is recorded in memory and written in batches by Run, at
// most once per engine per TouchInterval; admit_denied audit rows are
// sampled to at most one per engine (or product and user, when there is no
// engine) per DenySampleInterval.
//
// What does not belong here: engine transitions and backend calls
// (lifecycle), HTTP shapes (api), the rate limiter itself (policy).
package discovery
