//! The two tiers of errors (STYLE.md §5): [`ClientError`] goes back to one caller and the node
//! keeps running; [`Fatal`] stops the node.

use crate::raft::NodeId;
use crate::state_machine::ApplyError;
use crate::storage::{IdentityError, IdentityMismatch, StorageError};

/// Why one client or peer request failed. `rpc/status.rs` turns these into gRPC statuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Another node is the leader; the client should retry there.
    #[error("not leader, try node {id} ({addr})")]
    NotLeader {
        /// The leader's id.
        id: NodeId,
        /// The leader's address from our config (empty if unknown).
        addr: String,
    },
    /// No leader is known right now (an election is under way).
    #[error("no leader elected yet")]
    NoLeader,
    /// This node stopped being the leader before the request completed.
    #[error(
        "leadership lost before the request completed; it may or may not have been applied, retry"
    )]
    LeadershipLost,
    /// The node is stopping.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node is stopping because its storage failed; the request may or may not have
    /// been applied by the rest of the cluster. Carries the storage error, on one line.
    #[error("node is stopping: storage failed ({0}); retry on another node")]
    StorageFailed(String),
    /// The driver's inbox is full.
    #[error("node overloaded, retry")]
    Overloaded,
    /// The driver did not answer a waiting Acquire's look at its lock in time (a stalled
    /// node): the client should not be held for the rest of its wait.
    #[error("node not responding, retry")]
    NotResponding,
    /// The bound on Acquire requests waiting on this node (`--max-waiting-acquires`) is
    /// reached, and this one would have to wait.
    #[error("too many Acquire requests are waiting on this node (limit {limit}); retry later or wait on another lock")]
    TooManyWaiting {
        /// The bound.
        limit: usize,
    },
    /// The request itself is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A key or value that `kvstore.v1` cannot carry (not UTF-8; written through the etcd
    /// API).
    #[error("{0}")]
    NotText(String),
    /// The command applied, deterministically, to an error.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The leader is handing leadership over and takes no writes meanwhile.
    #[error("leadership transfer in progress; retry")]
    TransferInProgress,
    /// A leadership transfer did not complete in time.
    #[error("leadership transfer to node {target} did not complete within {waited_ms} ms; node {leader} still leads, retry")]
    TransferTimedOut {
        /// The requested new leader.
        target: NodeId,
        /// How long the node waited.
        waited_ms: u128,
        /// Who leads now (0 if unknown).
        leader: NodeId,
    },
    /// A membership change refused by the leader (one line; see `ConfChangeError`).
    #[error(transparent)]
    Membership(crate::raft::ConfChangeError),
}

/// An error that stops the node (the process exits non-zero). Logged once by the driver,
/// never retried: after a failed write or fsync the node's disk state is unknown.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// sled failed: the data dir cannot be opened, read, written or flushed. Never retried.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored snapshot does not decode into a state machine.
    #[error("snapshot at index {index} in data dir {} does not decode: {cause}; replace the member: remove it (kvctl member remove), add a new member and start that on an empty data dir with --join (README \"Replacing a node\")", dir.display())]
    BadSnapshot {
        /// the data dir
        dir: std::path::PathBuf,
        /// the snapshot's last included index
        index: u64,
        /// why
        cause: String,
    },
    /// The Raft configuration derived from the node config is invalid.
    #[error("invalid raft configuration: {0}")]
    Config(#[from] crate::raft::ConfigError),
    /// The flags disagree with the cluster identity the data dir recorded (another `--id`,
    /// another member set, another cluster token): the node refuses to start.
    #[error(transparent)]
    Identity(#[from] IdentityMismatch),
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task for data dir {} failed: {cause}", dir.display())]
    StorageTask {
        /// the data dir
        dir: std::path::PathBuf,
        /// why
        cause: String,
    },
    /// This node applied its own removal, or a peer refused it as removed: it takes no
    /// further part in the cluster.
    #[error("{REMOVED_LINE}")]
    Removed,
    /// A peer knew this node's id on another data dir: this one was wiped or replaced, so the
    /// node forgot its term and votes and must not take part (`rpc/instances.rs`).
    #[error(
        "member {id} ran on another data dir before (peer {peer} knows it): a member that lost its data could vote twice in one term; replace it instead: `kvctl member remove {id}`, then `kvctl member add --learner` a new member and start that with --join (README \"Replacing a node\")"
    )]
    DataDirReplaced {
        /// This node's id.
        id: NodeId,
        /// The peer that knew the other data dir.
        peer: NodeId,
    },
}

/// The one line a removed node logs and prints before it stops.
pub const REMOVED_LINE: &str = "this node was removed from the cluster";

impl From<IdentityError> for Fatal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Mismatch(m) => Fatal::Identity(m),
            IdentityError::Storage(s) => Fatal::Storage(s),
        }
    }
}
