//! Leadership transfer and the lease clock in the simulated driver.

use std::time::Duration;

use super::{World, TICK};
use crate::raft::{NodeId, TransferError};

impl World {
    /// `kvctl transfer-leader target` reached node `id`: start the transfer if it leads
    /// (the reply to the operator is not modelled; refusals are only traced).
    pub(super) fn transfer(&mut self, id: NodeId, target: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let result = n.core.transfer_leadership(target);
        if result.is_ok() {
            self.outcome.transfers += 1;
        }
        self.note(|| match result {
            Ok(()) => format!("TRANSFER node {id} hands leadership to node {target}"),
            Err(TransferError::TargetIsSelf(_)) => {
                format!("TRANSFER to node {target}: leads already")
            }
            Err(e) => format!("TRANSFER node {id} -> {target} refused: {e}"),
        });
    }

    /// As the driver does before every input: credit the core's lease clock with the tick
    /// periods this life of the node missed (paused, or busy on a slow disk), so its clock
    /// never runs behind simulated time. Without this a resumed zombie leader would count
    /// its lease in the ticks it happened to receive.
    pub(super) fn catch_up_clock(&mut self, id: NodeId) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let elapsed = Duration::from_micros(now.saturating_sub(n.born));
        let missed = n.clock.catch_up(elapsed, Duration::from_micros(TICK));
        if missed > 0 {
            n.core.advance_clock(missed);
        }
    }
}
