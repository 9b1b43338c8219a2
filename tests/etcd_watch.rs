//! etcd's Watch on real kvstore processes: etcdctl 3.4 `watch` (key, `--prefix`, `--rev`,
//! `--prev-kv`, from a follower) prints exactly the changes; a watch from a compacted revision
//! is canceled with the compaction revision; and with tonic's generated etcd client, a
//! watcher on a follower sees every one of N concurrent puts exactly once while the leader is
//! killed and a new one elected, and a slow consumer that stops reading during a burst larger
//! than the broadcast capacity still gets every event.
//!
//! The etcdctl tests need `etcdctl` on PATH: without it they skip with a message, and fail
//! when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "etcd_compat/watch.rs"]
#[allow(dead_code)]
mod watch;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{poll_until, Cluster};
use kvstore::pb::etcd::etcdserverpb::RangeRequest;
use kvstore::pb::etcd::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, CompactionRequest,
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use kvstore::pb::etcd::mvccpb::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const SECS_10: Duration = Duration::from_secs(10);

fn etcdctl_present() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcdctl is missing (Debian's etcd-client)"
        );
        eprintln!("skipped: etcdctl is missing (Debian's etcd-client)");
    }
    found
}

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "2s"])
        .args(["--command-timeout", "5s"])
        .args(args)
        .output()
        .unwrap()
}

/// Runs `etcdctl watch ARGS` on `endpoint` until it printed `lines` lines or `deadline`
/// passed, then kills it; returns stdout's lines and the "watch was canceled" lines.
fn watch_lines(
    endpoint: &str,
    args: &[&str],
    lines: usize,
    deadline: Duration,
) -> (Vec<String>, String) {
    let printed = watch::watch(endpoint, &args.join(" "), Some(lines), deadline);
    (printed.stdout, printed.canceled.join("\n"))
}

/// A follower of `cluster` (after a leader is elected).
async fn follower(cluster: &Cluster) -> u64 {
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    cluster.ids().into_iter().find(|&id| id != leader).unwrap()
}

#[tokio::test]
async fn etcdctl_watch_on_a_follower_prints_exactly_the_history() {
    if !etcdctl_present() {
        return;
    }
    let cluster = Cluster::start(3);
    let f = follower(&cluster).await;
    let ep = cluster.addr(f);
    for args in [
        vec!["put", "k/a", "1"],
        vec!["put", "other", "x"],
        vec!["put", "k/b", "2"],
        vec!["put", "k/a", "3"],
        vec!["del", "k/b"],
        vec!["txn"],
    ] {
        if args == ["txn"] {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &ep, "txn"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(b"\nput k/c 4\nput k/d 5\n\n\n")?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(
                out.status.success(),
                "txn failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        } else {
            let out = etcdctl(&ep, &args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Revisions: 2 k/a=1, 3 other, 4 k/b=2, 5 k/a=3, 6 del k/b, 7 txn k/c k/d.
    let (lines, _) = watch_lines(&ep, &["--prefix", "k/", "--rev", "1"], 18, SECS_10);
    assert_eq!(
        lines,
        [
            "PUT", "k/a", "1", "PUT", "k/b", "2", "PUT", "k/a", "3", "DELETE", "k/b", "", "PUT",
            "k/c", "4", "PUT", "k/d", "5"
        ],
        "a prefix watch from revision 1 on a follower"
    );
    let (lines, _) = watch_lines(&ep, &["--rev", "3", "--prev-kv", "k/a"], 5, SECS_10);
    assert_eq!(
        lines,
        ["PUT", "k/a", "1", "k/a", "3"],
        "a key watch from revision 3 with previous kvs"
    );
    // A live watch: starts at the next revision, then sees a put made on the leader.
    let ep2 = ep.clone();
    let watcher = std::thread::spawn(move || watch_lines(&ep2, &["k/live"], 3, SECS_10));
    // Wait until the watch is registered: a watch from "now" misses earlier puts.
    std::thread::sleep(Duration::from_millis(800));
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    assert!(etcdctl(&cluster.addr(leader), &["put", "k/live", "now"])
        .status
        .success());
    let (lines, _) = watcher.join().unwrap();
    assert_eq!(lines, ["PUT", "k/live", "now"]);
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_canceled_with_the_compaction_revision() {
    let cluster = Cluster::start(3);
    let f = follower(&cluster).await;
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let mut kv = KvClient::new(common::channel(&cluster.addr(leader)));
    for i in 0..5 {
        kv.put(put(&format!("c{i}"), "v")).await.unwrap();
    }
    kv.compact(CompactionRequest {
        revision: 4,
        physical: false,
    })
    .await
    .unwrap();
    // The follower applies the compaction too: its serializable reads below it fail.
    let mut fkv = KvClient::new(common::channel(&cluster.addr(f)));
    poll_until(SECS_10, "the follower's compaction", async || {
        let read = fkv
            .range(RangeRequest {
                key: b"c0".to_vec(),
                revision: 3,
                serializable: true,
                ..RangeRequest::default()
            })
            .await;
        read.err().filter(|e| e.message().contains("compacted"))
    })
    .await;
    let (tx, mut rx) = open(&cluster.addr(f)).await;
    tx.send(create("c0", &[0], 2, 0)).await.unwrap();
    let created = next(&mut rx).await;
    assert!(created.created && !created.canceled, "{created:?}");
    let canceled = next(&mut rx).await;
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.compact_revision, 4);
    assert_eq!(
        canceled.cancel_reason,
        "mvcc: required revision has been compacted"
    );
    // Duplicate ids are refused the etcd way; an assigned id starts at 0.
    tx.send(create("d", &[], 0, 7)).await.unwrap();
    assert_eq!(next(&mut rx).await.watch_id, 7);
    tx.send(create("d", &[], 0, 7)).await.unwrap();
    let dup = next(&mut rx).await;
    assert_eq!(
        (
            dup.watch_id,
            dup.created,
            dup.canceled,
            dup.cancel_reason.as_str()
        ),
        (
            -1,
            true,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        )
    );
    tx.send(create("d", &[], 0, 0)).await.unwrap();
    // The first (compacted) watch took id 0: assigned ids go on from 1, as in etcd.
    assert_eq!(next(&mut rx).await.watch_id, 1);

    if etcdctl_present() {
        let (lines, stderr) = watch_lines(&cluster.addr(f), &["--rev", "2", "c0"], 1, SECS_10);
        assert!(lines.is_empty(), "{lines:?}");
        assert!(
            stderr.contains("required revision has been compacted"),
            "etcdctl should say the watch was canceled: {stderr}"
        );
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn create(key: &str, range_end: &[u8], start_revision: i64, watch_id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            start_revision,
            watch_id,
            ..WatchCreateRequest::default()
        })),
    }
}

/// Opens a watch stream on `addr`: the request sender and the response stream.
async fn open(addr: &str) -> (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(16);
    let mut client = WatchClient::new(common::channel(addr));
    let responses = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

async fn next(rx: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(SECS_10, rx.message())
        .await
        .expect("a watch response within 10 s")
        .unwrap()
        .expect("the stream is open")
}

/// Reads events until `count` arrived (panics after `deadline`); checks revisions ascend.
async fn collect(
    rx: &mut tonic::Streaming<WatchResponse>,
    count: usize,
    deadline: Duration,
) -> Vec<Event> {
    let end = Instant::now() + deadline;
    let mut events = Vec::new();
    while events.len() < count {
        let left = end.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, rx.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .unwrap()
            .unwrap();
        assert!(!r.canceled, "canceled: {r:?}");
        events.extend(r.events);
    }
    events
}

fn revisions(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect()
}

/// Puts `key`=`value` through any live member until one acknowledges it.
async fn put_anywhere(channels: &[(u64, Channel)], key: String, value: String) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        for (_, ch) in channels {
            let mut kv = KvClient::new(ch.clone());
            let call = kv.put(put(&key, &value));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                return;
            }
        }
        assert!(Instant::now() < end, "put {key} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_follower_watcher_sees_every_put_once_across_a_leader_kill() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let f = follower(&cluster).await;
    let (tx, mut rx) = open(&cluster.addr(f)).await;
    tx.send(create("w/", b"w0", 0, 0)).await.unwrap();
    assert!(next(&mut rx).await.created);
    let channels: Vec<(u64, Channel)> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .map(|id| (id, common::channel(&cluster.addr(id))))
        .collect();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let channels = channels.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                put_anywhere(&channels, format!("w/{w}/{i}"), format!("{w}-{i}")).await;
            }
        }));
    }
    // Kill the leader in the middle of the writes.
    let watched = collect(&mut rx, WRITERS * PER_WRITER / 3, Duration::from_secs(30)).await;
    cluster.kill(leader);
    for w in writers {
        w.await.unwrap();
    }
    let mut events = watched;
    // Every put is acknowledged; a retried put may have applied twice (two revisions):
    // read the whole history from a fresh watch on the other survivor and compare.
    let other = channels.iter().find(|(id, _)| *id != f).unwrap().0;
    let (tx2, mut rx2) = open(&cluster.addr(other)).await;
    tx2.send(create("w/", b"w0", 1, 0)).await.unwrap();
    assert!(next(&mut rx2).await.created);
    // The fresh watch delivers at least every acknowledged put; wait until the long-lived
    // watcher has as many events as the fresh one, then they must be equal.
    let fresh = collect(&mut rx2, WRITERS * PER_WRITER, Duration::from_secs(30)).await;
    let mut fresh = fresh;
    while let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_millis(500), rx2.message())
        .await
        .map(|m| m.transpose())
    {
        fresh.extend(r.events);
    }
    let more = collect(
        &mut rx,
        fresh.len().saturating_sub(events.len()),
        Duration::from_secs(30),
    )
    .await;
    events.extend(more);
    assert_eq!(
        revisions(&events),
        revisions(&fresh),
        "the follower's watcher delivered exactly the history"
    );
    assert_eq!(events, fresh);
    let mut values: Vec<Vec<u8>> = events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().value.clone())
        .collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), WRITERS * PER_WRITER, "every put was seen");
    let mut sorted = revisions(&events);
    sorted.dedup();
    assert_eq!(sorted.len(), events.len(), "no revision twice");
}

#[tokio::test]
async fn a_slow_consumer_still_gets_every_event() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(SECS_10).await;
    let addr = cluster.addr(1);
    let (tx, mut rx) = open(&addr).await;
    tx.send(create("s/", b"s0", 0, 0)).await.unwrap();
    assert!(next(&mut rx).await.created);
    // A burst bigger than the broadcast capacity (1024 batches), with 4 KiB values (12 MiB,
    // far over what HTTP/2 windows and the stream's buffer hold), while the client reads
    // nothing: the stream falls behind and catches up from history.
    const N: usize = 3000;
    let value = "v".repeat(4096);
    let mut kv = KvClient::new(common::channel(&addr));
    for i in 0..N {
        kv.put(put(&format!("s/{i:05}"), &value)).await.unwrap();
    }
    let events = collect(&mut rx, N, Duration::from_secs(60)).await;
    let first = revisions(&events)[0];
    assert_eq!(
        revisions(&events),
        (first..first + N as i64).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    let keys: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned())
        .collect();
    assert_eq!(
        keys,
        (0..N).map(|i| format!("s/{i:05}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn idle_watches_get_progress_notifications_and_progress_requests_an_answer() {
    let cluster = Cluster::start_args(
        1,
        &["--experimental-watch-progress-notify-interval", "300ms"],
    );
    cluster.wait_for_leader(SECS_10).await;
    let addr = cluster.addr(1);
    let mut kv = KvClient::new(common::channel(&addr));
    kv.put(put("p", "1")).await.unwrap();
    let (tx, mut rx) = open(&addr).await;
    let mut notify = create("p", &[], 0, 5);
    if let Some(RequestUnion::CreateRequest(c)) = &mut notify.request_union {
        c.progress_notify = true;
    }
    tx.send(notify).await.unwrap();
    tx.send(create("q", &[], 0, 6)).await.unwrap();
    assert!(next(&mut rx).await.created);
    assert!(next(&mut rx).await.created);
    // Within a few intervals: an empty response to watch 5 (only: 6 did not ask), at the
    // current revision.
    let r = next(&mut rx).await;
    assert_eq!(
        (r.watch_id, r.events.len(), r.created, r.canceled),
        (5, 0, false, false)
    );
    assert_eq!(r.header.unwrap().revision, 2);
    // A progress request: watch id -1 and the revision every watch is caught up to.
    kv.put(put("q", "2")).await.unwrap();
    let r = next(&mut rx).await;
    assert_eq!((r.watch_id, r.events.len()), (6, 1));
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(Default::default())),
    })
    .await
    .unwrap();
    let r = loop {
        let r = next(&mut rx).await;
        if r.watch_id == -1 {
            break r;
        }
        assert_eq!(
            (r.watch_id, r.events.len()),
            (5, 0),
            "only notifications meanwhile"
        );
    };
    assert_eq!(r.header.unwrap().revision, 3);
    // Cancel: answered canceled.
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(
            kvstore::pb::etcd::etcdserverpb::WatchCancelRequest { watch_id: 6 },
        )),
    })
    .await
    .unwrap();
    let r = loop {
        let r = next(&mut rx).await;
        if r.watch_id == 6 {
            break r;
        }
    };
    assert!(r.canceled);
}

#[tokio::test]
async fn a_stream_refuses_watches_past_its_bound_and_empty_ranges() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(SECS_10).await;
    let (tx, mut rx) = open(&cluster.addr(1)).await;
    // etcd's empty range: an end at or before the key.
    tx.send(create("b", b"a", 0, 0)).await.unwrap();
    let r = next(&mut rx).await;
    assert_eq!(
        (r.watch_id, r.created, r.canceled, r.cancel_reason.as_str()),
        (-1, true, true, "mvcc: watcher range is empty")
    );
    const LIMIT: usize = 1024; // rpc::etcd::watch::MAX_WATCHERS_PER_STREAM
    let sender = tx.clone();
    tokio::spawn(async move {
        for i in 0..=LIMIT {
            sender
                .send(create(&format!("k{i}"), &[], 0, 0))
                .await
                .unwrap();
        }
    });
    for i in 0..LIMIT {
        let r = next(&mut rx).await;
        assert!(r.created && !r.canceled, "watch {i}: {r:?}");
    }
    let r = next(&mut rx).await;
    assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true));
    assert!(
        r.cancel_reason
            .contains("too many watches on this stream (limit 1024)"),
        "{}",
        r.cancel_reason
    );
}

#[tokio::test]
async fn open_watch_streams_do_not_hold_up_a_graceful_shutdown() {
    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader(SECS_10).await;
    let (tx, mut rx) = open(&cluster.addr(1)).await;
    tx.send(create("k", &[], 0, 0)).await.unwrap();
    assert!(next(&mut rx).await.created);
    let started = Instant::now();
    let status = cluster.terminate(1).await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an open watch stream delayed the exit by {:?}",
        started.elapsed()
    );
    // The stream ends (with "server stopped", or the connection closing).
    let end = tokio::time::timeout(SECS_10, rx.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
