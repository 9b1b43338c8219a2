//! The driver's side of leadership transfer: starting a transfer, handing leadership over at
//! shutdown, mapping refused proposals.

use tracing::info;

use super::Driver;
use crate::node::error::ClientError;
use crate::raft::{NodeId, ProposeError, Term, TransferError};

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
            Err(e @ (TransferError::UnknownTarget(_) | TransferError::TargetIsLearner(_))) => {
                Err(ClientError::Invalid(e.to_string()))
            }
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
