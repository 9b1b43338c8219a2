//! The retry loop against in-process fake nodes (no Raft): redirects, session reuse on
//! retry, dead and frozen endpoints, errors that must not be retried.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::*;
use crate::pb::kv_server::{Kv, KvServer};

/// A scripted answer for the next Put.
enum Answer {
    Ok(u64),
    Fail(Status),
}

#[derive(Clone, Default)]
struct FakeNode {
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<pb::PutRequest>>>,
    txns: Arc<Mutex<Vec<pb::TxnRequest>>>,
}

impl FakeNode {
    fn script(&self, answers: Vec<Answer>) {
        self.script.lock().unwrap().extend(answers);
    }
    fn seen(&self) -> Vec<pb::PutRequest> {
        self.seen.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Kv for FakeNode {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.seen.lock().unwrap().push(request.into_inner());
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Ok(1));
        match answer {
            Answer::Ok(index) => Ok(Response::new(pb::PutResponse {
                header: Some(pb::ResponseHeader {
                    node_id: 1,
                    term: 1,
                    index,
                    revision: 1,
                }),
            })),
            Answer::Fail(status) => Err(status),
        }
    }
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::invalid_argument("key is empty"))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn range(
        &self,
        _: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    /// Answers from the same script as Put (`Ok(index)`: a succeeded Txn with no ops).
    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.txns.lock().unwrap().push(request.into_inner());
        let answer = self.script.lock().unwrap().pop_front();
        match answer.unwrap_or(Answer::Ok(1)) {
            Answer::Ok(index) => Ok(Response::new(pb::TxnResponse {
                header: Some(pb::ResponseHeader {
                    index,
                    revision: 7,
                    ..Default::default()
                }),
                succeeded: true,
                results: vec![],
            })),
            Answer::Fail(status) => Err(status),
        }
    }
    async fn compact(
        &self,
        _: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Serves `node` on a fresh loopback port; returns `HOST:PORT`.
async fn serve(node: FakeNode) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// An address nobody listens on.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn redirect_to(addr: &str) -> Status {
    let mut status = Status::unavailable(format!("not leader, try node 2 ({addr})"));
    status
        .metadata_mut()
        .insert("leader-id", MetadataValue::from_static("2"));
    status
        .metadata_mut()
        .insert("leader-addr", addr.parse().unwrap());
    status
}

fn fast(timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(timeout_ms),
        attempt_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn follows_a_redirect_to_an_unlisted_leader_and_then_goes_there_directly() {
    let leader = FakeNode::default();
    let leader_addr = serve(leader.clone()).await;
    let follower = FakeNode::default();
    follower.script(vec![Answer::Fail(redirect_to(&leader_addr))]);
    let follower_addr = serve(follower.clone()).await;

    let mut client = Client::with_options(vec![follower_addr.clone()], fast(5000)).unwrap();
    leader.script(vec![Answer::Ok(7), Answer::Ok(8)]);
    assert_eq!(client.put("k", "v").await.unwrap().index, 7);
    assert_eq!(
        client.endpoints(),
        [follower_addr],
        "the configured list is kept"
    );
    assert_eq!(client.put("k", "w").await.unwrap().index, 8);
    assert_eq!(
        follower.seen().len(),
        1,
        "the second put went straight to the leader"
    );
}

#[tokio::test]
async fn without_follow_redirects_a_not_leader_answer_ends_the_operation() {
    let leader = FakeNode::default();
    let leader_addr = serve(leader.clone()).await;
    let follower = FakeNode::default();
    follower.script(vec![Answer::Fail(redirect_to(&leader_addr))]);
    let follower_addr = serve(follower.clone()).await;

    let options = ClientOptions {
        follow_redirects: false,
        ..fast(5000)
    };
    let mut client = Client::with_options(vec![follower_addr], options).unwrap();
    let err = client.put("k", "v").await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Server {
            code: "Unavailable".into(),
            message: format!("not leader, try node 2 ({leader_addr})"),
        }
    );
    assert!(leader.seen().is_empty(), "the leader was never asked");
}

#[tokio::test]
async fn a_retried_write_keeps_its_sequence_and_the_next_write_gets_a_new_one() {
    let node = FakeNode::default();
    node.script(vec![
        Answer::Fail(Status::unavailable(
            "leadership lost before the request completed; it may or may not have been applied, retry",
        )),
        Answer::Fail(Status::unavailable("no leader elected yet")),
        Answer::Ok(3),
        Answer::Ok(4),
    ]);
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![addr], fast(5000)).unwrap();
    client.put("k", "v").await.unwrap();
    client.put("k", "w").await.unwrap();
    let sessions: Vec<(u64, u64)> = node
        .seen()
        .iter()
        .map(|r| {
            let s = r.session.unwrap();
            (s.client_id, s.sequence)
        })
        .collect();
    let id = client.client_id();
    assert_ne!(id, 0);
    assert_eq!(sessions, [(id, 1), (id, 1), (id, 1), (id, 2)]);
}

#[tokio::test]
async fn a_dead_endpoint_costs_little() {
    let node = FakeNode::default();
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![dead_addr(), addr], fast(5000)).unwrap();
    let started = Instant::now();
    client.put("k", "v").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_frozen_endpoint_is_abandoned_after_the_attempt_timeout() {
    // Accepts TCP connections (kernel backlog) but never speaks HTTP/2: a SIGSTOPped node.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frozen_addr = frozen.local_addr().unwrap().to_string();
    let node = FakeNode::default();
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![frozen_addr, addr], fast(5000)).unwrap();
    client.put("k", "v").await.unwrap();
    assert_eq!(node.seen().len(), 1);
}

#[tokio::test]
async fn invalid_argument_is_returned_at_once() {
    let node = FakeNode::default();
    node.script(vec![Answer::Fail(Status::invalid_argument("key is empty"))]);
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![addr], fast(5000)).unwrap();
    assert_eq!(
        client.put("", "v").await.unwrap_err(),
        ClientError::InvalidArgument("key is empty".into())
    );
    assert_eq!(node.seen().len(), 1, "not retried");
}

fn sessions_seen(node: &FakeNode) -> Vec<(u64, u64)> {
    let session = |r: &pb::PutRequest| r.session.map(|s| (s.client_id, s.sequence));
    node.seen().iter().filter_map(session).collect()
}

#[tokio::test]
async fn an_expired_session_is_an_unknown_outcome_and_the_next_write_opens_a_new_session() {
    let node = FakeNode::default();
    let message = "session expired; the outcome of your earlier attempt is unknown (client 7, sequence 2); start a new session";
    let mut expired = Status::failed_precondition(message);
    expired.metadata_mut().insert(
        "kvstore-error",
        MetadataValue::from_static("session-expired"),
    );
    node.script(vec![Answer::Ok(1), Answer::Fail(expired), Answer::Ok(3)]);
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![addr], fast(5000)).unwrap();
    let first_id = client.client_id();
    client.put("k", "v").await.unwrap();
    let error = client.put("k", "w").await.unwrap_err();
    assert_eq!(error, ClientError::UnknownOutcome(message.into()));
    assert!(error
        .to_string()
        .starts_with("outcome unknown: session expired"));
    assert_eq!(node.seen().len(), 2, "not retried");
    client.put("k", "x").await.unwrap();
    let second_id = client.client_id();
    assert_ne!(second_id, first_id, "a new session");
    assert_eq!(
        sessions_seen(&node),
        [(first_id, 1), (first_id, 2), (second_id, 1)]
    );
}

#[tokio::test]
async fn a_write_refused_as_invalid_gives_its_sequence_back() {
    // Otherwise the first valid write would carry sequence 2 and the cluster, which never
    // saw sequence 1, would refuse it as from an expired session.
    let node = FakeNode::default();
    node.script(vec![Answer::Fail(Status::invalid_argument("key is empty"))]);
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![addr], fast(5000)).unwrap();
    client.put("", "v").await.unwrap_err();
    client.put("k", "v").await.unwrap();
    let id = client.client_id();
    assert_eq!(sessions_seen(&node), [(id, 1), (id, 1)]);
}

#[tokio::test]
async fn gives_up_at_the_deadline_with_the_last_error() {
    let mut client = Client::with_options(vec![dead_addr()], fast(400)).unwrap();
    let started = Instant::now();
    let error = client.put("k", "v").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match &error {
        ClientError::Timeout {
            operation,
            attempts,
            ..
        } => {
            assert_eq!(*operation, "put");
            assert!(*attempts >= 2);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(!error.to_string().contains('\n'));
}

#[tokio::test]
async fn status_all_reports_unreachable_nodes_per_endpoint() {
    let dead = dead_addr();
    let mut client = Client::with_options(vec![dead.clone()], fast(1000)).unwrap();
    let statuses = client.status_all().await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].address, dead);
    assert!(matches!(
        statuses[0].result,
        Err(ClientError::Unreachable(_))
    ));
}

#[tokio::test]
async fn a_txn_is_a_write_retried_with_its_session_between_puts() {
    let node = FakeNode::default();
    node.script(vec![
        Answer::Ok(1),
        Answer::Fail(Status::unavailable("no leader elected yet")),
        Answer::Ok(2),
        Answer::Ok(3),
    ]);
    let addr = serve(node.clone()).await;
    let mut client = Client::with_options(vec![addr], fast(5000)).unwrap();
    client.put("k", "v").await.unwrap();
    let result = client
        .txn()
        .and_then(crate::client::TxnOp::put("k", "w"))
        .commit()
        .await
        .unwrap();
    assert!(result.succeeded);
    assert_eq!((result.header.index, result.header.revision), (2, 7));
    client.put("k", "x").await.unwrap();
    let id = client.client_id();
    let txn_sessions: Vec<(u64, u64)> = node
        .txns
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.session.map(|s| (s.client_id, s.sequence)).unwrap())
        .collect();
    assert_eq!(txn_sessions, [(id, 2), (id, 2)], "resent with its sequence");
    assert_eq!(sessions_seen(&node), [(id, 1), (id, 3)]);
}
