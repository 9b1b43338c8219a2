//! Lazy log compaction: publish a snapshot of this node's own state at once and remove the
//! log entries it covers a few at a time, inside the batches `persist` writes anyway.
//!
//! Removing 10,000 entries from sled in one batch takes 50-60 ms of CPU on a small machine,
//! and the node's `persist` calls wait behind it; spread over later batches the same removals
//! add no sync and no pause. Safety: an entry is removed only after a durable snapshot covers
//! it (the range is recorded once the snapshot file is synced and renamed), `load` reads from
//! the snapshot's index on and skips what is below, and `open` finishes any removal still
//! pending (`compact_log`), so a crash at any point leaves a store that loads the same log.

use super::{log_key, SledStore};
use crate::raft::{LogIndex, Snapshot};
use crate::storage::StorageError;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

/// Entries removed per `persist` at least (more when the batch itself is larger, so removal
/// keeps up with appends).
const TRIM_PER_PERSIST: u64 = 256;

/// The stored entries a durable snapshot covers that are still to be removed (none while
/// `next > to`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Trim {
    /// The first index possibly still stored.
    next: LogIndex,
    /// The last index to remove (the snapshot's).
    to: LogIndex,
}

impl Default for Trim {
    /// Nothing to remove (log indexes start at 1).
    fn default() -> Self {
        Trim { next: 1, to: 0 }
    }
}

impl SledStore {
    /// Publishes a snapshot of this node's own applied state (write `.tmp`, fdatasync,
    /// rename, fsync the dir) and returns; the log entries it covers are removed by the
    /// following [`persist`](crate::raft::storage::LogStore::persist) calls, a bounded
    /// number each. For a snapshot whose entry the log does not hold with the same term
    /// (a leader's snapshot of another history) this is `install_snapshot`, which drops the
    /// whole log at once.
    ///
    /// # Errors
    /// Writing, syncing or renaming the file failed, or reading the log failed.
    pub fn install_own_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.meta;
        if meta.index <= self.snapshot_index() {
            return Ok(());
        }
        let log = &self.inner.log;
        let read_err = |e: sled::Error| self.sled_err("read the log", &e);
        let first = match log.first().map_err(read_err)? {
            Some((key, _)) => super::index_of_key(&key).unwrap_or(0),
            None => meta.index + 1,
        };
        let same_history = match log.get(log_key(meta.index)).map_err(read_err)? {
            Some(raw) => {
                let entry: crate::raft::Entry = super::decode_value(&raw)
                    .map_err(|reason| self.corrupt(super::entry_name(meta.index), reason))?;
                entry.term == meta.term
            }
            None => false,
        };
        if !same_history {
            return crate::raft::storage::LogStore::install_snapshot(self, snapshot);
        }
        self.publish_snapshot(snapshot)?;
        {
            let mut trim = self.lock_trim();
            trim.next = trim.next.max(first);
            trim.to = meta.index;
        }
        let mut kept = 0u64;
        for item in log.range(log_key(meta.index.saturating_add(1))..) {
            kept += item.map_err(read_err)?.1.len() as u64;
        }
        self.inner.log_bytes.store(kept, Ordering::Relaxed);
        self.inner.snapshots.remove_older(meta)
    }

    /// Adds the removal of up to `max(TRIM_PER_PERSIST, 2 * appended)` covered entries to
    /// `batch`; returns the index after the last one added (for [`trimmed`](Self::trimmed)).
    pub(super) fn add_trim(&self, batch: &mut sled::Batch, appended: usize) -> Option<LogIndex> {
        let trim = *self.lock_trim();
        if trim.next > trim.to {
            return None;
        }
        let count = TRIM_PER_PERSIST.max(2 * appended as u64);
        let end = trim.to.min(trim.next.saturating_add(count - 1));
        for index in trim.next..=end {
            batch.remove(&log_key(index));
        }
        Some(end + 1)
    }

    /// The removals up to (not including) `next` were written.
    pub(super) fn trimmed(&self, next: LogIndex) {
        let mut trim = self.lock_trim();
        trim.next = trim.next.max(next);
    }

    /// Nothing is left to trim at or below `index` (a full compaction removed it).
    pub(super) fn trim_done_to(&self, index: LogIndex) {
        let mut trim = self.lock_trim();
        trim.next = trim.next.max(index.saturating_add(1));
    }

    /// Entries still to be removed lazily (for tests and metrics).
    pub fn trim_pending(&self) -> u64 {
        let trim = *self.lock_trim();
        (trim.to + 1).saturating_sub(trim.next)
    }

    fn lock_trim(&self) -> std::sync::MutexGuard<'_, Trim> {
        self.inner
            .trim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
