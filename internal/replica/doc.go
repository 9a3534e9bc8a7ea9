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
// Rebalancing: every Tick each replica heartbeats when due, reads the live
// replicas and the leases, releases the shards it should no longer hold
// (dropping them locally first), and acquires the shards it should hold that
// are free or held by a dead replica. Replicas on this host whose process is
// gone are dead at once (a restarted orchestrator takes its previous
// incarnation's work without waiting a TTL); with SQLite (Exclusive) every
// other row is.
//
// What belongs here: liveness, shards and leases. What does not: the work
// itself (lifecycle, health) and the operation claims on engine rows
// (lifecycle), which ask a Replica whether they may act.
package replica
