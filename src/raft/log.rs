//! [`RaftLog`]: the in-memory log after the latest snapshot, with its durable prefix marked.
//!
//! Entries up to `snapshot.index` are compacted away (their effect lives in the state-machine
//! snapshot); index `i > snapshot.index` is at `entries[i - snapshot.index - 1]`.
//! Entries up to `persisted` are known to be on stable storage; the rest (the unstable tail)
//! goes out in the next `Ready` and becomes stable on `advance()`.

use super::types::{Entry, LogIndex, SnapshotMeta, Term};

/// The replicated log of one node.
#[derive(Debug, Default)]
pub(crate) struct RaftLog {
    /// The last entry compacted into the snapshot (index 0, term 0 without a snapshot).
    snapshot: SnapshotMeta,
    /// The entries after the snapshot, `entries[i].index == snapshot.index + i + 1`.
    entries: Vec<Entry>,
    /// Last index known durable. Invariant: `snapshot.index <= persisted <= last_index()`.
    persisted: LogIndex,
}

impl RaftLog {
    /// A log restored from storage (all of it durable): the snapshot it starts after, and the
    /// entries that follow it.
    pub(crate) fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                snapshot.index + i as u64 + 1,
                "invariant: stored log must be contiguous from the snapshot"
            );
        }
        let persisted = snapshot.index + entries.len() as u64;
        RaftLog {
            snapshot,
            entries,
            persisted,
        }
    }

    /// Position of `index` in `entries`, if it is after the snapshot and fits in memory.
    fn pos(&self, index: LogIndex) -> Option<usize> {
        let offset = index.checked_sub(self.snapshot.index + 1)?;
        usize::try_from(offset).ok()
    }

    /// The snapshot the log starts after.
    pub(crate) fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }

    /// True if `index` was compacted into the snapshot (its term is no longer known).
    pub(crate) fn is_compacted(&self, index: LogIndex) -> bool {
        index > 0 && index < self.snapshot.index
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.snapshot.index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// Term of the entry at `index`: 0 for index 0, the snapshot's term at its index, `None`
    /// past the end or inside the compacted prefix (see [`is_compacted`](Self::is_compacted)).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.get(index).map(|e| e.term)
    }

    pub(crate) fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// Marks everything up to `index` durable (called on advance).
    pub(crate) fn mark_persisted(&mut self, index: LogIndex) {
        self.persisted = self.persisted.max(index.min(self.last_index()));
    }

    /// The entries not yet handed to storage.
    pub(crate) fn unstable(&self) -> &[Entry] {
        let from = self.pos(self.persisted + 1).unwrap_or(self.entries.len());
        &self.entries[from.min(self.entries.len())..]
    }

    /// Entries in `[from, to]` (inclusive), clamped to the log, at most `max` of them.
    /// The caller never asks for compacted entries (it sends a snapshot instead).
    pub(crate) fn slice(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry> {
        let to = to.min(self.last_index());
        if from <= self.snapshot.index || from > to {
            return Vec::new();
        }
        let (Some(start), Some(end)) = (self.pos(from), self.pos(to)) else {
            return Vec::new();
        };
        let end = (end + 1).min(start.saturating_add(max));
        self.entries[start..end].to_vec()
    }

    /// Appends an entry at the end (leader).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(
            entry.index,
            self.last_index() + 1,
            "invariant: appended entry must extend the log"
        );
        self.entries.push(entry);
    }

    /// Removes every entry from `index` on (follower resolving a conflict, Raft §5.3).
    /// The caller guarantees `index` is above the commit index (so above the snapshot).
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        let keep = self.pos(index).unwrap_or(0).min(self.entries.len());
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(self.last_index());
    }

    /// Drops the entries up to `index`, which a durable snapshot now covers. The caller
    /// guarantees `index` is applied and durable, hence in the log.
    pub(crate) fn compact(&mut self, index: LogIndex) {
        let Some(term) = self.term(index) else {
            return;
        };
        if index <= self.snapshot.index {
            return;
        }
        let drop = self.pos(index).map_or(0, |p| p + 1).min(self.entries.len());
        self.entries.drain(..drop);
        self.snapshot = SnapshotMeta { index, term };
        self.persisted = self.persisted.max(index);
    }

    /// Installs a leader's snapshot (Raft Figure 13, steps 6-7): if our entry at its index
    /// has its term, the entries after it stay; otherwise the whole log is replaced by it.
    pub(crate) fn install(&mut self, snapshot: SnapshotMeta) {
        if self.term(snapshot.index) == Some(snapshot.term) && snapshot.index <= self.last_index() {
            self.compact(snapshot.index);
            return;
        }
        self.entries.clear();
        self.snapshot = snapshot;
        self.persisted = snapshot.index;
    }

    /// First index of the run of entries with term `term` that ends at `index` (for the
    /// conflict hint sent back to a leader). Never goes below the first entry after the
    /// snapshot.
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut i = index;
        while i > self.snapshot.index + 1 && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// Last index whose entry has term `term`, if any (leader using a conflict hint).
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// Entry at `index` (compacted entries are gone).
    pub(crate) fn get(&self, index: LogIndex) -> Option<&Entry> {
        self.entries.get(self.pos(index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Payload;

    fn log(terms: &[u64]) -> RaftLog {
        RaftLog::restore(
            SnapshotMeta::default(),
            terms
                .iter()
                .enumerate()
                .map(|(i, &t)| Entry {
                    term: t,
                    index: i as u64 + 1,
                    payload: Payload::Noop,
                })
                .collect(),
        )
    }

    #[test]
    fn terms_and_bounds() {
        let l = log(&[1, 1, 2]);
        assert_eq!(l.term(0), Some(0));
        assert_eq!(l.term(3), Some(2));
        assert_eq!(l.term(4), None);
        assert_eq!(l.term(u64::MAX), None);
        assert_eq!((l.last_index(), l.last_term()), (3, 2));
    }

    #[test]
    fn truncate_lowers_persisted_mark() {
        let mut l = log(&[1, 1, 2, 2]);
        l.truncate_from(3);
        assert_eq!(l.last_index(), 2);
        assert_eq!(l.persisted(), 2);
        l.push(Entry {
            term: 3,
            index: 3,
            payload: Payload::Noop,
        });
        assert_eq!(l.unstable().len(), 1);
    }

    #[test]
    fn conflict_hint_helpers() {
        let l = log(&[1, 2, 2, 2, 3]);
        assert_eq!(l.first_index_of_term_run(4, 2), 2);
        assert_eq!(l.last_index_of_term(2), Some(4));
        assert_eq!(l.last_index_of_term(9), None);
    }

    #[test]
    fn slice_is_clamped() {
        let l = log(&[1, 1, 1]);
        assert_eq!(l.slice(2, 10, 100).len(), 2);
        assert_eq!(l.slice(1, 3, 2).len(), 2);
        assert!(l.slice(4, 9, 10).is_empty());
        assert!(l.slice(0, 9, 10).is_empty());
    }

    #[test]
    fn compaction_keeps_indexes_and_terms() {
        let mut l = log(&[1, 1, 2, 2, 3]);
        l.compact(3);
        assert_eq!(l.snapshot(), SnapshotMeta { index: 3, term: 2 });
        assert_eq!((l.last_index(), l.last_term()), (5, 3));
        assert_eq!(
            l.term(3),
            Some(2),
            "the snapshot's own index keeps its term"
        );
        assert_eq!(l.term(2), None);
        assert!(l.is_compacted(2) && !l.is_compacted(3) && !l.is_compacted(0));
        assert_eq!(l.term(0), Some(0));
        assert_eq!(l.get(4).map(|e| e.index), Some(4));
        assert!(l.get(3).is_none());
        assert_eq!(l.slice(4, 5, 10).len(), 2);
        assert!(
            l.slice(2, 5, 10).is_empty(),
            "compacted entries are never sliced"
        );
        assert_eq!(l.first_index_of_term_run(5, 3), 5);
        l.compact(5);
        assert_eq!((l.last_index(), l.last_term()), (5, 3));
        assert!(l.unstable().is_empty());
        l.push(Entry {
            term: 4,
            index: 6,
            payload: Payload::Noop,
        });
        assert_eq!(l.unstable().len(), 1);
        l.truncate_from(6);
        assert_eq!(l.last_index(), 5);
    }

    #[test]
    fn installing_a_snapshot_keeps_a_matching_suffix_only() {
        let mut l = log(&[1, 1, 2, 2]);
        l.install(SnapshotMeta { index: 2, term: 1 });
        assert_eq!(l.last_index(), 4, "entries after a matching index stay");
        let mut l = log(&[1, 1, 2, 2]);
        l.install(SnapshotMeta { index: 3, term: 5 });
        assert_eq!((l.last_index(), l.last_term()), (3, 5));
        assert_eq!(l.persisted(), 3);
        let mut l = log(&[1]);
        l.install(SnapshotMeta { index: 9, term: 4 });
        assert_eq!((l.last_index(), l.persisted()), (9, 9));
        assert!(l.unstable().is_empty());
    }
}
