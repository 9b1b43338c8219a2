//! Multi-process test harness: runs the real `kvstore` binary on free loopback ports, one
//! temp data dir and one log file per node, and kills every child on drop (also after a
//! failed assertion, so no test leaks a process). Waits poll a condition; they never sleep
//! to synchronise.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kvstore::client::{Client, ClientOptions};
use kvstore::faultnet::Link;
use kvstore::pb::cluster_client::ClusterClient;
use kvstore::pb::kv_client::KvClient;
use kvstore::pb::{Role, StatusRequest, StatusResponse};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

/// Election timeout given to every node: short, so tests are fast.
pub const ELECTION_TIMEOUT_MS: u64 = 300;
/// Heartbeat interval given to every node.
pub const HEARTBEAT_INTERVAL_MS: u64 = 30;
/// How long one status probe may take before the node counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between two evaluations of a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// One node process (or the slot for it while it is down).
pub struct Node {
    pub id: u64,
    pub port: u16,
    data_dir: TempDir,
    log_path: PathBuf,
    /// Byte offset in the log where the current incarnation started.
    log_start: u64,
    child: Option<Child>,
    /// SIGSTOPped and not yet SIGCONTinued.
    stopped: bool,
    peers: Vec<String>,
    /// `--join HOST:PORT` for a node added by a membership change.
    join: Option<String>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }
    /// Running and not frozen.
    pub fn is_live(&self) -> bool {
        self.child.is_some() && !self.stopped
    }
}

/// A cluster of `kvstore` processes on loopback.
pub struct Cluster {
    nodes: Vec<Node>,
    logs: TempDir,
    /// Flags added to every node's command line.
    extra_args: Vec<String>,
}

/// A loopback port nobody listens on right now (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `condition` until it yields `Some`, or panics after `deadline` naming `what`.
pub async fn poll_until<T>(
    deadline: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends a signal with the `kill` utility (no libc needed).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A lazily connecting channel with a short connect timeout.
pub fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .connect_lazy()
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with explicit `ID=127.0.0.1:PORT` peers; `n == 1` runs
    /// a single-node cluster (no `--peers`).
    pub fn start(n: u64) -> Cluster {
        Self::start_with(n, |_| {})
    }

    /// Like [`start`](Self::start), but calls `prepare` on every node (its data dir exists
    /// and is empty) before any process starts, e.g. to mount a small filesystem there.
    pub fn start_with(n: u64, prepare: impl FnMut(&Node)) -> Cluster {
        Self::start_full(n, &[], prepare)
    }

    /// Like [`start`](Self::start), with `args` added to every node's command line.
    pub fn start_args(n: u64, args: &[&str]) -> Cluster {
        Self::start_full(n, args, |_| {})
    }

    fn start_full(n: u64, args: &[&str], prepare: impl FnMut(&Node)) -> Cluster {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let direct = ports.clone();
        Self::build(ports, |_, to| direct[(to - 1) as usize], args, prepare)
    }

    /// Like [`start`](Self::start), but every peer link (node i's calls to node j) goes
    /// through a cuttable loopback proxy ([`kvstore::faultnet`]); clients connect directly.
    pub async fn start_behind_proxies(n: u64) -> (Cluster, Links) {
        Self::start_behind_proxies_args(n, &[]).await
    }

    /// Like [`start_behind_proxies`](Self::start_behind_proxies), with `args` added to every
    /// node's command line.
    pub async fn start_behind_proxies_args(n: u64, args: &[&str]) -> (Cluster, Links) {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut links = BTreeMap::new();
        let mut via = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|&to| to != from) {
                let (port, link) = Link::spawn(ports[(to - 1) as usize]).await.unwrap();
                via.insert((from, to), port);
                links.insert((from, to), link);
            }
        }
        let cluster = Self::build(ports, |from, to| via[&(from, to)], args, |_| {});
        (cluster, Links(links))
    }

    /// Starts nodes on `ports` (ids 1..), node `from` reaching node `to` at port
    /// `peer_port(from, to)` on loopback, each with `args` added to its command line.
    fn build(
        ports: Vec<u16>,
        peer_port: impl Fn(u64, u64) -> u16,
        args: &[&str],
        mut prepare: impl FnMut(&Node),
    ) -> Cluster {
        let logs = TempDir::new().unwrap();
        let n = ports.len() as u64;
        let mut nodes = Vec::new();
        for id in 1..=n {
            let peers = (1..=n)
                .filter(|&p| p != id)
                .map(|p| format!("{p}=127.0.0.1:{}", peer_port(id, p)))
                .collect();
            nodes.push(Node {
                id,
                port: ports[(id - 1) as usize],
                data_dir: TempDir::new().unwrap(),
                log_path: logs.path().join(format!("node-{id}.log")),
                log_start: 0,
                child: None,
                stopped: false,
                peers,
                join: None,
            });
        }
        nodes.iter().for_each(&mut prepare);
        let mut cluster = Cluster {
            nodes,
            logs,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }
    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr()
    }
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// The command line that starts node `id` (also used to start a rival process).
    pub fn command(&self, id: u64, port: u16) -> Command {
        let node = self.node(id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvstore"));
        command
            .args(["--id", &id.to_string(), "--port", &port.to_string()])
            .args(["--host", "127.0.0.1"])
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
            .args([
                "--heartbeat-interval-ms",
                &HEARTBEAT_INTERVAL_MS.to_string(),
            ])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        if !node.peers.is_empty() {
            command.args(["--peers", &node.peers.join(",")]);
        }
        if let Some(join) = &node.join {
            command.args(["--join", join]);
        }
        command
    }

    /// Starts a new node (the next id) on `port`, with a fresh data dir, joining the cluster
    /// through the member at `join` (it must have been added with `member add` first, at
    /// `127.0.0.1:<port>`); returns its id.
    pub fn add_joining(&mut self, port: u16, join: &str) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        self.nodes.push(Node {
            id,
            port,
            data_dir: TempDir::new().unwrap(),
            log_path: self.logs.path().join(format!("node-{id}.log")),
            log_start: 0,
            child: None,
            stopped: false,
            peers: Vec::new(),
            join: Some(join.to_string()),
        });
        self.spawn(id);
        id
    }

    fn spawn(&mut self, id: u64) {
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let log_start = log.metadata().unwrap().len();
        let child = self
            .command(id, node.port)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = self.node_mut(id);
        node.child = Some(child);
        node.log_start = log_start;
        node.stopped = false;
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("node is not running");
        if node.stopped {
            signal(child.id(), "CONT");
            node.stopped = false;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Deletes everything in node `id`'s data dir (the node must be down).
    pub fn wipe(&mut self, id: u64) {
        let node = self.node(id);
        assert!(node.child.is_none(), "wipe node {id} only while it is down");
        for entry in std::fs::read_dir(node.data_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    /// Starts node `id` again on the same port and data dir (after `kill` or `terminate`).
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// SIGSTOP node `id`: it keeps its sockets but does nothing (a "zombie").
    pub fn stop(&mut self, id: u64) {
        let node = self.node_mut(id);
        signal(
            node.child.as_ref().expect("node is not running").id(),
            "STOP",
        );
        node.stopped = true;
    }

    /// SIGCONT node `id`.
    pub fn cont(&mut self, id: u64) {
        let node = self.node_mut(id);
        signal(
            node.child.as_ref().expect("node is not running").id(),
            "CONT",
        );
        node.stopped = false;
    }

    /// SIGTERM node `id`, wait (bounded) for it to exit, and return its exit status.
    pub async fn terminate(&mut self, id: u64) -> ExitStatus {
        let node = self.node_mut(id);
        let mut child = node.child.take().expect("node is not running");
        signal(child.id(), "TERM");
        let status = poll_until(Duration::from_secs(10), "exit after SIGTERM", async || {
            child.try_wait().unwrap()
        })
        .await;
        status
    }

    /// Waits (bounded) for node `id` to exit on its own, reaps it, and returns its exit
    /// status; it can then be started again with [`restart`](Self::restart).
    pub async fn wait_for_exit(&mut self, id: u64, deadline: Duration) -> ExitStatus {
        let node = self.node_mut(id);
        let child = node.child.as_mut().expect("node is not running");
        let status = poll_until(deadline, &format!("node {id} to exit"), async || {
            child.try_wait().unwrap()
        })
        .await;
        node.child = None;
        status
    }

    /// If node `id` has exited on its own, reaps it and returns its exit status.
    pub fn try_exit(&mut self, id: u64) -> Option<ExitStatus> {
        let node = self.node_mut(id);
        let status = node.child.as_mut()?.try_wait().unwrap()?;
        node.child = None;
        Some(status)
    }

    /// Everything node `id` has logged, all incarnations.
    pub fn log(&self, id: u64) -> String {
        read_from(&self.node(id).log_path, 0)
    }

    /// What node `id` has logged since it was last (re)started.
    pub fn log_since_start(&self, id: u64) -> String {
        let node = self.node(id);
        read_from(&node.log_path, node.log_start)
    }

    /// Waits until the current incarnation of node `id` has logged a line containing
    /// `needle`, and returns that line.
    pub async fn wait_for_log(&self, id: u64, needle: &str, deadline: Duration) -> String {
        poll_until(
            deadline,
            &format!("node {id} to log {needle:?}"),
            async || {
                self.log_since_start(id)
                    .lines()
                    .find(|line| line.contains(needle))
                    .map(str::to_string)
            },
        )
        .await
    }

    /// Cluster/Status of node `id`, or why it could not be had (short timeout).
    pub async fn status(&self, id: u64) -> Result<StatusResponse, String> {
        let mut client = ClusterClient::new(channel(&self.addr(id)));
        match tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.to_string()),
            Err(_) => Err("no answer".to_string()),
        }
    }

    /// Statuses of every running, unfrozen node that answers.
    pub async fn live_statuses(&self) -> Vec<StatusResponse> {
        let mut statuses = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_live()) {
            if let Ok(status) = self.status(node.id).await {
                statuses.push(status);
            }
        }
        statuses
    }

    /// Waits until exactly one live node is leader and every live node that answers reports
    /// that leader in the same term; returns `(leader id, term)`.
    pub async fn wait_for_leader(&self, deadline: Duration) -> (u64, u64) {
        poll_until(deadline, "a single agreed leader", async || {
            let statuses = self.live_statuses().await;
            agreed_leader(&statuses)
        })
        .await
    }

    /// A raw KV client to node `id` (no retries, no redirects).
    pub fn kv(&self, id: u64) -> KvClient<Channel> {
        KvClient::new(channel(&self.addr(id)))
    }

    /// A library client over all endpoints.
    pub fn client(&self) -> Client {
        Client::with_options(
            self.endpoints(),
            ClientOptions::with_timeout(Duration::from_secs(10)),
        )
        .unwrap()
    }

    /// A library client talking to node `id` only.
    pub fn client_for(&self, id: u64) -> Client {
        Client::with_options(
            vec![self.addr(id)],
            ClientOptions::with_timeout(Duration::from_secs(5)),
        )
        .unwrap()
    }
}

/// Runs kvctl against `cluster`; returns (exit code, stdout, stderr).
pub fn kvctl(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "--endpoints",
            &cluster.endpoints().join(","),
            "--timeout",
            "5s",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether node `id` serves `key` = `value` from its own state (serializable read).
pub async fn has(cluster: &Cluster, id: u64, key: &str, value: &str) -> bool {
    let mut client = cluster.client_for(id);
    matches!(
        client.get(key, kvstore::client::Consistency::Serializable).await,
        Ok(r) if r.value.as_deref() == Some(value)
    )
}

/// Every member's term, by id, from Cluster/Status (0: no answer).
pub async fn terms(cluster: &Cluster, ids: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for &id in ids {
        out.push(cluster.status(id).await.map_or(0, |s| s.term));
    }
    out
}

/// The proxied peer links of a cluster started with [`Cluster::start_behind_proxies`].
pub struct Links(BTreeMap<(u64, u64), Link>);

impl Links {
    /// Cuts node `from`'s calls to node `to` (requests and their answers); `to`'s calls to
    /// `from` still go through.
    pub fn cut(&self, from: u64, to: u64) {
        self.0[&(from, to)].set_cut(true);
    }

    /// Heals every link.
    pub fn heal(&self) {
        for link in self.0.values() {
            link.set_cut(false);
        }
    }
}

/// `(leader, term)` if exactly one node says it leads and all others agree on it and the term.
pub fn agreed_leader(statuses: &[StatusResponse]) -> Option<(u64, u64)> {
    let mut leaders = statuses.iter().filter(|s| s.role == Role::Leader as i32);
    let leader = leaders.next()?;
    if leaders.next().is_some() {
        return None;
    }
    statuses
        .iter()
        .all(|s| s.leader_id == leader.id && s.term == leader.term)
        .then_some((leader.id, leader.term))
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if node.stopped {
                    let _ = Command::new("kill")
                        .args(["-CONT", &child.id().to_string()])
                        .status();
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = read_from(&node.log_path, 0);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("---- node {} log (last {} lines) ----", node.id, tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
        let _ = &self.logs;
    }
}
