//! The Raft safety invariants (Figure 3 of the paper), checked incrementally as the simulation
//! runs, plus "the commit index never goes backwards on a node that did not crash", and the
//! membership rules (issue 15), each against the membership the node itself follows (the last
//! configuration entry in its log, else its snapshot's): a leader won the votes of a quorum of
//! the voters of its membership (grants are recorded as they are sent); no learner or
//! non-member ever campaigns or leads; a configuration a leader appends keeps a quorum in
//! common with the one it has applied (a single-server step); and (`SimConfig::membership`)
//! every node follows the last configuration entry in its log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::world::SimNode;
use crate::raft::{
    Entry, LogIndex, Membership, NodeId, Payload, RaftCore, Role, SnapshotMeta, Term,
};

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
    /// Votes granted (as sent, so a superset of those a candidate received): term ->
    /// candidate -> voters.
    votes: BTreeMap<Term, BTreeMap<NodeId, BTreeSet<NodeId>>>,
    /// Check after every step that each node follows the last configuration entry in its log
    /// (a scan of the log: only in runs that change the membership).
    pub(crate) check_followed_membership: bool,
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
            votes: BTreeMap::new(),
            check_followed_membership: false,
        }
    }

    /// The leader of `term`, if one was seen.
    pub(crate) fn leader_of(&self, term: Term) -> Option<NodeId> {
        self.leaders.get(&term).copied()
    }

    /// Node `from` sent `to` a granted vote for `term`.
    pub(crate) fn on_vote_granted(&mut self, term: Term, from: NodeId, to: NodeId) {
        self.votes
            .entry(term)
            .or_default()
            .entry(to)
            .or_default()
            .insert(from);
    }

    /// A node just became candidate: it must be a voter of the membership it follows, or
    /// be excluded from it only by configuration entries past its commit index while a voter
    /// of the membership at its commit index (`RaftCore::may_campaign`).
    pub(crate) fn on_candidate(
        &mut self,
        id: NodeId,
        term: Term,
        nodes: &BTreeMap<NodeId, SimNode>,
        fail: &mut Option<String>,
    ) {
        let Some(n) = nodes.get(&id) else { return };
        let m = n.core.membership();
        if !may_stand(id, n) {
            fail.get_or_insert(format!(
                "Membership: node {id} campaigns in term {term} but is not a voter of its membership (voters {:?}, learners {:?}) nor, with that membership uncommitted, of its committed one",
                m.voters, m.learners
            ));
        }
    }

    /// A leader's election, against the membership it follows: it may stand (see
    /// [`may_stand`]), and the voters of that membership that granted it their vote in `term`
    /// (its own vote counted only if it is one of them) make a quorum.
    fn elected_by_quorum(&self, id: NodeId, term: Term, n: &SimNode, fail: &mut Option<String>) {
        let m = n.core.membership();
        if !may_stand(id, n) {
            fail.get_or_insert(format!(
                "Membership: node {id} leads term {term} but is not a voter of its membership (voters {:?}, learners {:?}) nor, with that membership uncommitted, of its committed one",
                m.voters, m.learners
            ));
            return;
        }
        let granted = self.votes.get(&term).and_then(|c| c.get(&id));
        let voters: BTreeSet<NodeId> = granted
            .into_iter()
            .flatten()
            .copied()
            .chain([id])
            .filter(|v| m.is_voter(*v))
            .collect();
        if voters.len() < m.quorum() {
            fail.get_or_insert(format!(
                "Membership: node {id} leads term {term} with the votes of {voters:?} (all grants {:?}), short of a quorum of {} of voters {:?}",
                granted.cloned().unwrap_or_default(),
                m.quorum(),
                m.voters
            ));
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
        self.elected_by_quorum(id, term, n, fail);
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
            if let Payload::ConfChange(c) = &e.payload {
                let (s, applied) = (n.core.status(), n.core.applied_membership());
                if s.role == Role::Leader
                    && e.term == s.term
                    && !quorums_overlap(&applied, &c.membership)
                {
                    fail.get_or_insert(format!(
                        "Membership: leader {id} of term {} appends configuration entry {} (voters {:?}) whose quorums need not meet those of the configuration it applied (voters {:?}): two changes at once",
                        s.term, e.index, c.membership.voters, applied.voters
                    ));
                    return;
                }
                // The raft-dev fix (thesis §4.1 errata), checked with the cluster's knowledge
                // rather than the leader's: before an entry of its term is committed, a new
                // leader's log may lack a change committed under another configuration, and
                // a change built on its own may have no quorum in common with that one.
                let term_committed = self
                    .committed
                    .range(..e.index)
                    .next_back()
                    .is_some_and(|(_, &(t, _, _))| t == e.term)
                    || term_entry_on_quorum(n, e, nodes);
                if s.role == Role::Leader && e.term == s.term && !term_committed {
                    fail.get_or_insert(format!(
                        "Membership: leader {id} of term {} appends configuration entry {} before any entry of its term is committed (the single-server change bug of the raft-dev list)",
                        s.term, e.index
                    ));
                    return;
                }
            }
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
        if self.check_followed_membership {
            followed_membership(id, n, fail);
        }
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

/// True if every majority of `a`'s voters meets every majority of `b`'s (the condition a
/// single-server change guarantees): the two can be disjoint only if a majority of `a` fits
/// in the voters `b` lacks plus some shared ones, a majority of `b` in the rest.
pub(crate) fn quorums_overlap(a: &Membership, b: &Membership) -> bool {
    let shared = a.voters.intersection(&b.voters).count();
    let only_a = a.voters.len() - shared;
    let only_b = b.voters.len() - shared;
    let need_a = a.quorum().saturating_sub(only_a);
    let need_b = b.quorum().saturating_sub(only_b);
    need_a + need_b > shared
}

/// Node `n` follows the last configuration entry in its log (if its log has one after the
/// snapshot; else the snapshot's membership, which the core does not expose).
fn followed_membership(id: NodeId, n: &SimNode, fail: &mut Option<String>) {
    let s = n.core.status();
    let last_conf = last_conf_at(&n.core, s.last_index);
    if let Some((i, m)) = last_conf {
        if *m != s.membership {
            fail.get_or_insert(format!(
                "Membership: node {id} follows voters {:?} learners {:?}, but the last configuration entry in its log ({i}) says voters {:?} learners {:?}",
                s.membership.voters, s.membership.learners, m.voters, m.learners
            ));
        }
    }
}

/// Whether node `id` may stand for election, computed from its log here rather than asked of
/// the core: a voter of the membership it follows, or a voter of the membership as of its
/// commit index (the last configuration entry at or before it, else its snapshot's) while a
/// configuration entry past the commit index excludes it.
fn may_stand(id: NodeId, n: &SimNode) -> bool {
    let core = &n.core;
    if core.membership().is_voter(id) {
        return true;
    }
    let status = core.status();
    let uncommitted_conf =
        last_conf_at(core, status.last_index).is_some_and(|(i, _)| i > status.commit);
    if !uncommitted_conf {
        return false;
    }
    let committed = membership_at(core, status.commit);
    committed.is_voter(id)
}

/// Whether the first entry of `conf`'s term in the leader's log (its no-op) is, before `conf`,
/// durable on a quorum of the configuration that precedes `conf`: the cluster's knowledge of
/// "an entry of this term is committed" at the moment the leader appends `conf` (the
/// `committed` record catches up only after the leader's Ready).
fn term_entry_on_quorum(leader: &SimNode, conf: &Entry, nodes: &BTreeMap<NodeId, SimNode>) -> bool {
    let core = &leader.core;
    let term = conf.term;
    let mut first = conf.index;
    while first > 1 && core.term_of(first - 1) == Some(term) {
        first -= 1;
    }
    if first == conf.index {
        return false; // no entry of its term before the change
    }
    let before = membership_at(core, conf.index - 1);
    let holders = before
        .voters
        .iter()
        .filter(|v| {
            nodes.get(v).is_some_and(|n| {
                n.core.persisted_index() >= first && n.core.term_of(first) == Some(term)
            })
        })
        .count();
    holders >= before.quorum()
}

/// The last configuration entry at or before `index` in `core`'s log (after its snapshot),
/// read from the entries here rather than asked of the core, with its index.
fn last_conf_at(core: &RaftCore, index: LogIndex) -> Option<(LogIndex, &Membership)> {
    let first = core.snapshot_meta().index + 1;
    (first..=index).rev().find_map(|i| match core.entry(i) {
        Some(Entry {
            payload: Payload::ConfChange(c),
            ..
        }) => Some((i, &c.membership)),
        _ => None,
    })
}

/// The membership as of `index`: the last configuration entry at or before it, else the
/// snapshot's.
fn membership_at(core: &RaftCore, index: LogIndex) -> Membership {
    last_conf_at(core, index).map_or_else(|| core.snapshot_membership().clone(), |(_, m)| m.clone())
}
