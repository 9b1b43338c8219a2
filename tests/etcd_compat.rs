//! Differential tests of kvstore's etcd front end: the same etcdctl 3.4 script runs against a
//! real 3-node etcd 3.4 and against kvstore, and the outputs must agree field by field (ids
//! aside): same revisions, same versions, same errors. The harness proves itself first: two
//! fresh etcd clusters agree with each other, and the comparer reports a planted difference.
//!
//! Needs `etcd` and `etcdctl` on PATH (`.ci/run` installs Debian's etcd-server and
//! etcd-client): without them these tests skip with a message, and fail when `CI` is set.
// Integration tests may unwrap (STYLE.md §6); clippy's allow-unwrap-in-tests only covers
// #[test] functions, not the harness helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "etcd_compat/compare.rs"]
mod compare;
#[path = "etcd_compat/etcd.rs"]
mod etcd;
#[path = "etcd_compat/etcdctl.rs"]
mod etcdctl;
#[path = "etcd_compat/script.rs"]
mod script;
#[path = "etcd_compat/watch.rs"]
mod watch;

use std::time::Duration;

use serde_json::Value;

use common::{poll_until, Cluster};
use compare::compare;
use etcd::EtcdCluster;
use etcdctl::{cannot_run, etcdctl, missing_tool, run_script, Outcome, Step};

const SECS_10: Duration = Duration::from_secs(10);

/// Skips (or fails in CI) when etcd or etcdctl is missing; true when the test can run.
fn tools_present() -> bool {
    match missing_tool() {
        Some(why) => {
            cannot_run(&why);
            false
        }
        None => true,
    }
}

/// Checks the script against etcd's own answers: every step etcd should refuse was refused
/// with the expected line and every other step succeeded. Without this a script typo would
/// make both systems print the same usage error, and agreement would prove nothing.
fn assert_script_matches_etcd(steps: &[Step], outcomes: &[Outcome]) {
    for (step, outcome) in steps.iter().zip(outcomes) {
        match step.fails_with {
            None => assert!(
                outcome.code == 0,
                "etcd refused `{}`: {}",
                outcome.command,
                outcome.stderr
            ),
            Some(message) => {
                let said = format!("Error: {message}");
                assert!(
                    outcome.code != 0 && outcome.stderr.lines().any(|l| l.trim() == said),
                    "etcd did not answer `{}` with {said:?}: exit {}, stderr {}",
                    outcome.command,
                    outcome.code,
                    outcome.stderr
                );
            }
        }
    }
}

/// With `ETCD_COMPAT_DUMP` set, prints every step's normalised outcome (to read what the
/// script does, or to see a whole run when one step differs).
fn dump(name: &str, steps: &[Step], outcomes: &[Outcome]) {
    if std::env::var_os("ETCD_COMPAT_DUMP").is_none() {
        return;
    }
    for (i, (step, outcome)) in steps.iter().zip(outcomes).enumerate() {
        eprintln!(
            "{name} step {i} `{}`: {}",
            outcome.command,
            compare::normalise(step, outcome)
        );
    }
}

/// Runs `steps` against a follower of a fresh 3-member etcd cluster.
async fn run_on_fresh_etcd(steps: &[Step]) -> Vec<Outcome> {
    let etcd = EtcdCluster::start(3).await;
    run_script(steps, &[etcd.follower().await])
}

#[tokio::test]
async fn harness_etcd_vs_etcd() {
    if !tools_present() {
        return;
    }
    let steps = script::script();
    let left = run_on_fresh_etcd(&steps).await;
    let right = run_on_fresh_etcd(&steps).await;
    dump("etcd A", &steps, &left);
    dump("etcd B", &steps, &right);
    assert_script_matches_etcd(&steps, &left);
    if let Err(difference) = compare(&steps, ("etcd A", "etcd B"), &left, &right) {
        panic!("two etcd clusters disagree, so the normaliser is wrong: {difference}");
    }
}

/// A `get foo` answer of etcd's shape with one knob per field the comparer must watch.
fn get_outcome(member_id: u64, mod_revision: i64, value_b64: &str) -> Outcome {
    Outcome {
        command: "etcdctl get foo -w json".into(),
        code: 0,
        stdout: format!(
            "{{\"header\":{{\"cluster_id\":{member_id}1,\"member_id\":{member_id},\
             \"revision\":9,\"raft_term\":{member_id}}},\"kvs\":[{{\"key\":\"Zm9v\",\
             \"create_revision\":2,\"mod_revision\":{mod_revision},\"version\":2,\
             \"value\":\"{value_b64}\"}}],\"count\":1}}\n"
        ),
        stderr: String::new(),
    }
}

/// A refused `put big`, with etcdctl's retry log line (timestamp and client id vary).
fn refused_outcome(log_id: &str, error: &str) -> Outcome {
    Outcome {
        command: "etcdctl put big -w json".into(),
        code: 1,
        stdout: String::new(),
        stderr: format!(
            "{{\"level\":\"warn\",\"ts\":\"2026-12-07T12:28:44.229Z\",\"target\":\
             \"endpoint://client-{log_id}/127.0.0.1:23792\"}}\nError: {error}\n"
        ),
    }
}

#[test]
fn harness_catches_a_difference() {
    let steps = [Step::new("get foo -w json"), Step::new("put big -w json")];
    let too_large = "etcdserver: request is too large";
    let base = [get_outcome(11, 3, "YmFy"), refused_outcome("a1", too_large)];
    // Ids, terms and etcdctl's log lines differ between any two clusters: not a difference.
    let same = [get_outcome(22, 3, "YmFy"), refused_outcome("b2", too_large)];
    assert_eq!(compare(&steps, ("A", "B"), &base, &same), Ok(()));

    let cases = [
        (
            "a revision",
            [get_outcome(11, 4, "YmFy"), base[1].clone()],
            0,
            "stdout.kvs[0].mod_revision",
            "3",
            "4",
        ),
        (
            "a value (decoded from base64)",
            [get_outcome(11, 3, "YmF6"), base[1].clone()],
            0,
            "stdout.kvs[0].value",
            "\"bar\"",
            "\"baz\"",
        ),
        (
            "an error string",
            [
                base[0].clone(),
                refused_outcome("a1", "etcdserver: too large"),
            ],
            1,
            "stderr[0]",
            "\"Error: etcdserver: request is too large\"",
            "\"Error: etcdserver: too large\"",
        ),
        (
            "an exit status",
            [
                base[0].clone(),
                Outcome {
                    code: 2,
                    ..base[1].clone()
                },
            ],
            1,
            "exit",
            "1",
            "2",
        ),
    ];
    for (what, other, step, path, left, right) in cases {
        let difference = compare(&steps, ("A", "B"), &base, &other)
            .expect_err(&format!("the comparer must report {what}"));
        assert_eq!(
            (difference.step, difference.path.as_str()),
            (step, path),
            "{what}: {difference}"
        );
        assert_eq!(
            (difference.left.as_str(), difference.right.as_str()),
            (left, right),
            "{what}: {difference}"
        );
        assert!(difference.to_string().contains(&base[step].command));
    }

    // A shape comparison still sees a missing field and a different array length.
    let shape = [Step::new("member list -w json").shape()];
    let members = |json: &str| Outcome {
        command: "etcdctl member list -w json".into(),
        code: 0,
        stdout: json.into(),
        stderr: String::new(),
    };
    let two = members(r#"{"members":[{"name":"e1","clientURLs":["u"]},{"name":"e2"}]}"#);
    let other_names = members(r#"{"members":[{"name":"x","clientURLs":["v"]},{"name":"y"}]}"#);
    assert_eq!(
        compare(
            &shape,
            ("A", "B"),
            std::slice::from_ref(&two),
            &[other_names]
        ),
        Ok(())
    );
    let no_urls = members(r#"{"members":[{"name":"e1"},{"name":"e2"}]}"#);
    let difference =
        compare(&shape, ("A", "B"), std::slice::from_ref(&two), &[no_urls]).unwrap_err();
    assert_eq!(difference.path, "stdout.members[0].clientURLs");
    let one = members(r#"{"members":[{"name":"e1","clientURLs":["u"]}]}"#);
    let difference = compare(&shape, ("A", "B"), &[two], &[one]).unwrap_err();
    assert_eq!(difference.path, "stdout.members[1]");
}

/// Starts a 3-node kvstore cluster and returns it (keep it alive: dropping it kills the
/// nodes), the client address of a follower, and every node's client address.
async fn kvstore_cluster_endpoints() -> (Cluster, String, Vec<String>) {
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a 3-node cluster has followers");
    let endpoint = cluster.addr(follower);
    let all = cluster.endpoints();
    (cluster, endpoint, all)
}

#[tokio::test]
async fn kvstore_matches_etcd() {
    if !tools_present() {
        return;
    }
    let steps = script::script();
    let expected = run_on_fresh_etcd(&steps).await;
    assert_script_matches_etcd(&steps, &expected);
    let (_cluster, follower, _) = kvstore_cluster_endpoints().await;
    let actual = run_script(&steps, &[follower]);
    dump("etcd", &steps, &expected);
    dump("kvstore", &steps, &actual);
    if let Err(difference) = compare(&steps, ("etcd", "kvstore"), &expected, &actual) {
        panic!("kvstore differs from etcd: {difference}");
    }
}

/// `etcdctl ARGS` against `endpoints`, with `stdin`.
fn run(endpoints: &[String], args: &str, stdin: Option<&str>) -> Outcome {
    let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    etcdctl(endpoints, &args, stdin.map(str::as_bytes)).expect("etcdctl is installed")
}

/// Runs `args` and requires success with exactly `stdout` (trimmed).
fn expect_output(endpoints: &[String], args: &str, stdin: Option<&str>, stdout: &str) {
    let outcome = run(endpoints, args, stdin);
    assert_eq!(
        (outcome.code, outcome.stdout.trim()),
        (0, stdout),
        "`{}` (stderr: {})",
        outcome.command,
        outcome.stderr
    );
}

/// Runs `args` and parses its `-w json` output, requiring success.
fn json(endpoints: &[String], args: &str) -> Value {
    let outcome = run(endpoints, args, None);
    assert_eq!(outcome.code, 0, "`{}`: {}", outcome.command, outcome.stderr);
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` printed no JSON ({e}): {}",
            outcome.command, outcome.stdout
        )
    })
}

/// `(leader id, member ids)` from `endpoint status` over every endpoint, once every member
/// answers and they all name the same leader.
fn agreed_leader(all: &[String]) -> Option<(u64, Vec<u64>)> {
    let outcome = run(all, "endpoint status -w json", None);
    let statuses: Value = serde_json::from_str(&outcome.stdout).ok()?;
    let statuses = statuses.as_array()?;
    let mut leaders = Vec::new();
    let mut members = Vec::new();
    for status in statuses {
        members.push(status.pointer("/Status/header/member_id")?.as_u64()?);
        leaders.push(status.pointer("/Status/leader")?.as_u64()?);
    }
    let leader = *leaders.first()?;
    let marked = members.iter().filter(|&&m| m == leader).count();
    (statuses.len() == all.len()
        && leader != 0
        && leaders.iter().all(|&l| l == leader)
        && marked == 1)
        .then_some((leader, members))
}

/// The etcdctl session of the issue, against `follower` (and, for the cluster-wide commands,
/// `all` endpoints), asserting on what etcdctl prints.
async fn etcdctl_session(follower: &str, all: &[String]) {
    let at = &[follower.to_string()];
    expect_output(at, "put a 1", None, "OK");
    expect_output(at, "get a", None, "a\n1");
    expect_output(at, "put a 2", None, "OK");
    expect_output(at, "get a --print-value-only", None, "2");
    expect_output(at, "put a/1 x", None, "OK");
    expect_output(at, "put a/2 y", None, "OK");
    expect_output(at, "get a/ --prefix", None, "a/1\nx\na/2\ny");
    expect_output(at, "del a/1", None, "1");
    expect_output(at, "del a/1", None, "0");
    expect_output(at, "del a/ --prefix", None, "1");
    // Txn: the success branch, then the failure branch.
    let txn = "value(\"a\") = \"2\"\n\nput a 3\n\nput a failed\n\n";
    expect_output(at, "txn", Some(txn), "SUCCESS\n\nOK");
    expect_output(at, "txn", Some(txn), "FAILURE\n\nOK");
    expect_output(at, "get a --print-value-only", None, "failed");
    // Compaction, then a read below it.
    let revision = json(at, "get a -w json")["header"]["revision"]
        .as_i64()
        .expect("a header revision");
    expect_output(
        at,
        &format!("compaction {revision}"),
        None,
        &format!("compacted revision {revision}"),
    );
    let below = run(at, "get a --rev 1", None);
    assert!(
        below.code != 0
            && below
                .stderr
                .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "a read below the compaction is refused: exit {}: {}",
        below.code,
        below.stderr
    );
    // The cluster: endpoint status marks one leader, the member list has 3 started members.
    let (leader, ids) = agreed_leader(all).expect("every member names the same single leader");
    let members = json(at, "member list -w json");
    let members = members["members"].as_array().expect("a member list");
    assert_eq!(members.len(), 3, "member list: {members:?}");
    for member in members {
        assert!(
            member["name"].as_str().is_some_and(|n| !n.is_empty())
                && member["clientURLs"]
                    .as_array()
                    .is_some_and(|u| !u.is_empty())
                && member["peerURLs"].as_array().is_some_and(|u| !u.is_empty())
                && !member["isLearner"].as_bool().unwrap_or(false),
            "member list entry: {member}"
        );
    }
    // move-leader (etcdctl sends it to the leader, found among the endpoints given) to a
    // follower: it succeeds and every member then names the new leader.
    let target = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let moved = run(all, &format!("move-leader {target:x}"), None);
    assert!(
        moved.code == 0 && moved.stdout.contains("Leadership transferred"),
        "move-leader: exit {}: {}{}",
        moved.code,
        moved.stdout,
        moved.stderr
    );
    poll_until(SECS_10, "every member to name the new leader", async || {
        agreed_leader(all).filter(|(now, _)| *now == target)
    })
    .await;
    expect_output(at, "get a --print-value-only", None, "failed");
}

#[tokio::test]
async fn etcdctl_session_against_an_etcd_follower() {
    // The session's expectations are etcd's behaviour: proven here against etcd itself.
    if !tools_present() {
        return;
    }
    let etcd = EtcdCluster::start(3).await;
    etcdctl_session(&etcd.follower().await, &etcd.endpoints()).await;
}

#[tokio::test]
async fn etcdctl_against_a_kvstore_follower() {
    if !tools_present() {
        return;
    }
    let (_cluster, follower, all) = kvstore_cluster_endpoints().await;
    etcdctl_session(&follower, &all).await;
}

#[tokio::test]
async fn kvstore_watch_output_matches_etcd() {
    if !tools_present() {
        return;
    }
    let history = script::watch_history();
    let etcd = EtcdCluster::start(3).await;
    let etcd_ep = etcd.follower().await;
    let written = run_script(&history, std::slice::from_ref(&etcd_ep));
    assert_script_matches_etcd(&history, &written);
    let (_cluster, follower, _) = kvstore_cluster_endpoints().await;
    let written = run_script(&history, std::slice::from_ref(&follower));
    assert_script_matches_etcd(&history, &written);
    for args in script::WATCHES {
        let expected = watch::watch(&etcd_ep, args, None, Duration::from_secs(2));
        // The comparison proves something only where etcd printed something.
        let compacted = args.contains("--rev 2 ");
        let future = args.contains("--rev 100");
        assert_eq!(
            (expected.stdout.is_empty(), expected.canceled.is_empty()),
            (compacted || future, !compacted),
            "etcd's own output for watch {args}: {expected:?}"
        );
        let actual = watch::watch(
            &follower,
            args,
            Some(expected.stdout.len()),
            Duration::from_secs(2),
        );
        assert_eq!(
            actual, expected,
            "etcdctl watch {args}: kvstore (left) vs etcd (right)"
        );
    }
}
