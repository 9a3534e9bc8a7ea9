// Package config reads bap-engine's settings from the environment.
//
// Every variable (the ORCH_* names of the original implementation, the ones
// added since, and DOCKER_HOST) is declared once in a table with its name,
// default, help text and parser; Vars exposes the table so the README and the
// CLI print the same list. Load parses them all and reports every bad value at
// once, each error naming its variable; values of secret variables are never
// repeated in errors. Requirements that depend on the command (serve needs a
// database and both keys) are checked by Config.ValidateServe.
//
// It is a leaf: it imports no other bap-engine package. Turning a Config into
// the per-component settings of the store, backends and loops is the job of
// cmd/bap-engine.
package config
