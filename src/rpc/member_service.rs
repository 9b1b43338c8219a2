//! The membership calls of `kvstore.v1.Cluster` (`MemberList`, `MemberAdd`, `MemberRemove`,
//! `MemberPromote`, `MemberUpdate`): thin adapters from the wire into
//! [`NodeHandle::conf_change`], answered once the change is applied on the leader.
//!
//! Semantics follow etcd 3.5 where it has them: a new member's id is chosen by the cluster
//! (one above every id it ever used, voters, learners and removed ones, so an id is never
//! reused; etcd hashes the peer URLs and the time instead); a peer address already used by a
//! member is refused with "etcdserver: Peer URLs already exists"; refusals carry etcd's
//! messages (`api/v3rpc/rpctypes`), followed by our detail where it says more (how far behind
//! a learner is, how many voters are live). Followers redirect like the other kvstore.v1
//! services (the driver refuses the change with the leader's address).

use crate::config::{parse_peers, NodeConfig};
use crate::node::{ClientError, NodeHandle, NodeStatus};
use crate::pb;
use crate::raft::{ConfChange, ConfChangeError, ConfChangeKind, Membership, NodeId, Role};
use tonic::{Code, Status};

/// etcd's "member not found" (NOT_FOUND).
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
/// etcd's "member ID already exist".
pub const MEMBER_EXIST: &str = "etcdserver: member ID already exist";
/// etcd's answer to an address another member has.
pub const PEER_URL_EXIST: &str = "etcdserver: Peer URLs already exists";
/// etcd's answer to a malformed address.
pub const BAD_URLS: &str = "etcdserver: given member URLs are invalid";
/// etcd's answer to promoting a voter.
pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
/// etcd's answer to promoting a learner far behind.
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
/// etcd's strict reconfiguration check.
pub const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";

/// Every member of `s.membership`, with its address (the membership's, else `--peers`') and,
/// when `s` is a leader's, how far behind it is.
pub fn members_pb(config: &NodeConfig, s: &NodeStatus) -> Vec<pb::Member> {
    let m = &s.membership;
    let leader = s.role == Role::Leader;
    m.members()
        .map(|id| {
            let matched = if id == s.id {
                Some(s.last_index)
            } else {
                s.matched.get(&id).copied()
            };
            let matched = matched.filter(|_| leader);
            pb::Member {
                id,
                peer_address: peer_address(config, m, id).unwrap_or_default(),
                member_role: if m.is_learner(id) {
                    pb::MemberRole::Learner
                } else {
                    pb::MemberRole::Voter
                } as i32,
                has_progress: matched.is_some(),
                matched_index: matched.unwrap_or(0),
                lag: matched.map_or(0, |i| s.last_index.saturating_sub(i)),
            }
        })
        .collect()
}

/// Where the members reach `id`: its address in the membership, else the configured one.
pub fn peer_address(config: &NodeConfig, m: &Membership, id: NodeId) -> Option<String> {
    if let Some(addr) = m.address(id) {
        return Some(addr.to_string());
    }
    if id == config.id {
        return Some(config.address());
    }
    config.address_of(id)
}

/// `MemberList`, answered from this node's status.
pub fn member_list(config: &NodeConfig, cluster_id: u64, s: &NodeStatus) -> pb::MemberListResponse {
    pb::MemberListResponse {
        cluster_id,
        member_id: s.id,
        leader_id: s.leader.unwrap_or(0),
        members: members_pb(config, s),
        removed: s.membership.removed.iter().copied().collect(),
    }
}

/// A `HOST:PORT` peer address, normalised, or etcd's "given member URLs are invalid".
fn parse_address(addr: &str) -> Result<String, Status> {
    let bad = |why: String| Status::invalid_argument(format!("{BAD_URLS} ({why})"));
    if addr.contains([',', '=']) || addr.trim().is_empty() {
        return Err(bad(format!("{addr:?} is not HOST:PORT")));
    }
    match parse_peers(addr, NodeId::MAX) {
        Ok(mut peers) if peers.len() == 1 => Ok(peers.remove(0).addr),
        Ok(_) => Err(bad(format!("{addr:?} is not HOST:PORT"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Refuses `addr` if a member other than `except` has it.
fn check_address_free(
    config: &NodeConfig,
    m: &Membership,
    addr: &str,
    except: Option<NodeId>,
) -> Result<(), Status> {
    let taken = m
        .members()
        .filter(|&id| Some(id) != except)
        .any(|id| peer_address(config, m, id).as_deref() == Some(addr));
    if taken {
        return Err(Status::failed_precondition(PEER_URL_EXIST));
    }
    Ok(())
}

/// The id a new member gets: one above every id the cluster has used (never reused).
pub fn next_member_id(m: &Membership, own: NodeId) -> NodeId {
    m.members()
        .chain(m.removed.iter().copied())
        .chain([own])
        .max()
        .unwrap_or(0)
        + 1
}

/// etcd's status for a refused change; other errors (the redirect among them) as usual.
pub fn change_status(e: ClientError) -> Status {
    let ClientError::Membership(e) = e else {
        return Status::from(e);
    };
    let detail = e.to_string();
    match e {
        ConfChangeError::Propose(p) => Status::unavailable(p.to_string()),
        ConfChangeError::NotMember(_) | ConfChangeError::IdRemoved(_) => {
            Status::new(Code::NotFound, format!("{MEMBER_NOT_FOUND} ({detail})"))
        }
        ConfChangeError::AlreadyMember(_) => Status::failed_precondition(MEMBER_EXIST),
        ConfChangeError::NotLearner(_) => Status::failed_precondition(NOT_LEARNER),
        ConfChangeError::LearnerNotReady {
            node,
            matched,
            last,
            behind,
            percent,
        } => Status::failed_precondition(format!(
            "{LEARNER_NOT_READY} (member {node} has {matched} of {last} entries, {behind} behind; needs at least {percent}%)"
        )),
        ConfChangeError::WouldLoseQuorum { .. } => {
            Status::failed_precondition(format!("{NOT_ENOUGH_STARTED} ({detail})"))
        }
        // Retryable: the leader is settling its term, or finishing the previous change.
        ConfChangeError::NoCommitInTerm | ConfChangeError::ChangeInProgress(_) => {
            Status::unavailable(detail)
        }
        ConfChangeError::ZeroId | ConfChangeError::LastVoter(_) => {
            Status::failed_precondition(detail)
        }
    }
}

/// How a front end words a refused change: [`change_status`] for kvstore.v1; the etcd front
/// end passes its own, with etcd's words for the errors that are not about membership.
pub type Refusal = fn(ClientError) -> Status;

/// Proposes `change` and answers with the members it led to.
async fn change(
    config: &NodeConfig,
    node: &NodeHandle,
    change: ConfChange,
    force: bool,
    refused: Refusal,
) -> Result<Vec<pb::Member>, Status> {
    let (membership, _header) = node.conf_change(change, force).await.map_err(refused)?;
    let s = NodeStatus {
        membership,
        ..node.status()
    };
    Ok(members_pb(config, &s))
}

/// `MemberAdd`, with refusals worded by `refused` (kvstore.v1: [`change_status`]).
pub async fn member_add(
    config: &NodeConfig,
    node: &NodeHandle,
    req: pb::MemberAddRequest,
    refused: Refusal,
) -> Result<pb::MemberAddResponse, Status> {
    let addr = parse_address(&req.peer_address)?;
    let s = node.status();
    check_address_free(config, &s.membership, &addr, None)?;
    let id = next_member_id(&s.membership, s.id);
    let kind = if req.is_learner {
        ConfChangeKind::AddLearner
    } else {
        ConfChangeKind::AddVoter
    };
    let members = change(
        config,
        node,
        ConfChange {
            kind,
            node: id,
            context: addr.into_bytes(),
        },
        false,
        refused,
    )
    .await?;
    let member = members.iter().find(|m| m.id == id).cloned();
    Ok(pb::MemberAddResponse { member, members })
}

/// `MemberRemove`, with refusals worded by `refused` (kvstore.v1: [`change_status`]).
pub async fn member_remove(
    config: &NodeConfig,
    node: &NodeHandle,
    req: pb::MemberRemoveRequest,
    refused: Refusal,
) -> Result<pb::MemberRemoveResponse, Status> {
    let members = change(
        config,
        node,
        simple(ConfChangeKind::Remove, req.id)?,
        req.force,
        refused,
    )
    .await?;
    Ok(pb::MemberRemoveResponse { members })
}

/// `MemberPromote`, with refusals worded by `refused` (kvstore.v1: [`change_status`]).
pub async fn member_promote(
    config: &NodeConfig,
    node: &NodeHandle,
    req: pb::MemberPromoteRequest,
    refused: Refusal,
) -> Result<pb::MemberPromoteResponse, Status> {
    let members = change(
        config,
        node,
        simple(ConfChangeKind::PromoteLearner, req.id)?,
        false,
        refused,
    )
    .await?;
    Ok(pb::MemberPromoteResponse { members })
}

/// `MemberUpdate`, with refusals worded by `refused` (kvstore.v1: [`change_status`]).
pub async fn member_update(
    config: &NodeConfig,
    node: &NodeHandle,
    req: pb::MemberUpdateRequest,
    refused: Refusal,
) -> Result<pb::MemberUpdateResponse, Status> {
    let mut c = simple(ConfChangeKind::UpdateAddress, req.id)?;
    let addr = parse_address(&req.peer_address)?;
    check_address_free(config, &node.status().membership, &addr, Some(req.id))?;
    c.context = addr.into_bytes();
    let members = change(config, node, c, false, refused).await?;
    Ok(pb::MemberUpdateResponse { members })
}

/// A change of member `id` without context; id 0 is refused as etcd's "member not found".
fn simple(kind: ConfChangeKind, id: NodeId) -> Result<ConfChange, Status> {
    if id == 0 {
        return Err(Status::new(
            Code::NotFound,
            format!("{MEMBER_NOT_FOUND} (member id 0 is reserved)"),
        ));
    }
    Ok(ConfChange {
        kind,
        node: id,
        context: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role) -> NodeStatus {
        let mut m = Membership::with_voters([1, 2, 3]);
        m.learners.insert(5);
        m.removed.insert(4);
        m.addresses.insert(5, "10.0.0.5:7005".into());
        NodeStatus {
            role,
            last_index: 100,
            membership: m,
            matched: [(2, 100), (3, 90), (5, 40)].into_iter().collect(),
            ..NodeStatus::initial(1)
        }
    }

    fn config() -> NodeConfig {
        let mut c = NodeConfig::new(1, 9001);
        c.peers = parse_peers("9002,9003", 1).unwrap();
        c
    }

    #[test]
    fn the_list_shows_roles_addresses_and_the_leaders_view_of_lag() {
        let list = member_list(&config(), 7, &status(Role::Leader));
        let rows: Vec<_> = list
            .members
            .iter()
            .map(|m| (m.id, m.peer_address.as_str(), m.member_role, m.lag))
            .collect();
        let (v, l) = (pb::MemberRole::Voter as i32, pb::MemberRole::Learner as i32);
        assert_eq!(
            rows,
            vec![
                (1, "127.0.0.1:9001", v, 0),
                (2, "127.0.0.1:9002", v, 0),
                (3, "127.0.0.1:9003", v, 10),
                (5, "10.0.0.5:7005", l, 60),
            ]
        );
        assert_eq!(list.removed, vec![4]);
        let follower = member_list(&config(), 7, &status(Role::Follower));
        assert!(
            follower.members.iter().all(|m| !m.has_progress),
            "only a leader knows the lag"
        );
    }

    #[test]
    fn new_ids_are_never_reused_and_addresses_are_checked() {
        let s = status(Role::Leader);
        assert_eq!(
            next_member_id(&s.membership, 1),
            6,
            "above the removed 4 and learner 5"
        );
        assert_eq!(next_member_id(&Membership::with_voters([1]), 1), 2);
        let taken = check_address_free(&config(), &s.membership, "127.0.0.1:9003", None);
        assert_eq!(taken.unwrap_err().message(), PEER_URL_EXIST);
        assert!(check_address_free(&config(), &s.membership, "127.0.0.1:9003", Some(3)).is_ok());
        assert!(check_address_free(&config(), &s.membership, "127.0.0.1:9009", None).is_ok());
        assert_eq!(parse_address("9009").unwrap(), "127.0.0.1:9009");
        for bad in ["", "a:b", "1=h:1", "h:1,h:2", "http://h:1"] {
            let e = parse_address(bad).unwrap_err();
            assert!(e.message().starts_with(BAD_URLS), "{bad}: {}", e.message());
        }
    }

    #[test]
    fn refusals_carry_etcds_messages() {
        let s = |e| change_status(ClientError::Membership(e));
        let nf = s(ConfChangeError::NotMember(9));
        assert_eq!(nf.code(), Code::NotFound);
        assert!(nf.message().starts_with(MEMBER_NOT_FOUND));
        let behind = s(ConfChangeError::LearnerNotReady {
            node: 5,
            matched: 40,
            last: 100,
            behind: 60,
            percent: 90,
        });
        assert!(behind.message().starts_with(LEARNER_NOT_READY));
        assert!(
            behind.message().contains("60 behind"),
            "{}",
            behind.message()
        );
        let quorum = s(ConfChangeError::WouldLoseQuorum {
            change: "removing member 2".into(),
            live: 1,
            quorum: 2,
        });
        assert!(quorum.message().starts_with(NOT_ENOUGH_STARTED));
        assert_eq!(s(ConfChangeError::NotLearner(2)).message(), NOT_LEARNER);
        assert_eq!(
            change_status(ClientError::NoLeader).code(),
            Code::Unavailable
        );
    }
}
