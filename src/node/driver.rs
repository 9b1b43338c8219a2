//! The Ready loop: the one task that owns the Raft core, the store and the state machine.

use super::apply;
use super::compactor::Compactor;
use super::error::{ClientError, Fatal, REMOVED_LINE};
use super::leases::Leases;
use super::lock_waiters::LockWaiters;
use super::pending::Pending;
use super::request::{
    Header, KeyLeaseAnswer, KeyLeaseInfo, KeyLeaseQuery, ReadTarget, ReadValue, Request,
};
use super::tick_clock::TickClock;
use super::transport::Transport;
use super::watches::{self, Publisher};
use super::{Inbox, NodeStatus};
use crate::config::NodeConfig;
use crate::raft::storage::LogStore;
use crate::raft::{
    self, ConfChangeError, Entry, HardState, LogIndex, Membership, Message, MessageBody, NodeId,
    NotLeader, Payload, Proposed, RaftCore, Ready, Role, Snapshot, SnapshotMeta, Term,
};
use crate::state_machine::{Command, Outcome, Proposal, StateMachine};
use crate::storage::{ClusterIdentity, SledStore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

/// After one input, at most this many more queued requests are taken before the Ready is
/// handled, so one flush covers a whole burst (group commit) without starving ticks.
const MAX_BATCH: usize = 256;

/// Writes and linearizable reads waiting for the core at most; beyond it new ones are
/// refused with UNAVAILABLE "node overloaded" (the inbox bounds how fast they arrive, this
/// bounds how many pile up while nothing commits, e.g. with the followers gone).
const MAX_PENDING: usize = 65_536;

/// Owns the core, the store and the state machine; see the module docs of `node`.
pub struct Driver {
    /// This node's id.
    id: NodeId,
    /// The config, for leader addresses in redirects.
    config: Arc<NodeConfig>,
    core: RaftCore,
    /// Cloned into `spawn_blocking` for each persist (clones share one sled database).
    store: SledStore,
    /// Rebuilt on every start by re-applying the committed log (invariant:
    /// `sm.applied_index() <= core commit`).
    sm: StateMachine,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Request>,
    status: watch::Sender<NodeStatus>,
    /// The tick period (= heartbeat interval).
    tick: Duration,
    /// Client waiters.
    pending: Pending,
    /// The term we lead in, while we are leader: pending writes and reads belong to it.
    leading: Option<Term>,
    /// Last `rpc_id` given to an incoming peer request.
    last_rpc_id: u64,
    /// gRPC calls waiting for the core's response to their peer request, by `rpc_id`.
    peer_waiters: HashMap<u64, oneshot::Sender<Message>>,
    /// Lease deadlines of the held locks, kept only while leader (see `node` docs, Leases).
    leases: Leases<Instant>,
    /// The Acquire requests waiting on this node: woken when their lock changes hands, and
    /// all of them after a snapshot install or a change of role or term.
    lock_waiters: Arc<LockWaiters>,
    /// A leader's snapshot that arrived and decoded, waiting for the core to accept it.
    /// Invariant: `None` between two Ready cycles (installed or dropped by `handle_ready`).
    incoming_snapshot: Option<(SnapshotMeta, StateMachine)>,
    /// Bytes of commands applied since the last snapshot (for `--snapshot-bytes`).
    bytes_since_snapshot: u64,
    /// Keeps the core's lease clock in step with real time (`tick_clock.rs`).
    clock: TickClock,
    /// When this driver started: the origin of `clock`.
    started: Instant,
    /// A snapshot being stored on the blocking pool (`snapshot.rs`).
    snapshot_task: Option<snapshot::SnapshotTask>,
    /// Size of the latest snapshot (0 without one): the next waits until a quarter of it
    /// was applied in commands (`snapshot.rs`).
    snapshot_size: u64,
    /// As leader: when to compact the key space's history (`--auto-compaction-*`).
    compactor: Compactor,
    /// The term of the last entry applied here since start (0 before any): a leader answers
    /// lease questions once it equals its term (its no-op applied, so every lease committed
    /// before it led is in its state machine and lease table).
    applied_term: Term,
    /// Where applied changes go to watchers, and what was published last (`watches.rs`).
    watch: super::WatchHub,
    watch_publisher: Publisher,
    /// Membership changes proposed here, waiting for their entry to apply: (index, term,
    /// reply).
    conf_waiters: Vec<ConfWaiter>,
    /// The peers the transport sends to, with their addresses (see `sync_peers`).
    peer_addrs: BTreeMap<NodeId, String>,
    /// The membership `peer_addrs` was computed from.
    peers_from: Option<Membership>,
    /// Members that left the membership (removed, or a change truncated away), with the
    /// last index when they left: their sender runs until that index is applied here, so a
    /// leader still sends a removed node the entries up to its removal and it learns of it.
    leaving: BTreeMap<NodeId, (String, LogIndex)>,
    /// A peer refused our call because this node was removed from the cluster.
    removed_by: Option<NodeId>,
    /// A peer knew this node's id on another data dir (`Request::DataDirReplaced`).
    replaced_by: Option<NodeId>,
    /// The members' addresses the data dir's identity recorded (see `member_address`).
    known_addrs: BTreeMap<NodeId, String>,
    /// Ticks since the last probe of the peers while this node's log says it was removed
    /// (see `probe_if_removed`).
    removed_probe_ticks: u32,
    /// The cluster id the data dir recorded.
    cluster_id: u64,
}

/// A membership change waiting for its entry (index, term) to apply.
type ConfWaiter = (
    LogIndex,
    Term,
    oneshot::Sender<Result<(Membership, Header), ClientError>>,
);

impl Driver {
    /// Opens the store as this cluster member (checking, or at first start recording, the
    /// data dir's cluster identity), loads it and rebuilds the core from it.
    ///
    /// # Errors
    /// The data dir cannot be opened (locked by another process, unreadable, corrupt), it
    /// belongs to another node or cluster than the config says, or the derived Raft
    /// configuration is invalid.
    pub fn open(
        config: Arc<NodeConfig>,
        inbox: Inbox,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, Fatal> {
        Self::open_joining(config, inbox, transport, None)
    }

    /// [`Driver::open`] for a node started with `--join`: at its first start `joined` is the
    /// identity the cluster reported (recorded in the data dir); later the data dir's own.
    ///
    /// # Errors
    /// As [`Driver::open`].
    pub fn open_joining(
        config: Arc<NodeConfig>,
        inbox: Inbox,
        transport: Arc<dyn Transport>,
        joined: Option<ClusterIdentity>,
    ) -> Result<Self, Fatal> {
        // `--peers` that differ from the members recorded at the first start: accepted below
        // only if they name the data dir's current membership.
        let mut pending_mismatch = None;
        let store = if config.join.is_some() {
            SledStore::open_joined(&config.data_dir, config.id, joined.as_ref())?
        } else {
            let identity = ClusterIdentity::new(config.id, config.members(), &config.cluster_token);
            let (store, members_differ) = SledStore::open_as_member(&config.data_dir, &identity)?;
            pending_mismatch = members_differ.map(|(m, recorded)| (m, recorded, identity));
            store
        };
        // Where the members were when this data dir joined or was created: the last resort
        // for a member whose address no configuration entry carries (the static start's).
        let (cluster_id, known_addrs) = store
            .identity()?
            .map(|i| (i.cluster_id, i.members))
            .unwrap_or_default();
        let (hard_state, log) = store.load()?;
        let snapshot = store.snapshot()?;
        let snapshot_size = snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        let auto_compaction = config.auto_compaction;
        let membership = snapshot.as_ref().and_then(|s| s.membership.clone());
        // Whether the data dir itself says who the members are (a snapshot's membership or a
        // configuration entry); otherwise the core's membership is the flags' own.
        let membership_recorded = membership.is_some()
            || log
                .iter()
                .any(|e| matches!(e.payload, Payload::ConfChange(_)));
        let (snapshot_meta, sm) = match snapshot {
            None => (SnapshotMeta::default(), StateMachine::new()),
            Some(snap) => {
                let sm = StateMachine::restore(&snap.data, Default::default()).map_err(|e| {
                    Fatal::BadSnapshot {
                        dir: config.data_dir.clone(),
                        index: snap.meta.index,
                        cause: e.to_string(),
                    }
                })?;
                (snap.meta, sm)
            }
        };
        let mut rc = raft::Config::new(config.id, config.peer_ids());
        rc.election_ticks = config.election_ticks();
        rc.heartbeat_ticks = 1;
        rc.seed = start_seed(config.id);
        rc.lease_reads = config.read_mode == crate::config::ReadMode::Lease;
        // A joining node knows no members (and never campaigns) until the leader's log or
        // snapshot tells it the membership; on a restart its log does at once.
        rc.joining = config.join.is_some();
        info!(
            node_id = config.id,
            term = hard_state.term,
            commit = hard_state.commit,
            snapshot_index = snapshot_meta.index,
            last_index = log.last().map_or(snapshot_meta.index, |e| e.index),
            data_dir = %config.data_dir.display(),
            "opened node state"
        );
        // The membership is the last configuration entry of the log, else the snapshot's.
        let core =
            RaftCore::restore_with_membership(rc, hard_state, snapshot_meta, membership, log)?;
        if let Some((mismatch, recorded, flags)) = pending_mismatch {
            if !membership_recorded
                || !flags_name_membership(&flags.members, &recorded.members, core.membership())
            {
                return Err(Fatal::Identity(mismatch));
            }
            info!(
                members = ?flags.members.keys().collect::<Vec<_>>(),
                "--peers differ from the members recorded at the first start but name the data dir's current membership"
            );
        }
        // What `PeerSenders::spawn` started senders for.
        let config_peers: BTreeMap<NodeId, String> = config
            .peers
            .iter()
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        let revision = sm.revision();
        let mut watch_publisher = Publisher::new(revision);
        watch_publisher.set_drop_snapshot_catch_up(drop_snapshot_watch_catch_up());
        Ok(Driver {
            id: config.id,
            tick: config.heartbeat_interval,
            config,
            core,
            store,
            sm,
            transport,
            inbox: inbox.rx,
            status: inbox.status,
            pending: Pending::default(),
            leading: None,
            last_rpc_id: 0,
            peer_waiters: HashMap::new(),
            leases: Leases::default(),
            lock_waiters: inbox.lock_waiters,
            incoming_snapshot: None,
            bytes_since_snapshot: 0,
            clock: TickClock::default(),
            started: Instant::now(),
            snapshot_task: None,
            snapshot_size,
            compactor: Compactor::new(auto_compaction),
            applied_term: 0,
            watch: inbox.watch,
            watch_publisher,
            conf_waiters: Vec::new(),
            peer_addrs: config_peers,
            peers_from: None,
            leaving: BTreeMap::new(),
            removed_by: None,
            replaced_by: None,
            known_addrs,
            removed_probe_ticks: 0,
            cluster_id,
        })
    }

    /// Runs the loop until `shutdown` is cancelled (Ok) or storage fails (Err).
    ///
    /// # Errors
    /// [`Fatal`]: a storage write or flush failed; pending requests were failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Fatal> {
        let span = tracing::info_span!("node", node_id = self.id);
        self.run_loop(shutdown).instrument(span).await
    }

    async fn run_loop(mut self, shutdown: CancellationToken) -> Result<(), Fatal> {
        let mut ticker = tokio::time::interval(self.tick);
        // Skip, not Burst: after a stall (SIGSTOP) catch-up ticks back to back would start an
        // election before the leader's queued AppendEntries are read (STYLE.md §12).
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last_tick = Instant::now();
        self.sync_peers();
        self.publish_status();
        loop {
            let mut failed = None;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    info!("shutting down");
                    self.reject_everything(&ClientError::ShuttingDown);
                    // The store outlives no task that writes to it.
                    return self.drain_snapshot().await;
                }
                done = snapshot::snapshot_done(&mut self.snapshot_task) => {
                    failed = self.finish_snapshot(done).err();
                }
                req = self.inbox.recv() => match req {
                    Some(req) => self.handle_request(req),
                    None => return Ok(()),
                },
                _ = ticker.tick() => {
                    self.on_tick();
                    last_tick = Instant::now();
                }
            }
            // Group commit: take what else is already queued, then one Ready for all of it.
            for _ in 0..MAX_BATCH {
                match self.inbox.try_recv() {
                    Ok(req) => self.handle_request(req),
                    Err(_) => break,
                }
            }
            // The select prefers the inbox; under constant load the tick branch would never
            // win, the leader would stop sending heartbeats and followers would elect.
            if last_tick.elapsed() >= self.tick {
                self.on_tick();
                last_tick = Instant::now();
                ticker.reset();
            }
            let handled = match failed {
                Some(err) => Err(err),
                None => self.handle_ready().await,
            };
            if let Err(err) = handled {
                // The one line this failure logs; main prints the error once more and exits.
                // Never retried: after a failed write or fsync the disk state is unknown.
                error!(
                    data_dir = %self.config.data_dir.display(),
                    error = %err,
                    "storage failed, stopping the node"
                );
                self.reject_everything(&ClientError::StorageFailed(err.to_string()));
                // Not dropped: closing sled would flush again and hang (see `abandon`).
                self.store.abandon();
                return Err(err);
            }
            self.sync_peers();
            if let Some(err) = self.check_removed() {
                self.reject_everything(&ClientError::ShuttingDown);
                self.drain_snapshot().await?;
                return Err(err);
            }
            // The core answers a peer request within the Ready cycle of its input; a request
            // still waiting now was ignored by the core, and its caller gets an error.
            if !self.peer_waiters.is_empty() {
                debug!(
                    len = self.peer_waiters.len(),
                    "peer requests the core did not answer"
                );
                self.peer_waiters.clear();
            }
            self.publish_status();
        }
    }

    fn on_tick(&mut self) {
        inject_test_panic();
        self.catch_up_clock();
        self.core.tick();
        self.clock.ticked();
        self.pending.prune_closed();
        self.sync_leases();
        self.maybe_expire_leases();
        self.maybe_compact();
        self.probe_if_removed();
    }

    /// A node whose log holds its own removal, but which has not applied it (the commit that
    /// would tell it never came: the leader had stopped sending, or it restarted on an old
    /// data dir), never campaigns and would wait forever. Once per election timeout it asks
    /// its peers with a PreVote that cannot be granted (empty log) and changes no receiver's
    /// state; a peer that removed it refuses the call as from a removed member, and this
    /// node stops (`RemovedByPeer`).
    fn probe_if_removed(&mut self) {
        if !self.core.membership().removed.contains(&self.id) {
            self.removed_probe_ticks = 0;
            return;
        }
        self.removed_probe_ticks += 1;
        if self.removed_probe_ticks < self.config.election_ticks() {
            return;
        }
        self.removed_probe_ticks = 0;
        let term = self.core.status().term + 1;
        for &to in self.peer_addrs.keys() {
            self.transport.send(Message {
                from: self.id,
                to,
                term,
                rpc_id: 0,
                body: MessageBody::PreVote {
                    last_log_index: 0,
                    last_log_term: 0,
                },
            });
        }
    }

    /// As leader: proposes the compaction `--auto-compaction-*` calls for, if one is due.
    fn maybe_compact(&mut self) {
        let leading = self.core.status().role == Role::Leader;
        let keys = self.sm.key_space();
        let (revision, compacted) = (keys.revision(), keys.compact_revision());
        let Some(target) = self
            .compactor
            .tick(Instant::now(), leading, revision, compacted)
        else {
            return;
        };
        let data = Proposal {
            session: None,
            command: Command::Compact { revision: target },
        }
        .encode();
        match self.core.propose(data) {
            Ok(_) => info!(
                revision = target,
                "proposed automatic compaction to revision {target}"
            ),
            Err(_) => self.compactor.refused(),
        }
    }

    /// Feeds one request to the core (or answers it at once).
    fn handle_request(&mut self, req: Request) {
        let req = match req {
            Request::Propose { reply, .. } if self.pending.len() >= MAX_PENDING => {
                let _ = reply.send(Err(ClientError::Overloaded));
                return;
            }
            Request::Read {
                linearizable: true,
                reply,
                ..
            } if self.pending.len() >= MAX_PENDING => {
                let _ = reply.send(Err(ClientError::Overloaded));
                return;
            }
            req => req,
        };
        match req {
            Request::Propose { data, reply } => match self.core.propose(data) {
                Ok(Proposed { index, term }) => {
                    self.leading = Some(term);
                    self.pending.add_write(index, term, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(self.refused(e)));
                }
            },
            Request::Read {
                target,
                linearizable: false,
                reply,
            } => {
                let header = self.header(self.sm.applied_index());
                let _ = reply.send(Ok((self.read_value(&target), header)));
            }
            Request::Read {
                target,
                linearizable: true,
                reply,
            } => {
                let target = match target {
                    ReadTarget::LeaseKeepAlive(lease) => match self.renew_key_lease(lease) {
                        // Renewed: answered once a quorum confirms this node still leads.
                        Ok(ttl @ 1..) => ReadTarget::LeaseRenewed(ttl),
                        Ok(ttl) => {
                            let header = self.header(self.sm.applied_index());
                            let _ = reply.send(Ok((ReadValue::LeaseKeptAlive(ttl), header)));
                            return;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    },
                    other => other,
                };
                let id = self.pending.next_read_id();
                // A lease is measured in ticks: count the ones a stall made us miss first.
                self.catch_up_clock();
                match self.core.read_index(id) {
                    Ok(()) => {
                        self.leading = Some(self.core.status().term);
                        self.pending.add_read(id, target, reply);
                    }
                    Err(NotLeader { leader }) => {
                        let _ = reply.send(Err(self.not_leader(leader)));
                    }
                }
            }
            Request::LeaderLocalLock { name, reply } => {
                let status = self.core.status();
                let answer = if status.role == Role::Leader {
                    let header = self.header(self.sm.applied_index());
                    Ok((self.sm.lock(&name).cloned(), header))
                } else {
                    Err(self.not_leader(status.leader))
                };
                let _ = reply.send(answer);
            }
            Request::Peer { mut msg, reply } => {
                let mut refused = false;
                if let MessageBody::InstallSnapshot { snapshot } = &msg.body {
                    // Decode before the core sees it: a snapshot that is not a state machine
                    // never touches the log or the store. The core still answers it, after
                    // its term check (`step_refused`).
                    match StateMachine::restore(&snapshot.data, Default::default()) {
                        Ok(sm) => self.incoming_snapshot = Some((snapshot.meta, sm)),
                        Err(e) => {
                            warn!(from = msg.from, error = %e, "refusing an undecodable snapshot");
                            refused = true;
                        }
                    }
                }
                self.last_rpc_id += 1;
                msg.rpc_id = self.last_rpc_id;
                self.peer_waiters.insert(msg.rpc_id, reply);
                if refused {
                    self.core.step_refused(msg);
                } else {
                    self.core.step(msg);
                }
            }
            Request::PeerReply { mut msg } => {
                msg.rpc_id = 0;
                self.core.step(msg);
            }
            Request::TransferLeadership { target, reply } => {
                let _ = reply.send(self.transfer_leadership(target));
            }
            Request::KeyLease {
                query: KeyLeaseQuery::KeepAlive(lease),
                reply,
            } => {
                // Answered once a quorum confirmed this node still leads: through the
                // linearizable read path (see `ReadTarget::LeaseKeepAlive`).
                let (read_reply, read) = oneshot::channel();
                self.handle_request(Request::Read {
                    target: ReadTarget::LeaseKeepAlive(lease),
                    linearizable: true,
                    reply: read_reply,
                });
                tokio::spawn(async move {
                    let answer = match read.await {
                        Ok(Ok((ReadValue::LeaseKeptAlive(ttl), h))) => {
                            Ok((KeyLeaseAnswer::KeptAlive { ttl }, h))
                        }
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(_)) | Err(_) => Err(ClientError::ShuttingDown),
                    };
                    let _ = reply.send(answer);
                });
            }
            Request::KeyLease { query, reply } => {
                let _ = reply.send(self.key_lease(query));
            }
            Request::HandOver { reply } => {
                let _ = reply.send(self.hand_over());
            }
            Request::WatchHistory {
                from,
                key,
                range_end,
                prev_kv,
                reply,
            } => {
                let keys = self.sm.key_space();
                debug_assert_eq!(
                    keys.revision(),
                    self.watch_publisher.last(),
                    "invariant: between Readies everything applied is published"
                );
                let _ = reply.send(watches::history(keys, from, &key, &range_end, prev_kv));
            }
            Request::ConfChange {
                change,
                force,
                reply,
            } => match self.core.propose_conf_change(change, force) {
                Ok(Proposed { index, term }) => {
                    self.leading = Some(term);
                    self.conf_waiters.push((index, term, reply));
                }
                Err(ConfChangeError::Propose(e)) => {
                    let _ = reply.send(Err(self.refused(e)));
                }
                Err(e) => {
                    let _ = reply.send(Err(ClientError::Membership(e)));
                }
            },
            Request::RemovedByPeer { peer } => {
                self.removed_by.get_or_insert(peer);
            }
            Request::DataDirReplaced { peer } => {
                self.replaced_by.get_or_insert(peer);
            }
        }
    }

    /// Keeps the transport's peer set in step with the membership: every member (at the
    /// address its configuration entries gave it, else the one `--peers` gave), plus the
    /// members that left until the change that made them leave is applied here.
    fn sync_peers(&mut self) {
        let membership = self.core.membership();
        if self.peers_from.as_ref() == Some(membership) && self.leaving.is_empty() {
            return;
        }
        let mut wanted = BTreeMap::new();
        for id in membership.members().filter(|&id| id != self.id) {
            if let Some(addr) = self.member_address(id) {
                wanted.insert(id, addr);
            }
        }
        let last_index = self.core.status().last_index;
        for (id, addr) in &self.peer_addrs {
            if !wanted.contains_key(id) && !self.leaving.contains_key(id) {
                self.leaving.insert(*id, (addr.clone(), last_index));
            }
        }
        let applied = self.sm.applied_index();
        // As leader, also while the core still replicates to it (it waits for the node's
        // acknowledgement of its removal, then sends it a last heartbeat).
        let tracked = self.core.status().matched;
        self.leaving.retain(|id, (_, until)| {
            (*until > applied || tracked.contains_key(id)) && !wanted.contains_key(id)
        });
        let mut all = wanted;
        for (id, (addr, _)) in &self.leaving {
            all.entry(*id).or_insert_with(|| addr.clone());
        }
        self.peers_from = Some(membership.clone());
        if all != self.peer_addrs {
            self.transport.set_peers(&all);
            self.peer_addrs = all;
        }
    }

    /// The store, for what must read this data dir beside the driver (the peer service's
    /// instance ids, `rpc/instances.rs`).
    pub fn store_handle(&self) -> SledStore {
        self.store.clone()
    }

    /// [`Fatal::Removed`] if this node applied its own removal or a peer refused it as
    /// removed, after logging the one line that says so.
    fn check_removed(&self) -> Option<Fatal> {
        if let Some(peer) = self.replaced_by {
            let fatal = Fatal::DataDirReplaced { id: self.id, peer };
            error!("{fatal}");
            return Some(fatal);
        }
        let applied_own_removal = self.core.status().removed;
        if !applied_own_removal && self.removed_by.is_none() {
            return None;
        }
        error!(peer = ?self.removed_by, "{REMOVED_LINE}");
        Some(Fatal::Removed)
    }

    /// The peer address of member `id`: from the membership, else from `--peers`, else from
    /// the identity the data dir recorded (a node that joined learns the static members'
    /// addresses there: their configuration entries carry none); this node's own client
    /// address for itself.
    fn member_address(&self, id: NodeId) -> Option<String> {
        if id == self.id {
            return self.config.address_of(id);
        }
        self.core
            .membership()
            .address(id)
            .map(str::to_string)
            .or_else(|| self.config.address_of(id))
            .or_else(|| self.known_addrs.get(&id).cloned())
    }

    /// Publishes to watchers what the applies of this Ready changed (after they applied:
    /// a watcher never sees an event before its entry is committed and applied here).
    fn publish_watch(&mut self) {
        let (listening, prev_kv) = self.watch.wanted();
        if let Some(batch) = self
            .watch_publisher
            .publish(self.sm.key_space(), listening, prev_kv)
        {
            self.watch.send(batch);
        }
    }

    /// Handles Ready batches until the core has none, in the order ARCHITECTURE.md mandates.
    async fn handle_ready(&mut self) -> Result<(), Fatal> {
        while self.core.has_ready() {
            let ready = self.core.ready();
            let must_persist = ready.must_persist();
            let Ready {
                soft_state: _,
                snapshot,
                hard_state,
                entries,
                messages,
                persisted_messages,
                committed_entries,
                read_states,
            } = ready;
            // (1) Messages that depend on nothing unpersisted (a leader's appends may overlap
            //     its own fsync).
            self.send(messages);
            // (2) Persist hard state and entries, one flush for the batch; errors are fatal:
            //     `?` returns before (3) and (4), so no ack or vote that depends on this
            //     batch is sent and nothing it commits is applied or answered.
            if let Some(snapshot) = snapshot {
                self.install_snapshot(snapshot).await?;
            }
            if must_persist {
                self.persist(hard_state, entries).await?;
            }
            // (3) Vote grants and append acks: only now that what they promise is durable.
            self.send(persisted_messages);
            // (4) Apply committed entries, answer their writers; serve reads now applied.
            for rs in read_states {
                self.pending.confirm_read(rs);
            }
            // Lease bookkeeping first: a leader of a new term starts every lease from the
            // state applied so far, then the entries below restart the ones they touch.
            self.sync_leases();
            self.apply(committed_entries);
            self.publish_watch();
            self.serve_reads();
            self.check_leadership();
            // (5) Tell the core the batch is handled.
            self.core.advance();
            self.maybe_snapshot();
        }
        // A snapshot decoded on arrival that no Ready carried was refused by the core (stale,
        // already covered, or from the wrong term): do not hold its state machine.
        self.incoming_snapshot = None;
        Ok(())
    }

    /// A leader's snapshot the core accepted: store it durably, then replace the state
    /// machine with it (decoded when it arrived).
    async fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), Fatal> {
        let meta = snapshot.meta;
        let sm = match self.incoming_snapshot.take() {
            Some((m, sm)) if m == meta => sm,
            // Not the one decoded on arrival (cannot happen: the core accepts only what it
            // was just given); decode again rather than trust it.
            _ => StateMachine::restore(&snapshot.data, Default::default()).map_err(|e| {
                Fatal::BadSnapshot {
                    dir: self.config.data_dir.clone(),
                    index: meta.index,
                    cause: e.to_string(),
                }
            })?,
        };
        // Ours (older: the core accepts only snapshots past its commit) must not race it.
        self.drain_snapshot().await?;
        let size = snapshot.data.len() as u64;
        let mut store = self.store.clone();
        self.blocking(move || store.install_snapshot(&snapshot))
            .await?;
        self.sm = sm;
        self.watch_publisher.snapshot_installed(self.sm.key_space());
        // Every lock may have changed hands.
        self.lock_waiters.changed_all();
        self.bytes_since_snapshot = 0;
        self.snapshot_size = size;
        info!(
            index = meta.index,
            term = meta.term,
            keys = self.sm.len(),
            "installed the leader's snapshot"
        );
        Ok(())
    }

    /// Runs a storage call on the blocking pool and waits for it.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, crate::storage::StorageError> + Send + 'static,
    ) -> Result<T, Fatal> {
        let done = tokio::task::spawn_blocking(f).await;
        self.storage_task_result(done)
    }

    /// The result of a storage call run on the blocking pool: its own error, or the task's
    /// failure (a panic or a cancellation), both fatal.
    fn storage_task_result<T>(
        &self,
        done: Result<Result<T, crate::storage::StorageError>, tokio::task::JoinError>,
    ) -> Result<T, Fatal> {
        done.map_err(|e| Fatal::StorageTask {
            dir: self.config.data_dir.clone(),
            cause: e.to_string(),
        })?
        .map_err(Fatal::from)
    }

    /// Routes responses to waiting peer calls and everything else to the transport.
    fn send(&mut self, messages: Vec<Message>) {
        for mut msg in messages {
            if let MessageBody::InstallSnapshot { snapshot } = &mut msg.body {
                // The core names the snapshot; its bytes live in the store.
                match self.store.snapshot() {
                    Ok(Some(stored)) => *snapshot = stored,
                    Ok(None) => continue,
                    Err(e) => {
                        // Reported, not fatal here: the same file is read at the next start.
                        error!(error = %e, "cannot read the snapshot to send to node {}", msg.to);
                        continue;
                    }
                }
            }
            if msg.rpc_id == 0 {
                self.transport.send(msg);
            } else if let Some(waiter) = self.peer_waiters.remove(&msg.rpc_id) {
                let _ = waiter.send(msg);
            } else {
                debug!(
                    rpc_id = msg.rpc_id,
                    kind = msg.body.kind(),
                    "response to a gone peer call dropped"
                );
            }
        }
    }

    /// Writes and flushes one batch on the blocking pool and waits for it.
    async fn persist(
        &mut self,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    ) -> Result<(), Fatal> {
        let mut store = self.store.clone();
        self.blocking(move || store.persist(hard_state.as_ref(), &entries))
            .await
    }

    /// Applies committed entries in order and answers the writers waiting on them
    /// (`node::apply`, the code the simulator runs too).
    fn apply(&mut self, committed: Vec<Entry>) {
        for entry in committed {
            if let Payload::Command(data) = &entry.payload {
                self.bytes_since_snapshot += data.len() as u64;
            }
            let applied =
                apply::apply_entry(&mut self.sm, &mut self.leases, &entry, Instant::now());
            self.applied_term = entry.term;
            self.after_applied(entry.index, &applied);
            if let Payload::ConfChange(conf) = &entry.payload {
                self.answer_conf_change(&entry, &conf.membership);
            }
            let Some((term, reply)) = self.pending.take_write(entry.index) else {
                continue;
            };
            let answer = match applied.answer_for(term) {
                apply::Answer::Applied(outcome) => Ok((
                    outcome,
                    Header {
                        node_id: self.id,
                        term: entry.term,
                        index: entry.index,
                        // A retry answered from its session gets the revision its write
                        // left, not the current one.
                        revision: self.sm.answer_revision(),
                    },
                )),
                apply::Answer::Rejected(err) => Err(ClientError::Apply(err)),
                apply::Answer::LeadershipLost => Err(ClientError::LeadershipLost),
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers the membership change waiting for `entry`, if any: applied as proposed when the
    /// term matches, else another leader's entry took its index (leadership lost).
    fn answer_conf_change(&mut self, entry: &Entry, membership: &Membership) {
        let Some(pos) = self
            .conf_waiters
            .iter()
            .position(|(index, _, _)| *index == entry.index)
        else {
            return;
        };
        let (_, term, reply) = self.conf_waiters.swap_remove(pos);
        let answer = if term == entry.term {
            Ok((
                membership.clone(),
                Header {
                    node_id: self.id,
                    term: entry.term,
                    index: entry.index,
                    revision: self.sm.revision(),
                },
            ))
        } else {
            Err(ClientError::LeadershipLost)
        };
        let _ = reply.send(answer);
    }

    /// After an entry applied: logs an error or a lease expiry, and wakes the Acquires
    /// waiting on a lock that changed hands.
    fn after_applied(&self, index: LogIndex, applied: &apply::Applied) {
        if let Some(Err(err)) = &applied.result {
            warn!(index, error = %err, "command applied to an error");
        }
        if let Some(Proposal {
            command: Command::Expire { name, token },
            ..
        }) = &applied.proposal
        {
            if matches!(applied.result, Some(Ok(Outcome::Expired { expired: true }))) {
                info!(lock = %name, token, "lease expired: lock {name} token {token}");
            }
        }
        if let Some(name) = applied.changed_lock(index) {
            self.lock_waiters.changed(name);
        }
    }

    /// Answers the confirmed reads whose index is applied.
    fn serve_reads(&mut self) {
        let applied = self.sm.applied_index();
        let reads = self.pending.servable_reads(applied);
        if reads.is_empty() {
            return;
        }
        let header = self.header(applied);
        for (target, reply) in reads {
            let _ = reply.send(Ok((self.read_value(&target), header)));
        }
    }

    /// Reads a key or a lock from the local state.
    fn read_value(&self, target: &ReadTarget) -> ReadValue {
        match target {
            ReadTarget::Key(key) => {
                ReadValue::Key(self.sm.get_bytes(key.as_bytes()).map(<[u8]>::to_vec))
            }
            ReadTarget::Lock(name) => ReadValue::Lock(self.sm.lock(name).cloned()),
            ReadTarget::Range(req) => ReadValue::Range(self.sm.range(req)),
            ReadTarget::LeaseRenewed(ttl) => ReadValue::LeaseKeptAlive(*ttl),
            // Renewed only through the linearizable path (`renew_key_lease`); never read.
            ReadTarget::LeaseKeepAlive(_) => ReadValue::LeaseKeptAlive(0),
        }
    }

    /// Credits the core's lease clock with the tick periods a stall made it miss.
    fn catch_up_clock(&mut self) {
        let missed = self.clock.catch_up(self.started.elapsed(), self.tick);
        if missed > 0 {
            self.core.advance_clock(missed);
        }
    }

    /// Keeps `leases` in step with leadership: cleared when we do not lead; on leading a new
    /// term, every held lock gets a full TTL from now (a lease never ends early because the
    /// leader changed; it may last longer).
    fn sync_leases(&mut self) {
        let status = self.core.status();
        let leading = (status.role == Role::Leader).then_some(status.term);
        if let Some(len @ 1..) = self.leases.sync(leading, &self.sm, Instant::now()) {
            info!(
                term = status.term,
                len, "restarted every lease with its full ttl"
            );
        }
    }

    /// As leader: proposes, once each, the expiry of every lease whose deadline has passed.
    /// A lease is marked only once its proposal is accepted: one refused during a leadership
    /// transfer stays due and is proposed at the next tick (issue 11, defect 3).
    fn maybe_expire_leases(&mut self) {
        let core = &mut self.core;
        // Refused: leadership is gone (the next sync clears the table) or being handed over.
        let proposed = self
            .leases
            .propose_due(Instant::now(), |data| core.propose(data).is_ok());
        for (lock, token) in proposed {
            debug!(lock = %lock, token, "proposed lease expiry");
        }
    }

    /// Fails writes and reads that belong to a leadership we no longer hold: never
    /// acknowledge them, they may or may not be applied.
    fn check_leadership(&mut self) {
        let Some(term) = self.leading else {
            return;
        };
        let status = self.core.status();
        if status.role == Role::Leader && status.term == term {
            return;
        }
        self.leading = None;
        if self.pending.has_leader_bound() {
            info!(
                term,
                "failing pending requests: leadership lost before they completed"
            );
        }
        self.pending.fail_leader_bound(&ClientError::LeadershipLost);
        for (_, _, reply) in self.conf_waiters.drain(..) {
            let _ = reply.send(Err(ClientError::LeadershipLost));
        }
    }

    /// Restarts the TTL of lease on keys `id` on this leader's clock; returns the TTL (0: no
    /// such lease, or its revoke was already proposed). The caller answers only once a
    /// quorum confirmed this node still leads (`ReadTarget::LeaseKeepAlive`).
    fn renew_key_lease(&mut self, id: i64) -> Result<i64, ClientError> {
        self.check_lease_leader()?;
        Ok(self.leases.renew(id, Instant::now()).unwrap_or(0))
    }

    /// Whether this node may answer questions about leases on keys: it leads and applied an
    /// entry of its own term; keeps the lease table in step with that leadership.
    fn check_lease_leader(&mut self) -> Result<(), ClientError> {
        let status = self.core.status();
        if status.role != Role::Leader {
            return Err(self.not_leader(status.leader));
        }
        if self.applied_term != status.term {
            // Leases granted before this term may not be applied here yet: no answer
            // ("lease not found") until they are. The client retries.
            return Err(ClientError::NoLeader);
        }
        self.sync_leases();
        Ok(())
    }

    /// A leader-local question about leases on keys (see [`Request::KeyLease`]).
    fn key_lease(&mut self, query: KeyLeaseQuery) -> Result<(KeyLeaseAnswer, Header), ClientError> {
        self.check_lease_leader()?;
        let now = Instant::now();
        let answer = match query {
            // Handled by `handle_request`, which answers it only once leadership is
            // confirmed; renewing here would skip that.
            KeyLeaseQuery::KeepAlive(_) => {
                return Err(ClientError::Invalid(
                    "invariant: a keep-alive goes through the confirmed read path".to_string(),
                ))
            }
            KeyLeaseQuery::TimeToLive { id, keys } => {
                KeyLeaseAnswer::TimeToLive(self.sm.key_leases().ttl(id).map(|granted_ttl| {
                    let remaining = self.leases.remaining(id, now).unwrap_or_default();
                    KeyLeaseInfo {
                        id,
                        granted_ttl,
                        remaining_ttl: i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
                        keys: if keys {
                            self.sm
                                .key_space()
                                .lease_keys(id)
                                .map(<[u8]>::to_vec)
                                .collect()
                        } else {
                            Vec::new()
                        },
                    }
                }))
            }
            KeyLeaseQuery::List => {
                KeyLeaseAnswer::List(self.sm.key_leases().iter().map(|(id, _)| id).collect())
            }
        };
        Ok((answer, self.header(self.sm.applied_index())))
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClientError {
        match leader {
            Some(id) if id != self.id => ClientError::NotLeader {
                id,
                addr: self.member_address(id).unwrap_or_default(),
            },
            _ => ClientError::NoLeader,
        }
    }

    fn header(&self, index: LogIndex) -> Header {
        Header {
            node_id: self.id,
            term: self.core.status().term,
            index,
            revision: self.sm.revision(),
        }
    }

    /// Publishes the core's state as of now (one moment: all fields together). After a change
    /// of role or term, wakes every waiting Acquire (once the new status is visible), so each
    /// checks whether this node still leads.
    fn publish_status(&self) {
        let s = self.core.status();
        let next = NodeStatus {
            id: self.id,
            role: s.role,
            term: s.term,
            leader: s.leader,
            commit: s.commit,
            applied: self.sm.applied_index(),
            last_index: s.last_index,
            revision: self.sm.revision(),
            compact_revision: self.sm.key_space().compact_revision(),
            state_bytes: self.snapshot_size + self.bytes_since_snapshot,
            membership: s.membership,
            matched: s.matched,
            cluster_id: self.cluster_id,
            committed_removals: s.committed_removals,
        };
        let mut new_role_or_term = false;
        self.status.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                new_role_or_term = (cur.role, cur.term) != (next.role, next.term);
                *cur = next;
                true
            }
        });
        if new_role_or_term {
            self.lock_waiters.changed_all();
        }
    }

    /// Fails every waiter and every request still queued, and refuses new ones.
    fn reject_everything(&mut self, err: &ClientError) {
        self.pending.fail_all(err);
        for (_, _, reply) in self.conf_waiters.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        self.peer_waiters.clear();
        self.inbox.close();
        while let Ok(req) = self.inbox.try_recv() {
            match req {
                Request::Propose { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::Read { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::TransferLeadership { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::LeaderLocalLock { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::KeyLease { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::ConfChange { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Request::Peer { .. }
                | Request::PeerReply { .. }
                | Request::HandOver { .. }
                | Request::WatchHistory { .. }
                | Request::RemovedByPeer { .. }
                | Request::DataDirReplaced { .. } => {}
            }
        }
    }
}

mod handover;
mod snapshot;

/// Whether the members the flags give (ids and addresses) are the data dir's current
/// membership: the same ids, each at the address the membership gives it, else at the one
/// recorded at the first start. A data dir of another cluster (other addresses) fails this.
fn flags_name_membership(
    flags: &BTreeMap<NodeId, String>,
    recorded: &BTreeMap<NodeId, String>,
    membership: &Membership,
) -> bool {
    let ids: Vec<NodeId> = membership.members().collect();
    ids.len() == flags.len()
        && ids.iter().all(|id| {
            let known = membership
                .address(*id)
                .or(recorded.get(id).map(String::as_str));
            flags.get(id).map(String::as_str) == known
        })
}

/// A seed that differs per node and per start, so two nodes (or two runs of one node) do
/// not draw the same election timeouts. The driver may read the clock; the core may not.
fn start_seed(id: NodeId) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos
}

#[cfg(test)]
mod tests;

/// Mutation switch for tests, never set in production: with
/// `KVSTORE_TEST_DROP_SNAPSHOT_WATCH_CATCH_UP=1` in its environment at start, watchers lose
/// the events an installed snapshot brought (`watches::Publisher::set_drop_snapshot_catch_up`).
fn drop_snapshot_watch_catch_up() -> bool {
    std::env::var("KVSTORE_TEST_DROP_SNAPSHOT_WATCH_CATCH_UP").is_ok_and(|v| v == "1")
}

/// Test-only fault injection, never set in production: with `KVSTORE_TEST_PANIC_AFTER_TICKS=N`
/// in its environment at start, the driver panics at its Nth tick (tests/cluster.rs checks
/// that a panicking driver stops the process).
fn inject_test_panic() {
    const VAR: &str = "KVSTORE_TEST_PANIC_AFTER_TICKS";
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let after = AFTER.get_or_init(|| std::env::var(VAR).ok()?.parse().ok());
    if let Some(after) = *after {
        let ticks = TICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        assert!(ticks < after, "injected by {VAR}={after}");
    }
}
