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
//! Leases on keys (etcd's) are timed by the same table: a grant starts one, a keep-alive is
//! answered by the leader alone without a log entry (as in etcd), and a lease that runs out
//! gets a `Command::LeaseRevoke`, proposed once.
//! That bookkeeping is I/O-free (`leases.rs`), as are applying a committed entry (`apply.rs`),
//! the waiting writers and readers (`pending.rs`, `Waiters`) and the lease-read clock
//! (`tick_clock.rs`): the simulator runs the same code.
//!
//! # Waiting Acquires
//! An Acquire that waits for a held lock writes nothing to the log while it waits. It joins
//! that lock's queue in [`LockWaiters`] (shared by the handle and the driver), watches the
//! lock's generation, and proposes only when the state applied on the leader says the lock is
//! free and it heads the queue. The driver bumps a lock's generation when an applied entry
//! changes its holder or token (a grant of a new token, a release, an expiry that ended a
//! grant; never a renewal), and every generation after a snapshot install or a change of this
//! node's role or term.
//!
//! # Watches
//! After each Ready's applies the driver publishes what they changed as one [`watches::Batch`]
//! on a bounded broadcast ([`watches::BATCH_CAPACITY`]; skipped while nobody listens), and
//! answers [`Request::WatchHistory`] from the applied key space. Watchers subscribe before they
//! ask for history, so batch and history together cover every revision; which event reaches
//! which watcher is decided in the I/O-free `watches.rs` (exactly the history, including across
//! lag and snapshot installs).

pub(crate) mod apply;
pub(crate) mod compactor;
mod driver;
mod error;
mod handover;
pub(crate) mod leases;
pub mod lock_waiters;
pub(crate) mod pending;
mod request;
pub(crate) mod tick_clock;
mod transport;
pub mod watches;

pub use self::driver::Driver;
pub use self::error::{ClientError, Fatal};
pub use self::request::{
    Header, KeyLeaseAnswer, KeyLeaseInfo, KeyLeaseQuery, ReadResult, ReadTarget, ReadValue,
    Request, WriteResult,
};
pub use self::transport::Transport;

use crate::raft::{LogIndex, Message, NodeId, Role, Term};
use crate::state_machine::mvcc::{RangeRequest, RangeResponse};
use crate::state_machine::{ApplyError, LockInfo, Outcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::lock_waiters::{LockWaiters, TooManyWaiting, Waiter};

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
    /// The key space's revision as applied here.
    pub revision: i64,
    /// The key space's compaction revision as applied here.
    pub compact_revision: i64,
    /// The size of the last snapshot taken or installed plus the commands applied since, in
    /// bytes: what the state takes on disk, about (etcd's "db size").
    pub state_bytes: u64,
    /// The membership this node follows (the last configuration entry in its log), with
    /// the members' peer addresses as far as the log knows them.
    pub membership: crate::raft::Membership,
    /// As leader: the highest index known to be replicated on each member (its lag is
    /// `last_index - matched`); empty on other nodes.
    pub matched: std::collections::BTreeMap<NodeId, LogIndex>,
    /// The cluster id the data dir recorded (0 before the driver published).
    pub cluster_id: u64,
    /// The members whose removal this node knows is committed: the peer service refuses
    /// their calls as from removed members (an uncommitted removal may still be truncated).
    pub committed_removals: std::collections::BTreeSet<NodeId>,
}

impl NodeStatus {
    /// The status before the driver has published anything.
    pub fn initial(id: NodeId) -> Self {
        NodeStatus {
            id,
            role: Role::Follower,
            term: 0,
            leader: None,
            commit: 0,
            applied: 0,
            last_index: 0,
            revision: 1,
            compact_revision: 0,
            state_bytes: 0,
            membership: crate::raft::Membership::default(),
            matched: std::collections::BTreeMap::new(),
            cluster_id: 0,
            committed_removals: std::collections::BTreeSet::new(),
        }
    }
}

/// The driver's end of the channel, handed to [`Driver::open`].
pub struct Inbox {
    rx: mpsc::Receiver<Request>,
    status: watch::Sender<NodeStatus>,
    lock_waiters: Arc<LockWaiters>,
    watch: WatchHub,
}

/// Batches of applied changes published after every Ready's applies ([`watches::Batch`]),
/// shared by the driver (which sends) and the handles (which subscribe).
#[derive(Debug)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<watches::Batch>>,
    /// How many watchers asked for previous kvs: batches carry them only while it is not 0.
    prev_kv: Arc<AtomicUsize>,
}

impl WatchHub {
    fn new() -> Self {
        WatchHub {
            tx: broadcast::channel(watches::BATCH_CAPACITY).0,
            prev_kv: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens, and whether batches need previous kvs.
    fn wanted(&self) -> (bool, bool) {
        (
            self.tx.receiver_count() > 0,
            self.prev_kv.load(Ordering::SeqCst) > 0,
        )
    }

    /// Publishes a batch (no one listening is fine).
    fn send(&self, batch: watches::Batch) {
        let _ = self.tx.send(Arc::new(batch));
    }
}

/// The handles' side of [`WatchHub`]: subscribes without keeping the channel open, so
/// receivers see it closed once the driver is gone.
#[derive(Clone, Debug)]
struct WatchSubscriber {
    tx: broadcast::WeakSender<Arc<watches::Batch>>,
    prev_kv: Arc<AtomicUsize>,
}

/// Keeps previous kvs in published batches while it lives (one per watcher that asked).
#[derive(Debug)]
pub struct PrevKvWanted(Arc<AtomicUsize>);

impl Drop for PrevKvWanted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inbox {
    /// The request channel alone, for tests that stand in for the driver.
    #[cfg(test)]
    pub(crate) fn into_requests(self) -> mpsc::Receiver<Request> {
        self.rx
    }

    /// Publishes `status` as the driver does, for tests that stand in for the driver.
    #[cfg(test)]
    pub(crate) fn publish_status(&self, status: NodeStatus) {
        self.status.send_replace(status);
    }
}

/// Creates a handle and the inbox the driver will read. Split from [`Driver::open`] because
/// the peer senders need a handle (to feed replies back) before the driver exists.
pub fn channel(id: NodeId, capacity: usize) -> (NodeHandle, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (status_tx, status_rx) = watch::channel(NodeStatus::initial(id));
    let lock_waiters = Arc::new(LockWaiters::default());
    let hub = WatchHub::new();
    (
        NodeHandle {
            tx,
            status: status_rx,
            lock_waiters: lock_waiters.clone(),
            watch: WatchSubscriber {
                tx: hub.tx.downgrade(),
                prev_kv: hub.prev_kv.clone(),
            },
        },
        Inbox {
            rx,
            status: status_tx,
            lock_waiters,
            watch: hub,
        },
    )
}

/// How gRPC handlers talk to the driver. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    /// The Acquire requests waiting on this node; the driver wakes them.
    lock_waiters: Arc<LockWaiters>,
    /// Where applied changes are published for watchers.
    watch: WatchSubscriber,
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
    ) -> Result<(Option<Vec<u8>>, Header), ClientError> {
        // The driver answers a read with the kind it asked for; the other arm is unreachable.
        match self.read_target(ReadTarget::Key(key), linearizable).await? {
            (ReadValue::Key(value), h) => Ok((value, h)),
            (ReadValue::Lock(_) | ReadValue::Range(_) | ReadValue::LeaseKeptAlive(_), _) => {
                Err(ClientError::ShuttingDown)
            }
        }
    }

    /// An etcd Range, linearizably (leader + ReadIndex) or from local state. A compacted or
    /// future revision is the inner error.
    ///
    /// # Errors
    /// Not leader (linearizable only), leadership lost, overloaded, shutting down.
    pub async fn range(
        &self,
        req: RangeRequest,
        linearizable: bool,
    ) -> Result<(Result<RangeResponse, ApplyError>, Header), ClientError> {
        match self
            .read_target(ReadTarget::Range(req), linearizable)
            .await?
        {
            (ReadValue::Range(answer), h) => Ok((answer, h)),
            (ReadValue::Key(_) | ReadValue::Lock(_) | ReadValue::LeaseKeptAlive(_), _) => {
                Err(ClientError::ShuttingDown)
            }
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
            (ReadValue::Key(_) | ReadValue::Range(_) | ReadValue::LeaseKeptAlive(_), _) => {
                Err(ClientError::ShuttingDown)
            }
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

    /// The state of lock `name` as applied on this node (may lag the leader's commit), if
    /// this node leads; otherwise the redirect error a proposal would get. Role and state come
    /// from one moment of the driver. For waiting Acquires: they wait only on the leader and
    /// propose only when this state says the lock is free (`rpc/lock_service.rs`).
    ///
    /// # Errors
    /// Not leader (with the leader's address when known), overloaded, shutting down.
    pub async fn leader_local_lock(
        &self,
        name: String,
    ) -> Result<(Option<LockInfo>, Header), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::LeaderLocalLock { name, reply })?;
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// Asks the leader's lease clock about leases on keys (see [`Request::KeyLease`]).
    ///
    /// # Errors
    /// Not leader (with the leader's address when known), no leader yet (a new leader still
    /// applying what came before its term), overloaded, shutting down.
    pub async fn key_lease(
        &self,
        query: KeyLeaseQuery,
    ) -> Result<(KeyLeaseAnswer, Header), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::KeyLease { query, reply })?;
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// The Acquire requests waiting on this node for a held lock.
    pub fn lock_waiters(&self) -> &Arc<LockWaiters> {
        &self.lock_waiters
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

    /// Proposes a membership change and waits until it is applied; answers with the
    /// membership it led to.
    ///
    /// # Errors
    /// Not the leader (redirect), the change refused ([`ClientError::Membership`]),
    /// leadership lost before it applied, overloaded or shutting down.
    pub async fn conf_change(
        &self,
        change: crate::raft::ConfChange,
        force: bool,
    ) -> Result<(crate::raft::Membership, Header), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::ConfChange {
            change,
            force,
            reply,
        })?;
        rx.await.unwrap_or(Err(ClientError::ShuttingDown))
    }

    /// A peer told us this node was removed from the cluster: the driver stops the node.
    pub fn removed_by_peer(&self, peer: NodeId) {
        if self.tx.try_send(Request::RemovedByPeer { peer }).is_err() {
            tracing::debug!(
                "inbox full or closed: dropped a removal notice (the next refused call repeats it)"
            );
        }
    }

    /// A peer found that this node runs on another data dir than the one the cluster knew it
    /// by, or refused it for that (`rpc/instances.rs`): the driver stops the node.
    pub fn data_dir_replaced(&self, peer: NodeId) {
        if self.tx.try_send(Request::DataDirReplaced { peer }).is_err() {
            tracing::debug!(
                "inbox full or closed: dropped a replaced-data-dir notice (the next call repeats it)"
            );
        }
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

    /// A receiver of the batches of applied changes published from now on (closed once the
    /// driver stops). Subscribe before asking for history ([`NodeHandle::watch_history`]):
    /// every batch the answer does not cover then reaches the receiver (or it reports a lag).
    ///
    /// # Errors
    /// Shutting down: the driver is gone.
    pub fn watch_batches(&self) -> Result<broadcast::Receiver<Arc<watches::Batch>>, ClientError> {
        let tx = self.watch.tx.upgrade().ok_or(ClientError::ShuttingDown)?;
        Ok(tx.subscribe())
    }

    /// Makes published batches carry previous kvs while the guard lives. Take it before
    /// asking for history, so no batch after the answer lacks them.
    pub fn want_prev_kv(&self) -> PrevKvWanted {
        self.watch.prev_kv.fetch_add(1, Ordering::SeqCst);
        PrevKvWanted(self.watch.prev_kv.clone())
    }

    /// The changes of `[key, range_end)` from revision `from` (0: none) as applied here,
    /// and the revision the answer reflects ([`watches::history`]).
    ///
    /// # Errors
    /// Overloaded or shutting down.
    pub async fn watch_history(
        &self,
        from: i64,
        key: Vec<u8>,
        range_end: Vec<u8>,
        prev_kv: bool,
    ) -> Result<watches::History, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::WatchHistory {
            from,
            key,
            range_end,
            prev_kv,
            reply,
        })?;
        rx.await.map_err(|_| ClientError::ShuttingDown)
    }

    fn submit(&self, req: Request) -> Result<(), ClientError> {
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ClientError::ShuttingDown,
        })
    }
}
