//! A watcher on a follower that catches up by installing the leader's snapshot still gets
//! every event the snapshot brought, and the test catches the mutation that drops them
//! (`KVSTORE_TEST_DROP_SNAPSHOT_WATCH_CATCH_UP=1`). Its own test binary: the mutation is
//! switched on through the environment the nodes inherit, which must not leak into other
//! tests' clusters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use kvstore::pb::etcd::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    WatchCreateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SECS_10: Duration = Duration::from_secs(10);
const PUTS: usize = 120;

/// Cuts a follower off its peers (its clients still reach it), writes [`PUTS`] keys so the
/// leader's log moves past a snapshot, heals, and returns how many of the puts a watcher on
/// the follower (created before the cut) received by the time the follower caught up.
async fn watched_across_a_snapshot_install() -> usize {
    let (cluster, links) =
        Cluster::start_behind_proxies_args(3, &["--snapshot-entries", "20"]).await;
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let f = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut responses = WatchClient::new(common::channel(&cluster.addr(f)))
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"s/".to_vec(),
            range_end: b"s0".to_vec(),
            ..WatchCreateRequest::default()
        })),
    })
    .await
    .unwrap();
    let created = responses.message().await.unwrap().unwrap();
    assert!(created.created);
    for other in cluster.ids().into_iter().filter(|&id| id != f) {
        links.cut(other, f);
        links.cut(f, other);
    }
    let mut kv = KvClient::new(common::channel(&cluster.addr(leader)));
    for i in 0..PUTS {
        kv.put(PutRequest {
            key: format!("s/{i:03}").into_bytes(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap();
    }
    links.heal();
    cluster
        .wait_for_log(f, "installed the leader's snapshot", SECS_10)
        .await;
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while seen.len() < PUTS {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, responses.message()).await {
            Ok(Ok(Some(r))) => seen.extend(r.events.into_iter().map(|e| e.kv.unwrap().key)),
            _ => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    seen.len()
}

#[tokio::test]
async fn a_follower_watcher_gets_the_events_of_an_installed_snapshot() {
    assert_eq!(
        watched_across_a_snapshot_install().await,
        PUTS,
        "every put reached the follower's watcher"
    );
    // The mutation: the same run loses the events the snapshot brought.
    std::env::set_var("KVSTORE_TEST_DROP_SNAPSHOT_WATCH_CATCH_UP", "1");
    let got = watched_across_a_snapshot_install().await;
    std::env::remove_var("KVSTORE_TEST_DROP_SNAPSHOT_WATCH_CATCH_UP");
    assert!(
        got < PUTS,
        "with the mutation on, the watcher should miss the snapshot's events (got {got})"
    );
}
