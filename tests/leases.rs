//! Leases on keys through `kvstore.v1` against real processes: the Rust client's lease calls
//! and its `LeaseKeeper`, and kvctl's `lease` commands and `put --lease`.

// Integration tests may unwrap (STYLE.md §6), harness helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{kvctl, poll_until, Cluster};
use kvstore::client::{Client, RangeOptions};

const SECS_10: Duration = Duration::from_secs(10);

async fn exists(client: &mut Client, key: &str) -> bool {
    let r = client.range(key, &RangeOptions::default()).await.unwrap();
    !r.kvs.is_empty()
}

/// Grant (raised to the minimum TTL), attach keys, list, TimeToLive with keys, revoke: the
/// keys go at one revision; a keeper holds a lease past its TTL until it is dropped, then
/// the key goes within the TTL and a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_attach_keys_keep_them_and_delete_them_at_one_revision() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(SECS_10).await;
    let mut client = cluster.client();

    // 1 s is this cluster's minimum (1.5 x 300 ms, rounded up): 0 is raised to it.
    let short = client.grant_lease(0, 0).await.unwrap();
    assert_eq!(short.ttl, 1, "raised to the minimum: {short:?}");
    let lease = client.grant_lease(30, 0).await.unwrap();
    assert_eq!(lease.ttl, 30);
    assert_ne!(lease.id, short.id);
    let explicit = client.grant_lease(30, 0x1234).await.unwrap();
    assert_eq!(explicit.id, 0x1234);
    let again = client.grant_lease(30, 0x1234).await.unwrap_err();
    assert!(
        again.to_string().contains("lease already exists"),
        "{again}"
    );
    let mut ids = client.leases().await.unwrap();
    ids.sort_unstable();
    let mut want = vec![short.id, lease.id, explicit.id];
    want.sort_unstable();
    assert_eq!(ids, want);

    for k in ["svc/a", "svc/b", "svc/c"] {
        client.put_with_lease(k, "v", lease.id).await.unwrap();
    }
    client.put("svc/plain", "v").await.unwrap();
    // A put without a lease detaches: svc/c leaves the lease.
    client.put("svc/c", "v2").await.unwrap();
    let ttl = client.lease_time_to_live(lease.id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!((28..=30).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec!["svc/a".to_string(), "svc/b".to_string()]);
    let unknown = client.lease_time_to_live(99, false).await.unwrap();
    assert_eq!(unknown.ttl, -1);
    let missing = client.put_with_lease("svc/x", "v", 99).await.unwrap_err();
    assert!(
        missing.to_string().contains("requested lease not found"),
        "{missing}"
    );

    let before = client
        .range("svc/", &RangeOptions::prefix())
        .await
        .unwrap()
        .header
        .revision;
    let revoked = client.revoke_lease(lease.id).await.unwrap();
    assert_eq!(revoked.revision, before + 1, "both deletes at one revision");
    let left = client.range("svc/", &RangeOptions::prefix()).await.unwrap();
    let keys: Vec<&str> = left.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["svc/c", "svc/plain"]);
    let gone = client.revoke_lease(lease.id).await.unwrap_err();
    assert!(
        gone.to_string().contains("requested lease not found"),
        "{gone}"
    );

    // The 1 s lease, kept alive for 3 s, keeps its key; dropped, the key goes.
    client.put_with_lease("kept", "v", short.id).await.unwrap();
    let keeper = client.keep_lease_alive(short.id).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        exists(&mut client, "kept").await,
        "a kept-alive lease expired"
    );
    assert_eq!(keeper.last_ttl(), Some(1));
    drop(keeper);
    let dropped = Instant::now();
    poll_until(
        SECS_10,
        "the key of the abandoned lease to go",
        async || (!exists(&mut client, "kept").await).then_some(()),
    )
    .await;
    assert!(
        dropped.elapsed() < Duration::from_millis(2500),
        "took {:?} for a 1 s lease",
        dropped.elapsed()
    );
    let after = client.lease_time_to_live(short.id, false).await.unwrap();
    assert_eq!(after.ttl, -1, "the expired lease is gone");
}

/// A lease kept alive through the leader's SIGKILL is not expired by the new leader (it
/// restarts every lease's TTL); the keeper finds the new leader by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lease_survives_the_leaders_death() {
    let mut cluster = Cluster::start(3);
    let (leader, _) = cluster.wait_for_leader(SECS_10).await;
    let mut client = cluster.client();
    let lease = client.grant_lease(2, 0).await.unwrap();
    client.put_with_lease("alive", "v", lease.id).await.unwrap();
    let _keeper = client.keep_lease_alive(lease.id).unwrap();
    cluster.kill(leader);
    let (new_leader, _) = cluster.wait_for_leader(SECS_10).await;
    assert_ne!(new_leader, leader);
    // Well past the TTL: renewals must reach the new leader.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(exists(&mut client, "alive").await, "the lease expired");
    let ttl = client.lease_time_to_live(lease.id, false).await.unwrap();
    assert!(ttl.ttl >= 1, "{ttl:?}");
}

/// kvctl's lease commands print etcdctl's lines; `put --lease` attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_lease_commands() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(SECS_10).await;
    let kvctl = |args: &[&str]| kvctl(&cluster, args);
    let (code, out, err) = kvctl(&["lease", "grant", "20"]);
    assert_eq!(code, 0, "{err}");
    let id = out
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(" granted with TTL(20s)\n"))
        .unwrap_or_else(|| panic!("unexpected: {out:?}"))
        .to_string();
    let (code, _, err) = kvctl(&["put", "k1", "v", "--lease", &id]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = kvctl(&["lease", "timetolive", &id, "--keys"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("lease {id} granted with TTL(20s), remaining(")),
        "{out}"
    );
    assert!(out.ends_with(", attached keys([k1])\n"), "{out}");
    let (_, out, _) = kvctl(&["lease", "list"]);
    assert_eq!(out, format!("found 1 leases\n{id}\n"));
    let (code, out, _) = kvctl(&["lease", "keep-alive", &id, "--once"]);
    assert_eq!(
        (code, out),
        (0, format!("lease {id} keepalived with TTL(20)\n"))
    );
    let (_, out, _) = kvctl(&["lease", "revoke", &id]);
    assert_eq!(out, format!("lease {id} revoked\n"));
    let (code, _, err) = kvctl(&["get", "k1"]);
    assert_eq!((code, err.as_str()), (1, "key not found: k1\n"));
    let (_, out, _) = kvctl(&["lease", "timetolive", &id]);
    assert_eq!(out, format!("lease {id} already expired\n"));
    let (code, _, err) = kvctl(&["put", "k2", "v", "--lease", "ab"]);
    assert_eq!(code, 2);
    assert!(err.contains("requested lease not found"), "{err}");
}
