//! `kvstore.v1.Raft`: peer RPCs. Each request goes through the driver into the core, and the
//! answer is the core's own response message (so it passed `check_term` like everything else).
//!
//! `AppendStream` carries a leader's appends over one long-lived stream: each request goes to
//! the driver as it arrives, without waiting for the answers of the ones before it (a follower
//! answers an append only after its fsync, so waiting would serialise pipelining and group
//! commit), and the answers go out in completion order. No task is spawned: the response
//! stream itself reads the requests and polls the pending answers.
//!
//! Each call's [`CLIENT_URL_KEY`](super::client_urls::CLIENT_URL_KEY) metadata, the caller's
//! advertised client address, is recorded for the member its first message comes from
//! ([`ClientUrls::learn`]): that is how a follower redirects clients to where its leader
//! says clients reach it.

use super::client_urls::ClientUrls;
use super::convert;
use super::instances::{Instances, Refusal};
use crate::node::NodeHandle;
use crate::pb;
use crate::raft::{Message, NodeId};
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Requests of one `AppendStream` waiting for the core's answer at a time; the stream is not
/// read further until one is answered.
pub const STREAM_WINDOW: usize = 256;

/// The Raft service of one node.
#[derive(Clone, Debug)]
pub struct RaftService {
    id: NodeId,
    node: NodeHandle,
    urls: ClientUrls,
    instances: Instances,
    stop: CancellationToken,
}

impl RaftService {
    /// A service answering for node `id` through `node`, recording the client addresses
    /// callers advertise in `urls`, and admitting calls by their data dirs' `instances`.
    /// `stop` ends the open append streams (the server's graceful shutdown waits for every
    /// call to end, and a stream does not end on its own).
    pub fn new(
        id: NodeId,
        node: NodeHandle,
        urls: ClientUrls,
        instances: Instances,
        stop: CancellationToken,
    ) -> Self {
        RaftService {
            id,
            node,
            urls,
            instances,
            stop,
        }
    }

    /// Admits a call from `from` by the data dirs of both ends (`rpc/instances.rs`): if this
    /// node is the one that was replaced, it tells its driver to stop and answers nothing.
    async fn admit(&self, from: NodeId, metadata: &MetadataMap) -> Result<(), Status> {
        admit(&self.instances, &self.node, self.id, from, metadata).await
    }
}

async fn admit(
    instances: &Instances,
    node: &NodeHandle,
    me: NodeId,
    from: NodeId,
    metadata: &MetadataMap,
) -> Result<(), Status> {
    match instances.admit(from, metadata).await {
        Ok(()) => Ok(()),
        Err(Refusal::ThisNodeReplaced { peer }) => {
            node.data_dir_replaced(peer);
            Err(super::instances::stopping_replaced(me))
        }
        Err(Refusal::CallerReplaced { peer }) => {
            tracing::warn!(
                peer,
                "refused a call: member {peer} runs on another data dir than the one it was first heard on (its data was lost; replace it: README \"Replacing a node\")"
            );
            Err(super::instances::data_dir_replaced(peer))
        }
        Err(Refusal::Storage(e)) => Err(Status::unavailable(format!(
            "cannot record member {from}'s data dir: {e}"
        ))),
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn request_vote(
        &self,
        request: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let msg = convert::vote_request_in(request, self.id)?;
        self.admit(msg.from, &metadata).await?;
        self.urls.learn(msg.from, &metadata);
        let reply = step(&self.node, msg).await?;
        Ok(self
            .instances
            .tag_reply(Response::new(convert::vote_response_out(reply)?)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (from, answer) = append_answer(self.id, &self.node, request)?;
        self.admit(from, &metadata).await?;
        self.urls.learn(from, &metadata);
        Ok(self.instances.tag_reply(Response::new(answer.await?)))
    }

    type AppendStreamStream = AppendAnswers;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let (metadata, _, requests) = request.into_parts();
        Ok(self.instances.tag_reply(Response::new(AppendAnswers {
            id: self.id,
            node: self.node.clone(),
            learn: Some((self.urls.clone(), self.instances.clone(), metadata)),
            requests: Some(requests),
            pending: FuturesUnordered::new(),
            ended: false,
            stop: Box::pin(self.stop.clone().cancelled_owned()),
        })))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let (metadata, _, mut stream) = request.into_parts();
        let mut receiver = convert::SnapshotReceiver::new(self.id);
        while let Some(chunk) = stream.message().await? {
            receiver.push(chunk)?;
        }
        let msg = receiver.finish()?;
        self.admit(msg.from, &metadata).await?;
        self.urls.learn(msg.from, &metadata);
        let reply = step(&self.node, msg).await?;
        Ok(self
            .instances
            .tag_reply(Response::new(convert::append_response_out(reply)?)))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let msg = convert::timeout_now_request_in(request, self.id)?;
        self.admit(msg.from, &metadata).await?;
        self.urls.learn(msg.from, &metadata);
        let reply = step(&self.node, msg).await?;
        Ok(self
            .instances
            .tag_reply(Response::new(convert::timeout_now_response_out(reply)?)))
    }
}

/// Steps a peer request through the driver, unless its sender was removed from the cluster:
/// that one gets [`member_removed`](super::status::member_removed) (etcd answers HTTP 410),
/// which is how a removed node that missed its removal entry learns of it and stops.
///
/// The same exceptions as the core's (`RaftCore::accepts_from`): a leader that removed itself
/// keeps leading this term until its removal commits (its messages in that term pass), and a
/// leader hears the answers of a node it is removing until it lets it go.
async fn step(node: &NodeHandle, msg: Message) -> Result<Message, Status> {
    if refuses_as_removed(&node.status(), &msg) {
        tracing::debug!(
            from = msg.from,
            kind = msg.body.kind(),
            "refused a message from a removed member"
        );
        return Err(super::status::member_removed());
    }
    Ok(node.peer_request(msg).await?)
}

/// Whether `msg` comes from a member whose removal this node knows is committed (an
/// uncommitted one may be truncated: telling that node it was removed would stop it for
/// good), and none of the core's exceptions applies.
fn refuses_as_removed(s: &crate::node::NodeStatus, msg: &Message) -> bool {
    let from = msg.from;
    s.committed_removals.contains(&from)
        && !(s.leader == Some(from) && msg.term == s.term)
        && !s.matched.contains_key(&from)
}

type Answer = Pin<Box<dyn Future<Output = Result<pb::AppendEntriesResponse, Status>> + Send>>;

/// Converts one AppendEntries request (refusing a malformed one at once) and returns its
/// sender and the future of its answer from node `id`'s driver: the unary call awaits it, a
/// stream collects it with the others.
fn append_answer(
    id: NodeId,
    node: &NodeHandle,
    req: pb::AppendEntriesRequest,
) -> Result<(NodeId, Answer), Status> {
    let msg = convert::append_request_in(req, id)?;
    let from = msg.from;
    let node = node.clone();
    Ok((
        from,
        Box::pin(async move {
            let reply = step(&node, msg).await?;
            convert::append_response_out(reply)
        }),
    ))
}

/// The response stream of one `AppendStream` call.
///
/// A request that fails (does not convert, or the driver refuses or drops it) ends the stream
/// with the status the unary `AppendEntries` would have returned, answers still pending
/// included: so on a live stream every request is answered exactly once, which is what lets
/// the leader count its unanswered requests.
pub struct AppendAnswers {
    id: NodeId,
    node: NodeHandle,
    /// The call's metadata, until its first request names the sender whose advertised
    /// client address it carries.
    /// Also what admits the stream (`rpc/instances.rs`): its first answer waits for that.
    learn: Option<(ClientUrls, Instances, MetadataMap)>,
    /// `None` once the leader closed its side.
    requests: Option<Streaming<pb::AppendEntriesRequest>>,
    pending: FuturesUnordered<Answer>,
    /// An error was sent: nothing follows it.
    ended: bool,
    /// The node is stopping.
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl AppendAnswers {
    fn end(&mut self, status: Status) -> Poll<Option<Result<pb::AppendEntriesResponse, Status>>> {
        tracing::debug!(code = ?status.code(), error = status.message(), "append stream ended");
        self.ended = true;
        self.requests = None;
        self.pending = FuturesUnordered::new();
        Poll::Ready(Some(Err(status)))
    }
}

impl Stream for AppendAnswers {
    type Item = Result<pb::AppendEntriesResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.stop.as_mut().poll(cx).is_ready() {
            return this.end(Status::unavailable("the node is shutting down"));
        }
        // Take in every request that has arrived (up to the window), so each reaches the
        // driver at once; this registers for the next one.
        while this.pending.len() < STREAM_WINDOW {
            let Some(requests) = this.requests.as_mut() else {
                break;
            };
            match requests.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(req))) => match append_answer(this.id, &this.node, req) {
                    Ok((from, answer)) => match this.learn.take() {
                        Some((urls, instances, metadata)) => {
                            urls.learn(from, &metadata);
                            // The first request is stepped only once the stream is admitted;
                            // a refusal ends the stream with it.
                            let (node, me) = (this.node.clone(), this.id);
                            this.pending.push(Box::pin(async move {
                                admit(&instances, &node, me, from, &metadata).await?;
                                answer.await
                            }));
                        }
                        None => this.pending.push(answer),
                    },
                    Err(status) => return this.end(status),
                },
                Poll::Ready(Some(Err(status))) => return this.end(status),
                Poll::Ready(None) => this.requests = None,
                Poll::Pending => break,
            }
        }
        match this.pending.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(resp))) => Poll::Ready(Some(Ok(resp))),
            Poll::Ready(Some(Err(status))) => this.end(status),
            // Nothing pending: done if the leader closed its side, else the read above waits.
            Poll::Ready(None) if this.requests.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for AppendAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendAnswers")
            .field("id", &self.id)
            .field("pending", &self.pending.len())
            .field("reading", &self.requests.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeStatus;
    use crate::raft::{MessageBody, Role};

    fn vote_from(from: NodeId, term: u64) -> Message {
        Message {
            from,
            to: 1,
            term,
            rpc_id: 0,
            body: MessageBody::PreVote {
                last_log_index: 0,
                last_log_term: 0,
            },
        }
    }

    /// Issue 15: a removed member's messages are refused, except the core's exceptions (a
    /// leader removing itself leads on in its term; a leader hears the node it is removing).
    #[test]
    fn removed_members_are_refused_except_where_the_core_listens() {
        let mut s = NodeStatus::initial(1);
        s.membership = crate::raft::Membership::with_voters([1, 3]);
        s.membership.removed.insert(2);
        s.term = 5;
        assert!(
            !refuses_as_removed(&s, &vote_from(2, 5)),
            "an uncommitted removal may be truncated: no refusal (it would stop node 2)"
        );
        s.committed_removals.insert(2);
        assert!(refuses_as_removed(&s, &vote_from(2, 5)));
        assert!(refuses_as_removed(&s, &vote_from(2, 6)));
        assert!(!refuses_as_removed(&s, &vote_from(3, 6)), "a member");
        s.leader = Some(2);
        assert!(
            !refuses_as_removed(&s, &vote_from(2, 5)),
            "the leader that removed itself, in its term"
        );
        assert!(
            refuses_as_removed(&s, &vote_from(2, 6)),
            "not in a later term"
        );
        s.leader = Some(1);
        s.role = Role::Leader;
        s.matched.insert(2, 10);
        assert!(
            !refuses_as_removed(&s, &vote_from(2, 5)),
            "a node the leader still replicates to"
        );
    }
}
