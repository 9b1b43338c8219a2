//! `etcdserverpb.Cluster` (what `etcdctl member list|add|remove|update|promote` calls), on
//! the membership changes of `kvstore.v1.Cluster` ([`member_service`]): this file only
//! translates etcd's messages and words its refusals as etcd does.
//!
//! - Peer URLs are etcd's `http://HOST:PORT`; a kvstore member has exactly one (more are
//!   refused with INVALID_ARGUMENT), and peers speak plain HTTP/2 (`https://` is refused).
//! - Member ids are ours (small integers: `etcdctl` prints them in hex). A member that was
//!   added but has not started yet shows, as in etcd, with an empty name and no client URLs;
//!   a started one is named `node-<id>` and lists its client address.
//! - The changes need the leader: a follower forwards them like the other etcd writes
//!   ([`Member::leader_channel`]). So does `MemberList` when a leader is known (etcd 3.5's
//!   `linearizable`, and also without it, although etcd 3.4 answers it locally and etcdctl
//!   3.4 has no flag for it): only the leader knows which members it has heard from, i.e.
//!   which have started. Without a reachable leader a follower answers from its own view.
//!
//! [`Member::leader_channel`]: super::member::Member::leader_channel
//! - Refusals carry etcd's code and exact message (`api/v3rpc/rpctypes`: clients match
//!   them byte for byte), not kvstore.v1's longer ones; the detail (how far behind a
//!   learner is) is in kvstore.v1's answer and `kvctl status`.

use super::errors::{self, EtcdError};
use super::kv::{forward_failed, forward_if_follower, own_header};
use super::maintenance::EtcdMaintenance;
use super::member::{self, forwarded};
use crate::node::{ClientError, NodeStatus};
use crate::pb;
use crate::pb::etcd::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcd::etcdserverpb::*;
use crate::raft::NodeId;
use crate::rpc::member_service;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// etcd's `Member` message (renamed here: `Member` is the shared state).
pub(super) type Member_ = crate::pb::etcd::etcdserverpb::Member;

/// The etcd refusals a membership change can get, most specific first where one message
/// begins with another.
const MEMBERSHIP_ERRORS: [EtcdError; 7] = [
    errors::MEMBER_NOT_FOUND,
    errors::MEMBER_EXIST,
    errors::PEER_URL_EXIST,
    errors::MEMBER_BAD_URLS,
    errors::LEARNER_NOT_READY,
    errors::MEMBER_NOT_LEARNER,
    errors::MEMBER_NOT_ENOUGH_STARTED,
];

/// `status` with etcd's exact code and message when it is one of etcd's membership refusals
/// followed by kvstore's detail (`"<etcd message> (<detail>)"`); other statuses unchanged.
fn etcd_words(status: Status) -> Status {
    let message = status.message();
    for e in MEMBERSHIP_ERRORS {
        let ours = message
            .strip_prefix(e.message())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(" ("));
        if ours {
            return e.status();
        }
    }
    status
}

/// A refused change, in etcd's words: membership refusals as etcd's, the others (no leader,
/// leader changed, stopping) as the other etcd services answer them.
fn refused(e: ClientError) -> Status {
    match e {
        e @ ClientError::Membership(_) => etcd_words(member_service::change_status(e)),
        other => member::status(other),
    }
}

/// The one `HOST:PORT` in etcd's `peerURLs` (`http://HOST:PORT`, a trailing `/` allowed).
///
/// # Errors
/// INVALID_ARGUMENT: none or more than one URL (a kvstore member has exactly one address),
/// an `https://` URL (peers speak plain HTTP/2), or etcd's "given member URLs are invalid".
fn peer_address(urls: &[String]) -> Result<String, Status> {
    let url = match urls {
        [url] => url,
        _ => {
            return Err(Status::invalid_argument(format!(
                "a kvstore member has exactly one peer URL (http://HOST:PORT); {} given",
                urls.len()
            )))
        }
    };
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(Status::invalid_argument(format!(
            "kvstore peers speak plain HTTP/2: use http:// instead of {url:?}"
        )));
    }
    let Some(rest) = lower
        .starts_with("http://")
        .then(|| &url["http://".len()..])
    else {
        return Err(errors::MEMBER_BAD_URLS.status());
    };
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    // Only HOST:PORT after the scheme: no path, user, query or bare host.
    if host_port.is_empty() || host_port.contains(['/', '@', '?', '#']) || !host_port.contains(':')
    {
        return Err(errors::MEMBER_BAD_URLS.status());
    }
    Ok(host_port.to_string())
}

impl EtcdMaintenance {
    /// The leader's Cluster client, or `None` to serve here (see
    /// [`leader_channel`](super::member::Member::leader_channel)).
    fn cluster_leader<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<ClusterClient<Channel>>, Status> {
        Ok(self
            .member
            .leader_channel(request)?
            .map(|(_, channel)| ClusterClient::new(channel)))
    }

    /// Whether member `id` has started, as far as this node knows: itself; a member of a
    /// static start (`--peers`) or one whose advertised client address was heard; or one
    /// the leader has heard from (its progress shows a replicated index). Remembered, so a
    /// leader change does not make a member look unstarted again.
    fn has_started(&self, id: NodeId, progress: Option<u64>) -> bool {
        if id == self.member.id()
            || self.member.config().address_of(id).is_some()
            || progress.is_some_and(|matched| matched > 0)
        {
            self.started_insert(id);
            return true;
        }
        self.started_contains(id)
    }

    /// etcd's view of one kvstore.v1 member.
    fn etcd_member(&self, m: &pb::Member) -> Member_ {
        let progress = m.has_progress.then_some(m.matched_index);
        let started = self.has_started(m.id, progress);
        let client = if m.id == self.member.id() {
            Some(self.urls.own().to_string())
        } else {
            // A joined member serves clients on its peer address (kvstore has one port).
            self.urls
                .address_of(m.id)
                .or_else(|| Some(m.peer_address.clone()))
        };
        Member_ {
            id: m.id,
            name: if started {
                format!("node-{}", m.id)
            } else {
                String::new()
            },
            peer_ur_ls: vec![format!("http://{}", m.peer_address)],
            // Without the scheme: etcdctl 3.4 dials each listed client URL as a gRPC target,
            // and with `http://` the target's scheme ends up in the HTTP/2 :authority, which
            // our HTTP/2 server (unlike grpc-go's) refuses as malformed; `HOST:PORT` works
            // with every etcd client.
            client_ur_ls: client.filter(|_| started).into_iter().collect(),
            is_learner: m.member_role == pb::MemberRole::Learner as i32,
        }
    }

    /// The members in etcd's form, in id order.
    fn etcd_members(&self, members: &[pb::Member]) -> Vec<Member_> {
        let mut out: Vec<_> = members.iter().map(|m| self.etcd_member(m)).collect();
        out.sort_unstable_by_key(|m| m.id);
        out
    }

    /// Every member of this node's current membership, as MemberList shows them.
    pub(super) fn members(&self) -> Vec<Member_> {
        let s: NodeStatus = self.member.node().status();
        self.etcd_members(&member_service::members_pb(self.member.config(), &s))
    }

    /// The header of a Cluster answer (etcd's carries no revision).
    fn cluster_header(&self) -> ResponseHeader {
        self.member.status_header(0)
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for EtcdMaintenance {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        forward_if_follower!(self, request, member_add, self.cluster_leader(&request)?);
        let req = request.into_inner();
        let peer_address = peer_address(&req.peer_ur_ls)?;
        let answer = member_service::member_add(
            self.member.config(),
            self.member.node(),
            pb::MemberAddRequest {
                peer_address,
                is_learner: req.is_learner,
            },
            refused,
        )
        .await
        .map_err(etcd_words)?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.cluster_header()),
            member: answer.member.map(|m| self.etcd_member(&m)),
            members: self.etcd_members(&answer.members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        forward_if_follower!(self, request, member_remove, self.cluster_leader(&request)?);
        let id = request.into_inner().id;
        // etcd's --strict-reconfig-check (on by default) has no per-request override.
        let answer = member_service::member_remove(
            self.member.config(),
            self.member.node(),
            pb::MemberRemoveRequest { id, force: false },
            refused,
        )
        .await
        .map_err(etcd_words)?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members: self.etcd_members(&answer.members),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        forward_if_follower!(self, request, member_update, self.cluster_leader(&request)?);
        let req = request.into_inner();
        let peer_address = peer_address(&req.peer_ur_ls)?;
        let answer = member_service::member_update(
            self.member.config(),
            self.member.node(),
            pb::MemberUpdateRequest {
                id: req.id,
                peer_address,
            },
            refused,
        )
        .await
        .map_err(etcd_words)?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.cluster_header()),
            members: self.etcd_members(&answer.members),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let linearizable = request.get_ref().linearizable;
        if let Some(mut leader) = self.cluster_leader(&request)? {
            match leader.member_list(forwarded(request.into_inner())).await {
                Ok(answer) => {
                    let mut answer = answer.into_inner();
                    own_header(&self.member, &mut answer.header);
                    return Ok(Response::new(answer));
                }
                Err(s) if linearizable => return Err(forward_failed(&self.member, s)),
                // Serializable: this member's own view will do.
                Err(s) => drop(forward_failed(&self.member, s)),
            }
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.cluster_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        forward_if_follower!(
            self,
            request,
            member_promote,
            self.cluster_leader(&request)?
        );
        let id = request.into_inner().id;
        let answer = member_service::member_promote(
            self.member.config(),
            self.member.node(),
            pb::MemberPromoteRequest { id },
            refused,
        )
        .await
        .map_err(etcd_words)?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.cluster_header()),
            members: self.etcd_members(&answer.members),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::ConfChangeError;
    use tonic::Code;

    #[test]
    fn peer_urls_are_one_plain_http_host_and_port() {
        let one = |u: &str| peer_address(&[u.to_string()]);
        assert_eq!(one("http://127.0.0.1:7004").unwrap(), "127.0.0.1:7004");
        assert_eq!(one("HTTP://node4:7004/").unwrap(), "node4:7004");
        for bad in [
            "127.0.0.1:7004",
            "http://",
            "http://h",
            "http://h:1/x",
            "unix://a:1",
        ] {
            let e = one(bad).unwrap_err();
            assert_eq!(
                (e.code(), e.message()),
                (Code::InvalidArgument, errors::MEMBER_BAD_URLS.message()),
                "{bad}"
            );
        }
        let tls = one("https://h:1").unwrap_err();
        assert!(tls.message().contains("plain HTTP/2"), "{}", tls.message());
        for urls in [
            vec![],
            vec!["http://a:1".to_string(), "http://b:2".to_string()],
        ] {
            let e = peer_address(&urls).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(
                e.message().contains("exactly one peer URL"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn refusals_are_etcds_exact_words() {
        let cases = [
            (ConfChangeError::NotMember(9), errors::MEMBER_NOT_FOUND),
            (ConfChangeError::IdRemoved(9), errors::MEMBER_NOT_FOUND),
            (ConfChangeError::AlreadyMember(2), errors::MEMBER_EXIST),
            (ConfChangeError::NotLearner(2), errors::MEMBER_NOT_LEARNER),
            (
                ConfChangeError::LearnerNotReady {
                    node: 5,
                    matched: 40,
                    last: 100,
                    behind: 60,
                    percent: 90,
                },
                errors::LEARNER_NOT_READY,
            ),
            (
                ConfChangeError::WouldLoseQuorum {
                    change: "removing member 2".into(),
                    live: 1,
                    quorum: 2,
                },
                errors::MEMBER_NOT_ENOUGH_STARTED,
            ),
        ];
        for (e, want) in cases {
            let s = refused(ClientError::Membership(e));
            assert_eq!((s.code(), s.message()), (want.code(), want.message()));
        }
        // kvstore.v1's precondition refusals, reworded the same way.
        let taken = etcd_words(Status::failed_precondition(member_service::PEER_URL_EXIST));
        assert_eq!(taken.message(), errors::PEER_URL_EXIST.message());
        let bad = etcd_words(Status::invalid_argument(format!(
            "{} (\"x\" is not HOST:PORT)",
            member_service::BAD_URLS
        )));
        assert_eq!(bad.message(), errors::MEMBER_BAD_URLS.message());
        // Not a membership refusal: etcd's words of the other services.
        let s = refused(ClientError::NoLeader);
        assert_eq!(s.message(), errors::NO_LEADER.message());
        let other = etcd_words(Status::unavailable("etcdserver: member not foundX"));
        assert_eq!(other.message(), "etcdserver: member not foundX");
    }
}
