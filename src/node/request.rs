//! What the gRPC layer asks of the driver. Each request carries its own oneshot reply.

use super::error::ClientError;
use crate::raft::{LogIndex, Message, NodeId, Term};
use crate::state_machine::mvcc::{RangeRequest, RangeResponse};
use crate::state_machine::{ApplyError, LockInfo, Outcome};
use tokio::sync::oneshot;

/// Where and when an answer took effect; sent with every client answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The node that answered.
    pub node_id: NodeId,
    /// Its current term (for a write: the term of the applied entry).
    pub term: Term,
    /// The log index the operation took effect at (reads: the applied index served from).
    pub index: LogIndex,
    /// The key space's revision after the operation (reads: the revision served from).
    pub revision: i64,
}

/// Result of a write.
pub type WriteResult = Result<(Outcome, Header), ClientError>;
/// Result of a read.
pub type ReadResult = Result<(ReadValue, Header), ClientError>;

/// What a read looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadTarget {
    /// The value of a key.
    Key(String),
    /// The state of a lock.
    Lock(String),
    /// An etcd Range over the key space.
    Range(RangeRequest),
    /// Renew lease on keys `id` (etcd's LeaseKeepAlive): the leader restarts its TTL at once
    /// and answers only once a quorum confirmed it still leads, like a linearizable read,
    /// so a deposed leader that does not know it yet (paused, partitioned) never tells a
    /// client its lease was renewed: the new leader restarted every TTL when it took over,
    /// which is after that confirmation. Only as a linearizable read.
    LeaseKeepAlive(i64),
    /// What a [`ReadTarget::LeaseKeepAlive`] waits as once renewed: the TTL to answer.
    LeaseRenewed(i64),
}

/// The answer to a read, matching its [`ReadTarget`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadValue {
    /// The key's value, if the key exists.
    Key(Option<Vec<u8>>),
    /// The lock's holder and token, if it is held.
    Lock(Option<LockInfo>),
    /// The keys in range, or why the range cannot be read (a compacted or future revision).
    Range(Result<RangeResponse, ApplyError>),
    /// The TTL a lease on keys was renewed for, in seconds (0: no such lease, or its revoke
    /// was already proposed).
    LeaseKeptAlive(i64),
}

/// A request into the driver loop.
#[derive(Debug)]
pub enum Request {
    /// Replicate an encoded `Proposal`; answered once it is applied.
    Propose {
        /// `state_machine::Proposal::encode()` output.
        data: Vec<u8>,
        /// Where the answer goes.
        reply: oneshot::Sender<WriteResult>,
    },
    /// Read a key or a lock.
    Read {
        /// What to read.
        target: ReadTarget,
        /// ReadIndex (leader, confirmed by a quorum) or local state (any node, may be stale).
        linearizable: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<ReadResult>,
    },
    /// The state of a lock as applied on this node, answered only if this node leads (else
    /// the redirect): what a waiting Acquire looks at before it proposes.
    LeaderLocalLock {
        /// The lock's name.
        name: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(Option<LockInfo>, Header), ClientError>>,
    },
    /// A peer's RequestVote or AppendEntries; the core's response goes to `reply`.
    Peer {
        /// The request, already validated and converted.
        msg: Message,
        /// Where the response goes.
        reply: oneshot::Sender<Message>,
    },
    /// A response a peer sender got back for one of our requests.
    PeerReply {
        /// The response (its `from` is the peer).
        msg: Message,
    },
    /// Start handing leadership to `target` (answered at once: started, or why not).
    TransferLeadership {
        /// The node that should lead.
        target: NodeId,
        /// The term the transfer starts in, or the error.
        reply: oneshot::Sender<Result<Term, ClientError>>,
    },
    /// Shutdown of a leader: hand leadership to the most up-to-date peer. Answered with the
    /// target and the current term, or `None` when this node does not lead (or has no peers).
    HandOver {
        /// Where the answer goes.
        reply: oneshot::Sender<Option<(NodeId, Term)>>,
    },
    /// A question about leases on keys that the leader's lease clock answers, without a log
    /// entry (etcd's LeaseKeepAlive, LeaseTimeToLive, LeaseLeases). Answered only by a leader
    /// that applied an entry of its own term (so its lease table holds every lease committed
    /// before it led); otherwise the redirect, or `NoLeader` while it catches up.
    KeyLease {
        /// The question.
        query: KeyLeaseQuery,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(KeyLeaseAnswer, Header), ClientError>>,
    },
    /// A watcher's catch-up: the changes of `[key, range_end)` from `from` as applied here
    /// (`node::watches::history`).
    WatchHistory {
        /// The first revision wanted (0: none, only the current revision).
        from: i64,
        /// First key.
        key: Vec<u8>,
        /// End of the interval (key space conventions).
        range_end: Vec<u8>,
        /// Add previous kvs.
        prev_kv: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<super::watches::History>,
    },
    /// A membership change (leader only); answered once its entry is applied, with the
    /// membership it led to, or at once with the refusal (not leader, `ConfChangeError`).
    ConfChange {
        /// The change.
        change: crate::raft::ConfChange,
        /// Skip the strict reconfiguration check (etcd `--strict-reconfig-check=false`).
        force: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(crate::raft::Membership, Header), ClientError>>,
    },
    /// A peer refused one of our calls because this node was removed from the cluster: the
    /// driver stops the node.
    RemovedByPeer {
        /// The peer that said so.
        peer: NodeId,
    },
    /// A peer knew this node's id on another data dir (this one is new: the node lost its
    /// data and forgot its votes): the driver stops the node.
    DataDirReplaced {
        /// The peer that said so.
        peer: NodeId,
    },
}

/// What [`Request::KeyLease`] asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLeaseQuery {
    /// Restart lease `id`'s full TTL (etcd's LeaseKeepAlive).
    KeepAlive(i64),
    /// Lease `id`'s granted and remaining TTL, and its keys when `keys` (etcd's
    /// LeaseTimeToLive).
    TimeToLive {
        /// The lease.
        id: i64,
        /// Whether to list the attached keys.
        keys: bool,
    },
    /// Every lease's id (etcd's LeaseLeases).
    List,
}

/// The answer to a [`KeyLeaseQuery`], matching it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLeaseAnswer {
    /// The TTL the lease was renewed for, in seconds; 0 if it does not exist or its revoke
    /// was already proposed (etcd answers TTL 0 for a lease it cannot renew).
    KeptAlive {
        /// seconds
        ttl: i64,
    },
    /// The lease, if it exists.
    TimeToLive(Option<KeyLeaseInfo>),
    /// Every lease's id, in id order.
    List(Vec<i64>),
}

/// One lease on keys as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLeaseInfo {
    /// Its id.
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// What is left of it on the leader's clock, in whole seconds (etcd truncates too).
    pub remaining_ttl: i64,
    /// The attached keys, in key order, when asked for.
    pub keys: Vec<Vec<u8>>,
}
