//! Outgoing peer traffic: one sender task per peer, behind [`crate::node::Transport`].
//!
//! Each sender owns a lazily connecting tonic `Channel` (tonic reconnects on the next call
//! after a failure), turns each core message into the matching unary RPC, keeps up to
//! [`MAX_INFLIGHT`] calls in flight (pipelining), and feeds every reply back into the driver
//! as a message, so replies pass `check_term` in the core like everything else. Failures are
//! dropped: the core resends on its next heartbeat or election timeout. Nothing here ever
//! blocks the driver: `send` only does a `try_send` on a bounded queue.

use super::convert::{self, PeerRequest};
use crate::config::{NodeConfig, PeerSpec};
use crate::node::{NodeHandle, Transport};
use crate::pb::raft_client::RaftClient;
use crate::raft::{Message, NodeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, trace, warn, Instrument};

/// Messages queued for one peer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Calls in flight to one peer at a time.
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
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
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
                if self.health.succeeded() {
                    info!(addr = %self.peer.addr, "peer reachable again");
                }
                self.node.peer_reply(reply);
            }
            Err(status) => {
                if self.health.failed() {
                    warn!(
                        addr = %self.peer.addr,
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
