// Package servertest builds, for tests, the orchestrator's world above the
// backend: a caller's store, the fault-injecting fake backend (or another
// backend), a Fernet sealer, the replica, a lifecycle Manager on test
// defaults, a settable clock and products with real platform keys (World);
// and, for the packages that test through HTTP, that world served whole —
// discovery, rollouts, optional metrics and dashboard, the API handler on
// httptest and a client with the admin key (Server).
//
// It is for _test files only (archtest keeps non-test code off it): it
// names the fake backend, which only lifecycle may drive. What is peculiar
// to one package's tests (store wrappers for fault injection, backends that
// signal a subscription, a subprocess engine) stays in that package's tests,
// layered on World through the options.
package servertest
