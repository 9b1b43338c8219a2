//! Cluster administration: leadership transfer and membership changes.

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

/// Membership administration (`kvstore.v1.Cluster` member calls).
impl Client {
    /// The members as the first reachable node knows them (the leader's answer also has each
    /// member's lag).
    ///
    /// # Errors
    /// No node answered before the deadline.
    pub async fn member_list(&mut self) -> Result<pb::MemberListResponse, ClientError> {
        self.run("member-list", false, |channel| async move {
            endpoints::cluster(channel)
                .member_list(pb::MemberListRequest {})
                .await
        })
        .await
    }

    /// Adds a member at `peer_address` (`HOST:PORT`), as a learner or a voter; the cluster
    /// chooses its id. Answered once the change is applied on the leader.
    ///
    /// # Errors
    /// The leader refused it (etcd's messages: "Peer URLs already exists", ...), or no
    /// leader answered before the deadline.
    pub async fn member_add(
        &mut self,
        peer_address: &str,
        is_learner: bool,
    ) -> Result<pb::MemberAddResponse, ClientError> {
        let request = pb::MemberAddRequest {
            peer_address: peer_address.to_string(),
            is_learner,
        };
        self.run("member-add", true, |channel| {
            let request = request.clone();
            async move { endpoints::cluster(channel).member_add(request).await }
        })
        .await
    }

    /// Removes member `id` for good (`force` skips the live-quorum check).
    ///
    /// # Errors
    /// As [`Client::member_add`] ("member not found", "not enough started members", ...).
    pub async fn member_remove(
        &mut self,
        id: u64,
        force: bool,
    ) -> Result<pb::MemberRemoveResponse, ClientError> {
        self.run("member-remove", true, |channel| async move {
            endpoints::cluster(channel)
                .member_remove(pb::MemberRemoveRequest { id, force })
                .await
        })
        .await
    }

    /// Makes learner `id` a voter (refused while it is far behind the leader).
    ///
    /// # Errors
    /// As [`Client::member_add`] ("can only promote a learner member which is in sync with
    /// leader", ...).
    pub async fn member_promote(
        &mut self,
        id: u64,
    ) -> Result<pb::MemberPromoteResponse, ClientError> {
        self.run("member-promote", true, |channel| async move {
            endpoints::cluster(channel)
                .member_promote(pb::MemberPromoteRequest { id })
                .await
        })
        .await
    }

    /// Changes member `id`'s peer address.
    ///
    /// # Errors
    /// As [`Client::member_add`].
    pub async fn member_update(
        &mut self,
        id: u64,
        peer_address: &str,
    ) -> Result<pb::MemberUpdateResponse, ClientError> {
        let request = pb::MemberUpdateRequest {
            id,
            peer_address: peer_address.to_string(),
        };
        self.run("member-update", true, |channel| {
            let request = request.clone();
            async move { endpoints::cluster(channel).member_update(request).await }
        })
        .await
    }
}
