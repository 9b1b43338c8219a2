//! Log compaction off the loop: the driver serializes the state machine, then stores the
//! snapshot and compacts the log on the blocking pool while the loop goes on serving
//! writes and reads; the core drops its in-memory prefix only once the store reports it done.
//!
//! The store publishes the file (written, synced and renamed), appends a Snapshot record to
//! its segment log and deletes the segments the snapshot covers (`LogStore::
//! install_snapshot`). Meanwhile `persist` calls run on another thread: the store
//! serializes the two appends to the segment log, and a persist never carries an applied
//! entry (the snapshot covers only applied ones), so the record cannot drop a newer entry.
//! Until the core compacts,
//! it still holds every entry the snapshot covers, so a lagging follower is served from
//! memory; a follower sent a snapshot gets the newest published one (at or after the core's).

use std::time::Instant;

use tokio::task::{JoinError, JoinHandle};
use tracing::info;

use super::Driver;
use crate::node::error::Fatal;
use crate::raft::storage::LogStore as _;
use crate::raft::{Snapshot, SnapshotMeta};
use crate::storage::StorageError;

/// A snapshot being stored (and the log compacted) on the blocking pool.
#[derive(Debug)]
pub(super) struct SnapshotTask {
    meta: SnapshotMeta,
    /// Size of the serialized state machine.
    bytes: usize,
    /// Entries applied since the previous snapshot.
    entries: u64,
    started: Instant,
    handle: JoinHandle<Result<(), StorageError>>,
}

/// What a finished [`SnapshotTask`] reports.
pub(super) type SnapshotDone = Result<Result<(), StorageError>, JoinError>;

/// Resolves when the task in `slot` ends; never, while there is none (a `select!` branch).
pub(super) async fn snapshot_done(slot: &mut Option<SnapshotTask>) -> SnapshotDone {
    match slot {
        Some(task) => (&mut task.handle).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Starts a snapshot of the state machine once enough was applied since the last one
    /// and none is being stored already: `--snapshot-entries` entries, provided their
    /// commands add up to a quarter of the last snapshot's size, or `--snapshot-bytes` of
    /// commands in any case. The quarter keeps the cost of snapshots proportional to what is
    /// written: a million keys make a 110 MB snapshot, which every 10,000 puts would be
    /// rewritten a hundred times per million puts; now it is at most four times per
    /// snapshot's worth of commands, and the log kept meanwhile stays below a quarter of the
    /// state (and below `--snapshot-bytes`). Only the serialization runs on the loop; the
    /// write, its syncs and the log compaction do not.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.snapshot_task.is_some() {
            return;
        }
        let meta = self.core.applied_snapshot_meta();
        let since = meta.index - self.core.snapshot_meta().index;
        let due = since >= self.config.snapshot_entries
            && self.bytes_since_snapshot >= self.snapshot_size / 4;
        if !due && self.bytes_since_snapshot < self.config.snapshot_bytes {
            return;
        }
        debug_assert_eq!(meta.index, self.sm.applied_index());
        let started = Instant::now();
        let snapshot = Snapshot {
            meta,
            data: self.sm.snapshot().into(),
            membership: Some(self.core.applied_membership()),
        };
        let bytes = snapshot.data.len();
        self.bytes_since_snapshot = 0;
        self.snapshot_size = bytes as u64;
        let mut store = self.store.clone();
        let handle = tokio::task::spawn_blocking(move || store.install_snapshot(&snapshot));
        self.snapshot_task = Some(SnapshotTask {
            meta,
            bytes,
            entries: since,
            started,
            handle,
        });
    }

    /// The stored snapshot is durable (or storing it failed, which is fatal): compact the
    /// core's log up to it. Called from the loop, between two Ready batches.
    pub(super) fn finish_snapshot(&mut self, done: SnapshotDone) -> Result<(), Fatal> {
        let Some(task) = self.snapshot_task.take() else {
            return Ok(());
        };
        self.storage_task_result(done)?;
        self.core.compact(task.meta.index);
        info!(
            index = task.meta.index,
            term = task.meta.term,
            bytes = task.bytes,
            entries = task.entries,
            ms = task.started.elapsed().as_millis() as u64,
            "snapshot taken, log compacted"
        );
        Ok(())
    }

    /// Waits for a snapshot still being stored, without compacting the core (before a
    /// leader's snapshot replaces ours, and at shutdown).
    pub(super) async fn drain_snapshot(&mut self) -> Result<(), Fatal> {
        if let Some(task) = self.snapshot_task.take() {
            let done = task.handle.await;
            self.storage_task_result(done)?;
        }
        Ok(())
    }
}
