//! etcd's own clients against an etcd-API cluster: the official Go client's `concurrency`
//! recipes (Mutex, Election) and its watch, driven by the Go program `kvcheck`
//! (tests/go/src/kvcheck), and etcdctl 3.4's `lock`, `elect`, `watch` and `lease`.
//!
//! Every scenario runs against a real 3-member etcd 3.4 first: that proves the program and
//! its checks right (and a `--sabotage` run of each proves the checks can fail), so a
//! failure against kvstore is kvstore's. The kvstore runs are the same scenarios on a
//! 3-node kvstore cluster.
//!
//! Needs Go and Debian's golang-etcd-server-dev (the client sources, built in GOPATH mode)
//! and etcd + etcdctl (`.ci/run` installs them all): without them these tests skip with a
//! message, and fail when `CI` is set.

// Integration tests may unwrap (STYLE.md §6); clippy's allow-unwrap-in-tests only covers
// #[test] functions, not the harness helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
// `follower()` is not used here.
#[allow(dead_code)]
#[path = "etcd_compat/etcd.rs"]
mod etcd;
// Only `etcdctl()`, `missing_tool()` and `cannot_run()` are used here.
#[allow(dead_code)]
#[path = "etcd_compat/etcdctl.rs"]
mod etcdctl;
#[path = "etcd_clients/kvcheck.rs"]
mod kvcheck;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use common::{poll_until, Cluster};
use etcd::EtcdCluster;
use etcdctl::{cannot_run, etcdctl, missing_tool, Outcome};

const SECS_10: Duration = Duration::from_secs(10);
const SECS_30: Duration = Duration::from_secs(30);

/// A 3-member cluster serving etcd's API: a real etcd 3.4, or kvstore.
enum Target {
    Etcd(EtcdCluster),
    Kvstore(Cluster),
}

impl Target {
    async fn etcd() -> Target {
        Target::Etcd(EtcdCluster::start(3).await)
    }

    async fn kvstore() -> Target {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader(SECS_10).await;
        Target::Kvstore(cluster)
    }

    /// Every member's client address, killed ones included.
    fn endpoints(&self) -> Vec<String> {
        match self {
            Target::Etcd(etcd) => etcd.endpoints(),
            Target::Kvstore(cluster) => cluster.endpoints(),
        }
    }

    /// Starts `kvcheck SUBCOMMAND --endpoints <every member> FLAGS` (`command` is split on
    /// spaces).
    fn kvcheck(&self, command: &str) -> kvcheck::Running {
        let endpoints = self.endpoints().join(",");
        let mut args: Vec<&str> = command.split_whitespace().collect();
        args.splice(1..1, ["--endpoints", endpoints.as_str()]);
        kvcheck::spawn(&args)
    }

    /// The client address of the member that leads now.
    async fn leader(&self) -> String {
        match self {
            Target::Etcd(etcd) => etcd.leader().await,
            Target::Kvstore(cluster) => cluster.addr(cluster.wait_for_leader(SECS_10).await.0),
        }
    }

    /// SIGKILLs the member serving `endpoint`.
    fn kill(&mut self, endpoint: &str) {
        match self {
            Target::Etcd(etcd) => etcd.kill(endpoint),
            Target::Kvstore(cluster) => {
                let id = cluster
                    .ids()
                    .into_iter()
                    .find(|&id| cluster.addr(id) == endpoint)
                    .unwrap_or_else(|| panic!("no kvstore node serves {endpoint}"));
                cluster.kill(id);
            }
        }
    }
}

/// Skips (or fails in CI) when Go, the etcd client sources, etcd or etcdctl is missing;
/// true when the test can run. Builds kvcheck the first time.
fn tools_present() -> bool {
    let missing = missing_tool().or_else(|| kvcheck::binary().err());
    match missing {
        Some(why) => {
            cannot_run(&why);
            false
        }
        None => true,
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios, each against any target.

/// Four clients, each with its own session, take one `concurrency.Mutex` five times each;
/// the cluster's Raft leader is SIGKILLed while the seventh holder is inside. Never two
/// holders inside (the holder key claimed in a Txn guarded by `IsOwner()` is free every
/// time), and no increment of the counter made under the lock is lost.
async fn mutex_scenario(target: &mut Target) {
    let mut running = target.kvcheck("mutex --workers 4 --rounds 5 --pause-at 7");
    running.wait_for("mutex-pause", SECS_30);
    let leader = target.leader().await;
    target.kill(&leader);
    running.resume();
    let run = running.finish();
    run.assert_ok();
    assert_eq!(run.of("mutex-hold").len(), 20, "{run}");
    assert_eq!(run.one("mutex-done").get("counter"), "20", "{run}");
}

/// Three candidates campaign on one `concurrency.Election`, eight leaderships in all, each
/// leader proclaiming two more values before it resigns; an observer follows `Observe`.
/// The cluster's Raft leader is SIGKILLed while the third leader holds. At most one
/// candidate leads at a time, and the observer sees every value of every leader, in order.
async fn election_scenario(target: &mut Target) {
    let mut running =
        target.kvcheck("elect --candidates 3 --leaderships 8 --proclaims 2 --pause-at 3");
    running.wait_for("elect-pause", SECS_30);
    let leader = target.leader().await;
    target.kill(&leader);
    running.resume();
    let run = running.finish();
    run.assert_ok();
    assert_eq!(run.of("elect-leader").len(), 8, "{run}");
    assert_eq!(run.one("elect-done").get("values"), "24", "{run}");
    // The run went on after the kill: leaders after the pause were elected and observed.
    let pause = run
        .lines
        .iter()
        .position(|l| l.kind == "elect-pause")
        .unwrap();
    let after = &run.lines[pause..];
    assert!(
        after.iter().filter(|l| l.kind == "elect-leader").count() >= 5
            && after.iter().any(|l| l.kind == "elect-observe"),
        "no leadership after the kill: {run}"
    );
}

/// A watcher watches one key from the next revision while a writer puts 1..200 (each
/// exactly once); after 60 the writer pauses and the member serving the watch is
/// SIGKILLed. The watch resumes on another member by itself and delivers every value
/// exactly once, in order.
async fn watch_scenario(target: &mut Target) {
    let mut running = target.kvcheck("watch --key kvcheck/watched --count 200 --pause-at 60");
    let created = running.wait_for("watch-created", SECS_30);
    let pause = running.wait_for("watch-pause", SECS_30);
    let killed = pause.get("endpoint").to_string();
    assert_eq!(created.get("endpoint"), killed);
    target.kill(&killed);
    running.resume();
    let run = running.finish();
    run.assert_ok();
    let events = run.of("watch-event");
    assert_eq!(events.len(), 200, "{run}");
    let dead_member = created.get("member");
    assert!(
        events[60..].iter().all(|e| e.get("member") != dead_member),
        "events after the kill came from the killed member: {run}"
    );
}

/// Each check fails when its rule is broken: a mutex held under a second prefix (two
/// holders at once), a campaign won on a second prefix (two leaders), a value put twice
/// (a duplicate event); and the pure checkers reject planted bad histories.
async fn sabotage_scenario(target: &mut Target) {
    let run = kvcheck::spawn(&["selftest"]).finish();
    run.assert_ok();
    assert!(run.of("selftest").len() >= 10, "{run}");
    let run = target
        .kvcheck("mutex --workers 3 --rounds 2 --sabotage")
        .finish();
    run.assert_caught("overlap");
    let run = target
        .kvcheck("elect --candidates 3 --leaderships 2 --sabotage")
        .finish();
    run.assert_caught("two-leaders");
    let run = target.kvcheck("watch --count 20 --sabotage").finish();
    run.assert_caught("sequence");
}

// ---------------------------------------------------------------------------------------
// etcdctl lock, elect, watch and lease

/// A long-running etcdctl (`lock`, `elect`) whose output goes to a file; killed on drop.
struct Background {
    child: Child,
    stdout_path: std::path::PathBuf,
    name: String,
}

impl Background {
    fn start(endpoints: &[String], dir: &Path, name: &str, args: &[&str]) -> Background {
        let stdout_path = dir.join(format!("{name}.out"));
        let stdout = File::create(&stdout_path).unwrap();
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
            .args(["--dial-timeout", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        Background {
            child,
            stdout_path,
            name: name.to_string(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stdout_path.with_extension("err")).unwrap_or_default()
    }

    /// Waits until its output contains `needle`.
    async fn wait_output(&self, needle: &str) -> String {
        poll_until(
            SECS_30,
            &format!("{} to print {needle:?}", self.name),
            async || self.output().contains(needle).then(|| self.output()),
        )
        .await
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGINT (etcdctl then unlocks or resigns and exits).
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits (bounded) for the exit; asserts it is 0.
    async fn exits_cleanly(&mut self) {
        let name = self.name.clone();
        let status = poll_until(SECS_30, &format!("{name} to exit"), async || {
            self.child.try_wait().unwrap()
        })
        .await;
        assert!(
            status.success(),
            "{name} exited {status}: {}{}",
            self.output(),
            self.stderr()
        );
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdctl ARGS` (split on spaces), run to its end.
fn ctl(endpoints: &[String], args: &str) -> Outcome {
    let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    etcdctl(endpoints, &args, None).unwrap()
}

/// `etcdctl ARGS`, which must succeed; its stdout.
fn ctl_ok(endpoints: &[String], args: &str) -> String {
    let out = ctl(endpoints, args);
    assert_eq!(out.code, 0, "{} failed: {}", out.command, out.stderr);
    out.stdout
}

/// The keys under `prefix` (etcdctl `get --prefix --keys-only`).
fn keys_under(endpoints: &[String], prefix: &str) -> Vec<String> {
    ctl_ok(endpoints, &format!("get {prefix} --prefix --keys-only"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until `prefix` holds `n` keys (a contender's waiting key is in place).
async fn wait_keys(endpoints: &[String], prefix: &str, n: usize) {
    poll_until(SECS_30, &format!("{n} keys under {prefix}"), async || {
        (keys_under(endpoints, prefix).len() == n).then_some(())
    })
    .await;
}

/// `etcdctl lock NAME cmd`: the first contender runs its command holding the lock; the
/// second waits (its key queued behind) until the first's command ends, then runs its own
/// with a later lock key revision; both unlock.
async fn etcdctl_lock_scenario(target: &Target) {
    let endpoints = target.endpoints();
    let dir = TempDir::new().unwrap();
    let release = dir.path().join("release");
    let holder = format!(
        "echo \"in $ETCD_LOCK_KEY $ETCD_LOCK_REV\"; \
         while [ ! -e {} ]; do sleep 0.05; done; echo out",
        release.display()
    );
    let mut first = Background::start(
        &endpoints,
        dir.path(),
        "first",
        &["lock", "ctl-lock", "--", "sh", "-c", &holder],
    );
    let first_in = first.wait_output("in ").await;
    let mut second = Background::start(
        &endpoints,
        dir.path(),
        "second",
        &[
            "lock",
            "ctl-lock",
            "--",
            "sh",
            "-c",
            "echo \"in $ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
        ],
    );
    wait_keys(&endpoints, "ctl-lock/", 2).await;
    assert!(
        second.running() && second.output().is_empty(),
        "the second contender ran while the first held the lock: {}",
        second.output()
    );
    File::create(&release).unwrap();
    first.exits_cleanly().await;
    assert!(first.output().contains("out"), "{}", first.output());
    let second_in = second.wait_output("in ").await;
    second.exits_cleanly().await;
    let parse = |out: &str| {
        let line = out.lines().find(|l| l.starts_with("in ")).unwrap();
        let mut words = line.split_whitespace().skip(1);
        let key = words.next().unwrap().to_string();
        let rev: i64 = words.next().unwrap().parse().unwrap();
        (key, rev)
    };
    let (first_key, first_rev) = parse(&first_in);
    let (second_key, second_rev) = parse(&second_in);
    assert!(first_key.starts_with("ctl-lock/") && second_key.starts_with("ctl-lock/"));
    assert_ne!(first_key, second_key);
    assert!(
        second_rev > first_rev,
        "the second lock's revision {second_rev} is not after the first's {first_rev}"
    );
    wait_keys(&endpoints, "ctl-lock/", 0).await;
}

/// `etcdctl elect NAME proposal` and `elect -l NAME`: the first candidate wins and the
/// listener prints its proposal; the second waits; the first resigns on SIGINT, the second
/// wins, and the listener prints the second proposal after the first.
async fn etcdctl_elect_scenario(target: &Target) {
    let endpoints = target.endpoints();
    let dir = TempDir::new().unwrap();
    let mut listener = Background::start(
        &endpoints,
        dir.path(),
        "listener",
        &["elect", "-l", "ctl-elect"],
    );
    let mut first = Background::start(
        &endpoints,
        dir.path(),
        "first",
        &["elect", "ctl-elect", "proposal-one"],
    );
    let won = first.wait_output("proposal-one").await;
    assert!(won.starts_with("ctl-elect/"), "elect printed {won:?}");
    listener.wait_output("proposal-one").await;
    let mut second = Background::start(
        &endpoints,
        dir.path(),
        "second",
        &["elect", "ctl-elect", "proposal-two"],
    );
    wait_keys(&endpoints, "ctl-elect/", 2).await;
    assert!(
        second.running() && second.output().is_empty(),
        "the second candidate won while the first led: {}",
        second.output()
    );
    first.interrupt();
    first.exits_cleanly().await;
    second.wait_output("proposal-two").await;
    let heard = listener.wait_output("proposal-two").await;
    let one = heard.find("proposal-one").unwrap();
    let two = heard.find("proposal-two").unwrap();
    assert!(one < two, "the listener printed {heard:?}");
    second.interrupt();
    second.exits_cleanly().await;
    listener.interrupt();
    listener.exits_cleanly().await;
    wait_keys(&endpoints, "ctl-elect/", 0).await;
}

/// etcdctl's `lease grant/timetolive/list/keep-alive/revoke` and `put --lease`: a leased
/// key is attached and listed; revoking deletes it (and only it); a lease kept alive by
/// `lease keep-alive` outlives one of the same TTL granted later and left alone, whose key
/// expires. Leaves `svc/b` and `svc/ready`, and no lease.
async fn etcdctl_lease_scenario(target: &mut Target) {
    let endpoints = target.endpoints();
    let dir = TempDir::new().unwrap();
    ctl_ok(&endpoints, "put svc/ready 1");
    let granted = ctl_ok(&endpoints, "lease grant 30");
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(granted.trim(), format!("lease {id} granted with TTL(30s)"));
    assert_eq!(
        ctl_ok(&endpoints, &format!("put svc/a 1 --lease={id}")).trim(),
        "OK"
    );
    ctl_ok(&endpoints, "put svc/b 2");
    let ttl = ctl_ok(&endpoints, &format!("lease timetolive {id} --keys"));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(30s), remaining("))
            && ttl.trim().ends_with("attached keys([svc/a])"),
        "timetolive said {ttl:?}"
    );
    let list = ctl_ok(&endpoints, "lease list");
    assert!(
        list.lines().any(|l| l.trim() == id),
        "lease list said {list:?}"
    );
    assert_eq!(
        ctl_ok(&endpoints, &format!("lease keep-alive --once {id}")).trim(),
        format!("lease {id} keepalived with TTL(30)")
    );
    assert_eq!(
        ctl_ok(&endpoints, &format!("lease revoke {id}")).trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(keys_under(&endpoints, "svc/"), ["svc/b", "svc/ready"]);
    assert_eq!(
        ctl_ok(&endpoints, &format!("lease timetolive {id}")).trim(),
        format!("lease {id} already expired")
    );
    let again = ctl(&endpoints, &format!("lease revoke {id}"));
    assert!(
        again.code != 0
            && again
                .stderr
                .contains("etcdserver: requested lease not found"),
        "revoking a revoked lease: exit {}, {}",
        again.code,
        again.stderr
    );

    // Expiry and keep-alive: `kept` is granted first and kept alive, `left` granted after
    // it with the same TTL and left alone. When `left`'s key has expired, `kept`'s would
    // have too without the keep-alives.
    let grant = |ttl: u32| {
        let granted = ctl_ok(&endpoints, &format!("lease grant {ttl}"));
        granted.split_whitespace().nth(1).unwrap().to_string()
    };
    let kept = grant(2);
    let mut keeper = Background::start(
        &endpoints,
        dir.path(),
        "keeper",
        &["lease", "keep-alive", &kept],
    );
    ctl_ok(&endpoints, &format!("put svc/kept 1 --lease={kept}"));
    let left = grant(2);
    ctl_ok(&endpoints, &format!("put svc/left 1 --lease={left}"));
    poll_until(SECS_30, "svc/left to expire with its lease", async || {
        (!keys_under(&endpoints, "svc/").contains(&"svc/left".to_string())).then_some(())
    })
    .await;
    assert!(
        keys_under(&endpoints, "svc/").contains(&"svc/kept".to_string()),
        "the kept-alive lease expired: {}",
        keeper.output()
    );
    assert!(keeper.running());
    assert!(
        keeper
            .output()
            .contains(&format!("lease {kept} keepalived with TTL(")),
        "{}",
        keeper.output()
    );
    // `lease keep-alive` has no handler for SIGINT: it just dies, as with SIGKILL.
    keeper.kill();
    poll_until(
        SECS_30,
        "svc/kept to expire once nobody keeps it alive",
        async || (!keys_under(&endpoints, "svc/").contains(&"svc/kept".to_string())).then_some(()),
    )
    .await;
}

/// etcdctl's `watch --prefix` prints every put and delete of the lease scenario in order,
/// the deletes of a revoked and of an expired lease included.
async fn etcdctl_watch_scenario(target: &mut Target) {
    let endpoints = target.endpoints();
    let dir = TempDir::new().unwrap();
    let watcher = Background::start(
        &endpoints,
        dir.path(),
        "watcher",
        &["watch", "--prefix", "svc/"],
    );
    // The watch starts at the revision current when it is created: put until it reports.
    poll_until(SECS_30, "etcdctl watch to print a put", async || {
        ctl_ok(&endpoints, "put svc/ready 1");
        watcher.output().contains("svc/ready").then_some(())
    })
    .await;
    etcdctl_lease_scenario(target).await;
    // The scenario ends when a read sees `svc/kept` gone; the watch (served by whichever
    // member etcdctl picked, from that member's applied state) may print the delete a moment
    // later, so poll for the whole sequence.
    let end = std::time::Instant::now() + SECS_30;
    loop {
        let printed = watch_events(&watcher.output());
        match in_order(&printed, &WATCH_EXPECTED) {
            Ok(()) => break,
            Err(missing) if std::time::Instant::now() >= end => {
                panic!("etcdctl watch did not print {missing:?} in order: {printed:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The events `etcdctl_watch_scenario` must see, in this order (others may come between).
const WATCH_EXPECTED: [&str; 7] = [
    "PUT svc/a 1",
    "PUT svc/b 2",
    "DELETE svc/a",
    "PUT svc/kept 1",
    "PUT svc/left 1",
    "DELETE svc/left",
    "DELETE svc/kept",
];

/// etcdctl watch prints "TYPE\nkey\nvalue" per event (an empty value for a delete): one
/// space-separated line.
fn watch_events(output: &str) -> String {
    output.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Ok when `expected` occur in `text` in order; otherwise the first one that does not.
fn in_order<'a>(text: &str, expected: &[&'a str]) -> Result<(), &'a str> {
    let mut at = 0;
    for event in expected {
        match text[at..].find(event) {
            Some(i) => at += i + event.len(),
            None => return Err(event),
        }
    }
    Ok(())
}

/// etcdctl's `lock`, `elect` and `watch` (over the lease scenario) on one cluster.
async fn etcdctl_scenario(target: &mut Target) {
    etcdctl_lock_scenario(target).await;
    etcdctl_elect_scenario(target).await;
    etcdctl_watch_scenario(target).await;
}

// ---------------------------------------------------------------------------------------
// The tests: each scenario against a real etcd 3.4 (proving the program and the checks
// right) and against kvstore.

/// `scenarios! { etcd_test, #[attributes] kvstore_test, scenario; ... }` defines both tests
/// of each scenario; the attributes go on the kvstore test.
macro_rules! scenarios {
    ($($on_etcd:ident, $(#[$kvstore_attr:meta])* $on_kvstore:ident, $scenario:ident;)*) => {$(
        #[tokio::test]
        async fn $on_etcd() {
            if tools_present() {
                $scenario(&mut Target::etcd().await).await;
            }
        }

        #[tokio::test]
        $(#[$kvstore_attr])*
        async fn $on_kvstore() {
            if tools_present() {
                $scenario(&mut Target::kvstore().await).await;
            }
        }
    )*};
}

// Every scenario runs against both. The recipes need leases (sessions) and watches (waiting
// for the keys queued before one's own).
scenarios! {
    go_mutex_with_a_leader_kill_on_etcd,
        go_mutex_with_a_leader_kill_on_kvstore,
        mutex_scenario;
    go_election_with_a_leader_kill_on_etcd,
        go_election_with_a_leader_kill_on_kvstore,
        election_scenario;
    go_watch_across_a_member_kill_on_etcd,
        go_watch_across_a_member_kill_on_kvstore,
        watch_scenario;
    etcdctl_lock_elect_watch_on_etcd,
        etcdctl_lock_elect_watch_on_kvstore,
        etcdctl_scenario;
    etcdctl_lease_on_etcd,
        etcdctl_lease_on_kvstore,
        etcdctl_lease_scenario;
}

/// The checks can fail: run against etcd, whose behaviour is right, so every violation
/// reported comes from the planted fault.
#[tokio::test]
async fn go_checks_catch_planted_faults_on_etcd() {
    if tools_present() {
        sabotage_scenario(&mut Target::etcd().await).await;
    }
}
