// Package health keeps running engines healthy (SPEC §7, §8): the Checker
// probes every running engine's GET /health on its own schedule, records the
// results in batches, marks an engine failed after consecutive failures and
// schedules its automatic restarts with exponential backoff; the
// IdleSweeper puts engines nobody admitted for a while to sleep.
//
// What belongs here: the loops, their scheduling and their statistics. What
// does not: state changes themselves, which are lifecycle's (MarkFailed,
// AutoRestart, Sleep), and any backend call — health never imports backend.
// Failure counters and restart times live in the engine rows, so an
// orchestrator restart continues where the previous process stopped.
//
// With several replicas (SPEC §15) each probes, restarts and puts to sleep
// only the engines of the shards it holds (lifecycle.Manager.Replica), and
// its results are fenced by the shard's lease: a batch written after the
// shard moved away is dropped, so the fleet sees one probe per interval
// whatever the number of replicas, and a replica that was frozen cannot
// fail an engine it no longer watches.
//
// Scheduling: each engine is probed once per Interval at a fixed phase
// derived from its id, so a large fleet is spread evenly over the interval
// instead of being swept in one burst. At most MaxInFlight probes run at
// once, each bounded by Timeout; a hanging engine holds one slot for at most
// Timeout and never moves the others' due times. With the defaults (50
// slots, 30 s interval, 10 s timeout) up to 150 engines may hang in every
// interval before probes start running late. Probe starts are batched per
// small quantum, results are written in batches, and the probed set is
// re-read about every second (less often for a fleet whose read is slow).
//
// The restart scheduler reads failed engines at least every RestartPoll and
// sleeps until the earliest next_restart_at; Kick (the crash watch's
// callback) wakes it at once. Attempts run concurrently, bounded, and never
// wait for probes.
//
// BenchmarkSweep10k and BenchmarkSweep10kBurst measure a 10,000-engine
// fleet (100 hanging) on both stores:
//
//	go test -run '^$' -bench Sweep10k -benchtime 1x ./internal/health/
//
// BenchmarkReplicas10k probes such a fleet with one, then three replica
// processes and counts the probes at the engines:
//
//	go test -run '^$' -bench Replicas10k -benchtime 1x ./internal/health/
package health
