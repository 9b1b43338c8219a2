//! `kvstore.v1.Raft`: peer RPCs. Each request goes through the driver into the core, and the
//! answer is the core's own response message (so it passed `check_term` like everything else).

use super::convert;
use crate::node::NodeHandle;
use crate::pb;
use crate::raft::NodeId;
use tonic::{Request, Response, Status, Streaming};

/// The Raft service of one node.
#[derive(Clone, Debug)]
pub struct RaftService {
    id: NodeId,
    node: NodeHandle,
}

impl RaftService {
    /// A service answering for node `id` through `node`.
    pub fn new(id: NodeId, node: NodeHandle) -> Self {
        RaftService { id, node }
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn request_vote(
        &self,
        request: Request<pb::RequestVoteRequest>,
    ) -> Result<Response<pb::RequestVoteResponse>, Status> {
        let msg = convert::vote_request_in(request.into_inner(), self.id)?;
        let reply = self.node.peer_request(msg).await?;
        Ok(Response::new(convert::vote_response_out(reply)?))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let msg = convert::append_request_in(request.into_inner(), self.id)?;
        let reply = self.node.peer_request(msg).await?;
        Ok(Response::new(convert::append_response_out(reply)?))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let mut stream = request.into_inner();
        let mut receiver = convert::SnapshotReceiver::new(self.id);
        while let Some(chunk) = stream.message().await? {
            receiver.push(chunk)?;
        }
        let msg = receiver.finish()?;
        let reply = self.node.peer_request(msg).await?;
        Ok(Response::new(convert::append_response_out(reply)?))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let msg = convert::timeout_now_request_in(request.into_inner(), self.id)?;
        let reply = self.node.peer_request(msg).await?;
        Ok(Response::new(convert::timeout_now_response_out(reply)?))
    }
}
