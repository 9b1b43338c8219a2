//! [`Member`]: what every etcd service of one node shares — its ids for the response
//! headers, its limits, the way to the leader for requests a follower forwards, and the
//! translation of our errors into etcd's.
//!
//! etcd clients balance requests over every endpoint and do not follow kvstore's redirect
//! metadata, so any member answers any request, as etcd's do: a follower forwards writes and
//! linearizable reads to the leader over the same etcd API ([`Member::leader_channel`]), and serves
//! serializable reads itself. A forwarded request carries [`FORWARDED_KEY`]; a member that
//! receives one and does not lead answers "etcdserver: no leader" (UNAVAILABLE, which clients
//! retry) instead of forwarding again, so stale leader knowledge never makes a loop.

use super::errors::{self, EtcdError};
use crate::config::NodeConfig;
use crate::node::{ClientError, Header, NodeHandle};
use crate::pb::etcd::etcdserverpb::kv_client::KvClient;
use crate::pb::etcd::etcdserverpb::ResponseHeader;
use crate::raft::NodeId;
use crate::rpc::member_service::peer_address;
use crate::state_machine::mvcc::MvccError;
use crate::state_machine::ApplyError;
use crate::storage::ClusterIdentity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Request metadata key set on a request one member forwarded to the leader.
pub const FORWARDED_KEY: &str = "kvstore-forwarded";

/// How long a member waits to connect to the leader it forwards to.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The gRPC decode limit of the etcd services, as etcd sets it: the request limit plus
/// 512 KiB of framing, so a request a little over the limit reaches the check that answers
/// etcd's "request is too large".
pub const DECODE_LIMIT: usize = crate::config::MAX_REQUEST_BYTES + (512 << 10);

/// The largest answer the etcd services send (a Range's, mostly): 256 MiB. Larger is refused
/// with RESOURCE_EXHAUSTED asking for a narrower range or a `limit`, before it is built
/// into a gRPC message (etcd's own bound is gRPC's 2 GiB).
pub const ENCODE_LIMIT: usize = 256 << 20;

/// One node's shared state for its etcd services. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Member {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeHandle,
    /// The node's published status, read in place (no clone) for the cluster id and the
    /// members' addresses.
    status: tokio::sync::watch::Receiver<crate::node::NodeStatus>,
    /// The cluster id of a static start (`--peers`), until the driver publishes the one the
    /// data dir records (a member that joined has the cluster's, not one of its own flags).
    cluster_id: u64,
    id: NodeId,
    /// This node's configuration: `--peers` gives the addresses of the members of a static
    /// start until the membership records its own (see [`Member::peer_address`]).
    config: NodeConfig,
    max_txn_ops: usize,
    max_request_bytes: usize,
    /// etcd's minimum lease TTL in seconds: 1.5 election timeouts, rounded up. A LeaseGrant
    /// asking for less gets this (etcd's lessor raises it the same way).
    min_lease_ttl: i64,
    /// How often idle watches that asked get a progress notification.
    watch_progress_interval: std::time::Duration,
    /// Channels to the members this node forwarded to, with the address each was made for
    /// (a member whose address was updated gets a new one).
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
}

/// Where a request is served.
#[derive(Debug)]
pub enum Route {
    /// Here: this node leads, or the request may be served by any member.
    Local,
    /// At the leader, through this client.
    Leader(KvClient<Channel>),
}

impl Member {
    /// The etcd services' state of the node configured by `config`.
    pub fn new(config: &NodeConfig, node: NodeHandle) -> Self {
        let cluster_id =
            ClusterIdentity::new(config.id, config.members(), &config.cluster_token).cluster_id;
        Member {
            inner: Arc::new(Inner {
                status: node.watch_status(),
                node,
                cluster_id,
                id: config.id,
                config: config.clone(),
                max_txn_ops: config.max_txn_ops,
                max_request_bytes: config.max_request_bytes,
                min_lease_ttl: min_lease_ttl(config.election_timeout),
                watch_progress_interval: config.watch_progress_notify_interval,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The node's handle.
    pub fn node(&self) -> &NodeHandle {
        &self.inner.node
    }

    /// This member's id (our node id; etcd's are random, any distinct u64 will do).
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster id the data dir records (before the driver published it: the one the
    /// flags give).
    pub fn cluster_id(&self) -> u64 {
        match self.inner.status.borrow().cluster_id {
            0 => self.inner.cluster_id,
            id => id,
        }
    }

    /// `--max-txn-ops`.
    pub fn max_txn_ops(&self) -> usize {
        self.inner.max_txn_ops
    }

    /// `--max-request-bytes`.
    pub fn max_request_bytes(&self) -> usize {
        self.inner.max_request_bytes
    }

    /// etcd's minimum lease TTL for this cluster, in seconds (see [`min_lease_ttl`]).
    pub fn min_lease_ttl(&self) -> i64 {
        self.inner.min_lease_ttl
    }

    /// `--experimental-watch-progress-notify-interval`.
    pub fn watch_progress_interval(&self) -> std::time::Duration {
        self.inner.watch_progress_interval
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Where this node reaches member `id` (its peer address, where it also serves the etcd
    /// API): the address the current membership records, so a member that joined after this
    /// node started is found, else the one `--peers` gives. `None` for an id that is neither
    /// a member nor configured.
    pub fn peer_address(&self, id: NodeId) -> Option<String> {
        let status = self.inner.status.borrow();
        let membership = &status.membership;
        if !membership.contains(id) && self.inner.config.address_of(id).is_none() {
            return None;
        }
        peer_address(&self.inner.config, membership, id)
    }

    /// The header of an answer that took effect as `h` says.
    pub fn header(&self, h: Header) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.inner.id,
            revision: h.revision,
            raft_term: h.term,
        }
    }

    /// A header from this member's last published status (calls that do not go through
    /// the log).
    pub fn status_header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.inner.id,
            revision,
            raft_term: self.inner.node.status().term,
        }
    }

    /// Where a request that needs the leader goes: here when this node leads (or knows no
    /// leader: the driver then answers "no leader"), else the leader. A request that was
    /// already forwarded is never forwarded again.
    ///
    /// # Errors
    /// "etcdserver: no leader" for a forwarded request this node cannot serve.
    pub fn route<T>(&self, request: &tonic::Request<T>) -> Result<Route, Status> {
        let Some((_, channel)) = self.leader_channel(request)? else {
            return Ok(Route::Local);
        };
        Ok(Route::Leader(
            KvClient::new(channel)
                .max_decoding_message_size(ENCODE_LIMIT)
                .max_encoding_message_size(DECODE_LIMIT),
        ))
    }

    /// [`route`](Self::route) for any etcd service: `None` to serve here, else the leader's id
    /// and a channel to it.
    ///
    /// # Errors
    /// "etcdserver: no leader" for a forwarded request this node cannot serve.
    pub fn leader_channel<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Option<(NodeId, Channel)>, Status> {
        let status = self.inner.node.status();
        let leader = match status.leader {
            Some(leader) if leader != self.inner.id => leader,
            _ => return Ok(None),
        };
        if request.metadata().contains_key(FORWARDED_KEY) {
            return Err(errors::NO_LEADER.status());
        }
        Ok(Some((leader, self.channel_to(leader)?)))
    }

    fn channel_to(&self, id: NodeId) -> Result<Channel, Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let addr = self
            .peer_address(id)
            .ok_or_else(|| errors::NO_LEADER.status())?;
        if let Some((known, c)) = channels.get(&id) {
            if *known == addr {
                return Ok(c.clone());
            }
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("leader address {addr} is not a URI: {e}")))?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(id, (addr, channel.clone()));
        Ok(channel)
    }

    /// Forgets the channel to `id` after a call on it failed, so the next one reconnects.
    pub fn forget(&self, id: NodeId) {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// etcd's minimum lease TTL for an election timeout: 1.5 of them, in whole seconds rounded
/// up (etcd: `ceil(3 * election ticks / 2 * tick)`; 2 s with its default 1 s timeout).
pub fn min_lease_ttl(election_timeout: Duration) -> i64 {
    let ms = election_timeout.as_millis().saturating_mul(3) / 2;
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// Marks `request` as forwarded (see [`FORWARDED_KEY`]).
pub fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// etcd's answer to a key-space refusal.
pub fn mvcc_error(e: &MvccError) -> EtcdError {
    match e {
        MvccError::Compacted { .. } => errors::COMPACTED,
        MvccError::FutureRevision => errors::FUTURE_REV,
        MvccError::DuplicateKey => errors::DUPLICATE_KEY,
        MvccError::TooManyOps { .. } => errors::TOO_MANY_OPS,
        MvccError::LeaseNotFound(_) => errors::LEASE_NOT_FOUND,
        MvccError::EmptyKey => errors::EMPTY_KEY,
        MvccError::KeyNotFound => errors::KEY_NOT_FOUND,
        MvccError::ValueProvided => errors::VALUE_PROVIDED,
        MvccError::LeaseProvided => errors::LEASE_PROVIDED,
    }
}

/// etcd's answer to a failed request (its code and message, which etcd's clients match on);
/// failures etcd has no word for keep our one-line message.
pub fn status(e: ClientError) -> Status {
    match e {
        ClientError::NoLeader | ClientError::NotLeader { .. } => errors::NO_LEADER.status(),
        ClientError::LeadershipLost | ClientError::TransferInProgress => {
            errors::LEADER_CHANGED.status()
        }
        ClientError::ShuttingDown => errors::STOPPED.status(),
        ClientError::Overloaded => errors::TOO_MANY_REQUESTS.status(),
        ClientError::Apply(ApplyError::Kv(e)) => mvcc_error(&e).status(),
        ClientError::Apply(ApplyError::LeaseExists { .. }) => errors::LEASE_EXIST.status(),
        ClientError::Apply(ApplyError::LeaseTtlTooLarge { .. }) => {
            errors::LEASE_TTL_TOO_LARGE.status()
        }
        ClientError::Invalid(m) => Status::invalid_argument(m),
        other => {
            let code = match &other {
                ClientError::StorageFailed(_) | ClientError::NotResponding => Code::Unavailable,
                ClientError::TooManyWaiting { .. } => Code::ResourceExhausted,
                ClientError::TransferTimedOut { .. } => Code::DeadlineExceeded,
                _ => Code::FailedPrecondition,
            };
            Status::new(code, other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's minimum: ceil(1.5 election timeouts) in seconds; 2 s for its default 1 s.
    #[test]
    fn the_minimum_lease_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        let ms = Duration::from_millis;
        assert_eq!(min_lease_ttl(ms(1000)), 2);
        assert_eq!(min_lease_ttl(ms(150)), 1);
        assert_eq!(min_lease_ttl(ms(2000)), 3);
        assert_eq!(min_lease_ttl(ms(2001)), 4);
    }

    #[test]
    fn lease_refusals_get_etcds_code_and_message() {
        let exists = status(ClientError::Apply(ApplyError::LeaseExists { id: 1 }));
        assert_eq!(
            (exists.code(), exists.message()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        let large = status(ClientError::Apply(ApplyError::LeaseTtlTooLarge { ttl: 1 }));
        assert_eq!(
            (large.code(), large.message()),
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        );
    }

    #[test]
    fn key_space_refusals_get_etcds_code_and_message() {
        let cases = [
            (
                MvccError::Compacted {
                    compact_revision: 3,
                },
                errors::COMPACTED,
            ),
            (MvccError::FutureRevision, errors::FUTURE_REV),
            (MvccError::DuplicateKey, errors::DUPLICATE_KEY),
            (MvccError::TooManyOps { max: 128 }, errors::TOO_MANY_OPS),
            (MvccError::LeaseNotFound(7), errors::LEASE_NOT_FOUND),
            (MvccError::EmptyKey, errors::EMPTY_KEY),
            (MvccError::KeyNotFound, errors::KEY_NOT_FOUND),
            (MvccError::ValueProvided, errors::VALUE_PROVIDED),
            (MvccError::LeaseProvided, errors::LEASE_PROVIDED),
        ];
        for (e, want) in cases {
            // etcd's message is ours with its "etcdserver: " prefix.
            assert_eq!(want.message(), format!("etcdserver: {e}"));
            let s = status(ClientError::Apply(ApplyError::Kv(e)));
            assert_eq!((s.code(), s.message()), (want.code(), want.message()));
        }
    }

    #[test]
    fn failures_etcd_clients_retry_are_unavailable_with_etcds_words() {
        for (e, want) in [
            (ClientError::NoLeader, errors::NO_LEADER),
            (
                ClientError::NotLeader {
                    id: 2,
                    addr: String::new(),
                },
                errors::NO_LEADER,
            ),
            (ClientError::LeadershipLost, errors::LEADER_CHANGED),
            (ClientError::TransferInProgress, errors::LEADER_CHANGED),
            (ClientError::ShuttingDown, errors::STOPPED),
            (ClientError::Overloaded, errors::TOO_MANY_REQUESTS),
        ] {
            let s = status(e);
            assert_eq!((s.code(), s.message()), (want.code(), want.message()));
        }
        let s = status(ClientError::Invalid("bad".into()));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "bad"));
    }

    /// A follower reaches members (a leader among them) that joined after it started, at the
    /// address the membership records, and dials anew when that address changes; the cluster
    /// id is the one the driver publishes (the data dir's) once it has.
    #[tokio::test]
    async fn members_are_reached_at_the_memberships_addresses() {
        let mut config = NodeConfig::new(1, 9001);
        config.peers = crate::config::parse_peers("9002,9003", 1).unwrap();
        let (node, inbox) = crate::node::channel(1, 8);
        let member = Member::new(&config, node);
        let from_flags = member.cluster_id();
        assert_eq!(member.peer_address(2).as_deref(), Some("127.0.0.1:9002"));
        assert_eq!(member.peer_address(4), None, "not a member yet");

        let mut membership = crate::raft::Membership::with_voters([1, 2, 3, 4]);
        membership.addresses.insert(4, "127.0.0.1:7004".into());
        membership.addresses.insert(2, "10.0.0.2:9002".into());
        let status = |membership: crate::raft::Membership| crate::node::NodeStatus {
            membership,
            leader: Some(4),
            cluster_id: 77,
            ..crate::node::NodeStatus::initial(1)
        };
        inbox.publish_status(status(membership.clone()));
        assert_eq!(member.peer_address(4).as_deref(), Some("127.0.0.1:7004"));
        assert_eq!(
            member.peer_address(2).as_deref(),
            Some("10.0.0.2:9002"),
            "the membership's address over --peers"
        );
        assert_eq!(member.peer_address(3).as_deref(), Some("127.0.0.1:9003"));
        assert_eq!((from_flags == 77, member.cluster_id()), (false, 77));
        assert_eq!(member.status_header(0).cluster_id, 77);

        let dialled = |member: &Member| {
            let channels = member.inner.channels.lock().unwrap();
            channels.get(&4).map(|(addr, _)| addr.clone())
        };
        let (leader, _) = member
            .leader_channel(&tonic::Request::new(()))
            .unwrap()
            .unwrap();
        assert_eq!(leader, 4);
        assert_eq!(dialled(&member).as_deref(), Some("127.0.0.1:7004"));
        membership.addresses.insert(4, "127.0.0.1:7044".into());
        inbox.publish_status(status(membership));
        member.leader_channel(&tonic::Request::new(())).unwrap();
        assert_eq!(
            dialled(&member).as_deref(),
            Some("127.0.0.1:7044"),
            "an updated address is dialled anew"
        );
    }

    #[test]
    fn a_forwarded_request_is_marked() {
        let r = forwarded(());
        assert!(r.metadata().contains_key(FORWARDED_KEY));
    }
}
