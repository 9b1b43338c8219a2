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
//! driver: `send` only does a `try_send` on a bounded queue.

use super::convert::{self, PeerRequest};
use crate::config::{NodeConfig, PeerSpec};
use crate::node::{NodeHandle, Transport};
use crate::pb;
use crate::pb::raft_client::RaftClient;
use crate::raft::{Message, NodeId};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
/// Longest a snapshot transfer may take before the leader gives up on that attempt.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// A peer address that is not a valid URI authority.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {addr:?} for peer {id}: {reason}")]
pub struct PeerAddrError {
    id: NodeId,
    addr: String,
    reason: String,
}

/// The senders of all peers; implements [`Transport`].
#[derive(Debug)]
pub struct PeerSenders {
    queues: HashMap<NodeId, mpsc::Sender<Message>>,
}

impl PeerSenders {
    /// Starts one sender task per configured peer (tracked by `tracker`, stopped by `stop`).
    ///
    /// # Errors
    /// A peer address cannot be turned into an endpoint.
    pub fn spawn(
        config: &NodeConfig,
        node: NodeHandle,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, PeerAddrError> {
        let mut queues = HashMap::new();
        for peer in &config.peers {
            let endpoint = Endpoint::from_shared(format!("http://{}", peer.addr))
                .map_err(|e| PeerAddrError {
                    id: peer.id,
                    addr: peer.addr.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(config.election_timeout)
                .tcp_nodelay(true);
            // Snapshots stream for as long as their size needs, on their own connection so
            // they never hold up appends and heartbeats.
            let snapshot_endpoint = endpoint.clone().timeout(SNAPSHOT_TIMEOUT);
            let endpoint = endpoint.timeout(config.election_timeout * 2);
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let sender = PeerSender {
                me: config.id,
                peer: peer.clone(),
                client: RaftClient::new(endpoint.connect_lazy()),
                snapshot_client: RaftClient::new(snapshot_endpoint.connect_lazy()),
                node: node.clone(),
                inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
                health: Arc::new(Health::new(
                    config.heartbeat_interval,
                    config.election_timeout,
                )),
                stall: config.election_timeout * 2,
                stream: None,
                tracker: tracker.clone(),
                stop: stop.clone(),
            };
            let span = tracing::info_span!("peer", node_id = config.id, peer = peer.id);
            tracker.spawn(sender.run(rx).instrument(span));
            queues.insert(peer.id, tx);
        }
        Ok(PeerSenders { queues })
    }
}

impl Transport for PeerSenders {
    fn send(&self, msg: Message) {
        let Some(queue) = self.queues.get(&msg.to) else {
            warn!(
                to = msg.to,
                kind = msg.body.kind(),
                "message for an unknown peer dropped"
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
}

/// Failure streak of one peer: warn once per streak, and back off (drop messages) for a
/// while after each failure so an unreachable peer costs little.
#[derive(Debug)]
struct Health {
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds after `epoch` before which messages are dropped.
    retry_at_ms: AtomicU64,
    base: Duration,
    max: Duration,
}

impl Health {
    fn new(base: Duration, max: Duration) -> Self {
        Health {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            base,
            max,
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

    /// Records a success, logging the end of a streak.
    fn report_success(&self, peer: &PeerSpec) {
        if self.succeeded() {
            info!(addr = %peer.addr, "peer reachable again");
        }
    }

    /// Records a failed call (`kind` is the RPC), warning once per streak.
    fn report_failure(&self, peer: &PeerSpec, kind: &str, status: &tonic::Status) {
        if self.failed() {
            warn!(
                addr = %peer.addr,
                kind,
                code = ?status.code(),
                error = status.message(),
                "peer call failed; will keep retrying"
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
        self.window.permits.close();
    }

    /// Returns why the stream ended.
    async fn read(&mut self, requests: mpsc::Receiver<pb::AppendEntriesRequest>) -> tonic::Status {
        let mut answers = match self
            .client
            .append_stream(ReceiverStream::new(requests))
            .await
        {
            Ok(r) => r.into_inner(),
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
    node: NodeHandle,
    health: Arc<Health>,
}

impl Call {
    async fn run(mut self, request: PeerRequest) {
        let (kind, result) = match request {
            PeerRequest::Vote(req) => (
                "RequestVote",
                self.client
                    .request_vote(req)
                    .await
                    .map(|r| convert::vote_response_in(r.into_inner(), self.peer.id, self.me)),
            ),
            PeerRequest::Append(req) => (
                "AppendEntries",
                self.client
                    .append_entries(req)
                    .await
                    .map(|r| convert::append_response_in(r.into_inner(), self.peer.id, self.me)),
            ),
            PeerRequest::Snapshot(chunks) => (
                "InstallSnapshot",
                self.snapshot_client
                    .install_snapshot(tokio_stream::iter(chunks))
                    .await
                    .map(|r| convert::append_response_in(r.into_inner(), self.peer.id, self.me)),
            ),
            PeerRequest::TimeoutNow(req) => (
                "TimeoutNow",
                self.client.timeout_now(req).await.map(|r| {
                    convert::timeout_now_response_in(r.into_inner(), self.peer.id, self.me)
                }),
            ),
        };
        match result {
            Ok(reply) => {
                self.health.report_success(&self.peer);
                self.node.peer_reply(reply);
            }
            Err(status) => self.health.report_failure(&self.peer, kind, &status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_warns_once_per_streak_and_backs_off() {
        let h = Health::new(Duration::from_secs(10), Duration::from_secs(60));
        assert!(!h.backing_off());
        assert!(h.failed(), "first failure starts a streak");
        assert!(!h.failed(), "second failure is the same streak");
        assert!(h.backing_off());
        assert!(h.succeeded(), "success ends the streak");
        assert!(!h.backing_off());
        assert!(!h.succeeded());
    }
}
