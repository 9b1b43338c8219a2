//! In-process cluster tests: real gRPC on loopback port-0 listeners, real sled in temp dirs.

use super::*;
use crate::config::PeerSpec;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
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

async fn put(node: &TestNode, key: &str, value: &str) -> Result<pb::PutResponse, tonic::Status> {
    node.kv()
        .await
        .put(pb::PutRequest {
            fence: None,
            key: key.into(),
            value: value.into(),
            session: None,
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
    let cfgs = configs(3, dir.path()).await;
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(TestNode::start(c).await);
    }
    let l = wait_for_leader(&nodes.iter().collect::<Vec<_>>()).await;
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
