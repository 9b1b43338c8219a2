//! `--join HOST:PORT`: at a node's first start, ask the member at that address for the
//! cluster's identity (its `Cluster/MemberList`), check that the operator added this node
//! (`kvctl member add`) at the address it listens on, and hand the identity to the driver,
//! which records it in the new data dir. Later starts use the data dir's identity and
//! membership and do not call out (`--join` is then ignored, like etcd's
//! `--initial-cluster-state existing` after the first start).

use crate::config::NodeConfig;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::storage::ClusterIdentity;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// How long the first start keeps asking the member at `--join` before it gives up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between two attempts.
const RETRY: Duration = Duration::from_millis(200);

/// Why a node could not join. One line each.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// `--join` is not a usable address.
    #[error("invalid --join address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    /// The member did not answer in time.
    #[error("no answer from the member at --join {addr} within {secs} s: {last}")]
    Unreachable {
        /// The address.
        addr: String,
        /// The bound.
        secs: u64,
        /// The last failure.
        last: String,
    },
    /// The cluster does not list this node.
    #[error("node {id} is not a member of the cluster at {addr} (members: {members}): add it first with `kvctl member add {own}` and start it with the id that prints")]
    NotAdded {
        /// This node's id.
        id: u64,
        /// The `--join` address.
        addr: String,
        /// The members the cluster listed.
        members: String,
        /// This node's address.
        own: String,
    },
    /// The cluster lists this node at another address.
    #[error("the cluster at {addr} has node {id} at {listed}, but this node listens on {own}: start it there, or change it with `kvctl member update {id} {own}`")]
    OtherAddress {
        /// This node's id.
        id: u64,
        /// The `--join` address.
        addr: String,
        /// Where the cluster has it.
        listed: String,
        /// Where it listens.
        own: String,
    },
    /// The cluster removed this id.
    #[error(
        "node {id} was removed from the cluster at {addr}; ids are never reused: add a new member"
    )]
    Removed {
        /// This node's id.
        id: u64,
        /// The `--join` address.
        addr: String,
    },
    /// Stopped while asking.
    #[error("stopped while joining")]
    Stopped,
}

/// The identity of the cluster the member at `addr` belongs to, as this node will record it.
///
/// # Errors
/// [`JoinError`]: no answer within [`JOIN_TIMEOUT`], or the cluster did not add this node at
/// its address.
pub async fn fetch_identity(
    config: &NodeConfig,
    addr: &str,
    stop: &CancellationToken,
) -> Result<ClusterIdentity, JoinError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| JoinError::BadAddress(addr.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let mut client = ClusterClient::new(endpoint.connect_lazy());
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let list = loop {
        let last = match client.member_list(pb::MemberListRequest {}).await {
            Ok(r) => break r.into_inner(),
            Err(status) => status.message().to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::Unreachable {
                addr: addr.to_string(),
                secs: JOIN_TIMEOUT.as_secs(),
                last,
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(JoinError::Stopped),
            _ = tokio::time::sleep(RETRY) => {}
        }
    };
    identity_from(config, addr, list)
}

/// Checks `list` names this node at its address, and builds the identity to record.
fn identity_from(
    config: &NodeConfig,
    addr: &str,
    list: pb::MemberListResponse,
) -> Result<ClusterIdentity, JoinError> {
    let own = config.address();
    if list.removed.contains(&config.id) {
        return Err(JoinError::Removed {
            id: config.id,
            addr: addr.to_string(),
        });
    }
    let Some(me) = list.members.iter().find(|m| m.id == config.id) else {
        let members = list
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.peer_address))
            .collect::<Vec<_>>()
            .join(",");
        return Err(JoinError::NotAdded {
            id: config.id,
            addr: addr.to_string(),
            members,
            own,
        });
    };
    if me.peer_address != own {
        return Err(JoinError::OtherAddress {
            id: config.id,
            addr: addr.to_string(),
            listed: me.peer_address.clone(),
            own,
        });
    }
    Ok(ClusterIdentity {
        cluster_id: list.cluster_id,
        node_id: config.id,
        members: list
            .members
            .into_iter()
            .map(|m| (m.id, m.peer_address))
            .collect(),
        token: config.cluster_token.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> pb::MemberListResponse {
        let m = |id: u64| pb::Member {
            id,
            peer_address: format!("127.0.0.1:900{id}"),
            ..Default::default()
        };
        pb::MemberListResponse {
            cluster_id: 0xabc,
            member_id: 1,
            leader_id: 1,
            members: vec![m(1), m(2), m(3), m(4)],
            removed: vec![5],
        }
    }

    #[test]
    fn a_node_joins_only_as_the_member_it_was_added_as() {
        let mut c = NodeConfig::new(4, 9004);
        let id = identity_from(&c, "h:1", list()).unwrap();
        assert_eq!(id.cluster_id, 0xabc);
        assert_eq!(id.members.len(), 4);
        assert_eq!(id.members[&2], "127.0.0.1:9002");
        c.port = 9009;
        assert!(matches!(
            identity_from(&c, "h:1", list()),
            Err(JoinError::OtherAddress { .. })
        ));
        let c = NodeConfig::new(6, 9006);
        let e = identity_from(&c, "h:1", list()).unwrap_err().to_string();
        assert!(e.starts_with("node 6 is not a member"), "{e}");
        let c = NodeConfig::new(5, 9005);
        assert!(matches!(
            identity_from(&c, "h:1", list()),
            Err(JoinError::Removed { .. })
        ));
    }
}
