//! `etcdserverpb.KV` on the revisioned key space: Range, Put, DeleteRange, Txn, Compact with
//! etcd's semantics (the key space implements them: `state_machine::mvcc`), its limits
//! (`--max-txn-ops`, `--max-request-bytes`) and its errors.
//!
//! Writes go through the log as [`Command::Kv`] / [`Command::Compact`]; a Range is a read
//! (ReadIndex on the leader when linearizable, local state when serializable). Requests that
//! need the leader are forwarded to it from a follower ([`Member::route`]).

use super::convert;
use super::errors;
use super::member::{self, forwarded, Member, Route, ENCODE_LIMIT};
use crate::node::Header;
use crate::pb::etcd::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::state_machine::mvcc::{self, MvccError};
use crate::state_machine::{Command, KvResult, KvWrite, Outcome, Proposal};
use prost::Message;
use tonic::{Request, Response, Status};

/// The KV service of one node.
#[derive(Clone, Debug)]
pub struct EtcdKv {
    member: Member,
}

impl EtcdKv {
    /// The service of `member`.
    pub fn new(member: Member) -> Self {
        EtcdKv { member }
    }

    /// Proposes `command` and waits for it to apply here.
    async fn propose(&self, command: Command) -> Result<(Outcome, Header), Status> {
        let data = Proposal {
            session: None,
            command,
        }
        .encode();
        if data.len() > self.member.max_request_bytes() {
            return Err(errors::REQUEST_TOO_LARGE.status());
        }
        self.member
            .node()
            .propose(data)
            .await
            .map_err(member::status)
    }

    async fn write(&self, op: KvWrite) -> Result<(KvResult, Header), Status> {
        match self.propose(Command::Kv { op, fence: None }).await? {
            (Outcome::Kv(result), h) => Ok((result, h)),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

/// An outcome that does not belong to the command proposed (a bug, not a user error).
pub(super) fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!(
        "the log applied an unexpected outcome: {outcome:?}"
    ))
}

fn invalid(e: &MvccError) -> Status {
    member::mvcc_error(e).status()
}

/// A forwarded call's failure, as the client should see it: the leader's own answer, or
/// "leader changed" if the leader could not be reached (the client retries).
pub(super) fn forward_failed(member: &Member, status: Status) -> Status {
    let transport = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
    ) && status.message().starts_with("transport error");
    if transport || status.message().contains("error trying to connect") {
        if let Some(leader) = member.node().status().leader {
            member.forget(leader);
        }
        return errors::LEADER_CHANGED.status();
    }
    status
}

/// Sets this member's id in a forwarded answer's header (the leader wrote its own).
pub(super) fn own_header(
    member: &Member,
    header: &mut Option<crate::pb::etcd::etcdserverpb::ResponseHeader>,
) {
    if let Some(h) = header {
        h.member_id = member.id();
    }
}

/// A follower sends `$request` to the leader's `$method` and returns its answer, with this
/// member's id in the header (see [`Member::route`]); on the leader it does nothing. The
/// four-argument form takes the leader's client (`Option`, `None` on the leader) for services
/// other than KV.
macro_rules! forward_if_follower {
    ($service:ident, $request:ident, $method:ident) => {
        forward_if_follower!(
            $service,
            $request,
            $method,
            match $service.member.route(&$request)? {
                Route::Leader(leader) => Some(leader),
                Route::Local => None,
            }
        )
    };
    ($service:ident, $request:ident, $method:ident, $leader:expr) => {
        if let Some(mut leader) = $leader {
            let mut answer = leader
                .$method(forwarded($request.into_inner()))
                .await
                .map_err(|s| forward_failed(&$service.member, s))?
                .into_inner();
            own_header(&$service.member, &mut answer.header);
            return Ok(Response::new(answer));
        }
    };
}
pub(super) use forward_if_follower;

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let linearizable = !request.get_ref().serializable;
        if request.get_ref().key.is_empty() {
            return Err(errors::EMPTY_KEY.status());
        }
        if linearizable {
            forward_if_follower!(self, request, range);
        }
        let req = convert::range_request(request.into_inner())?;
        let (answer, h) = self
            .member
            .node()
            .range(req, linearizable)
            .await
            .map_err(member::status)?;
        let answer = answer.map_err(|e| member::status(e.into()))?;
        let response = convert::range_response(answer, self.member.header(h));
        let size = response.encoded_len();
        if size > ENCODE_LIMIT {
            return Err(Status::resource_exhausted(format!(
                "the range's answer is {size} bytes, above the limit of {ENCODE_LIMIT}; narrow the range or set a limit and read it in pages"
            )));
        }
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        forward_if_follower!(self, request, put);
        let put = convert::put_request(request.into_inner());
        mvcc::validate_put(&put).map_err(|e| invalid(&e))?;
        match self.write(KvWrite::Put(put)).await? {
            (KvResult::Put(r), h) => Ok(Response::new(convert::put_response(
                r,
                self.member.header(h),
            ))),
            (other, _) => Err(unexpected(&Outcome::Kv(other))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        if request.get_ref().key.is_empty() {
            return Err(errors::EMPTY_KEY.status());
        }
        forward_if_follower!(self, request, delete_range);
        let delete = convert::delete_request(request.into_inner());
        match self.write(KvWrite::DeleteRange(delete)).await? {
            (KvResult::DeleteRange(r), h) => Ok(Response::new(convert::delete_response(
                r,
                self.member.header(h),
            ))),
            (other, _) => Err(unexpected(&Outcome::Kv(other))),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        forward_if_follower!(self, request, txn);
        let txn = convert::txn_request(request.into_inner())?;
        mvcc::validate_txn(&txn, self.member.max_txn_ops()).map_err(|e| invalid(&e))?;
        match self.write(KvWrite::Txn(txn)).await? {
            (KvResult::Txn(r), h) => Ok(Response::new(convert::txn_response(
                r,
                self.member.header(h),
            ))),
            (other, _) => Err(unexpected(&Outcome::Kv(other))),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        forward_if_follower!(self, request, compact);
        // `physical` (wait until the compaction reached the disk) needs no wait here: the
        // history lives in memory and is gone once the command applied.
        let revision = request.into_inner().revision;
        match self.propose(Command::Compact { revision }).await? {
            (Outcome::Compacted, h) => Ok(Response::new(CompactionResponse {
                header: Some(self.member.header(h)),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }
}
