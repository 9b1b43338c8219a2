//! Test helpers for the core: build cores in a stated state and a tiny synchronous network
//! that handles Ready batches the way the driver does (persist, send, apply, advance).

use std::collections::{BTreeMap, BTreeSet};

use super::storage::{LogStore, MemStorage};
use super::*;

pub(crate) fn cfg(id: NodeId, peers: &[NodeId]) -> Config {
    let mut c = Config::new(id, peers.to_vec());
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c.max_inflight = 4;
    // The paper's base protocol; PreVote and CheckQuorum have their own tests (`cfg_full`).
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// The production configuration: PreVote and CheckQuorum on.
pub(crate) fn cfg_full(id: NodeId, peers: &[NodeId]) -> Config {
    let mut c = cfg(id, peers);
    c.pre_vote = true;
    c.check_quorum = true;
    c
}

pub(crate) fn entries(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: t,
            index: i as u64 + 1,
            payload: Payload::Command(vec![i as u8].into()),
        })
        .collect()
}

/// A core restored from the given term, vote and log terms (ids 1..=n).
pub(crate) fn core(
    id: NodeId,
    n: u64,
    term: Term,
    vote: Option<NodeId>,
    log_terms: &[Term],
) -> RaftCore {
    let peers: Vec<NodeId> = (1..=n).filter(|&p| p != id).collect();
    RaftCore::new(
        cfg(id, &peers),
        HardState {
            term,
            vote,
            commit: 0,
        },
        entries(log_terms),
    )
    .unwrap()
}

pub(crate) fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        rpc_id: 7,
        body,
    }
}

/// An AppendEntries from `from` to `to`.
pub(crate) fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (LogIndex, Term),
    ents: Vec<Entry>,
    commit: LogIndex,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries: ents,
            leader_commit: commit,
            read_ctx: 0,
        },
    )
}

/// Makes node 1 of 3 the leader of `term + 1` with the given log, and drains its Ready.
pub(crate) fn leader(term: Term, log_terms: &[Term]) -> RaftCore {
    let mut c = core(1, 3, term, None, log_terms);
    campaign(&mut c);
    take_ready(&mut c);
    let t = c.status().term;
    c.step(msg(
        2,
        1,
        t,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(c.status().role, Role::Leader);
    take_ready(&mut c);
    c
}

/// Drains the core's Ready and advances, returning it.
pub(crate) fn take_ready(c: &mut RaftCore) -> Ready {
    let rd = c.ready();
    c.advance();
    rd
}

/// All messages a Ready sends (both lists).
pub(crate) fn all_msgs(rd: &Ready) -> Vec<Message> {
    rd.messages
        .iter()
        .chain(rd.persisted_messages.iter())
        .cloned()
        .collect()
}

/// Ticks a follower or candidate until it campaigns.
pub(crate) fn campaign(c: &mut RaftCore) {
    for _ in 0..100 {
        if c.status().role != Role::Follower {
            return;
        }
        c.tick();
    }
    panic!("no election after 100 ticks");
}

/// A synchronous network of cores with in-memory storage.
pub(crate) struct Net {
    pub(crate) nodes: BTreeMap<NodeId, RaftCore>,
    pub(crate) stores: BTreeMap<NodeId, MemStorage>,
    pub(crate) applied: BTreeMap<NodeId, Vec<Entry>>,
    pub(crate) reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Directed links that drop everything.
    pub(crate) cut: BTreeSet<(NodeId, NodeId)>,
    /// Directed links that delay everything: their messages wait in `held` until `release`.
    pub(crate) hold: BTreeSet<(NodeId, NodeId)>,
    /// Messages delayed on a `hold` link, in the order they were sent.
    pub(crate) held: Vec<Message>,
    /// Snapshots each node installed from a leader, in order.
    pub(crate) installed: BTreeMap<NodeId, Vec<SnapshotMeta>>,
    /// Messages delivered so far, by kind.
    pub(crate) delivered: BTreeMap<&'static str, u64>,
    /// Nodes 1..=initial were started with the static configuration; the others joined
    /// (`add_node`) and restart as joining nodes.
    pub(crate) initial: u64,
    /// Whether the cores run PreVote and CheckQuorum (`with_config`).
    pub(crate) full: bool,
}

impl Net {
    pub(crate) fn new(n: u64) -> Net {
        Net::with_config(n, false)
    }

    /// A network whose cores use PreVote and CheckQuorum when `full` is set.
    pub(crate) fn with_config(n: u64, full: bool) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            cut: BTreeSet::new(),
            hold: BTreeSet::new(),
            held: Vec::new(),
            installed: BTreeMap::new(),
            delivered: BTreeMap::new(),
            initial: n,
            full,
        };
        for id in 1..=n {
            let peers: Vec<NodeId> = (1..=n).filter(|&p| p != id).collect();
            let c = if full {
                cfg_full(id, &peers)
            } else {
                cfg(id, &peers)
            };
            let core = RaftCore::new(c, HardState::default(), vec![]).unwrap();
            net.nodes.insert(id, core);
            net.stores.insert(id, MemStorage::default());
            net.applied.insert(id, Vec::new());
            net.reads.insert(id, Vec::new());
            net.installed.insert(id, Vec::new());
        }
        net
    }

    /// Snapshots `id`'s state at its applied index (the data names the index) and compacts
    /// its log, the way the driver does.
    pub(crate) fn compact(&mut self, id: NodeId) -> SnapshotMeta {
        let core = self.nodes.get_mut(&id).unwrap();
        let meta = core.applied_snapshot_meta();
        let data = bytes::Bytes::from(format!("state@{}", meta.index));
        let membership = Some(core.applied_membership());
        self.stores
            .get_mut(&id)
            .unwrap()
            .install_snapshot(&Snapshot {
                meta,
                data,
                membership,
            })
            .unwrap();
        core.compact(meta.index);
        meta
    }

    /// Proposes `n` one-byte commands at `leader` (not delivered yet).
    pub(crate) fn propose_commands(&mut self, leader: NodeId, n: u8) {
        let core = self.nodes.get_mut(&leader).unwrap();
        for i in 0..n {
            core.propose(vec![i]).unwrap();
        }
    }

    /// Loses `id`'s whole data dir and restarts it empty.
    pub(crate) fn wipe(&mut self, id: NodeId) {
        self.stores.insert(id, MemStorage::default());
        self.restart(id);
    }

    /// Isolates `id` from everyone (both directions).
    pub(crate) fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handles Readys and delivers messages until the network is quiet.
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut outbox = Vec::new();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let core = self.nodes.get_mut(&id).unwrap();
                while core.has_ready() {
                    let rd = core.ready();
                    let store = self.stores.get_mut(&id).unwrap();
                    for mut m in rd.messages.iter().cloned() {
                        // The driver attaches the stored snapshot's bytes.
                        if let MessageBody::InstallSnapshot { snapshot } = &mut m.body {
                            *snapshot = store.snapshot().unwrap().unwrap();
                        }
                        outbox.push(m);
                    }
                    if let Some(snap) = &rd.snapshot {
                        store.install_snapshot(snap).unwrap();
                        self.installed.get_mut(&id).unwrap().push(snap.meta);
                    }
                    store.persist(rd.hard_state.as_ref(), &rd.entries).unwrap();
                    outbox.extend(rd.persisted_messages.iter().cloned());
                    self.applied
                        .get_mut(&id)
                        .unwrap()
                        .extend(rd.committed_entries.iter().cloned());
                    self.reads
                        .get_mut(&id)
                        .unwrap()
                        .extend(rd.read_states.iter().copied());
                    core.advance();
                }
            }
            if outbox.is_empty() {
                return;
            }
            for m in outbox {
                if self.cut.contains(&(m.from, m.to)) {
                    continue;
                }
                if self.hold.contains(&(m.from, m.to)) {
                    self.held.push(m);
                    continue;
                }
                *self.delivered.entry(m.body.kind()).or_default() += 1;
                if let Some(c) = self.nodes.get_mut(&m.to) {
                    c.step(m);
                }
            }
        }
        panic!("network did not settle");
    }

    /// Delivers the held messages that `which` selects (late, in the order they were sent),
    /// then settles.
    pub(crate) fn release(&mut self, which: impl Fn(&Message) -> bool) {
        let (late, keep): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|m| which(m));
        self.held = keep;
        for m in late {
            *self.delivered.entry(m.body.kind()).or_default() += 1;
            if let Some(c) = self.nodes.get_mut(&m.to) {
                c.step(m);
            }
        }
        self.settle();
    }

    /// Ticks every node once, then settles.
    pub(crate) fn tick_all(&mut self) {
        for c in self.nodes.values_mut() {
            c.tick();
        }
        self.settle();
    }

    /// Ticks until exactly one node (among those not isolated) leads, returns it.
    pub(crate) fn elect(&mut self) -> NodeId {
        for _ in 0..500 {
            self.tick_all();
            let leaders: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|c| c.status().role == Role::Leader)
                .map(|c| c.status().id)
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
        }
        panic!("no leader elected");
    }

    /// The configuration node `id` starts with: the static cluster of the first `initial`
    /// nodes, or a joining node's.
    fn node_config(&self, id: NodeId) -> Config {
        let peers: Vec<NodeId> = (1..=self.initial).filter(|&p| p != id).collect();
        let mut c = if self.full {
            cfg_full(id, &peers)
        } else {
            cfg(id, &peers)
        };
        if id > self.initial {
            c.peers.clear();
            c.joining = true;
        }
        c
    }

    /// Starts a new, empty node that joins the cluster (it knows no members until a leader
    /// reaches it: add it with a configuration change).
    pub(crate) fn add_node(&mut self, id: NodeId) {
        assert!(id > self.initial && !self.nodes.contains_key(&id));
        let core = RaftCore::new(self.node_config(id), HardState::default(), vec![]).unwrap();
        self.nodes.insert(id, core);
        self.stores.insert(id, MemStorage::default());
        self.applied.insert(id, Vec::new());
        self.reads.insert(id, Vec::new());
        self.installed.insert(id, Vec::new());
    }

    /// Restarts a node from its storage (a crash loses everything not persisted).
    pub(crate) fn restart(&mut self, id: NodeId) {
        let (hs, log) = self.stores[&id].load().unwrap();
        let snap = self.stores[&id].snapshot().unwrap();
        let meta = snap.as_ref().map_or_else(SnapshotMeta::default, |s| s.meta);
        let membership = snap.and_then(|s| s.membership);
        let mut c = self.node_config(id);
        c.seed = id * 1000 + hs.term;
        let core = RaftCore::restore_with_membership(c, hs, meta, membership, log).unwrap();
        self.nodes.insert(id, core);
        self.applied.insert(id, Vec::new());
    }

    pub(crate) fn status(&self, id: NodeId) -> Status {
        self.nodes[&id].status()
    }
}
