// Package loadtest measures request throughput and latency under
// concurrent load, and holds the admit-throughput benchmark of the
// orchestrator.
//
// Run is the load generator: a fixed number of clients issue requests for
// a fixed time, either closed loop (each client sends its next request as
// soon as the previous one returned: the saturated throughput) or paced at
// a total rate (open loop, latency counted from when a request was due, so
// queueing is not hidden). The Result reports the rate and latency
// quantiles of the requests that succeeded; Merge pools results measured in
// slices. Conns are lean keep-alive HTTP/1.1 connections for the clients,
// so that a load generator sharing the machine with the server takes as
// little CPU as it can. The package imports no driver or backend, so it
// sits beside the packages it measures.
//
// The benchmark itself is TestAdmitThroughput (admit_test.go): the real HTTP
// API on a loopback listener over PostgreSQL, admitting users whose engines
// are running, interleaved in 2-second slices with the same admits with the
// engine cache off, the same admits sent by net/http's client, discovery's
// query alone, a bare net/http server (what HTTP alone costs) and bare
// PostgreSQL point-selects at the same client count; then admits paced
// below saturation, and the same admits over SQLite. Beside rates and latencies
// it reports the CPU time this process and the PostgreSQL server spent per
// request, which does not depend on what else the machine is running.
// Without BAP_LOADTEST=1 it runs as a short smoke test that checks every
// request succeeds and evaluates no targets; with it:
//
//	BAP_LOADTEST=1 go test -count=1 -run TestAdmitThroughput -v ./internal/loadtest/
//
// BAP_LOADTEST_DURATION (default 10s), BAP_LOADTEST_CLIENTS (default 32),
// BAP_LOADTEST_ENGINES (default 1000) and BAP_LOADTEST_PACE (requests per
// second of the paced run; default half the measured admit rate) tune the
// full run. Add -cpuprofile and read it with pprof -tagfocus
// part=http-server (or admit-client, lookup-client, select-client,
// floor-client, floor-server) to see one side alone. Figures and their
// interpretation are in BENCHMARKS.md.
package loadtest
