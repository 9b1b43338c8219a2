//! `kvstore.v1.Cluster`: the node's status, from the driver's last published snapshot (one
//! consistent moment: role, term, leader and indexes together).
//!
//! `address` and `leader_address` are client addresses: this node's advertised one, and the
//! one the leader advertises (its configured `--peers` address until heard from);
//! `peers` lists the configured peer addresses, where this node dials them.

use super::client_urls::ClientUrls;
use super::member_service as members;
use crate::config::NodeConfig;
use crate::node::{NodeHandle, NodeStatus};
use crate::pb;
use crate::raft::Role;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Cluster service of one node.
#[derive(Clone, Debug)]
pub struct ClusterService {
    config: Arc<NodeConfig>,
    urls: ClientUrls,
    node: NodeHandle,
}

impl ClusterService {
    /// A service describing `node`, configured by `config`, with the client addresses in
    /// `urls`.
    pub fn new(config: Arc<NodeConfig>, urls: ClientUrls, node: NodeHandle) -> Self {
        ClusterService { config, urls, node }
    }
}

/// The wire role.
pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Follower => pb::Role::Follower,
        Role::Candidate => pb::Role::Candidate,
        Role::Leader => pb::Role::Leader,
    }
}

/// Builds the answer from one status snapshot.
pub fn status_response(
    config: &NodeConfig,
    urls: &ClientUrls,
    s: &NodeStatus,
) -> pb::StatusResponse {
    pb::StatusResponse {
        id: s.id,
        role: role_to_pb(s.role) as i32,
        term: s.term,
        leader_id: s.leader.unwrap_or(0),
        leader_address: s
            .leader
            .and_then(|id| urls.address_of(id))
            .unwrap_or_default(),
        commit_index: s.commit,
        last_applied: s.applied,
        last_log_index: s.last_index,
        peers: config
            .peers
            .iter()
            .map(|p| pb::Peer {
                id: p.id,
                address: p.addr.clone(),
            })
            .collect(),
        address: urls.own().to_string(),
        members: super::member_service::members_pb(config, s),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status_response(
            &self.config,
            &self.urls,
            &self.node.status(),
        )))
    }

    async fn transfer_leadership(
        &self,
        request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        let target = request.into_inner().target_id;
        if target == 0 {
            return Err(Status::invalid_argument("target_id must not be 0"));
        }
        let wait = self.config.election_timeout * TRANSFER_WAIT_ELECTIONS;
        let (leader_id, term) = self.node.transfer_leadership(target, wait).await?;
        Ok(Response::new(pb::TransferLeadershipResponse {
            leader_id,
            term,
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        // The data dir's cluster id (a joined node's is the cluster's, not its flags').
        let status = self.node.status();
        Ok(Response::new(members::member_list(
            &self.config,
            status.cluster_id,
            &status,
        )))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        members::member_add(
            &self.config,
            &self.node,
            request.into_inner(),
            members::change_status,
        )
        .await
        .map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        members::member_remove(
            &self.config,
            &self.node,
            request.into_inner(),
            members::change_status,
        )
        .await
        .map(Response::new)
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        members::member_promote(
            &self.config,
            &self.node,
            request.into_inner(),
            members::change_status,
        )
        .await
        .map(Response::new)
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        members::member_update(
            &self.config,
            &self.node,
            request.into_inner(),
            members::change_status,
        )
        .await
        .map(Response::new)
    }
}

/// `TransferLeadership` waits this many election timeouts for the target to take over (the
/// leader abandons the transfer after one).
const TRANSFER_WAIT_ELECTIONS: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_peers;

    /// Node 2's status as a follower of node 3.
    fn follower_of_3() -> NodeStatus {
        NodeStatus {
            id: 2,
            role: Role::Follower,
            term: 4,
            leader: Some(3),
            commit: 10,
            applied: 9,
            last_index: 11,
            revision: 5,
            compact_revision: 0,
            state_bytes: 0,
            membership: crate::raft::Membership::with_voters([1, 2, 3]),
            matched: Default::default(),
            cluster_id: 0,
            committed_removals: Default::default(),
        }
    }

    #[test]
    fn status_maps_role_leader_and_peers() {
        let mut config = NodeConfig::new(2, 9002);
        config.peers = parse_peers("9001,9003", 2).unwrap();
        let s = follower_of_3();
        let urls = ClientUrls::new(&config);
        let r = status_response(&config, &urls, &s);
        assert_eq!(r.role, pb::Role::Follower as i32);
        assert_eq!((r.id, r.term, r.leader_id), (2, 4, 3));
        assert_eq!(r.leader_address, "127.0.0.1:9003");
        assert_eq!(
            (r.commit_index, r.last_applied, r.last_log_index),
            (10, 9, 11)
        );
        assert_eq!(r.address, "127.0.0.1:9002");
        assert_eq!(r.peers.len(), 2);
        assert_eq!(r.peers[0].id, 1);

        let leader = status_response(
            &config,
            &urls,
            &NodeStatus {
                role: Role::Leader,
                leader: Some(2),
                ..s.clone()
            },
        );
        assert_eq!(leader.role, pb::Role::Leader as i32);
        assert_eq!(leader.leader_address, "127.0.0.1:9002");
        let none = status_response(
            &config,
            &urls,
            &NodeStatus {
                role: Role::Candidate,
                leader: None,
                ..s
            },
        );
        assert_eq!(none.role, pb::Role::Candidate as i32);
        assert_eq!((none.leader_id, none.leader_address.as_str()), (0, ""));
    }

    #[test]
    fn status_shows_advertised_client_addresses() {
        let mut config = NodeConfig::new(2, 9002);
        config.host = "0.0.0.0".into();
        config.advertise_client_urls = vec!["kv-2.example:2379".into()];
        config.peers = parse_peers("9001,9003", 2).unwrap();
        let urls = ClientUrls::new(&config);
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            crate::rpc::client_urls::CLIENT_URL_KEY,
            "kv-3.example:2379".parse().unwrap(),
        );
        urls.learn(3, &md);
        let s = follower_of_3();
        let r = status_response(&config, &urls, &s);
        assert_eq!(r.address, "kv-2.example:2379");
        assert_eq!(r.leader_address, "kv-3.example:2379");
        assert_eq!(r.peers[1].address, "127.0.0.1:9003");
        let own = status_response(
            &config,
            &urls,
            &NodeStatus {
                role: Role::Leader,
                leader: Some(2),
                ..s
            },
        );
        assert_eq!(own.leader_address, "kv-2.example:2379");
    }
}
