//! The driver's side of leadership transfer and lease reads: starting a transfer, handing
//! leadership over at shutdown, mapping refused proposals, and the lease clock.

use std::time::{Duration, Instant};

use tracing::info;

use super::Driver;
use crate::node::error::ClientError;
use crate::raft::{NodeId, ProposeError, RaftCore, Term, TransferError};

/// Keeps the core's lease clock at or ahead of real time. The tick interval skips missed
/// ticks (so a stalled node does not start an election the moment it wakes), which would
/// make the clock of a stalled leader run slow and its lease look longer than it is; before
/// every tick and every linearizable read the driver credits the core with the periods it
/// missed ([`RaftCore::advance_clock`]). The core then counts at most one tick ahead of
/// real time, never behind; the lease margin covers that tick.
#[derive(Debug)]
pub(super) struct TickClock {
    start: Instant,
    /// Ticks credited to the core so far (ticks delivered plus periods advanced).
    given: u64,
}

impl TickClock {
    pub(super) fn new() -> Self {
        TickClock {
            start: Instant::now(),
            given: 0,
        }
    }

    /// Credits the core with every whole tick period since the start not yet counted.
    pub(super) fn catch_up(&mut self, core: &mut RaftCore, period: Duration) {
        let periods = self.start.elapsed().as_nanos() / period.as_nanos().max(1);
        let real = u64::try_from(periods).unwrap_or(u64::MAX);
        if real > self.given {
            core.advance_clock(real - self.given);
            self.given = real;
        }
    }

    /// A `tick()` was delivered.
    pub(super) fn ticked(&mut self) {
        self.given = self.given.saturating_add(1);
    }
}

impl Driver {
    /// The answer to a refused proposal.
    pub(super) fn refused(&self, err: ProposeError) -> ClientError {
        match err {
            ProposeError::NotLeader(e) => self.not_leader(e.leader),
            ProposeError::TransferInProgress { .. } => ClientError::TransferInProgress,
        }
    }

    /// Starts a transfer to `target`; returns the term it starts in.
    pub(super) fn transfer_leadership(&mut self, target: NodeId) -> Result<Term, ClientError> {
        let term = self.core.status().term;
        match self.core.transfer_leadership(target) {
            // The target already leads: nothing to do (the caller sees it in the status).
            Ok(()) | Err(TransferError::TargetIsSelf(_)) => Ok(term),
            Err(TransferError::NotLeader(e)) => Err(self.not_leader(e.leader)),
            Err(e @ TransferError::UnknownTarget(_)) => Err(ClientError::Invalid(e.to_string())),
        }
    }

    /// Shutdown of a leader: starts a transfer to the most up-to-date peer.
    pub(super) fn hand_over(&mut self) -> Option<(NodeId, Term)> {
        let target = self.core.most_up_to_date_peer()?;
        let term = self.core.status().term;
        self.core.transfer_leadership(target).ok()?;
        info!(
            term,
            target, "shutting down as leader: handing leadership to node {target} first"
        );
        Some((target, term))
    }
}
