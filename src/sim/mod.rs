//! Deterministic simulation of a whole cluster: the real Raft core and the real state machine,
//! driven the way `node::driver` drives them, over a simulated network, in one thread, with
//! simulated time and one seeded RNG. Same seed, same run, bit for bit.
//!
//! Storage is the real one: every node persists, installs and stores its snapshots through
//! `storage::FileStore` (the daemon's segment log, snapshot files, and the hard state in a
//! small file) over `storage::fs::SimFs`, a file system that models crashes (unsynced writes
//! lost, cut or torn; names durable only once their directory is synced) and injects disk
//! faults (`world/disk.rs`). Not covered: sled itself (the daemon keeps the term and vote in
//! sled, the simulator in the hard-state file) and the real transport (gRPC, its limits).
//!
//! Faults: messages dropped, delayed, duplicated and reordered; partitions of any subset,
//! including one-way cuts; nodes crashed at any step (power loss: the writes in progress are
//! cut at a random operation, and the file system's crash model decides what survives) and
//! restarted by reopening their store from the surviving files (replay, torn-tail repair,
//! compaction redo, segment removal); clean restarts, one to three in a row (each must reload
//! exactly what the store held); disk faults (`EIO`, `ENOSPC` or a power loss at one of a
//! node's next file-system operations: the node stops, as the daemon exits 3); nodes paused
//! (SIGSTOP-like zombies) and resumed; slow disks.
//!
//! Checks: after every event, the Raft invariants (`invariants.rs`); at every apply, the
//! key space's revision moves by exactly 1 for an entry that changed it and by 0 otherwise
//! (revision density); at the end, the client history is linearizable (`crate::lincheck`,
//! compare-and-set included), every node holds a byte-identical key space (revisions and the
//! whole history back to the compaction revision), once faults stop the cluster elects a
//! leader and converges within a bound, and every lock expires once its holders stopped. With
//! the key-space workload (`SimConfig::kv_txns`, `client/kv_ops.rs`) the clients also check
//! pair atomicity (two keys one Txn writes) and revision consistency (every read of a key at
//! a revision agrees) on every answer. With the key-lease workload (`SimConfig::key_leases`,
//! `key_leases.rs`): at every applied revoke on every node, exactly the keys carrying that
//! lease are deleted, at one revision; no lease a leader renewed is revoked by the lease clock
//! before that renewal's TTL ran out (every renewal answered to a client counts); at the end
//! every replica holds the same lease table and every lease ran out once its client stopped
//! renewing. With watchers (`SimConfig::watches`,
//! `watchers.rs`, the daemon's `node::watches` code): every watcher delivers exactly its
//! range's history from its start (through its filters, with the right previous kvs), or is
//! cancelled with the compaction revision; and no event is delivered above its node's applied
//! revision or differs from the change committed at its revision (a run-wide record).
//!
//! Scripted mode ([`Scenario`]): the same world with no random faults; a test applies chosen
//! faults ([`ScriptedFault`]) at chosen simulated times and measures what follows, with the
//! same end-of-run checks.
//!
//! Tests: the fixed seeds, the mutation tests and the scripted scenarios are the `simulation`
//! test target (`tests/simulation/`), a test binary of their own, so their CPU-heavy runs do
//! not starve the library's timing-sensitive tests; the tests that need crate-private code
//! are unit tests here (`tests.rs`): the determinism test (a trace), and the storage's
//! test-only mutation of issue 11's defect 1 caught through the simulator.
//!
//! The simulated driver runs the daemon driver's own I/O-free parts: the lease table
//! (`node::leases`, for locks and leases on keys, with the keep-alive of `Request::KeyLease`
//! answered through ReadIndex as the driver does), the waiters (`node::pending`), the apply
//! step (`node::apply`), the watch publisher and watchers (`node::watches`) and the lease-read
//! clock (`node::tick_clock`).
//!
//! What it may import: `raft`, `state_machine`, `lincheck`, the I/O-free modules of `node`
//! named above, `storage` (`FileStore` over `SimFs` only), std, rand. No tokio, no clock.

mod client;
mod invariants;
mod key_leases;
mod lock_client;
mod locks;
mod watchers;
mod world;

/// The one lock the simulated lock clients compete for.
pub use lock_client::LOCK;
pub use world::{
    run, Answered, Failure, Outcome, RoleChange, Scenario, ScriptedFault, SimConfig, Time,
    ELECTION_TIMEOUT, MAX_DELAY,
};

/// One millisecond of simulated time ([`Time`] counts microseconds).
pub const MS: Time = world::MS;

#[cfg(test)]
mod tests;
