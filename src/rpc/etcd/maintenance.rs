//! `etcdserverpb.Maintenance` and `etcdserverpb.Cluster`, as far as a cluster with a fixed
//! membership and no alarms has them: Status (what `etcdctl endpoint status` prints), Alarm
//! (always an empty list), MoveLeader (our leadership transfer), HashKV (a checksum of the key
//! space at a revision, equal on members that applied the same history). The Cluster
//! service of the same type is in `cluster.rs`. Snapshots, defragmentation and downgrades
//! answer UNIMPLEMENTED naming the method.

use super::errors::{self, not_implemented};
use super::member::{self, Member};
use crate::pb::etcd::etcdserverpb::*;
use crate::raft::{NodeId, Role};
use crate::rpc::client_urls::ClientUrls;
use crate::state_machine::mvcc::RangeRequest as KeyRange;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_stream::Empty;
use tonic::{Request, Response, Status};

/// The etcd API version kvstore implements, as Status reports it (`etcdctl endpoint status`
/// prints it; etcd clients compare it to enable features). kvstore's own version is logged
/// at startup.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// MoveLeader waits this long for the target to take over (etcd waits up to its request
/// timeout).
const MOVE_LEADER_WAIT: Duration = Duration::from_secs(5);

/// Maintenance and Cluster of one node.
#[derive(Clone, Debug)]
pub struct EtcdMaintenance {
    pub(super) member: Member,
    pub(super) urls: ClientUrls,
    /// The members this node has seen started (see `cluster.rs`): shared by the clones.
    started: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl EtcdMaintenance {
    /// The services of `member`; `urls` names the members' advertised client addresses.
    pub fn new(member: Member, urls: ClientUrls) -> Self {
        EtcdMaintenance {
            member,
            urls,
            started: Arc::default(),
        }
    }

    /// Remembers that member `id` has started.
    pub(super) fn started_insert(&self, id: NodeId) {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    }

    /// Whether member `id` was seen started.
    pub(super) fn started_contains(&self, id: NodeId) -> bool {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&id)
    }

    fn header(&self) -> ResponseHeader {
        self.member
            .status_header(self.member.node().status().revision)
    }
}

#[tonic::async_trait]
impl maintenance_server::Maintenance for EtcdMaintenance {
    type SnapshotStream = Empty<Result<SnapshotResponse, Status>>;

    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        use alarm_request::AlarmAction;
        // kvstore raises no alarm: GET lists none, DEACTIVATE has nothing to clear.
        if request.get_ref().action == AlarmAction::Activate as i32 {
            return Err(Status::failed_precondition(
                "kvstore raises no alarms and cannot record one (Alarm ACTIVATE)",
            ));
        }
        // etcd answers a GET with no header at all.
        Ok(Response::new(AlarmResponse {
            header: None,
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = self.member.node().status();
        let size = i64::try_from(s.state_bytes).unwrap_or(i64::MAX);
        Ok(Response::new(StatusResponse {
            header: Some(self.member.status_header(s.revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size: size,
            leader: s.leader.unwrap_or(0),
            raft_index: s.commit,
            raft_term: s.term,
            raft_applied_index: s.applied,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: s.membership.is_learner(self.member.id()),
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_implemented("etcdserverpb.Maintenance/Defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_implemented("etcdserverpb.Maintenance/Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        // Every key with its revisions and value at the revision (0: the current one), read
        // from this member's applied state, as etcd's HashKV is.
        let every_key = KeyRange {
            revision: request.get_ref().revision,
            ..KeyRange::every_key()
        };
        let (answer, h) = self
            .member
            .node()
            .range(every_key, false)
            .await
            .map_err(member::status)?;
        let answer = answer.map_err(|e| member::status(e.into()))?;
        let mut hasher = crc32fast::Hasher::new();
        for kv in &answer.kvs {
            for n in [
                kv.key.len() as i64,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            ] {
                hasher.update(&n.to_le_bytes());
            }
            hasher.update(&kv.key);
            hasher.update(&(kv.value.len() as u64).to_le_bytes());
            hasher.update(&kv.value);
        }
        Ok(Response::new(HashKvResponse {
            header: Some(self.member.header(h)),
            hash: hasher.finalize(),
            compact_revision: self.member.node().status().compact_revision,
        }))
    }

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_implemented("etcdserverpb.Maintenance/Snapshot"))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let s = self.member.node().status();
        if s.role != Role::Leader {
            return Err(errors::NOT_LEADER.status());
        }
        // As etcd: the leader itself is no transferee either.
        if target == self.member.id() || !s.membership.is_voter(target) {
            return Err(errors::BAD_LEADER_TRANSFEREE.status());
        }
        self.member
            .node()
            .transfer_leadership(target, MOVE_LEADER_WAIT)
            .await
            .map_err(|e| match e {
                crate::node::ClientError::TransferTimedOut { .. } => errors::TIMEOUT.status(),
                other => member::status(other),
            })?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.header()),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_implemented("etcdserverpb.Maintenance/Downgrade"))
    }
}
