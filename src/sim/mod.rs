//! Deterministic simulation of a whole cluster: the real Raft core and the real state machine,
//! driven the way `node::driver` drives them, over a simulated network and simulated disks,
//! in one thread, with simulated time and one seeded RNG. Same seed, same run, bit for bit.
//!
//! Faults: messages dropped, delayed, duplicated and reordered; partitions of any subset,
//! including one-way cuts; nodes crashed at any step (whatever was not yet persisted is lost,
//! and a write in progress may be torn: a prefix of it lands) and restarted from their
//! storage; nodes paused (SIGSTOP-like zombies) and resumed; slow disks.
//!
//! Checks: after every event, the Raft invariants (`invariants.rs`); at the end, the client
//! history is linearizable (`crate::lincheck`), every node applied the same state, once
//! faults stop the cluster elects a leader and converges within a bound, and every lock
//! expires once its holders stopped.
//!
//! Scripted mode ([`Scenario`]): the same world with no random faults; a test applies chosen
//! faults ([`ScriptedFault`]) at chosen simulated times and measures what follows, with the
//! same end-of-run checks.
//!
//! Tests: the fixed seeds, the mutation tests and the scripted scenarios are the `simulation`
//! test target (`tests/simulation/`), a test binary of their own, so their CPU-heavy runs do
//! not starve the library's timing-sensitive tests; only the determinism test, which needs a
//! crate-private trace, is a unit test here (`tests.rs`).
//!
//! The simulated driver runs the daemon driver's own I/O-free parts: the lease table
//! (`node::leases`) and the lease-read clock (`node::tick_clock`).
//!
//! What it may import: `raft`, `state_machine`, `lincheck`, the I/O-free modules of `node`
//! named above, std, rand. No tokio, no clock.

mod client;
mod invariants;
mod lock_client;
mod locks;
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
