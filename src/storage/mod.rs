//! sled-backed durable storage: the only module that knows sled.
//!
//! [`SledStore`] implements [`LogStore`](crate::raft::storage::LogStore): it loads the hard
//! state and log at start-up and persists each `Ready` batch durably. `keys.rs` documents the
//! on-disk layout.
//!
//! # What this module may import
//! std, sled, serde/postcard, crc32fast, thiserror, and the `raft` types it stores. Nothing
//! above it (node, rpc) and no async runtime: `persist` blocks, so the driver calls it from a
//! blocking context.
//!
//! # Invariants
//! - The data dir is locked (`<dir>/LOCK`, `File::try_lock`) before sled opens it, for as long
//!   as the store lives; a second process fails with [`StorageError::Locked`].
//! - `persist` returns only after its writes are on disk: one sled write (atomic across the
//!   `meta` and `log` trees), one `flush`, then `fdatasync` on sled's log file (and on any new
//!   blob file). sled 0.34's `flush` alone ends in `sync_file_range`, which is not durable
//!   (sled issue #1452), and its background flusher is disabled, so those syncs are the only
//!   ones on the write path: exactly one per `persist` (see `sync_count`).
//! - Every stored value carries a CRC32; `load` rejects a bad checksum, an undecodable
//!   value or a gap in the log with [`StorageError::Corrupt`] naming the dir and the key.
//! - Every error is fatal to the node: a failed fsync is never retried.
#![warn(missing_docs)]

mod error;
mod keys;
mod sled_store;
mod snapshot_file;

pub use error::StorageError;
pub use sled_store::SledStore;
