//! Durable storage: the Raft log in our own segment files, the term and vote in sled, the
//! state-machine snapshot in a file. The only module that knows sled.
//!
//! [`SledStore`] implements [`LogStore`](crate::raft::storage::LogStore): it loads the hard
//! state and the log after the latest snapshot at start-up, persists each `Ready` batch
//! durably, and keeps the state-machine snapshot that log compaction leaves behind.
//!
//! The segment log and the snapshot files do their I/O through the [`fs::Fs`] trait: the
//! real file system in production ([`fs::RealFs`], static dispatch, no cost), and
//! [`fs::SimFs`], an in-memory file system that models crashes (unsynced data lost or torn,
//! names durable only once their directory is synced, failing writes), in tests.
//! [`FileStore`] is the same log and snapshot files with the hard state in a file instead of
//! sled, over any `Fs`: over `SimFs` it is the store of the storage model test
//! (`file_store/model_tests.rs`) and of the simulator. sled itself stays on the real file
//! system.
//!
//! # On-disk layout
//! ```text
//! <data-dir>/
//!   LOCK                 held with an exclusive lock while a store is open
//!   db, conf, snap.*     sled's database: tree `meta`, the hard state (term and vote) and
//!                        the cluster identity (sled_store/identity.rs)
//!   log/
//!     segment-<seq>.log  the log: records appended in seq order (1, 2, ...)
//!   snapshots/
//!     snapshot-<index>-<term>.snap   the latest snapshot: header, data, CRC32
//!     snapshot-<index>-<term>.snap.tmp   only while one is written (removed at start-up)
//! ```
//! `keys.rs` documents sled's tree and the value encoding, `segment_log.rs` the segment and
//! record format and how records replay, `snapshot_file.rs` the snapshot file format.
//! Numbers in file names are 20-digit zero-padded decimals.
//!
//! # Persisting a batch
//! `persist` encodes the batch's entries and commit index as one record in a reused buffer
//! and appends it to the active segment with one `write` and one `fdatasync`. If the term or
//! vote changed (elections only), it first writes them to sled and makes that durable (sled's
//! flush, then `fdatasync` of sled's `db` file): a crash between the two leaves the new term
//! with the old log, never entries of a term newer than the stored one. A segment past 4 MiB
//! is followed by a new one, and the `log/` dir is fsynced before its first record counts.
//!
//! # Installing a snapshot, and why a crash at any point is safe
//! `install_snapshot(s)` (the node compacting its own log, or a follower installing the
//! leader's snapshot) ignores `s` unless it is newer than the current one, then:
//! 1. writes `s` to `snapshot-….snap.tmp` and fdatasyncs it;
//! 2. renames it to `snapshot-….snap` and fsyncs `snapshots/`: from here on `s` is the
//!    latest snapshot, durably, and the old log entries are merely dead weight;
//! 3. appends a Snapshot record to the log and fdatasyncs it: it keeps the entries after
//!    `s.index` if the log holds entry `s.index` with `s.term` (the entries after it stay),
//!    else none (another history, or a log shorter than the snapshot: Raft Figure 13 step 7);
//!    then unlinks the segments whose entries are all at or below `s.index`, but never the
//!    one holding this record (made durable by the next directory fsync; replay is the same
//!    whichever of them reappear);
//! 4. removes the older snapshot files.
//!
//! Open redoes what a crash may have cut short, so every intermediate state restarts right:
//! - crash in or after step 1: a `.tmp` file, never read, removed at start-up; the old
//!   snapshot and log are intact (the old file is only removed in step 4);
//! - crash between 2 and 3 (the rename is atomic; before the directory fsync either name may
//!   survive, and both are complete files): the new file is the latest, and start-up
//!   performs step 3 with the same decision, since the log is as it was (entries after
//!   `s.index` with no entry at `s.index` are kept: they were written after `s`, or an
//!   earlier compaction kept them). Until then `load` skips covered entries and returns none
//!   if the entry at the index has another term;
//! - crash between 3 and 4: older snapshot files are removed at start-up;
//! - crash in the middle of a `persist`: the record it was writing is cut short or garbled
//!   at the end of the last segment (never acknowledged), and start-up truncates it away.
//!
//! Start-up reads only the newest `.snap` file: its name, header and length must agree, or
//! open fails. Before it relies on anything it found (the newest snapshot file and its name,
//! every log segment it replayed) it syncs it: a write whose sync failed, or that a killed
//! process never synced, may sit in the page cache only, and must not be taken for durable. `snapshot()` reads it in full and checks its CRC32. A damaged latest snapshot
//! is an error naming the file, never a fallback to an older one (that would silently forget
//! committed entries whose log is gone).
//!
//! # Bounded disk use
//! Each snapshot leaves one file, and its compaction unlinks every segment but the active
//! one whose entries it covers: under an endless stream of overwrites of the same keys the
//! data dir holds one snapshot, at most one segment of dead entries plus the log since the
//! snapshot, and sled's small database (test `disk_use_stays_bounded_under_endless_overwrites`).
//! [`SledStore::log_bytes_since_snapshot`] gives the driver the log's size for its snapshot
//! threshold.
//!
//! # What this module may import
//! std, sled, serde/postcard, crc32fast, bytes, thiserror, tracing, rand (the seeded RNG of
//! `SimFs` only), and the `raft` types it stores. Nothing above it (node, rpc) and no async runtime: `persist` and
//! `install_snapshot` block, so the driver calls them from a blocking context.
//!
//! # Invariants
//! - The data dir is locked (`<dir>/LOCK`, `File::try_lock`) before sled opens it, for as long
//!   as the store lives; a second process fails with [`StorageError::Locked`].
//! - `persist` returns only after its writes are on disk: exactly one `fdatasync`, of the
//!   active segment, unless the term or vote changed (then sled's flush + `fdatasync` of its
//!   `db` file first; sled 0.34's `flush` alone ends in `sync_file_range`, which is not
//!   durable, sled issue #1452, and its background flusher is disabled). See `sync_count`.
//! - `persist` and `install_snapshot` are called by one owner each (the driver, and its
//!   snapshot task), serialized by a lock; `snapshot()` and `load()` may run on any clone
//!   meanwhile (a reader keeps the snapshot file it opened even if a newer one replaces it).
//! - Every log record carries a CRC32, and so do the hard state and every snapshot file. A
//!   bad record is [`StorageError::CorruptLog`] naming the segment and byte offset (unless it
//!   is a torn write at the very end of the last segment, which start-up cuts off and logs at
//!   info); a gap in the log, a lost segment whose entries no snapshot covers, a Snapshot
//!   record whose snapshot file is missing or disagrees, or a bad hard state is
//!   [`StorageError::Corrupt`]; a damaged
//!   snapshot file is [`StorageError::CorruptSnapshot`] naming the file. All say what to do:
//!   replace the member (remove it, add a new one with an empty data dir: a wiped data dir
//!   under the old id is refused, since the node forgot its votes; `rpc/instances.rs`).
//! - A data dir whose log is in sled's `log` tree (the layout before segment files) is
//!   refused with [`StorageError::OldLayout`], never silently emptied.
//! - Every error is fatal to the node: a failed fsync is never retried.
#![warn(missing_docs)]

mod error;
mod file_store;
pub mod fs;
mod keys;
mod segment_log;
mod sled_store;
mod snapshot_file;

pub use error::StorageError;
pub use file_store::FileStore;
/// The storage's test-only mutation switches (the simulator's tests switch them on too).
#[cfg(test)]
pub(crate) use segment_log::mutation;
pub use sled_store::SledStore;
pub use sled_store::{ClusterIdentity, IdentityError, IdentityMismatch};

/// Log entries for the storage tests: `e(term, index)` carries a command naming both.
#[cfg(test)]
mod test_entries {
    use crate::raft::{Entry, Payload};

    pub(crate) fn e(term: u64, index: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command(format!("cmd-{term}-{index}").into_bytes().into()),
        }
    }

    pub(crate) fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range.map(|i| e(term, i)).collect()
    }
}
