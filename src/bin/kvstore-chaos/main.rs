//! `kvstore-chaos`: real processes under real faults.
//!
//! Starts a cluster of the real `kvstore` binary, drives concurrent clients through the gRPC
//! API (the crate's client library, with exactly-once sessions; a few percent of the writes
//! carry large values, up to the 1 MiB limit), and injects faults on a schedule drawn from a
//! seed: SIGKILL and restart, SIGSTOP/SIGCONT (a frozen leader is the zombie of the fencing
//! problem), and network partitions (network namespaces, or a loopback TCP proxy on every peer
//! link). At the end it heals everything and fails the run unless every check holds:
//!
//! - **process exits**: no node exited without the runner causing it (a restart that exits 3
//!   on a storage error counts), and no node log contains `panicked at`;
//! - **convergence**: within `--settle` seconds of the faults stopping, every node reports the
//!   same applied index and serves, in serializable reads of its own state, the same value for
//!   every key as the final linearizable reads;
//! - **linearizability**: the whole history passes `kvstore::lincheck`, final reads included;
//! - **minimums**: at least 20 successful operations and one injected fault per 5 s of
//!   `--duration` (a run that did little proves little);
//! - **faults are real**: a signal or an `ip` command that fails is a failure, never a fault
//!   counted that did not happen;
//! - **watch**: watchers on every node and through the client ran through the faults, and
//!   each saw exactly the cluster's changes: in revision order, no gap, no duplicate, the
//!   same sequence, every acknowledged write (at exactly the revision its answer carried),
//!   nothing no client wrote, and the final reads' values at the end (see [`watchers`]);
//! - **lease**: leases kept alive are alive at the end with their keys present; leases revoked
//!   or run out are gone with their keys (see [`leases`]);
//! - **something checked**: a run whose watchers saw no event, or with no lease kept, expired
//!   or revoked, fails.
//! - **membership** (with `--membership`, which replaces voters among the faults): every final
//!   member reports the runner's voters and the removed ids, and each removed node that was
//!   running stopped by itself saying why (see [`membership`]).
//!
//! The nodes' `--read-mode` and `--snapshot-entries` follow the seed unless given (see
//! [`node_variant`]), so a series of seeds covers lease reads and frequent snapshots.
//! `--self-test CHECK` sabotages a run so that one check must fail; `scripts/chaos.sh
//! self-test` runs each and requires FAIL from the right check.
//!
//! ```text
//! kvstore-chaos --seed 7 --duration 60 --nodes 3
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kvstore::client::{Client, ClientError, ClientOptions};
use kvstore::faultnet::Link;
use kvstore::lincheck::{self, Op, OpKind, OpResult};
use kvstore::pb;
use kvstore::rpc::kv_service::MAX_VALUE_BYTES;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

mod leases;
mod membership;
mod watchers;

/// Real-process fault run of a kvstore cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Seed of the fault schedule, the workload and the nodes' variant (read mode, snapshots).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Percent of the writes that carry a large value (64 KiB up to the 1 MiB limit).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=100))]
    large_percent: u8,
    /// `--read-mode` of every node: `readindex` or `lease` [default: chosen by the seed].
    #[arg(long, value_parser = ["readindex", "lease"])]
    read_mode: Option<String>,
    /// `--snapshot-entries` of every node [default: chosen by the seed, 50 or the node's own].
    #[arg(long, value_name = "N")]
    snapshot_entries: Option<u64>,
    /// Seconds the replicas get to converge once the faults stop.
    #[arg(long, default_value_t = 20)]
    settle: u64,
    /// The kvstore binary (default: next to this one).
    #[arg(long)]
    kvstore: Option<PathBuf>,
    /// How partitions are made: `netns` (each node in its own network namespace on a private
    /// bridge; needs root and `ip`), `proxy` (a loopback TCP proxy on every peer link), or
    /// `auto` (netns where the machine allows it, else proxy).
    #[arg(long, default_value = "auto", value_parser = ["auto", "netns", "proxy"])]
    net: String,
    /// Where data dirs and logs go (default: a new temporary folder, kept on failure).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Sabotage the run so that one check must fail (proves the check works; the run must
    /// end in FAIL). `--clients 0` does the same for the minimum of operations.
    #[arg(long, value_enum)]
    self_test: Option<SelfTest>,
    /// Replace voters among the faults: remove one (sometimes the leader, sometimes a node
    /// that is down), add a learner with a new id at a new address, start it with `--join`,
    /// promote it once caught up (see the `membership` module; needs network namespaces).
    #[arg(long)]
    membership: bool,
}

/// The sabotages of `--self-test`, each caught by one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SelfTest {
    /// SIGKILL a node behind the runner's back a third into the run: an unexpected exit.
    RogueKill,
    /// Append a panic line to node 1's log: caught by the log scan.
    FakePanic,
    /// Once faults stop, cut a follower off and write one more key: the replicas diverge.
    Diverge,
    /// Inject no fault at all: below the minimum of faults.
    NoFaults,
    /// Delete the first partition victim's veth before cutting it (netns only): the `ip`
    /// command of that partition fails.
    IpFail,
    /// Drop one event from the first watcher's record: the watch check finds the gap.
    DropEvent,
    /// Claim one lease kept alive to the end as expired: its key is still there.
    KeptExpired,
    /// Claim one lease that expired as kept alive to the end: its key is gone.
    ExpiredKept,
    /// With `--membership`: restart the first removed node on its old data dir and count it
    /// as a member again: the members' MemberList does not have it.
    StaleMember,
}

/// The nodes' read mode and snapshot threshold for a seed: seeds 0, 1, 2 (mod 3) run
/// `readindex` with the default snapshots, `lease` with a snapshot every 50 entries, and
/// `readindex` with a snapshot every 50 entries.
fn node_variant(seed: u64) -> (&'static str, Option<u64>) {
    match seed % 3 {
        0 => ("readindex", None),
        1 => ("lease", Some(50)),
        _ => ("readindex", Some(50)),
    }
}

/// Successful client operations required per second of faults.
const MIN_OPS_PER_SEC: u64 = 20;
/// One injected fault required per this many seconds of faults.
const SECS_PER_MIN_FAULT: u64 = 5;
/// Smallest large value.
const LARGE_VALUE_MIN: usize = 64 * 1024;
/// The nodes' `--election-timeout-ms`.
const ELECTION_TIMEOUT_MS: u64 = 300;
/// How long the watchers get to reach the final revision after the final reads.
const WATCH_CATCH_UP: Duration = Duration::from_secs(10);

/// Time since the run started, in microseconds: the history's clock.
fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Seconds since `start`, for the event log.
fn at(start: Instant) -> String {
    format!("[{:>6.1}s]", start.elapsed().as_secs_f64())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Each node in its own network namespace, with a veth into a private bridge in the root
/// namespace (where the runner and its clients live). Removed on drop.
struct Netns {
    tag: u32,
    subnet: u8,
    nodes: u64,
}

/// Runs `ip ARGS`; an error carries the command and ip's own message.
fn ip<S: AsRef<str>>(args: &[S]) -> anyhow::Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    fn ns(&self, i: u64) -> String {
        format!("kvc{}n{}", self.tag, i)
    }
    fn veth(&self, i: u64) -> String {
        format!("kv{}v{}", self.tag, i)
    }
    fn bridge(&self) -> String {
        format!("kv{}br", self.tag)
    }
    fn addr(&self, i: u64) -> String {
        format!("10.77.{}.{}", self.subnet, i)
    }
    /// `ip` arguments that add or delete (`op`) a blackhole route to `to` in `from`'s
    /// namespace.
    fn blackhole(&self, from: u64, to: u64, op: &str) -> Vec<String> {
        let mut args: Vec<String> = ["netns", "exec"].map(String::from).to_vec();
        args.push(self.ns(from));
        args.extend(["ip", "route", op, "blackhole"].map(String::from));
        args.push(format!("{}/32", self.addr(to)));
        args
    }

    fn setup(nodes: u64, seed: u64) -> anyhow::Result<Netns> {
        let tag = std::process::id() % 100_000;
        // Built first, so that a failed step below still removes what was made (Drop).
        let mut net = Netns {
            tag,
            subnet: (seed % 200) as u8 + 20,
            nodes,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        let bridge_addr = format!("10.77.{}.254/24", net.subnet);
        ip(&["addr", "add", &bridge_addr, "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            net.add_node(i)?;
        }
        Ok(net)
    }

    /// Node `i`'s namespace, with its veth on the bridge (ids above the first `nodes` are
    /// the members added under `--membership`).
    fn add_node(&mut self, i: u64) -> anyhow::Result<()> {
        self.nodes = self.nodes.max(i);
        let (ns, veth, addr) = (self.ns(i), self.veth(i), format!("{}/24", self.addr(i)));
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"])?;
        ip(&[
            "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0",
        ])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// How the runner cuts links.
enum Network {
    Proxy(BTreeMap<(u64, u64), Link>),
    Netns {
        net: Netns,
        /// The `ip` commands that undo the cuts in place, in the order they were made.
        undo: Vec<Vec<String>>,
    },
}

impl Network {
    /// Cuts `victim` off: `one_way` means its peers cannot reach it (it may still try to reach
    /// them; over TCP that fails too, but clients can still reach it), otherwise it is isolated
    /// from everyone.
    ///
    /// # Errors
    /// A cut could not be made (an `ip` command failed, a proxy link is missing); the cuts
    /// made before it stay recorded for [`heal`](Self::heal).
    fn partition(&mut self, victim: u64, one_way: bool, ids: &[u64]) -> anyhow::Result<()> {
        let others = ids.iter().copied().filter(move |&o| o != victim);
        match self {
            Network::Proxy(links) => {
                for o in others {
                    let mut cut = vec![(o, victim)];
                    if !one_way {
                        cut.push((victim, o));
                    }
                    for (from, to) in cut {
                        links
                            .get(&(from, to))
                            .with_context(|| format!("no proxy link {from} -> {to}"))?
                            .set_cut(true);
                    }
                }
            }
            Network::Netns { net, undo } if one_way => {
                for o in others {
                    ip(&net.blackhole(o, victim, "add"))?;
                    undo.push(net.blackhole(o, victim, "del"));
                }
            }
            Network::Netns { net, undo } => {
                let veth = net.veth(victim);
                ip(&["link", "set", &veth, "down"])?;
                undo.push(["link", "set", &veth, "up"].map(String::from).to_vec());
            }
        }
        Ok(())
    }

    /// Undoes every cut in place (all of them, even after a failure).
    ///
    /// # Errors
    /// An undo command failed: the network may still be cut.
    fn heal(&mut self) -> anyhow::Result<()> {
        match self {
            Network::Proxy(links) => {
                for l in links.values() {
                    l.set_cut(false);
                }
                Ok(())
            }
            Network::Netns { undo, .. } => {
                let errors: Vec<String> = undo
                    .drain(..)
                    .rev()
                    .filter_map(|cmd| ip(&cmd).err().map(|e| format!("{e:#}")))
                    .collect();
                if errors.is_empty() {
                    Ok(())
                } else {
                    bail!("{}", errors.join("; "))
                }
            }
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Network::Proxy(_) => "partitions: loopback TCP proxy on every peer link (node i -> node j), cut by the runner",
            Network::Netns { .. } => "partitions: network namespaces, one per node, veth links on a private bridge (isolation: link down; one-way: blackhole routes in the peers' namespaces)",
        }
    }
}

struct Node {
    id: u64,
    /// The command: the kvstore binary itself, or `ip netns exec NS kvstore`.
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// Removed from the cluster (`--membership`): it must stop by itself and is never
    /// restarted; its exit is the membership check's, not an unexpected one.
    removed: bool,
}

impl Node {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {} ({})", self.id, self.program.display()))?;
        self.child = Some(child);
        self.stopped = false;
        Ok(())
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// If the process exited (on its own: the runner reaps the ones it kills), reaps it and
    /// says how it ended.
    fn reap(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        let how = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => status.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        self.child = None;
        self.stopped = false;
        Some(how)
    }

    /// Sends `sig` (`-STOP`, `-CONT`, ...) with the `kill` utility.
    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the node is not running")?;
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("`kill {sig} {pid}` failed ({status})");
        }
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the node is not running")?;
        let result = child.kill().context("SIGKILL");
        let _ = child.wait();
        self.stopped = false;
        result
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.stopped {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reaps every node that exited without the runner causing it, reporting and recording each;
/// with `restart`, starts it again so the rest of the run keeps its cluster size.
fn check_exits(
    nodes: &mut BTreeMap<u64, Node>,
    start: Instant,
    exits: &mut Vec<String>,
    restart: bool,
) -> anyhow::Result<()> {
    for node in nodes.values_mut().filter(|node| !node.removed) {
        if let Some(how) = node.reap() {
            println!("{} node {} EXITED on its own: {how}", at(start), node.id);
            exits.push(format!(
                "node {} at {:.1}s: {how}",
                node.id,
                start.elapsed().as_secs_f64()
            ));
            if restart {
                node.start()?;
            }
        }
    }
    Ok(())
}

/// The first line of each node log that reports a panic.
fn scan_for_panics(nodes: &BTreeMap<u64, Node>) -> Vec<String> {
    nodes
        .values()
        .filter_map(|node| {
            let text = std::fs::read(&node.log).ok()?;
            let text = String::from_utf8_lossy(&text);
            let line = text.lines().find(|l| l.contains("panicked at"))?;
            Some(format!("node {}: {}", node.id, line.trim()))
        })
        .collect()
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    /// Large values written (acknowledged or not), and how many of them at the limit.
    large: AtomicU64,
    at_limit: AtomicU64,
}

fn classify(e: &ClientError) -> bool {
    // True if the error proves the write did not apply.
    matches!(
        e,
        ClientError::InvalidArgument(_) | ClientError::FailedPrecondition(_)
    )
}

/// What identifies a value in the history: the part before `:` (large values are the
/// identity, `:` and padding), so the history keeps no megabytes.
fn identity(value: &str) -> String {
    value.split(':').next().unwrap_or(value).to_string()
}

/// An acknowledged change of a key at a revision: `Some(value identity)` for a put, `None`
/// for a delete that deleted.
type Acked = (String, i64, Option<String>);

/// What the client tasks share with the runner.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    history: Mutex<Vec<Op>>,
    /// The acknowledged changes with their revisions (for the watch check).
    acked: Mutex<Vec<Acked>>,
    counts: Counts,
    /// The client addresses of the current members, and how often they changed
    /// (`--membership`): the clients rebuild theirs when it moves.
    endpoints: Mutex<(u64, Vec<String>)>,
}

impl Shared {
    /// The members' addresses if they changed since generation `seen` (which is updated).
    fn endpoints_since(&self, seen: &mut u64) -> Option<Vec<String>> {
        let e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        (e.0 != *seen).then(|| {
            *seen = e.0;
            e.1.clone()
        })
    }

    /// The members' addresses now.
    fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Publishes the members' addresses after a membership change.
    fn set_endpoints(&self, endpoints: Vec<String>) {
        let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        e.0 += 1;
        e.1 = endpoints;
    }

    fn record(&self, op: Op) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(op);
    }

    fn record_acked(&self, key: &str, revision: i64, put: Option<String>) {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.to_string(), revision, put));
    }
}

/// What one client does: its id, the keys, the share of large writes and its seed.
struct Workload {
    idx: usize,
    endpoints: Vec<String>,
    keys: usize,
    large_percent: u8,
    seed: u64,
}

/// A value written by client `idx` as its `n`th write; unique in the run.
fn make_value(
    rng: &mut SmallRng,
    idx: usize,
    n: u64,
    large_percent: u8,
    counts: &Counts,
) -> String {
    let id = format!("c{idx}-{n}");
    if !rng.random_bool(f64::from(large_percent) / 100.0) {
        return id;
    }
    let len = if rng.random_bool(0.25) {
        MAX_VALUE_BYTES
    } else {
        rng.random_range(LARGE_VALUE_MIN..=MAX_VALUE_BYTES)
    };
    counts.large.fetch_add(1, Ordering::Relaxed);
    if len == MAX_VALUE_BYTES {
        counts.at_limit.fetch_add(1, Ordering::Relaxed);
    }
    let mut value = format!("{id}:");
    let pad = len.saturating_sub(value.len());
    value.extend(std::iter::repeat_n('x', pad));
    value
}

async fn client_loop(w: Workload, shared: Arc<Shared>) {
    let (start, counts) = (shared.start, &shared.counts);
    let mut rng = SmallRng::seed_from_u64(w.seed);
    let Ok(mut client) = Client::with_options(
        w.endpoints,
        ClientOptions::with_timeout(Duration::from_secs(3)),
    ) else {
        return;
    };
    let mut n = 0u64;
    let mut generation = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(endpoints) = shared.endpoints_since(&mut generation) {
            // The members changed: a new client (and session) over the current ones.
            if let Ok(c) = Client::with_options(
                endpoints,
                ClientOptions::with_timeout(Duration::from_secs(3)),
            ) {
                client = c;
            }
        }
        let key = format!("k{}", rng.random_range(0..w.keys));
        let invoke = micros(start);
        let (kind, outcome) = match rng.random_range(0..10u8) {
            0..=4 => {
                n += 1;
                let value = make_value(&mut rng, w.idx, n, w.large_percent, counts);
                let r = client.put(&key, &value).await;
                if let Ok(h) = &r {
                    shared.record_acked(&key, h.revision, Some(identity(&value)));
                }
                (OpKind::Put(identity(&value)), r.map(|_| OpResult::Put))
            }
            5..=8 => {
                let r = client.get(&key, pb::Consistency::Linearizable).await;
                let value = |g: kvstore::client::GetResult| g.value.as_deref().map(identity);
                (OpKind::Get, r.map(|g| OpResult::Get(value(g))))
            }
            _ => {
                let r = client.delete(&key).await;
                if let Some(d) = r.as_ref().ok().filter(|d| d.deleted) {
                    shared.record_acked(&key, d.header.revision, None);
                }
                (OpKind::Delete, r.map(|d| OpResult::Delete(d.deleted)))
            }
        };
        let complete = micros(start);
        let op = match outcome {
            Ok(result) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                Some(Op {
                    client: w.idx as u64,
                    key,
                    kind,
                    invoke,
                    complete: Some(complete),
                    result: Some(result),
                })
            }
            Err(e) if classify(&e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                counts.unknown.fetch_add(1, Ordering::Relaxed);
                // A write that may have applied stays in the history with an unknown outcome;
                // a read that failed constrains nothing.
                (kind != OpKind::Get).then_some(Op {
                    client: w.idx as u64,
                    key,
                    kind,
                    invoke,
                    complete: None,
                    result: None,
                })
            }
        };
        if let Some(op) = op {
            shared.record(op);
        }
    }
}

/// A connected channel to `addr` with short timeouts, or `None`.
async fn connect(addr: &str, timeout: Duration) -> Option<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(timeout)
        .connect()
        .await
        .ok()
}

async fn leader_of(endpoints: &[String]) -> Option<(u64, u64)> {
    let mut seen = BTreeSet::new();
    for ep in endpoints {
        let Some(ch) = connect(ep, Duration::from_millis(300)).await else {
            continue;
        };
        let mut c = pb::cluster_client::ClusterClient::new(ch);
        if let Ok(s) = c.status(pb::StatusRequest {}).await {
            let s = s.into_inner();
            if s.role == pb::Role::Leader as i32 {
                seen.insert((s.term, s.id));
            }
        }
    }
    seen.into_iter().next_back()
}

/// Key -> value (`None`: absent), as one node or the final reads see it.
type Values = BTreeMap<String, Option<String>>;

/// Node `addr`'s applied index and its own (serializable) values of `keys`, read between
/// two status calls that must agree on the applied index.
async fn local_state(addr: &str, keys: &[String]) -> Result<(u64, Values), String> {
    let ch = connect(addr, Duration::from_secs(3))
        .await
        .ok_or("unreachable")?;
    let mut cluster = pb::cluster_client::ClusterClient::new(ch.clone());
    let mut kv = pb::kv_client::KvClient::new(ch);
    let applied = async |cluster: &mut pb::cluster_client::ClusterClient<Channel>| {
        cluster
            .status(pb::StatusRequest {})
            .await
            .map(|s| s.into_inner().last_applied)
            .map_err(|e| format!("status: {}", e.message()))
    };
    let before = applied(&mut cluster).await?;
    let mut values = Values::new();
    for key in keys {
        let request = pb::GetRequest {
            key: key.clone(),
            consistency: pb::Consistency::Serializable as i32,
        };
        let got = kv
            .get(request)
            .await
            .map_err(|e| format!("serializable get {key}: {}", e.message()))?
            .into_inner();
        values.insert(key.clone(), got.found.then_some(got.value));
    }
    let after = applied(&mut cluster).await?;
    if before != after {
        return Err(format!("still applying ({before} -> {after})"));
    }
    Ok((after, values))
}

/// Short form of a value for messages.
fn show(value: &Option<String>) -> String {
    match value {
        None => "(absent)".to_string(),
        Some(v) if v.len() > 32 => format!("{} ({} bytes)", identity(v), v.len()),
        Some(v) => v.clone(),
    }
}

/// One round of the convergence check: the common applied index, or the first difference.
async fn converged_once(endpoints: &[(u64, String)], expected: &Values) -> Result<u64, String> {
    let keys: Vec<String> = expected.keys().cloned().collect();
    let mut first: Option<(u64, u64, Values)> = None;
    for (node, addr) in endpoints {
        let node = *node;
        let (applied, values) = local_state(addr, &keys)
            .await
            .map_err(|e| format!("node {node}: {e}"))?;
        if let Some((n0, a0, _)) = &first {
            if applied != *a0 {
                return Err(format!(
                    "node {node} applied up to {applied}, node {n0} up to {a0}"
                ));
            }
        }
        for (key, want) in expected {
            let got = values.get(key).cloned().flatten();
            if got != *want {
                return Err(format!(
                    "node {node} has {key} = {}, the final linearizable read {}",
                    show(&got),
                    show(want)
                ));
            }
        }
        first.get_or_insert((node, applied, values));
    }
    Ok(first.map_or(0, |(_, a, _)| a))
}

/// Polls [`converged_once`] until it holds or `bound` passes; returns the applied index and
/// the time it took, or the last difference seen.
async fn converge(
    endpoints: &[(u64, String)],
    expected: &Values,
    bound: Duration,
) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    loop {
        match converged_once(endpoints, expected).await {
            Ok(applied) => return Ok((applied, started.elapsed())),
            Err(e) if started.elapsed() >= bound => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// What the clients issued and acknowledged on each key, and its end state, for
/// [`watchers::check_history`].
fn key_writes(
    history: &[Op],
    acked: &[Acked],
    lease_run: &leases::LeaseRun,
    expected: &Values,
) -> BTreeMap<String, watchers::KeyWrites> {
    let mut keys: BTreeMap<String, watchers::KeyWrites> = BTreeMap::new();
    for (key, value) in expected {
        keys.entry(key.clone()).or_default().end = value.as_deref().map(identity);
    }
    for op in history {
        let k = keys.entry(op.key.clone()).or_default();
        match &op.kind {
            OpKind::Put(value) => {
                k.values.insert(value.clone(), false);
            }
            OpKind::Delete => k.deletes += 1,
            // The runner issues no compare-and-set.
            OpKind::Get | OpKind::Cas { .. } => {}
        }
    }
    for (key, revision, put) in acked {
        keys.entry(key.clone())
            .or_default()
            .acked
            .insert(*revision, put.clone());
    }
    for l in &lease_run.leases {
        let k = keys.entry(l.key.clone()).or_default();
        k.values.insert(l.value.clone(), false);
        k.lease = l.id;
        if let Some(revision) = l.put_revision {
            k.acked.insert(revision, Some(l.value.clone()));
            if let leases::Fate::Revoked(revoked) = l.fate {
                k.acked.insert(revoked, None);
            }
        }
        k.end = matches!(l.fate, leases::Fate::Kept(_)).then(|| l.value.clone());
    }
    keys
}

/// The watch check over every watcher's events up to `end` (see [`watchers`]): the failures,
/// and the acknowledged writes whose answer carried a later revision than the change.
fn check_watchers(
    seen: &[(String, Vec<watchers::Seen>)],
    base: i64,
    end: i64,
    keys: &mut BTreeMap<String, watchers::KeyWrites>,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    let Some((first, events)) = seen.first() else {
        return vec![("watch", "no watcher: nothing to check".to_string())];
    };
    if events.is_empty() {
        failures.push((
            "watch",
            format!("the watcher on {first} saw no event: nothing to check"),
        ));
    }
    for (name, events) in seen {
        if let Err(e) = watchers::check_sequence(name, events, base, end) {
            failures.push(("watch", e));
        }
    }
    for (name, other) in &seen[1..] {
        if let Err(e) = watchers::check_agree((first, events), (name, other)) {
            failures.push(("watch", e));
        }
    }
    match watchers::check_history(events, keys) {
        // A write's answer carries the revision its change is at, also when a retry was
        // answered from the client's session (it once carried the revision of the retry).
        Ok(late) => failures.extend(late.into_iter().map(|l| {
            (
                "watch",
                format!(
                    "an acknowledged write's answer carried another revision than its change: {l}"
                ),
            )
        })),
        Err(e) => failures.push(("watch", format!("the watcher on {first}: {e}"))),
    }
    failures
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvstore-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kvstore-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A failed check: its name (what `scripts/chaos.sh self-test` looks for) and what happened.
type Failure = (&'static str, String);

async fn run(args: Args) -> anyhow::Result<bool> {
    if !(1..=7).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 7");
    }
    let bin = match &args.kvstore {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kvstore"),
    };
    if !bin.exists() {
        bail!(
            "kvstore binary not found at {} (build it, or pass --kvstore)",
            bin.display()
        );
    }
    let tmp;
    let work = match &args.work_dir {
        Some(p) => p.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!(
                "kvstore-chaos-{}-{}",
                args.seed,
                std::process::id()
            ));
            tmp
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let n = args.nodes;
    let (seed_mode, seed_snapshots) = node_variant(args.seed);
    let read_mode = args.read_mode.as_deref().unwrap_or(seed_mode);
    let mut variant = vec!["--read-mode".to_string(), read_mode.to_string()];
    if let Some(entries) = args.snapshot_entries.or(seed_snapshots) {
        variant.extend(["--snapshot-entries".to_string(), entries.to_string()]);
    }
    println!(
        "kvstore-chaos: seed {} , {} nodes ({}), {} s of faults, {} clients, {}% large writes, work dir {}",
        args.seed,
        n,
        variant.join(" "),
        args.duration,
        args.clients,
        args.large_percent,
        work.display()
    );
    if let Some(test) = args.self_test {
        println!("SELF-TEST {test:?}: this run is sabotaged and must end in FAIL");
    }
    // Where each node listens and how peers reach it.
    let netns = match args.net.as_str() {
        "proxy" => None,
        mode => match Netns::setup(n, args.seed) {
            Ok(net) => Some(net),
            Err(e) if mode == "auto" => {
                println!("network namespaces unavailable ({e:#}); falling back to the TCP proxy");
                None
            }
            Err(e) => return Err(e.context("setting up network namespaces")),
        },
    };
    let mut node_args: BTreeMap<u64, (PathBuf, Vec<String>, String, u16)> = BTreeMap::new();
    let mut network = match netns {
        Some(net) => {
            for i in 1..=n {
                let peers: Vec<String> = (1..=n)
                    .filter(|&j| j != i)
                    .map(|j| format!("{j}={}:7000", net.addr(j)))
                    .collect();
                let mut a: Vec<String> = ["netns", "exec"].map(String::from).to_vec();
                a.extend([net.ns(i), bin.display().to_string()]);
                a.extend([
                    "--host".to_string(),
                    net.addr(i),
                    "--port".into(),
                    "7000".into(),
                ]);
                if !peers.is_empty() {
                    a.extend(["--peers".to_string(), peers.join(",")]);
                }
                node_args.insert(i, (PathBuf::from("ip"), a, net.addr(i), 7000));
            }
            Network::Netns {
                net,
                undo: Vec::new(),
            }
        }
        None => {
            let ports: BTreeMap<u64, u16> = (1..=n)
                .map(|i| Ok((i, free_port()?)))
                .collect::<anyhow::Result<_>>()?;
            let mut links: BTreeMap<(u64, u64), Link> = BTreeMap::new();
            for i in 1..=n {
                let mut peers = Vec::new();
                for j in (1..=n).filter(|&j| j != i) {
                    let (pport, link) = Link::spawn(ports[&j])
                        .await
                        .context("binding a proxy port")?;
                    links.insert((i, j), link);
                    peers.push(format!("{j}=127.0.0.1:{pport}"));
                }
                let mut a = vec!["--port".to_string(), ports[&i].to_string()];
                if !peers.is_empty() {
                    a.extend(["--peers".to_string(), peers.join(",")]);
                }
                node_args.insert(i, (bin.clone(), a, "127.0.0.1".into(), ports[&i]));
            }
            Network::Proxy(links)
        }
    };
    if args.membership && matches!(network, Network::Proxy(_)) {
        bail!("--membership needs network namespaces (--net netns: root and iproute2): an added node gets its own namespace");
    }
    if args.membership && n < 3 {
        bail!("--membership needs --nodes 3 or more: a replacement removes a voter first");
    }
    if args.self_test == Some(SelfTest::StaleMember) && !args.membership {
        bail!("--self-test stale-member needs --membership");
    }
    if args.self_test == Some(SelfTest::IpFail) && matches!(network, Network::Proxy(_)) {
        bail!("--self-test ip-fail needs network namespaces (--net netns): the proxy runs no ip command");
    }
    println!("{}", network.describe());
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    let mut endpoints: Vec<String> = Vec::new();
    let mut common: Vec<String> = vec![
        "--election-timeout-ms".into(),
        ELECTION_TIMEOUT_MS.to_string(),
        "--heartbeat-interval-ms".into(),
        "30".into(),
        // The watchers resume from any revision of the run: keep the whole history.
        "--auto-compaction-retention".into(),
        "0".into(),
    ];
    common.extend(variant.iter().cloned());
    let launch = membership::Launch {
        bin: bin.clone(),
        work: work.clone(),
        common,
    };
    for (i, (program, mut a, host, port)) in node_args {
        a.extend([
            "--id".to_string(),
            i.to_string(),
            "--data-dir".into(),
            work.join(format!("node-{i}")).display().to_string(),
        ]);
        a.extend(launch.common.iter().cloned());
        endpoints.push(format!("{host}:{port}"));
        let mut node = Node {
            id: i,
            program,
            args: a,
            log: work.join(format!("node-{i}.log")),
            child: None,
            stopped: false,
            removed: false,
        };
        node.start()?;
        nodes.insert(i, node);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_of(&endpoints).await.is_none() {
        if Instant::now() > deadline {
            bail!(
                "no leader elected within 10 s of start; see the logs in {}",
                work.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Watchers, from the revision before the workload.
    let mut reader = Client::with_options(
        endpoints.clone(),
        ClientOptions::with_timeout(Duration::from_secs(10)),
    )?;
    let base = reader
        .get("k0", pb::Consistency::Linearizable)
        .await
        .context("reading the revision before the workload")?
        .header
        .revision;
    let mut watchers = watchers::Watchers::start(&endpoints, base)?;
    let mut membership = args.membership.then(|| {
        let addrs = (1..=n).zip(endpoints.iter().cloned()).collect();
        membership::Membership::new(addrs, &mut rng)
    });

    // Workload.
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        stop: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        counts: Counts::default(),
        endpoints: Mutex::new((0, endpoints.clone())),
    });
    let min_ttl =
        kvstore::rpc::etcd::member::min_lease_ttl(Duration::from_millis(ELECTION_TIMEOUT_MS));
    let lease_tasks: Vec<_> = (0..leases::CLIENTS)
        .map(|c| {
            tokio::spawn(leases::lease_loop(
                c,
                endpoints.clone(),
                min_ttl,
                args.seed.wrapping_mul(1000).wrapping_add(500 + c as u64),
                shared.clone(),
            ))
        })
        .collect();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let workload = Workload {
            idx: c,
            endpoints: endpoints.clone(),
            keys: args.keys,
            large_percent: args.large_percent,
            seed: args.seed.wrapping_mul(1000).wrapping_add(c as u64),
        };
        tasks.push(tokio::spawn(client_loop(workload, shared.clone())));
    }

    // Leader watcher: counts distinct (term, leader) pairs.
    let leaders = Arc::new(Mutex::new(BTreeSet::new()));
    let watcher = {
        let (leaders, shared) = (leaders.clone(), shared.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(l) = leader_of(&shared.endpoints()).await {
                    leaders.lock().unwrap_or_else(|p| p.into_inner()).insert(l);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults.
    let mut failures: Vec<Failure> = Vec::new();
    let mut exits: Vec<String> = Vec::new();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let fault_end = Instant::now() + Duration::from_secs(args.duration);
    let rogue_at = Instant::now() + Duration::from_secs(args.duration) / 3;
    let mut rogue_done = false;
    let mut down: BTreeMap<u64, Instant> = BTreeMap::new(); // killed, restart at
    let mut frozen: BTreeMap<u64, Instant> = BTreeMap::new(); // stopped, resume at
    let mut heal_at: Option<Instant> = None;
    // What a membership step borrows from the fault loop.
    macro_rules! faults_for_membership {
        () => {
            membership::Faults {
                nodes: &mut nodes,
                down: &mut down,
                frozen: &mut frozen,
                network: &mut network,
                watchers: &mut watchers,
                shared: &shared,
                failures: &mut failures,
                faults: &mut faults,
            }
        };
    }
    while Instant::now() < fault_end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if let Some(m) = membership.as_mut() {
            m.reap_removed(&mut nodes, start);
        }
        check_exits(&mut nodes, start, &mut exits, true)?;
        let now = Instant::now();
        for (id, when) in down.clone() {
            if when <= now {
                if let Some(node) = nodes.get_mut(&id) {
                    node.start()?;
                }
                down.remove(&id);
            }
        }
        for (id, when) in frozen.clone() {
            if when <= now {
                if let Some(node) = nodes.get_mut(&id) {
                    if let Err(e) = node.signal("-CONT") {
                        failures.push(("fault", format!("SIGCONT of node {id}: {e:#}")));
                    }
                    node.stopped = false;
                }
                frozen.remove(&id);
            }
        }
        if heal_at.is_some_and(|h| h <= now) {
            heal_at = None;
            if let Err(e) = network.heal() {
                failures.push(("partition", format!("healing: {e:#}")));
                break;
            }
        }
        if args.self_test == Some(SelfTest::RogueKill) && !rogue_done && now >= rogue_at {
            let pid = nodes
                .values()
                .find(|node| node.running() && !node.stopped)
                .and_then(|node| Some((node.id, node.child.as_ref()?.id())));
            if let Some((id, pid)) = pid {
                println!(
                    "{} self-test: SIGKILL node {id} behind the runner's back",
                    at(start)
                );
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                rogue_done = true;
            }
        }
        if args.self_test == Some(SelfTest::NoFaults) {
            continue;
        }
        if let Some(m) = membership.as_mut() {
            let leader = leader_of(&shared.endpoints()).await.map(|(_, id)| id);
            let start_new = Instant::now() + membership::MIN_LEFT < fault_end;
            let mut f = faults_for_membership!();
            m.step(&mut f, &mut rng, &launch, leader, start_new).await;
        }
        // At most a minority of the voters disturbed by process faults at once, so the
        // cluster keeps serving (none while a replacement has removed a voter).
        let disturbed = down.len() + frozen.len();
        let voters = membership.as_ref().map_or(n, |m| m.voter_count());
        let minority = (voters.saturating_sub(1) / 2) as usize;
        let target = match &membership {
            None => rng.random_range(1..=n),
            Some(m) => m.random_voter(&mut rng),
        };
        let members: Vec<u64> = membership
            .as_ref()
            .map_or_else(|| (1..=n).collect(), |m| m.member_ids());
        let leader = leader_of(&shared.endpoints()).await.map(|(_, id)| id);
        let victim = if rng.random_bool(0.5) {
            leader.unwrap_or(target)
        } else {
            target
        };
        let of_leader = |what: &str| {
            if Some(victim) == leader {
                format!(" (leader{what})")
            } else {
                String::new()
            }
        };
        let Some(node) = nodes.get_mut(&victim) else {
            continue;
        };
        let busy = down.contains_key(&victim) || frozen.contains_key(&victim) || !node.running();
        match rng.random_range(0..4u8) {
            0 if disturbed < minority && !busy => match node.kill() {
                Ok(()) => {
                    println!("{} SIGKILL node {victim}{}", at(start), of_leader(""));
                    down.insert(
                        victim,
                        now + Duration::from_millis(rng.random_range(500..3000)),
                    );
                    *faults.entry("sigkill").or_default() += 1;
                }
                Err(e) => failures.push(("fault", format!("SIGKILL of node {victim}: {e:#}"))),
            },
            1 if disturbed < minority && !busy => match node.signal("-STOP") {
                Ok(()) => {
                    node.stopped = true;
                    println!(
                        "{} SIGSTOP node {victim}{}",
                        at(start),
                        of_leader(", now a zombie")
                    );
                    frozen.insert(
                        victim,
                        now + Duration::from_millis(rng.random_range(1000..4000)),
                    );
                    *faults.entry("sigstop").or_default() += 1;
                }
                Err(e) => failures.push(("fault", format!("SIGSTOP of node {victim}: {e:#}"))),
            },
            2 if heal_at.is_none() => {
                let mut one_way = rng.random_bool(0.3);
                if let (Some(SelfTest::IpFail), Network::Netns { net, .. }) =
                    (args.self_test, &network)
                {
                    println!(
                        "{} self-test: deleting node {victim}'s veth behind the runner's back",
                        at(start)
                    );
                    let _ = ip(&["link", "del", &net.veth(victim)]);
                    one_way = false;
                }
                let how = if one_way {
                    "(one-way: its peers cannot reach it)"
                } else {
                    "(isolated)"
                };
                heal_at = Some(now + Duration::from_millis(rng.random_range(1000..4000)));
                if let Err(e) = network.partition(victim, one_way, &members) {
                    println!("{} PARTITION node {victim} {how} FAILED: {e:#}", at(start));
                    failures.push(("partition", format!("node {victim} {how}: {e:#}")));
                    // The network is in an unknown state: stop injecting faults.
                    break;
                }
                println!("{} PARTITION node {victim} {how}", at(start));
                let kind = if one_way {
                    "one-way partition"
                } else {
                    "partition"
                };
                *faults.entry(kind).or_default() += 1;
            }
            _ => {}
        }
    }

    // Recovery: heal, resume, restart; let the clients finish.
    println!(
        "{} faults stop: healing the network, resuming and restarting every node",
        at(start)
    );
    let faults_stopped = Instant::now();
    if let Err(e) = network.heal() {
        failures.push(("partition", format!("healing at the end: {e:#}")));
    }
    for id in frozen.keys() {
        if let Some(node) = nodes.get_mut(id) {
            if let Err(e) = node.signal("-CONT") {
                failures.push(("fault", format!("SIGCONT of node {id}: {e:#}")));
            }
            node.stopped = false;
        }
    }
    for id in down.keys() {
        if let Some(node) = nodes.get_mut(id) {
            node.start()?;
        }
    }
    down.clear();
    frozen.clear();
    if let Some(m) = membership.as_mut() {
        let mut f = faults_for_membership!();
        m.finish(&mut f, &mut rng, &launch).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
    let mut lease_run = leases::LeaseRun::default();
    for t in lease_tasks {
        lease_run.merge(t.await.unwrap_or_default());
    }
    if let Some(m) = membership.as_mut() {
        m.reap_removed(&mut nodes, start);
    }
    check_exits(&mut nodes, start, &mut exits, true)?;
    // The final members (all of them without --membership).
    let members: Vec<(u64, String)> = membership.as_ref().map_or_else(
        || (1..=n).zip(endpoints.iter().cloned()).collect(),
        |m| m.voters(),
    );
    let endpoints: Vec<String> = members.iter().map(|(_, a)| a.clone()).collect();
    let mut reader = Client::with_options(
        endpoints.clone(),
        ClientOptions::with_timeout(Duration::from_secs(10)),
    )?;

    // Final reads and convergence, once a leader is back.
    let mut final_reads = 0;
    let mut convergence = String::from("not checked");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut leader = leader_of(&endpoints).await;
    while leader.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader = leader_of(&endpoints).await;
    }
    // Leased keys: kept ones stay, the others go.
    let mut lease_end = leases::LeaseEnd::default();
    if leader.is_some() {
        let bound = Duration::from_secs(args.settle).saturating_sub(faults_stopped.elapsed());
        let (end, lease_failures) = leases::check_end(
            &mut lease_run,
            &endpoints,
            bound.max(Duration::from_secs(3)),
            match args.self_test {
                Some(SelfTest::KeptExpired) => Some(leases::Sabotage::ClaimKeptExpired),
                Some(SelfTest::ExpiredKept) => Some(leases::Sabotage::ClaimExpiredKept),
                _ => None,
            },
            start,
        )
        .await;
        lease_end = end;
        println!(
            "{} leases not kept alive: waited {:.1} s for them and their keys to be gone",
            at(start),
            lease_end.gone_after
        );
        failures.extend(lease_failures.into_iter().map(|f| ("lease", f)));
    }
    if let (Some(SelfTest::Diverge), Some((_, leader))) = (args.self_test, leader) {
        if let Some(follower) = members.iter().map(|(i, _)| *i).find(|&i| i != leader) {
            println!(
                "{} self-test: cutting node {follower} off, then one more write",
                at(start)
            );
            let ids: Vec<u64> = members.iter().map(|(i, _)| *i).collect();
            if let Err(e) = network.partition(follower, false, &ids) {
                failures.push(("partition", format!("self-test cut: {e:#}")));
            }
            let invoke = micros(start);
            let put = reader.put("k0", "selftest").await;
            if let Ok(h) = &put {
                shared.record_acked("k0", h.revision, Some("selftest".into()));
            }
            let done = put.is_ok();
            shared.record(Op {
                client: 998,
                key: "k0".into(),
                kind: OpKind::Put("selftest".into()),
                invoke,
                complete: done.then(|| micros(start)),
                result: done.then_some(OpResult::Put),
            });
        }
    }
    let mut expected = Values::new();
    let mut end_revision = base;
    if leader.is_none() {
        failures.push((
            "leader",
            "no leader within 20 s after faults stopped".into(),
        ));
    } else {
        for k in 0..args.keys {
            let key = format!("k{k}");
            let invoke = micros(start);
            match reader.get(&key, pb::Consistency::Linearizable).await {
                Ok(g) => {
                    final_reads += 1;
                    end_revision = end_revision.max(g.header.revision);
                    shared.record(Op {
                        client: 999,
                        key: key.clone(),
                        kind: OpKind::Get,
                        invoke,
                        complete: Some(micros(start)),
                        result: Some(OpResult::Get(g.value.as_deref().map(identity))),
                    });
                    expected.insert(key, g.value);
                }
                Err(e) => failures.push((
                    "final-read",
                    format!("linearizable read of {key} failed on a healed cluster: {e}"),
                )),
            }
        }
        if final_reads == args.keys {
            let bound = Duration::from_secs(args.settle).saturating_sub(faults_stopped.elapsed());
            match converge(&members, &expected, bound).await {
                Ok((applied, took)) => {
                    convergence = format!(
                        "every node applied up to index {applied} and serves the same {} values ({:.1} s after the final reads)",
                        expected.len(),
                        took.as_secs_f64()
                    );
                }
                Err(e) => {
                    convergence = "NOT converged".into();
                    let within = args.settle;
                    let e = format!("not converged within {within} s of the faults stopping: {e}");
                    failures.push(("convergence", e));
                }
            }
        }
    }

    // What the watchers saw, against what the clients wrote and the final state.
    let mut watch_summary = String::from("not checked (no final reads)");
    if final_reads == args.keys {
        let history = shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let acked = shared
            .acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut keys = key_writes(&history, &acked, &lease_run, &expected);
        match watchers.finish(end_revision, WATCH_CATCH_UP).await {
            Err(e) => {
                watch_summary = "NOT caught up".into();
                failures.push(("watch", e));
            }
            Ok(mut seen) => {
                if args.self_test == Some(SelfTest::DropEvent) {
                    if let Some((name, events)) = seen.first_mut() {
                        let i = events.len() / 2;
                        if i < events.len() {
                            let e = events.remove(i);
                            println!(
                                "{} self-test: dropping `{e}` from the watcher on {name}",
                                at(start)
                            );
                        }
                    }
                }
                let counts: Vec<String> = seen
                    .iter()
                    .map(|(name, events)| format!("{} on {name}", events.len()))
                    .collect();
                watch_summary = format!(
                    "events seen per watcher (revisions {}..={end_revision}): {}",
                    base + 1,
                    counts.join(", ")
                );
                failures.extend(check_watchers(&seen, base, end_revision, &mut keys));
            }
        }
    }

    // The membership: every member agrees with the runner's; removed nodes stopped, saying why.
    if let Some(m) = membership.as_mut() {
        let stale = args.self_test == Some(SelfTest::StaleMember);
        let found = m.check_end(&mut nodes, start, stale).await;
        failures.extend(found.into_iter().map(|f| ("membership", f)));
    }

    // The nodes' own health: exits the runner did not cause, panics in the logs.
    check_exits(&mut nodes, start, &mut exits, false)?;
    failures.extend(exits.iter().map(|e| ("unexpected-exit", e.clone())));
    if args.self_test == Some(SelfTest::FakePanic) {
        if let Some(node) = nodes.get(&1) {
            let mut log = std::fs::OpenOptions::new().append(true).open(&node.log)?;
            writeln!(
                log,
                "thread 'main' panicked at src/self_test.rs:1:1: injected by --self-test fake-panic"
            )?;
        }
    }
    failures.extend(scan_for_panics(&nodes).into_iter().map(|p| ("panic", p)));

    let history = shared
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Err(v) = lincheck::check(&history) {
        failures.push(("linearizability", v.to_string()));
    }
    let counts = &shared.counts;
    let ok = counts.ok.load(Ordering::Relaxed);
    let min_ops = MIN_OPS_PER_SEC * args.duration;
    if ok < min_ops {
        failures.push((
            "min-operations",
            format!("{ok} successful operations, fewer than the {min_ops} required ({MIN_OPS_PER_SEC} per second of faults)"),
        ));
    }
    let injected: u64 = faults.values().sum();
    let min_faults = (args.duration / SECS_PER_MIN_FAULT).max(1);
    if injected < min_faults {
        failures.push((
            "min-faults",
            format!("{injected} faults injected, fewer than the {min_faults} required (one per {SECS_PER_MIN_FAULT} s of faults)"),
        ));
    }

    let leaders = leaders.lock().unwrap_or_else(|p| p.into_inner()).len();
    println!(
        "summary (seed {}; nodes ran with {}):",
        args.seed,
        variant.join(" ")
    );
    println!(
        "  operations: {ok} ok (at least {min_ops} required), {} failed, {} unknown; {final_reads} final reads",
        counts.failed.load(Ordering::Relaxed),
        counts.unknown.load(Ordering::Relaxed),
    );
    println!(
        "  large values written: {} of 64 KiB to 1 MiB, {} of them at the {MAX_VALUE_BYTES}-byte limit",
        counts.large.load(Ordering::Relaxed),
        counts.at_limit.load(Ordering::Relaxed)
    );
    let f: Vec<String> = faults.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "  faults injected: {} (at least {min_faults} required)",
        if f.is_empty() {
            "none".to_string()
        } else {
            f.join(", ")
        }
    );
    println!("  leaders seen (distinct term, leader): {leaders}");
    println!("  watchers: {watch_summary}");
    let ttls: Vec<String> = lease_run
        .ttls
        .iter()
        .map(|(ttl, n)| format!("{n} of {ttl} s"))
        .collect();
    println!(
        "  leases: {} granted ({}), {} kept alive to the end, {} lapsed and expired ({} keepers dropped mid-run), {} revoked, {} lost under the faults",
        lease_run.granted,
        ttls.join(", "),
        lease_end.kept,
        lease_end.expired,
        lease_run.released,
        lease_end.revoked,
        lease_end.lost,
    );
    if lease_run.granted == 0
        || lease_end.kept == 0
        || lease_end.expired == 0
        || lease_end.revoked == 0
    {
        failures.push((
            "lease",
            format!(
                "nothing to check: {} leases granted, {} kept alive to the end, {} expired, {} revoked (each must be at least 1)",
                lease_run.granted, lease_end.kept, lease_end.expired, lease_end.revoked
            ),
        ));
    }
    println!("  replicas: {convergence}");
    if let Some(m) = &membership {
        println!("  membership: {}", m.summary());
    }
    println!(
        "  node processes: {} unexpected exits, {} with a panic in their log",
        exits.len(),
        failures.iter().filter(|(c, _)| *c == "panic").count()
    );
    if !failures.iter().any(|(c, _)| *c == "linearizability") {
        println!(
            "  history of {} operations is linearizable; every acknowledged write is accounted for",
            history.len()
        );
    }
    if failures.is_empty() {
        println!("PASS (seed {})", args.seed);
        if args.work_dir.is_none() {
            drop(nodes);
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(true);
    }
    if args.self_test.is_some() && args.work_dir.is_none() {
        // A sabotaged run is meant to fail: nothing to keep.
        drop(nodes);
        let _ = std::fs::remove_dir_all(&work);
    }
    for (check, what) in &failures {
        println!("FAILED {check}: {what}");
    }
    let kept = if work.exists() {
        format!("; logs and data kept in {}", work.display())
    } else {
        String::new()
    };
    println!(
        "FAIL (seed {}): {} failed checks{kept}",
        args.seed,
        failures.len()
    );
    Ok(false)
}
