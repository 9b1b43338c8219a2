//! [`RaftLog`]: the in-memory log with its durable prefix marked.
//!
//! There is no compaction yet, so the whole log lives here and index `i` is at `entries[i-1]`.
//! `entries[..persisted]` is known to be on stable storage; the rest (the unstable tail) goes
//! out in the next `Ready` and becomes stable on `advance()`.

use super::types::{Entry, LogIndex, Term};

/// The replicated log of one node.
#[derive(Debug, Default)]
pub(crate) struct RaftLog {
    /// All entries, `entries[i].index == i + 1`.
    entries: Vec<Entry>,
    /// Last index known durable. Invariant: `persisted <= last_index()`.
    persisted: LogIndex,
}

/// Converts a log index to a position in `entries`. Indexes that do not fit in memory cannot
/// be in the log, so they saturate and every lookup misses.
fn pos(index: LogIndex) -> usize {
    usize::try_from(index).unwrap_or(usize::MAX)
}

impl RaftLog {
    /// A log restored from storage (all of it durable).
    pub(crate) fn restore(entries: Vec<Entry>) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                i as u64 + 1,
                "invariant: stored log must be contiguous from index 1"
            );
        }
        let persisted = entries.len() as u64;
        RaftLog { entries, persisted }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Term of the entry at `index`; 0 for index 0; `None` past the end.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.entries.get(pos(index) - 1).map(|e| e.term)
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
        &self.entries[pos(self.persisted)..]
    }

    /// Entries in `[from, to]` (inclusive), clamped to the log, at most `max` of them.
    pub(crate) fn slice(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry> {
        let to = to.min(self.last_index());
        if from == 0 || from > to {
            return Vec::new();
        }
        let start = pos(from) - 1;
        let end = pos(to).min(start.saturating_add(max));
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
    /// The caller guarantees `index` is above the commit index.
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        let keep = pos(index).saturating_sub(1).min(self.entries.len());
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep as u64);
    }

    /// First index of the run of entries with term `term` that ends at `index` (for the
    /// conflict hint sent back to a leader).
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut i = index;
        while i > 1 && self.term(i - 1) == Some(term) {
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

    /// Entry at `index`.
    pub(crate) fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index == 0 {
            return None;
        }
        self.entries.get(pos(index) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Payload;

    fn log(terms: &[u64]) -> RaftLog {
        RaftLog::restore(
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
}
