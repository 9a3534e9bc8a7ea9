// Package docker runs engines as Docker containers through the Docker Engine
// API (github.com/moby/moby/client). With its test helper dockertest, it is
// the only package that imports the Docker client.
//
// What belongs here: container, volume and network handling for one engine
// each (SPEC §10), the die-event watcher (SPEC §8) and the translation of
// daemon errors into the backend error classes (classify, the single place).
// What does not: engine state, ports, keys, policies — callers hand them in
// through backend.Spec.
//
// Every object the package creates carries the backend.Label* labels, and
// List and Events only ever see containers labelled with this deployment, so
// two orchestrators sharing a daemon never touch each other's engines.
//
// Files: docker.go (Config, New, names and URLs), network.go (the engine
// network), create.go (image, volume and container creation, adoption of a
// matching container), control.go (start, stop, pause, remove, destroy),
// inspect.go (Inspect, List, status), events.go (die events), logs.go,
// snapshot.go (brain snapshots by a helper container), errors.go (classify).
package docker
