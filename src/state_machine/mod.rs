//! PURE deterministic state machine: `apply(index, command) -> outcome`.
//!
//! [`StateMachine`] holds the key space (etcd's data model: revisions, per-key versions and
//! the history back to a compaction revision, in [`mvcc`]), the locks, the applied index and
//! the exactly-once client [sessions](SessionLimits). The driver applies committed entries to it in log order; every
//! replica that applies the same entries reaches the same state and returns the same outcomes,
//! errors included.
//!
//! # What this module may import
//! std, serde (postcard for the entry and snapshot encoding), thiserror, tracing, and the
//! `LogIndex` alias from `raft`. No tokio, tonic, sled, clock, global RNG, threads or I/O, and
//! no `HashMap` iteration: everything is kept in `BTreeMap`s so iteration order is the same
//! everywhere.
//!
//! # Invariants
//! - Entries are applied with strictly increasing indexes (asserted).
//! - An undecodable entry fails the same way on every replica and changes nothing but the
//!   applied index.
//! - A write carrying a session is applied at most once. Sessions are dropped
//!   deterministically (after `idle_expiry` indexes without use, or the least recently used
//!   beyond `max_sessions`) and their ids retired: a write from a dropped session is refused
//!   as [`ApplyError::SessionExpired`], never applied again. The retired ids are bounded too
//!   (`max_retired`); the `sessions` module doc says what that leaves open.
//! - Session expiry is measured in log indexes, not time, so replicas agree on it.
#![warn(missing_docs)]

pub mod command;
mod error;
pub mod key_leases;
mod machine;
pub mod mvcc;
mod sessions;

pub use command::{Command, Fence, KvResult, KvWrite, Outcome, Proposal, Session};
pub use error::ApplyError;
pub use key_leases::{KeyLeases, MAX_LEASE_TTL};
pub use machine::{LockInfo, SnapshotError, StateMachine};
pub use sessions::SessionLimits;
