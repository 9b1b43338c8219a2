//! etcd's v3 data model as a PURE data structure: the MVCC key space.
//!
//! [`KeySpace`] keeps every key's history of versions back to the compaction revision, so a
//! read can name any revision at or above it and a watcher can ask for every change since one
//! ([`KeySpace::changes`]). It implements etcd 3.5's semantics for Range, Put, DeleteRange,
//! Txn and Compact (server/mvcc and server/etcdserver/apply.go); the checks etcd's gRPC layer
//! runs before proposing (v3rpc/key.go) are the free functions [`validate_put`],
//! [`validate_range`], [`validate_delete_range`] and [`validate_txn`].
//!
//! # What this module may import
//! The same as the rest of `state_machine`: std, serde, thiserror. No clock, no I/O, no
//! randomness, no `HashMap` iteration: results depend only on the store and the call.
//!
//! # Invariants
//! - The store revision starts at 1 and grows by exactly 1 for every call that changed
//!   something (a put, a delete that deleted a key, a txn with such a write); every write of
//!   one call shares that revision and is ordered by a sub-revision.
//! - Each key's history is ordered by (revision, sub-revision), never empty, and starts with
//!   a put. Only the first version may be older than the compaction revision (the version a
//!   read at the compaction revision needs).
//! - The change log lists every version newer than the compaction revision, plus the versions
//!   at exactly the compaction revision that survived it, in (revision, sub-revision) order.
//! - A failing call changes nothing.
//!
//! # Where we chose
//! - Sorting is stable: kvs with equal sort fields stay in key order (etcd's sort is not
//!   stable, so its order for ties is unspecified).
//! - [`validate_txn`] treats a delete to the end of the key space (`range_end = [0]`) as
//!   covering every key after `key`; etcd's interval check compares against the literal
//!   `"\0"` and so misses duplicates under such a delete.
//! - The store refuses an empty key at apply time as well ([`MvccError::EmptyKey`]), so no
//!   history ever holds one; etcd relies on the gRPC check alone.
//! - `compact(0)` on a never-compacted store is [`MvccError::Compacted`] (etcd starts its
//!   compaction revision at -1 and accepts it as a no-op).

mod snapshot;
mod store;
mod types;
mod validate;

pub use snapshot::{KeySpaceSnapshot, KeySpaceSnapshotView};
pub use store::{KeySpace, LeaseLookup, NoLeases};
pub use types::*;

/// Mutation switch of the lease-index model test (`key_leases`): while on, a txn's writes on
/// this thread leave the lease index alone.
#[cfg(test)]
pub(crate) struct KvLeaseSwitch;

#[cfg(test)]
impl KvLeaseSwitch {
    pub(crate) fn set(on: bool) {
        store::TXN_SKIPS_LEASE_INDEX.with(|s| s.set(on));
    }
}
pub use validate::{prefix_end, validate_delete_range, validate_put, validate_range, validate_txn};

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
