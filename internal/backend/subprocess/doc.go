// Package subprocess is the Backend that runs each engine as a local process
// (dev mode and tests; SPEC §10). It is, with docker/, the only place that
// starts engine processes.
//
// Layout: every engine owns DataRoot/<engine_id>/, holding
//   - spec.json   what Create was given (port, key hash, labels, created_at);
//     its presence is what makes an instance exist,
//   - engine.pid  the running (or last) process: pid, its start time in clock
//     ticks (/proc/<pid>/stat field 22) and, once known, how it exited,
//   - engine.log  the engine's stdout and stderr (rotated once at 10 MiB),
//   - brain.sqlite the engine's brain (SQLITE_DB_PATH), kept by Remove and
//     deleted only by Destroy.
//
// An engine runs in its own process group, is never tied to the
// orchestrator's life, and gets only PORT, ENGINE_KEY_HASH, SQLITE_DB_PATH,
// CATALOG_DIR, ENGINE_LISTEN_HOST, BAP_ENGINE_ID, the passthrough variables
// and PATH, HOME and LANG. A restarted orchestrator re-adopts a process when
// the pid file's pid is alive with the same start time and its environment
// carries BAP_ENGINE_ID=<engine_id>, so a recycled pid is never mistaken for
// an engine. Exits the orchestrator did not ask for are reported on Events:
// a child is reaped by a goroutine, an adopted process is polled.
//
// Linux only (it reads /proc).
//
// Files: subprocess.go (Config, New), locks.go (per-engine locks and the
// spec file), spawn.go (create, start, spawn and terminate), adopt.go
// (finding and adopting processes, the exit poller), control.go (stop,
// pause, remove, destroy), inspect.go, proc.go (/proc reading), files.go
// (pid and spec files), logs.go, snapshot.go.
package subprocess
