// Package replica makes several orchestrator processes on one database
// (SPEC §15) agree on who is alive and who does which background work.
//
// A Replica registers a row at start, heartbeats it several times per TTL
// and deletes it on a graceful stop; one whose heartbeat is older than the
// TTL (by the database's clock) is dead. Engines fall into Shards shards by
// a stable hash of their id; live replicas divide the shards by rendezvous
// hashing over the live set, so that each replica computes the same split
// and a join or a death moves only the shards it must. A shard is held
// through a lease row with an epoch, the fencing token: the background work
// on a shard's engines (probes, crash handling, idle sleep, reconciliation)
// runs only on its holder, and its writes name the lease, so a holder that
// lost it cannot commit.
//
// A replica also trusts its leases only while its own heartbeat is fresh:
// Valid is false once three quarters of a TTL passed since the last
// heartbeat was sent, which is before any other replica may call it dead.
// A process frozen past its TTL (SIGSTOP, a long pause, a partition)
// therefore stops acting before others take over, and when it wakes it
// first heartbeats and re-reads its leases, so it rejoins without
// committing anything stale.
//
// Heartbeats run on their own schedule and, with PostgreSQL, on a
// connection of their own that holds a session lock for the replica; that
// lock ends when the process dies (its connection closes). Rebalancing: every
// Tick each replica reads the live replicas and the leases, releases the
// shards it should no longer hold (dropping them locally first), and
// acquires the shards it should hold that are free or held by a dead
// replica. A replica whose heartbeat is quiet for a heartbeat period and a
// half and whose session lock is free is dead without waiting for its TTL,
// on any host: a restarted orchestrator takes its previous run's work within
// seconds. A frozen or partitioned replica keeps its connection, so only its
// TTL ends it. With SQLite (Exclusive) every other row is dead at once.
//
// What belongs here: liveness, shards and leases. What does not: the work
// itself (lifecycle, health) and the operation claims on engine rows
// (lifecycle), which ask a Replica whether they may act.
package replica
