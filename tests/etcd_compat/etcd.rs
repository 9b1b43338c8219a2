//! A real etcd 3.4 cluster on free loopback ports, one temp data dir and one log file per
//! member, killed on drop (also after a failed assertion).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::common::{free_port, poll_until};
use super::etcdctl::etcdctl;

/// etcd's `--heartbeat-interval` (ms). Half etcd's default: the cluster forms in about a
/// second, and a loaded 2-core CI machine still does not see spurious elections (a leader
/// change mid-script would fail a request with "leader changed").
const HEARTBEAT_MS: u64 = 50;
/// etcd's `--election-timeout` (ms); etcd wants at least 5x the heartbeat.
const ELECTION_MS: u64 = 500;

/// One etcd member process.
struct Member {
    name: String,
    client_port: u16,
    child: Child,
    log: PathBuf,
    /// SIGKILLed by [`EtcdCluster::kill`].
    killed: bool,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Data dirs and logs; removed after the children are killed.
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (`e1`..) as a new cluster with a token of its own, and waits until
    /// every member reports healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "kvstore-diff-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = TempDir::new().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, &(client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let log = dir.path().join(format!("{name}.log"));
            let file = File::create(&log).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
                .args(["--election-timeout", &ELECTION_MS.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            members.push(Member {
                name,
                client_port: client,
                child,
                log,
                killed: false,
            });
        }
        let cluster = EtcdCluster { members, dir };
        let endpoints = cluster.endpoints();
        poll_until(
            Duration::from_secs(20),
            "every etcd member to be healthy",
            async || {
                let health = etcdctl(&endpoints, &["endpoint".into(), "health".into()], None)?;
                (health.code == 0).then_some(())
            },
        )
        .await;
        // Healthy members may not all have published their client URLs yet (etcd does it
        // through a proposal after start): a `member list` then differs between two clusters.
        poll_until(
            Duration::from_secs(20),
            "every etcd member to publish its client URLs",
            async || {
                let args = ["member".into(), "list".into(), "-w".into(), "json".into()];
                let list = etcdctl(&endpoints, &args, None)?;
                let json: serde_json::Value = serde_json::from_str(&list.stdout).ok()?;
                let members = json.get("members")?.as_array()?;
                members
                    .iter()
                    .all(|m| {
                        m.get("clientURLs")
                            .and_then(|u| u.as_array())
                            .is_some_and(|u| !u.is_empty())
                    })
                    .then_some(())
            },
        )
        .await;
        cluster
    }

    /// Every member's client address (`127.0.0.1:PORT`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client address of a member that is not the leader.
    pub async fn follower(&self) -> String {
        let endpoints = self.endpoints();
        poll_until(Duration::from_secs(10), "an etcd follower", async || {
            endpoint_statuses(&endpoints)?.iter().find_map(|s| {
                let member = s.pointer("/Status/header/member_id")?.as_u64()?;
                let leader = s.pointer("/Status/leader")?.as_u64()?;
                (leader != 0 && member != leader)
                    .then(|| s.get("Endpoint")?.as_str().map(str::to_string))
                    .flatten()
            })
        })
        .await
    }
}

// Used by etcd_clients.rs, not by etcd_compat.rs.
#[allow(dead_code)]
impl EtcdCluster {
    /// SIGKILLs the member serving `endpoint` (`127.0.0.1:PORT`) and reaps it.
    pub fn kill(&mut self, endpoint: &str) {
        let member = self
            .members
            .iter_mut()
            .find(|m| format!("127.0.0.1:{}", m.client_port) == endpoint)
            .unwrap_or_else(|| panic!("no etcd member serves {endpoint}"));
        assert!(!member.killed, "etcd {} is already killed", member.name);
        member.child.kill().unwrap();
        member.child.wait().unwrap();
        member.killed = true;
    }

    /// The client addresses of the members not killed.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.killed)
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client address of the member that leads, as the live members agree on it.
    pub async fn leader(&self) -> String {
        let endpoints = self.live_endpoints();
        poll_until(Duration::from_secs(10), "an etcd leader", async || {
            let statuses = endpoint_statuses(&endpoints)?;
            let leader = statuses.first()?.pointer("/Status/leader")?.as_u64()?;
            let agreed = statuses.len() == endpoints.len()
                && statuses
                    .iter()
                    .all(|s| s.pointer("/Status/leader").and_then(Value::as_u64) == Some(leader));
            if leader == 0 || !agreed {
                return None;
            }
            statuses.iter().find_map(|s| {
                (s.pointer("/Status/header/member_id")?.as_u64()? == leader)
                    .then(|| s.get("Endpoint")?.as_str().map(str::to_string))
                    .flatten()
            })
        })
        .await
    }
}

/// What `etcdctl endpoint status -w json` says of every endpoint, or `None` when it fails.
fn endpoint_statuses(endpoints: &[String]) -> Option<Vec<Value>> {
    let args: Vec<String> = ["endpoint", "status", "-w", "json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let status = etcdctl(endpoints, &args, None)?;
    let statuses: Value = serde_json::from_str(&status.stdout).ok()?;
    statuses.as_array().cloned()
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
        if std::thread::panicking() {
            for member in &self.members {
                let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                eprintln!(
                    "---- etcd {} log (last {} lines) ----",
                    member.name,
                    tail.len()
                );
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
        let _ = &self.dir;
    }
}
