//! Watches through `kvstore.v1` against real processes: the Rust client's `watch()` across
//! the death of the node it streams from, a start below the compaction revision, and kvctl's
//! `watch` output.

// Integration tests may unwrap (STYLE.md §6), harness helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{poll_until, Cluster};
use kvstore::client::{ClientError, EventKind, RangeOptions, WatchEvent, WatchOptions};

const SECS_10: Duration = Duration::from_secs(10);

/// Collects events from `watcher` until `n` arrived (or panics after `deadline`).
async fn collect(
    watcher: &mut kvstore::client::Watcher,
    n: usize,
    deadline: Duration,
) -> Vec<WatchEvent> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    while got.len() < n {
        let batch = tokio::time::timeout_at(end, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within {deadline:?}", got.len()))
            .expect("the watch ended")
            .expect("the watch failed");
        got.extend(batch);
    }
    got
}

/// A watcher streaming from node 1 (the first endpoint) sees every one of 300 puts exactly
/// once, in order, while node 1 is SIGKILLed in the middle: the client resumes on another
/// node from the revision after the last event it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_put_once_across_the_death_of_its_node() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(SECS_10).await;
    let mut writer = cluster.client();
    let start = writer
        .range("w/", &RangeOptions::prefix())
        .await
        .unwrap()
        .header
        .revision;
    let watch_client = cluster.client();
    let mut watcher = watch_client
        .watch("w/", WatchOptions::prefix().from_revision(start + 1))
        .unwrap();
    let mut revisions = Vec::new();
    for i in 0..300 {
        if i == 100 {
            cluster.kill(1);
        }
        let h = writer
            .put(&format!("w/{}", i % 7), &i.to_string())
            .await
            .unwrap();
        revisions.push(h.revision);
    }
    let events = collect(&mut watcher, 300, SECS_10).await;
    let got: Vec<(i64, String)> = events
        .iter()
        .map(|e| (e.revision(), e.kv.value.clone()))
        .collect();
    let want: Vec<(i64, String)> = revisions
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, i.to_string()))
        .collect();
    assert_eq!(got, want, "every put once, in order");
    assert!(events.iter().all(|e| e.kind == EventKind::Put));
    // Nothing more is pending: one more put is the very next event.
    let h = writer.put("w/last", "x").await.unwrap();
    let next = collect(&mut watcher, 1, SECS_10).await;
    assert_eq!(next[0].revision(), h.revision);
}

/// A watch from a compacted revision ends with `WatchCanceled` naming the compaction
/// revision; deletes arrive with their revision and prev_kv when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_is_cancelled_and_deletes_carry_prev_kv() {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let mut client = cluster.client();
    let first = client.put("c/k", "1").await.unwrap().revision;
    let second = client.put("c/k", "2").await.unwrap().revision;
    client.compact(second).await.unwrap();
    // Watched on the leader, which applied the compaction before acknowledging it (a
    // follower may serve the old history for a moment longer, as an etcd member does).
    let mut old = cluster
        .client_for(leader)
        .watch("c/k", WatchOptions::default().from_revision(first))
        .unwrap();
    let end = tokio::time::timeout(SECS_10, old.next()).await.unwrap();
    match end {
        Some(Err(ClientError::WatchCanceled {
            compact_revision, ..
        })) => assert_eq!(compact_revision, second),
        other => panic!("expected a cancel at {second}, got {other:?}"),
    }
    assert!(old.next().await.is_none(), "nothing after the cancel");

    let options = WatchOptions {
        prev_kv: true,
        ..WatchOptions::default().from_revision(second)
    };
    let mut w = client.watch("c/k", options).unwrap();
    let deleted = client.delete("c/k").await.unwrap().header.revision;
    let events = collect(&mut w, 2, SECS_10).await;
    assert_eq!(
        events[0].revision(),
        second,
        "the put at the compaction revision"
    );
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[1].revision(), deleted);
    assert_eq!(
        events[1].prev_kv.as_ref().map(|kv| kv.value.as_str()),
        Some("2")
    );
}

/// `kvctl watch --prefix --rev N` prints etcdctl's lines for the history from N and then
/// for new changes, from a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_watch_prints_history_and_new_changes() {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let mut client = cluster.client();
    let from = client.put("p/a", "1").await.unwrap().revision;
    client.delete("p/a").await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", &cluster.addr(follower)])
        .args(["watch", "p/", "--prefix", "--rev", &from.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    client.put("p/b", "2").await.unwrap();
    let mut lines = Vec::new();
    poll_until(SECS_10, "kvctl watch's 9 lines", async || {
        lines.extend(rx.try_iter());
        (lines.len() >= 9).then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines,
        ["PUT", "p/a", "1", "DELETE", "p/a", "", "PUT", "p/b", "2"],
        "etcdctl's format"
    );
}

/// Values at the size limit through a watch with prev_kv: one revision's event carries the
/// new and the old value (2 MiB with 1 MiB values), more than a client request may be; it
/// still arrives, whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_limit_arrive_with_their_previous_values() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(SECS_10).await;
    let mut client = cluster.client();
    let big = |c: char| c.to_string().repeat(1 << 20);
    let first = client.put("big", &big('a')).await.unwrap().revision;
    let second = client.put("big", &big('b')).await.unwrap().revision;
    let options = WatchOptions {
        prev_kv: true,
        ..WatchOptions::default().from_revision(first)
    };
    let mut w = client.watch("big", options).unwrap();
    let events = collect(&mut w, 2, SECS_10).await;
    assert_eq!(
        events.iter().map(WatchEvent::revision).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(events[1].kv.value, big('b'));
    assert_eq!(
        events[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(big('a'))
    );
}
