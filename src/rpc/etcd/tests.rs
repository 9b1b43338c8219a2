//! The etcd wire contract: our generated types encode to the bytes etcd's field numbers give
//! (written out by hand below), and a node serves every method of proto/etcd/ and lists the
//! services through reflection.

use crate::config::NodeConfig;
use crate::pb::etcd::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, WatchResponse,
};
use crate::pb::etcd::mvccpb::{event, Event, KeyValue};
use prost::Message;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Asserts that `message` encodes to exactly `want` (prost writes fields in field-number
/// order, as etcd's Go code does), and that `want` decodes back to `message`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M, want: &[u8]) {
    assert_eq!(message.encode_to_vec(), want, "encoding of {message:?}");
    assert_eq!(
        &M::decode(want).unwrap(),
        message,
        "decoding of {want:02x?}"
    );
}

// Each tag byte is (field number << 3) | wire type: 0 for varints (ints, bools, enums),
// 2 for length-delimited (bytes, strings, messages). Field 64 needs a two-byte varint tag:
// (64 << 3) | 2 = 514 = 0x82 0x04.

#[test]
fn range_request_has_etcds_field_numbers() {
    let req = RangeRequest {
        key: b"foo".to_vec(),
        range_end: b"fop".to_vec(),
        limit: 5,
        revision: 7,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 21,
        max_mod_revision: 22,
        min_create_revision: 23,
        max_create_revision: 24,
    };
    #[rustfmt::skip]
    let want = [
        0x0a, 3, b'f', b'o', b'o', // 1 key
        0x12, 3, b'f', b'o', b'p', // 2 range_end
        0x18, 5,                   // 3 limit
        0x20, 7,                   // 4 revision
        0x28, 2,                   // 5 sort_order DESCEND
        0x30, 3,                   // 6 sort_target MOD
        0x38, 1,                   // 7 serializable
        0x40, 1,                   // 8 keys_only
        0x48, 1,                   // 9 count_only
        0x50, 21,                  // 10 min_mod_revision
        0x58, 22,                  // 11 max_mod_revision
        0x60, 23,                  // 12 min_create_revision
        0x68, 24,                  // 13 max_create_revision
    ];
    assert_wire(&req, &want);
}

#[test]
fn put_request_has_etcds_field_numbers() {
    let req = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 9,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    #[rustfmt::skip]
    let want = [
        0x0a, 1, b'k', // 1 key
        0x12, 1, b'v', // 2 value
        0x18, 9,       // 3 lease
        0x20, 1,       // 4 prev_kv
        0x28, 1,       // 5 ignore_value
        0x30, 1,       // 6 ignore_lease
    ];
    assert_wire(&req, &want);
}

#[test]
fn txn_request_has_etcds_field_numbers_oneofs_and_enums() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let cmp = |result: R, target: T, union: U, range_end: &[u8]| Compare {
        result: result as i32,
        target: target as i32,
        key: b"k".to_vec(),
        range_end: range_end.to_vec(),
        target_union: Some(union),
    };
    let op = |request: request_op::Request| RequestOp {
        request: Some(request),
    };
    let req = TxnRequest {
        compare: vec![
            cmp(R::NotEqual, T::Mod, U::ModRevision(6), b"l"),
            cmp(R::Greater, T::Version, U::Version(4), b""),
            cmp(R::Less, T::Create, U::CreateRevision(5), b""),
            cmp(R::Equal, T::Value, U::Value(b"x".to_vec()), b""),
            cmp(R::Equal, T::Lease, U::Lease(8), b""),
        ],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        }))],
        failure: vec![
            op(request_op::Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                ..RangeRequest::default()
            })),
            op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                    prev_kv: true,
                },
            )),
            op(request_op::Request::RequestTxn(TxnRequest::default())),
        ],
    };
    #[rustfmt::skip]
    let want = [
        // 1 compare: result 1 NOT_EQUAL(3), target 2 MOD(2), key 3, target_union
        // mod_revision 6, range_end 64
        0x0a, 13, 0x08, 3, 0x10, 2, 0x1a, 1, b'k', 0x30, 6, 0x82, 0x04, 1, b'l',
        // GREATER(1), VERSION(0, the default: not written), version 4
        0x0a, 7, 0x08, 1, 0x1a, 1, b'k', 0x20, 4,
        // LESS(2), CREATE(1), create_revision 5
        0x0a, 9, 0x08, 2, 0x10, 1, 0x1a, 1, b'k', 0x28, 5,
        // EQUAL(0: not written), VALUE(3), value 7
        0x0a, 8, 0x10, 3, 0x1a, 1, b'k', 0x3a, 1, b'x',
        // EQUAL, LEASE(4), lease 8
        0x0a, 7, 0x10, 4, 0x1a, 1, b'k', 0x40, 8,
        // 2 success: RequestOp request_put 2 { key 1, value 2 }
        0x12, 8, 0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v',
        // 3 failure: request_range 1 { key }, request_delete_range 3 { key, prev_kv 3 },
        // request_txn 4 {}
        0x1a, 5, 0x0a, 3, 0x0a, 1, b'k',
        0x1a, 7, 0x1a, 5, 0x0a, 1, b'k', 0x18, 1,
        0x1a, 2, 0x22, 0,
    ];
    assert_wire(&req, &want);
}

#[test]
fn range_response_and_key_value_have_etcds_field_numbers() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        }),
        kvs: vec![KeyValue {
            key: b"k".to_vec(),
            create_revision: 5,
            mod_revision: 6,
            version: 7,
            value: b"v".to_vec(),
            lease: 8,
        }],
        more: true,
        count: 9,
    };
    #[rustfmt::skip]
    let want = [
        // 1 header: cluster_id 1, member_id 2, revision 3, raft_term 4
        0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4,
        // 2 kvs: key 1, create_revision 2, mod_revision 3, version 4, value 5, lease 6
        0x12, 14, 0x0a, 1, b'k', 0x10, 5, 0x18, 6, 0x20, 7, 0x2a, 1, b'v', 0x30, 8,
        0x18, 1, // 3 more
        0x20, 9, // 4 count
    ];
    assert_wire(&resp, &want);
}

#[test]
fn watch_response_events_are_field_11() {
    let resp = WatchResponse {
        watch_id: 2,
        events: vec![Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                ..KeyValue::default()
            }),
            prev_kv: None,
        }],
        ..WatchResponse::default()
    };
    #[rustfmt::skip]
    let want = [
        0x10, 2, // 2 watch_id
        // 11 events: type 1 DELETE(1), kv 2 { key }
        0x5a, 7, 0x08, 1, 0x12, 3, 0x0a, 1, b'k',
    ];
    assert_wire(&resp, &want);
}

// ---------------------------------------------------------------- served on a node

/// The etcd services' methods, as `package.Service/Method`, read from the descriptor set
/// the node serves through reflection (so the list cannot drift from proto/etcd/).
fn etcd_methods() -> Vec<String> {
    // The few fields of descriptor.proto this needs (field numbers are descriptor.proto's).
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptor {
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Service {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Method {
        #[prost(string, tag = "1")]
        name: String,
    }
    let set = FileDescriptorSet::decode(crate::pb::etcd::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set.file {
        for service in file.service {
            for method in service.method {
                methods.push(format!("{}.{}/{}", file.package, service.name, method.name));
            }
        }
    }
    methods
}

/// Starts a one-node cluster on a free port; returns a channel to it and its stop token.
async fn start_node(dir: &std::path::Path) -> (Channel, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = NodeConfig::new(1, listener.local_addr().unwrap().port());
    config.data_dir = dir.join("node-1");
    config.heartbeat_interval = Duration::from_millis(10);
    config.election_timeout = Duration::from_millis(100);
    let channel = Endpoint::from_shared(format!("http://{}", config.address()))
        .unwrap()
        .connect_lazy();
    let stop = CancellationToken::new();
    tokio::spawn(crate::rpc::run(listener, config, stop.clone()));
    (channel, stop)
}

/// Calls `method` (`package.Service/Method`) with one empty message, whatever its kind
/// (unary, client, server or bidi streaming: on the wire all are a stream of messages).
async fn call_empty(channel: Channel, method: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let path = PathAndQuery::try_from(format!("/{method}")).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(tokio_stream::once(()));
    grpc.streaming(request, path, codec).await.map(drop)
}

/// The etcd methods kvstore serves; every other one answers UNIMPLEMENTED.
const SERVED: &[&str] = &[
    "etcdserverpb.KV/Range",
    "etcdserverpb.KV/Put",
    "etcdserverpb.KV/DeleteRange",
    "etcdserverpb.KV/Txn",
    "etcdserverpb.KV/Compact",
    "etcdserverpb.Maintenance/Alarm",
    "etcdserverpb.Maintenance/Status",
    "etcdserverpb.Maintenance/HashKV",
    "etcdserverpb.Maintenance/MoveLeader",
    "etcdserverpb.Cluster/MemberList",
    "etcdserverpb.Cluster/MemberAdd",
    "etcdserverpb.Cluster/MemberRemove",
    "etcdserverpb.Cluster/MemberUpdate",
    "etcdserverpb.Cluster/MemberPromote",
    "etcdserverpb.Lease/LeaseGrant",
    "etcdserverpb.Lease/LeaseRevoke",
    "etcdserverpb.Lease/LeaseKeepAlive",
    "etcdserverpb.Lease/LeaseTimeToLive",
    "etcdserverpb.Lease/LeaseLeases",
    "etcdserverpb.Watch/Watch",
];

#[tokio::test]
async fn every_etcd_method_not_served_answers_unimplemented_naming_itself() {
    let methods = etcd_methods();
    // KV 5, Watch 1, Lease 5, Cluster 5, Maintenance 8, Auth 17.
    assert_eq!(methods.len(), 41, "{methods:?}");
    assert!(methods.contains(&"etcdserverpb.KV/Range".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let (channel, stop) = start_node(dir.path()).await;
    for method in &methods {
        let answer = call_empty(channel.clone(), method).await;
        if SERVED.contains(&method.as_str()) {
            // Served: whatever an empty request gets (an answer or etcd's refusal), it is not
            // UNIMPLEMENTED.
            if let Err(status) = answer {
                assert_ne!(status.code(), Code::Unimplemented, "{method}: {status:?}");
            }
            continue;
        }
        let status = answer.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::Unimplemented,
                format!("{method} is not implemented by kvstore yet").as_str()
            ),
            "{method}"
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn reflection_lists_the_etcd_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let (channel, stop) = start_node(dir.path()).await;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = match stream.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for service in ["KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth"] {
        let want = format!("etcdserverpb.{service}");
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Our own services are still there.
    assert!(names.contains(&"kvstore.v1.KV".to_string()), "{names:?}");
    stop.cancel();
}
