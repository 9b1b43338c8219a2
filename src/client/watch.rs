//! [`Client::watch`]: a stream of every change under a key, a prefix or a range, that resumes
//! by itself across node failures without losing or repeating an event.
//!
//! A background task holds one `kvstore.v1` Watch stream to one node at a time. It remembers
//! the revision of the next event it owes the caller; when the stream breaks (the node died,
//! froze, restarted or shut down), it opens a stream on the next endpoint with
//! `start_revision` = that revision, after a backoff, and goes on. Nodes never split one
//! revision's events over two responses, so "the revision after the last delivered event" is
//! an exact resume point: every event is delivered once, in revision order. An event whose
//! revision is below that point (a node that resent one) is dropped.
//!
//! The watch ends with an error only when the history it needs is gone (the resume revision
//! was compacted away while no node was reachable, or the caller started below the
//! compaction revision): [`ClientError::WatchCanceled`] with the compact revision. Dropping
//! the [`Watcher`] ends the task and the stream.

use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::endpoints::{self, Endpoints};
use super::retry::{one_line, Backoff};
use super::{ClientError, ClientOptions, KeyValue};
use crate::pb;

/// Which keys a watch covers and from where; `Default` watches one key from the next
/// revision on. At most one of `prefix`, `from_key` and `range_end` may be given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Every key starting with the key (an empty key: every key).
    pub prefix: bool,
    /// Every key `>=` the key.
    pub from_key: bool,
    /// Every key in `[key, range_end)`.
    pub range_end: Option<String>,
    /// The first revision to deliver (0: the changes after the current revision).
    pub start_revision: i64,
    /// Each event also carries the key as it was before the change.
    pub prev_kv: bool,
    /// Leave puts out.
    pub no_put: bool,
    /// Leave deletes out.
    pub no_delete: bool,
}

impl WatchOptions {
    /// Every key starting with the key.
    pub fn prefix() -> Self {
        Self {
            prefix: true,
            ..Self::default()
        }
    }

    /// The same options from revision `revision` on.
    pub fn from_revision(self, revision: i64) -> Self {
        Self {
            start_revision: revision,
            ..self
        }
    }
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was set.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` (the delete's
    /// revision) are set.
    pub kv: KeyValue,
    /// The key before the change, when asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// Events in revision order, as they arrive; see the module doc.
#[derive(Debug)]
pub struct Watcher {
    rx: mpsc::Receiver<Result<Vec<WatchEvent>, ClientError>>,
}

impl Watcher {
    /// The next events (all of one or more revisions; never empty), or the error that ended
    /// the watch. `None` after that error.
    pub async fn next(&mut self) -> Option<Result<Vec<WatchEvent>, ClientError>> {
        self.rx.recv().await
    }
}

/// Responses buffered between the stream task and the caller: a slow caller holds up the
/// task, and the node then holds up the stream (HTTP/2 flow control), so memory stays
/// bounded; the node catches a lagging watch up from its history.
const BUFFER: usize = 64;

impl super::Client {
    /// Watches `key` (with `options`: a prefix, a range, from a revision); see the module doc.
    ///
    /// # Errors
    /// `options` names more than one way to select keys.
    pub fn watch(&self, key: &str, options: WatchOptions) -> Result<Watcher, ClientError> {
        let selected = [
            options.prefix,
            options.from_key,
            options.range_end.is_some(),
        ];
        if selected.iter().filter(|s| **s).count() > 1 {
            return Err(ClientError::InvalidArgument(
                "give at most one of prefix, from_key and range_end".to_string(),
            ));
        }
        let endpoints = Endpoints::new(self.endpoints().to_vec())?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = WatchTask {
            endpoints,
            options: self.options().clone(),
            key: key.to_string(),
            watch: options.clone(),
            next_revision: options.start_revision,
            tx,
        };
        tokio::spawn(task.run());
        Ok(Watcher { rx })
    }
}

/// The background side of a [`Watcher`].
struct WatchTask {
    endpoints: Endpoints,
    options: ClientOptions,
    key: String,
    watch: WatchOptions,
    /// The revision of the next event owed (0 until the first node said where "now" is).
    next_revision: i64,
    tx: mpsc::Sender<Result<Vec<WatchEvent>, ClientError>>,
}

/// How one stream ended.
enum StreamEnd {
    /// The caller dropped the watcher.
    Dropped,
    /// The node cannot serve it: try another.
    Broken(String),
    /// The watch cannot go on anywhere (compacted): the error was sent.
    Final,
}

impl WatchTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        loop {
            let addr = self.endpoints.pick();
            let channel = match self.endpoints.channel(&addr, &self.options) {
                Ok(channel) => channel,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            };
            let before = self.next_revision;
            match self.stream(channel).await {
                StreamEnd::Dropped | StreamEnd::Final => return,
                StreamEnd::Broken(why) => {
                    tracing::debug!(node = %addr, error = %why, "watch stream broke; resuming elsewhere");
                    // Progress made on this node: the next one is tried at once.
                    if self.next_revision != before {
                        backoff =
                            Backoff::new(self.options.backoff_initial, self.options.backoff_max);
                    }
                    self.endpoints.forget_leader(&addr);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = self.tx.closed() => return,
                    }
                }
            }
        }
    }

    /// One stream on `channel`, from `next_revision`, until it breaks.
    async fn stream(&mut self, channel: Channel) -> StreamEnd {
        let mut client = endpoints::watch(channel);
        let create = pb::WatchRequest {
            request: Some(pb::watch_request::Request::Create(pb::WatchCreate {
                keys: Some(pb::KeySelector {
                    key: self.key.clone(),
                    range_end: self.watch.range_end.clone().unwrap_or_default(),
                    prefix: self.watch.prefix,
                    from_key: self.watch.from_key,
                }),
                start_revision: self.next_revision,
                prev_kv: self.watch.prev_kv,
                progress_notify: false,
                no_put: self.watch.no_put,
                no_delete: self.watch.no_delete,
                watch_id: 0,
            })),
        };
        // The request stream stays open (a closed one would end the watch on the node) for
        // as long as this stream is used.
        let (req_tx, req_rx) = mpsc::channel::<pb::WatchRequest>(1);
        if req_tx.send(create).await.is_err() {
            return StreamEnd::Broken("request stream closed".to_string());
        }
        let opened = tokio::time::timeout(
            self.options.attempt_timeout,
            client.watch(tokio_stream::wrappers::ReceiverStream::new(req_rx)),
        )
        .await;
        let mut responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return StreamEnd::Broken(one_line(status.message())),
            Err(_) => return StreamEnd::Broken("no answer to the watch request".to_string()),
        };
        loop {
            let message = tokio::select! {
                m = responses.message() => m,
                () = self.tx.closed() => return StreamEnd::Dropped,
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => return StreamEnd::Broken("the node ended the stream".to_string()),
                Err(status) => return StreamEnd::Broken(one_line(status.message())),
            };
            if let Some(end) = self.on_response(response).await {
                return end;
            }
        }
    }

    /// Handles one response; `Some` ends the stream.
    async fn on_response(&mut self, r: pb::WatchResponse) -> Option<StreamEnd> {
        let revision = r.header.as_ref().map_or(0, |h| h.revision);
        if r.created && self.next_revision == 0 {
            // Started "from now": now is the node's revision at the create.
            self.next_revision = revision + 1;
        }
        if r.canceled {
            if r.compact_revision > 0 {
                let _ = self
                    .tx
                    .send(Err(ClientError::WatchCanceled {
                        reason: one_line(&r.cancel_reason),
                        compact_revision: r.compact_revision,
                    }))
                    .await;
                return Some(StreamEnd::Final);
            }
            return Some(StreamEnd::Broken(format!(
                "the node cancelled the watch: {}",
                one_line(&r.cancel_reason)
            )));
        }
        let events: Vec<WatchEvent> = r
            .events
            .into_iter()
            .filter_map(event_from_pb)
            .filter(|e| e.revision() >= self.next_revision)
            .collect();
        let last = events.last()?;
        self.next_revision = last.revision() + 1;
        if self.tx.send(Ok(events)).await.is_err() {
            return Some(StreamEnd::Dropped);
        }
        None
    }
}

fn event_from_pb(e: pb::Event) -> Option<WatchEvent> {
    let kind = match pb::event::EventType::try_from(e.r#type).ok()? {
        pb::event::EventType::Put => EventKind::Put,
        pb::event::EventType::Delete => EventKind::Delete,
    };
    Some(WatchEvent {
        kind,
        kv: e.kv?.into(),
        prev_kv: e.prev_kv.map(KeyValue::from),
    })
}
