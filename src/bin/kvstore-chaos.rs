//! `kvstore-chaos`: real processes under real faults.
//!
//! Starts a cluster of the real `kvstore` binary on loopback, drives concurrent clients through
//! the gRPC API (the crate's client library, with exactly-once sessions), and injects faults on
//! a schedule drawn from a seed: SIGKILL and restart, SIGSTOP/SIGCONT (a frozen leader is the
//! zombie of the fencing problem), and network partitions. Every peer link (node i -> node j)
//! goes through a loopback TCP proxy owned by this runner, so it can cut any link, one way or
//! both. At the end it heals everything, reads every key back, checks the whole history for
//! linearizability with `kvstore::lincheck`, and prints a summary ending in PASS or FAIL.
//!
//! ```text
//! kvstore-chaos --seed 7 --duration 60 --nodes 3
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Real-process fault run of a kvstore cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Seed of the fault schedule and the workload.
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
}

/// Time since the run started, in microseconds: the history's clock.
fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
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

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
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

    fn setup(nodes: u64, seed: u64) -> anyhow::Result<Netns> {
        let tag = std::process::id() % 100_000;
        let net = Netns {
            tag,
            subnet: (seed % 200) as u8 + 20,
            nodes,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.77.{}.254/24", net.subnet),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            let (ns, veth) = (net.ns(i), net.veth(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
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
    Netns(Netns),
}

impl Network {
    /// Cuts `victim` off: `one_way` means its peers cannot reach it (it may still try to reach
    /// them; over TCP that fails too, but clients can still reach it), otherwise it is isolated
    /// from everyone.
    fn partition(&self, victim: u64, one_way: bool, n: u64) {
        match self {
            Network::Proxy(links) => {
                for o in (1..=n).filter(|&o| o != victim) {
                    if let Some(l) = links.get(&(o, victim)) {
                        l.set_cut(true);
                    }
                    if !one_way {
                        if let Some(l) = links.get(&(victim, o)) {
                            l.set_cut(true);
                        }
                    }
                }
            }
            Network::Netns(net) if one_way => {
                for o in (1..=n).filter(|&o| o != victim) {
                    let _ = ip(&[
                        "netns",
                        "exec",
                        &net.ns(o),
                        "ip",
                        "route",
                        "add",
                        "blackhole",
                        &format!("{}/32", net.addr(victim)),
                    ]);
                }
            }
            Network::Netns(net) => {
                let _ = ip(&["link", "set", &net.veth(victim), "down"]);
            }
        }
    }

    fn heal(&self, n: u64) {
        match self {
            Network::Proxy(links) => {
                for l in links.values() {
                    l.set_cut(false);
                }
            }
            Network::Netns(net) => {
                for v in 1..=n {
                    let _ = ip(&["link", "set", &net.veth(v), "up"]);
                    for o in (1..=n).filter(|&o| o != v) {
                        let _ = ip(&[
                            "netns",
                            "exec",
                            &net.ns(o),
                            "ip",
                            "route",
                            "del",
                            "blackhole",
                            &format!("{}/32", net.addr(v)),
                        ]);
                    }
                }
            }
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Network::Proxy(_) => "partitions: loopback TCP proxy on every peer link (node i -> node j), cut by the runner",
            Network::Netns(_) => "partitions: network namespaces, one per node, veth links on a private bridge (isolation: link down; one-way: blackhole routes in the peers' namespaces)",
        }
    }
}

struct Node {
    id: u64,
    port: u16,
    /// The command: the kvstore binary itself, or `ip netns exec NS kvstore`.
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Node {
    fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
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
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        self.stopped = false;
        Ok(())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if self.stopped {
            self.signal("-CONT");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped = false;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
}

fn classify(e: &ClientError) -> bool {
    // True if the error proves the write did not apply.
    matches!(
        e,
        ClientError::InvalidArgument(_) | ClientError::FailedPrecondition(_)
    )
}

/// What the client tasks share with the runner.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    history: Mutex<Vec<Op>>,
    counts: Counts,
}

async fn client_loop(
    idx: usize,
    endpoints: Vec<String>,
    keys: usize,
    seed: u64,
    shared: Arc<Shared>,
) {
    let (start, stop, history, counts) =
        (shared.start, &shared.stop, &shared.history, &shared.counts);
    let mut rng = SmallRng::seed_from_u64(seed);
    let Ok(mut client) = Client::with_options(
        endpoints,
        ClientOptions::with_timeout(Duration::from_secs(3)),
    ) else {
        return;
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.random_range(0..keys));
        let invoke = micros(start);
        let (kind, outcome) = match rng.random_range(0..10u8) {
            0..=4 => {
                n += 1;
                let value = format!("c{idx}-{n}");
                let r = client.put(&key, &value).await;
                (OpKind::Put(value), r.map(|_| OpResult::Put))
            }
            5..=8 => {
                let r = client.get(&key, pb::Consistency::Linearizable).await;
                (OpKind::Get, r.map(|g| OpResult::Get(g.value)))
            }
            _ => {
                let r = client.delete(&key).await;
                (OpKind::Delete, r.map(|d| OpResult::Delete(d.deleted)))
            }
        };
        let complete = micros(start);
        let op = match outcome {
            Ok(result) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                Some(Op {
                    client: idx as u64,
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
                    client: idx as u64,
                    key,
                    kind,
                    invoke,
                    complete: None,
                    result: None,
                })
            }
        };
        if let Some(op) = op {
            history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
        }
    }
}

async fn leader_of(endpoints: &[String]) -> Option<(u64, u64)> {
    let mut seen = BTreeSet::new();
    for ep in endpoints {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{ep}")) else {
            continue;
        };
        let Ok(ch) = ch
            .connect_timeout(Duration::from_millis(200))
            .timeout(Duration::from_millis(300))
            .connect()
            .await
        else {
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
    println!(
        "kvstore-chaos: seed {} , {} nodes, {} s of faults, {} clients, work dir {}",
        args.seed,
        n,
        args.duration,
        args.clients,
        work.display()
    );
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
    let network = match netns {
        Some(net) => {
            for i in 1..=n {
                let peers: Vec<String> = (1..=n)
                    .filter(|&j| j != i)
                    .map(|j| format!("{j}={}:7000", net.addr(j)))
                    .collect();
                let mut a = vec![
                    "netns".to_string(),
                    "exec".into(),
                    net.ns(i),
                    bin.display().to_string(),
                ];
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
            Network::Netns(net)
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
    println!("{}", network.describe());
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    let mut endpoints: Vec<String> = Vec::new();
    for (i, (program, mut a, host, port)) in node_args {
        a.extend([
            "--id".to_string(),
            i.to_string(),
            "--data-dir".into(),
            work.join(format!("node-{i}")).display().to_string(),
            "--election-timeout-ms".into(),
            "300".into(),
            "--heartbeat-interval-ms".into(),
            "30".into(),
        ]);
        endpoints.push(format!("{host}:{port}"));
        let mut node = Node {
            id: i,
            port,
            program,
            args: a,
            log: work.join(format!("node-{i}.log")),
            child: None,
            stopped: false,
        };
        node.start(&bin)?;
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

    // Workload.
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        stop: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
        counts: Counts::default(),
    });
    let (stop, history, counts) = (&shared.stop, &shared.history, &shared.counts);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        tasks.push(tokio::spawn(client_loop(
            c,
            endpoints.clone(),
            args.keys,
            args.seed.wrapping_mul(1000).wrapping_add(c as u64),
            shared.clone(),
        )));
    }

    // Leader watcher: counts distinct (term, leader) pairs.
    let leaders = Arc::new(Mutex::new(BTreeSet::new()));
    let watcher = {
        let (eps, leaders, shared) = (endpoints.clone(), leaders.clone(), shared.clone());
        tokio::spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(l) = leader_of(&eps).await {
                    leaders.lock().unwrap_or_else(|p| p.into_inner()).insert(l);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults.
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let fault_end = Instant::now() + Duration::from_secs(args.duration);
    let mut down: BTreeMap<u64, Instant> = BTreeMap::new(); // killed, restart at
    let mut frozen: BTreeMap<u64, Instant> = BTreeMap::new(); // stopped, resume at
    let mut heal_at: Option<Instant> = None;
    while Instant::now() < fault_end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let now = Instant::now();
        for (id, at) in down.clone() {
            if at <= now {
                if let Some(node) = nodes.get_mut(&id) {
                    node.start(&bin)?;
                }
                down.remove(&id);
            }
        }
        for (id, at) in frozen.clone() {
            if at <= now {
                if let Some(node) = nodes.get_mut(&id) {
                    node.signal("-CONT");
                    node.stopped = false;
                }
                frozen.remove(&id);
            }
        }
        if heal_at.is_some_and(|h| h <= now) {
            network.heal(n);
            heal_at = None;
        }
        // At most a minority disturbed by process faults at once, so the cluster keeps serving.
        let disturbed = down.len() + frozen.len();
        let minority = ((n - 1) / 2) as usize;
        let target = rng.random_range(1..=n);
        let leader = leader_of(&endpoints).await.map(|(_, id)| id);
        let victim = if rng.random_bool(0.5) {
            leader.unwrap_or(target)
        } else {
            target
        };
        let busy = down.contains_key(&victim) || frozen.contains_key(&victim);
        match rng.random_range(0..4u8) {
            0 if disturbed < minority && !busy => {
                if let Some(node) = nodes.get_mut(&victim) {
                    node.kill();
                    println!(
                        "[{:>6.1}s] SIGKILL node {victim}{}",
                        start.elapsed().as_secs_f64(),
                        if Some(victim) == leader {
                            " (leader)"
                        } else {
                            ""
                        }
                    );
                    down.insert(
                        victim,
                        now + Duration::from_millis(rng.random_range(500..3000)),
                    );
                    *faults.entry("sigkill").or_default() += 1;
                }
            }
            1 if disturbed < minority && !busy => {
                if let Some(node) = nodes.get_mut(&victim) {
                    node.signal("-STOP");
                    node.stopped = true;
                    println!(
                        "[{:>6.1}s] SIGSTOP node {victim}{}",
                        start.elapsed().as_secs_f64(),
                        if Some(victim) == leader {
                            " (leader, now a zombie)"
                        } else {
                            ""
                        }
                    );
                    frozen.insert(
                        victim,
                        now + Duration::from_millis(rng.random_range(1000..4000)),
                    );
                    *faults.entry("sigstop").or_default() += 1;
                }
            }
            2 if heal_at.is_none() => {
                let one_way = rng.random_bool(0.3);
                network.partition(victim, one_way, n);
                println!(
                    "[{:>6.1}s] PARTITION node {victim} {}",
                    start.elapsed().as_secs_f64(),
                    if one_way {
                        "(one-way: its peers cannot reach it)"
                    } else {
                        "(isolated)"
                    }
                );
                heal_at = Some(now + Duration::from_millis(rng.random_range(1000..4000)));
                *faults
                    .entry(if one_way {
                        "one-way partition"
                    } else {
                        "partition"
                    })
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    // Recovery: heal, resume, restart; let the clients finish; read everything back.
    println!(
        "[{:>6.1}s] faults stop: healing the network, resuming and restarting every node",
        start.elapsed().as_secs_f64()
    );
    network.heal(n);
    for id in frozen.keys() {
        if let Some(node) = nodes.get_mut(id) {
            node.signal("-CONT");
            node.stopped = false;
        }
    }
    for id in down.keys() {
        if let Some(node) = nodes.get_mut(id) {
            node.start(&bin)?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = watcher.await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_of(&endpoints).await.is_none() {
        if Instant::now() > deadline {
            println!(
                "FAIL (seed {}): no leader within 20 s after faults stopped; logs in {}",
                args.seed,
                work.display()
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reader = Client::with_options(
        endpoints.clone(),
        ClientOptions::with_timeout(Duration::from_secs(10)),
    )?;
    let mut final_reads = 0;
    for k in 0..args.keys {
        let key = format!("k{k}");
        let invoke = micros(start);
        match reader.get(&key, pb::Consistency::Linearizable).await {
            Ok(g) => {
                final_reads += 1;
                history.lock().unwrap_or_else(|p| p.into_inner()).push(Op {
                    client: 999,
                    key,
                    kind: OpKind::Get,
                    invoke,
                    complete: Some(micros(start)),
                    result: Some(OpResult::Get(g.value)),
                });
            }
            Err(e) => {
                println!(
                    "FAIL (seed {}): final read of {key} failed on a healed cluster: {e}",
                    args.seed
                );
                return Ok(false);
            }
        }
    }

    let history = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let verdict = lincheck::check(&history);
    let leaders = leaders.lock().unwrap_or_else(|p| p.into_inner()).len();
    println!("summary (seed {}):", args.seed);
    println!(
        "  operations: {} ok, {} failed, {} unknown; {} final reads",
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.unknown.load(Ordering::Relaxed),
        final_reads
    );
    let f: Vec<String> = faults.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "  faults injected: {}",
        if f.is_empty() {
            "none".to_string()
        } else {
            f.join(", ")
        }
    );
    println!("  leaders seen (distinct term, leader): {leaders}");
    match verdict {
        Ok(()) => {
            println!("  history of {} operations is linearizable; every acknowledged write is accounted for", history.len());
            println!("PASS (seed {})", args.seed);
            if args.work_dir.is_none() {
                drop(nodes);
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(true)
        }
        Err(v) => {
            println!("  {v}");
            println!(
                "FAIL (seed {}): logs and data kept in {}",
                args.seed,
                work.display()
            );
            Ok(false)
        }
    }
}

#[allow(dead_code)]
fn node_port(n: &Node) -> (u64, u16) {
    (n.id, n.port)
}
