//! `etcdserverpb.Lease`: etcd's leases on keys (LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases) with etcd 3.5's answers.
//!
//! Grant and Revoke go through the log ([`Command::LeaseGrant`], [`Command::LeaseRevoke`]);
//! KeepAlive, TimeToLive and Leases are answered by the leader's lease clock without a log
//! entry, as etcd's lessor does (`node::KeyLeaseQuery`). A follower forwards every call to the
//! leader; on the KeepAlive stream it relays each request on its own, finding the leader
//! anew each time, so the stream lives through a change of leader.
//!
//! etcd's answers where the lease does not exist: KeepAlive answers TTL 0 (not an error),
//! TimeToLive answers TTL -1, Revoke fails with "etcdserver: requested lease not found".

use super::errors;
use super::kv::{forward_failed, forward_if_follower, own_header, unexpected};
use super::member::{self, forwarded, Member};
use crate::node::{ClientError, KeyLeaseAnswer, KeyLeaseQuery};
use crate::pb::etcd::etcdserverpb::{
    lease_client::LeaseClient, lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, ResponseHeader,
};
use crate::state_machine::{Command, Outcome, Proposal};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long a leader-local question is retried while no leader can answer it (an election,
/// or a new leader still applying the entries before its term): a little more than an
/// election, as etcd's clients would wait for a new leader.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Pause between two such attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The Lease service of one node.
#[derive(Clone, Debug)]
pub struct EtcdLease {
    member: Member,
}

impl EtcdLease {
    /// The service of `member`.
    pub fn new(member: Member) -> Self {
        EtcdLease { member }
    }

    /// The leader's Lease client, if a follower must forward `request`.
    fn leader<T>(&self, request: &Request<T>) -> Result<Option<LeaseClient<Channel>>, Status> {
        Ok(self
            .member
            .leader_channel(request)?
            .map(|(_, channel)| LeaseClient::new(channel)))
    }

    /// Proposes `command` and waits for it to apply here.
    async fn propose(&self, command: Command) -> Result<(Outcome, ResponseHeader), Status> {
        let data = Proposal {
            session: None,
            command,
        }
        .encode();
        let (outcome, h) = self
            .member
            .node()
            .propose(data)
            .await
            .map_err(member::status)?;
        Ok((outcome, self.member.header(h)))
    }

    /// Asks this node's lease clock, retrying for [`LEADER_WAIT`] while no leader can answer.
    async fn ask(&self, query: KeyLeaseQuery) -> Result<(KeyLeaseAnswer, ResponseHeader), Status> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.member.node().key_lease(query.clone()).await {
                Ok((answer, h)) => return Ok((answer, self.member.header(h))),
                Err(ClientError::NoLeader | ClientError::LeadershipLost)
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(member::status(e)),
            }
        }
    }

    /// One keep-alive of lease `id`, wherever the leader is now: the lease's TTL after the
    /// renewal, 0 if it does not exist (etcd's answer).
    async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let probe = Request::new(());
            let attempt = match self.leader(&probe)? {
                None => self
                    .ask(KeyLeaseQuery::KeepAlive(id))
                    .await
                    .map(|(answer, header)| {
                        let ttl = match answer {
                            KeyLeaseAnswer::KeptAlive { ttl } => ttl,
                            _ => 0,
                        };
                        LeaseKeepAliveResponse {
                            header: Some(header),
                            id,
                            ttl,
                        }
                    }),
                Some(mut leader) => relay_keep_alive(&mut leader, id).await.map(|mut r| {
                    own_header(&self.member, &mut r.header);
                    r
                }),
            };
            match attempt {
                Ok(r) => return Ok(r),
                // The leader changed or could not be reached: find it again.
                Err(s)
                    if Instant::now() < deadline
                        && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) =>
                {
                    let s = forward_failed(&self.member, s);
                    tracing::debug!(lease = id, error = %s.message(), "keep-alive relay retried");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(s) => return Err(forward_failed(&self.member, s)),
            }
        }
    }
}

/// Sends one keep-alive of lease `id` on a stream of its own to the leader, and returns the
/// leader's answer.
async fn relay_keep_alive(
    leader: &mut LeaseClient<Channel>,
    id: i64,
) -> Result<LeaseKeepAliveResponse, Status> {
    let requests = stream::iter([LeaseKeepAliveRequest { id }]);
    let mut answers = leader
        .lease_keep_alive(forwarded(requests))
        .await?
        .into_inner();
    answers
        .message()
        .await?
        .ok_or_else(|| errors::NO_LEADER.status())
}

#[tonic::async_trait]
impl Lease for EtcdLease {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        forward_if_follower!(self, request, lease_grant, self.leader(&request)?);
        let req = request.into_inner();
        if req.ttl > crate::state_machine::MAX_LEASE_TTL {
            return Err(errors::LEASE_TTL_TOO_LARGE.status());
        }
        // etcd's lessor raises a TTL below the minimum at grant; the state machine takes the
        // TTL it is given, so it is raised here, before proposing.
        let ttl = req.ttl.max(self.member.min_lease_ttl());
        match self
            .propose(Command::LeaseGrant { id: req.id, ttl })
            .await?
        {
            (Outcome::LeaseGranted { id, ttl }, header) => Ok(Response::new(LeaseGrantResponse {
                header: Some(header),
                id,
                ttl,
                error: String::new(),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        forward_if_follower!(self, request, lease_revoke, self.leader(&request)?);
        let id = request.into_inner().id;
        match self.propose(Command::LeaseRevoke { id }).await? {
            (Outcome::LeaseRevoked { .. }, header) => Ok(Response::new(LeaseRevokeResponse {
                header: Some(header),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = BoxStream<'static, Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded_here = request.metadata().contains_key(member::FORWARDED_KEY);
        let service = self.clone();
        let inbound = request.into_inner();
        // One answer per request, in order; the first error ends the stream (etcd's too).
        let answers = stream::unfold(Some(inbound), move |inbound| {
            let service = service.clone();
            async move {
                let mut inbound = inbound?;
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return None,
                    Err(s) => return Some((Err(s), None)),
                };
                let answer = if forwarded_here {
                    // Relayed by a follower: answer here or say there is no leader, never
                    // relay again.
                    service.keep_alive_here(req.id).await
                } else {
                    service.keep_alive_once(req.id).await
                };
                match answer {
                    Ok(r) => Some((Ok(r), Some(inbound))),
                    Err(s) => Some((Err(s), None)),
                }
            }
        });
        Ok(Response::new(answers.boxed()))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        forward_if_follower!(self, request, lease_time_to_live, self.leader(&request)?);
        let LeaseTimeToLiveRequest { id, keys } = request.into_inner();
        match self.ask(KeyLeaseQuery::TimeToLive { id, keys }).await? {
            (KeyLeaseAnswer::TimeToLive(Some(info)), header) => {
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header: Some(header),
                    id,
                    ttl: info.remaining_ttl,
                    granted_ttl: info.granted_ttl,
                    keys: info.keys,
                }))
            }
            (_, header) => Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(header),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        forward_if_follower!(self, request, lease_leases, self.leader(&request)?);
        let (answer, header) = self.ask(KeyLeaseQuery::List).await?;
        let ids = match answer {
            KeyLeaseAnswer::List(ids) => ids,
            _ => Vec::new(),
        };
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(header),
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}

impl EtcdLease {
    /// A keep-alive a follower relayed here: answered by this node's lease clock, or "no
    /// leader" (the follower finds the leader again).
    async fn keep_alive_here(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        match self
            .member
            .node()
            .key_lease(KeyLeaseQuery::KeepAlive(id))
            .await
        {
            Ok((KeyLeaseAnswer::KeptAlive { ttl }, h)) => Ok(LeaseKeepAliveResponse {
                header: Some(self.member.header(h)),
                id,
                ttl,
            }),
            Ok(_) => Err(errors::NO_LEADER.status()),
            Err(e) => Err(member::status(e)),
        }
    }
}
