// Package policy turns a product's policy (bap.Policy) into decisions: the
// pure helpers that read the limits, and the in-memory sliding-window rate
// limiter that discovery consults on every admit (SPEC §6).
//
// What belongs here: decisions that need no database and no backend. The
// max_engines check is atomic with the insert of the engine row, so it is
// enforced by the registry (registry.Quota) through lifecycle, not here.
//
// The limiter is per process, as in the original: with P orchestrator
// processes a product may get up to P × rate_limit_rpm admits per minute.
package policy
