// Package metrics is the Prometheus exposition of the orchestrator: engines
// by product slug and state, latency histograms of admits, lifecycle
// operations and boots, and counters of probe failures and restarts. It uses
// its own registry (never the global one) and imports no internal package:
// the composition root hands it a snapshot function for engine counts and a
// product-id→slug lookup. Its Operation and Boot methods match
// lifecycle.Observer, so a *Metrics can be given to the lifecycle Manager
// directly.
//
// Labels are product slugs, operation names and outcomes: never a user id
// or an engine id, which would make the series count grow with the fleet.
package metrics
