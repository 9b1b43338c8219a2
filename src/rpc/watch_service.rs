//! `kvstore.v1.Watch`: etcd's watch semantics with text keys. Every stream runs through the
//! etcd front end's watch engine (`etcd::EtcdWatch::serve`), converted at the edges, so both
//! APIs deliver exactly the same events with the same guarantees and bounds (see
//! `rpc/etcd/watch.rs`): served by every node from its own applied state, exactly the history
//! of each watch, cancelled with `compact_revision` when it is gone.
//!
//! Conversions: a `KeySelector` as for Range; the response header's `node_id`, `term` and
//! `revision` come from the engine's header (`index` is 0: a watch response is not the answer
//! to one log entry). Keys and values written through the etcd API that are not UTF-8 are
//! shown lossily (U+FFFD) instead of ending the stream.

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::etcd::EtcdWatch;
use super::kv_service::keys_from_pb;
use crate::pb;
use crate::pb::etcd::etcdserverpb as epb;
use crate::pb::etcd::mvccpb;

/// The Watch service of one node.
#[derive(Clone, Debug)]
pub struct WatchService {
    engine: EtcdWatch,
}

impl WatchService {
    /// A service running its streams through `engine`.
    pub fn new(engine: EtcdWatch) -> Self {
        WatchService { engine }
    }
}

/// The etcd request for a `kvstore.v1` one.
fn request_to_etcd(req: pb::WatchRequest) -> Result<epb::WatchRequest, Status> {
    use epb::watch_request::RequestUnion as E;
    use pb::watch_request::Request as V;
    let union = match req.request {
        Some(V::Create(c)) => {
            let (key, range_end) = keys_from_pb(c.keys)?;
            let mut filters = Vec::new();
            if c.no_put {
                filters.push(epb::watch_create_request::FilterType::Noput as i32);
            }
            if c.no_delete {
                filters.push(epb::watch_create_request::FilterType::Nodelete as i32);
            }
            E::CreateRequest(epb::WatchCreateRequest {
                key,
                range_end,
                start_revision: c.start_revision,
                progress_notify: c.progress_notify,
                filters,
                prev_kv: c.prev_kv,
                watch_id: c.watch_id,
                fragment: false,
            })
        }
        Some(V::Cancel(c)) => E::CancelRequest(epb::WatchCancelRequest {
            watch_id: c.watch_id,
        }),
        Some(V::Progress(_)) => E::ProgressRequest(epb::WatchProgressRequest {}),
        None => {
            return Err(Status::invalid_argument(
                "a watch request needs one of create, cancel or progress",
            ))
        }
    };
    Ok(epb::WatchRequest {
        request_union: Some(union),
    })
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn kv_from_etcd(kv: mvccpb::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: text(kv.key),
        value: text(kv.value),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// The `kvstore.v1` response for an etcd one.
fn response_from_etcd(r: epb::WatchResponse) -> pb::WatchResponse {
    let header = r.header.map(|h| pb::ResponseHeader {
        node_id: h.member_id,
        term: h.raft_term,
        index: 0,
        revision: h.revision,
    });
    let events = r
        .events
        .into_iter()
        .map(|e| pb::Event {
            r#type: match mvccpb::event::EventType::try_from(e.r#type) {
                Ok(mvccpb::event::EventType::Delete) => pb::event::EventType::Delete as i32,
                _ => pb::event::EventType::Put as i32,
            },
            kv: e.kv.map(kv_from_etcd),
            prev_kv: e.prev_kv.map(kv_from_etcd),
        })
        .collect();
    pb::WatchResponse {
        header,
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        events,
    }
}

type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // A request that cannot be converted ends the stream with its error, as one the
        // decoder refuses does.
        let inbound = request.into_inner().map(|r| r.and_then(request_to_etcd));
        let out = ReceiverStream::new(self.engine.serve(inbound)?);
        Ok(Response::new(Box::pin(
            out.map(|r| r.map(response_from_etcd)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_converts_selectors_and_filters() {
        let req = pb::WatchRequest {
            request: Some(pb::watch_request::Request::Create(pb::WatchCreate {
                keys: Some(pb::KeySelector {
                    key: "app/".into(),
                    prefix: true,
                    ..Default::default()
                }),
                start_revision: 7,
                prev_kv: true,
                no_delete: true,
                watch_id: 3,
                ..Default::default()
            })),
        };
        let Some(epb::watch_request::RequestUnion::CreateRequest(c)) =
            request_to_etcd(req).unwrap().request_union
        else {
            panic!("not a create");
        };
        assert_eq!(
            (c.key.as_slice(), c.range_end.as_slice()),
            (&b"app/"[..], &b"app0"[..])
        );
        assert_eq!((c.start_revision, c.prev_kv, c.watch_id), (7, true, 3));
        assert_eq!(
            c.filters,
            vec![epb::watch_create_request::FilterType::Nodelete as i32]
        );
        let empty = pb::WatchRequest { request: None };
        assert_eq!(
            request_to_etcd(empty).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn responses_keep_ids_revisions_and_event_kinds() {
        let r = epb::WatchResponse {
            header: Some(epb::ResponseHeader {
                cluster_id: 9,
                member_id: 2,
                revision: 12,
                raft_term: 4,
            }),
            watch_id: 3,
            canceled: true,
            compact_revision: 10,
            cancel_reason: "mvcc: required revision has been compacted".into(),
            events: vec![mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: vec![b'k', 0xff],
                    mod_revision: 12,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        let v = response_from_etcd(r);
        let h = v.header.unwrap();
        assert_eq!((h.node_id, h.term, h.revision, h.index), (2, 4, 12, 0));
        assert_eq!((v.watch_id, v.canceled, v.compact_revision), (3, true, 10));
        let e = &v.events[0];
        assert_eq!(e.r#type, pb::event::EventType::Delete as i32);
        assert_eq!(e.kv.as_ref().unwrap().key, "k\u{fffd}");
    }
}
