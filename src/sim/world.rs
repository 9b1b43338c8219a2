//! The simulated world: event queue, network, nodes and the fault scheduler; each node's disk
//! (the real store over a crash-modelling file system) is `world/disk.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::client::{Answer, Client, ClientReply, ClientReq, Observations, ReplyErr, ReqOp};
use super::invariants::Invariants;
use super::key_leases::{self, BeforeRevoke, KeyLeaseCheck, KeyLeaseClient};
use super::lock_client::LockClient;
use super::locks::LockCheck;
use super::watchers::{CommittedChanges, Deliveries, NodeWatches};
use crate::lincheck::{self, Op, OpResult};
use crate::node::apply;
use crate::node::leases::Leases;
use crate::node::pending::Waiters;
use crate::node::tick_clock::TickClock;
use crate::raft::storage::LogStore;
use crate::raft::{
    append_bytes, ConfChange, Config, Entry, HardState, LogIndex, Message, MessageBody, Mutation,
    NodeId, Payload, RaftCore, ReadState, Ready, Role, Snapshot,
};
use crate::rpc::peer::PEER_MESSAGE_LIMIT;
use crate::state_machine::mvcc::{RangeRequest, ResponseOp, TxnResponse};
use crate::state_machine::{Command, KvResult, Outcome as SmOutcome, Proposal, StateMachine};
use crate::storage::StorageError;

/// Simulated time, in microseconds.
pub type Time = u64;
pub(crate) const MS: Time = 1_000;

/// Parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: everything in the run follows from it.
    pub seed: u64,
    /// Cluster size (3 or 5 are typical).
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Services competing for one lock and writing under its fencing token.
    pub lock_clients: usize,
    /// Clients also write values up to the 1 MiB limit (see `client.rs`). Off, they write
    /// only short values and draw exactly as before sizes were simulated.
    pub large_values: bool,
    /// Distinct keys the clients use (few, so operations conflict).
    pub keys: usize,
    /// How long faults are injected, in simulated milliseconds.
    pub fault_ms: u64,
    /// After faults stop: the bound within which a leader must be elected and all nodes must
    /// converge, in simulated milliseconds.
    pub liveness_ms: u64,
    /// A deliberate protocol bug to switch on (mutation mode).
    pub mutation: Mutation,
    /// Run the paper's base protocol, without PreVote and CheckQuorum (which hide some
    /// mutations: a stale vote rarely matters when elections are pre-checked).
    pub classic_raft: bool,
    /// Record a readable trace of events (for replaying a failing seed).
    pub trace: bool,
    /// Checker test: the simulated driver drops the fence of every write it proposes (a
    /// driver bug the lock checks must catch).
    pub strip_fences: bool,
    /// Each node snapshots its state machine once this many entries were applied since its
    /// last snapshot, stores it in the background and compacts its log once it is durable
    /// (`world/snapshot.rs`); 0 = never.
    pub snapshot_every: u64,
    /// Also inject disk failures (an operation of a node's file system fails with `EIO` or
    /// `ENOSPC`, or loses power; the node stops).
    pub disk_faults: bool,
    /// Size of the log segments of every node's store (0: the production size, 4 MiB).
    /// Small segments roll, and get removed by compactions, often.
    pub segment_bytes: u64,
    /// Lease-based reads (`--read-mode lease`); ignored with `classic_raft`, which has no
    /// CheckQuorum to make leases safe.
    pub lease_reads: bool,
    /// Operators move leadership (`kvctl transfer-leader`) as one of the fault events. Off,
    /// the fault schedule draws exactly as before transfers existed.
    pub transfers: bool,
    /// CheckQuorum (and the leader stickiness that comes with it); off only for control runs
    /// of the scripted scenarios. Lease reads need it: off, `lease_reads` is ignored.
    pub check_quorum: bool,
    /// Mutation switch of the driver's lease table (`node::leases`): every due lease is
    /// marked expiring before any expiry is proposed (issue 11, defect 3).
    pub mark_leases_before_proposing: bool,
    /// Clients run the key-space mix (`client/kv_ops.rs`): CAS loops, pair writes and reads
    /// through Txns, Ranges at current and past revisions, compactions; the pair atomicity
    /// and revision consistency checks watch their answers. Off, clients draw exactly as
    /// before the key space had revisions.
    pub kv_txns: bool,
    /// Mutation switch of the key space: a Txn applies its writes at several revisions
    /// (set on every node's state machine, again whenever one is rebuilt).
    pub split_txn_writes: bool,
    /// The revision density check at every apply (on in every real run). Off only in the
    /// mutation test that shows the pair atomicity check catches a split Txn on its own
    /// (density catches it first, at the apply).
    pub check_revision_density: bool,
    /// The key-lease workload (`key_leases.rs`): clients grant leases on keys, attach keys,
    /// renew through the leader, revoke or stop renewing; its checkers run at every revoke
    /// and at the end. Off, nothing draws for it (the other workloads run as before).
    pub key_leases: bool,
    /// Mutation switch of the lease clock (`node::leases`): a new leader starts every lease
    /// on keys with nothing left instead of its full TTL.
    pub key_leases_not_restarted: bool,
    /// Mutation switch of the key space: a Txn's puts leave the lease index alone, so a
    /// revoke misses the keys they attached (set on every node's state machine, again
    /// whenever one is rebuilt).
    pub txn_skips_lease_index: bool,
    /// Simulated watchers on every node (`watchers.rs`), fed by the daemon's watch code
    /// after every apply batch and snapshot install, checked against the node's history.
    /// Off, nothing draws for them.
    pub watches: bool,
    /// Mutation switch of the watch publisher (`node::watches`): the events a snapshot
    /// install brought are left out of the next batch.
    pub watch_drop_snapshot_catch_up: bool,
    /// Mutation switch of the simulated driver: a leader answers a keep-alive as soon as it
    /// renewed the lease, without waiting for a quorum to confirm it still leads (a deposed
    /// leader that does not know it yet then promises a TTL the new leader's clock does not
    /// honour).
    pub keep_alive_answers_at_once: bool,
    /// Mutation switch of the simulated driver: a leader publishes watch events when it
    /// appends entries (evaluated on a scratch copy of its state machine), before they are
    /// committed, instead of after it applied them.
    pub watch_publish_on_append: bool,
    /// The check that no watch event is delivered above its node's applied revision (on in
    /// every real run). Off only in the mutation test that shows the committed-change check
    /// catches `watch_publish_on_append` on its own (a deposed leader's events that never
    /// happened).
    pub check_watch_applied: bool,
    /// An operator changes the membership now and then while faults run (`world/membership.rs`):
    /// adds learners (new ids, empty disks), promotes them, removes voters and learners (the
    /// leader and down nodes included), retrying refusals; removed nodes are decommissioned.
    /// Off, nothing draws for it (every other seed runs as before).
    pub membership: bool,
}

impl SimConfig {
    /// The standard run for a seed: 3 or 5 nodes (chosen by the seed), 4 clients, 3 keys,
    /// 3 s of faults, 10 s liveness bound.
    pub fn for_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: if seed % 4 == 3 { 5 } else { 3 },
            clients: 4,
            lock_clients: 2,
            // One seed in three: large values cost copying time, and these seeds still
            // cover every cluster size and snapshot rate.
            large_values: seed % 3 == 2,
            keys: 3,
            fault_ms: 3_000,
            liveness_ms: 10_000,
            mutation: Mutation::None,
            classic_raft: false,
            trace: false,
            strip_fences: false,
            // Most seeds compact, at varied rates (so followers often need snapshots);
            // one in four never does.
            snapshot_every: [0, 7, 20, 60][(seed / 4 % 4) as usize],
            disk_faults: true,
            // Small segments, so they roll and get removed often (1 KiB: every few records,
            // so a Snapshot record often ends a segment, which issue 11's defect 1 needed);
            // one seed in eight has the production size (it preallocates 1 MiB per segment:
            // slower to simulate).
            segment_bytes: match seed / 16 % 8 {
                7 => 0,
                s if s % 2 == 0 => 64 << 10,
                _ => 1 << 10,
            },
            lease_reads: seed % 3 == 1,
            transfers: true,
            check_quorum: true,
            mark_leases_before_proposing: false,
            kv_txns: false,
            split_txn_writes: false,
            check_revision_density: true,
            key_leases: false,
            key_leases_not_restarted: false,
            txn_skips_lease_index: false,
            watches: false,
            watch_drop_snapshot_catch_up: false,
            keep_alive_answers_at_once: false,
            watch_publish_on_append: false,
            check_watch_applied: true,
            membership: false,
        }
    }
}

/// Summary of a passing run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Operations acknowledged to clients.
    pub ok: u64,
    /// Operations whose outcome is unknown (gave up after retries).
    pub unknown: u64,
    /// Faults injected.
    pub faults: u64,
    /// Distinct (term, leader) pairs seen.
    pub leader_changes: u64,
    /// Events processed.
    pub events: u64,
    /// Highest commit index reached.
    pub commit: LogIndex,
    /// Lock grants (new tokens) applied.
    pub lock_grants: u64,
    /// Fenced writes acknowledged as applied.
    pub fenced_ok: u64,
    /// Nodes stopped by a failed storage operation (an injected disk fault).
    pub disk_failures: u64,
    /// Clean restarts (each of one to three restarts in a row) by the fault schedule.
    pub clean_restarts: u64,
    /// Snapshots nodes took of their own state and stored (log compactions).
    pub snapshots_taken: u64,
    /// Leader snapshots installed by followers.
    pub snapshots_installed: u64,
    /// Fenced writes answered with a stale fencing token.
    pub fenced_stale: u64,
    /// Leadership transfers started by the fault schedule.
    pub transfers: u64,
    /// Elections started by a TimeoutNow (transfers that reached their target).
    pub transfer_campaigns: u64,
    /// Linearizable reads served by lease, without a heartbeat round.
    pub lease_reads: u64,
    /// Key-space workload (`SimConfig::kv_txns`): compare-and-sets answered that succeeded.
    pub cas_succeeded: u64,
    /// Compare-and-sets answered that failed (found another value).
    pub cas_failed: u64,
    /// Pair reads answered (each checked for pair atomicity) that saw the pair present.
    pub pair_reads_present: u64,
    /// Compactions answered as applied.
    pub compactions: u64,
    /// Ranges at a past revision answered with data.
    pub past_reads: u64,
    /// Ranges at a past revision answered "compacted".
    pub past_reads_compacted: u64,
    /// Key-lease workload (`SimConfig::key_leases`): grants answered.
    pub key_lease_grants: u64,
    /// Keep-alives a leader answered with a TTL.
    pub key_lease_renewals: u64,
    /// Revokes (by a client or by the lease clock) that deleted keys, counted per node.
    pub key_lease_revokes_with_keys: u64,
    /// Watch events delivered to simulated watchers (`SimConfig::watches`), over every node.
    pub watch_events: u64,
    /// Membership changes the leader accepted (`SimConfig::membership`).
    pub conf_changes_proposed: u64,
    /// Membership changes refused (retried by the operator).
    pub conf_changes_refused: u64,
    /// Committed (applied somewhere) changes: learners added.
    pub learners_added: u64,
    /// Learners promoted to voters.
    pub learners_promoted: u64,
    /// Voters removed.
    pub voters_removed: u64,
    /// Learners removed.
    pub learners_removed: u64,
    /// Removals of the leader that committed them (it removed itself).
    pub leaders_removed: u64,
    /// Removals of a node that was down (crashed or paused) when the removal was applied.
    pub down_nodes_removed: u64,
}

/// A failing run: what was violated, and the trace when tracing was on.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Simulated time of the violation, in microseconds.
    pub at: u64,
    /// What went wrong.
    pub message: String,
    /// The last events before the violation (empty unless `SimConfig::trace`).
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at t={}us: {}",
            self.seed, self.at, self.message
        )
    }
}

/// Inputs that reach a node.
#[derive(Clone, Debug)]
enum Input {
    Msg(Message),
    Tick,
    Client(ClientReq),
    /// An operator's `kvctl transfer-leader`, to this node.
    Transfer(NodeId),
    /// An operator's membership change (`kvctl member ...`), to this node; `true`: forced.
    Reconfig(ConfChange, bool),
}

#[derive(Debug)]
enum Ev {
    Tick(NodeId),
    Deliver(NodeId, Input),
    Reply(usize, ClientReply),
    PersistDone(NodeId, u64),
    /// A node's own snapshot is stored (`snapshot.rs`), in the given life of the node.
    SnapshotStored(NodeId, u64),
    Resume(NodeId),
    Restart(NodeId),
    ClientWake(usize),
    Fault,
    EndFaults,
    /// The membership operator's next move (`SimConfig::membership`).
    Reconfig,
    /// A removed node is decommissioned: stopped for good.
    Retire(NodeId),
}

struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A Ready whose persistence is in progress on the simulated disk.
struct InFlightReady {
    snapshot: Option<Snapshot>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    persisted_messages: Vec<Message>,
    committed_entries: Vec<Entry>,
    read_states: Vec<ReadState>,
}

/// What a waiting reader reads.
#[derive(Clone, Debug)]
enum Read {
    /// One key's value (`kvstore.v1` Get).
    Get(String),
    /// An etcd Range.
    Range(RangeRequest),
    /// A keep-alive the leader renewed at `renewed_at` for `ttl` seconds, answered once a
    /// quorum confirmed it still leads (the driver's `ReadTarget::LeaseRenewed`).
    KeptAlive {
        lease: i64,
        ttl: i64,
        renewed_at: Time,
        term: crate::raft::Term,
    },
}

/// A keep-alive's renewal: the lease, the TTL, when and in which term the leader renewed it.
type Renewal = (i64, i64, Time, crate::raft::Term);

/// A client request waiting on a node.
#[derive(Clone, Debug)]
struct Waiting {
    client: usize,
    attempt: u64,
}

pub(crate) struct SimNode {
    pub(crate) core: RaftCore,
    /// The node's disk: the real store over a crash-modelling file system (`disk.rs`).
    pub(crate) disk: disk::Disk,
    pub(crate) sm: StateMachine,
    pub(crate) up: bool,
    paused: bool,
    /// Bumped on every crash, so a disk completion of an earlier life is ignored.
    incarnation: u64,
    busy: Option<InFlightReady>,
    /// The node's own snapshot being stored in the background (`snapshot.rs`).
    snapshot_task: Option<snapshot::SnapshotTask>,
    inbox: VecDeque<Input>,
    tick_pending: bool,
    /// Writers and readers waiting on this node: the driver's own bookkeeping
    /// (`node::pending::Waiters`); a reader waits with what it reads.
    waiters: Waiters<Waiting, (Waiting, Read)>,
    role: Role,
    /// Leader only: the lease of every held lock on this node's clock, the driver's own
    /// table (`node::leases`), with simulated time as a `Duration` since the run started.
    leases: Leases<Duration>,
    /// The term of the last entry applied (the driver's `applied_term`): a leader answers a
    /// keep-alive only once it applied an entry of its own term.
    applied_term: crate::raft::Term,
    /// Its watchers and their publisher (`SimConfig::watches`), for this life of the node.
    watches: NodeWatches,
    /// The lease clock as the driver keeps it (`node::tick_clock`): when this life started,
    /// and the ticks credited to the core since (see `catch_up_clock`).
    born: Time,
    clock: TickClock,
    /// Removed from the cluster and decommissioned (`SimConfig::membership`): never restarted.
    pub(crate) retired: bool,
}

impl SimNode {
    /// See [`Scenario::leader_snapshot_in_flight`].
    pub(crate) fn leader_snapshot_in_flight(&self) -> Option<LogIndex> {
        let rd = self.busy.as_ref()?;
        rd.snapshot.as_ref().map(|s| s.meta.index)
    }
}

pub(crate) struct World {
    pub(crate) cfg: SimConfig,
    rng: SmallRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<Client>,
    lock_clients: Vec<LockClient>,
    locks: LockCheck,
    /// The key-lease clients (`SimConfig::key_leases`), after the lock clients.
    key_lease_clients: Vec<KeyLeaseClient>,
    key_leases: KeyLeaseCheck,
    /// The committed changes of the run, which every watch event is checked against
    /// (`SimConfig::watches`).
    committed_changes: CommittedChanges,
    /// Directed node-to-node links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rate: f64,
    dup_rate: f64,
    slow_disk: BTreeSet<NodeId>,
    faults_on: bool,
    /// False in a scripted scenario (`scenario.rs`): no random faults, no random long delays;
    /// the test applies its faults and the world records role changes and answers.
    random_faults: bool,
    roles: Vec<scenario::RoleChange>,
    answers: Vec<scenario::Answered>,
    pub(crate) history: Vec<Op>,
    /// What Range answers saw at each revision (the revision consistency check).
    observations: Observations,
    inv: Invariants,
    trace: Vec<String>,
    outcome: Outcome,
    fail: Option<String>,
    /// The membership operator (`SimConfig::membership`).
    operator: membership::Operator,
}

fn raft_config(id: NodeId, seed: u64, sim: &SimConfig) -> Config {
    let (n, classic) = (sim.nodes, sim.classic_raft);
    let quorum_checked = sim.check_quorum && !classic;
    let mut c = Config::new(id, (1..=n).filter(|&p| p != id).collect());
    // A node the membership operator added knows no members until the leader tells it.
    if id > n {
        c.peers.clear();
        c.joining = true;
    }
    c.election_ticks = ELECTION_TICKS;
    c.heartbeat_ticks = 1;
    c.max_inflight = 8;
    c.max_entries_per_message = 64;
    c.seed = seed;
    if classic {
        c.pre_vote = false;
    }
    c.check_quorum = quorum_checked;
    c.lease_reads = sim.lease_reads && quorum_checked;
    c
}

/// Tick interval of every simulated node (heartbeat), so elections time out after 100-200 ms.
const TICK: Time = 10 * MS;
/// Election timeout of every simulated node, in ticks (randomized up to twice this).
const ELECTION_TICKS: u32 = 10;
/// The longest network delay outside the rare long delays of random faults (exclusive).
const MAX_NET_DELAY: Time = 40 * MS;
/// A client attempt with no answer after this is retried elsewhere.
const ATTEMPT_TIMEOUT: Time = 300 * MS;
/// Once every lock client stopped and the cluster converged, every lock expires within this
/// (a lease is at most a few hundred ms, plus a new leader's full TTL and the commit).
const LOCKS_EXPIRE_WITHIN: Time = 5_000 * MS;
/// Key-lease clients of the key-lease workload (`SimConfig::key_leases`).
const KEY_LEASE_CLIENTS: usize = 3;
/// Once the key-lease clients stopped renewing and the cluster converged, every lease on keys
/// is revoked within this (a TTL of at most 2 s, restarted in full by a new leader, plus the
/// commit).
const KEY_LEASES_EXPIRE_WITHIN: Time = 8_000 * MS;
/// A client operation with no answer after this is given up: its outcome is unknown.
pub(crate) const OP_DEADLINE: Time = 2_000 * MS;

impl World {
    fn new(cfg: SimConfig) -> World {
        World::build(cfg, true)
    }

    /// A world with random faults (`run`), or a scripted one (`Scenario`).
    fn build(cfg: SimConfig, random_faults: bool) -> World {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let mut nodes = BTreeMap::new();
        for id in 1..=cfg.nodes {
            nodes.insert(id, new_node(id, rng.random(), &cfg));
        }
        let clients = (0..cfg.clients)
            .map(|i| Client::new(i, 1000 + i as u64, cfg.nodes))
            .collect();
        let lock_clients = (0..cfg.lock_clients)
            .map(|i| {
                let name = format!("service-{}", char::from(b'A' + (i % 26) as u8));
                LockClient::new(cfg.clients + i, &name, 2000 + i as u64, cfg.nodes)
            })
            .collect();
        let first = cfg.clients + cfg.lock_clients;
        let key_lease_clients = (0..if cfg.key_leases { KEY_LEASE_CLIENTS } else { 0 })
            .map(|i| KeyLeaseClient::new(first + i, cfg.nodes))
            .collect();
        let mut inv = Invariants::new(cfg.nodes);
        inv.check_followed_membership = cfg.membership;
        let mut w = World {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            lock_clients,
            locks: LockCheck::default(),
            key_lease_clients,
            key_leases: KeyLeaseCheck::default(),
            committed_changes: CommittedChanges::default(),
            cut: BTreeSet::new(),
            drop_rate: 0.0,
            dup_rate: 0.0,
            slow_disk: BTreeSet::new(),
            faults_on: true,
            random_faults,
            roles: Vec::new(),
            answers: Vec::new(),
            history: Vec::new(),
            observations: Observations::default(),
            inv,
            trace: Vec::new(),
            outcome: Outcome::default(),
            fail: None,
            operator: membership::Operator::default(),
        };
        for id in 1..=w.cfg.nodes {
            let jitter = w.rng.random_range(0..TICK);
            w.schedule(jitter, Ev::Tick(id));
        }
        for c in 0..w.cfg.clients + w.cfg.lock_clients + w.key_lease_clients.len() {
            let d = w.rng.random_range(0..50 * MS);
            w.schedule(d, Ev::ClientWake(c));
        }
        if random_faults {
            let first_fault = w.rng.random_range(100 * MS..400 * MS);
            w.schedule(first_fault, Ev::Fault);
            let end = w.cfg.fault_ms * MS;
            w.schedule(end, Ev::EndFaults);
            if w.cfg.membership {
                let first = w.rng.random_range(200 * MS..600 * MS);
                w.schedule(first, Ev::Reconfig);
            }
        }
        w
    }

    fn schedule(&mut self, delay: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: self.now + delay,
            seq: self.seq,
            ev,
        }));
    }

    pub(crate) fn note(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = format!("[{:>9.3}ms] {}", self.now as f64 / 1000.0, line());
            self.trace.push(l);
        }
    }

    pub(crate) fn violation(&mut self, msg: String) {
        if self.fail.is_none() {
            self.fail = Some(msg);
        }
    }

    // ------------------------------------------------------------------ network

    fn net_delay(&mut self) -> Time {
        // Mostly sub-millisecond, with a tail that reorders messages and, while faults are on,
        // a rare very long delay (a retransmission, a stalled socket) that outlives a whole
        // election: the delivery of a stale vote or append long after its term.
        let p: f64 = self.rng.random();
        if self.faults_on && self.random_faults && p < 0.02 {
            self.rng.random_range(50 * MS..600 * MS)
        } else if p < 0.10 {
            self.rng.random_range(2 * MS..MAX_NET_DELAY)
        } else {
            self.rng.random_range(50..1_500)
        }
    }

    /// The network between nodes. It refuses what the real transport refuses: an
    /// AppendEntries over the gRPC message-size limit (`rpc::peer::PEER_MESSAGE_LIMIT`,
    /// counted with the core's upper bound of each entry's wire size) never arrives, so
    /// sending one is a violation (a follower behind such a batch would never catch up).
    /// Snapshots travel in chunks of `rpc::convert::SNAPSHOT_CHUNK_BYTES`, which fit.
    fn send(&mut self, m: Message) {
        if m.body == (MessageBody::RequestVoteResponse { granted: true }) {
            self.inv.on_vote_granted(m.term, m.from, m.to);
        }
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            let bytes = append_bytes(entries);
            if bytes > PEER_MESSAGE_LIMIT {
                self.violation(format!(
                    "node {} sent node {} an AppendEntries of {} entries and {bytes} bytes, over the transport's {PEER_MESSAGE_LIMIT}-byte limit",
                    m.from,
                    m.to,
                    entries.len()
                ));
                return;
            }
        }
        if !self.nodes.contains_key(&m.to) || self.cut.contains(&(m.from, m.to)) {
            return;
        }
        if self.faults_on && self.rng.random_bool(self.drop_rate) {
            self.note(|| format!("drop {} {}->{} t{}", m.body.kind(), m.from, m.to, m.term));
            return;
        }
        let copies = if self.faults_on && self.rng.random_bool(self.dup_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.net_delay();
            self.schedule(d, Ev::Deliver(m.to, Input::Msg(m.clone())));
        }
    }

    pub(crate) fn send_to_node(&mut self, node: NodeId, req: ClientReq) {
        if self.faults_on && self.rng.random_bool(self.drop_rate) {
            return;
        }
        let d = self.net_delay();
        self.schedule(d, Ev::Deliver(node, Input::Client(req)));
    }

    fn reply(&mut self, w: &Waiting, result: Result<Answer, ReplyErr>) {
        if self.faults_on && self.rng.random_bool(self.drop_rate) {
            return;
        }
        let d = self.net_delay();
        self.schedule(
            d,
            Ev::Reply(
                w.client,
                ClientReply {
                    attempt: w.attempt,
                    result,
                },
            ),
        );
    }

    // ------------------------------------------------------------------ nodes

    fn deliver(&mut self, id: NodeId, input: Input) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.up {
            return;
        }
        if n.paused || n.busy.is_some() {
            match input {
                // A stalled runtime skips missed ticks (MissedTickBehavior::Skip): at most one.
                Input::Tick => n.tick_pending = true,
                other => n.inbox.push_back(other),
            }
            return;
        }
        self.input(id, input);
        self.drive(id);
    }

    fn input(&mut self, id: NodeId, input: Input) {
        self.catch_up_clock(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        match input {
            Input::Tick => {
                n.core.tick();
                n.clock.ticked();
                self.expire_leases(id);
                if self.cfg.watches {
                    self.maybe_add_watcher(id);
                }
            }
            Input::Transfer(target) => self.transfer(id, target),
            Input::Reconfig(change, force) => self.propose_conf_change(id, change, force),
            Input::Msg(m) => {
                if self.cfg.trace {
                    let line = format!(
                        "node {id} <- {} from {} t{} {:?}",
                        m.body.kind(),
                        m.from,
                        m.term,
                        short(&m)
                    );
                    self.note(|| line);
                }
                let Some(n) = self.nodes.get_mut(&id) else {
                    return;
                };
                let timeout_now = m.body == crate::raft::MessageBody::TimeoutNow;
                n.core.step(m);
                if timeout_now && n.core.status().role == Role::Candidate {
                    self.outcome.transfer_campaigns += 1;
                }
            }
            Input::Client(req) => self.client_request(id, req),
        }
    }

    fn client_request(&mut self, id: NodeId, req: ClientReq) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let waiting = Waiting {
            client: req.client,
            attempt: req.attempt,
        };
        match req.op {
            ReqOp::Write(mut proposal) => match n.core.propose({
                if self.cfg.strip_fences {
                    if let Command::Put { fence, .. } | Command::Delete { fence, .. } =
                        &mut proposal.command
                    {
                        *fence = None;
                    }
                }
                proposal.encode()
            }) {
                Ok(p) => {
                    if let Some(lost) = n.waiters.add_write(p.index, p.term, waiting) {
                        self.reply(&lost, Err(ReplyErr::LeadershipLost));
                    }
                }
                Err(e) => self.reply(&waiting, Err(ReplyErr::NotLeader(e.leader()))),
            },
            ReqOp::Read(key) => self.read_index(id, waiting, Read::Get(key)),
            ReqOp::Range(r) => self.read_index(id, waiting, Read::Range(r)),
            ReqOp::KeepAlive(lease) => self.keep_alive(id, waiting, lease),
        }
    }

    /// Now and then a new watcher on node `id` (at most four): every key, a prefix or one key
    /// of the workloads, from now on, from revision 1, from a recent revision, or from just
    /// below the compaction revision (it must be cancelled); some with a filter (NOPUT,
    /// NODELETE), half with previous kvs.
    fn maybe_add_watcher(&mut self, id: NodeId) {
        use crate::node::watches::WatchSpec;
        if !self.faults_on || !self.rng.random_bool(0.02) {
            return;
        }
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.watches.len() >= 4 {
            return;
        }
        let keys = n.sm.key_space();
        let (key, range_end): (&[u8], &[u8]) = match self.rng.random_range(0..4) {
            0 => (&[0], &[0]),
            1 => (b"lk", b"ll"),
            2 => (b"lk1", b""),
            _ => (b"p", b"q"),
        };
        let revision = keys.revision();
        let start = match self.rng.random_range(0..4) {
            0 => 0,
            1 => 1,
            2 => (revision - self.rng.random_range(0..5)).max(1),
            _ => (keys.compact_revision() - 1).max(1),
        };
        // One in four filters puts or deletes out, half ask for previous kvs.
        let flavour = self.rng.random_range(0..8);
        let spec = WatchSpec {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            no_put: flavour % 4 == 1,
            no_delete: flavour % 4 == 2,
            prev_kv: flavour >= 4,
        };
        let check = self.cfg.check_watch_applied;
        let mut d = Deliveries::new(id, keys, check, &mut self.committed_changes);
        n.watches.add(spec, start, keys, &mut d);
        if let Some(msg) = d.failure {
            self.fail.get_or_insert(msg);
        }
    }

    /// The driver's keep-alive (`Request::KeyLease` through `ReadTarget::LeaseKeepAlive`):
    /// a leader that applied an entry of its term restarts the lease's TTL on its clock at
    /// once, and answers only once a quorum confirmed it still leads (a read index, or a
    /// lease read), like a linearizable read; a lease it does not hold (TTL 0) is answered
    /// at once.
    fn keep_alive(&mut self, id: NodeId, waiting: Waiting, lease: i64) {
        self.sync_leases(id);
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let s = n.core.status();
        if s.role != Role::Leader {
            return self.reply(&waiting, Err(ReplyErr::NotLeader(s.leader)));
        }
        if n.applied_term != s.term {
            return self.reply(&waiting, Err(ReplyErr::NotLeader(None)));
        }
        let ttl = n
            .leases
            .renew(lease, Duration::from_micros(now))
            .unwrap_or(0);
        self.note(|| format!("node {id} renews lease {lease}: ttl {ttl}"));
        if ttl > 0 && !self.cfg.keep_alive_answers_at_once {
            let read = Read::KeptAlive {
                lease,
                ttl,
                renewed_at: now,
                term: s.term,
            };
            return self.read_index(id, waiting, read);
        }
        self.answer_keep_alive(id, &waiting, (lease, ttl, now, s.term));
    }

    /// Node `id` answers a keep-alive of `lease` it renewed at `renewed_at` in `term` for
    /// `ttl` seconds: from now on the run holds the lease clock to it.
    fn answer_keep_alive(
        &mut self,
        id: NodeId,
        waiting: &Waiting,
        (lease, ttl, renewed_at, term): Renewal,
    ) {
        if ttl > 0 {
            let checked = self.key_leases.renewed(id, term, lease, renewed_at, ttl);
            if let Err(msg) = checked {
                self.fail.get_or_insert(msg);
            }
        }
        self.reply(waiting, Ok(Answer::KeptAlive(ttl)));
    }

    /// A linearizable read: ReadIndex (or a lease), served once applied catches up.
    fn read_index(&mut self, id: NodeId, waiting: Waiting, read: Read) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let rid = n.waiters.next_read_id();
        let by_lease = n.core.lease_reads_served();
        match n.core.read_index(rid) {
            Ok(()) => {
                self.outcome.lease_reads += n.core.lease_reads_served() - by_lease;
                n.waiters.add_read(rid, (waiting, read));
            }
            Err(e) => self.reply(&waiting, Err(ReplyErr::NotLeader(e.leader))),
        }
    }

    /// The driver loop of one node: handle Readys until the node is waiting on its disk.
    fn drive(&mut self, id: NodeId) {
        loop {
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            if !n.up || n.paused || n.busy.is_some() || !n.core.has_ready() {
                return;
            }
            let rd: Ready = n.core.ready();
            if let Some(ss) = rd.soft_state {
                let was_leader = n.role == Role::Leader;
                n.role = ss.role;
                let term = n.core.status().term;
                if !self.random_faults {
                    self.roles.push(scenario::RoleChange {
                        at: self.now,
                        node: id,
                        role: ss.role,
                        leader: ss.leader,
                        term,
                    });
                }
                self.note(|| {
                    format!(
                        "node {id} is {} in term {term} (leader {:?})",
                        ss.role, ss.leader
                    )
                });
                if was_leader && ss.role != Role::Leader {
                    self.fail_pending(id, ReplyErr::LeadershipLost, false);
                }
                if ss.role == Role::Candidate {
                    self.inv.on_candidate(id, term, &self.nodes, &mut self.fail);
                }
                if ss.role == Role::Leader {
                    self.key_leases.on_leader(term, self.now);
                    self.inv.on_leader(id, term, &self.nodes, &mut self.fail);
                }
            }
            if !rd.entries.is_empty() {
                self.inv
                    .on_entries(id, &rd.entries, &self.nodes, &mut self.fail);
                if self.cfg.watch_publish_on_append {
                    let last = rd.entries.last().map_or(0, |e| e.index);
                    self.publish_appended(id, last);
                }
            }
            // 1. Messages that depend on nothing unpersisted go out now.
            for m in rd.messages {
                let m = self.attach_snapshot(id, m);
                self.send(m);
            }
            let inflight = InFlightReady {
                snapshot: rd.snapshot,
                hard_state: rd.hard_state,
                entries: rd.entries,
                persisted_messages: rd.persisted_messages,
                committed_entries: rd.committed_entries,
                read_states: rd.read_states,
            };
            // 2. Persist: takes simulated disk time when there is something to write.
            if inflight.snapshot.is_some()
                || inflight.hard_state.is_some()
                || !inflight.entries.is_empty()
            {
                let slow = self.slow_disk.contains(&id);
                let d = if slow {
                    self.rng.random_range(20 * MS..120 * MS)
                } else {
                    self.rng.random_range(100..3_000)
                };
                let Some(n) = self.nodes.get_mut(&id) else {
                    return;
                };
                let inc = n.incarnation;
                n.busy = Some(inflight);
                self.schedule(d, Ev::PersistDone(id, inc));
                return;
            }
            self.finish_ready(id, inflight);
        }
    }

    fn persist_done(&mut self, id: NodeId, incarnation: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.incarnation != incarnation || !n.up {
            return;
        }
        let Some(rd) = n.busy.take() else { return };
        if let Some(snap) = &rd.snapshot {
            if !self.install(id, snap) {
                return;
            }
        }
        let persisted = self.store_op(id, |s| s.persist(rd.hard_state.as_ref(), &rd.entries));
        if persisted.is_none() {
            return;
        }
        self.finish_ready(id, rd);
        self.after_busy(id);
    }

    /// Steps 3-5 of the driver loop.
    fn finish_ready(&mut self, id: NodeId, rd: InFlightReady) {
        // 3. Messages that promise what was just persisted.
        for m in rd.persisted_messages {
            self.send(m);
        }
        // 4. Apply, answer writers, serve reads. Lease bookkeeping first, as the driver does:
        //    a leader of a new term starts every lease from the state applied so far, then
        //    the entries restart the ones they touch.
        self.sync_leases(id);
        for e in rd.committed_entries {
            self.apply(id, e);
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            let keys = n.sm.key_space();
            let check = self.cfg.check_watch_applied;
            let mut d = Deliveries::new(id, keys, check, &mut self.committed_changes);
            n.watches.after_applies(keys, &mut d);
            if let Some(msg) = d.failure {
                self.fail.get_or_insert(msg);
            }
        }
        for rs in rd.read_states {
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            n.waiters.confirm_read(rs);
        }
        self.serve_reads(id);
        // 5. Advance.
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.core.advance();
        self.inv.after_step(id, &self.nodes, &mut self.fail);
        self.maybe_snapshot(id);
    }

    /// The `watch_publish_on_append` mutation: a leader that appends entries up to `last`
    /// evaluates its log up to there on a scratch copy of its state machine and publishes
    /// what that copy holds to its watchers, before the entries are committed.
    fn publish_appended(&mut self, id: NodeId, last: LogIndex) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.role != Role::Leader {
            return;
        }
        let Ok(sm) = StateMachine::restore(&n.sm.snapshot(), Default::default()) else {
            return;
        };
        let mut scratch = state_machine(&self.cfg, sm);
        for index in scratch.applied_index() + 1..=last {
            let Some(e) = n.core.entry(index) else {
                return;
            };
            match &e.payload {
                Payload::Command(data) => {
                    // A refused command changes nothing; its error is the apply's business.
                    let _ = scratch.apply(index, data);
                }
                Payload::Noop | Payload::ConfChange(_) => scratch.apply_noop(index),
            }
        }
        let check = self.cfg.check_watch_applied;
        let mut d = Deliveries::new(id, n.sm.key_space(), check, &mut self.committed_changes);
        n.watches.after_applies(scratch.key_space(), &mut d);
        if let Some(msg) = d.failure {
            self.fail.get_or_insert(msg);
        }
    }

    /// The driver attaches the stored snapshot to the core's InstallSnapshot message.
    fn attach_snapshot(&mut self, id: NodeId, mut m: Message) -> Message {
        if let MessageBody::InstallSnapshot { snapshot } = &mut m.body {
            match self
                .nodes
                .get(&id)
                .and_then(|n| n.disk.store())
                .map(|s| s.snapshot())
            {
                Some(Ok(Some(stored))) => *snapshot = stored,
                _ => self.violation(format!(
                    "node {id} sent a snapshot it does not have in storage"
                )),
            }
        }
        m
    }

    /// Stores a leader's snapshot durably and replaces the state machine with it; false if
    /// the node stopped (a storage error) or the run failed.
    fn install(&mut self, id: NodeId, snap: &Snapshot) -> bool {
        if !self.drain_snapshot(id) {
            return false;
        }
        let sm = match StateMachine::restore(&snap.data, Default::default()) {
            Ok(sm) => sm,
            Err(e) => {
                self.violation(format!(
                    "node {id}: snapshot {:?} does not decode: {e}",
                    snap.meta
                ));
                return false;
            }
        };
        if sm.applied_index() != snap.meta.index {
            let msg = format!(
                "node {id}: snapshot {:?} holds a state machine applied to {}",
                snap.meta,
                sm.applied_index()
            );
            self.violation(msg);
            return false;
        }
        if self.store_op(id, |s| s.install_snapshot(snap)).is_none() {
            return false;
        }
        let Some(n) = self.nodes.get_mut(&id) else {
            return false;
        };
        n.sm = state_machine(&self.cfg, sm);
        n.applied_term = snap.meta.term;
        n.watches.snapshot_installed(n.sm.key_space());
        self.locks.on_snapshot(id, &n.sm);
        self.inv.on_snapshot(id, snap.meta, &mut self.fail);
        self.outcome.snapshots_installed += 1;
        self.note(|| format!("node {id} installed snapshot {:?}", snap.meta));
        true
    }

    fn apply(&mut self, id: NodeId, e: Entry) {
        self.inv.on_apply(id, &e, &mut self.fail);
        self.conf_applied(id, &e);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if e.index != n.sm.applied_index() + 1 {
            let msg = format!(
                "node {id} applied entry {} right after entry {}: entries skipped or repeated",
                e.index,
                n.sm.applied_index()
            );
            self.violation(msg);
            return;
        }
        // The lock checker's view of the lock table before the entry.
        let proposal = match &e.payload {
            Payload::Command(data) => Proposal::decode(data).ok(),
            Payload::Noop | Payload::ConfChange(_) => None,
        };
        let before = proposal.as_ref().map(|p| LockCheck::before(&n.sm, p));
        // A retry the session answers from its cache changes nothing.
        let duplicate = proposal
            .as_ref()
            .and_then(|p| p.session)
            .is_some_and(|s| n.sm.session_sequence(s.client_id) == Some(s.sequence));
        let revision = n.sm.revision();
        let revoke = match proposal.as_ref().map(|p| &p.command) {
            Some(Command::LeaseRevoke { id }) => Some(BeforeRevoke::take(&n.sm, *id)),
            _ => None,
        };
        // The driver's own step: apply, lease bookkeeping, the answer owed (`node::apply`).
        let now = Duration::from_micros(self.now);
        let applied = apply::apply_entry(&mut n.sm, &mut n.leases, &e, now);
        n.applied_term = e.term;
        if let Some(before) = &revoke {
            let checked = self.key_leases.after_revoke(
                id,
                e.index,
                before,
                applied.result.as_ref(),
                &n.sm,
                self.now,
            );
            if let Err(msg) = checked {
                self.fail.get_or_insert(msg);
            }
        }
        let wrote = !duplicate
            && matches!(&applied.result, Some(Ok(outcome)) if changed_key_space(outcome));
        let grew = n.sm.revision() - revision;
        if self.cfg.watches && grew > 0 {
            let keys = n.sm.key_space();
            let events = keys
                .changes(keys.revision(), b"", &[0], false)
                .unwrap_or_default();
            let recorded = self.committed_changes.applied(id, keys.revision(), &events);
            if let Err(msg) = recorded {
                self.fail.get_or_insert(msg);
            }
        }
        if self.cfg.check_revision_density && grew != i64::from(wrote) {
            self.fail.get_or_insert(format!(
                "revision density: node {id} applied entry {} ({}) and its revision went from {revision} to {} (a change moves it by exactly 1, anything else by 0)",
                e.index,
                match &applied.result {
                    Some(Ok(outcome)) => format!("{outcome:?}"),
                    Some(Err(err)) => format!("refused: {err}"),
                    None => "a no-op".into(),
                },
                n.sm.revision()
            ));
        }
        if let (Some(p), Some(b), Some(r)) = (&applied.proposal, &before, &applied.result) {
            if let Err(msg) = self.locks.after(id, e.index, p, b, r, &n.sm) {
                self.fail.get_or_insert(format!("lock safety: {msg}"));
            }
        }
        let Some((term, w)) = n.waiters.take_write(e.index) else {
            return;
        };
        let lockish = applied
            .proposal
            .as_ref()
            .is_some_and(|p| is_lock_op(&p.command));
        let reply = match applied.answer_for(term) {
            apply::Answer::Applied(outcome) => {
                if !self.random_faults {
                    self.answers.push(scenario::Answered {
                        at: self.now,
                        node: id,
                        write: Some(e.index),
                    });
                }
                match outcome {
                    outcome if lockish => Ok(Answer::Applied(outcome, e.index)),
                    SmOutcome::Put => Ok(Answer::Kv(OpResult::Put)),
                    SmOutcome::Delete { existed } => Ok(Answer::Kv(OpResult::Delete(existed))),
                    other => Ok(Answer::Applied(other, e.index)),
                }
            }
            apply::Answer::Rejected(err) => Err(ReplyErr::Rejected(err)),
            apply::Answer::LeadershipLost => Err(ReplyErr::LeadershipLost),
        };
        self.reply(&w, reply);
    }

    fn serve_reads(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let applied = n.sm.applied_index();
        // Each answer, with the renewal it promises for a keep-alive.
        let answers: Vec<(Waiting, Answer, Option<Renewal>)> = n
            .waiters
            .servable_reads(applied)
            .into_iter()
            .map(|(w, read)| match read {
                Read::Get(key) => {
                    let value = n.sm.get(&key).map(String::from);
                    (w, Answer::Kv(OpResult::Get(value)), None)
                }
                Read::Range(r) => {
                    let answer = Answer::Range {
                        revision: n.sm.revision(),
                        result: n.sm.range(&r),
                    };
                    (w, answer, None)
                }
                Read::KeptAlive {
                    lease,
                    ttl,
                    renewed_at,
                    term,
                } => {
                    let renewal = (lease, ttl, renewed_at, term);
                    (w, Answer::KeptAlive(ttl), Some(renewal))
                }
            })
            .collect();
        for (w, answer, renewal) in answers {
            if !self.random_faults {
                self.answers.push(scenario::Answered {
                    at: self.now,
                    node: id,
                    write: None,
                });
            }
            match renewal {
                Some(renewal) => self.answer_keep_alive(id, &w, renewal),
                None => self.reply(&w, Ok(answer)),
            }
        }
    }

    /// Answers `err` to the waiters of node `id`: every one (`all`: a crash), or, as the
    /// driver does when leadership is lost, the writers and the reads not yet confirmed
    /// (a confirmed read is still served once applied catches up).
    fn fail_pending(&mut self, id: NodeId, err: ReplyErr, all: bool) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let (writes, reads) = if all {
            n.waiters.take_all()
        } else {
            n.waiters.take_leader_bound()
        };
        let all = writes.into_iter().chain(reads.into_iter().map(|(w, _)| w));
        for w in all.collect::<Vec<_>>() {
            self.reply(&w, Err(err.clone()));
        }
    }

    /// After the disk or a pause released a node: take everything that queued, then drive.
    fn after_busy(&mut self, id: NodeId) {
        self.finish_snapshot(id);
        loop {
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            if n.busy.is_some() || n.paused || !n.up {
                return;
            }
            let batch: Vec<Input> = n.inbox.drain(..).collect();
            let tick = std::mem::take(&mut n.tick_pending);
            if batch.is_empty() && !tick {
                self.drive(id);
                return;
            }
            if tick {
                self.input(id, Input::Tick);
            }
            for i in batch {
                self.input(id, i);
            }
            self.drive(id);
        }
    }

    /// A power loss on node `id` (`disk.rs`): it stops, and what it had not synced is at
    /// risk until it restarts.
    fn crash(&mut self, id: NodeId) {
        self.power_loss(id);
    }

    /// Node `id`'s process is gone (with `power_loss`, its disk's power too): whatever it
    /// was doing is abandoned, its store closed; it is down until `restart`.
    fn stop(&mut self, id: NodeId, power_loss: bool) {
        let Some(n) = self.nodes.get_mut(&id).filter(|n| n.up) else {
            return;
        };
        n.disk.stop(power_loss);
        n.up = false;
        n.paused = false;
        n.incarnation += 1;
        n.busy = None;
        n.snapshot_task = None;
        n.inbox.clear();
        n.tick_pending = false;
        if let Err(msg) = n.watches.check(id, n.sm.key_space()) {
            self.fail.get_or_insert(msg);
        }
        self.outcome.watch_events += n.watches.delivered;
        n.watches = NodeWatches::new(n.sm.key_space(), self.cfg.watch_drop_snapshot_catch_up);
        self.note(|| format!("{} node {id}", if power_loss { "CRASH" } else { "STOP" }));
        // Clients waiting on it see their connection drop.
        self.fail_pending(id, ReplyErr::ConnectionLost, true);
        self.inv.on_crash(id);
        self.locks.on_crash(id);
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.random();
        let mutation = self.cfg.mutation;
        let config = raft_config(id, seed, &self.cfg);
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.up || n.retired {
            return;
        }
        // As the daemon starts: open the store (its recovery runs here), load what it kept.
        let loaded = n.disk.reopen_checked().and_then(|store| {
            let load = || Ok((store.load()?, store.snapshot()?));
            load().map_err(|e: StorageError| format!("fails to load: {e}"))
        });
        let ((hs, log), snap) = match loaded {
            Ok(x) => x,
            Err(e) => {
                self.violation(format!("node {id}: after a restart its store {e}"));
                return;
            }
        };
        let (term, len) = (hs.term, log.len());
        let meta = snap.as_ref().map_or_else(Default::default, |s| s.meta);
        let membership = snap.as_ref().and_then(|s| s.membership.clone());
        n.sm = match &snap {
            None => state_machine(&self.cfg, StateMachine::new()),
            Some(s) => match StateMachine::restore(&s.data, Default::default()) {
                Ok(sm) => state_machine(&self.cfg, sm),
                Err(e) => {
                    self.violation(format!("node {id}: stored snapshot does not decode: {e}"));
                    return;
                }
            },
        };
        match RaftCore::restore_with_membership(config, hs, meta, membership, log) {
            Ok(mut core) => {
                core.set_mutation(mutation);
                n.core = core;
            }
            Err(e) => {
                self.violation(format!("restart of node {id} failed: {e}"));
                return;
            }
        }
        self.locks.on_snapshot(id, &n.sm);
        n.applied_term = meta.term;
        n.watches = NodeWatches::new(n.sm.key_space(), self.cfg.watch_drop_snapshot_catch_up);
        n.up = true;
        n.role = Role::Follower;
        n.leases = lease_table(&self.cfg);
        n.born = now;
        n.clock = TickClock::default();
        self.note(|| {
            format!(
                "RESTART node {id} (term {term}, snapshot {}, {len} entries on disk)",
                meta.index
            )
        });
        self.drive(id);
    }

    // ------------------------------------------------------------------ faults

    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        self.outcome.faults += 1;
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.retired)
            .map(|(&id, _)| id)
            .collect();
        let pick = ids[self.rng.random_range(0..ids.len())];
        let kinds = 11 + u8::from(self.cfg.disk_faults) + u8::from(self.cfg.transfers);
        match self.rng.random_range(0..kinds) {
            11 if self.cfg.disk_faults => self.inject_disk_fault(pick),
            10 => {
                // Restarts in a row found issue 11's defect 1 (a lost Snapshot record).
                let times = self.rng.random_range(1..=3);
                self.clean_restart(pick, times);
            }
            0 | 1 => {
                self.crash(pick);
                let down = self.rng.random_range(50 * MS..1_500 * MS);
                self.schedule(down, Ev::Restart(pick));
            }
            2 => {
                // Partition: a random subset against the rest.
                self.cut.clear();
                let side: BTreeSet<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.random_bool(0.5))
                    .collect();
                for &a in &ids {
                    for &b in &ids {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.note(|| format!("PARTITION {side:?} | rest"));
            }
            3 => {
                // One-way cut: `pick` can send but not receive (or the other way round).
                let inbound = self.rng.random_bool(0.5);
                for &o in &ids {
                    if o != pick {
                        self.cut.insert(if inbound { (o, pick) } else { (pick, o) });
                    }
                }
                self.note(|| {
                    format!(
                        "ONE-WAY CUT node {pick} {}",
                        if inbound { "deaf" } else { "mute" }
                    )
                });
            }
            4 => {
                self.note(|| "HEAL network".into());
                self.cut.clear();
            }
            5 => {
                // Pause (a SIGSTOPped process): it keeps its state, everything queues.
                let Some(n) = self.nodes.get_mut(&pick) else {
                    return;
                };
                if n.up && !n.paused {
                    n.paused = true;
                    let d = self.rng.random_range(100 * MS..1_000 * MS);
                    self.note(|| format!("PAUSE node {pick}"));
                    self.schedule(d, Ev::Resume(pick));
                }
            }
            6 => {
                self.drop_rate = [0.0, 0.02, 0.1, 0.3][self.rng.random_range(0..4)];
                self.dup_rate = [0.0, 0.02, 0.1][self.rng.random_range(0..3)];
                let (d, u) = (self.drop_rate, self.dup_rate);
                self.note(|| format!("NETWORK drop={d} dup={u}"));
            }
            11 | 12 => {
                // An operator moves leadership (kvctl transfer-leader) to a random node; the
                // request goes to whoever leads, through the network like a client's.
                if let Some(l) = ids
                    .iter()
                    .copied()
                    .find(|i| self.nodes[i].up && self.nodes[i].role == Role::Leader)
                {
                    let d = self.net_delay();
                    self.schedule(d, Ev::Deliver(l, Input::Transfer(pick)));
                }
            }
            7 => {
                if !self.slow_disk.insert(pick) {
                    self.slow_disk.remove(&pick);
                }
                self.note(|| format!("SLOW DISK toggled on node {pick}"));
            }
            _ => {
                // Crash whoever leads (the most interesting node to lose).
                if let Some(l) = ids
                    .iter()
                    .copied()
                    .find(|i| self.nodes[i].up && self.nodes[i].role == Role::Leader)
                {
                    self.crash(l);
                    let down = self.rng.random_range(10 * MS..800 * MS);
                    self.schedule(down, Ev::Restart(l));
                }
            }
        }
        let next = self.rng.random_range(20 * MS..300 * MS);
        self.schedule(next, Ev::Fault);
    }

    fn end_faults(&mut self) {
        self.note(|| "END OF FAULTS: healing network, restarting and resuming every node".into());
        self.faults_on = false;
        self.cut.clear();
        self.drop_rate = 0.0;
        self.dup_rate = 0.0;
        self.slow_disk.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.restart(id);
            self.resume(id);
        }
        for c in 0..self.clients.len() {
            self.clients[c].stop_new_ops();
        }
        for c in &mut self.lock_clients {
            c.stop_new_ops();
        }
        for c in &mut self.key_lease_clients {
            c.stop_new_ops();
        }
    }

    fn resume(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.paused {
            return;
        }
        n.paused = false;
        self.note(|| format!("RESUME node {id}"));
        self.after_busy(id);
    }

    // ------------------------------------------------------------------ the run

    fn step(&mut self) -> bool {
        let Some(Reverse(q)) = self.queue.pop() else {
            return false;
        };
        self.now = q.at;
        self.outcome.events += 1;
        match q.ev {
            Ev::Tick(id) => {
                self.deliver(id, Input::Tick);
                self.schedule(TICK, Ev::Tick(id));
            }
            Ev::Deliver(id, input) => self.deliver(id, input),
            Ev::Reply(c, r) => self.client_reply(c, r),
            Ev::PersistDone(id, inc) => self.persist_done(id, inc),
            Ev::SnapshotStored(id, inc) => self.snapshot_stored(id, inc),
            Ev::Resume(id) => self.resume(id),
            Ev::Restart(id) => self.restart(id),
            Ev::ClientWake(c) => self.client_wake(c),
            Ev::Fault => self.fault(),
            Ev::EndFaults => self.end_faults(),
            Ev::Reconfig => self.reconfigure(),
            Ev::Retire(id) => self.retire(id),
        }
        true
    }

    pub(crate) fn now(&self) -> Time {
        self.now
    }

    pub(crate) fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    pub(crate) fn keys(&self) -> usize {
        self.cfg.keys
    }

    pub(crate) fn schedule_client(&mut self, client: usize, delay: Time) {
        self.schedule(delay, Ev::ClientWake(client));
    }

    fn client_wake(&mut self, c: usize) {
        if let Some(k) = c.checked_sub(self.clients.len() + self.lock_clients.len()) {
            let mut client = std::mem::take(&mut self.key_lease_clients[k]);
            client.wake(self);
            self.key_lease_clients[k] = client;
            return;
        }
        if let Some(l) = c.checked_sub(self.clients.len()) {
            let mut client = std::mem::take(&mut self.lock_clients[l]);
            client.wake(self);
            self.lock_clients[l] = client;
            return;
        }
        let mut client = std::mem::take(&mut self.clients[c]);
        client.wake(self);
        self.clients[c] = client;
    }

    fn client_reply(&mut self, c: usize, r: ClientReply) {
        if let Some(k) = c.checked_sub(self.clients.len() + self.lock_clients.len()) {
            let mut client = std::mem::take(&mut self.key_lease_clients[k]);
            client.on_reply(self, r);
            self.key_lease_clients[k] = client;
            return;
        }
        if let Some(l) = c.checked_sub(self.clients.len()) {
            let mut client = std::mem::take(&mut self.lock_clients[l]);
            client.on_reply(self, r);
            self.lock_clients[l] = client;
            return;
        }
        let mut client = std::mem::take(&mut self.clients[c]);
        client.on_reply(self, r);
        self.clients[c] = client;
    }

    /// The run's counters, for the clients to count what they saw.
    pub(crate) fn stats(&mut self) -> &mut Outcome {
        &mut self.outcome
    }

    pub(crate) fn observations(&mut self) -> &mut Observations {
        &mut self.observations
    }

    pub(crate) fn lock_check(&self) -> &LockCheck {
        &self.locks
    }

    pub(crate) fn lock_check_mut(&mut self) -> &mut LockCheck {
        &mut self.locks
    }

    pub(crate) fn key_lease_check_mut(&mut self) -> &mut KeyLeaseCheck {
        &mut self.key_leases
    }

    fn clients_idle(&self) -> bool {
        self.clients.iter().all(Client::idle)
            && self.lock_clients.iter().all(LockClient::idle)
            && self.key_lease_clients.iter().all(KeyLeaseClient::idle)
    }

    /// As the driver does on a tick: keep the lease table in step with leadership, then
    /// propose `Expire` for every lease that ran out on this node's clock, once per (lock,
    /// token) while it leads (`node::leases`).
    fn expire_leases(&mut self, id: NodeId) {
        self.sync_leases(id);
        let now = Duration::from_micros(self.now);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let core = &mut n.core;
        let proposed = n.leases.propose_due(now, |data| core.propose(data).is_ok());
        for (lock, token) in proposed {
            self.note(|| format!("node {id} proposes the expiry of {lock} token {token}"));
        }
    }

    /// The driver's `sync_leases`: the table follows the core's leadership.
    fn sync_leases(&mut self, id: NodeId) {
        let now = Duration::from_micros(self.now);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let s = n.core.status();
        let leading = (s.role == Role::Leader).then_some(s.term);
        n.leases.sync(leading, &n.sm, now);
    }

    /// The nodes the end-of-run checks compare: every node, or with membership changes the
    /// members of the final membership (removed nodes left out, added ones in).
    fn checked_nodes(&self) -> Vec<(NodeId, &SimNode)> {
        let members = self.cfg.membership.then(|| self.final_members());
        self.nodes
            .iter()
            .filter(|(id, _)| members.as_ref().is_none_or(|m| m.contains(id)))
            .map(|(&id, n)| (id, n))
            .collect()
    }

    pub(crate) fn attempt_timeout() -> Time {
        ATTEMPT_TIMEOUT
    }

    /// One leader that every up node follows, and every node has applied its whole log.
    /// With membership changes: the leader is one of the nodes not decommissioned, and
    /// "every node" is every member of its membership.
    fn converged(&self) -> bool {
        let leaders: Vec<&SimNode> = self
            .nodes
            .values()
            .filter(|n| n.up && !n.retired && n.role == Role::Leader)
            .collect();
        let [l] = leaders.as_slice() else {
            return false;
        };
        let ls = l.core.status();
        let members = &ls.membership;
        let followers = self
            .nodes
            .iter()
            .filter(|(id, _)| !self.cfg.membership || members.contains(**id))
            .map(|(_, n)| n);
        ls.commit == ls.last_index
            && (!self.cfg.membership
                || ls.membership.members().all(|m| self.nodes.contains_key(&m)))
            && followers.into_iter().all(|n| {
                let s = n.core.status();
                n.up && s.leader == Some(ls.id)
                    && s.term == ls.term
                    && s.last_index == ls.last_index
                    && n.sm.applied_index() == ls.commit
            })
    }
}

mod disk;
mod membership;
mod scenario;
mod snapshot;
mod transfer;

pub use scenario::{Answered, RoleChange, Scenario, ScriptedFault, ELECTION_TIMEOUT, MAX_DELAY};

fn is_lock_op(c: &Command) -> bool {
    match c {
        Command::Put { fence, .. } | Command::Delete { fence, .. } => fence.is_some(),
        _ => true,
    }
}

/// Whether an applied command's outcome changed the key space (so moved its revision): a
/// put, a delete that deleted, a txn with such a write. Lock commands, compactions and reads
/// do not.
fn changed_key_space(outcome: &SmOutcome) -> bool {
    fn txn_wrote(t: &TxnResponse) -> bool {
        t.responses.iter().any(|r| match r {
            ResponseOp::Put(_) => true,
            ResponseOp::DeleteRange(d) => d.deleted > 0,
            ResponseOp::Txn(t) => txn_wrote(t),
            ResponseOp::Range(_) => false,
        })
    }
    match outcome {
        SmOutcome::Put | SmOutcome::Kv(KvResult::Put(_)) => true,
        SmOutcome::Delete { existed } => *existed,
        SmOutcome::Kv(KvResult::DeleteRange(d)) => d.deleted > 0,
        SmOutcome::Kv(KvResult::Txn(t)) => txn_wrote(t),
        SmOutcome::LeaseRevoked { deleted } => *deleted > 0,
        SmOutcome::LeaseGranted { .. }
        | SmOutcome::Acquired { .. }
        | SmOutcome::KeptAlive { .. }
        | SmOutcome::Released
        | SmOutcome::Expired { .. }
        | SmOutcome::Compacted => false,
    }
}

/// A node's state machine, with the key space's mutation switch of the run set (it is not
/// part of the state: every rebuilt state machine needs it again).
fn state_machine(cfg: &SimConfig, mut sm: StateMachine) -> StateMachine {
    sm.set_split_txn_writes(cfg.split_txn_writes);
    sm.set_txn_skips_lease_index(cfg.txn_skips_lease_index);
    sm
}

/// A fresh node with an empty disk, its core seeded with `seed`: a founding member, or (an id
/// above `SimConfig::nodes`) a node the membership operator added, which starts joining.
fn new_node(id: NodeId, seed: u64, cfg: &SimConfig) -> SimNode {
    let mut core = RaftCore::new(raft_config(id, seed, cfg), HardState::default(), vec![])
        .unwrap_or_else(|e| panic!("invariant: simulator config is valid: {e}"));
    core.set_mutation(cfg.mutation);
    SimNode {
        core,
        disk: disk::Disk::new(id, cfg.seed, cfg.segment_bytes),
        sm: state_machine(cfg, StateMachine::new()),
        up: true,
        paused: false,
        incarnation: 0,
        busy: None,
        snapshot_task: None,
        inbox: VecDeque::new(),
        tick_pending: false,
        waiters: Waiters::default(),
        role: Role::Follower,
        leases: lease_table(cfg),
        applied_term: 0,
        watches: NodeWatches::new(
            StateMachine::new().key_space(),
            cfg.watch_drop_snapshot_catch_up,
        ),
        born: 0,
        clock: TickClock::default(),
        retired: false,
    }
}

/// A node's lease table, with the mutation switch of the run.
fn lease_table(cfg: &SimConfig) -> Leases<Duration> {
    let mut leases = Leases::default();
    leases.mark_before_proposing = cfg.mark_leases_before_proposing;
    leases.key_leases_not_restarted = cfg.key_leases_not_restarted;
    leases
}

fn short(m: &Message) -> String {
    use crate::raft::MessageBody as B;
    match &m.body {
        B::RequestVote {
            last_log_index,
            last_log_term,
        } => format!("last=({last_log_index},t{last_log_term})"),
        B::RequestVoteResponse { granted } | B::PreVoteResponse { granted } => {
            format!("granted={granted}")
        }
        B::PreVote {
            last_log_index,
            last_log_term,
        } => format!("pre-vote last=({last_log_index},t{last_log_term})"),
        B::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            ..
        } => {
            format!(
                "prev=({prev_log_index},t{prev_log_term}) n={} commit={leader_commit}",
                entries.len()
            )
        }
        B::AppendEntriesResponse {
            success,
            match_index,
            conflict_index,
            conflict_term,
            ..
        } => {
            format!("ok={success} match={match_index} hint=({conflict_index},t{conflict_term})")
        }
        B::InstallSnapshot { snapshot } => format!(
            "snapshot=({},t{}) {} bytes",
            snapshot.meta.index,
            snapshot.meta.term,
            snapshot.data.len()
        ),
        B::TimeoutNow | B::TimeoutNowResponse => String::new(),
        B::TransferRequestVote {
            last_log_index,
            last_log_term,
        } => format!("transfer last=({last_log_index},t{last_log_term})"),
    }
}

/// Runs one simulation.
///
/// # Errors
/// A [`Failure`] describing the first violation found.
pub fn run(cfg: SimConfig) -> Result<Outcome, Failure> {
    let fault_end = cfg.fault_ms * MS;
    settle(World::new(cfg), fault_end)
}

/// After the faults (which end at `fault_end`): recovery until every client is idle and the
/// cluster has converged, final reads, and the end-of-run checks.
fn settle(mut w: World, fault_end: Time) -> Result<Outcome, Failure> {
    let deadline = fault_end + w.cfg.liveness_ms * MS;
    let seed = w.cfg.seed;
    let fail = |w: &mut World, message: String| Failure {
        seed,
        at: w.now,
        message,
        trace: std::mem::take(&mut w.trace),
    };

    // Faults, then recovery until every client is idle and the cluster has converged.
    loop {
        if !w.step() {
            return Err(fail(&mut w, "event queue ran dry".into()));
        }
        if let Some(msg) = w.fail.take() {
            return Err(fail(&mut w, msg));
        }
        if w.now > fault_end && w.clients_idle() && w.converged() {
            break;
        }
        if w.now > deadline {
            let state: Vec<String> = w
                .nodes
                .values()
                .map(|n| {
                    let s = n.core.status();
                    let members = if w.cfg.membership {
                        let m = &s.membership;
                        let retired = if n.retired { " retired" } else { "" };
                        format!(" voters {:?} learners {:?}{retired}", m.voters, m.learners)
                    } else {
                        String::new()
                    };
                    format!(
                        "node {}: {} term {} leader {:?} commit {} last {} applied {}{members}",
                        s.id,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit,
                        s.last_index,
                        n.sm.applied_index()
                    )
                })
                .collect();
            let msg = format!(
                "liveness: no convergence within {} ms after faults stopped; {}",
                w.cfg.liveness_ms,
                state.join("; ")
            );
            return Err(fail(&mut w, msg));
        }
    }

    // Final linearizable reads of every key, through the client path, recorded in the history:
    // an acknowledged write that was lost shows up as a non-linearizable read here.
    for c in 0..w.clients.len() {
        w.clients[c].final_reads(w.cfg.keys, w.cfg.kv_txns);
    }
    for c in 0..w.clients.len() {
        w.schedule_client(c, 0);
    }
    while !w.clients_idle() {
        if !w.step() {
            return Err(fail(
                &mut w,
                "event queue ran dry during final reads".into(),
            ));
        }
        if let Some(msg) = w.fail.take() {
            return Err(fail(&mut w, msg));
        }
        if w.now > deadline + 10_000 * MS {
            return Err(fail(
                &mut w,
                "liveness: final reads did not complete".into(),
            ));
        }
    }
    let unanswered: Vec<&Op> = w
        .history
        .iter()
        .filter(|o| o.result.is_none() && o.kind == lincheck::OpKind::Get && o.invoke > fault_end)
        .collect();
    if let Some(op) = unanswered.first() {
        let msg = format!(
            "liveness: final read of {} by client {} got no answer on a healthy cluster",
            op.key, op.client
        );
        return Err(fail(&mut w, msg));
    }

    // Let late client retries still in the network settle, then every replica must hold
    // the same state.
    while !w.converged() {
        if !w.step() || w.now > deadline + 20_000 * MS {
            return Err(fail(
                &mut w,
                "liveness: no convergence after the final reads".into(),
            ));
        }
        if let Some(msg) = w.fail.take() {
            return Err(fail(&mut w, msg));
        }
    }
    // Every replica holds the same lease table (part of the snapshot, so also of what a
    // follower installs), compared while leases may still be held.
    let tables: BTreeSet<Vec<(i64, i64)>> = w
        .checked_nodes()
        .into_iter()
        .map(|(_, n)| n)
        .map(|n| n.sm.key_leases().iter().collect())
        .collect();
    if tables.len() != 1 {
        let per_node: Vec<String> = w
            .checked_nodes()
            .into_iter()
            .map(|(id, n)| {
                format!(
                    "node {id}: {:?}",
                    n.sm.key_leases().iter().collect::<Vec<_>>()
                )
            })
            .collect();
        let msg = format!(
            "replicas differ after convergence (lease table): {}",
            per_node.join("; ")
        );
        return Err(fail(&mut w, msg));
    }
    // The lock clients stopped with the others: every lease must run out on the leader's
    // clock and its expiry be applied on every node. A lease whose expiry is never proposed
    // would hold its lock for good (issue 11, defect 3).
    let locks_by = w.now + LOCKS_EXPIRE_WITHIN;
    while !(w.converged()
        && w.checked_nodes()
            .into_iter()
            .all(|(_, n)| n.sm.locks().next().is_none()))
    {
        if !w.step() || w.now > locks_by {
            let held: Vec<String> = w
                .checked_nodes()
                .into_iter()
                .flat_map(|(id, n)| {
                    let s = n.core.status();
                    n.sm.locks().map(move |(name, l)| {
                        format!(
                            "node {id} ({} in term {}): {name} token {}",
                            s.role, s.term, l.token
                        )
                    })
                })
                .collect();
            let msg = format!(
                "liveness: locks still held {} ms after their holders stopped: {}",
                LOCKS_EXPIRE_WITHIN / MS,
                held.join("; ")
            );
            return Err(fail(&mut w, msg));
        }
        if let Some(msg) = w.fail.take() {
            return Err(fail(&mut w, msg));
        }
    }
    // The key-lease clients stopped renewing: every lease on keys must run out, with its keys.
    let leases_by = w.now + KEY_LEASES_EXPIRE_WITHIN;
    while !(w.converged()
        && w.checked_nodes()
            .into_iter()
            .all(|(_, n)| n.sm.key_leases().is_empty()))
    {
        if !w.step() || w.now > leases_by {
            let held: Vec<String> = w
                .checked_nodes()
                .into_iter()
                .map(|(id, n)| {
                    let ids: Vec<i64> = n.sm.key_leases().iter().map(|(id, _)| id).collect();
                    format!("node {id}: {ids:?}")
                })
                .collect();
            let msg = format!(
                "liveness: leases on keys still exist {} ms after their clients stopped renewing: {}",
                KEY_LEASES_EXPIRE_WITHIN / MS,
                held.join("; ")
            );
            return Err(fail(&mut w, msg));
        }
        if let Some(msg) = w.fail.take() {
            return Err(fail(&mut w, msg));
        }
    }
    if let Some((id, keys)) = w
        .checked_nodes()
        .into_iter()
        .map(|(id, n)| (id, key_leases::leased_keys(&n.sm)))
        .find(|(_, keys)| !keys.is_empty())
    {
        let msg = format!(
            "lease revoke: every lease ran out but node {id} still holds keys attached to one: {}",
            keys.join(", ")
        );
        return Err(fail(&mut w, msg));
    }
    for (id, n) in &w.nodes {
        w.outcome.watch_events += n.watches.delivered;
        if let Err(msg) = n.watches.check(*id, n.sm.key_space()) {
            return Err(fail(&mut w, msg));
        }
    }
    if let Err(msg) = w.committed_changes.check_end() {
        return Err(fail(&mut w, msg));
    }
    // Every replica applied the same state: the same key space, revisions and whole history
    // back to the same compaction revision (byte for byte as a snapshot would store it).
    let states: BTreeSet<Vec<u8>> = w
        .checked_nodes()
        .into_iter()
        .map(|(_, n)| n)
        .map(|n| postcard::to_allocvec(&n.sm.key_space().snapshot_view()).unwrap_or_default())
        .collect();
    if states.len() != 1 {
        let per_node: Vec<String> = w
            .checked_nodes()
            .into_iter()
            .map(|(id, n)| {
                let history =
                    postcard::to_allocvec(&n.sm.key_space().snapshot_view()).map_or(0, |b| b.len());
                format!(
                    "node {id} applied {}: {} ({history} bytes with the history)",
                    n.sm.applied_index(),
                    key_space_view(&n.sm)
                )
            })
            .collect();
        let msg = format!(
            "replicas differ after convergence (key space or history): {}",
            per_node.join("; ")
        );
        return Err(fail(&mut w, msg));
    }

    if let Err(v) = lincheck::check(&w.history) {
        return Err(fail(&mut w, v.to_string()));
    }
    w.outcome.ok = w.history.iter().filter(|o| o.result.is_some()).count() as u64;
    w.outcome.unknown = w.history.iter().filter(|o| o.result.is_none()).count() as u64;
    w.outcome.leader_changes = w.inv.leaders_seen();
    w.outcome.lock_grants = w.locks.grants;
    w.outcome.fenced_ok = w.locks.fenced_ok;
    w.outcome.fenced_stale = w.locks.fenced_stale;
    w.outcome.key_lease_grants = w.key_leases.grants;
    w.outcome.key_lease_renewals = w.key_leases.renewals;
    w.outcome.key_lease_revokes_with_keys = w.key_leases.revokes_with_keys;
    w.outcome.commit = w
        .nodes
        .values()
        .map(|n| n.core.status().commit)
        .max()
        .unwrap_or(0);
    Ok(w.outcome)
}

/// Runs with tracing on and returns the trace (pass or fail), for determinism tests.
#[cfg(test)]
pub(crate) fn run_traced(mut cfg: SimConfig) -> Vec<String> {
    cfg.trace = true;
    let fault_end = cfg.fault_ms * MS;
    let mut w = World::new(cfg);
    while w.step() && w.now < fault_end {}
    w.trace
}

/// A replica's key space as text: its revision, its compaction revision, and every key with
/// its value and revisions (replicas that applied the same entries print the same).
fn key_space_view(sm: &StateMachine) -> String {
    let keys = sm.key_space();
    let kvs = match keys.range(&RangeRequest::every_key()) {
        Ok(r) => r
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}@{}/{}/v{}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("range failed: {e}"),
    };
    format!(
        "rev {} compacted {} [{kvs}]",
        keys.revision(),
        keys.compact_revision()
    )
}
