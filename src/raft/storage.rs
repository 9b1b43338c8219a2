//! The storage contract the driver persists `Ready` batches through, and [`MemStorage`],
//! an in-memory implementation for tests (the simulator runs the real `storage::FileStore`).
//!
//! The core keeps the log after its latest snapshot in memory, so storage is written by the
//! driver and read at start-up to rebuild the core, and when a follower needs the snapshot.

use super::types::{Entry, HardState, Snapshot};

/// Durable home of a node's hard state and log.
pub trait LogStore {
    /// Error type; every error is fatal to the node.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads what was persisted: the hard state and the log after the latest snapshot, in
    /// index order (indexes contiguous from `snapshot.index + 1`, or from 1 without a
    /// snapshot). Entries the snapshot covers are not returned; if the stored entry at the
    /// snapshot's index has another term (a crash in the middle of installing a leader's
    /// snapshot), no entry is returned.
    ///
    /// # Errors
    /// The store could not be read or is corrupt.
    fn load(&self) -> Result<(HardState, Vec<Entry>), Self::Error>;

    /// Persists a Ready batch and makes it durable before returning: writes `hard_state` if
    /// given, removes every stored entry with index `>= entries[0].index`, appends `entries`,
    /// then flushes to disk once. Entries at or below the snapshot's index are ignored: the
    /// snapshot covers them (they are committed, so they cannot differ from it).
    ///
    /// # Errors
    /// The write or the flush failed; the node must stop (never retry an fsync).
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), Self::Error>;

    /// The latest durable snapshot, its checksum verified, or `None` if there is none.
    ///
    /// # Errors
    /// The snapshot could not be read or is corrupt.
    fn snapshot(&self) -> Result<Option<Snapshot>, Self::Error>;

    /// Makes `snapshot` the latest, durably, then drops the log entries it covers.
    ///
    /// A crash at any moment leaves either the old state or the new one: the snapshot is
    /// written in full and made durable under a new name before it replaces the old one, and
    /// only then are log entries removed. If the stored log holds entry `meta.index` with
    /// `meta.term`, the entries after it stay (the node compacting its own log); otherwise the
    /// whole log goes (a follower installing a leader's snapshot, Raft Figure 13 step 7).
    /// A snapshot not newer than the current one is ignored.
    ///
    /// # Errors
    /// The write or a sync failed; the node must stop.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;
}

/// In-memory [`LogStore`]. "Durable" here means "survives a reopen", i.e. whatever
/// `persist` returned for.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// Persisted hard state.
    pub hard_state: HardState,
    /// Persisted log (index order, contiguous from `snapshot.index + 1`, or from 1).
    pub entries: Vec<Entry>,
    /// Latest snapshot.
    pub snapshot: Option<Snapshot>,
}

impl MemStorage {
    /// Index of the last entry the snapshot covers (0 without one).
    fn offset(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }
}

/// MemStorage never fails.
#[derive(Debug, thiserror::Error)]
#[error("memory storage cannot fail")]
pub struct Infallible;

impl LogStore for MemStorage {
    type Error = Infallible;

    fn load(&self) -> Result<(HardState, Vec<Entry>), Infallible> {
        Ok((self.hard_state, self.entries.clone()))
    }

    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), Infallible> {
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        let offset = self.offset();
        let entries = &entries[entries.partition_point(|e| e.index <= offset)..];
        if let Some(first) = entries.first() {
            let keep = first.index.saturating_sub(1).saturating_sub(self.offset());
            self.entries
                .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            self.entries.extend_from_slice(entries);
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Option<Snapshot>, Infallible> {
        Ok(self.snapshot.clone())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Infallible> {
        let meta = snapshot.meta;
        if meta.index <= self.offset() {
            return Ok(());
        }
        let offset = self.offset();
        let at = |i: u64| usize::try_from(i - offset - 1).ok();
        let matches = meta.index > offset
            && at(meta.index)
                .and_then(|p| self.entries.get(p))
                .is_some_and(|e| e.term == meta.term);
        if matches {
            let drop = at(meta.index).map_or(0, |p| p + 1);
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Payload;

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Noop,
        }
    }

    fn snap(index: u64, term: u64) -> Snapshot {
        Snapshot {
            membership: None,
            meta: crate::raft::SnapshotMeta { index, term },
            data: bytes::Bytes::from_static(b"state"),
        }
    }

    #[test]
    fn own_snapshot_keeps_the_log_after_it() {
        let mut s = MemStorage::default();
        s.persist(None, &[e(1, 1), e(1, 2), e(2, 3), e(2, 4)])
            .unwrap();
        s.install_snapshot(&snap(2, 1)).unwrap();
        assert_eq!(s.load().unwrap().1, vec![e(2, 3), e(2, 4)]);
        // Truncation after the snapshot still works with the offset.
        s.persist(None, &[e(3, 4)]).unwrap();
        assert_eq!(s.load().unwrap().1, vec![e(2, 3), e(3, 4)]);
        // An older snapshot is ignored.
        s.install_snapshot(&snap(1, 1)).unwrap();
        assert_eq!(s.snapshot().unwrap().unwrap().meta.index, 2);
    }

    #[test]
    fn leader_snapshot_with_another_history_drops_the_whole_log() {
        let mut s = MemStorage::default();
        s.persist(None, &[e(1, 1), e(1, 2), e(1, 3)]).unwrap();
        s.install_snapshot(&snap(3, 2)).unwrap();
        assert!(s.load().unwrap().1.is_empty());
        s.install_snapshot(&snap(9, 4)).unwrap();
        assert!(s.load().unwrap().1.is_empty());
        assert_eq!(s.snapshot().unwrap().unwrap().meta.index, 9);
    }

    #[test]
    fn persist_truncates_conflicting_suffix() {
        let mut s = MemStorage::default();
        s.persist(None, &[e(1, 1), e(1, 2), e(1, 3)]).unwrap();
        s.persist(
            Some(&HardState {
                term: 2,
                vote: Some(3),
                commit: 1,
            }),
            &[e(2, 2)],
        )
        .unwrap();
        let (hs, log) = s.load().unwrap();
        assert_eq!(hs.term, 2);
        assert_eq!(log, vec![e(1, 1), e(2, 2)]);
    }
}
