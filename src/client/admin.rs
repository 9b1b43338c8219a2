//! Cluster administration: leadership transfer.

use super::endpoints;
use super::{Client, ClientError};
use crate::pb;

impl Client {
    /// Moves leadership to node `target`: finds the leader (following redirects), asks it to
    /// hand over, and returns once `target` leads, with its term. The leader refuses writes
    /// while it hands over (other clients retry them). If `target` already leads this
    /// returns at once.
    ///
    /// # Errors
    /// `target` is not a member ([`ClientError::InvalidArgument`]), or the transfer did not
    /// complete before the deadline (retried meanwhile; [`ClientError::Timeout`]).
    pub async fn transfer_leadership(&mut self, target: u64) -> Result<u64, ClientError> {
        let request = pb::TransferLeadershipRequest { target_id: target };
        let response = self
            .run("transfer-leader", true, |channel| async move {
                endpoints::cluster(channel)
                    .transfer_leadership(request)
                    .await
            })
            .await?;
        Ok(response.term)
    }
}
