//! `kvstore.v1.Lease`: leases on keys. Grant and Revoke go through the log (the state
//! machine decides); KeepAlive, TimeToLive and Leases are answered by the leader's lease
//! clock without a log entry, as etcd does (`node::leases`). A follower answers every call
//! with the NOT-leader redirect (UNAVAILABLE with `leader-addr`), as the other `kvstore.v1`
//! services do; on the KeepAlive stream that ends the stream, and the client reopens it on
//! the leader.
//!
//! Where etcd has rules the answers follow them: a TTL below the cluster's minimum (1.5
//! election timeouts, rounded up to whole seconds) is raised to it, one above 9,000,000,000
//! seconds is refused, a keep-alive of an unknown lease answers TTL 0 and a TimeToLive of
//! one answers TTL -1.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::kv_service::header;
use crate::node::{KeyLeaseAnswer, KeyLeaseQuery, NodeHandle};
use crate::pb;
use crate::state_machine::{Command, Outcome, Proposal};

/// Answers buffered per KeepAlive stream before the stream waits for the client to read.
const KEEP_ALIVE_BUFFER: usize = 16;

/// The Lease service of one node.
#[derive(Clone, Debug)]
pub struct LeaseService {
    node: NodeHandle,
    /// The cluster's minimum lease TTL in seconds.
    min_ttl: i64,
}

impl LeaseService {
    /// A service backed by `node`; grants are raised to at least `min_ttl` seconds.
    pub fn new(node: NodeHandle, min_ttl: i64) -> Self {
        LeaseService { node, min_ttl }
    }

    async fn propose(&self, command: Command) -> Result<(Outcome, crate::node::Header), Status> {
        let data = Proposal {
            session: None,
            command,
        }
        .encode();
        Ok(self.node.propose(data).await?)
    }
}

/// etcd's minimum lease TTL for a cluster with this election timeout: 1.5 election
/// timeouts, in whole seconds rounded up (a shorter lease could run out during the election
/// that follows a leader's failure, before any client could renew it).
pub fn min_lease_ttl(election_timeout: std::time::Duration) -> i64 {
    let ms = election_timeout.as_millis().saturating_mul(3) / 2;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// The Outcome a command cannot have: a bug, never a client's fault.
fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!(
        "the log applied an unexpected outcome: {outcome:?}"
    ))
}

/// The answer to one keep-alive.
async fn keep_alive(node: &NodeHandle, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    match node.key_lease(KeyLeaseQuery::KeepAlive(id)).await? {
        (KeyLeaseAnswer::KeptAlive { ttl }, h) => Ok(pb::LeaseKeepAliveResponse {
            header: header(h),
            id,
            ttl,
        }),
        (other, _) => Err(Status::internal(format!(
            "the lease clock answered a keep-alive with {other:?}"
        ))),
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        let command = Command::LeaseGrant {
            id: req.id,
            ttl: req.ttl.max(self.min_ttl),
        };
        match self.propose(command).await? {
            (Outcome::LeaseGranted { id, ttl }, h) => Ok(Response::new(pb::LeaseGrantResponse {
                header: header(h),
                id,
                ttl,
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.propose(Command::LeaseRevoke { id }).await? {
            (Outcome::LeaseRevoked { .. }, h) => {
                Ok(Response::new(pb::LeaseRevokeResponse { header: header(h) }))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let answer = match next {
                    Ok(req) => keep_alive(&node, req.id).await,
                    // The client went away or sent garbage: nothing to answer.
                    Err(_) => return,
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    // The client stopped reading, or this node cannot renew (not the
                    // leader): the stream ends with that error.
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let query = KeyLeaseQuery::TimeToLive {
            id: req.id,
            keys: req.keys,
        };
        match self.node.key_lease(query).await? {
            (KeyLeaseAnswer::TimeToLive(info), h) => {
                let (ttl, granted_ttl, keys) = match info {
                    Some(l) => (
                        l.remaining_ttl,
                        l.granted_ttl,
                        // Keys written through the etcd API may not be text; shown lossily
                        // rather than failing the whole answer.
                        l.keys
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .collect(),
                    ),
                    None => (-1, 0, Vec::new()),
                };
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: header(h),
                    id: req.id,
                    ttl,
                    granted_ttl,
                    keys,
                }))
            }
            (other, _) => Err(Status::internal(format!(
                "the lease clock answered a TimeToLive with {other:?}"
            ))),
        }
    }

    async fn leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        match self.node.key_lease(KeyLeaseQuery::List).await? {
            (KeyLeaseAnswer::List(ids), h) => Ok(Response::new(pb::LeaseLeasesResponse {
                header: header(h),
                ids,
            })),
            (other, _) => Err(Status::internal(format!(
                "the lease clock answered a list with {other:?}"
            ))),
        }
    }
}
