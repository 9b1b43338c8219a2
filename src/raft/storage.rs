//! The storage contract the driver persists `Ready` batches through, and [`MemStorage`],
//! an in-memory implementation for tests and the simulator.
//!
//! The core itself keeps the whole log in memory (there is no compaction yet), so storage is
//! only written by the driver and read once, at start-up, to rebuild the core.

use super::types::{Entry, HardState};

/// Durable home of a node's hard state and log.
pub trait LogStore {
    /// Error type; every error is fatal to the node.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads what was persisted: the hard state and the whole log in index order
    /// (indexes contiguous from 1).
    ///
    /// # Errors
    /// The store could not be read or is corrupt.
    fn load(&self) -> Result<(HardState, Vec<Entry>), Self::Error>;

    /// Persists a Ready batch and makes it durable before returning: writes `hard_state` if
    /// given, removes every stored entry with index `>= entries[0].index`, appends `entries`,
    /// then flushes to disk once.
    ///
    /// # Errors
    /// The write or the flush failed; the node must stop (never retry an fsync).
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), Self::Error>;
}

/// In-memory [`LogStore`]. "Durable" here means "survives a simulated crash", i.e. whatever
/// `persist` returned for.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// Persisted hard state.
    pub hard_state: HardState,
    /// Persisted log (index order, contiguous from 1).
    pub entries: Vec<Entry>,
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
        if let Some(first) = entries.first() {
            let keep = usize::try_from(first.index.saturating_sub(1)).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
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
