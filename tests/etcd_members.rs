//! etcd's Cluster service through the real etcdctl 3.4 against a 3-node kvstore (issue 15):
//! `member add --learner` (the member listed unstarted, then started once it runs with
//! `--join`), `member promote` once it caught up, `member update`, leadership moved to the
//! joined member (a follower started with `--peers` forwards a put to it), `member remove` of
//! an original member; and the refusals, with etcd's error lines, first checked against a
//! real 3-member etcd 3.4 (ids differ, so the lines are compared with the ids left out).
//!
//! Needs `etcdctl` (and `etcd` for the differential part) on PATH; without them these tests
//! skip with a message, and fail when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "etcd_compat/etcd.rs"]
#[allow(dead_code)]
mod etcd;
#[path = "etcd_compat/etcdctl.rs"]
#[allow(dead_code)] // the script runner is the differential test's
mod etcdctl;

use std::time::Duration;

use serde_json::Value;

use common::{free_port, kvctl, poll_until, Cluster};
use etcd::EtcdCluster;
use etcdctl::{cannot_run, etcdctl, missing_tool, Outcome};

const SECS_10: Duration = Duration::from_secs(10);
const SECS_30: Duration = Duration::from_secs(30);

/// Runs etcdctl with `args` (split on spaces) against `endpoints`.
fn ctl(endpoints: &[String], args: &str) -> Outcome {
    let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    etcdctl(endpoints, &args, None).unwrap()
}

/// Runs etcdctl and asserts it succeeded; its stdout.
fn ok(endpoints: &[String], args: &str) -> String {
    let out = ctl(endpoints, args);
    assert_eq!(out.code, 0, "`{}` failed: {}", out.command, out.stderr);
    out.stdout
}

/// Runs etcdctl and asserts it failed; the last line of its stderr (the `Error:` line;
/// clientv3 logs its retries above it).
fn fails(endpoints: &[String], args: &str) -> String {
    let out = ctl(endpoints, args);
    assert_ne!(out.code, 0, "`{}` succeeded: {}", out.command, out.stdout);
    out.stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// `member list -w json`'s members.
fn members(endpoints: &[String]) -> Vec<Value> {
    let out: Value = serde_json::from_str(&ok(endpoints, "-w json member list")).unwrap();
    out["members"].as_array().cloned().unwrap_or_default()
}

/// The member with id `id` in `members`.
fn member(members: &[Value], id: u64) -> Option<&Value> {
    members.iter().find(|m| m["ID"].as_u64() == Some(id))
}

/// The error lines of the refusals the test checks, against a cluster whose `endpoints` are
/// given: remove of an unknown id, promote of a voter, add of a peer URL a member has.
async fn refusals(endpoints: &[String]) -> Vec<String> {
    let list = members(endpoints);
    let voter = list
        .iter()
        .find(|m| m["isLearner"].as_bool() != Some(true))
        .unwrap();
    let voter_id = voter["ID"].as_u64().unwrap();
    let taken = voter["peerURLs"][0].as_str().unwrap();
    vec![
        fails(endpoints, "member remove 7a7a7a7a"),
        fails(endpoints, &format!("member promote {voter_id:x}")),
        // etcd refuses any add as "unhealthy cluster" until its members have been connected
        // for 5 s; kvstore has no such wait.
        poll_until(
            SECS_30,
            "a refusal other than unhealthy cluster",
            async || {
                let line = fails(
                    endpoints,
                    &format!("member add again --learner --peer-urls {taken}"),
                );
                (!line.ends_with("unhealthy cluster")).then_some(line)
            },
        )
        .await,
    ]
}

const EXPECTED_REFUSALS: [&str; 3] = [
    "Error: etcdserver: member not found",
    "Error: etcdserver: can only promote a learner member",
    "Error: etcdserver: Peer URLs already exists",
];

fn tools_present(with_etcd: bool) -> bool {
    if with_etcd {
        if let Some(why) = missing_tool() {
            cannot_run(&why);
            return false;
        }
    } else if etcdctl(&[], &["version".to_string()], None).is_none() {
        cannot_run("etcdctl is not installed (Debian package etcd-client)");
        return false;
    }
    true
}

/// The same refusals on a real etcd 3.4 and on kvstore: the same error lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_a_real_etcd() {
    if !tools_present(true) {
        return;
    }
    let etcd = EtcdCluster::start(3).await;
    let from_etcd = refusals(&[etcd.follower().await]).await;
    assert_eq!(from_etcd, EXPECTED_REFUSALS, "etcd 3.4 itself");
    drop(etcd);
    let cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    assert_eq!(
        refusals(&[cluster.addr(follower)]).await,
        from_etcd,
        "kvstore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_adds_a_learner_promotes_updates_and_removes_members() {
    if !tools_present(false) {
        return;
    }
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    // Every command goes to one follower: the changes are forwarded to the leader.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let at_follower = vec![cluster.addr(follower)];
    ok(&at_follower, "put before-the-change 1");

    // Add a learner: etcdctl names the new id (in hex) and the settings to start it with.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = ok(
        &at_follower,
        &format!("member add n4 --learner --peer-urls {url}"),
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], "Member", "{out}");
    let id = u64::from_str_radix(words[1], 16).unwrap();
    assert_eq!(id, 4, "the next id: {out}");
    assert!(out.contains("added to cluster"), "{out}");
    assert!(out.contains(&format!("n4={url}")), "{out}");
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );

    // Listed as an unstarted learner (etcd: no name, no client URLs until it starts).
    let list = members(&at_follower);
    assert_eq!(list.len(), 4, "{list:?}");
    let new = member(&list, id).unwrap();
    assert_eq!(new["isLearner"], Value::Bool(true), "{new}");
    assert_eq!(new["peerURLs"][0].as_str(), Some(url.as_str()), "{new}");
    assert!(new.get("name").is_none_or(|n| n == ""), "unstarted: {new}");
    assert!(new.get("clientURLs").is_none(), "unstarted: {new}");
    let table = ok(&at_follower, "member list");
    assert!(
        table
            .lines()
            .any(|l| l == format!("4, unstarted, , {url}, , true")),
        "{table}"
    );
    // Original members stay voters with their names.
    for original in 1..=3 {
        let m = member(&list, original).unwrap();
        assert_eq!(m["isLearner"].as_bool(), None, "{m}");
        assert_eq!(
            m["name"].as_str(),
            Some(format!("node-{original}").as_str())
        );
    }

    // Start it with --join; once the leader hears from it, it is listed as started.
    let joined = cluster.add_joining(port, &cluster.addr(leader));
    assert_eq!(joined, id);
    let line = format!("4, started, node-4, {url}, 127.0.0.1:{port}, true");
    poll_until(SECS_30, "the learner listed as started", async || {
        let table = ok(&at_follower, "member list");
        table.lines().any(|l| l == line).then_some(())
    })
    .await;

    // `kvctl status` shows it as a learner, with how far behind it is as the leader knows.
    poll_until(
        SECS_30,
        "kvctl status to show the learner's lag",
        async || {
            let (code, out, _) = kvctl(&cluster, &["status"]);
            assert_eq!(code, 0, "{out}");
            let row: Vec<String> = out
                .lines()
                .find(|l| l.starts_with("4 "))?
                .split_whitespace()
                .map(str::to_string)
                .collect();
            (row[7] == "learner" && row[8].parse::<u64>().is_ok()).then_some(())
        },
    )
    .await;

    // Its own endpoint status says it is a learner; a voter's does not.
    let is_learner = |id: u64| {
        let out: Value =
            serde_json::from_str(&ok(&[cluster.addr(id)], "-w json endpoint status")).unwrap();
        out[0]["Status"]["isLearner"].as_bool().unwrap_or(false)
    };
    assert!(is_learner(4));
    assert!(!is_learner(follower));

    // Promote it once it caught up.
    poll_until(SECS_30, "the promotion", async || {
        let out = ctl(&at_follower, "member promote 4");
        if out.code != 0 {
            assert!(
                out.stderr.contains("in sync with leader") || out.stderr.contains("etcdserver"),
                "{}",
                out.stderr
            );
        }
        (out.code == 0).then_some(out.stdout)
    })
    .await;
    let list = members(&at_follower);
    assert_eq!(member(&list, 4).unwrap()["isLearner"].as_bool(), None);
    assert!(!is_learner(4), "promoted");
    assert_eq!(
        fails(&at_follower, "member promote 4"),
        "Error: etcdserver: can only promote a learner member"
    );

    // Update: to the address it has (etcd accepts it); to one another member has, refused.
    let out = ok(&at_follower, &format!("member update 4 --peer-urls={url}"));
    assert!(out.starts_with("Member"), "{out}");
    assert!(out.contains("updated in cluster"), "{out}");
    let taken = format!("http://{}", cluster.addr(1));
    assert_eq!(
        fails(
            &at_follower,
            &format!("member update 4 --peer-urls={taken}")
        ),
        "Error: etcdserver: Peer URLs already exists"
    );
    // Two peer URLs: kvstore members have one.
    let two = fails(
        &at_follower,
        &format!("member update 4 --peer-urls={url},http://127.0.0.1:1"),
    );
    assert!(two.contains("exactly one peer URL"), "{two}");

    // Move leadership to the joined member; a member started with --peers (which do not
    // name node 4) forwards a put to it through the membership's address.
    let all = cluster.endpoints();
    poll_until(SECS_30, "node 4 leads", async || {
        let _ = ctl(&all, "move-leader 4");
        let (leader, _) = cluster.wait_for_leader(SECS_10).await;
        (leader == 4).then_some(())
    })
    .await;
    let at_1 = vec![cluster.addr(1)];
    ok(&at_1, "put forwarded-to-4 yes");
    let got: Value = serde_json::from_str(&ok(
        &[cluster.addr(4)],
        "-w json get forwarded-to-4 --consistency=s",
    ))
    .unwrap();
    assert_eq!(got["count"].as_i64(), Some(1), "{got}");
    let header_member = got["header"]["member_id"].as_u64();
    assert_eq!(header_member, Some(4));
    let at_1: Value =
        serde_json::from_str(&ok(&at_1, "-w json get forwarded-to-4 --consistency=s")).unwrap();
    assert_eq!(
        got["header"]["cluster_id"], at_1["header"]["cluster_id"],
        "the joined member answers with the cluster's id"
    );
    let at_1 = vec![cluster.addr(1)];

    // Remove an original member, through another one.
    let out = ok(&at_1, "member remove 2");
    assert!(out.starts_with("Member"), "{out}");
    assert!(out.contains("removed from cluster"), "{out}");
    let status = cluster.wait_for_exit(2, SECS_10).await;
    assert!(!status.success(), "a removed node exits non-zero");
    let list = members(&at_1);
    let ids: Vec<u64> = list.iter().map(|m| m["ID"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 3, 4], "{list:?}");
    assert_eq!(
        fails(&at_1, "member remove 2"),
        "Error: etcdserver: member not found"
    );
    ok(&at_1, "put after-the-change 1");
}
