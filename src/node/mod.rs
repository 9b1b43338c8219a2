//! The driver: one tokio task owns the Raft core, the sled store and the state machine, and
//! runs the Ready loop (ARCHITECTURE.md, "The driver loop").
//!
//! # What this module may import
//! `raft`, `storage`, `state_machine`, `config`, tokio and tracing. No tonic, no protobuf:
//! it sends to peers through the [`Transport`] trait, which `rpc/peer.rs` implements.
//!
//! # Shape
//! - [`NodeHandle`]: a cheap clone held by the gRPC services. It puts a [`Request`] with a
//!   oneshot reply on a bounded channel and awaits the answer. When the channel is full it
//!   answers [`ClientError::Overloaded`] at once instead of queueing without bound.
//! - [`Driver`]: owns everything and runs the loop; nothing else touches the core.
//! - [`NodeStatus`]: published through a `watch` after every loop iteration, from one
//!   moment of the core, so `Cluster/Status` never mixes fields read at different times.
//!
//! # Invariants
//! - A write is answered only after its entry is committed and applied (or with an error
//!   that says it may or may not have been applied).
//! - Responses to peer requests come from the core only, routed back by `rpc_id`.
//! - A storage error is fatal: the loop stops and every waiter gets an error.
//!
//! # Leases
//! Only the leader measures lease time, with the monotonic clock, in the driver (never in the
//! state machine). It keeps a deadline per held lock: a new leader gives every held lock its
//! full TTL from the moment it starts leading (a lease may outlive its TTL across a leader
//! change, never end early); an applied grant or keep-alive restarts it. When a deadline
//! passes, the leader proposes `Command::Expire` once, and the state machine decides.
//! That bookkeeping is I/O-free (`leases.rs`), as are applying a committed entry (`apply.rs`),
//! the waiting writers and readers (`pending.rs`, `Waiters`) and the lease-read clock
//! (`tick_clock.rs`): the simulator runs the same code.

pub(crate) mod apply;
mod driver;
mod error;
mod handover;
pub(crate) mod leases;
pub(crate) mod pending;
mod request;
pub(crate) mod tick_clock;
mod transport;

pub use self::driver::Driver;
pub use self::error::{ClientError, Fatal};
pub use self::request::{Header, ReadResult, ReadTarget, ReadValue, Request, WriteResult};
pub use self::transport::Transport;

use crate::raft::{LogIndex, Message, NodeId, Role, Term};
use crate::state_machine::{LockInfo, Outcome};
use tokio::sync::{mpsc, oneshot, watch};

/// Capacity of the driver's inbox; beyond it requests get UNAVAILABLE "node overloaded".
pub const INBOX_CAPACITY: usize = 4096;

/// One consistent view of the node, for `Cluster/Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's id.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Leader of the current term, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: LogIndex,
    /// Last index applied to the state machine.
    pub applied: LogIndex,
    /// Index of the last log entry.
    pub last_index: LogIndex,
}

impl NodeStatus {
    /// The status before the driver has published anything.
    fn initial(id: NodeId) -> Self {
        NodeStatus {
            id,
            role: Role::Follower,
            term: 0,
            leader: None,
            commit: 0,
            applied: 0,
            last_index: 0,
        }
    }
}

/// The driver's end of the channel, handed to [`Driver::open`].
pub struct Inbox {
    rx: mpsc::Receiver<Request>,
    status: watch::Sender<NodeStatus>,
    locks_freed: watch::Sender<u64>,
}

/// Creates a handle and the inbox the driver will read. Split from [`Driver::open`] because
/// the peer senders need a handle (to feed replies back) before the driver exists.
pub fn channel(id: NodeId, capacity: usize) -> (NodeHandle, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (status_tx, status_rx) = watch::channel(NodeStatus::initial(id));
    let (freed_tx, freed_rx) = watch::channel(0);
    (
        NodeHandle {
            tx,
            status: status_rx,
            locks_freed: freed_rx,
        },
        Inbox {
            rx,
            status: status_tx,
            locks_freed: freed_tx,
        },
    )
}

/// How gRPC handlers talk to the driver. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    /// Counts locks released or expired on this node (a waiting `Acquire` retries on change).
    locks_freed: watch::Receiver<u64>,
}

impl NodeHandle {
    /// Replicates an encoded proposal and waits until it is applied.
    ///
    /// # Errors
    /// Not leader, leadership lost, overloaded, shutting down, or the command's own
    /// deterministic [`ClientError::Apply`] error.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(Outcome, Header), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Propose { data, reply })?;
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// Reads a key, linearizably (leader + ReadIndex) or from local state.
    ///
    /// # Errors
    /// Not leader (linearizable only), leadership lost, overloaded, shutting down.
    pub async fn read(
        &self,
        key: String,
        linearizable: bool,
    ) -> Result<(Option<String>, Header), ClientError> {
        // The driver answers a read with the kind it asked for; the other arm is unreachable.
        match self.read_target(ReadTarget::Key(key), linearizable).await? {
            (ReadValue::Key(value), h) => Ok((value, h)),
            (ReadValue::Lock(_), _) => Err(ClientError::ShuttingDown),
        }
    }

    /// Reads the state of lock `name` linearizably (leader + ReadIndex): its holder and
    /// token, or `None` if it is free.
    ///
    /// # Errors
    /// Not leader, leadership lost, overloaded, shutting down.
    pub async fn read_lock(&self, name: String) -> Result<(Option<LockInfo>, Header), ClientError> {
        match self.read_target(ReadTarget::Lock(name), true).await? {
            (ReadValue::Lock(lock), h) => Ok((lock, h)),
            (ReadValue::Key(_), _) => Err(ClientError::ShuttingDown),
        }
    }

    async fn read_target(
        &self,
        target: ReadTarget,
        linearizable: bool,
    ) -> Result<(ReadValue, Header), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Read {
            target,
            linearizable,
            reply,
        })?;
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// A receiver that changes whenever this node applies a release or an expiry of a lock
    /// (any lock). Subscribe before the attempt you want to retry, then await `changed()`.
    pub fn watch_locks_freed(&self) -> watch::Receiver<u64> {
        let mut rx = self.locks_freed.clone();
        rx.mark_unchanged();
        rx
    }

    /// Steps a peer request through the core and waits for the core's response.
    ///
    /// # Errors
    /// Overloaded or shutting down; also [`ClientError::ShuttingDown`] if the core did not
    /// answer the request (the peer retries).
    pub async fn peer_request(&self, msg: Message) -> Result<Message, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Peer { msg, reply })?;
        rx.await.map_err(|_| ClientError::ShuttingDown)
    }

    /// Feeds a peer's response into the core. Dropped if the inbox is full: the core resends.
    pub fn peer_reply(&self, msg: Message) {
        if self.tx.try_send(Request::PeerReply { msg }).is_err() {
            tracing::debug!("inbox full or closed: dropped a peer reply");
        }
    }

    /// The last published status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver for status changes.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    fn submit(&self, req: Request) -> Result<(), ClientError> {
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ClientError::ShuttingDown,
        })
    }
}
