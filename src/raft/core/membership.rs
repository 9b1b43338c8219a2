//! Membership changes in the core (Raft thesis §4.1–4.3, single-server changes with learners;
//! the rules and why a change takes effect on append are in `raft/membership.rs`).
//!
//! The leader proposes a change with [`RaftCore::propose_conf_change`]; every node follows the
//! last configuration entry in its log ([`RaftCore::refresh_membership`]). Quorums (commit,
//! votes, PreVote, CheckQuorum, ReadIndex and leases) count voters only. A leader replicates
//! to voters, learners, and to a node it is removing until the removal commits (the removed
//! node then learns that it was removed); a leader that removed itself hands leadership to the
//! most up-to-date voter and steps down once the removal commits.

use tracing::info;

use super::{Mutation, NotLeader, ProposeError, Proposed, RaftCore};
use crate::raft::membership::{ConfChange, ConfChangeError, ConfChangeKind, ConfEntry, Membership};
use crate::raft::message::MessageBody;
use crate::raft::progress::Progress;
use crate::raft::types::{Entry, LogIndex, NodeId, Payload, Role};

/// A learner is promoted only once its log holds at least this share (in percent) of the
/// leader's (etcd's `readyPercent`, 0.9): a voter far behind would make the cluster depend on
/// a node that cannot acknowledge new entries for a long while.
pub(crate) const LEARNER_READY_PERCENT: u64 = 90;

impl RaftCore {
    /// The membership this node follows (see [`crate::raft::Status::membership`]).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The membership of the snapshot the log starts after (else the configured one).
    pub fn snapshot_membership(&self) -> &Membership {
        &self.base_membership
    }

    /// The membership as of the applied index: what a snapshot of the state machine taken now
    /// must record (`Snapshot::membership`).
    pub fn applied_membership(&self) -> Membership {
        self.membership_at(self.applied)
    }

    /// True if messages from `id` are refused as coming from a removed member (the driver
    /// can tell such a peer `this node was removed from the cluster`): only a removal this
    /// node knows is committed. An uncommitted one may still be truncated (its leader lost
    /// its term before a quorum had it), and the node it names may then lead.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.membership.removed.contains(&id) && !self.uncommitted_removals().any(|r| r == id)
    }

    /// The ids whose removal this node knows is committed (see [`RaftCore::is_removed`]).
    pub fn committed_removals(&self) -> std::collections::BTreeSet<NodeId> {
        let mut removed = self.membership.removed.clone();
        for id in self.uncommitted_removals() {
            removed.remove(&id);
        }
        removed
    }

    /// The members that configuration entries past the commit index remove (ids are never
    /// reused, so each id is removed by at most one entry of a log).
    fn uncommitted_removals(&self) -> impl Iterator<Item = NodeId> + '_ {
        let from = self.commit.max(self.log.snapshot().index) + 1;
        let to = if self.conf_index > self.commit {
            self.log.last_index()
        } else {
            0 // no configuration entry past the commit index: nothing to scan
        };
        (from..=to).filter_map(|i| match self.log.get(i).map(|e| &e.payload) {
            Some(Payload::ConfChange(c)) if c.change.kind == ConfChangeKind::Remove => {
                Some(c.change.node)
            }
            _ => None,
        })
    }

    /// Whether this node may start an election: it is a voter in the membership it follows,
    /// or that membership comes from an uncommitted entry and it is a voter in the committed
    /// one (the latest configuration entry at or before the commit index).
    ///
    /// The second case is what "effective on append" needs for liveness. A node whose log
    /// holds an uncommitted change that removes it (or makes it a learner) may hold the
    /// longest log: say a leader of two voters removes itself and restarts before the removal
    /// commits. The other voter's log lacks the entry, so it cannot win this node's vote, and
    /// were this node to wait as a non-voter, no one would ever lead. It campaigns as the
    /// candidate of its latest configuration: the votes that count are that configuration's
    /// voters' (its own is not among them), exactly as a leader that removed itself counts
    /// acknowledgements; once elected it commits the change and hands leadership over
    /// (`conf_committed`). Election Safety is unchanged: every quorum is still a quorum of the
    /// candidate's latest configuration.
    pub(super) fn may_campaign(&self) -> bool {
        if self.is_voter() {
            return true;
        }
        self.mutation != Mutation::ExcludedNeverCampaigns
            && self.conf_index > self.commit
            && self.membership_at(self.commit).is_voter(self.cfg.id)
    }

    /// Proposes a membership change (leader only). The entry takes effect on each node once it
    /// is in its log; the caller learns the outcome like any proposal (the entry at
    /// `Proposed::index` applied with `Proposed::term`). `force` skips the strict
    /// reconfiguration check (etcd `--strict-reconfig-check=false`), nothing else.
    ///
    /// # Errors
    /// [`ConfChangeError`]: not the leader or transferring; no entry of this term committed
    /// yet; a change not yet applied; a change that does not fit the membership; promoting a
    /// learner below [`LEARNER_READY_PERCENT`] of the leader's log; a change that would leave
    /// fewer live voters than the new quorum (unless `force`).
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
        force: bool,
    ) -> Result<Proposed, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::from(NotLeader {
                leader: self.leader,
            })
            .into());
        }
        if let Some(t) = &self.transfer {
            return Err(ProposeError::TransferInProgress { target: t.target }.into());
        }
        // The raft-dev fix (thesis §4.1 errata): until an entry of its term commits, this
        // leader's log may lack a change an earlier leader committed under another
        // configuration, and the two configurations need not share a quorum.
        if self.log.term(self.commit) != Some(self.term)
            && self.mutation != Mutation::ConfChangeBeforeTermCommit
        {
            return Err(ConfChangeError::NoCommitInTerm);
        }
        // One change at a time (thesis §4.1): the next is built on a membership every node
        // that matters already follows. Waiting for it to be applied (not only committed)
        // also gives the driver the previous change before the next one.
        if self.conf_index > self.applied && self.mutation != Mutation::ConcurrentConfChanges {
            return Err(ConfChangeError::ChangeInProgress(self.conf_index));
        }
        let next = self.membership.apply(&change)?;
        let last = self.log.last_index();
        if change.kind == ConfChangeKind::PromoteLearner {
            let matched = self.progress.get(&change.node).map_or(0, |p| p.matched);
            if u128::from(matched) * 100 < u128::from(last) * u128::from(LEARNER_READY_PERCENT) {
                return Err(ConfChangeError::LearnerNotReady {
                    node: change.node,
                    matched,
                    last,
                    behind: last - matched,
                    percent: LEARNER_READY_PERCENT,
                });
            }
        }
        if !force && next.voters != self.membership.voters {
            let live = next.voters.iter().filter(|&&v| self.is_live(v)).count();
            if live < next.quorum() {
                let what = match change.kind {
                    ConfChangeKind::Remove => "removing",
                    ConfChangeKind::AddVoter => "adding",
                    _ => "promoting",
                };
                return Err(ConfChangeError::WouldLoseQuorum {
                    change: format!("{what} member {}", change.node),
                    live,
                    quorum: next.quorum(),
                });
            }
        }
        let index = last + 1;
        info!(
            node = self.cfg.id,
            term = self.term,
            index,
            member = change.node,
            kind = ?change.kind,
            "proposing a membership change"
        );
        self.log.push(Entry {
            term: self.term,
            index,
            payload: Payload::ConfChange(Box::new(ConfEntry {
                change,
                membership: next,
            })),
        });
        self.refresh_membership();
        self.need_broadcast = true;
        Ok(Proposed {
            index,
            term: self.term,
        })
    }

    /// Leader: a voter heard from within an election timeout (this node always is).
    fn is_live(&self, id: NodeId) -> bool {
        if id == self.cfg.id {
            return true;
        }
        let now = self.lease_clock();
        let window = u64::from(self.cfg.election_ticks);
        self.progress
            .get(&id)
            .and_then(|p| p.heard_at)
            .is_some_and(|at| now.saturating_sub(at) < window)
    }

    /// This node votes in the membership it follows.
    pub(super) fn is_voter(&self) -> bool {
        self.membership.is_voter(self.cfg.id)
    }

    /// This node is the only voter: its own acknowledgement is a quorum.
    pub(super) fn sole_voter(&self) -> bool {
        self.membership.voters.iter().all(|&v| v == self.cfg.id)
    }

    /// The voters other than this node (who gets vote and pre-vote requests).
    pub(super) fn other_voters(&self) -> Vec<NodeId> {
        let me = self.cfg.id;
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    /// Leader: every node it replicates to (voters, learners, a node being removed).
    pub(super) fn replication_targets(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// Whether a message from `msg.from` may enter the core at all. Refused: this node itself,
    /// and members whose removal this node knows is committed (ids are never reused, so a
    /// removed node that comes back cannot disrupt the cluster with elections), except
    /// - a node this leader still replicates to (being removed, its removal not committed
    ///   everywhere yet);
    /// - the leader this node follows in the current term (a leader removing itself keeps
    ///   leading until its removal commits, then sends `TimeoutNow` to its successor).
    ///
    /// Ids this node's membership does not know are accepted: a node that was down while a
    /// member joined, was promoted and won an election hears of it first from its messages
    /// (refusing them would leave it behind for good). An uncommitted removal does not refuse
    /// either: its entry may be truncated and the node it names may lead.
    pub(super) fn accepts_from(&self, msg: &crate::raft::Message) -> bool {
        let from = msg.from;
        if from == self.cfg.id {
            return false;
        }
        // Before the removed check: a leader that removed itself is still this term's leader,
        // and a leader hears the answers of a node it is removing until it lets it go.
        if (self.leader == Some(from) && msg.term == self.term) || self.progress.contains_key(&from)
        {
            return true;
        }
        if self.mutation == Mutation::RefuseUnknownAndUncommitted {
            return !self.membership.removed.contains(&from)
                && (self.membership.contains(from) || !self.membership.contains(self.cfg.id));
        }
        !self.is_removed(from)
    }

    /// The membership as of `index`: the last configuration entry at or before it in the
    /// log, else the snapshot's.
    pub(super) fn membership_at(&self, index: LogIndex) -> Membership {
        self.last_conf_at(index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    fn last_conf_at(&self, index: LogIndex) -> Option<(LogIndex, &Membership)> {
        let first = self.log.snapshot().index + 1;
        (first..=index.min(self.log.last_index()))
            .rev()
            .find_map(|i| match self.log.get(i).map(|e| &e.payload) {
                Some(Payload::ConfChange(c)) => Some((i, &c.membership)),
                _ => None,
            })
    }

    /// Makes the core follow the last configuration entry in its log (else the snapshot's
    /// membership): after appending or truncating configuration entries, installing a
    /// snapshot, or restarting. As leader, starts replicating to new members.
    pub(super) fn refresh_membership(&mut self) {
        let (index, membership) = match self.last_conf_at(self.log.last_index()) {
            Some((i, m)) => (i, m.clone()),
            None => (0, self.base_membership.clone()),
        };
        if membership != self.membership {
            info!(
                node = self.cfg.id,
                index,
                voters = ?membership.voters,
                learners = ?membership.learners,
                "membership changed"
            );
        }
        self.membership = membership;
        self.conf_index = index;
        if self.role == Role::Leader {
            // A new member is probed from the last entry (the configuration entry that added
            // it): its rejection says where its log ends. (Probing from past the end would
            // send nothing, and heartbeats, anchored at its match, always succeed.)
            let next = self.log.last_index();
            for p in self.membership.members().filter(|&p| p != self.cfg.id) {
                self.progress
                    .entry(p)
                    .or_insert_with(|| Progress::new(next));
            }
            self.prune_progress();
        }
    }

    /// Leader: stops replicating to nodes that left, once the configuration without them is
    /// committed and each has acknowledged it (or is not live: a dead node is not waited
    /// for). Each gets a last heartbeat that carries the commit index up to what it holds, so
    /// a node that has its removal entry learns that the removal committed. Called when the
    /// commit index moves and at every heartbeat round.
    pub(super) fn prune_progress(&mut self) {
        if self.conf_index > self.commit {
            return;
        }
        let gone: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|&(&p, pr)| {
                !self.membership.contains(p) && (pr.matched >= self.conf_index || !self.is_live(p))
            })
            .map(|(&p, _)| p)
            .collect();
        for p in gone {
            self.send_heartbeat(p);
            self.progress.remove(&p);
        }
    }

    /// Leader, after the commit index moved: once the latest configuration is committed, nodes
    /// it removed are dropped, and if it removed this node, leadership goes to the most
    /// up-to-date voter (`TimeoutNow` if it holds the whole log) and this node steps down.
    pub(super) fn conf_committed(&mut self) {
        if self.role != Role::Leader || self.conf_index > self.commit {
            return;
        }
        self.prune_progress();
        if self.is_voter() {
            return;
        }
        let last = self.log.last_index();
        let successor = self
            .progress
            .iter()
            .filter(|&(&id, p)| self.membership.is_voter(id) && p.matched == last)
            .map(|(&id, _)| id)
            .next();
        info!(
            node = self.cfg.id,
            term = self.term,
            "[node {}] stepping down: this node was removed from the cluster",
            self.cfg.id
        );
        if let Some(to) = successor {
            let msg = self.message(to, 0, MessageBody::TimeoutNow);
            self.msgs.push(msg);
        }
        self.become_follower(self.term, None);
    }

    /// Notes configuration entries handed out to be applied: one that removes this node
    /// makes it report `removed`.
    pub(super) fn note_applied_confs(&mut self, entries: &[Entry]) {
        let me = self.cfg.id;
        let removes_me = entries.iter().any(
            |e| matches!(&e.payload, Payload::ConfChange(c) if c.membership.removed.contains(&me)),
        );
        if removes_me && !self.removed {
            self.removed = true;
            info!(
                node = me,
                "[node {me}] this node was removed from the cluster"
            );
        }
    }

    /// A snapshot (installed from a leader, or taken here) now starts the log: its membership
    /// becomes the base.
    pub(super) fn set_base_membership(&mut self, membership: Membership) {
        if membership.removed.contains(&self.cfg.id) && !self.removed {
            self.removed = true;
            info!(
                node = self.cfg.id,
                "[node {}] this node was removed from the cluster", self.cfg.id
            );
        }
        self.base_membership = membership;
    }
}
