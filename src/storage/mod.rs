//! sled-backed durable storage: the only module that knows sled.
//!
//! [`SledStore`] implements [`LogStore`](crate::raft::storage::LogStore): it loads the hard
//! state and the log after the latest snapshot at start-up, persists each `Ready` batch
//! durably, and keeps the state-machine snapshot that log compaction leaves behind.
//!
//! # On-disk layout
//! ```text
//! <data-dir>/
//!   LOCK                 held with an exclusive lock while a store is open
//!   db, conf, blobs/, snap.*   sled's database: trees `meta` (hard state) and `log`
//!   snapshots/
//!     snapshot-<index>-<term>.snap   the latest snapshot: header, data, CRC32
//!     snapshot-<index>-<term>.snap.tmp   only while one is written (removed at start-up)
//! ```
//! `keys.rs` documents the trees and the value encoding, `snapshot_file.rs` the snapshot file
//! format. Indexes and terms in file names are 20-digit zero-padded decimals.
//!
//! # Installing a snapshot, and why a crash at any point is safe
//! `install_snapshot(s)` (the node compacting its own log, or a follower installing the
//! leader's snapshot) ignores `s` unless it is newer than the current one, then:
//! 1. writes `s` to `snapshot-….snap.tmp` and fdatasyncs it;
//! 2. renames it to `snapshot-….snap` and fsyncs `snapshots/`: from here on `s` is the
//!    latest snapshot, durably, and the old log entries are merely dead weight;
//! 3. removes the log entries `s` covers from sled in one batch, made durable with the same
//!    flush + fdatasync as `persist`: all of them up to `s.index` if the stored entry at
//!    `s.index` has `s.term` (the entries after it stay), else the whole log (another
//!    history, or a log shorter than the snapshot: Raft Figure 13 step 7);
//! 4. removes the older snapshot files.
//!
//! Open redoes what a crash may have cut short, so every intermediate state restarts right:
//! - crash in or after step 1: a `.tmp` file, never read, removed at start-up; the old
//!   snapshot and log are intact (the old file is only removed in step 4);
//! - crash between 2 and 3 (the rename is atomic; before the directory fsync either name may
//!   survive, and both are complete files): the new file is the latest, and start-up
//!   performs step 3 again with the same decision, since sled is as it was. Until then `load`
//!   skips covered entries and returns none if the entry at the index has another term;
//! - crash between 3 and 4: older snapshot files are removed at start-up.
//!
//! Start-up reads only the newest `.snap` file: its name, header and length must agree, or
//! open fails. `snapshot()` reads it in full and checks its CRC32. A damaged latest snapshot
//! is an error naming the file, never a fallback to an older one (that would silently forget
//! committed entries whose log is gone).
//!
//! # Bounded disk use
//! Each snapshot leaves one file and a log holding only the entries after it. sled 0.34 (in
//! its default 512 KiB segments) reuses the segments freed by removed entries: under an
//! endless stream of overwrites of the same keys the data dir stays at ~2.7 MB (5 sled
//! segments + the snapshot) after 15 MB of log (test
//! `disk_use_stays_bounded_under_endless_overwrites`). The segment size is left at sled's
//! default: sled refuses to open a database with another segment size than it was created
//! with. [`SledStore::log_bytes_since_snapshot`] gives the driver the log's size for its
//! snapshot threshold.
//!
//! # What this module may import
//! std, sled, serde/postcard, crc32fast, bytes, thiserror, tracing, and the `raft` types it
//! stores. Nothing above it (node, rpc) and no async runtime: `persist` and
//! `install_snapshot` block, so the driver calls them from a blocking context.
//!
//! # Invariants
//! - The data dir is locked (`<dir>/LOCK`, `File::try_lock`) before sled opens it, for as long
//!   as the store lives; a second process fails with [`StorageError::Locked`].
//! - `persist` returns only after its writes are on disk: one sled write (atomic across the
//!   `meta` and `log` trees), one `flush`, then `fdatasync` on sled's log file (and on any new
//!   blob file). sled 0.34's `flush` alone ends in `sync_file_range`, which is not durable
//!   (sled issue #1452), and its background flusher is disabled, so those syncs are the only
//!   ones on the write path: exactly one per `persist` (see `sync_count`).
//! - `persist` and `install_snapshot` are called by one owner (the driver), one at a time;
//!   `snapshot()` and `load()` may run on any clone meanwhile (a reader keeps the snapshot
//!   file it opened even if a newer one replaces it).
//! - Every stored value carries a CRC32, and so does every snapshot file; `load` rejects a
//!   bad checksum, an undecodable value or a gap in the log with [`StorageError::Corrupt`]
//!   naming the sled database dir and the key, and a damaged snapshot file is
//!   [`StorageError::CorruptSnapshot`] naming the file. Both say what to do: wipe the node's
//!   data dir so it catches up from the leader.
//! - Every error is fatal to the node: a failed fsync is never retried.
#![warn(missing_docs)]

mod error;
mod keys;
mod segment_log;
mod sled_store;
mod snapshot_file;

pub use error::StorageError;
pub use sled_store::SledStore;
