//! etcd's leases on keys through the real etcdctl 3.4 against a 3-node kvstore: grant, put
//! with a lease, keep-alive (the etcdctl process running in the background), timetolive with
//! keys, list and revoke, every command sent to followers; a lease left alone expires within
//! its TTL plus a bound, and a lease kept alive outlives a SIGKILLed leader (the new leader
//! gives it its full TTL, never less).
//!
//! Needs `etcdctl` on PATH; without it these tests skip with a message, and fail when `CI`
//! is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "etcd_compat/etcdctl.rs"]
#[allow(dead_code)] // the script runner is the differential test's
mod etcdctl;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{poll_until, Cluster};
use etcdctl::{cannot_run, etcdctl, Outcome};

const SECS_10: Duration = Duration::from_secs(10);

/// Runs etcdctl with `args` (split on spaces) against `endpoints`; `None` if it is missing.
fn ctl(endpoints: &[String], args: &str) -> Option<Outcome> {
    let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    etcdctl(endpoints, &args, None)
}

/// Runs etcdctl and asserts it succeeded; its stdout.
fn ok(endpoints: &[String], args: &str) -> String {
    let out = ctl(endpoints, args).unwrap();
    assert_eq!(out.code, 0, "`{}` failed: {}", out.command, out.stderr);
    out.stdout
}

fn json(endpoints: &[String], args: &str) -> Value {
    serde_json::from_str(&ok(endpoints, &format!("-w json {args}"))).unwrap()
}

/// `lease grant TTL`: the new lease's id in hex, as etcdctl prints and takes it.
fn grant(endpoints: &[String], ttl: u64) -> String {
    let out = ok(endpoints, &format!("lease grant {ttl}"));
    // "lease 0000000000000002 granted with TTL(60s)"
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(out.contains(&format!("TTL({ttl}s)")), "{out}");
    id
}

/// Whether `key` exists, read through `endpoints`.
fn exists(endpoints: &[String], key: &str) -> bool {
    json(endpoints, &format!("get {key}"))["count"].as_i64() == Some(1)
}

fn revision(endpoints: &[String]) -> i64 {
    json(endpoints, "get nothing-here")["header"]["revision"]
        .as_i64()
        .unwrap()
}

/// An `etcdctl lease keep-alive` running in the background, killed on drop.
struct KeepAlive(Child);

impl KeepAlive {
    fn start(endpoints: &[String], id: &str) -> KeepAlive {
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
            .args(["lease", "keep-alive", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        KeepAlive(child)
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The followers' etcd endpoints once a leader is agreed; and the leader's id.
async fn followers(cluster: &Cluster) -> (u64, Vec<String>) {
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let endpoints = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| cluster.addr(id))
        .collect();
    (leader, endpoints)
}

fn tools_present() -> bool {
    if ctl(&[], "version").is_none() {
        cannot_run("etcdctl is not installed (Debian package etcd-client)");
        return false;
    }
    true
}

#[tokio::test]
async fn grant_put_timetolive_list_and_revoke_through_a_follower() {
    if !tools_present() {
        return;
    }
    let cluster = Cluster::start(3);
    let (_, followers) = followers(&cluster).await;
    let one = &followers[..1];
    let id = grant(one, 60);
    ok(one, &format!("put --lease={id} a 1"));
    ok(one, &format!("put --lease={id} b 2"));
    ok(one, "put c 3");
    let unknown = ctl(one, "put --lease=7777 z 1").unwrap();
    assert!(
        unknown
            .stderr
            .contains("etcdserver: requested lease not found"),
        "a put with an unknown lease: {}",
        unknown.stderr
    );

    let ttl = json(one, &format!("lease timetolive --keys {id}"));
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(60), "{ttl}");
    let remaining = ttl["ttl"].as_i64().unwrap();
    assert!((55..=60).contains(&remaining), "remaining ttl {remaining}");
    // Keys come base64-encoded: "a" and "b", in key order, not "c".
    assert_eq!(ttl["keys"], serde_json::json!(["YQ==", "Yg=="]), "{ttl}");
    let text = ok(one, &format!("lease timetolive --keys {id}"));
    assert!(text.contains("attached keys([a b])"), "{text}");

    let list = ok(&followers[1..], "lease list");
    assert!(
        list.contains("found 1 leases") && list.contains(&id),
        "{list}"
    );

    let before = revision(one);
    assert!(ok(one, &format!("lease revoke {id}")).contains("revoked"));
    assert!(
        !exists(one, "a") && !exists(one, "b"),
        "a revoke deletes its keys"
    );
    assert!(exists(one, "c"), "a revoke leaves other keys");
    assert_eq!(
        revision(one),
        before + 1,
        "a revoke deletes at one revision"
    );

    let gone = ok(one, &format!("lease timetolive {id}"));
    assert!(gone.contains("already expired"), "{gone}");
    let again = ctl(one, &format!("lease revoke {id}")).unwrap();
    assert!(
        again.code != 0
            && again
                .stderr
                .contains("etcdserver: requested lease not found"),
        "{}",
        again.stderr
    );
    let list = ok(one, "lease list");
    assert!(list.contains("found 0 leases"), "{list}");
}

/// A lease left alone expires within its TTL plus a bound (and not much before it); a lease
/// kept alive by a background `etcdctl lease keep-alive` through the followers outlives its
/// TTL many times, across a SIGKILL of the leader; a lease granted just before the kill is
/// not expired early by the new leader.
#[tokio::test]
async fn keep_alive_keeps_a_lease_across_a_leader_kill_and_an_idle_lease_expires() {
    if !tools_present() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let (leader, followers) = followers(&cluster).await;
    const TTL: u64 = 3;

    let kept = grant(&followers, TTL);
    ok(&followers, &format!("put --lease={kept} kept 1"));
    let mut keep_alive = KeepAlive::start(&followers, &kept);

    let idle_granted = Instant::now();
    let idle = grant(&followers, TTL);
    ok(&followers, &format!("put --lease={idle} idle 1"));
    poll_until(
        Duration::from_secs(TTL + 4),
        "the idle lease's key to vanish",
        async || (!exists(&followers, "idle")).then_some(()),
    )
    .await;
    let lived = idle_granted.elapsed();
    assert!(
        lived >= Duration::from_secs(TTL) - Duration::from_millis(500),
        "the idle lease ended after {lived:?}, before its {TTL} s TTL"
    );
    let gone = ok(&followers, &format!("lease timetolive {idle}"));
    assert!(gone.contains("already expired"), "{gone}");

    // Twice the TTL later the kept lease is still there.
    tokio::time::sleep(Duration::from_secs(2 * TTL)).await;
    assert!(keep_alive.is_running(), "etcdctl lease keep-alive gave up");
    assert!(exists(&followers, "kept"), "a kept-alive lease expired");

    // A lease of 8 s granted just before the leader dies, never kept alive: the new leader
    // gives it its full TTL from when it leads, so it is there 6 s after its grant.
    let late_granted = Instant::now();
    let late = grant(&followers, 8);
    ok(&followers, &format!("put --lease={late} late 1"));
    cluster.kill(leader);
    poll_until(SECS_10, "a new leader", async || {
        let statuses = cluster.live_statuses().await;
        common::agreed_leader(&statuses).filter(|(id, _)| *id != leader)
    })
    .await;
    let six = late_granted + Duration::from_secs(6);
    tokio::time::sleep(six.saturating_duration_since(Instant::now())).await;
    assert!(
        exists(&followers, "late"),
        "a lease ended early after the leader changed"
    );

    // Well past every TTL since the kill, the kept lease lives on and the late one is gone.
    tokio::time::sleep(Duration::from_secs(2 * TTL)).await;
    assert!(keep_alive.is_running(), "etcdctl lease keep-alive gave up");
    assert!(
        exists(&followers, "kept"),
        "a kept-alive lease expired across the leader kill"
    );
    poll_until(SECS_10, "the late lease's key to vanish", async || {
        (!exists(&followers, "late")).then_some(())
    })
    .await;

    // Stopping the keep-alive lets the kept lease run out too.
    drop(keep_alive);
    poll_until(
        Duration::from_secs(TTL + 5),
        "the kept lease's key to vanish once nobody keeps it alive",
        async || (!exists(&followers, "kept")).then_some(()),
    )
    .await;
}
