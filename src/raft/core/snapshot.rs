//! Snapshots and log compaction (Raft §7): the node compacting its own log, the leader
//! sending its snapshot to a follower that needs compacted entries, and the follower
//! installing it.

use tracing::{debug, info, warn};

use super::warn_limit::Warning;
use super::RaftCore;
use crate::raft::message::{Message, MessageBody};
use crate::raft::types::{Entry, LogIndex, NodeId, Snapshot, SnapshotMeta, Term};

impl RaftCore {
    /// The meta a snapshot of the state machine taken now must carry: the last applied entry
    /// and its term.
    pub fn applied_snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.applied,
            // applied <= persisted <= last index, and applied >= the snapshot index, so the
            // term is always known.
            term: self.log.term(self.applied).unwrap_or(0),
        }
    }

    /// The snapshot the in-memory log starts after (index 0 without one).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.log.snapshot()
    }

    /// Term of the entry at `index` (the snapshot's term at its own index; `None` if
    /// compacted or past the end).
    pub fn term_of(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// Number of entries in memory after the snapshot.
    pub fn log_len(&self) -> u64 {
        self.log.last_index() - self.log.snapshot().index
    }

    /// Drops the log up to `index`, which a durable snapshot of the state machine now covers
    /// (the driver stored it with `LogStore::install_snapshot`). Indexes not yet applied, or
    /// not above the current snapshot, are ignored.
    pub fn compact(&mut self, index: LogIndex) {
        debug_assert!(
            self.in_flight.is_none(),
            "invariant: compact() between ready() and advance()"
        );
        if index > self.applied || index <= self.log.snapshot().index {
            return;
        }
        // The snapshot records the membership as of its index (`applied_membership`).
        let membership = self.membership_at(index);
        self.log.compact(index);
        self.set_base_membership(membership);
        debug!(node = self.cfg.id, index, "log compacted");
    }

    /// A message from `prev_log_index` that starts inside our snapshot is re-anchored at the
    /// snapshot: everything the snapshot covers is committed, hence identical in the leader's
    /// log (Leader Completeness), so the entries up to it can be skipped.
    pub(super) fn anchor_at_snapshot<'a>(
        &self,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: &'a [Entry],
    ) -> (LogIndex, Term, &'a [Entry]) {
        let snap = self.log.snapshot();
        if prev_log_index >= snap.index {
            return (prev_log_index, prev_log_term, entries);
        }
        let skip = usize::try_from(snap.index - prev_log_index).unwrap_or(usize::MAX);
        (snap.index, snap.term, entries.get(skip..).unwrap_or(&[]))
    }

    /// Leader: `peer` needs entries we compacted, so send our snapshot. The driver attaches
    /// the stored snapshot's bytes to the message.
    pub(super) fn send_snapshot(&mut self, peer: NodeId) {
        let meta = self.log.snapshot();
        let Some(pr) = self.progress.get_mut(&peer) else {
            return;
        };
        pr.become_snapshot(meta.index);
        info!(
            node = self.cfg.id,
            peer,
            index = meta.index,
            term = meta.term,
            "sending snapshot: the follower needs compacted entries"
        );
        let body = MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta,
                data: bytes::Bytes::new(),
                membership: Some(self.base_membership.clone()),
            },
        };
        let msg = self.message(peer, 0, body);
        self.msgs.push(msg);
    }

    /// InstallSnapshot receiver (Figure 13). Terms are already equal. The driver checked
    /// that the data decodes before stepping the message in.
    pub(super) fn handle_install_snapshot(&mut self, msg: &Message, snapshot: &Snapshot) {
        let answer = |success, match_index| MessageBody::AppendEntriesResponse {
            success,
            match_index,
            conflict_index: 0,
            conflict_term: 0,
            read_ctx: 0,
        };
        if !self.follow_leader_of_term(msg) {
            self.respond_now(msg, answer(false, 0));
            return;
        }

        let meta = snapshot.meta;
        if meta.index <= self.commit && self.mutation != super::Mutation::InstallStaleSnapshot {
            // Nothing new: our committed prefix already covers it (and matches the leader's).
            debug!(
                node = self.cfg.id,
                index = meta.index,
                commit = self.commit,
                "snapshot already covered"
            );
            self.respond_now(msg, answer(true, self.commit));
            return;
        }
        if meta.term > msg.term {
            warn_limited!(
                self,
                Warning::SnapshotFromTheFuture,
                from = msg.from,
                "dropping a snapshot from a term after its sender's"
            );
            self.respond_now(msg, answer(false, 0));
            return;
        }
        info!(
            node = self.cfg.id,
            from = msg.from,
            index = meta.index,
            term = meta.term,
            "installing snapshot from the leader"
        );
        self.log.install(meta);
        // The snapshot's membership replaces what the dropped log said (a snapshot without
        // one comes from a leader that predates membership changes: the base stays).
        if let Some(m) = &snapshot.membership {
            self.set_base_membership(m.clone());
        }
        self.refresh_membership();
        self.commit = meta.index;
        // The driver replaces the state machine with the snapshot before it applies anything
        // after it (Ready order), so the snapshot counts as applied.
        self.applied = meta.index;
        self.pending_snapshot = Some(snapshot.clone());
        self.respond_after_persist(msg, answer(true, meta.index));
    }
}

#[cfg(test)]
mod tests {
    use crate::raft::testkit::{cfg, take_ready, Net};
    use crate::raft::types::{Role, SnapshotMeta};
    use crate::raft::{HardState, Message, MessageBody, RaftCore, Snapshot};

    /// Three nodes with ten commands committed everywhere.
    fn cluster_with_ten_commands() -> (Net, u64) {
        let mut net = Net::new(3);
        let leader = net.elect();
        net.propose_commands(leader, 10);
        net.settle();
        net.tick_all(); // the commit index reaches the followers
        (net, leader)
    }

    /// The same, with every node's log compacted.
    fn compacted_cluster() -> (Net, u64) {
        let (mut net, leader) = cluster_with_ten_commands();
        for id in 1..=3 {
            net.compact(id);
        }
        (net, leader)
    }

    #[test]
    fn a_wiped_follower_catches_up_through_a_snapshot() {
        let (mut net, leader) = compacted_cluster();
        let snap = net.nodes[&leader].snapshot_meta();
        assert!(snap.index >= 11, "the leader compacted its log: {snap:?}");
        let wiped = if leader == 3 { 2 } else { 3 };
        net.wipe(wiped);
        net.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(vec![42])
            .unwrap();
        net.settle();
        for _ in 0..super::super::LOST_DATA_ROUNDS + 2 {
            net.tick_all();
        }
        assert!(net.delivered.get("InstallSnapshot").copied().unwrap_or(0) >= 1);
        let last = net.status(leader).last_index;
        assert_eq!(net.status(wiped).last_index, last);
        assert_eq!(net.status(wiped).commit, last);
        assert_eq!(net.installed[&wiped], vec![snap]);
        // After the snapshot, the wiped node applied exactly the entries that follow it.
        let applied: Vec<u64> = net.applied[&wiped].iter().map(|e| e.index).collect();
        assert_eq!(applied, ((snap.index + 1)..=last).collect::<Vec<_>>());
        // Its storage holds the snapshot and the log after it.
        let (_, log) = crate::raft::storage::LogStore::load(&net.stores[&wiped]).unwrap();
        assert_eq!(log.first().map(|e| e.index), Some(snap.index + 1));
    }

    #[test]
    fn without_compaction_no_snapshot_is_sent() {
        // Control: the same scenario with the log intact replicates by AppendEntries only.
        let (mut net, leader) = cluster_with_ten_commands();
        let wiped = if leader == 3 { 2 } else { 3 };
        net.wipe(wiped);
        // The leader trusts what the follower acknowledged until it answered only "my log is
        // shorter" for a few heartbeat rounds.
        for _ in 0..super::super::LOST_DATA_ROUNDS + 2 {
            net.tick_all();
        }
        assert_eq!(net.delivered.get("InstallSnapshot"), None);
        assert_eq!(net.status(wiped).last_index, net.status(leader).last_index);
    }

    #[test]
    fn a_restarted_compacted_node_keeps_replicating() {
        let (mut net, leader) = compacted_cluster();
        let follower = if leader == 1 { 2 } else { 1 };
        net.restart(follower);
        net.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(vec![7])
            .unwrap();
        net.settle();
        net.tick_all();
        assert_eq!(
            net.status(follower).commit,
            net.status(leader).last_index,
            "no snapshot needed: the follower's log still matches after its own snapshot"
        );
        assert!(net.installed[&follower].is_empty());
    }

    #[test]
    fn a_stale_snapshot_is_answered_with_the_commit_index() {
        let (mut net, leader) = compacted_cluster();
        let follower = if leader == 1 { 2 } else { 1 };
        let commit = net.status(follower).commit;
        let term = net.status(leader).term;
        let core = net.nodes.get_mut(&follower).unwrap();
        core.step(Message {
            from: leader,
            to: follower,
            term,
            rpc_id: 7,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta { index: 3, term },
                    data: bytes::Bytes::from_static(b"x"),
                    membership: None,
                },
            },
        });
        let rd = take_ready(core);
        assert!(rd.snapshot.is_none(), "an old snapshot is not installed");
        let answered = rd.messages.iter().any(|m| {
            matches!(m.body, MessageBody::AppendEntriesResponse { success: true, match_index, .. }
                if match_index == commit)
        });
        assert!(answered, "{rd:?}");
    }

    #[test]
    fn restore_starts_after_the_snapshot_with_it_applied() {
        let meta = SnapshotMeta { index: 40, term: 3 };
        let hs = HardState {
            term: 3,
            vote: None,
            commit: 0,
        };
        let core = RaftCore::restore(cfg(1, &[2, 3]), hs, meta, Vec::new()).unwrap();
        assert_eq!(core.status().commit, 40, "a snapshot is committed");
        assert_eq!(core.applied_snapshot_meta(), meta);
        assert_eq!(core.status().last_index, 40);
        assert_eq!(core.status().role, Role::Follower);
    }
}
