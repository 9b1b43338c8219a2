//! Leadership transfer (Raft thesis §3.10).
//!
//! The leader stops taking proposals, brings the target up to date with normal replication,
//! and once the target's match index equals the leader's last index sends it `TimeoutNow`.
//! The target, if the message comes from its current-term leader, campaigns at once (no
//! PreVote) with `TransferRequestVote`, which voters answer without leader stickiness; the
//! term rules and the log up-to-date check still apply, so the transfer cannot elect a node
//! that misses committed entries. If the target has not taken over within one election
//! timeout the leader abandons the transfer and takes proposals again.
//!
//! Lease reads: once a `TimeoutNow` left, this leader's lease is void for the rest of its
//! term (a delayed `TimeoutNow` can start a sticky-free election at any later time), see
//! `lease.rs`.

use tracing::{debug, info};

use super::{NotLeader, RaftCore};
use crate::raft::message::{Message, MessageBody};
use crate::raft::progress::ProgressState;
use crate::raft::types::{NodeId, Role};

/// A transfer in progress (leader only; cleared by every role or term change).
#[derive(Clone, Copy, Debug)]
pub(super) struct Transfer {
    /// Who should take over.
    pub(super) target: NodeId,
    /// Ticks since the transfer started; abandoned at `election_ticks`.
    elapsed: u32,
    /// A `TimeoutNow` was sent since the last resend slot.
    sent: bool,
}

/// Why a leadership transfer cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node is not the leader.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The target is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    UnknownTarget(NodeId),
    /// The target is this node, which already leads.
    #[error("node {0} is already the leader")]
    TargetIsSelf(NodeId),
    /// The target is a learner: only a voter can lead.
    #[error("node {0} is a learner and cannot become the leader")]
    TargetIsLearner(NodeId),
}

/// Ticks between two `TimeoutNow` to a caught-up target (one may be lost).
const RESEND_TICKS: u32 = 3;

impl RaftCore {
    /// Starts handing leadership to `target` (leader only). Until the target has taken over
    /// or one election timeout has passed, `propose` refuses with
    /// [`super::ProposeError::TransferInProgress`]. Asking again for the same target keeps
    /// the transfer under way (and its deadline); another target replaces it.
    ///
    /// # Errors
    /// [`TransferError`]: not the leader, an unknown target, or this node itself.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            }
            .into());
        }
        if target == self.cfg.id {
            return Err(TransferError::TargetIsSelf(target));
        }
        if !self.membership.contains(target) {
            return Err(TransferError::UnknownTarget(target));
        }
        if !self.membership.is_voter(target) {
            return Err(TransferError::TargetIsLearner(target));
        }
        if self.transfer.is_some_and(|t| t.target == target) {
            return Ok(());
        }
        info!(
            node = self.cfg.id,
            term = self.term,
            target,
            "[node {}] transferring leadership to node {}",
            self.cfg.id,
            target
        );
        self.transfer = Some(Transfer {
            target,
            elapsed: 0,
            sent: false,
        });
        // Normal replication catches the target up, restarted from what it is known to hold
        // (a window of lost messages would otherwise wait for the stall detector); if it is
        // caught up already, hand over now.
        let last = self.log.last_index();
        if let Some(pr) = self.progress.get_mut(&target) {
            // (A snapshot in flight is left to finish: it is the catching up.)
            if pr.matched < last && pr.state != ProgressState::Snapshot {
                pr.become_probe(pr.matched + 1);
            }
        }
        self.send_append(target);
        self.maybe_send_timeout_now(target);
        Ok(())
    }

    /// The peer with the highest match index (the lowest id among equals), to hand
    /// leadership to at shutdown; `None` unless this node leads a cluster with peers.
    pub fn most_up_to_date_peer(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        self.progress
            .iter()
            .filter(|&(&id, _)| self.membership.is_voter(id))
            .max_by_key(|(&id, p)| (p.matched, std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
    }

    /// The node leadership is being transferred to, while a transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    /// Called on every tick: abandons a transfer that took an election timeout, and resends
    /// `TimeoutNow` now and then while the target is caught up (it may have been lost).
    pub(super) fn transfer_tick(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.elapsed += 1;
        if t.elapsed >= self.cfg.election_ticks {
            let target = t.target;
            self.transfer = None;
            info!(
                node = self.cfg.id,
                term = self.term,
                target,
                "[node {}] leadership transfer to node {} abandoned: it did not take over within an election timeout",
                self.cfg.id,
                target
            );
            return;
        }
        if t.elapsed % RESEND_TICKS == 0 {
            t.sent = false;
            let target = t.target;
            self.maybe_send_timeout_now(target);
        }
    }

    /// Sends `TimeoutNow` to `peer` if it is the transfer target and holds our whole log.
    pub(super) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.target != peer || t.sent || self.role != Role::Leader {
            return;
        }
        if self.progress.get(&peer).map(|p| p.matched) != Some(last) {
            return;
        }
        t.sent = true;
        // A delayed TimeoutNow can start a sticky-free election at any later time of this
        // term: no lease reads from now on.
        self.lease.void_for_term();
        debug!(
            node = self.cfg.id,
            peer, last, "transfer target caught up: sending TimeoutNow"
        );
        let msg = self.message(peer, 0, MessageBody::TimeoutNow);
        self.msgs.push(msg);
    }

    /// TimeoutNow receiver: campaign at once, skipping PreVote, if it comes from the leader
    /// of our term (terms are already equal here); otherwise only acknowledge it.
    pub(super) fn handle_timeout_now(&mut self, msg: &Message) {
        self.respond_now(msg, MessageBody::TimeoutNowResponse);
        if self.role != Role::Follower || self.leader != Some(msg.from) || !self.is_voter() {
            debug!(
                node = self.cfg.id,
                from = msg.from,
                role = %self.role,
                "ignoring TimeoutNow: not from my leader"
            );
            return;
        }
        info!(
            node = self.cfg.id,
            term = self.term,
            "[node {}] leader {} handed leadership over: campaigning now",
            self.cfg.id,
            msg.from
        );
        let first = self.persisted_msgs.len();
        self.become_candidate();
        // The campaign's vote requests carry the transfer flag, so voters that heard from
        // the (outgoing) leader recently do not refuse them as sticky followers.
        for m in &mut self.persisted_msgs[first..] {
            if let MessageBody::RequestVote {
                last_log_index,
                last_log_term,
            } = m.body
            {
                m.body = MessageBody::TransferRequestVote {
                    last_log_index,
                    last_log_term,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
