//! `etcdserverpb.Watch`: one bidirectional stream carries many watches, served by every
//! member from its own applied state (followers included), as etcd does.
//!
//! Each stream is one task: it subscribes to the batches the driver publishes after every
//! apply, asks the driver for history when a watcher is created or falls behind, and lets
//! `node::watches` decide which event goes to which watcher (exactly the history: no gap, no
//! duplicate, a revision's events together). Events leave only after their entry was
//! committed and applied on this member.
//!
//! # Requests
//! - create: `key` / `range_end` (empty: the key; `"\0"`: every key from `key` on),
//!   `start_revision` (0: from the next revision), `prev_kv`, `progress_notify`, filters
//!   NOPUT / NODELETE, and a client-chosen `watch_id` (0: assigned, from 0 up per stream, as
//!   etcd does). Answered `created` with the watch id; a taken id, an empty range or a full
//!   stream is answered `created` + `canceled` with watch id -1 and the reason. A start
//!   below the compaction revision is answered `created`, then `canceled` with
//!   `compact_revision` and "mvcc: required revision has been compacted".
//! - cancel: answered `canceled` (nothing for an unknown id, as etcd 3.5).
//! - progress: a response with watch id -1 and the revision every watcher of the stream has
//!   been sent all events up to (when all are caught up; etcd 3.5's RequestProgressAll).
//! - `progress_notify`: every [`PROGRESS_NOTIFY_INTERVAL`] an empty response to each such
//!   watcher that was sent nothing in the meantime.
//!
//! # Bounds, and what a client sees at them
//! - [`MAX_WATCHERS_PER_STREAM`] watches per stream: one more is refused (`created` +
//!   `canceled`, watch id -1, the reason names the limit); open another stream.
//! - [`OUT_CAPACITY`] responses buffered per stream, each at most about
//!   [`MAX_RESPONSE_BYTES`] of events (a single revision's events are never split): a client
//!   that does not read stalls only its own stream.
//! - `node::watches::BATCH_CAPACITY` batches of changes kept for the slowest stream, shared
//!   by all streams; a stalled stream that falls further behind catches up from history
//!   (in answers of at most `node::watches::MAX_HISTORY_EVENTS` events). It sees every
//!   event, later; if a compaction passed its next revision meanwhile, the watch is canceled
//!   with the compaction revision (etcd's behaviour).
//! - A request larger than the decode limit (`--max-request-bytes` plus gRPC overhead) ends
//!   the stream with RESOURCE_EXHAUSTED, as etcd's gRPC limit does.
//!
//! Not done: `fragment` (a revision's events always go in one response).

use super::convert::key_value;
use super::member::{self, Member};
use crate::node::watches::{History, Step, WatchSpec, Watcher};
use crate::node::{NodeHandle, PrevKvWanted};
use crate::pb::etcd::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::pb::etcd::mvccpb;
use crate::state_machine::mvcc::{Event, EventKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// How often a watcher that asked for progress notifications gets one when idle (etcd's
/// default; `--experimental-watch-progress-notify-interval` sets another).
pub const PROGRESS_NOTIFY_INTERVAL: Duration =
    crate::config::DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL;

/// Watches one stream may carry.
pub const MAX_WATCHERS_PER_STREAM: usize = 1024;

/// Responses buffered for one stream before it waits for the client.
pub const OUT_CAPACITY: usize = 64;

/// Events of several revisions are split into several responses beyond this many bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The cancel reason of a watch whose history was compacted (etcd's text).
const COMPACTED_REASON: &str = "mvcc: required revision has been compacted";

/// The Watch service of one member.
#[derive(Clone, Debug)]
pub struct EtcdWatch {
    member: Member,
    progress_interval: Duration,
}

impl EtcdWatch {
    /// The service of `member`, notifying progress every
    /// `--experimental-watch-progress-notify-interval` ([`PROGRESS_NOTIFY_INTERVAL`] unless
    /// set).
    pub fn new(member: Member) -> Self {
        EtcdWatch {
            progress_interval: member.watch_progress_interval(),
            member,
        }
    }
}

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.serve(request.into_inner())?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl EtcdWatch {
    /// Serves one stream of watch requests: the responses come out of the returned channel,
    /// from a task that ends when `inbound` ends or fails, or the member stops. The
    /// `kvstore.v1` Watch service runs its streams through this too, converting at the
    /// edges, so both front ends deliver exactly the same events.
    ///
    /// # Errors
    /// The member is stopping (etcd's "server stopped").
    pub fn serve<S>(
        &self,
        inbound: S,
    ) -> Result<mpsc::Receiver<Result<WatchResponse, Status>>, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Unpin + Send + 'static,
    {
        let (out, rx) = mpsc::channel(OUT_CAPACITY);
        let node = self.member.node().clone();
        // Subscribed before any history is asked for (see `NodeHandle::watch_batches`).
        let batches = node.watch_batches().map_err(member::status)?;
        let stream = WatchStream {
            member: self.member.clone(),
            node,
            out,
            watchers: BTreeMap::new(),
            next_id: 0,
            pos: 0,
        };
        tokio::spawn(stream.run(inbound, batches, self.progress_interval));
        Ok(rx)
    }
}

/// One watch of a stream.
struct Entry {
    w: Watcher,
    progress_notify: bool,
    /// Sent something since the last progress notification.
    sent: bool,
    /// Keeps previous kvs in the published batches while the watch lives.
    _prev_kv: Option<PrevKvWanted>,
}

/// The client is gone, or the member is stopping: the stream ends.
struct Closed;

type Flow = Result<(), Closed>;

struct WatchStream {
    member: Member,
    node: NodeHandle,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Entry>,
    /// The next id to try when the client lets us choose.
    next_id: i64,
    /// Every watcher was sent every event up to here, unless it is behind
    /// (`next <= pos`): the last batch or history answer seen.
    pos: i64,
}

impl WatchStream {
    async fn run<S>(
        mut self,
        mut inbound: S,
        mut batches: broadcast::Receiver<Arc<crate::node::watches::Batch>>,
        progress_interval: Duration,
    ) where
        S: Stream<Item = Result<WatchRequest, Status>> + Unpin,
    {
        let start = tokio::time::Instant::now() + progress_interval;
        let mut ticker = tokio::time::interval_at(start, progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flow = tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.on_request(req).await,
                    None => Err(Closed),
                    Some(Err(status)) => {
                        // A request over the size limit, say: the client learns why.
                        let _ = self.out.send(Err(status)).await;
                        Err(Closed)
                    }
                },
                batch = batches.recv() => match batch {
                    Ok(b) => self.on_batch(&b).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(missed, watchers = self.watchers.len(), "watch stream fell behind: catching up from history");
                        self.catch_up_all().await
                    }
                    // The driver is gone: the member stops.
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = self.out.send(Err(super::errors::STOPPED.status())).await;
                        Err(Closed)
                    }
                },
                _ = ticker.tick() => self.notify_progress().await,
            };
            if flow.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: WatchResponse) -> Flow {
        self.out.send(Ok(response)).await.map_err(|_| Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.member.status_header(revision)),
            watch_id,
            ..WatchResponse::default()
        }
    }

    async fn on_request(&mut self, req: WatchRequest) -> Flow {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let mut r = self.response(c.watch_id, self.revision());
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let pos = self.pos;
                if self.watchers.values().all(|e| e.w.next() > pos) {
                    self.send(self.response(-1, self.revision())).await?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The revision every watcher has all events up to: the stream's position, or with no
    /// watcher at all, the member's.
    fn revision(&self) -> i64 {
        if self.watchers.is_empty() {
            self.pos.max(self.node.status().revision)
        } else {
            self.pos
        }
    }

    async fn refuse_create(&self, reason: String) -> Flow {
        let mut r = self.response(-1, self.revision());
        r.created = true;
        r.canceled = true;
        r.cancel_reason = reason;
        self.send(r).await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Flow {
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return self
                .refuse_create(format!(
                    "kvstore: too many watches on this stream (limit {MAX_WATCHERS_PER_STREAM}); open another stream"
                ))
                .await;
        }
        // etcd: "\0" means every key from `key` on; any other end must lie after the key.
        if !c.range_end.is_empty() && c.range_end != [0] && c.key >= c.range_end {
            return self
                .refuse_create("mvcc: watcher range is empty".into())
                .await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .refuse_create("mvcc: duplicate watch ID provided on the WatchStream".into())
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let spec = WatchSpec {
            key: c.key,
            range_end: c.range_end,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: c.prev_kv,
        };
        // Before the history request: every batch after its answer carries previous kvs.
        let prev_kv = spec.prev_kv.then(|| self.node.want_prev_kv());
        let mut w = Watcher::new(spec, c.start_revision);
        let h = self.history(&w).await?;
        let mut created = self.response(id, h.reflects);
        created.created = true;
        self.send(created).await?;
        let step = w.caught_up(&h);
        self.pos = self.pos.max(h.reflects);
        self.watchers.insert(
            id,
            Entry {
                w,
                progress_notify: c.progress_notify,
                sent: false,
                _prev_kv: prev_kv,
            },
        );
        self.handle(id, step, h.reflects, h.cut).await
    }

    /// Asks the driver for `w`'s history from its next revision.
    async fn history(&self, w: &Watcher) -> Result<History, Closed> {
        let s = w.spec();
        match self
            .node
            .watch_history(w.next(), s.key.clone(), s.range_end.clone(), s.prev_kv)
            .await
        {
            Ok(h) => Ok(h),
            Err(e) => {
                let _ = self.out.send(Err(member::status(e))).await;
                Err(Closed)
            }
        }
    }

    async fn on_batch(&mut self, b: &crate::node::watches::Batch) -> Flow {
        self.pos = self.pos.max(b.last);
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(e) = self.watchers.get_mut(&id) else {
                continue;
            };
            let step = e.w.offer(b);
            self.handle(id, step, b.last, false).await?;
        }
        Ok(())
    }

    /// The stream fell behind the broadcast: every watcher catches up from history.
    async fn catch_up_all(&mut self) -> Flow {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.handle(id, Step::CatchUp, self.pos, false).await?;
        }
        Ok(())
    }

    /// Carries out what watcher `id` decided: send events (the source being complete up to
    /// `revision`), catch up from history (as long as answers come cut), or cancel.
    async fn handle(&mut self, id: i64, step: Step, revision: i64, cut: bool) -> Flow {
        let (mut step, mut revision, mut cut) = (step, revision, cut);
        loop {
            match step {
                Step::Deliver(events) => {
                    if !events.is_empty() {
                        self.send_events(id, events, revision).await?;
                    }
                    if !cut {
                        return Ok(());
                    }
                }
                Step::Compacted(compact_revision) => {
                    self.watchers.remove(&id);
                    let mut r = self.response(id, self.revision());
                    r.canceled = true;
                    r.compact_revision = compact_revision;
                    r.cancel_reason = COMPACTED_REASON.into();
                    return self.send(r).await;
                }
                Step::CatchUp => {}
            }
            let Some(e) = self.watchers.get(&id) else {
                return Ok(());
            };
            let h = self.history(&e.w).await?;
            self.pos = self.pos.max(h.reflects);
            let Some(e) = self.watchers.get_mut(&id) else {
                return Ok(());
            };
            step = e.w.caught_up(&h);
            revision = h.reflects;
            cut = h.cut;
        }
    }

    /// Sends `events` of watcher `id` in responses of about [`MAX_RESPONSE_BYTES`], split
    /// only between revisions; each response's header names the last revision it completes.
    async fn send_events(&mut self, id: i64, events: Vec<Event>, revision: i64) -> Flow {
        if let Some(e) = self.watchers.get_mut(&id) {
            e.sent = true;
        }
        let mut chunk: Vec<mvccpb::Event> = Vec::new();
        let mut bytes = 0;
        let mut iter = events.into_iter().peekable();
        while let Some(e) = iter.next() {
            let rev = e.kv.mod_revision;
            bytes += event_bytes(&e);
            chunk.push(event(e));
            let boundary = iter.peek().is_none_or(|n| n.kv.mod_revision != rev);
            if boundary && (bytes >= MAX_RESPONSE_BYTES || iter.peek().is_none()) {
                let header_rev = if iter.peek().is_none() { revision } else { rev };
                let mut r = self.response(id, header_rev);
                r.events = std::mem::take(&mut chunk);
                bytes = 0;
                self.send(r).await?;
            }
        }
        Ok(())
    }

    /// Sends an empty response to each idle watcher that asked for progress notifications
    /// and is caught up.
    async fn notify_progress(&mut self) -> Flow {
        let pos = self.pos;
        let ids: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter_map(|(id, e)| {
                let due = e.progress_notify && !e.sent && e.w.next() > pos;
                e.sent = false;
                due.then_some(*id)
            })
            .collect();
        for id in ids {
            self.send(self.response(id, pos)).await?;
        }
        Ok(())
    }
}

fn event_bytes(e: &Event) -> usize {
    let kv = |kv: &crate::state_machine::mvcc::KeyValue| kv.key.len() + kv.value.len() + 48;
    kv(&e.kv) + e.prev_kv.as_ref().map_or(0, kv)
}

/// An event to the wire.
fn event(e: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(key_value(e.kv)),
        prev_kv: e.prev_kv.map(key_value),
    }
}
