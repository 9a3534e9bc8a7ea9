// Package discovery is admit: the call a product makes on every user
// request to get the user's engine URL and key (SPEC §5, "Admit"). It is the
// only place that auto-provisions.
//
// The flow of Service.Admit (its user_id is a bap.UserID, parsed at the
// API's edge):
//
//	lookup: the product by key hash and its engine for the user, from
//	  memory when both are cached, else one query (AdmitLookup, or the
//	  engine alone when the product is cached)
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
// The caches. Authenticated products are kept for ProductTTL (1 s), and
// running engines for EngineTTL (5 s, ORCH_ADMIT_CACHE_S), so an admit of a
// running engine seen recently costs no database round trip at all. The
// engine cache is on only while Run watches the store's change feed
// (registry.Watcher): every write of this process, and through PostgreSQL
// LISTEN/NOTIFY every commit of another process, that changes an engine's
// status, port, address, image or keys drops the engine before anyone is
// admitted to it again; a product's policy or key change drops the
// product. When the feed is lost (the listening connection failed or went
// quiet past its heartbeat), both caches are emptied and the engine cache
// stays off until the feed is back, so admits read the database again. A
// read that raced with a reported change is never cached: a generation
// count taken before the read must still hold when the row is stored. The
// TTL only bounds the age of informational fields (last_health_at).
//
// What else stays off the hot path (an admit of an uncached running engine
// costs one database query and, on a key-cache miss, one Fernet
// decryption):
// last_active_at is recorded in memory and written in batches by Run, at
// most once per engine per TouchInterval; admit_denied audit rows are
// sampled to at most one per engine (or product and user, when there is no
// engine) per DenySampleInterval.
//
// What does not belong here: engine transitions and backend calls
// (lifecycle), HTTP shapes (api), the rate limiter itself (policy).
package discovery
