// Package loadtest measures request throughput and latency under
// concurrent load, and holds the admit-throughput benchmark of the
// orchestrator.
//
// Run is a closed-loop load generator: a fixed number of clients each issue
// one request after another for a fixed time, and the Result reports the
// rate and latency quantiles of the requests that succeeded. It knows
// nothing of HTTP or databases, so it may sit beside the packages it
// measures without importing a driver or a backend.
//
// The benchmark itself is TestAdmitThroughput (admit_test.go): the real HTTP
// API on a loopback listener over PostgreSQL (and SQLite), admitting users
// whose engines are running, compared with bare PostgreSQL point-selects at
// the same client count. Without BAP_LOADTEST=1 it runs as a short smoke
// test that checks every admit succeeds and reports no targets; with it:
//
//	BAP_LOADTEST=1 go test -count=1 -run TestAdmitThroughput -v ./internal/loadtest/
//
// BAP_LOADTEST_DURATION (default 10s), BAP_LOADTEST_CLIENTS (default 32)
// and BAP_LOADTEST_ENGINES (default 1000) tune the full run. Figures and
// their interpretation are in BENCHMARKS.md.
package loadtest
