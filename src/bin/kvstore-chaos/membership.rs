//! Membership changes among the faults (`--membership`).
//!
//! Every few seconds the runner replaces one voter; the cluster has `--nodes` voters again at
//! the end of each replacement (3 voters, then 2, then 2 and a learner, then 3):
//!
//! 1. **remove** a voter: a node that is down (SIGKILLed) when there is one, else the leader
//!    one time in three, else any voter. A removal that would leave no live quorum is refused
//!    by the cluster (`not enough started members`): the runner tries again later. A removal
//!    whose answer was lost is sent again (`member not found` then means it applied).
//! 2. **add** a learner at a new address (its own network namespace and a new port), expecting
//!    the id one above every id the cluster used, and start it with `--join` through the
//!    leader (or a voter that is up). An add whose answer was lost is sent again (`Peer URLs
//!    already exists` then means it applied).
//! 3. **promote** it as soon as the leader accepts (it refuses while the learner is behind),
//!    within [`JOIN_BOUND`].
//!
//! The workload follows: on every change the member list is republished (clients and lease
//! clients rebuild theirs over it), the removed node's pinned watcher moves to the node that
//! replaces it and the watcher over every member to the new list, each resuming after the last
//! revision it recorded. The fault loop only ever picks voters.
//!
//! A removed node is decommissioned: if it was running it must stop by itself with
//! [`REMOVED_LINE`] in its log, and it is never started again (one that was down when removed
//! stays down).
//!
//! The `membership` check at the end: at least one replacement completed; every member of the
//! final membership answers MemberList with the same members, exactly the runner's voters (no
//! learner left, no removed id) and every removed id among its removed ids; each removed node
//! that was running stopped by itself with the line. `--self-test stale-member` restarts the
//! first removed node on its old data dir and counts it as a member again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvstore::client::{Client, ClientOptions};
use kvstore::pb;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::watchers::Watchers;
use crate::{at, connect, Failure, Network, Node, Shared};

/// What a removed node logs when it stops.
pub const REMOVED_LINE: &str = "this node was removed from the cluster";
/// How long a learner gets from its start to its promotion.
pub const JOIN_BOUND: Duration = Duration::from_secs(20);
/// No replacement starts closer than this to the end of the faults.
pub const MIN_LEFT: Duration = Duration::from_secs(2);
/// How long a replacement still in progress when the faults stop gets to finish, and removed
/// nodes to stop, at the end.
const FINISH_BOUND: Duration = Duration::from_secs(20);
/// The port of a node added under `--membership`: this plus its id (the first nodes use
/// 7000).
const NEW_PORT_BASE: u16 = 7000;

/// How to start an added node.
pub struct Launch {
    pub bin: PathBuf,
    pub work: PathBuf,
    /// The flags every node gets (timeouts, compaction, the seed's variant).
    pub common: Vec<String>,
}

/// What the fault loop lends a step.
pub struct Faults<'a> {
    pub nodes: &'a mut BTreeMap<u64, Node>,
    pub down: &'a mut BTreeMap<u64, Instant>,
    pub frozen: &'a mut BTreeMap<u64, Instant>,
    pub network: &'a mut Network,
    pub watchers: &'a mut Watchers,
    pub shared: &'a Shared,
    pub failures: &'a mut Vec<Failure>,
    pub faults: &'a mut BTreeMap<&'static str, u64>,
}

/// A node removed from the cluster.
struct Removed {
    id: u64,
    addr: String,
    /// It was running when removed: it must stop by itself with the line.
    running: bool,
    /// How it stopped, and whether its log has the line.
    exit: Option<(String, bool)>,
    what: String,
}

/// Where a replacement is.
enum Phase {
    Idle,
    Removing(u64),
    Adding {
        replaces: u64,
    },
    Joining {
        id: u64,
        replaces: u64,
        since: Instant,
        last: String,
    },
    /// A check failed: no more changes.
    Stopped,
}

/// The runner's view of the membership, and the replacement in progress.
pub struct Membership {
    /// Client address of every member (the voters and a learner being added).
    addrs: BTreeMap<u64, String>,
    voters: BTreeSet<u64>,
    removed: Vec<Removed>,
    /// The highest id the cluster used.
    max_id: u64,
    /// The pinned watcher that follows each member.
    watcher_of: BTreeMap<u64, String>,
    phase: Phase,
    next_at: Instant,
    replacements: u64,
    added: Vec<u64>,
}

fn admin(endpoints: Vec<String>) -> Option<Client> {
    Client::with_options(
        endpoints,
        ClientOptions::with_timeout(Duration::from_secs(3)),
    )
    .ok()
}

impl Membership {
    /// The first members, `id -> client address`; the first replacement is due 0.5 to 1.5 s in.
    pub fn new(addrs: BTreeMap<u64, String>, rng: &mut SmallRng) -> Membership {
        Membership {
            voters: addrs.keys().copied().collect(),
            max_id: addrs.keys().copied().max().unwrap_or(0),
            watcher_of: addrs.keys().map(|&id| (id, format!("node {id}"))).collect(),
            addrs,
            removed: Vec::new(),
            phase: Phase::Idle,
            next_at: Instant::now() + Duration::from_millis(rng.random_range(500..1500)),
            replacements: 0,
            added: Vec::new(),
        }
    }

    /// The voters' client addresses.
    pub fn voter_addrs(&self) -> Vec<String> {
        self.voters
            .iter()
            .map(|id| self.addrs[id].clone())
            .collect()
    }

    /// The voters with their client addresses.
    pub fn voters(&self) -> Vec<(u64, String)> {
        self.voters
            .iter()
            .map(|&id| (id, self.addrs[&id].clone()))
            .collect()
    }

    /// Every member (voters and a learner), for partitions.
    pub fn member_ids(&self) -> Vec<u64> {
        self.addrs.keys().copied().collect()
    }

    pub fn voter_count(&self) -> u64 {
        self.voters.len() as u64
    }

    /// A voter picked at random (the fault loop's target).
    pub fn random_voter(&self, rng: &mut SmallRng) -> u64 {
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        voters[rng.random_range(0..voters.len())]
    }

    fn busy(&self) -> bool {
        !matches!(self.phase, Phase::Idle | Phase::Stopped)
    }

    /// Publishes the voters to the clients and moves the any-member watcher to them.
    fn publish(&self, f: &mut Faults<'_>) {
        let addrs = self.voter_addrs();
        f.shared.set_endpoints(addrs.clone());
        if let Err(e) = f
            .watchers
            .repin("any member", "any member".to_string(), addrs)
        {
            f.failures.push((
                "membership",
                format!("moving the any-member watcher: {e:#}"),
            ));
        }
    }

    fn stop(&mut self, f: &mut Faults<'_>, what: String) {
        println!(
            "{} MEMBERSHIP FAILED: {what}; no more changes",
            at(f.shared.start)
        );
        f.failures.push(("membership", what));
        self.phase = Phase::Stopped;
    }

    /// Advances the replacement by what can be done now (each call is a few RPCs at most);
    /// starts a new one only with `start_new` and when it is due.
    pub async fn step(
        &mut self,
        f: &mut Faults<'_>,
        rng: &mut SmallRng,
        launch: &Launch,
        leader: Option<u64>,
        start_new: bool,
    ) {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Idle) {
                Phase::Stopped => {
                    self.phase = Phase::Stopped;
                    return;
                }
                Phase::Idle => {
                    if !start_new || Instant::now() < self.next_at {
                        return;
                    }
                    let down = self.voters.iter().find(|id| f.down.contains_key(id));
                    let victim = match (down, leader) {
                        (Some(&id), _) => id,
                        (None, Some(l))
                            if self.voters.contains(&l) && rng.random_bool(1.0 / 3.0) =>
                        {
                            l
                        }
                        _ => self.random_voter(rng),
                    };
                    self.phase = Phase::Removing(victim);
                }
                Phase::Removing(victim) => {
                    if !self.remove(victim, f, leader).await {
                        return;
                    }
                }
                Phase::Adding { replaces } => {
                    if !self.add(replaces, f, launch, leader).await {
                        return;
                    }
                }
                Phase::Joining {
                    id,
                    replaces,
                    since,
                    last,
                } => {
                    self.promote(id, replaces, since, last, f, rng).await;
                    return;
                }
            }
        }
    }

    /// Removes `victim`; true once it is out of the cluster (the phase is then `Adding`).
    async fn remove(&mut self, victim: u64, f: &mut Faults<'_>, leader: Option<u64>) -> bool {
        let start = f.shared.start;
        let Some(mut client) = admin(self.voter_addrs()) else {
            return false;
        };
        match client.member_remove(victim, false).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("member not found") => {}
            Err(e) if e.to_string().contains("not enough started members") => {
                println!("{} remove node {victim} refused: {e}", at(start));
                self.next_at = Instant::now() + Duration::from_secs(1);
                return false;
            }
            Err(e) => {
                println!("{} remove node {victim}: {e}; sending it again", at(start));
                self.phase = Phase::Removing(victim);
                return false;
            }
        }
        let was_down = f.down.remove(&victim).is_some();
        let was_frozen = f.frozen.remove(&victim).is_some();
        let mut running = false;
        if let Some(node) = f.nodes.get_mut(&victim) {
            node.removed = true;
            if was_frozen {
                if let Err(e) = node.signal("-CONT") {
                    f.failures
                        .push(("fault", format!("SIGCONT of removed node {victim}: {e:#}")));
                }
                node.stopped = false;
            }
            running = node.running();
        }
        let what = match (Some(victim) == leader, was_down, was_frozen) {
            (_, true, _) => "down: never started again",
            (true, _, _) => "the leader",
            (_, _, true) => "frozen: resumed to stop by itself",
            _ => "a follower",
        };
        println!("{} MEMBER REMOVE node {victim} ({what})", at(start));
        *f.faults.entry("member removal").or_default() += 1;
        self.voters.remove(&victim);
        let addr = self.addrs.remove(&victim).unwrap_or_default();
        self.removed.push(Removed {
            id: victim,
            addr,
            running,
            exit: None,
            what: what.to_string(),
        });
        self.publish(f);
        self.phase = Phase::Adding { replaces: victim };
        true
    }

    /// Adds the learner and starts it; true once it runs (the phase is then `Joining`).
    async fn add(
        &mut self,
        replaces: u64,
        f: &mut Faults<'_>,
        launch: &Launch,
        leader: Option<u64>,
    ) -> bool {
        let start = f.shared.start;
        let id = self.max_id + 1;
        let Network::Netns { net, .. } = f.network else {
            self.stop(f, "--membership needs network namespaces".to_string());
            return false;
        };
        let port = NEW_PORT_BASE + id as u16;
        let peer = format!("{}:{port}", net.addr(id));
        let Some(mut client) = admin(self.voter_addrs()) else {
            return false;
        };
        match client.member_add(&peer, true).await {
            Ok(r) => {
                let got = r.member.map_or(0, |m| m.id);
                if got != id {
                    self.stop(
                        f,
                        format!("the cluster gave the new member at {peer} id {got}, expected {id} (one above every id it used)"),
                    );
                    return false;
                }
            }
            Err(e) if e.to_string().contains("Peer URLs already exists") => {}
            Err(e) => {
                println!(
                    "{} add a learner at {peer}: {e}; sending it again",
                    at(start)
                );
                self.phase = Phase::Adding { replaces };
                return false;
            }
        }
        self.max_id = id;
        // Join through the leader, or a voter that is up.
        let through = leader
            .filter(|l| self.voters.contains(l))
            .or_else(|| {
                self.voters
                    .iter()
                    .copied()
                    .find(|v| !f.down.contains_key(v) && !f.frozen.contains_key(v))
            })
            .or_else(|| self.voters.first().copied());
        let join = through.map(|v| self.addrs[&v].clone()).unwrap_or_default();
        let started = net.add_node(id).and_then(|()| {
            let mut args: Vec<String> = ["netns", "exec"].map(String::from).to_vec();
            args.extend([net.ns(id), launch.bin.display().to_string()]);
            args.extend(["--host".to_string(), net.addr(id), "--port".into()]);
            args.extend([
                port.to_string(),
                "--join".into(),
                join.clone(),
                "--id".into(),
            ]);
            args.extend([id.to_string(), "--data-dir".into()]);
            args.push(launch.work.join(format!("node-{id}")).display().to_string());
            args.extend(launch.common.iter().cloned());
            let mut node = Node {
                id,
                program: PathBuf::from("ip"),
                args,
                log: launch.work.join(format!("node-{id}.log")),
                child: None,
                stopped: false,
                removed: false,
            };
            node.start()?;
            f.nodes.insert(id, node);
            Ok(())
        });
        if let Err(e) = started {
            self.stop(f, format!("starting the new node {id}: {e:#}"));
            return false;
        }
        println!(
            "{} MEMBER ADD node {id} as a learner at {peer} (replaces node {replaces}), started with --join {join}",
            at(start)
        );
        self.addrs.insert(id, peer);
        self.added.push(id);
        self.phase = Phase::Joining {
            id,
            replaces,
            since: Instant::now(),
            last: String::new(),
        };
        true
    }

    /// Tries to promote learner `id`; on success the replacement is done.
    async fn promote(
        &mut self,
        id: u64,
        replaces: u64,
        since: Instant,
        last: String,
        f: &mut Faults<'_>,
        rng: &mut SmallRng,
    ) {
        let start = f.shared.start;
        let Some(mut client) = admin(self.voter_addrs()) else {
            return;
        };
        match client.member_promote(id).await {
            Ok(_) => {}
            // Promoted by an attempt whose answer was lost.
            Err(e)
                if e.to_string().contains("can only promote a learner member")
                    && !e.to_string().contains("in sync") => {}
            Err(e) => {
                if since.elapsed() > JOIN_BOUND {
                    let what = format!(
                        "learner {id} not promoted within {} s of its start (last refusal: {e}; before: {last})",
                        JOIN_BOUND.as_secs()
                    );
                    self.stop(f, what);
                } else {
                    self.phase = Phase::Joining {
                        id,
                        replaces,
                        since,
                        last: e.to_string(),
                    };
                }
                return;
            }
        }
        println!(
            "{} MEMBER PROMOTE node {id} ({:.1} s after its start): replaced node {replaces}",
            at(start),
            since.elapsed().as_secs_f64()
        );
        self.voters.insert(id);
        self.replacements += 1;
        self.publish(f);
        if let Some(name) = self.watcher_of.remove(&replaces) {
            let new_name = format!("{name}, then node {id}");
            if let Err(e) = f
                .watchers
                .repin(&name, new_name.clone(), vec![self.addrs[&id].clone()])
            {
                f.failures
                    .push(("membership", format!("moving the watcher on {name}: {e:#}")));
            }
            self.watcher_of.insert(id, new_name);
        }
        self.next_at = Instant::now() + Duration::from_millis(rng.random_range(2000..5000));
    }

    /// Once the faults stopped: lets a replacement in progress finish (bounded).
    pub async fn finish(&mut self, f: &mut Faults<'_>, rng: &mut SmallRng, launch: &Launch) {
        let started = Instant::now();
        while self.busy() {
            if started.elapsed() > FINISH_BOUND {
                let what = format!(
                    "a replacement was still in progress {} s after the faults stopped",
                    FINISH_BOUND.as_secs()
                );
                self.stop(f, what);
                return;
            }
            let leader = crate::leader_of(&self.voter_addrs()).await.map(|(_, l)| l);
            self.step(f, rng, launch, leader, false).await;
            if self.busy() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    /// Reaps removed nodes that stopped, noting whether they said why.
    pub fn reap_removed(&mut self, nodes: &mut BTreeMap<u64, Node>, start: Instant) {
        for r in self.removed.iter_mut().filter(|r| r.exit.is_none()) {
            let Some(node) = nodes.get_mut(&r.id) else {
                continue;
            };
            if let Some(how) = node.reap() {
                let log = std::fs::read(&node.log).unwrap_or_default();
                let said = String::from_utf8_lossy(&log).contains(REMOVED_LINE);
                println!(
                    "{} removed node {} stopped by itself ({how}){}",
                    at(start),
                    r.id,
                    if said {
                        ", saying why"
                    } else {
                        " WITHOUT the line"
                    }
                );
                r.exit = Some((how, said));
            }
        }
    }

    /// The `membership` check (see the module doc); `stale` is the self-test's sabotage.
    pub async fn check_end(
        &mut self,
        nodes: &mut BTreeMap<u64, Node>,
        start: Instant,
        stale: bool,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        if self.replacements == 0 {
            failures.push("no replacement completed: nothing checked".to_string());
        }
        if stale {
            if let Some(r) = self.removed.first_mut() {
                println!(
                    "{} self-test: restarting removed node {} on its old data dir and counting it as a member",
                    at(start),
                    r.id
                );
                if let Some(node) = nodes.get_mut(&r.id) {
                    let _ = node.kill();
                    if let Err(e) = node.start() {
                        failures.push(format!("self-test restart of node {}: {e:#}", r.id));
                    }
                    r.running = true;
                    r.exit = None;
                }
                self.voters.insert(r.id);
                self.addrs.insert(r.id, r.addr.clone());
            }
        }
        // Removed nodes stop by themselves, saying why.
        let started = Instant::now();
        while self.removed.iter().any(|r| r.running && r.exit.is_none())
            && started.elapsed() < FINISH_BOUND
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.reap_removed(nodes, start);
        }
        for r in self.removed.iter().filter(|r| r.running) {
            match &r.exit {
                None => failures.push(format!(
                    "removed node {} ({}) still runs {} s after the end of the faults",
                    r.id,
                    r.what,
                    FINISH_BOUND.as_secs()
                )),
                Some((how, false)) => failures.push(format!(
                    "removed node {} ({}) stopped ({how}) without `{REMOVED_LINE}` in its log",
                    r.id, r.what
                )),
                Some((_, true)) => {}
            }
        }
        // Every member reports the runner's voters, and the removed ids as removed.
        let removed: BTreeSet<u64> = self.removed.iter().map(|r| r.id).collect();
        let started = Instant::now();
        loop {
            let differences = self.compare_lists(&removed).await;
            if differences.is_empty() {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                failures.extend(differences);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        failures
    }

    /// Each voter's MemberList against the runner's view: the differences.
    async fn compare_lists(&self, removed: &BTreeSet<u64>) -> Vec<String> {
        let want: Vec<(u64, i32)> = self
            .voters
            .iter()
            .map(|&id| (id, pb::MemberRole::Voter as i32))
            .collect();
        let mut out = Vec::new();
        for (id, addr) in self.voters() {
            let Some(ch) = connect(&addr, Duration::from_secs(2)).await else {
                out.push(format!("member {id} at {addr} is unreachable"));
                continue;
            };
            let mut c = pb::cluster_client::ClusterClient::new(ch);
            let list = match c.member_list(pb::MemberListRequest {}).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    out.push(format!("member {id}: MemberList: {}", e.message()));
                    continue;
                }
            };
            let got: Vec<(u64, i32)> = list.members.iter().map(|m| (m.id, m.member_role)).collect();
            if got != want {
                out.push(format!(
                    "member {id} reports the members {}, the runner's voters are {}",
                    show(&got),
                    show(&want)
                ));
            }
            let listed: BTreeSet<u64> = list.removed.iter().copied().collect();
            if let Some(r) = removed.iter().find(|r| !listed.contains(r)) {
                out.push(format!(
                    "member {id} does not list removed node {r} among its removed ids {listed:?}"
                ));
            }
        }
        out
    }

    /// One line for the summary.
    pub fn summary(&self) -> String {
        let removed: Vec<String> = self
            .removed
            .iter()
            .map(|r| {
                let end = match &r.exit {
                    _ if !r.running => "",
                    Some((_, true)) => ", stopped with the line",
                    Some((_, false)) => ", stopped WITHOUT the line",
                    None => ", still running",
                };
                format!("{} ({}{end})", r.id, r.what)
            })
            .collect();
        let added: Vec<String> = self.added.iter().map(u64::to_string).collect();
        let voters: Vec<String> = self.voters.iter().map(u64::to_string).collect();
        format!(
            "{} replacements; removed {}; added {}; final voters {}",
            self.replacements,
            if removed.is_empty() {
                "none".to_string()
            } else {
                removed.join(", ")
            },
            if added.is_empty() {
                "none".to_string()
            } else {
                added.join(", ")
            },
            voters.join(", ")
        )
    }
}

/// `[1 voter, 4 learner]`.
fn show(members: &[(u64, i32)]) -> String {
    let each: Vec<String> = members
        .iter()
        .map(|(id, role)| {
            let role = if *role == pb::MemberRole::Voter as i32 {
                "voter"
            } else {
                "learner"
            };
            format!("{id} {role}")
        })
        .collect();
    format!("[{}]", each.join(", "))
}
