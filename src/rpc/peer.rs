//! Outgoing peer traffic: one sender task per peer, behind [`crate::node::Transport`].
//!
//! Each sender owns a lazily connecting tonic `Channel` (tonic reconnects on the next call
//! after a failure). AppendEntries (entries and heartbeats) go, in order, into one long-lived
//! `AppendStream` call per peer, with up to [`MAX_INFLIGHT`] of them unanswered (pipelining);
//! a reader task per stream feeds each answer back into the driver. The other messages become
//! unary calls, up to [`MAX_INFLIGHT`] in flight. Every reply enters the driver as a message,
//! so it passes `check_term` in the core like everything else. Failures are dropped: a broken
//! stream loses what was in flight on it and is reopened on the next append, and the core
//! resends on its next heartbeat or election timeout. A stream whose oldest unanswered append
//! is older than twice the election timeout counts as broken. Nothing here ever blocks the
//! driver: `send` only does a `try_send` on a bounded queue. Every call carries this node's
//! advertised client address in its metadata ([`ClientUrls::tag`]), so peers can redirect
//! clients to it.
//!
//! A snapshot streams on its own connection, one at a time per peer: an InstallSnapshot
//! that arrives while an earlier one is still streaming is dropped, never started beside
//! it (the core resends a snapshot that stays unanswered, and a multi-GB one can take
//! minutes). Failed calls are logged at warn level once, then at most once per
//! [`WARN_INTERVAL`] per peer with the number of failures not logged since.
//!
//! Message sizes: [`PEER_MESSAGE_LIMIT`], the gRPC decode and encode limit of the Raft
//! service and of these clients, is derived from the largest legal entry
//! ([`MAX_COMMAND_BYTES`]), the core's byte cap ([`MAX_BYTES_PER_MESSAGE_CEILING`]) and the
//! snapshot chunk size ([`SNAPSHOT_CHUNK_BYTES`]); the tests below tie them to the
//! protobuf encoding.

use super::client_urls::ClientUrls;
use super::convert::{self, PeerRequest, SNAPSHOT_CHUNK_BYTES};
use super::instances::Instances;
use super::kv_service::MAX_COMMAND_BYTES;
use crate::config::{NodeConfig, PeerSpec};
use crate::node::{NodeHandle, Transport};
use crate::pb;
use crate::pb::raft_client::RaftClient;
use crate::raft::{
    Message, MessageBody, NodeId, APPEND_OVERHEAD_BYTES, ENTRY_OVERHEAD_BYTES,
    MAX_BYTES_PER_MESSAGE_CEILING,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, trace, warn, Instrument};

/// Messages queued for one peer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Unary calls in flight to one peer at a time, and appends unanswered on its stream.
pub const MAX_INFLIGHT: usize = 64;
/// Longest a small snapshot transfer may take before the leader gives up on that attempt;
/// a large one gets [`SNAPSHOT_SECS_PER_GIB`] more per GiB (see [`snapshot_timeout`]).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Extra time a snapshot transfer may take per GiB: it must stream at 1 MiB/s at least.
const SNAPSHOT_SECS_PER_GIB: u64 = 1024;

/// How long the transfer of a snapshot of `bytes` may take: a fixed 600 s did not let a
/// multi-GB state finish on a slow link, ever.
fn snapshot_timeout(bytes: u64) -> Duration {
    let per_gib = bytes.saturating_mul(SNAPSHOT_SECS_PER_GIB) >> 30;
    SNAPSHOT_TIMEOUT.saturating_add(Duration::from_secs(per_gib))
}

/// How often a peer connection is pinged (HTTP/2 PING), busy or idle.
const PEER_PING_INTERVAL: Duration = Duration::from_secs(1);
/// A ping unanswered this long closes the connection: a peer that vanished without a reset
/// is found within about 6 s.
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// After a warning about a peer's failed calls, the next one waits at least this long.
pub const WARN_INTERVAL: Duration = Duration::from_secs(30);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// An upper bound of an `InstallSnapshotChunk`'s size on the wire without its data.
const CHUNK_OVERHEAD_BYTES: usize = 128;
/// The largest AppendEntries a valid core builds: its entries add up to at most the byte
/// cap, or are one entry over it, at most the largest legal command.
pub const MAX_APPEND_BYTES: usize = APPEND_OVERHEAD_BYTES
    + max(
        MAX_BYTES_PER_MESSAGE_CEILING,
        MAX_COMMAND_BYTES + ENTRY_OVERHEAD_BYTES,
    );
/// The largest `InstallSnapshotChunk`.
pub const MAX_CHUNK_BYTES: usize = CHUNK_OVERHEAD_BYTES + SNAPSHOT_CHUNK_BYTES;
/// The gRPC decode and encode limit of peer messages (server and clients): above the
/// largest legal message, with room to spare. tonic's default (4 MiB) is not used: it once
/// refused every batch of a follower behind by more than four 1 MiB values, for good.
pub const PEER_MESSAGE_LIMIT: usize = max(MAX_APPEND_BYTES, MAX_CHUNK_BYTES) + (64 << 10);

/// A Raft client on `channel` with the peer message-size limits.
pub fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_LIMIT)
        .max_encoding_message_size(PEER_MESSAGE_LIMIT)
}

/// A peer address that is not a valid URI authority.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {addr:?} for peer {id}: {reason}")]
pub struct PeerAddrError {
    id: NodeId,
    addr: String,
    reason: String,
}

/// The senders of all peers; implements [`Transport`]. The peer set follows the membership:
/// the driver calls [`Transport::set_peers`] when it changes, which starts a sender for a new
/// member, and stops the sender of a member that left or moved (and starts one at the new
/// address).
#[derive(Debug)]
pub struct PeerSenders {
    /// What every sender is started with.
    spawner: Spawner,
    /// The running senders, by peer. A std mutex: held only to look up or swap a queue,
    /// never across an await (the driver and `set_peers` are its only users).
    peers: Mutex<HashMap<NodeId, RunningPeer>>,
}

/// One running sender: its address and its queue (dropping the queue ends the sender once
/// it has sent what is queued).
#[derive(Debug)]
struct RunningPeer {
    addr: String,
    queue: mpsc::Sender<Message>,
}

/// What a sender task needs besides its peer.
#[derive(Debug)]
struct Spawner {
    me: NodeId,
    election_timeout: Duration,
    heartbeat_interval: Duration,
    urls: CallTags,
    node: NodeHandle,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Spawner {
    /// Starts the sender task of `peer`.
    fn spawn(&self, peer: &PeerSpec) -> Result<RunningPeer, PeerAddrError> {
        let endpoint = Endpoint::from_shared(format!("http://{}", peer.addr))
            .map_err(|e| PeerAddrError {
                id: peer.id,
                addr: peer.addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.election_timeout)
            .tcp_nodelay(true)
            // HTTP/2 pings find a connection whose peer vanished without a reset (killed
            // behind a partition, a dead machine): without them a snapshot stream to it held
            // the peer's one snapshot slot for the whole transfer timeout (600 s), so a
            // restarted follower that needed a snapshot got none (the chaos runner's
            // `--membership` seed 2). Calls on the dead connection fail, the next dials anew.
            // Generous bounds: a busy peer (decoding a large snapshot on two cores) must not
            // lose its connection for a late ping answer.
            .http2_keep_alive_interval(PEER_PING_INTERVAL)
            .keep_alive_timeout(PEER_PING_TIMEOUT)
            .keep_alive_while_idle(true);
        // Snapshots stream for as long as their size needs, on their own connection so
        // they never hold up appends and heartbeats.
        // No channel-wide timeout: each transfer gets one for its size.
        let snapshot_endpoint = endpoint.clone();
        let endpoint = endpoint.timeout(self.election_timeout * 2);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let sender = PeerSender {
            me: self.me,
            peer: peer.clone(),
            client: raft_client(endpoint.connect_lazy()),
            snapshot_client: raft_client(snapshot_endpoint.connect_lazy()),
            snapshot_busy: Arc::new(AtomicBool::new(false)),
            urls: self.urls.clone(),
            node: self.node.clone(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            health: Arc::new(Health::new(self.heartbeat_interval, self.election_timeout)),
            stall: self.election_timeout * 2,
            stream: None,
            tracker: self.tracker.clone(),
            stop: self.stop.clone(),
        };
        let span = tracing::info_span!("peer", node_id = self.me, peer = peer.id);
        self.tracker.spawn(sender.run(rx).instrument(span));
        Ok(RunningPeer {
            addr: peer.addr.clone(),
            queue: tx,
        })
    }
}

impl PeerSenders {
    /// Starts one sender task per configured peer (tracked by `tracker`, stopped by `stop`);
    /// their calls advertise `urls`' own client address.
    ///
    /// # Errors
    /// A peer address cannot be turned into an endpoint.
    pub fn spawn(
        config: &NodeConfig,
        urls: &ClientUrls,
        instances: &Instances,
        node: NodeHandle,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, PeerAddrError> {
        let spawner = Spawner {
            me: config.id,
            election_timeout: config.election_timeout,
            heartbeat_interval: config.heartbeat_interval,
            urls: CallTags {
                urls: urls.clone(),
                instances: instances.clone(),
            },
            node,
            tracker: tracker.clone(),
            stop,
        };
        let mut peers = HashMap::new();
        for peer in &config.peers {
            peers.insert(peer.id, spawner.spawn(peer)?);
        }
        Ok(PeerSenders {
            spawner,
            peers: Mutex::new(peers),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, RunningPeer>> {
        // Left consistent at every point: a panic elsewhere cannot poison it.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Transport for PeerSenders {
    fn send(&self, msg: Message) {
        let queue = self.lock().get(&msg.to).map(|p| p.queue.clone());
        let Some(queue) = queue else {
            // Normal for a member added a moment ago whose address is not known here yet.
            debug!(
                to = msg.to,
                kind = msg.body.kind(),
                "message for a peer without a known address dropped"
            );
            return;
        };
        if let Err(e) = queue.try_send(msg) {
            let msg = match e {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
            };
            debug!(
                peer = msg.to,
                kind = msg.body.kind(),
                "peer queue full or closed: message dropped"
            );
        }
    }

    fn set_peers(&self, wanted: &BTreeMap<NodeId, String>) {
        let mut peers = self.lock();
        // A sender that is no longer wanted is not cancelled: closing its queue lets it send
        // what is queued first (a removed node's last heartbeat, which tells it that its
        // removal committed), then it ends.
        peers.retain(|id, running| {
            let keep = wanted.get(id) == Some(&running.addr);
            if !keep {
                info!(peer = id, addr = %running.addr, "stopping the sender of a peer that left or moved");
            }
            keep
        });
        for (&id, addr) in wanted {
            if id == self.spawner.me || peers.contains_key(&id) {
                continue;
            }
            let spec = PeerSpec {
                id,
                addr: addr.clone(),
            };
            match self.spawner.spawn(&spec) {
                Ok(running) => {
                    info!(peer = id, addr = %addr, "started the sender of a new peer");
                    peers.insert(id, running);
                }
                Err(e) => warn!(error = %e, "cannot reach a member: no sender started"),
            }
        }
    }
}

/// Failure streak of one peer: back off (drop messages) for a while after each failure so
/// an unreachable peer costs little, and warn about failures at a bounded rate.
#[derive(Debug)]
struct Health {
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds after `epoch` before which messages are dropped.
    retry_at_ms: AtomicU64,
    base: Duration,
    max: Duration,
    /// When the last warning was logged (ms after `epoch`), and failures not logged since.
    warned: Mutex<Option<(u64, u64)>>,
    /// A warning was logged and no success since: the next success is logged too.
    reported_down: AtomicBool,
}

impl Health {
    fn new(base: Duration, max: Duration) -> Self {
        Health {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            base,
            max,
            warned: Mutex::new(None),
            reported_down: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn backing_off(&self) -> bool {
        self.now_ms() < self.retry_at_ms.load(Ordering::Relaxed)
    }

    /// Records a failure; returns true if it starts a new streak.
    fn failed(&self) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        let backoff = self.base.saturating_mul(1 << n.min(10)).min(self.max);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        self.retry_at_ms.fetch_max(until, Ordering::Relaxed);
        n == 0
    }

    /// Records a success; returns true if it ends a streak.
    fn succeeded(&self) -> bool {
        self.retry_at_ms.store(0, Ordering::Relaxed);
        self.failures.swap(0, Ordering::Relaxed) > 0
    }

    /// Whether a failure at `now_ms` may be logged at warn level: the first one, then one
    /// per [`WARN_INTERVAL`]. `Some(n)`: yes, and `n` failures were not logged since the
    /// last warning.
    fn may_warn(&self, now_ms: u64) -> Option<u64> {
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        // Left consistent at every point: a panic elsewhere cannot poison it.
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *warned {
            Some((at, ref mut suppressed)) if now_ms.saturating_sub(at) < interval => {
                *suppressed += 1;
                None
            }
            Some((_, suppressed)) => {
                *warned = Some((now_ms, 0));
                Some(suppressed)
            }
            None => {
                *warned = Some((now_ms, 0));
                Some(0)
            }
        }
    }

    /// Records a success, logging the end of a streak that was warned about.
    fn report_success(&self, peer: &PeerSpec) {
        if self.succeeded() && self.reported_down.swap(false, Ordering::Relaxed) {
            info!(addr = %peer.addr, "peer reachable again");
        }
    }

    /// Records a failed call (`kind` is the RPC), warning at a bounded rate.
    fn report_failure(&self, peer: &PeerSpec, kind: &str, status: &tonic::Status) {
        self.failed();
        if let Some(suppressed) = self.may_warn(self.now_ms()) {
            self.reported_down.store(true, Ordering::Relaxed);
            warn!(
                addr = %peer.addr,
                kind,
                code = ?status.code(),
                error = status.message(),
                suppressed,
                "peer call failed; will keep retrying (warned at most once per {}s; `suppressed` failures were not logged since the last warning)",
                WARN_INTERVAL.as_secs()
            );
        } else {
            debug!(
                kind,
                code = ?status.code(),
                error = status.message(),
                "peer call failed"
            );
        }
    }
}

/// The sender task of one peer.
struct PeerSender {
    me: NodeId,
    peer: PeerSpec,
    client: RaftClient<Channel>,
    /// A separate connection for snapshot streams, without the short per-call timeout.
    snapshot_client: RaftClient<Channel>,
    /// A snapshot is streaming to this peer.
    snapshot_busy: Arc<AtomicBool>,
    /// Tags every call with this node's advertised client address and instance ids.
    urls: CallTags,
    node: NodeHandle,
    /// One permit per call in flight.
    inflight: Arc<Semaphore>,
    health: Arc<Health>,
    /// A stream whose oldest unanswered append is this old is given up.
    stall: Duration,
    /// The open append stream, if any.
    stream: Option<AppendStream>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl PeerSender {
    async fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                msg = queue.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            if self.health.backing_off() {
                trace!(kind = msg.body.kind(), "peer backing off: message dropped");
                continue;
            }
            // Checked before the snapshot is cut into chunks (and its CRC computed).
            let snapshot_slot = if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
                match SnapshotSlot::take(&self.snapshot_busy) {
                    Some(slot) => Some(slot),
                    None => {
                        debug!(
                            "a snapshot is still streaming to this peer: the new one is dropped"
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            let request = match PeerRequest::try_from(msg) {
                Ok(PeerRequest::Append(req)) => {
                    if !self.append(req).await {
                        return;
                    }
                    continue;
                }
                Ok(r) => r,
                Err(msg) => {
                    debug!(kind = msg.body.kind(), "not a request: dropped");
                    continue;
                }
            };
            let permit = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                p = self.inflight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let call = Call {
                me: self.me,
                peer: self.peer.clone(),
                client: self.client.clone(),
                snapshot_client: self.snapshot_client.clone(),
                urls: self.urls.clone(),
                node: self.node.clone(),
                health: self.health.clone(),
            };
            let stop = self.stop.clone();
            self.tracker.spawn(
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        () = call.run(request) => {}
                    }
                    drop(snapshot_slot);
                    drop(permit);
                }
                .in_current_span(),
            );
        }
    }

    /// Writes `req` into the append stream, opening one if there is none or it broke, after
    /// waiting for room in its window. Returns false when stopping.
    async fn append(&mut self, req: pb::AppendEntriesRequest) -> bool {
        let stream = match self.stream.take() {
            Some(s) if !s.window.permits.is_closed() => s,
            _ => self.open_stream(),
        };
        let acquired = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return false,
            p = stream.window.permits.acquire() => match p {
                // The reader gives the permit back when the answer arrives.
                Ok(permit) => {
                    permit.forget();
                    true
                }
                Err(_) => false,
            },
        };
        if !acquired {
            // The stream broke while we waited: this append is lost like those in flight.
            trace!("append stream broke: append dropped");
            return true;
        }
        stream.window.sent(Instant::now());
        if stream.requests.try_send(req).is_err() {
            // The call is over (never full: the window bounds what is queued); the reader
            // records why, and the next append opens a new stream.
            stream.window.permits.close();
            return true;
        }
        self.stream = Some(stream);
        true
    }

    /// Starts an `AppendStream` call, and the task that reads its answers.
    fn open_stream(&self) -> AppendStream {
        let (requests, rx) = mpsc::channel(MAX_INFLIGHT);
        let window = Arc::new(Window::new());
        let reader = StreamReader {
            me: self.me,
            peer: self.peer.clone(),
            client: self.client.clone(),
            urls: self.urls.clone(),
            node: self.node.clone(),
            health: self.health.clone(),
            window: window.clone(),
            stall: self.stall,
        };
        let stop = self.stop.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = reader.run(rx) => {}
                }
            }
            .in_current_span(),
        );
        AppendStream { requests, window }
    }
}

/// The InstallSnapshot call of `chunks`, with a deadline for its size.
fn snapshot_request(
    chunks: Vec<pb::InstallSnapshotChunk>,
) -> tonic::Request<tokio_stream::Iter<std::vec::IntoIter<pb::InstallSnapshotChunk>>> {
    let bytes = chunks.first().map_or(0, |c| c.total_size);
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    request.set_timeout(snapshot_timeout(bytes));
    request
}

/// The right to stream a snapshot to one peer; given back when dropped (the call ended,
/// however).
struct SnapshotSlot(Arc<AtomicBool>);

impl SnapshotSlot {
    /// The slot, unless a snapshot is already streaming.
    fn take(busy: &Arc<AtomicBool>) -> Option<SnapshotSlot> {
        (!busy.swap(true, Ordering::AcqRel)).then(|| SnapshotSlot(busy.clone()))
    }
}

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The sender's end of an open `AppendStream` call.
struct AppendStream {
    requests: mpsc::Sender<pb::AppendEntriesRequest>,
    window: Arc<Window>,
}

/// The appends written to one stream and not answered yet.
#[derive(Debug)]
struct Window {
    /// One permit per append that may still be written; closed when the stream broke.
    permits: Semaphore,
    /// When each unanswered append was written, oldest first.
    sent: Mutex<VecDeque<Instant>>,
}

impl Window {
    fn new() -> Self {
        Window {
            permits: Semaphore::new(MAX_INFLIGHT),
            sent: Mutex::new(VecDeque::with_capacity(MAX_INFLIGHT)),
        }
    }

    fn sent_times(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        // The deque is left consistent at every point: a panic elsewhere cannot poison it.
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sent(&self, at: Instant) {
        self.sent_times().push_back(at);
    }

    /// One answer arrived. Answers come in completion order, not request order, but each
    /// request is answered once, so dropping the oldest time keeps the count and the oldest
    /// time no younger than the oldest unanswered request's.
    fn answered(&self) {
        if self.sent_times().pop_front().is_some() {
            self.permits.add_permits(1);
        }
    }

    /// When the oldest unanswered append was written.
    fn oldest(&self) -> Option<Instant> {
        self.sent_times().front().copied()
    }
}

/// Reads the answers of one `AppendStream` call into the driver, until it breaks.
struct StreamReader {
    me: NodeId,
    peer: PeerSpec,
    client: RaftClient<Channel>,
    urls: CallTags,
    node: NodeHandle,
    health: Arc<Health>,
    window: Arc<Window>,
    stall: Duration,
}

impl StreamReader {
    async fn run(mut self, requests: mpsc::Receiver<pb::AppendEntriesRequest>) {
        let status = self.read(requests).await;
        // Recorded before the window closes: the sender opens the next stream only then, so a
        // success on it cannot come first and make this failure look like a new streak.
        self.health
            .report_failure(&self.peer, "AppendStream", &status);
        report_if_removed(&self.node, &self.peer, &status);
        self.window.permits.close();
    }

    /// Returns why the stream ended.
    async fn read(&mut self, requests: mpsc::Receiver<pb::AppendEntriesRequest>) -> tonic::Status {
        let opened = self
            .client
            .append_stream(self.urls.tag(
                self.peer.id,
                tonic::Request::new(ReceiverStream::new(requests)),
            ))
            .await;
        let mut answers = match self.urls.checked(self.peer.id, opened).await {
            Ok(answers) => answers,
            Err(status) => return status,
        };
        // Checks for a stalled stream; rearmed only when it fires, not per answer.
        let check = tokio::time::sleep(self.stall);
        tokio::pin!(check);
        loop {
            tokio::select! {
                answer = answers.next() => match answer {
                    Some(Ok(resp)) => {
                        self.window.answered();
                        self.health.report_success(&self.peer);
                        self.node
                            .peer_reply(convert::append_response_in(resp, self.peer.id, self.me));
                    }
                    Some(Err(status)) => return status,
                    None => return tonic::Status::unavailable("the peer ended the append stream"),
                },
                () = &mut check => {
                    let now = Instant::now();
                    let oldest = self.window.oldest();
                    if oldest.is_some_and(|t| now.duration_since(t) >= self.stall) {
                        return tonic::Status::deadline_exceeded(format!(
                            "no answer to an append for {:?}",
                            self.stall
                        ));
                    }
                    let next = oldest.unwrap_or(now) + self.stall;
                    check.as_mut().reset(next.into());
                }
            }
        }
    }
}

/// One RPC to a peer.
struct Call {
    me: NodeId,
    peer: PeerSpec,
    client: RaftClient<Channel>,
    snapshot_client: RaftClient<Channel>,
    urls: CallTags,
    node: NodeHandle,
    health: Arc<Health>,
}

impl Call {
    async fn run(mut self, request: PeerRequest) {
        let (kind, result) = match request {
            PeerRequest::Vote(req) => {
                let to = self.peer.id;
                let answer = self
                    .client
                    .request_vote(self.urls.tag(to, tonic::Request::new(req)))
                    .await;
                let answer = self.urls.checked(to, answer).await;
                (
                    "RequestVote",
                    answer.map(|r| convert::vote_response_in(r, to, self.me)),
                )
            }
            PeerRequest::Append(req) => {
                let to = self.peer.id;
                let answer = self
                    .client
                    .append_entries(self.urls.tag(to, tonic::Request::new(req)))
                    .await;
                let answer = self.urls.checked(to, answer).await;
                (
                    "AppendEntries",
                    answer.map(|r| convert::append_response_in(r, to, self.me)),
                )
            }
            PeerRequest::Snapshot(chunks) => {
                let to = self.peer.id;
                let answer = self
                    .snapshot_client
                    .install_snapshot(self.urls.tag(to, snapshot_request(chunks)))
                    .await;
                let answer = self.urls.checked(to, answer).await;
                (
                    "InstallSnapshot",
                    answer.map(|r| convert::append_response_in(r, to, self.me)),
                )
            }
            PeerRequest::TimeoutNow(req) => {
                let to = self.peer.id;
                let answer = self
                    .client
                    .timeout_now(self.urls.tag(to, tonic::Request::new(req)))
                    .await;
                let answer = self.urls.checked(to, answer).await;
                (
                    "TimeoutNow",
                    answer.map(|r| convert::timeout_now_response_in(r, to, self.me)),
                )
            }
        };
        match result {
            Ok(reply) => {
                self.health.report_success(&self.peer);
                self.node.peer_reply(reply);
            }
            Err(status) => {
                self.health.report_failure(&self.peer, kind, &status);
                report_if_removed(&self.node, &self.peer, &status);
            }
        }
    }
}

/// A peer refused our call because this node was removed from the cluster (the only way a
/// removed node that never received its removal entry finds out), or because this node runs
/// on another data dir than the one the cluster knew it by (`rpc/instances.rs`): tell the
/// driver, which stops the node.
fn report_if_removed(node: &NodeHandle, peer: &PeerSpec, status: &tonic::Status) {
    if super::status::is_member_removed(status) {
        node.removed_by_peer(peer.id);
    } else if super::instances::is_data_dir_replaced(status) {
        node.data_dir_replaced(peer.id);
    }
}

/// What every call to a peer carries in its metadata: this node's advertised client address
/// and the instance ids of both ends.
#[derive(Clone, Debug)]
struct CallTags {
    urls: ClientUrls,
    instances: Instances,
}

impl CallTags {
    fn tag<T>(&self, to: NodeId, request: tonic::Request<T>) -> tonic::Request<T> {
        self.instances.tag(to, self.urls.tag(request))
    }

    /// The answer of `from`, unless it comes from another data dir than the one recorded
    /// for it (then it is dropped: a member that lost its data must not count).
    async fn checked<T>(
        &self,
        from: NodeId,
        answer: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let answer = answer?;
        match self.instances.check_reply(from, answer.metadata()).await {
            Ok(()) => Ok(answer.into_inner()),
            Err(super::instances::Refusal::Storage(e)) => Err(tonic::Status::unavailable(format!(
                "cannot record member {from}'s data dir: {e}"
            ))),
            Err(_) => {
                tracing::warn!(
                    peer = from,
                    "dropped an answer: member {from} runs on another data dir than the one it was first heard on (its data was lost; replace it: README \"Replacing a node\")"
                );
                Err(tonic::Status::failed_precondition(format!(
                    "member {from} answered from another data dir"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_counts_streaks_and_backs_off() {
        let h = Health::new(Duration::from_secs(10), Duration::from_secs(60));
        assert!(!h.backing_off());
        assert!(h.failed(), "first failure starts a streak");
        assert!(!h.failed(), "second failure is the same streak");
        assert!(h.backing_off());
        assert!(h.succeeded(), "success ends the streak");
        assert!(!h.backing_off());
        assert!(!h.succeeded());
    }

    #[test]
    fn a_large_snapshot_gets_time_for_its_size() {
        assert_eq!(snapshot_timeout(0), Duration::from_secs(600));
        assert_eq!(snapshot_timeout(1 << 20), Duration::from_secs(601));
        assert_eq!(
            snapshot_timeout(8 << 30),
            Duration::from_secs(600 + 8 * 1024)
        );
        assert!(
            snapshot_timeout(u64::MAX) > Duration::from_secs(1 << 33),
            "saturates"
        );
    }

    #[test]
    fn failures_are_warned_about_once_per_interval_with_a_count() {
        let h = Health::new(Duration::from_secs(10), Duration::from_secs(60));
        let interval = WARN_INTERVAL.as_millis() as u64;
        assert_eq!(h.may_warn(1_000), Some(0), "the first failure is logged");
        // A follower refusing every batch: a failure every 100 ms.
        let logged: Vec<(u64, u64)> = (1..=3 * interval / 100)
            .map(|i| 1_000 + i * 100)
            .filter_map(|t| h.may_warn(t).map(|n| (t, n)))
            .collect();
        let per_interval = interval / 100 - 1;
        assert_eq!(
            logged,
            [
                (1_000 + interval, per_interval),
                (1_000 + 2 * interval, per_interval),
                (1_000 + 3 * interval, per_interval)
            ],
            "one warning per interval, counting the ones not logged"
        );
    }

    fn ceiling_entry(data: usize) -> pb::Entry {
        pb::Entry {
            term: u64::MAX,
            index: u64::MAX,
            r#type: pb::EntryType::Command as i32,
            data: vec![b'x'; data].into(),
        }
    }

    /// The byte bounds the core and the simulator count with hold for the protobuf encoding.
    #[test]
    fn the_cores_byte_bounds_hold_on_the_wire() {
        use prost::Message as _;
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_COMMAND_BYTES,
        ] {
            let entry = ceiling_entry(n);
            // As an element of AppendEntriesRequest.entries (field 5): tag, length, message.
            let on_wire = prost::encoding::message::encoded_len(5, &entry);
            assert!(on_wire <= n + ENTRY_OVERHEAD_BYTES, "{n}: {on_wire}");
        }
        let header = pb::AppendEntriesRequest {
            term: u64::MAX,
            leader_id: u64::MAX,
            prev_log_index: u64::MAX,
            prev_log_term: u64::MAX,
            entries: Vec::new(),
            leader_commit: u64::MAX,
            to: u64::MAX,
            read_ctx: u64::MAX,
        };
        assert!(header.encoded_len() <= APPEND_OVERHEAD_BYTES);
        let chunk = pb::InstallSnapshotChunk {
            term: u64::MAX,
            leader_id: u64::MAX,
            to: u64::MAX,
            last_included_index: u64::MAX,
            last_included_term: u64::MAX,
            total_size: u64::MAX,
            offset: u64::MAX,
            data: vec![0u8; SNAPSHOT_CHUNK_BYTES].into(),
            done: true,
            crc32: u32::MAX,
            // The membership is not counted: a few dozen bytes per member, within the
            // limit's spare room.
            membership: Vec::new(),
        };
        assert!(chunk.encoded_len() <= MAX_CHUNK_BYTES);
        const { assert!(MAX_CHUNK_BYTES < PEER_MESSAGE_LIMIT) };
    }

    /// The largest legal command fits in MAX_COMMAND_BYTES, and every message the core can
    /// build with it fits under the transport's limit.
    #[test]
    fn the_peer_limit_is_above_the_largest_legal_message() {
        use super::super::kv_service::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
        use crate::state_machine::{Command, Fence, Proposal, Session};
        use prost::Message as _;
        let long = |c: char, n| std::iter::repeat_n(c, n).collect::<String>();
        let largest = Proposal {
            session: Some(Session {
                client_id: u64::MAX,
                sequence: u64::MAX,
            }),
            command: Command::Put {
                key: long('k', MAX_KEY_BYTES),
                value: long('v', MAX_VALUE_BYTES),
                fence: Some(Fence {
                    lock: long('l', MAX_KEY_BYTES),
                    token: u64::MAX,
                }),
            },
        };
        assert!(largest.encode().len() <= MAX_COMMAND_BYTES);
        let acquire = Proposal {
            session: None,
            command: Command::Acquire {
                name: long('n', MAX_KEY_BYTES),
                holder: long('h', MAX_KEY_BYTES),
                ttl_ms: u64::MAX,
            },
        };
        assert!(acquire.encode().len() <= MAX_COMMAND_BYTES);
        // One entry over the byte cap goes alone; below the cap, entries fill it.
        let mut alone = pb::AppendEntriesRequest {
            term: u64::MAX,
            leader_id: u64::MAX,
            prev_log_index: u64::MAX,
            prev_log_term: u64::MAX,
            entries: vec![ceiling_entry(MAX_COMMAND_BYTES)],
            leader_commit: u64::MAX,
            to: u64::MAX,
            read_ctx: u64::MAX,
        };
        assert!(alone.encoded_len() <= MAX_APPEND_BYTES);
        let per = MAX_BYTES_PER_MESSAGE_CEILING / 4 - ENTRY_OVERHEAD_BYTES;
        alone.entries = vec![ceiling_entry(per); 4];
        assert!(alone.encoded_len() <= MAX_APPEND_BYTES);
        const { assert!(MAX_APPEND_BYTES < PEER_MESSAGE_LIMIT) };
        // What the issue saw refused: nine 1 MiB values in one message.
        const { assert!(9 * MAX_VALUE_BYTES > PEER_MESSAGE_LIMIT) };
    }

    /// A peer whose InstallSnapshot calls read everything sent, then wait until released.
    #[derive(Clone)]
    struct SlowSnapshots {
        started: Arc<AtomicU64>,
        release: Arc<Semaphore>,
    }

    #[tonic::async_trait]
    impl pb::raft_server::Raft for SlowSnapshots {
        async fn request_vote(
            &self,
            _: tonic::Request<pb::RequestVoteRequest>,
        ) -> Result<tonic::Response<pb::RequestVoteResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("votes"))
        }

        async fn append_entries(
            &self,
            _: tonic::Request<pb::AppendEntriesRequest>,
        ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("appends"))
        }

        type AppendStreamStream =
            tokio_stream::Empty<Result<pb::AppendEntriesResponse, tonic::Status>>;

        async fn append_stream(
            &self,
            _: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
        ) -> Result<tonic::Response<Self::AppendStreamStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("appends"))
        }

        async fn install_snapshot(
            &self,
            request: tonic::Request<tonic::Streaming<pb::InstallSnapshotChunk>>,
        ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let mut chunks = request.into_inner();
            while chunks.message().await?.is_some() {}
            if let Ok(permit) = self.release.acquire().await {
                permit.forget();
            }
            Ok(tonic::Response::new(pb::AppendEntriesResponse {
                term: 1,
                success: true,
                from: 2,
                match_index: 5,
                ..Default::default()
            }))
        }

        async fn timeout_now(
            &self,
            _: tonic::Request<pb::TimeoutNowRequest>,
        ) -> Result<tonic::Response<pb::TimeoutNowResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("transfers"))
        }
    }

    fn snapshot_for_2() -> Message {
        use crate::raft::{Snapshot, SnapshotMeta};
        Message {
            from: 1,
            to: 2,
            term: 1,
            rpc_id: 0,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    membership: None,
                    meta: SnapshotMeta { index: 5, term: 1 },
                    data: vec![9u8; 3 * SNAPSHOT_CHUNK_BYTES].into(),
                },
            },
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Regression (issue 11): the core resends a snapshot that stays unanswered (every 5 s
    /// by default), and each resend started a new full transfer beside the one still
    /// streaming, so a large state never finished.
    #[tokio::test]
    async fn a_snapshot_still_streaming_is_not_restarted() {
        let peer = SlowSnapshots {
            started: Arc::new(AtomicU64::new(0)),
            release: Arc::new(Semaphore::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_server::RaftServer::new(peer.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut config = NodeConfig::new(1, 0);
        config.peers = vec![PeerSpec {
            id: 2,
            addr: addr.to_string(),
        }];
        let (node, _inbox) = crate::node::channel(1, 16);
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let urls = ClientUrls::new(&config);
        let peers = PeerSenders::spawn(
            &config,
            &urls,
            &Instances::default(),
            node,
            &tracker,
            stop.clone(),
        )
        .unwrap();
        let started = || peer.started.load(Ordering::SeqCst);

        peers.send(snapshot_for_2());
        wait_for("the first transfer", || started() == 1).await;
        // The core's resends while the first transfer still streams.
        peers.send(snapshot_for_2());
        peers.send(snapshot_for_2());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(started(), 1, "a resend started a second transfer");

        // Once it is over, the next snapshot goes.
        peer.release.add_permits(1);
        wait_for("a transfer after the first ended", || {
            peers.send(snapshot_for_2());
            started() == 2
        })
        .await;
        peer.release.add_permits(1);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        server.abort();
    }
}
