//! In-process cluster tests: real gRPC on loopback port-0 listeners, real sled in temp dirs.

use super::*;
use crate::config::PeerSpec;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::lock_client::LockClient;
use crate::pb::{self, Consistency};
use std::time::Instant;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(15);

struct TestNode {
    config: NodeConfig,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestNode {
    async fn start(config: NodeConfig) -> Self {
        let listener = TcpListener::bind(config.address()).await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, config.clone(), shutdown.clone()));
        TestNode {
            config,
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.config.address()))
            .unwrap()
            .connect_lazy()
    }

    async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// Status, or None if the node does not answer.
    async fn status(&self) -> Option<pb::StatusResponse> {
        let mut c = ClusterClient::new(self.channel().await);
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Configs for `n` nodes on free loopback ports, data in `dir`.
async fn configs(n: usize, dir: &std::path::Path) -> Vec<NodeConfig> {
    let mut ports = Vec::new();
    for _ in 0..n {
        // Find a free port, release it, let the node bind it again.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(l.local_addr().unwrap().port());
    }
    (0..n)
        .map(|i| {
            let id = i as u64 + 1;
            let mut c = NodeConfig::new(id, ports[i]);
            c.data_dir = dir.join(format!("node-{id}"));
            c.heartbeat_interval = Duration::from_millis(10);
            c.election_timeout = Duration::from_millis(100);
            c.peers = (0..n)
                .filter(|&j| j != i)
                .map(|j| PeerSpec {
                    id: j as u64 + 1,
                    addr: format!("127.0.0.1:{}", ports[j]),
                })
                .collect();
            c
        })
        .collect()
}

/// Polls until exactly one of `nodes` is leader and every live node agrees on it; returns
/// its position in `nodes`.
async fn wait_for_leader(nodes: &[&TestNode]) -> usize {
    let start = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for n in nodes {
            statuses.push(n.status().await);
        }
        let leaders: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| s.role == pb::Role::Leader as i32)
            })
            .map(|(i, _)| i)
            .collect();
        if let [l] = leaders[..] {
            let id = nodes[l].config.id;
            if statuses
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.leader_id == id))
            {
                return l;
            }
        }
        assert!(start.elapsed() < DEADLINE, "no single leader: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `n` nodes with data in `dir`; returns them and the leader's position.
async fn start_cluster(n: usize, dir: &std::path::Path) -> (Vec<TestNode>, usize) {
    let mut nodes = Vec::new();
    for c in configs(n, dir).await {
        nodes.push(TestNode::start(c).await);
    }
    let l = wait_for_leader(&nodes.iter().collect::<Vec<_>>()).await;
    (nodes, l)
}

async fn put(node: &TestNode, key: &str, value: &str) -> Result<pb::PutResponse, tonic::Status> {
    node.kv()
        .await
        .put(pb::PutRequest {
            fence: None,
            key: key.into(),
            value: value.into(),
            session: None,
            lease: 0,
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(
    node: &TestNode,
    key: &str,
    consistency: Consistency,
) -> Result<pb::GetResponse, tonic::Status> {
    node.kv()
        .await
        .get(pb::GetRequest {
            key: key.into(),
            consistency: consistency as i32,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_redirect_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, l) = start_cluster(3, dir.path()).await;
    let leader_id = nodes[l].config.id;

    // A write through the leader is acknowledged with where it took effect.
    let resp = put(&nodes[l], "k", "v1").await.unwrap();
    let h = resp.header.unwrap();
    assert_eq!(h.node_id, leader_id);
    assert!(h.index >= 2, "after the leader's no-op: {h:?}");
    let got = get(&nodes[l], "k", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(got.found);
    assert_eq!(got.value, "v1");
    assert!(got.header.unwrap().index >= h.index);

    // Concurrent writes are pipelined and group-committed; each gets its own index.
    let mut calls = Vec::new();
    for i in 0..100 {
        let kv = nodes[l].kv().await;
        calls.push(tokio::spawn(async move {
            let mut kv = kv;
            let req = pb::PutRequest {
                fence: None,
                key: format!("c{i}"),
                value: i.to_string(),
                session: None,
                lease: 0,
            };
            kv.put(req)
                .await
                .map(|r| r.into_inner().header.unwrap().index)
        }));
    }
    let mut indexes = std::collections::BTreeSet::new();
    for c in calls {
        assert!(indexes.insert(c.await.unwrap().unwrap()));
    }
    assert_eq!(indexes.len(), 100);

    // A follower redirects writes and linearizable reads to the leader.
    let f = (l + 1) % 3;
    let err = put(&nodes[f], "k", "v2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        err.metadata().get("leader-id").unwrap().to_str().unwrap(),
        leader_id.to_string()
    );
    assert_eq!(
        err.metadata().get("leader-addr").unwrap().to_str().unwrap(),
        nodes[l].config.address()
    );
    let err = get(&nodes[f], "k", Consistency::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // The follower's serializable read catches up with the write.
    let start = Instant::now();
    while get(&nodes[f], "k", Consistency::Serializable)
        .await
        .unwrap()
        .value
        != "v1"
    {
        assert!(
            start.elapsed() < DEADLINE,
            "follower never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Invalid requests change nothing.
    let err = put(&nodes[l], "", "x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = nodes[l]
        .kv()
        .await
        .get(pb::GetRequest {
            key: "k".into(),
            consistency: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Stop the leader: the other two elect a new one and keep serving.
    nodes[l].stop().await;
    let rest: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l)
        .map(|(_, n)| n)
        .collect();
    let nl = wait_for_leader(&rest).await;
    assert_ne!(rest[nl].config.id, leader_id);
    put(rest[nl], "k", "v3").await.unwrap();

    // Restart the old leader from its data dir: it rejoins as a follower and catches up.
    let old = TestNode::start(nodes[l].config.clone()).await;
    let start = Instant::now();
    loop {
        if let Ok(r) = get(&old, "k", Consistency::Serializable).await {
            if r.value == "v3" {
                break;
            }
        }
        assert!(start.elapsed() < DEADLINE, "restarted node never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[l] = old;
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A `kvstore.v1` put naming a lease that does not exist is refused with etcd's words and
/// writes nothing (it travels as the key space's Put, whose lease check runs at apply time).
#[tokio::test]
async fn a_put_with_an_unknown_lease_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(1, dir.path()).await.remove(0);
    let node = TestNode::start(cfg).await;
    wait_for_leader(&[&node]).await;
    let err = node
        .kv()
        .await
        .put(pb::PutRequest {
            fence: None,
            key: "k".into(),
            value: "v".into(),
            session: None,
            lease: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("requested lease not found"),
        "{err:?}"
    );
    let got = get(&node, "k", Consistency::Linearizable).await.unwrap();
    assert!(!got.found, "nothing was written: {got:?}");
}

#[tokio::test]
async fn single_node_serves_and_locked_data_dir_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = configs(1, dir.path()).await.remove(0);
    let mut node = TestNode::start(cfg.clone()).await;
    wait_for_leader(&[&node]).await;
    let h = put(&node, "a", "1").await.unwrap().header.unwrap();
    assert_eq!(h.node_id, 1);
    let d = node
        .kv()
        .await
        .delete(pb::DeleteRequest {
            fence: None,
            key: "a".into(),
            session: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.deleted);
    assert!(
        !get(&node, "a", Consistency::Linearizable)
            .await
            .unwrap()
            .found
    );

    // A second node on the same data dir must fail with an error, not start.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.port = 0;
    let err = run(l, cfg, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, RunError::Fatal(_)), "{err}");
    node.stop().await;
}

/// Lists services through reflection version `$v` (`v1` or `v1alpha`), as grpcurl does.
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_and_health_are_served() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(configs(1, dir.path()).await.remove(0)).await;
    wait_for_leader(&[&node]).await;
    let v1 = list_services!(v1, node.channel().await);
    let v1alpha = list_services!(v1alpha, node.channel().await);
    for names in [&v1, &v1alpha] {
        for want in [
            "grpc.health.v1.Health",
            "kvstore.v1.Cluster",
            "kvstore.v1.KV",
            "kvstore.v1.Lock",
            "kvstore.v1.Raft",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }
    let mut health = HealthClient::new(node.channel().await);
    for service in [
        "",
        "kvstore.v1.KV",
        "kvstore.v1.Lock",
        "kvstore.v1.Raft",
        "kvstore.v1.Cluster",
    ] {
        let req = tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(req).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    node.stop().await;
}

// ---------------------------------------------------------------- locks

async fn acquire(
    node: &TestNode,
    name: &str,
    holder: &str,
    ttl_ms: u64,
    wait_ms: u64,
) -> Result<pb::AcquireResponse, tonic::Status> {
    LockClient::new(node.channel().await)
        .acquire(pb::AcquireRequest {
            name: name.into(),
            holder: holder.into(),
            ttl_ms,
            wait_ms,
        })
        .await
        .map(|r| r.into_inner())
}

async fn keep_alive(
    node: &TestNode,
    name: &str,
    token: u64,
) -> Result<pb::KeepAliveResponse, tonic::Status> {
    LockClient::new(node.channel().await)
        .keep_alive(pb::KeepAliveRequest {
            name: name.into(),
            token,
        })
        .await
        .map(|r| r.into_inner())
}

async fn release(node: &TestNode, name: &str, token: u64) -> Result<(), tonic::Status> {
    LockClient::new(node.channel().await)
        .release(pb::ReleaseRequest {
            name: name.into(),
            token,
            session: None,
        })
        .await
        .map(|_| ())
}

async fn validate(node: &TestNode, name: &str, token: u64) -> pb::ValidateResponse {
    LockClient::new(node.channel().await)
        .validate(pb::ValidateRequest {
            name: name.into(),
            token,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn fenced_put(
    node: &TestNode,
    key: &str,
    value: &str,
    lock: &str,
    token: u64,
) -> Result<pb::PutResponse, tonic::Status> {
    node.kv()
        .await
        .put(pb::PutRequest {
            fence: Some(pb::Fence {
                lock: lock.into(),
                token,
            }),
            key: key.into(),
            value: value.into(),
            session: None,
            lease: 0,
        })
        .await
        .map(|r| r.into_inner())
}

/// Polls Validate until `token` is no longer valid for `name`; returns when that was seen.
async fn wait_until_invalid(node: &TestNode, name: &str, token: u64) -> Instant {
    let start = Instant::now();
    loop {
        if !validate(node, name, token).await.valid {
            return Instant::now();
        }
        assert!(start.elapsed() < DEADLINE, "lease of {name} never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Keeps `name` alive every 100 ms for `total`; returns when the last keep-alive returned.
async fn keep_alive_for(node: &TestNode, name: &str, token: u64, total: Duration) -> Instant {
    let start = Instant::now();
    loop {
        let r = keep_alive(node, name, token).await.unwrap();
        let done = Instant::now();
        if done - start >= total {
            return done;
        }
        assert!(r.ttl_ms > 0);
        // Pacing of the client's keep-alives, not synchronisation.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_grant_renew_expire_and_fence_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(configs(1, dir.path()).await.remove(0)).await;
    wait_for_leader(&[&node]).await;

    // Grant, conflict, same-holder re-acquire.
    let a = acquire(&node, "L", "h1", 300, 0).await.unwrap();
    let t1 = a.token;
    assert!(t1 >= 1);
    assert_eq!(a.ttl_ms, 300);
    assert_eq!(a.header.unwrap().index, t1, "token = granting index");
    let err = acquire(&node, "L", "h2", 300, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), format!("lock L is held by h1 (token {t1})"));
    assert_eq!(acquire(&node, "L", "h1", 300, 0).await.unwrap().token, t1);
    let v = validate(&node, "L", t1).await;
    assert!(v.valid);
    assert_eq!((v.current_token, v.holder.as_str()), (t1, "h1"));

    // Keep-alives hold a 300 ms lease for over a second.
    keep_alive_for(&node, "L", t1, Duration::from_millis(1100)).await;
    assert!(
        validate(&node, "L", t1).await.valid,
        "kept-alive lease ended"
    );
    fenced_put(&node, "k", "by-h1", "L", t1).await.unwrap();

    // Without keep-alives the lease expires about a ttl after the last renewal.
    let last = Instant::now();
    keep_alive(&node, "L", t1).await.unwrap();
    let gone = wait_until_invalid(&node, "L", t1).await;
    let took = gone - last;
    assert!(
        took >= Duration::from_millis(250),
        "expired early: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(1100),
        "expired late: {took:?}"
    );
    let v = validate(&node, "L", t1).await;
    assert_eq!(
        (v.valid, v.current_token, v.holder.as_str()),
        (false, 0, "")
    );

    // The old holder's token is fenced off; a new holder's token is higher and works.
    let t2 = acquire(&node, "L", "h2", 5000, 0).await.unwrap().token;
    assert!(t2 > t1, "{t2} > {t1}");
    let err = fenced_put(&node, "k", "late-h1", "L", t1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("stale fencing token {t1} for lock L (current {t2})")
    );
    fenced_put(&node, "k", "by-h2", "L", t2).await.unwrap();
    assert_eq!(
        get(&node, "k", Consistency::Linearizable)
            .await
            .unwrap()
            .value,
        "by-h2"
    );
    let err = keep_alive(&node, "L", t1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("stale token {t1} for lock L (current {t2})")
    );
    assert_eq!(
        release(&node, "L", t1).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    release(&node, "L", t2).await.unwrap();
    assert!(!validate(&node, "L", t2).await.valid);

    // Malformed requests are refused before anything is proposed.
    for (ttl, wait) in [(50, 0), (86_400_001, 0), (1000, 600_001)] {
        let err = acquire(&node, "L", "h1", ttl, wait).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "ttl {ttl} wait {wait}");
    }
    let err = fenced_put(&node, "k", "v", "L", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = fenced_put(&node, "k", "v", "", 3).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_waits_for_a_release_or_gives_up_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(configs(1, dir.path()).await.remove(0)).await;
    wait_for_leader(&[&node]).await;
    let t1 = acquire(&node, "W", "h1", 60_000, 0).await.unwrap().token;

    // A bounded wait ends with the holder's message.
    let start = Instant::now();
    let err = acquire(&node, "W", "h3", 1000, 300).await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), format!("lock W is held by h1 (token {t1})"));

    // A waiter gets the lock once the holder releases it.
    let channel = node.channel().await;
    let waiter = tokio::spawn(async move {
        LockClient::new(channel)
            .acquire(pb::AcquireRequest {
                name: "W".into(),
                holder: "h2".into(),
                ttl_ms: 1000,
                wait_ms: 10_000,
            })
            .await
            .map(|r| r.into_inner())
    });
    // Give the waiter time to find the lock held (the result is the same if it has not).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "waiter did not wait");
    let released = Instant::now();
    release(&node, "W", t1).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert!(got.token > t1);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "waiter was not woken promptly"
    );
    let v = validate(&node, "W", got.token).await;
    assert!(v.valid);
    assert_eq!(v.holder, "h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_restarts_leases_and_tokens_keep_growing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for c in configs(3, dir.path()).await {
        nodes.push(TestNode::start(c).await);
    }
    let l = wait_for_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let ttl = Duration::from_millis(1500);
    let t1 = acquire(&nodes[l], "L", "a", 1500, 0).await.unwrap().token;
    // Linearizable Validate is for the leader only, like Get.
    let f = (l + 1) % 3;
    let err = LockClient::new(nodes[f].channel().await)
        .validate(pb::ValidateRequest {
            name: "L".into(),
            token: t1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.metadata().get("leader-id").is_some());

    // Keep it alive until just before the leader dies.
    let last_renewal = keep_alive_for(&nodes[l], "L", t1, Duration::from_millis(500)).await;
    nodes[l].stop().await;
    let rest: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l)
        .map(|(_, n)| n)
        .collect();
    let nl = rest[wait_for_leader(&rest).await];
    let elected = Instant::now();

    // The new leader restarted the lease with its full ttl: still valid, then it expires
    // (nobody keeps it alive) no earlier than a ttl after the last renewal.
    let v = validate(nl, "L", t1).await;
    assert!(v.valid, "lease ended early on the new leader: {v:?}");
    let gone = wait_until_invalid(nl, "L", t1).await;
    assert!(
        gone - last_renewal >= ttl,
        "expired {:?} after the last renewal",
        gone - last_renewal
    );
    assert!(
        gone - elected <= ttl + Duration::from_millis(1000),
        "expired {:?} after the election",
        gone - elected
    );

    // Tokens keep growing across the leader change.
    let t2 = acquire(nl, "L", "b", 1500, 0).await.unwrap().token;
    assert!(t2 > t1, "{t2} > {t1}");
    let err = fenced_put(nl, "k", "late-a", "L", t1).await.unwrap_err();
    assert_eq!(
        err.message(),
        format!("stale fencing token {t1} for lock L (current {t2})")
    );
    for n in &mut nodes {
        n.stop().await;
    }
}

/// An append from leader 2 in `term` to node 1 of one `Noop` entry at `index` (none if 0).
fn append_to_1(term: u64, index: u64) -> pb::AppendEntriesRequest {
    let entries = (index > 0)
        .then(|| pb::Entry {
            term,
            index,
            r#type: pb::EntryType::Noop as i32,
            data: Default::default(),
        })
        .into_iter()
        .collect();
    pb::AppendEntriesRequest {
        term,
        leader_id: 2,
        prev_log_index: index.saturating_sub(1),
        prev_log_term: if index > 1 { term } else { 0 },
        entries,
        leader_commit: 0,
        to: 1,
        read_ctx: index,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_stream_answers_every_pipelined_append_and_ends_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = configs(3, dir.path()).await;
    // Only node 1 runs; we play its leader, node 2.
    let mut node = TestNode::start(cfgs[0].clone()).await;
    let mut raft = pb::raft_client::RaftClient::new(node.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let mut answers = raft
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // 200 appends (one entry each) and a heartbeat, all written before any answer is read.
    const N: u64 = 200;
    for i in 1..=N {
        tx.send(append_to_1(7, i)).await.unwrap();
    }
    tx.send(append_to_1(7, 0)).await.unwrap();
    let mut matched = std::collections::BTreeSet::new();
    for _ in 0..=N {
        let a = tokio::time::timeout(DEADLINE, answers.message())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("the stream stays open");
        assert_eq!((a.term, a.from), (7, 1), "{a:?}");
        assert!(a.success, "{a:?}");
        // Each answer echoes its request's ReadIndex context; entry i is matched at i.
        if a.read_ctx > 0 {
            assert_eq!(a.match_index, a.read_ctx, "{a:?}");
        }
        assert!(matched.insert(a.read_ctx), "answered twice: {a:?}");
    }
    assert_eq!(matched, (0..=N).collect(), "every append answered once");
    assert_eq!(node.status().await.unwrap().last_log_index, N);

    // A message for another node ends the stream with the unary call's status.
    let mut bad = append_to_1(7, N + 1);
    bad.to = 3;
    tx.send(bad).await.unwrap();
    let err = tokio::time::timeout(DEADLINE, answers.message())
        .await
        .expect("an answer in time")
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // An open stream does not hold up the node's shutdown.
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    let _idle = raft
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, node.stop())
        .await
        .expect("the node stops with a stream open");
    drop(tx2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_reopens_the_append_stream_to_a_restarted_follower() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, l) = start_cluster(3, dir.path()).await;
    let f = (l + 1) % 3;
    put(&nodes[l], "k", "before").await.unwrap();

    // Restart the follower on the same port: the leader's stream to it breaks.
    nodes[f].stop().await;
    put(&nodes[l], "k", "while-down").await.unwrap();
    nodes[f] = TestNode::start(nodes[f].config.clone()).await;

    // Appends written after the restart reach it over a new stream.
    for i in 0..20 {
        put(&nodes[l], "k", &format!("after-{i}")).await.unwrap();
    }
    let start = Instant::now();
    loop {
        if let Ok(r) = get(&nodes[f], "k", Consistency::Serializable).await {
            if r.value == "after-19" {
                break;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "restarted follower never received the new appends"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

/// Client requests at the size limits: a 1 MiB value under the longest key is stored and
/// read back (raw and through the Rust client), one byte more is refused INVALID_ARGUMENT
/// naming the limit, and a request past the explicit gRPC limit is refused by the decoder
/// (with tonic's 4 MiB default, 3 MiB would have reached validation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_at_the_size_limits() {
    use super::kv_service::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let (nodes, l) = start_cluster(1, dir.path()).await;
    let node = &nodes[l];
    let key = "k".repeat(MAX_KEY_BYTES);
    let value = "v".repeat(MAX_VALUE_BYTES);
    put(node, &key, &value).await.unwrap();
    let got = get(node, &key, Consistency::Linearizable).await.unwrap();
    assert!(got.value == value);

    let e = put(node, &key, &format!("{value}v")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "value is 1048577 bytes, the limit is 1048576 (1 MiB)"
    );
    let e = put(node, &format!("{key}k"), "v").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "key is 4097 bytes, the limit is 4096");
    let e = put(node, "k", &"v".repeat(3 << 20)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e}");

    let mut client = crate::client::Client::new(vec![node.config.address()]).unwrap();
    let other = format!("{}x", "k".repeat(MAX_KEY_BYTES - 1));
    client.put(&other, &value).await.unwrap();
    let got = client
        .get(&other, crate::client::Consistency::Linearizable)
        .await
        .unwrap();
    assert!(got.value.as_ref() == Some(&value));
    let e = client.put(&other, &format!("{value}v")).await.unwrap_err();
    assert!(
        matches!(&e, crate::client::ClientError::InvalidArgument(m) if m.contains("the limit is 1048576")),
        "{e}"
    );
}
