//! Issue 15 on the real binary: membership changes while the cluster serves. A learner is
//! added with `kvctl member add --learner`, started with `--join`, catches up, is promoted;
//! an original member is removed, stops with `this node was removed from the cluster`, and
//! does not disturb the others, neither while running nor when restarted on its old data
//! dir. Every acknowledged write reads back on every current member.

// Integration tests may unwrap (STYLE.md §6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{free_port, has, kvctl, poll_until, terms, Cluster};
use kvstore::pb::cluster_client::ClusterClient;
use kvstore::pb::MemberListRequest;

const REMOVED_LINE: &str = "this node was removed from the cluster";

/// Writes `k<i>` = `v<i>` for each `i` in `range`, recording each acknowledged write.
async fn write(
    client: &mut kvstore::client::Client,
    acked: &mut Vec<(String, String)>,
    range: std::ops::Range<u32>,
) {
    for i in range {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        client.put(&k, &v).await.unwrap();
        acked.push((k, v));
    }
}

/// The cluster id node `id` reports in MemberList.
async fn cluster_id(cluster: &Cluster, id: u64) -> u64 {
    let mut client = ClusterClient::new(common::channel(&cluster.addr(id)));
    client
        .member_list(MemberListRequest {})
        .await
        .unwrap()
        .into_inner()
        .cluster_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_catches_up_is_promoted_and_a_removed_member_stops_for_good() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    let mut acked = Vec::new();
    write(&mut client, &mut acked, 0..30).await;

    // Add node 4 as a learner at a new port and start it with --join.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = kvctl(&cluster, &["member", "add", &addr, "--learner"]);
    assert_eq!(code, 0, "member add failed: {err}");
    assert_eq!(out.trim(), format!("added member 4 as a learner at {addr}"));
    // The same address again is refused with etcd's words.
    let (code, _, err) = kvctl(&cluster, &["member", "add", &addr, "--learner"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let joined = cluster.add_joining(port, &cluster.addr(leader));
    assert_eq!(joined, 4);
    let (k, v) = acked.last().cloned().unwrap();
    poll_until(
        Duration::from_secs(20),
        "the learner to have the data",
        async || has(&cluster, 4, &k, &v).await.then_some(()),
    )
    .await;
    let (code, out, _) = kvctl(&cluster, &["member", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("4 ") && l.contains("learner")),
        "{out}"
    );

    assert_eq!(
        cluster_id(&cluster, 4).await,
        cluster_id(&cluster, leader).await,
        "the joined node recorded the cluster's id"
    );

    // Promote it (retried: a learner just caught up may still be a few entries short).
    poll_until(Duration::from_secs(10), "the promotion", async || {
        let (code, out, _) = kvctl(&cluster, &["member", "promote", "4"]);
        (code == 0 && out.contains("promoted member 4")).then_some(())
    })
    .await;
    write(&mut client, &mut acked, 30..40).await;

    // Remove an original member that does not lead.
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    let rest: Vec<u64> = (1..=4).filter(|&id| id != gone).collect();
    let (code, out, err) = kvctl(&cluster, &["member", "remove", &gone.to_string()]);
    assert_eq!(code, 0, "member remove failed: {err}");
    assert_eq!(out.trim(), format!("removed member {gone}"));
    let status = cluster.wait_for_exit(gone, Duration::from_secs(10)).await;
    assert!(!status.success(), "a removed node exits non-zero");
    assert!(
        cluster.log(gone).contains(REMOVED_LINE),
        "the removed node says why it stopped"
    );
    assert!(!cluster.log(gone).contains("panicked"));
    write(&mut client, &mut acked, 40..50).await;
    let before = terms(&cluster, &rest).await;

    // Restarted on its old data dir, it is refused by the others, stops again with the same
    // line, and no term moves on the members.
    cluster.restart(gone);
    let status = cluster.wait_for_exit(gone, Duration::from_secs(15)).await;
    assert!(!status.success());
    assert!(cluster.log_since_start(gone).contains(REMOVED_LINE));
    assert_eq!(
        terms(&cluster, &rest).await,
        before,
        "the removed node disturbed no member's term"
    );

    // Every acknowledged write, on every current member.
    for &id in &rest {
        for (k, v) in &acked {
            let ok = poll_until(
                Duration::from_secs(10),
                "the write on every member",
                async || has(&cluster, id, k, v).await.then_some(true),
            )
            .await;
            assert!(ok, "node {id} lacks {k}");
        }
    }
    let (code, out, _) = kvctl(&cluster, &["member", "list", "-w", "json"]);
    assert_eq!(code, 0);
    assert!(!out.contains(&format!("\"id\":{gone},")), "{out}");
    assert!(out.contains("\"id\":4,\"role\":\"voter\""), "{out}");
}

/// The leader removes itself: the change is acknowledged, the leader stops with the line, the
/// other two elect a leader among themselves, and every acknowledged write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_stops_and_the_rest_carry_on() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    let mut acked = Vec::new();
    write(&mut client, &mut acked, 0..20).await;
    let (code, out, err) = kvctl(&cluster, &["member", "remove", &leader.to_string()]);
    assert_eq!(code, 0, "member remove failed: {err}");
    assert_eq!(out.trim(), format!("removed member {leader}"));
    let status = cluster.wait_for_exit(leader, Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(cluster.log(leader).contains(REMOVED_LINE));
    let (next, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(next, leader);
    write(&mut client, &mut acked, 20..30).await;
    let rest: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &rest {
        for (k, v) in &acked {
            poll_until(
                Duration::from_secs(10),
                "the write on every member",
                async || has(&cluster, id, k, v).await.then_some(()),
            )
            .await;
        }
    }
    let (code, out, _) = kvctl(&cluster, &["member", "list", "-w", "json"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("\"role\":\"voter\"").count(), 2, "{out}");
}
