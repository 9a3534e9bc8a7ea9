// Package engine is the reference engine served by `bap-engine engine`: a
// small but real single-tenant agent server that honours the engine contract
// (SPEC §3). It is what the dev mode, the tests, the benchmarks and the test
// docker image run: as `bap-engine engine`, or built alone
// (internal/engine/standalone) where many engines start, as in the tests.
//
// Contract, as implemented here:
//   - GET /health needs no key and answers 200 {"status":"ok",...} only while
//     the brain is open and the engine is not shutting down; 503 otherwise.
//   - Every other request needs X-Engine-Key with
//     sha256_hex(key) == ENGINE_KEY_HASH (compared in constant time); else 401.
//   - The brain is a SQLite file at SQLITE_DB_PATH: a counter and the notes
//     written by POST /execute, which survive restarts.
//   - CATALOG_DIR is only read (GET /catalog lists it).
//   - ENGINE_VERSION (what the orchestrator runs it as) is reported by
//     /health; when ENGINE_REFUSE_VERSIONS (comma-separated) names it, the
//     engine refuses to serve: /health answers 503 {"status":"refused",
//     "reason":...}, so an upgrade to that version fails and is rolled back.
//   - Cancelling Run's context (SIGTERM in the command) stops accepting
//     connections, lets in-flight requests (including streams) finish within
//     a bound, closes the brain and returns.
//
// Routes: GET /health, GET /brain, POST /execute (JSON or server-sent
// events), GET /catalog. Nothing here knows about the orchestrator.
package engine
