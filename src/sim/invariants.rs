//! The Raft safety invariants (Figure 3 of the paper), checked incrementally as the simulation
//! runs, plus "the commit index never goes backwards on a node that did not crash".

use std::collections::{BTreeMap, HashMap};

use super::world::SimNode;
use crate::raft::{Entry, LogIndex, NodeId, Payload, Role, SnapshotMeta, Term};

/// A payload's fingerprint: its CRC32 and length (CRC32 is SIMD-fast, and payloads reach
/// 1 MiB: SipHash made them the simulator's main cost). No command's equals a no-op's.
fn digest(e: &Entry) -> u64 {
    match &e.payload {
        Payload::Noop => u64::MAX,
        Payload::ConfChange(c) => {
            let d = c.encode();
            (u64::from(crc32fast::hash(&d)) << 32) | (d.len() as u64 & 0xffff_ffff) | 1 << 31
        }
        Payload::Command(d) => {
            (u64::from(crc32fast::hash(d)) << 32) | (d.len() as u64 & 0xffff_ffff)
        }
    }
}

pub(crate) struct Invariants {
    /// Election Safety: the leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log Matching: every (index, term) ever written anywhere, with its payload digest and the
    /// term of the entry before it. If all logs agree on this map, equal (index, term) implies
    /// equal prefixes, by induction.
    written: HashMap<(LogIndex, Term), (u64, Term)>,
    /// State Machine Safety: what was applied at each index (term, digest).
    applied: BTreeMap<LogIndex, (Term, u64)>,
    /// Leader Completeness: each committed index with its entry's term and digest, and the term
    /// of the leader that committed it. Only leaders of later terms must hold it.
    committed: BTreeMap<LogIndex, (Term, u64, Term)>,
    /// Last commit index seen per node since its last restart.
    commit: BTreeMap<NodeId, LogIndex>,
    /// Leader Append-Only: (term, last index, term of that entry) while a node leads.
    leader_mark: BTreeMap<NodeId, (Term, LogIndex, Term)>,
}

impl Invariants {
    pub(crate) fn new(_nodes: u64) -> Self {
        Invariants {
            leaders: BTreeMap::new(),
            written: HashMap::new(),
            applied: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit: BTreeMap::new(),
            leader_mark: BTreeMap::new(),
        }
    }

    pub(crate) fn leaders_seen(&self) -> u64 {
        self.leaders.len() as u64
    }

    /// A node just became leader of `term`.
    pub(crate) fn on_leader(
        &mut self,
        id: NodeId,
        term: Term,
        nodes: &BTreeMap<NodeId, SimNode>,
        fail: &mut Option<String>,
    ) {
        self.election_safety(id, term, fail);
        // Leader Completeness: it holds every entry committed in an earlier term.
        let Some(n) = nodes.get(&id) else { return };
        let snap = n.core.snapshot_meta();
        for (&index, &(t, d, _)) in self.committed.iter().filter(|(_, c)| c.2 < term) {
            if index < snap.index {
                continue; // compacted into its snapshot, checked when the snapshot was made
            }
            if index == snap.index {
                if snap.term != t {
                    fail.get_or_insert(format!(
                        "Leader Completeness: node {id}, leader of term {term}, has a snapshot ending at committed index {index} with term {} instead of {t}",
                        snap.term
                    ));
                    return;
                }
                continue;
            }
            match n.core.entry(index) {
                Some(e) if e.term == t && digest(e) == d => {}
                other => {
                    fail.get_or_insert(format!(
                        "Leader Completeness: node {id}, leader of term {term}, lacks committed entry {index} (term {t}); has {:?}",
                        other.map(|e| e.term)
                    ));
                    return;
                }
            }
        }
    }

    fn election_safety(&mut self, id: NodeId, term: Term, fail: &mut Option<String>) {
        let l = *self.leaders.entry(term).or_insert(id);
        if l != id {
            fail.get_or_insert(format!(
                "Election Safety: nodes {l} and {id} are both leaders of term {term}"
            ));
        }
    }

    /// A node is about to persist these entries (they are already in its in-memory log).
    pub(crate) fn on_entries(
        &mut self,
        id: NodeId,
        entries: &[Entry],
        nodes: &BTreeMap<NodeId, SimNode>,
        fail: &mut Option<String>,
    ) {
        let Some(n) = nodes.get(&id) else { return };
        for e in entries {
            let prev = if e.index <= 1 {
                0
            } else {
                n.core.term_of(e.index - 1).unwrap_or(0)
            };
            let got = (digest(e), prev);
            let want = *self.written.entry((e.index, e.term)).or_insert(got);
            if want != got {
                fail.get_or_insert(format!(
                    "Log Matching: node {id} has a different entry {} of term {} (or a different predecessor) than another node",
                    e.index, e.term
                ));
                return;
            }
        }
    }

    pub(crate) fn on_apply(&mut self, id: NodeId, e: &Entry, fail: &mut Option<String>) {
        let got = (e.term, digest(e));
        let want = *self.applied.entry(e.index).or_insert(got);
        if want != got {
            fail.get_or_insert(format!(
                "State Machine Safety: node {id} applied entry {} of term {} but another node applied term {} there",
                e.index, e.term, want.0
            ));
        }
    }

    /// After a node handled a Ready.
    pub(crate) fn after_step(
        &mut self,
        id: NodeId,
        nodes: &BTreeMap<NodeId, SimNode>,
        fail: &mut Option<String>,
    ) {
        let Some(n) = nodes.get(&id) else { return };
        let s = n.core.status();
        let last = self.commit.insert(id, s.commit).unwrap_or(0);
        if s.commit < last {
            fail.get_or_insert(format!(
                "commit index of node {id} went back from {last} to {}",
                s.commit
            ));
        }
        if s.role == Role::Leader {
            self.election_safety(id, s.term, fail);
            for index in last + 1..=s.commit {
                if let Some(e) = n.core.entry(index) {
                    self.committed
                        .entry(index)
                        .or_insert((e.term, digest(e), s.term));
                }
            }
            let last_term = n.core.term_of(s.last_index).unwrap_or(0);
            let compacted = n.core.snapshot_meta().index;
            if let Some(&(t, idx, idx_term)) = self.leader_mark.get(&id) {
                if t == s.term
                    && (s.last_index < idx
                        || (idx >= compacted && n.core.term_of(idx) != Some(idx_term)))
                {
                    fail.get_or_insert(format!(
                        "Leader Append-Only: leader {id} of term {t} lost or rewrote entry {idx}"
                    ));
                }
            }
            self.leader_mark
                .insert(id, (s.term, s.last_index, last_term));
        } else {
            self.leader_mark.remove(&id);
        }
    }

    /// A node installed a leader's snapshot: it must end at an index that was applied (by
    /// someone) with the same term, since only committed state is snapshotted.
    pub(crate) fn on_snapshot(
        &mut self,
        id: NodeId,
        meta: SnapshotMeta,
        fail: &mut Option<String>,
    ) {
        match self.applied.get(&meta.index) {
            Some(&(t, _)) if t == meta.term => {}
            other => {
                fail.get_or_insert(format!(
                    "State Machine Safety: node {id} installed a snapshot ending at index {} term {}, but what was applied there is {other:?}",
                    meta.index, meta.term
                ));
            }
        }
    }

    pub(crate) fn on_crash(&mut self, id: NodeId) {
        self.commit.remove(&id);
        self.leader_mark.remove(&id);
    }
}
