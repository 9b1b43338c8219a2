//! Scripted scenarios: the same world (real core, real state machine, simulated network,
//! disks and clients, every invariant checked after every event) with no random faults. A test
//! applies the faults it wants at the simulated times it wants, runs until a time or a
//! condition, looks at roles, terms and the answers nodes gave, and ends with [`Scenario::finish`],
//! which heals everything and runs the same end-of-run checks as a random run (convergence,
//! final reads, linearizability of the whole history, identical replicas).
//!
//! Random faults stay off: no fault schedule, and no rare long network delays (the tail that
//! outlives an election), so timings measured here are the protocol's own. The RNG still
//! draws network delays, disk latencies and client choices from the seed.

use super::{
    settle, Ev, Failure, Input, Outcome, SimConfig, Time, World, ELECTION_TICKS, MAX_NET_DELAY,
    TICK,
};
use std::collections::BTreeMap;

use crate::raft::storage::LogStore as _;
use crate::raft::{LogIndex, NodeId, Role, Status, Term};

/// The (base) election timeout of every simulated node: 100 ms; each node draws its own in
/// `[1, 2)` times this at every reset.
pub const ELECTION_TIMEOUT: Time = ELECTION_TICKS as Time * TICK;

/// The longest a message can be in flight in a scenario (no random long delays): a message
/// sent just before a cut can still arrive this much later.
pub const MAX_DELAY: Time = MAX_NET_DELAY;

/// A fault a scenario applies (see [`Scenario::apply`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ScriptedFault {
    /// Cut every link between the node and its peers, both ways (clients still reach it).
    Isolate(NodeId),
    /// The node hears nothing from its peers; what it sends still arrives.
    Deaf(NodeId),
    /// What the node sends to its peers is lost; it still hears them.
    Mute(NodeId),
    /// Every node-to-node link back.
    Heal,
    /// SIGSTOP: the node keeps its state, its input queues, its missed ticks are skipped.
    Pause(NodeId),
    /// SIGCONT.
    Resume(NodeId),
    /// Power loss: what was not synced is at risk (the store's file system decides at the
    /// restart what survived), and a write in progress is cut at a random operation.
    Crash(NodeId),
    /// Restart a crashed node from its storage.
    Restart(NodeId),
    /// Every message (peer and client) is dropped with probability `drop` and duplicated with
    /// probability `dup`, from now on.
    Loss { drop: f64, dup: f64 },
    /// An operator asks whoever leads now to hand leadership to this node.
    Transfer(NodeId),
    /// Every key-value client's next attempts go to this node (a stale leader cache).
    ClientsTo(NodeId),
    /// Every lock client stops for good after its current operation: a holder that died, whose
    /// lease nobody renews.
    StopLockClients,
}

/// A change of a node's role or known leader, as its driver saw it in a Ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    /// When.
    pub at: Time,
    /// Which node.
    pub node: NodeId,
    /// Its role from then on.
    pub role: Role,
    /// The leader it knows from then on (`None` while campaigning or pre-campaigning).
    pub leader: Option<NodeId>,
    /// Its term then.
    pub term: Term,
}

/// A successful answer a node sent a key-value client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    /// When the answer left the node.
    pub at: Time,
    /// Which node answered.
    pub node: NodeId,
    /// The log index of an acknowledged write; `None` for a read.
    pub write: Option<LogIndex>,
}

/// A world driven by a test instead of a random fault schedule.
pub struct Scenario {
    w: World,
    /// When each node last received a message from a peer.
    heard: BTreeMap<NodeId, Time>,
}

impl Scenario {
    /// A cluster as `cfg` describes it (size, clients, lease mode, CheckQuorum...), started at
    /// time 0 with no fault. `cfg.fault_ms` is ignored: the faults end at `finish`.
    pub fn new(cfg: SimConfig) -> Scenario {
        Scenario {
            w: World::build(cfg, false),
            heard: BTreeMap::new(),
        }
    }

    /// Simulated time now, in microseconds.
    pub fn now(&self) -> Time {
        self.w.now
    }

    /// Applies a fault now.
    pub fn apply(&mut self, f: ScriptedFault) {
        let w = &mut self.w;
        let peers: Vec<NodeId> = w.nodes.keys().copied().collect();
        w.note(|| format!("SCRIPT {f:?}"));
        match f {
            ScriptedFault::Isolate(id) | ScriptedFault::Deaf(id) | ScriptedFault::Mute(id) => {
                let (inbound, outbound) = match f {
                    ScriptedFault::Deaf(_) => (true, false),
                    ScriptedFault::Mute(_) => (false, true),
                    _ => (true, true),
                };
                for o in peers.into_iter().filter(|&o| o != id) {
                    if inbound {
                        w.cut.insert((o, id));
                    }
                    if outbound {
                        w.cut.insert((id, o));
                    }
                }
            }
            ScriptedFault::Heal => w.cut.clear(),
            ScriptedFault::Pause(id) => {
                if let Some(n) = w.nodes.get_mut(&id).filter(|n| n.up) {
                    n.paused = true;
                }
            }
            ScriptedFault::Resume(id) => w.resume(id),
            ScriptedFault::Crash(id) => w.crash(id),
            ScriptedFault::Restart(id) => w.restart(id),
            ScriptedFault::Loss { drop, dup } => {
                w.drop_rate = drop;
                w.dup_rate = dup;
            }
            ScriptedFault::Transfer(target) => {
                if let Some(l) = self.leader() {
                    self.w.schedule(0, Ev::Deliver(l, Input::Transfer(target)));
                }
            }
            ScriptedFault::ClientsTo(id) => {
                for c in &mut w.clients {
                    c.point_at(id);
                }
            }
            ScriptedFault::StopLockClients => {
                for c in &mut w.lock_clients {
                    c.stop_new_ops();
                }
            }
        }
    }

    /// Runs the script: each fault at its time (in order), then returns at the last one's.
    ///
    /// # Errors
    /// The first invariant violated on the way.
    pub fn play(&mut self, script: &[(Time, ScriptedFault)]) -> Result<(), Failure> {
        for (at, f) in script {
            self.run_until(*at)?;
            self.apply(f.clone());
        }
        Ok(())
    }

    /// Runs every event up to time `t` (inclusive); the clock then reads `t`.
    ///
    /// # Errors
    /// The first invariant violated on the way.
    pub fn run_until(&mut self, t: Time) -> Result<(), Failure> {
        self.run_until_true(t, |_| false).map(|_| ())
    }

    /// Runs events until `pred` holds (checked after every event) or time `deadline`, and
    /// returns the time `pred` first held (`None`: not before the deadline; the clock then
    /// reads `deadline`).
    ///
    /// # Errors
    /// The first invariant violated on the way.
    pub fn run_until_true(
        &mut self,
        deadline: Time,
        mut pred: impl FnMut(&Scenario) -> bool,
    ) -> Result<Option<Time>, Failure> {
        if pred(self) {
            return Ok(Some(self.w.now));
        }
        while let Some(std::cmp::Reverse(next)) = self.w.queue.peek() {
            if next.at > deadline {
                break;
            }
            if let Ev::Deliver(to, Input::Msg(_)) = next.ev {
                self.heard.insert(to, next.at);
            }
            self.w.step();
            if let Some(message) = self.w.fail.take() {
                return Err(Failure {
                    seed: self.w.cfg.seed,
                    at: self.w.now,
                    message,
                    trace: std::mem::take(&mut self.w.trace),
                });
            }
            if pred(self) {
                return Ok(Some(self.w.now));
            }
        }
        self.w.now = self.w.now.max(deadline);
        Ok(None)
    }

    /// Cluster size: the nodes are `1..=nodes()`.
    pub fn nodes(&self) -> u64 {
        self.w.cfg.nodes
    }

    /// The core's view of a node.
    pub fn status(&self, id: NodeId) -> Option<Status> {
        self.w.nodes.get(&id).map(|n| n.core.status())
    }

    /// The running (up, not paused) node that leads in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.w
            .nodes
            .iter()
            .filter(|(_, n)| n.up && !n.paused)
            .map(|(&id, n)| (id, n.core.status()))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    /// The nodes whose core is leader right now (paused ones included).
    pub fn leaders(&self) -> Vec<NodeId> {
        self.w
            .nodes
            .iter()
            .filter(|(_, n)| n.up && n.core.status().role == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The transfer `id` is carrying out, if it leads and is handing leadership over.
    pub fn transfer_target(&self, id: NodeId) -> Option<NodeId> {
        self.w.nodes.get(&id).and_then(|n| n.core.transfer_target())
    }

    /// When `id` last received a message from a peer (delivered: sent before any cut).
    pub fn last_heard(&self, id: NodeId) -> Option<Time> {
        self.heard.get(&id).copied()
    }

    /// Lock `name` as node `id` has applied it: its token, if held.
    pub fn lock_token(&self, id: NodeId, name: &str) -> Option<u64> {
        self.w.nodes.get(&id)?.sm.lock(name).map(|l| l.token)
    }

    /// The index of the snapshot `id` is storing in the background, if any.
    pub fn snapshot_in_progress(&self, id: NodeId) -> Option<LogIndex> {
        self.w
            .nodes
            .get(&id)?
            .snapshot_task
            .as_ref()
            .map(|t| t.index())
    }

    /// The index of a leader's snapshot that `id`'s core accepted and that is being stored
    /// with the Ready batch in progress (the core compacts to it before the disk is done,
    /// as the daemon's core does while its driver persists the batch).
    pub fn leader_snapshot_in_flight(&self, id: NodeId) -> Option<LogIndex> {
        self.w.nodes.get(&id)?.leader_snapshot_in_flight()
    }

    /// The index `id`'s core compacted its log to (0: never).
    pub fn compacted_to(&self, id: NodeId) -> LogIndex {
        self.w
            .nodes
            .get(&id)
            .map_or(0, |n| n.core.snapshot_meta().index)
    }

    /// The index of the latest snapshot in `id`'s storage (0: none, or the node is down: its
    /// store is closed, and what a crash kept is known only once it restarts).
    pub fn stored_snapshot(&self, id: NodeId) -> LogIndex {
        self.w
            .nodes
            .get(&id)
            .and_then(|n| n.disk.store())
            .and_then(|s| s.snapshot().ok().flatten())
            .map_or(0, |s| s.meta.index)
    }

    /// The last index `id` applied to its state machine.
    pub fn applied(&self, id: NodeId) -> LogIndex {
        self.w.nodes.get(&id).map_or(0, |n| n.sm.applied_index())
    }

    /// Every role change so far, in order.
    pub fn role_changes(&self) -> &[RoleChange] {
        &self.w.roles
    }

    /// Every successful answer to a key-value client so far, in order.
    pub fn answers(&self) -> &[Answered] {
        &self.w.answers
    }

    /// Reads served by lease so far, cluster-wide.
    pub fn lease_reads(&self) -> u64 {
        self.w.outcome.lease_reads
    }

    /// Heals everything (network, loss, paused and crashed nodes), stops new client
    /// operations, and runs the end-of-run checks of a random run: a leader and full
    /// convergence within the liveness bound, final reads of every key, a linearizable
    /// history, identical replicas.
    ///
    /// # Errors
    /// The first violation found.
    pub fn finish(mut self) -> Result<Outcome, Failure> {
        self.w.end_faults();
        let end = self.w.now;
        settle(self.w, end)
    }
}
