//! Issue 15 on the real binary under load: a cluster grows from 3 to 5 voters and shrinks
//! back while clients write (the leader removed on the way), a SIGKILLed node is replaced by
//! a new one that catches up through a snapshot, a learner catches up over a log of values
//! at the value size limit, and a bad `--join` is refused at start in one line. Every
//! acknowledged write reads back on the final members, and the clients' histories are checked
//! for linearizability with the same checker the simulator and the chaos runner use.

// Integration tests may unwrap (STYLE.md §6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, has, kvctl, poll_until, terms, Cluster};
use kvstore::client::{Client, ClientOptions, Consistency};
use kvstore::lincheck::{self, Op, OpKind, OpResult};
use kvstore::rpc::kv_service::MAX_VALUE_BYTES;

const REMOVED_LINE: &str = "this node was removed from the cluster";
/// What a node that installs the leader's snapshot logs (src/raft/core/snapshot.rs).
const INSTALLED_LINE: &str = "installing snapshot from the leader";

/// A client over `endpoints` with a 10 s bound per call (retries included).
fn client_over(endpoints: &[String]) -> Client {
    Client::with_options(
        endpoints.to_vec(),
        ClientOptions::with_timeout(Duration::from_secs(10)),
    )
    .unwrap()
}

/// Microseconds since `origin`: the clock every history shares.
fn micros(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// Keys every writer also overwrites (and reads), so that histories constrain each other.
const SHARED_KEYS: u64 = 4;

/// Client tasks writing until told to stop, each recording its history.
struct Load {
    stop: Arc<AtomicBool>,
    /// Acknowledged writes so far, all writers together.
    acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
    origin: Instant,
}

impl Load {
    /// Starts `writers` tasks over `endpoints`. Writer `c`'s `i`-th step puts the distinct key
    /// `c<c>/<i>` = `v<c>.<i>`, and every third step also puts `shared<i % 4>` (a value unique
    /// to the writer and step) or reads it linearizably.
    fn start(writers: u64, endpoints: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let tasks = (0..writers)
            .map(|c| {
                let stop = stop.clone();
                let acked = acked.clone();
                let mut client = client_over(endpoints);
                tokio::spawn(async move {
                    let mut history = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("c{c}/{i}"), format!("v{c}.{i}"));
                        if put(&mut client, c, &key, &value, origin, &mut history).await {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        if i.is_multiple_of(3) {
                            let shared = format!("shared{}", i % SHARED_KEYS);
                            if i.is_multiple_of(2) {
                                put(&mut client, c, &shared, &value, origin, &mut history).await;
                            } else {
                                get(&mut client, c, &shared, origin, &mut history).await;
                            }
                        }
                        i += 1;
                        // Pacing only: 2 cores run five debug nodes and the test.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    history
                })
            })
            .collect();
        Load {
            stop,
            acked,
            tasks,
            origin,
        }
    }

    /// Waits (up to 20 s) until the writers have acknowledged `n` more writes: the clients
    /// go on through whatever membership change came before.
    async fn progress(&self, n: u64, after: &str) {
        let target = self.acked.load(Ordering::Relaxed) + n;
        poll_until(
            Duration::from_secs(20),
            &format!("{n} more acknowledged writes after {after}"),
            async || (self.acked.load(Ordering::Relaxed) >= target).then_some(()),
        )
        .await;
    }

    /// Stops the writers and returns their histories, joined.
    async fn finish(self) -> (Vec<Op>, Instant) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        (all, self.origin)
    }
}

/// Puts `key` = `value` and records it; a failure is recorded as an unknown outcome.
/// Returns whether it was acknowledged.
async fn put(
    client: &mut Client,
    who: u64,
    key: &str,
    value: &str,
    origin: Instant,
    history: &mut Vec<Op>,
) -> bool {
    let invoke = micros(origin);
    let ok = client.put(key, value).await.is_ok();
    history.push(Op {
        client: who,
        key: key.to_string(),
        kind: OpKind::Put(value.to_string()),
        invoke,
        complete: ok.then(|| micros(origin)),
        result: ok.then_some(OpResult::Put),
    });
    ok
}

/// Reads `key` linearizably and records it (a failed read constrains nothing).
async fn get(client: &mut Client, who: u64, key: &str, origin: Instant, history: &mut Vec<Op>) {
    let invoke = micros(origin);
    let result = client.get(key, Consistency::Linearizable).await;
    let complete = micros(origin);
    history.push(Op {
        client: who,
        key: key.to_string(),
        kind: OpKind::Get,
        invoke,
        complete: result.is_ok().then_some(complete),
        result: result.ok().map(|r| OpResult::Get(r.value)),
    });
}

/// After the load: reads every key of `history` linearizably through `endpoints` (adding the
/// reads to the history), checks the whole history is linearizable, that every acknowledged
/// put of a distinct key reads back, and that each final member `ids` serves those values.
async fn verify(
    cluster: &Cluster,
    ids: &[u64],
    endpoints: &[String],
    history: Vec<Op>,
    origin: Instant,
) {
    let mut history = history;
    let acked: Vec<(String, String)> = history
        .iter()
        .filter(|op| op.result == Some(OpResult::Put) && !op.key.starts_with("shared"))
        .map(|op| match &op.kind {
            OpKind::Put(v) => (op.key.clone(), v.clone()),
            _ => unreachable!(),
        })
        .collect();
    let unknown = history.iter().filter(|op| op.complete.is_none()).count();
    assert!(
        acked.len() >= 30,
        "the load made too little progress: {} acknowledged puts",
        acked.len()
    );
    let mut keys: Vec<String> = history.iter().map(|op| op.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let mut reader = client_over(endpoints);
    for key in &keys {
        let invoke = micros(origin);
        let value = reader
            .get(key, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("final read of {key}: {e}"))
            .value;
        history.push(Op {
            client: 999,
            key: key.clone(),
            kind: OpKind::Get,
            invoke,
            complete: Some(micros(origin)),
            result: Some(OpResult::Get(value.clone())),
        });
    }
    for (key, value) in &acked {
        let read = history
            .iter()
            .rev()
            .find(|op| op.client == 999 && &op.key == key)
            .and_then(|op| op.result.clone());
        assert_eq!(
            read,
            Some(OpResult::Get(Some(value.clone()))),
            "acknowledged write {key} = {value} does not read back"
        );
    }
    if let Err(violation) = lincheck::check(&history) {
        panic!("{violation}");
    }
    eprintln!(
        "{} ops ({} acknowledged distinct puts, {unknown} unknown outcomes) linearizable",
        history.len(),
        acked.len()
    );
    for &id in ids {
        for (key, value) in &acked {
            poll_until(
                Duration::from_secs(10),
                &format!("{key} on node {id}"),
                async || has(cluster, id, key, value).await.then_some(()),
            )
            .await;
        }
    }
}

/// Adds a learner at a new port through kvctl, starts it with `--join`, waits until it has
/// applied what the leader had committed when it started, and promotes it; returns its id.
async fn add_and_promote(cluster: &mut Cluster, port: u16) -> u64 {
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = kvctl(cluster, &["member", "add", &addr, "--learner"]);
    assert_eq!(code, 0, "member add failed: {err}");
    let id: u64 = out
        .trim()
        .strip_prefix("added member ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("unexpected member add output: {out}"));
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let joined = cluster.add_joining(port, &cluster.addr(leader));
    assert_eq!(
        joined, id,
        "the harness and the cluster agree on the new id"
    );
    let target = cluster.status(leader).await.unwrap().commit_index;
    poll_until(
        Duration::from_secs(30),
        &format!("learner {id} to apply index {target}"),
        async || {
            let s = cluster.status(id).await.ok()?;
            (s.last_applied >= target).then_some(())
        },
    )
    .await;
    poll_until(Duration::from_secs(15), "the promotion", async || {
        let (code, out, _) = kvctl(cluster, &["member", "promote", &id.to_string()]);
        (code == 0 && out.contains(&format!("promoted member {id}"))).then_some(())
    })
    .await;
    id
}

/// Removes member `id` with kvctl and waits for it to stop with the removal line.
async fn remove(cluster: &mut Cluster, id: u64) {
    let (code, out, err) = kvctl(cluster, &["member", "remove", &id.to_string()]);
    assert_eq!(code, 0, "member remove {id} failed: {err}");
    assert_eq!(out.trim(), format!("removed member {id}"));
    let status = cluster.wait_for_exit(id, Duration::from_secs(15)).await;
    assert!(!status.success(), "a removed node exits non-zero");
    assert!(
        cluster.log(id).contains(REMOVED_LINE),
        "node {id} says why it stopped"
    );
    assert!(!cluster.log(id).contains("panicked"));
}

/// The voters listed by `kvctl member list -w json`.
fn voters(cluster: &Cluster) -> usize {
    let (code, out, err) = kvctl(cluster, &["member", "list", "-w", "json"]);
    assert_eq!(code, 0, "{err}");
    out.matches("\"role\":\"voter\"").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_three_to_five_and_shrink_back_under_write_load() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let (p4, p5) = (free_port(), free_port());
    let mut endpoints = cluster.endpoints();
    endpoints.extend([format!("127.0.0.1:{p4}"), format!("127.0.0.1:{p5}")]);
    let load = Load::start(3, &endpoints);
    load.progress(10, "the start").await;

    assert_eq!(add_and_promote(&mut cluster, p4).await, 4);
    load.progress(10, "node 4's promotion").await;
    assert_eq!(add_and_promote(&mut cluster, p5).await, 5);
    load.progress(10, "node 5's promotion").await;
    assert_eq!(voters(&cluster), 5);

    // Remove the leader (an original member: hand leadership to one first if need be), then
    // another original member.
    let (mut leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    if leader > 3 {
        let (code, _, err) = kvctl(&cluster, &["transfer-leader", "1"]);
        assert_eq!(code, 0, "transfer-leader failed: {err}");
        leader = cluster.wait_for_leader(Duration::from_secs(10)).await.0;
    }
    assert!(leader <= 3);
    remove(&mut cluster, leader).await;
    let (next, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(next, leader);
    load.progress(10, "the leader's removal").await;
    let other = (1..=3).find(|&id| id != leader && id != next).unwrap();
    remove(&mut cluster, other).await;
    assert_eq!(voters(&cluster), 3);

    // The clients keep going on the shrunk cluster.
    load.progress(20, "the shrink back to 3").await;
    let final_ids: Vec<u64> = (1..=5).filter(|&id| id != leader && id != other).collect();
    let (history, origin) = load.finish().await;
    let final_endpoints: Vec<String> = final_ids.iter().map(|&id| cluster.addr(id)).collect();
    verify(&cluster, &final_ids, &final_endpoints, history, origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_is_replaced_by_a_new_one_that_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start_args(3, &["--snapshot-entries", "20"]);
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let port = free_port();
    let mut endpoints = cluster.endpoints();
    endpoints.push(format!("127.0.0.1:{port}"));
    let load = Load::start(2, &endpoints);
    let mut client = client_over(&endpoints);
    for i in 0..60 {
        client.put(&format!("pre/{i}"), "x").await.unwrap();
    }

    // SIGKILL node 2; writes continue on the two others.
    cluster.kill(2);
    for i in 60..120 {
        client.put(&format!("pre/{i}"), "x").await.unwrap();
    }
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert!(
        cluster
            .log(leader)
            .contains("snapshot taken, log compacted"),
        "the leader compacted its log"
    );

    // The runbook: remove the dead member, add a new one at a new address and data dir.
    let (code, out, err) = kvctl(&cluster, &["member", "remove", "2"]);
    assert_eq!(code, 0, "member remove failed: {err}");
    assert_eq!(out.trim(), "removed member 2");
    let id = add_and_promote(&mut cluster, port).await;
    assert_eq!(id, 4, "ids are never reused");
    assert!(
        cluster.log(4).contains(INSTALLED_LINE),
        "the new node caught up through the leader's snapshot"
    );
    for i in 120..150 {
        client.put(&format!("pre/{i}"), "x").await.unwrap();
    }
    assert_eq!(voters(&cluster), 3);

    // Node 2 restarted on its old data dir is refused, and stops, without moving any term.
    let before = terms(&cluster, &[1, 3, 4]).await;
    cluster.restart(2);
    let status = cluster.wait_for_exit(2, Duration::from_secs(15)).await;
    assert!(!status.success());
    assert!(cluster.log_since_start(2).contains(REMOVED_LINE));
    assert!(!cluster.log_since_start(2).contains("panicked"));
    assert_eq!(
        terms(&cluster, &[1, 3, 4]).await,
        before,
        "node 2 disturbed no member"
    );

    let (mut history, origin) = load.finish().await;
    // The sequential writes above, as history too (all acknowledged).
    history.extend((0..150).map(|i| Op {
        client: 100,
        key: format!("pre/{i}"),
        kind: OpKind::Put("x".into()),
        invoke: 0,
        complete: Some(micros(origin)),
        result: Some(OpResult::Put),
    }));
    let final_endpoints: Vec<String> = [1, 3, 4].iter().map(|&id| cluster.addr(id)).collect();
    verify(&cluster, &[1, 3, 4], &final_endpoints, history, origin).await;
}

/// Issue 11's transport defect, now with a learner: six 1 MiB entries do not fit one
/// AppendEntries. Checked to fail with the leader's byte cap removed (the `limit_size` call in
/// `RaftCore`'s append path): the learner never applies the entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_over_values_at_the_size_limit() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    // Each value as large as a put may hold (1 MiB): six of them do not fit one append batch.
    let size = MAX_VALUE_BYTES;
    let big = |i: usize| format!("{i:02}").repeat(size / 2);
    for i in 0..6 {
        client.put(&format!("big/{i}"), &big(i)).await.unwrap();
    }
    client.put("small", "after").await.unwrap();
    let id = add_and_promote(&mut cluster, free_port()).await;
    for i in 0..6 {
        let got = cluster
            .client_for(id)
            .get(&format!("big/{i}"), Consistency::Serializable)
            .await
            .unwrap()
            .value
            .unwrap_or_default();
        assert!(
            got == big(i),
            "node {id} has big/{i} wrong: {} bytes",
            got.len()
        );
    }
    assert!(has(&cluster, id, "small", "after").await);
    assert!(!cluster.log(id).contains("panicked"));
}

/// Runs `kvstore` with `args` (and a fresh data dir) and waits up to `deadline` for it to
/// exit; returns (exit code, everything it printed).
fn run_kvstore(args: &[&str], deadline: Duration) -> (i32, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(["--host", "127.0.0.1", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvstore {args:?} still runs after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Asserts a refused start: non-zero, no panic, and a `kvstore: ` line containing `fragment`.
fn assert_refused(code: i32, out: &str, fragment: &str) {
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("kvstore: ") && l.contains(fragment)),
        "no line `kvstore: ...{fragment}...` in:\n{out}"
    );
}

/// Starts `kvstore --id ID --port PORT --join JOIN` (and `extra`), expects it refused with
/// `fragment` within `deadline`, and returns everything it printed.
fn join_refused(
    id: &str,
    port: &str,
    join: &str,
    extra: &[&str],
    deadline: Duration,
    fragment: &str,
) -> String {
    let mut args = vec!["--id", id, "--port", port, "--join", join];
    args.extend_from_slice(extra);
    let (code, out) = run_kvstore(&args, deadline);
    assert_refused(code, &out, fragment);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_join_is_refused_at_start_in_one_line() {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let join = cluster.addr(leader);
    let port = free_port().to_string();
    let bound = Duration::from_secs(15);

    // --join with --peers: refused before anything starts.
    join_refused(
        "4",
        &port,
        &join,
        &["--peers", "1=127.0.0.1:1"],
        bound,
        "--join and --peers exclude each other",
    );

    // An id the cluster did not add.
    let out = join_refused(
        "9",
        &port,
        &join,
        &[],
        bound,
        "node 9 is not a member of the cluster at",
    );
    assert_refused(
        1,
        &out,
        &format!("add it first with `kvctl member add 127.0.0.1:{port}`"),
    );

    // Added, but at another address than the one it listens on.
    let elsewhere = format!("127.0.0.1:{}", free_port());
    let (c, _, err) = kvctl(&cluster, &["member", "add", &elsewhere, "--learner"]);
    assert_eq!(c, 0, "{err}");
    let fragment = format!(
        "the cluster at {join} has node 4 at {elsewhere}, but this node listens on 127.0.0.1:{port}"
    );
    join_refused("4", &port, &join, &[], bound, &fragment);

    // A removed id.
    let (c, _, err) = kvctl(&cluster, &["member", "remove", "4"]);
    assert_eq!(c, 0, "{err}");
    join_refused(
        "4",
        &port,
        &join,
        &[],
        bound,
        "node 4 was removed from the cluster at",
    );

    // Nothing listens at --join: refused after the bounded wait (JOIN_TIMEOUT, 30 s).
    let nobody = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let fragment = format!("no answer from the member at --join {nobody} within 30 s");
    join_refused("5", &port, &nobody, &[], Duration::from_secs(45), &fragment);
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "the wait is bounded, not skipped"
    );
}
