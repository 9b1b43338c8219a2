//! Lease-based linearizable reads (Raft thesis §6.4.1), and the follower-side stickiness that
//! makes them safe.
//!
//! # The lease
//! Every heartbeat round of a leader in lease mode gets a fresh read round number, and the
//! leader notes the tick at which it was sent. Followers echo the round of what they answer.
//! When a quorum (counting the leader) has answered round `r`, every member of that quorum
//! received a message the leader sent at or after `sent(r)`. Each of them then refuses votes
//! (and pre-votes) of a higher term until an election timeout (`election_ticks`) has passed on
//! its own clock since it heard from us, so no other leader can be elected before
//! `sent(r) + election_ticks`. The leader serves a read without a heartbeat round while its
//! clock is below `sent(r) + lease_ticks`, where `lease_ticks` is `election_ticks` minus a
//! safety margin: 2 ticks of granularity (a follower's next tick may come right after the
//! message; the leader's clock may run up to one tick ahead), plus 10% (at least one tick) of
//! clock-rate drift. The read is served at the current commit index, which, as for ReadIndex,
//! must hold an entry of the leader's own term.
//!
//! # The clock assumption
//! Ticks stand for real time, measured by each node with its own monotonic clock: a stalled
//! node must be told how many ticks it missed ([`RaftCore::advance_clock`]; the driver and the
//! simulator do so before every input), and the clocks of different nodes may drift apart by
//! less than the margin over one election timeout. No synchronised clocks are needed. A node
//! whose clock runs fast or that is paused between taking the decision and answering (the
//! answer leaves after the pause) breaks the assumption; use ReadIndex when that matters.
//!
//! # Stickiness that survives what plain CheckQuorum forgets
//! Plain leader stickiness (`in_lease`) ends when a node forgets its leader: when it restarts,
//! or adopts a higher term from a late reply. In lease mode a node also remembers *when* it
//! last heard from a leader (`heard_leader_at`), on a clock that starts at 0 when the core is
//! built, counting the start itself as contact: a restarted node refuses votes for one
//! election timeout. Only `TransferRequestVote` (the leader asked for that election) is
//! exempt; and a leader that sent `TimeoutNow` gives its lease up for the rest of its term.

use std::collections::BTreeMap;

use super::RaftCore;
use crate::raft::ready::ReadState;
use crate::raft::types::Role;

/// Lease bookkeeping. The clock is never reset; the rest is per leadership term.
#[derive(Debug, Default)]
pub(super) struct LeaseState {
    /// Ticks since the core was built: `tick()` plus `advance_clock()`.
    clock: u64,
    /// `clock` when this node last accepted an AppendEntries from a leader (0 at start: a
    /// fresh core behaves as if it had just heard from one).
    heard_leader_at: u64,
    /// Leader: the clock when each heartbeat round of this term was sent, by round number.
    /// Only rounds that can still give a lease are kept.
    rounds: BTreeMap<u64, u64>,
    /// Leader: no lease reads for the rest of this term (a TimeoutNow was sent).
    void: bool,
    /// Reads served by lease, over the core's life (for tests and statistics).
    served: u64,
}

impl LeaseState {
    /// Clears what belongs to one leadership term (called from `reset_for_term`).
    pub(super) fn reset_for_term(&mut self) {
        self.rounds.clear();
        self.void = false;
    }

    /// No lease reads for the rest of this term.
    pub(super) fn void_for_term(&mut self) {
        self.void = true;
    }
}

impl RaftCore {
    /// Tells the core that `ticks` tick periods passed without `tick()` being called (the
    /// process was stalled; the driver skips missed ticks so as not to start an election).
    /// Only the lease clock moves; election and heartbeat timers do not.
    pub fn advance_clock(&mut self, ticks: u64) {
        if self.mutation == super::Mutation::LeaseIgnoresStalls {
            return;
        }
        self.lease.clock = self.lease.clock.saturating_add(ticks);
    }

    /// Reads served by lease, without a heartbeat round, since this core was built.
    pub fn lease_reads_served(&self) -> u64 {
        self.lease.served
    }

    /// How long a lease lasts after the round it rests on was sent, in ticks (0: never).
    pub(super) fn lease_ticks(&self) -> u64 {
        let e = u64::from(self.cfg.election_ticks);
        e.saturating_sub(2 + (e / 10).max(1))
    }

    /// The lease clock: ticks since the core was built, stalls included.
    pub(super) fn lease_clock(&self) -> u64 {
        self.lease.clock
    }

    pub(super) fn lease_tick(&mut self) {
        self.lease.clock = self.lease.clock.saturating_add(1);
    }

    /// A follower accepted an AppendEntries from its leader.
    pub(super) fn lease_heard_from_leader(&mut self) {
        self.lease.heard_leader_at = self.lease.clock;
    }

    /// Lease mode: this node heard from a leader (or started) less than an election timeout
    /// ago, so it refuses to help elect another (see the module docs).
    pub(super) fn lease_sticky(&self) -> bool {
        self.cfg.lease_reads
            && self.lease.clock
                < self
                    .lease
                    .heard_leader_at
                    .saturating_add(u64::from(self.cfg.election_ticks))
    }

    /// Leader in lease mode, at each heartbeat: a fresh read round, noted with its send time.
    pub(super) fn lease_new_round(&mut self) {
        if !self.cfg.lease_reads || self.role != Role::Leader {
            return;
        }
        self.read_round += 1;
        let (clock, ticks) = (self.lease.clock, self.lease_ticks());
        self.lease.rounds.insert(self.read_round, clock);
        self.lease
            .rounds
            .retain(|_, sent| sent.saturating_add(ticks) > clock);
    }

    /// The clock value until which this leader holds a lease, if it holds one at all.
    fn lease_until(&self) -> Option<u64> {
        if !self.cfg.lease_reads
            || self.role != Role::Leader
            || self.lease.void
            || self.transfer.is_some()
            || self.sole_voter()
        {
            return None;
        }
        let confirmed = self.confirmed_read_round();
        // The latest noted round at or before the confirmed one was sent no later than it
        // (rounds opened by reads are not noted): a conservative send time.
        let (_, &sent) = self.lease.rounds.range(..=confirmed).next_back()?;
        Some(sent.saturating_add(self.lease_ticks()))
    }

    /// Serves read `id` at the commit index without a heartbeat round if this leader holds a
    /// lease. The caller has checked that an entry of this term is committed.
    pub(super) fn try_lease_read(&mut self, id: u64) -> bool {
        if self
            .lease_until()
            .is_none_or(|until| self.lease.clock >= until)
        {
            return false;
        }
        self.lease.served += 1;
        self.read_states.push(ReadState {
            id,
            index: self.commit,
        });
        true
    }
}

#[cfg(test)]
mod tests;
