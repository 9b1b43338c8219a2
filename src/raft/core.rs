//! [`RaftCore`]: one node's consensus state machine (Raft Figure 2).
//!
//! Every peer message, request or reply, enters through [`RaftCore::step`] (or
//! [`RaftCore::step_refused`]), which runs [`RaftCore::check_term`] first: this is the only
//! place that compares a message's term with ours. Role changes go through `become_follower`
//! / `become_candidate` / `become_leader`, which all start with `reset_for_term`, the one
//! place that clears term-dependent state. Membership changes (who counts, who is replicated
//! to, who is refused) are in `core/membership.rs`.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use self::warn_limit::Warning;
use super::config::{Config, ConfigError};
use super::log::RaftLog;
use super::membership::Membership;
use super::message::{Message, MessageBody};
use super::progress::{Progress, ProgressState};
use super::ready::{ReadState, Ready};
use super::types::{
    Entry, HardState, LogIndex, NodeId, Payload, Role, Snapshot, SnapshotMeta, SoftState, Status,
    Term,
};

/// `warn!` for what a peer can repeat with every message it sends, through the core's rate
/// limit (`warn_limit.rs`): logged with the node id and the count of occurrences suppressed
/// since the last one logged, or only counted.
macro_rules! warn_limited {
    ($core:ident, $kind:expr, $($rest:tt)*) => {
        if let Some(suppressed) = $core.warnings.allow($kind) {
            warn!(node = $core.cfg.id, suppressed, $($rest)*);
        }
    };
}

/// The node is not the leader (or cannot serve the request as leader right now).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not leader")]
pub struct NotLeader {
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
}

/// Why a proposal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// This node leads but is handing leadership over to `target` (Raft thesis §3.10): it
    /// takes no new entries until the transfer completes or is abandoned. Retry shortly.
    #[error("leadership transfer to node {target} in progress")]
    TransferInProgress {
        /// The node leadership is being transferred to.
        target: NodeId,
    },
}

impl ProposeError {
    /// The leader to retry at, if known (this node itself while a transfer is in progress).
    pub fn leader(&self) -> Option<NodeId> {
        match self {
            ProposeError::NotLeader(e) => e.leader,
            ProposeError::TransferInProgress { .. } => None,
        }
    }
}

/// Where a proposal went in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// Log index of the new entry.
    pub index: LogIndex,
    /// Term of the new entry: if a different entry is applied at `index`, the proposal was lost.
    pub term: Term,
}

/// Deliberate protocol bugs, switched on only by the simulator's mutation mode to prove that
/// the simulator and its checkers catch real violations. `None` in production.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    /// The correct protocol.
    #[default]
    None,
    /// `check_term` does nothing: higher terms are not adopted, lower terms not rejected.
    NoCheckTerm,
    /// Vote replies from earlier terms are counted (and never rejected as stale).
    CountStaleVotes,
    /// Figure 8 ignored: entries of earlier terms commit by counting replicas.
    CommitOldTerms,
    /// Vote grants and append acks leave before what they promise is durable.
    AckBeforePersist,
    /// A follower installs a leader's snapshot even when it already has everything the
    /// snapshot covers (a late or duplicated InstallSnapshot rolls its state back).
    InstallStaleSnapshot,
    /// The lease clock counts only the ticks the node handled: `advance_clock` (the time a
    /// stalled process missed) is ignored, so a leader paused past its lease believes it still
    /// holds it when it resumes (a lease kept in timer ticks instead of a monotonic clock).
    LeaseIgnoresStalls,
    /// Appends carry the ReadIndex round that is still open (not yet broadcast), so an
    /// acknowledgement of an append sent before a read arrived can confirm that read.
    StampOpenReadRound,
    /// AppendEntries are capped by entry count only, not by bytes: a follower far behind is
    /// sent batches of large entries over the transport's message-size limit (issue 11).
    NoByteCap,
    /// A second membership change is accepted while the first is not yet applied (issue 15).
    ConcurrentConfChanges,
    /// A membership change is accepted before the leader committed an entry of its own term
    /// (the single-server change bug found on the raft-dev list; issue 15).
    ConfChangeBeforeTermCommit,
    /// A candidate counts the votes of learners (and of any other non-voter; issue 15).
    CountLearnerVotes,
    /// A sole voter leads as soon as it votes for itself, before its new term and vote are
    /// durable (issue 15: with learners and leaving members, others hear that term).
    LeadBeforeVotePersisted,
    /// A node that an uncommitted configuration entry excludes never campaigns, though it is a
    /// voter of the committed membership (issue 15: with the longest log, no one can lead).
    ExcludedNeverCampaigns,
    /// Messages are refused from ids the membership does not know and from members whose
    /// removal is not committed yet (issue 15: a follower refuses a legitimate leader).
    RefuseUnknownAndUncommitted,
}

/// How many times longer than an append window a snapshot may go unanswered before the
/// leader sends it again.
const SNAPSHOT_STALL_FACTOR: u32 = 20;

/// Heartbeat rounds during which a follower only rejects below what it acknowledged before
/// the leader concludes it lost its data (`Progress::doubt_round`). A follower with its data
/// answers the heartbeat of the next round, so two full rounds leave margin.
const LOST_DATA_ROUNDS: u32 = 3;

/// A linearizable read waiting for a quorum to confirm this leader (Raft thesis §6.4).
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    /// Commit index when the read arrived: serving at or after it is linearizable.
    index: LogIndex,
    /// The heartbeat round that must be acknowledged by a quorum.
    round: u64,
}

/// What the last `ready()` handed out, so `advance()` can mark it done.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    last_entry: Option<LogIndex>,
    applied_to: LogIndex,
}

/// The consensus state machine of one node. See the module docs of `raft` for the contract.
pub struct RaftCore {
    cfg: Config,
    rng: SmallRng,

    // Persistent state (Figure 2). Durable once handed out in a Ready and advanced.
    term: Term,
    vote: Option<NodeId>,
    log: RaftLog,

    // Volatile state. Invariant: applied <= commit <= log.last_index().
    commit: LogIndex,
    applied: LogIndex,
    role: Role,
    leader: Option<NodeId>,

    // Timers, in ticks.
    election_elapsed: u32,
    /// Drawn from `[election_ticks, 2 * election_ticks)` at every reset (§5.2).
    election_timeout: u32,
    heartbeat_elapsed: u32,

    // Candidate state: votes received in this term (true = granted).
    votes: BTreeMap<NodeId, bool>,
    /// While pre-campaigning (§9.6): the term we would campaign in, and the answers so far.
    pre_campaign: Option<Term>,
    pre_votes: BTreeMap<NodeId, bool>,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    /// Reads waiting until this leader has committed an entry of its own term.
    reads_before_commit: Vec<u64>,
    /// Reads waiting for their heartbeat round to be confirmed by a quorum.
    pending_reads: VecDeque<PendingRead>,
    /// Latest heartbeat round number started in this term.
    read_round: u64,
    /// Set when something needs sending at the next `ready()` (batches proposals and reads
    /// that arrive together into one message per peer).
    need_broadcast: bool,
    /// A read round was started and its heartbeat is not sent yet.
    read_round_open: bool,
    /// The read round carried by the latest heartbeat broadcast. A round opened meanwhile is
    /// sent only once a quorum confirmed this one (or with the next periodic heartbeat), so
    /// under read load one round is in flight at a time and each carries every read that
    /// arrived during the previous one.
    read_round_sent: u64,
    /// Leader only: the leadership transfer in progress, if any (`transfer.rs`).
    transfer: Option<transfer::Transfer>,
    /// The lease clock and, as leader, when each heartbeat round was sent (`lease.rs`).
    lease: lease::LeaseState,

    // Output waiting for the driver.
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    prev_soft: SoftState,
    prev_hard: HardState,
    in_flight: Option<InFlight>,
    mutation: Mutation,
    /// A leader's snapshot accepted by this follower, handed out in the next Ready.
    pending_snapshot: Option<Snapshot>,
    /// Rate limit of the warnings a peer can repeat with every message (`warn_limit.rs`).
    warnings: warn_limit::WarnLimit,

    // Membership (`membership.rs`: a change is in effect once in the log).
    /// The membership this node follows: the last configuration entry in the log, else
    /// `base_membership`.
    membership: Membership,
    /// Index of the configuration entry `membership` comes from; 0 when it comes from the
    /// snapshot or the configuration.
    conf_index: LogIndex,
    /// The membership as of the snapshot the log starts after (the configured one without a
    /// snapshot, or with a snapshot written before memberships were recorded).
    base_membership: Membership,
    /// This node applied a configuration (or installed a snapshot) that removed it.
    removed: bool,
}

/// The membership a node starts with when neither a snapshot nor its log says otherwise:
/// `Config::peers` and the node itself as voters, or nobody for a node that joins.
fn configured_membership(cfg: &Config) -> Membership {
    if cfg.joining {
        Membership::default()
    } else {
        Membership::with_voters(cfg.peers.iter().copied().chain([cfg.id]))
    }
}

/// The highest value that at least `quorum` of `values` (one per voter) have reached: the
/// `quorum`-th highest, or 0 if there are fewer values. Called for every append and read
/// acknowledgement, so it counts (clusters are small) rather than sorting a copy.
fn quorum_value<I: Iterator<Item = u64> + Clone>(values: I, quorum: usize) -> u64 {
    values
        .clone()
        .filter(|&v| values.clone().filter(|&w| w >= v).count() >= quorum)
        .max()
        .unwrap_or(0)
}

impl RaftCore {
    /// Rebuilds a core from what storage holds (or an empty state for a new node).
    /// It starts as a follower with no known leader.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn new(
        config: Config,
        hard_state: HardState,
        log: Vec<Entry>,
    ) -> Result<Self, ConfigError> {
        Self::restore(config, hard_state, SnapshotMeta::default(), log)
    }

    /// Rebuilds a core from storage that holds a snapshot: `log` holds the entries after
    /// `snapshot.index`. The caller restores the state machine from the same snapshot, so
    /// the core starts with everything up to `snapshot.index` applied.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn restore(
        config: Config,
        hard_state: HardState,
        snapshot: SnapshotMeta,
        log: Vec<Entry>,
    ) -> Result<Self, ConfigError> {
        Self::restore_with_membership(config, hard_state, snapshot, None, log)
    }

    /// [`RaftCore::restore`] from a snapshot that recorded the membership as of its index
    /// (`Snapshot::membership`; `None` for a snapshot without one, or no snapshot: then the
    /// configured membership, `Config::peers` and this node, or none if `Config::joining`).
    /// The membership the core follows is the last configuration entry of `log`, else this.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn restore_with_membership(
        config: Config,
        hard_state: HardState,
        snapshot: SnapshotMeta,
        membership: Option<Membership>,
        log: Vec<Entry>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut peers = config.peers.clone();
        peers.sort_unstable();
        let cfg = Config { peers, ..config };
        let base_membership = membership.unwrap_or_else(|| configured_membership(&cfg));
        let log = RaftLog::restore(snapshot, log);
        // The stored commit index is a hint; it can be ahead of a log whose tail did not reach
        // disk. A snapshot holds only committed entries.
        let commit = hard_state.commit.min(log.last_index()).max(snapshot.index);
        let mut core = RaftCore {
            rng: SmallRng::seed_from_u64(cfg.seed),
            term: hard_state.term,
            vote: hard_state.vote,
            log,
            commit,
            applied: snapshot.index,
            role: Role::Follower,
            leader: None,
            election_elapsed: 0,
            election_timeout: cfg.election_ticks,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            pre_campaign: None,
            pre_votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            reads_before_commit: Vec::new(),
            pending_reads: VecDeque::new(),
            read_round: 0,
            need_broadcast: false,
            read_round_open: false,
            read_round_sent: 0,
            transfer: None,
            lease: lease::LeaseState::default(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            prev_soft: SoftState {
                role: Role::Follower,
                leader: None,
            },
            prev_hard: HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit,
            },
            in_flight: None,
            mutation: Mutation::None,
            pending_snapshot: None,
            warnings: warn_limit::WarnLimit::default(),
            removed: base_membership.removed.contains(&cfg.id),
            membership: base_membership.clone(),
            conf_index: 0,
            base_membership,
            cfg,
        };
        core.refresh_membership();
        // What the committed prefix (as far as the stored hint knows) says about this node;
        // the rest is re-applied and noted in `ready()`.
        let me = core.cfg.id;
        core.removed |= core.membership_at(core.commit).removed.contains(&me);
        core.randomize_election_timeout();
        Ok(core)
    }

    // ------------------------------------------------------------------ inputs

    /// Feeds one message from a peer (request or reply) into the core. Every request gets
    /// exactly one response, carrying the request's `rpc_id`.
    pub fn step(&mut self, msg: Message) {
        debug_assert!(
            self.in_flight.is_none(),
            "invariant: step() between ready() and advance()"
        );
        if !self.check_term(&msg) {
            return;
        }
        match msg.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
            } => self.handle_request_vote(&msg, last_log_index, last_log_term),
            MessageBody::RequestVoteResponse { granted } => {
                self.handle_vote_response(msg.from, granted)
            }
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_pre_vote(&msg, last_log_index, last_log_term),
            MessageBody::PreVoteResponse { granted } => {
                self.handle_pre_vote_response(msg.from, msg.term, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                ref entries,
                leader_commit,
                read_ctx,
            } => self.handle_append_entries(
                &msg,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
            ),
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                conflict_index,
                conflict_term,
                read_ctx,
            } => self.handle_append_response(
                msg.from,
                success,
                match_index,
                conflict_index,
                conflict_term,
                read_ctx,
            ),
            MessageBody::InstallSnapshot { ref snapshot } => {
                self.handle_install_snapshot(&msg, snapshot)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(&msg),
            MessageBody::TimeoutNowResponse => {}
            MessageBody::TransferRequestVote {
                last_log_index,
                last_log_term,
            } => self.handle_request_vote(&msg, last_log_index, last_log_term),
        }
    }

    /// Feeds in a peer request whose payload the driver refused (an InstallSnapshot whose
    /// data does not decode): it passes `check_term` like every message, so a sender of a
    /// lower term gets the usual rejection with our term and a higher term makes us step down
    /// first; then the request is answered with a refusal carrying the request's `rpc_id`. A
    /// leader message of our term still counts as contact with the leader, as any would.
    pub fn step_refused(&mut self, msg: Message) {
        debug_assert!(
            self.in_flight.is_none(),
            "invariant: step_refused() between ready() and advance()"
        );
        if !self.check_term(&msg) {
            return;
        }
        let from_leader = matches!(
            msg.body,
            MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. }
        );
        if from_leader {
            // Refused either way; this only notes the leader (or warns of a second one).
            self.follow_leader_of_term(&msg);
        }
        self.reject(&msg);
    }

    /// Advances logical time by one tick: followers and candidates count toward an election,
    /// leaders toward the next heartbeat.
    pub fn tick(&mut self) {
        self.warnings.tick();
        self.lease_tick();
        self.transfer_tick();
        match self.role {
            Role::Leader => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                if self.cfg.check_quorum && self.election_elapsed >= self.cfg.election_ticks {
                    self.election_elapsed = 0;
                    if !self.quorum_recently_active() {
                        info!(
                            node = self.cfg.id,
                            term = self.term,
                            "[node {}] stepping down: lost contact with quorum",
                            self.cfg.id
                        );
                        self.become_follower(self.term, None);
                        return;
                    }
                }
                self.heartbeat_elapsed += 1;
                if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
                    self.heartbeat_elapsed = 0;
                    self.heartbeat_round();
                }
            }
            Role::Follower | Role::Candidate => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                // Only a voter campaigns (or a node an uncommitted change excluded, see
                // `may_campaign`): never a learner, a removed node, or a joining node that
                // does not know the membership yet.
                if self.election_elapsed >= self.election_timeout && self.may_campaign() {
                    if self.cfg.pre_vote && !self.sole_voter() {
                        self.start_pre_campaign();
                    } else {
                        self.become_candidate();
                    }
                }
            }
        }
    }

    /// Appends a command to the log (leader only). The entry is sent to followers at the next
    /// `ready()`, batched with whatever else was proposed meanwhile.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] if this node is not the leader,
    /// [`ProposeError::TransferInProgress`] while it hands leadership over.
    pub fn propose(&mut self, data: impl Into<bytes::Bytes>) -> Result<Proposed, ProposeError> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            }
            .into());
        }
        if let Some(t) = &self.transfer {
            return Err(ProposeError::TransferInProgress { target: t.target });
        }
        let index = self.log.last_index() + 1;
        self.log.push(Entry {
            term: self.term,
            index,
            payload: Payload::Command(data.into()),
        });
        self.need_broadcast = true;
        Ok(Proposed {
            index,
            term: self.term,
        })
    }

    /// Starts a linearizable read with the caller's id (ReadIndex, Raft thesis §6.4). The read
    /// comes back in `Ready::read_states` once a quorum has confirmed this node is still the
    /// leader, with the index the state machine must have applied before serving it.
    ///
    /// # Errors
    /// [`NotLeader`] if this node is not the leader.
    pub fn read_index(&mut self, id: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            });
        }
        if self.log.term(self.commit) != Some(self.term) {
            // §6.4 step 1: until an entry of its own term commits, a new leader does not know
            // the true commit index. Its no-op will commit soon.
            self.reads_before_commit.push(id);
            return Ok(());
        }
        if self.try_lease_read(id) {
            return Ok(());
        }
        self.start_read(id);
        Ok(())
    }

    // ------------------------------------------------------------------ output

    /// True if there is a Ready to handle.
    pub fn has_ready(&self) -> bool {
        self.need_broadcast
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.read_states.is_empty()
            || !self.log.unstable().is_empty()
            || self.soft_state() != self.prev_soft
            || self.term != self.prev_hard.term
            || self.vote != self.prev_hard.vote
            || self.commit.min(self.log.persisted()) > self.applied
            || self.pending_snapshot.is_some()
    }

    /// Takes the pending work. The driver must handle it (see `ready.rs`) and call
    /// [`RaftCore::advance`] before the next `step`, `tick`, `propose` or `ready`.
    pub fn ready(&mut self) -> Ready {
        if self.need_broadcast {
            self.need_broadcast = false;
            self.broadcast_append();
            if self.read_round_open && self.confirmed_read_round() >= self.read_round_sent {
                for p in self.replication_targets() {
                    self.send_heartbeat(p);
                }
                self.read_round_sent_now();
            }
        }
        let soft = self.soft_state();
        let soft_state = (soft != self.prev_soft).then_some(soft);
        self.prev_soft = soft;

        let entries = self.log.unstable().to_vec();
        let hard = self.hard_state();
        // The commit index alone is not worth an fsync: it is persisted only as a hint, along
        // with a term/vote change or new entries.
        let hard_changed = hard.term != self.prev_hard.term || hard.vote != self.prev_hard.vote;
        let hard_state =
            (hard_changed || (!entries.is_empty() && hard != self.prev_hard)).then_some(hard);

        // Apply only what is both committed and durable here.
        let apply_to = self.commit.min(self.log.persisted());
        let committed_entries = if apply_to > self.applied {
            self.log.slice(self.applied + 1, apply_to, usize::MAX)
        } else {
            Vec::new()
        };
        self.note_applied_confs(&committed_entries);

        self.in_flight = Some(InFlight {
            last_entry: entries.last().map(|e| e.index),
            applied_to: apply_to.max(self.applied),
        });
        if let Some(hs) = hard_state {
            self.prev_hard = hs;
        }
        Ready {
            soft_state,
            snapshot: self.pending_snapshot.take(),
            hard_state,
            entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    /// Acknowledges that the last Ready was fully handled: its entries and hard state are
    /// durable, its committed entries applied. A leader now counts its own copy of the new
    /// entries toward commit (ARCHITECTURE.md: only after its own flush).
    pub fn advance(&mut self) {
        let Some(done) = self.in_flight.take() else {
            return;
        };
        if let Some(last) = done.last_entry {
            self.log.mark_persisted(last);
        }
        self.applied = done.applied_to;
        if self.role == Role::Leader {
            self.maybe_commit();
        } else if self.role == Role::Candidate && self.has_quorum_of_votes() {
            // Won on its own vote (a sole voter), which the Ready just handled made durable.
            self.become_leader();
        }
    }

    /// A consistent view of the core's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit: self.commit,
            last_index: self.log.last_index(),
            membership: self.membership.clone(),
            matched: if self.role == Role::Leader {
                self.progress
                    .iter()
                    .map(|(&id, p)| (id, p.matched))
                    .collect()
            } else {
                Default::default()
            },
            removed: self.removed,
            committed_removals: self.committed_removals(),
        }
    }

    /// The current hard state (what must be durable).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
        }
    }

    /// Entry at `index`, if present (for the simulator's invariant checks).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.get(index)
    }

    /// Index of the last entry known durable on this node.
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted()
    }

    /// Switches on a deliberate bug (simulator mutation mode only).
    #[doc(hidden)]
    pub fn set_mutation(&mut self, mutation: Mutation) {
        self.mutation = mutation;
    }

    // ------------------------------------------------------------------ the term gate

    /// The single term check every message passes before anything else (Raft Figure 2, "Rules
    /// for Servers: all servers"). Returns false if the message must not be processed further.
    ///
    /// - Higher term: adopt it, clear the vote, become follower (leader known if the message is
    ///   an AppendEntries from the new term's leader), reset the election timer.
    /// - Lower term: a request is rejected with our term; a reply is dropped.
    fn check_term(&mut self, msg: &Message) -> bool {
        // Input no correct peer can send: a sender outside the cluster, or a term that could
        // never be followed by an election (term + 1 would overflow). Refuse it before it can
        // touch our term.
        if !self.accepts_from(msg) || msg.term == Term::MAX {
            warn_limited!(
                self,
                Warning::NonMember,
                from = msg.from,
                term = msg.term,
                "refusing a message from a non-member or with an impossible term"
            );
            self.reject(msg);
            return false;
        }
        match self.mutation {
            Mutation::NoCheckTerm => return true,
            Mutation::CountStaleVotes
                if matches!(msg.body, MessageBody::RequestVoteResponse { .. })
                    && msg.term <= self.term =>
            {
                return true;
            }
            _ => {}
        }
        // The documented exceptions to "a higher term makes us follow it":
        // - PreVote (thesis §9.6): a PreVote carries the term its sender *would* campaign in,
        //   and a granted PreVote reply carries that same proposed term. Neither is adopted.
        // - Leader stickiness (thesis §4.2.3, with CheckQuorum): a node that heard from a live
        //   leader within the election timeout refuses a vote request of a higher term and
        //   keeps its term, so a node rejoining from a partition cannot depose a healthy leader.
        match msg.body {
            MessageBody::PreVote { .. } if msg.term > self.term => return true,
            MessageBody::PreVoteResponse { granted: true } => return true,
            MessageBody::RequestVote { .. } if msg.term > self.term && self.in_lease() => {
                debug!(
                    node = self.cfg.id,
                    from = msg.from,
                    term = msg.term,
                    "ignoring a vote request: the leader was heard from recently"
                );
                self.reject(msg);
                return false;
            }
            _ => {}
        }
        if msg.term > self.term {
            info!(
                node = self.cfg.id,
                "[node {}] stepping down: saw term {} > my term {}",
                self.cfg.id,
                msg.term,
                self.term
            );
            let leader = matches!(
                msg.body,
                MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. }
            )
            .then_some(msg.from);
            self.become_follower(msg.term, leader);
            return true;
        }
        if msg.term < self.term {
            debug!(
                node = self.cfg.id,
                from = msg.from,
                kind = msg.body.kind(),
                term = msg.term,
                "rejecting stale-term message"
            );
            self.reject(msg);
            return false;
        }
        true
    }

    /// Answers a request we will not act on (with our term, which lets a stale sender step
    /// down); replies are simply dropped.
    fn reject(&mut self, msg: &Message) {
        match msg.body {
            MessageBody::RequestVote { .. } => {
                self.respond_now(msg, MessageBody::RequestVoteResponse { granted: false })
            }
            MessageBody::PreVote { .. } => {
                self.respond_now(msg, MessageBody::PreVoteResponse { granted: false })
            }
            MessageBody::AppendEntries { read_ctx, .. } => self.respond_now(
                msg,
                MessageBody::AppendEntriesResponse {
                    success: false,
                    match_index: 0,
                    conflict_index: 0,
                    conflict_term: 0,
                    read_ctx,
                },
            ),
            // Answered like an append: that is the reply InstallSnapshot has.
            MessageBody::InstallSnapshot { .. } => self.reject(&Message {
                body: MessageBody::AppendEntries {
                    prev_log_index: 0,
                    prev_log_term: 0,
                    entries: Vec::new(),
                    leader_commit: 0,
                    read_ctx: 0,
                },
                ..msg.clone()
            }),
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::PreVoteResponse { .. }
            | MessageBody::AppendEntriesResponse { .. } => {}
            MessageBody::TransferRequestVote { .. } => {
                self.respond_now(msg, MessageBody::RequestVoteResponse { granted: false })
            }
            MessageBody::TimeoutNow => self.respond_now(msg, MessageBody::TimeoutNowResponse),
            MessageBody::TimeoutNowResponse => {}
        }
    }

    // ------------------------------------------------------------------ role changes

    /// The one place term-dependent volatile state is cleared (used by every `become_*`).
    fn reset_for_term(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomize_election_timeout();
        self.votes.clear();
        self.pre_campaign = None;
        self.progress.clear();
        self.reads_before_commit.clear();
        self.pending_reads.clear();
        self.read_round = 0;
        self.need_broadcast = false;
        self.read_round_open = false;
        self.read_round_sent = 0;
        self.transfer = None;
        self.lease.reset_for_term();
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset_for_term(term);
        self.role = Role::Follower;
        self.leader = leader;
        info!(
            node = self.cfg.id,
            term = self.term,
            "[node {}] became follower",
            self.cfg.id
        );
    }

    /// Starts an election (§5.2): new term, vote for self, ask everyone else.
    fn become_candidate(&mut self) {
        self.reset_for_term(self.term + 1);
        self.role = Role::Candidate;
        self.vote = Some(self.cfg.id);
        self.votes.insert(self.cfg.id, true);
        info!(
            node = self.cfg.id,
            term = self.term,
            "[node {}] became candidate",
            self.cfg.id
        );
        // A sole voter's own vote is a quorum, but it becomes leader only in `advance`, once
        // the Ready that carries its new term and vote is durable: a leader that crashed
        // before then would come back in the old term, free to vote for another node in
        // this one, and the entries of this term it had sent (to a learner, or to a node it
        // is removing) could then differ from that node's.
        if self.has_quorum_of_votes() && self.mutation == Mutation::LeadBeforeVotePersisted {
            self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            // The request promises our vote for ourselves in this term: persist first.
            let msg = self.message(
                to,
                0,
                MessageBody::RequestVote {
                    last_log_index,
                    last_log_term,
                },
            );
            self.persisted_msgs.push(msg);
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(
            self.role,
            Role::Candidate,
            "invariant: only a candidate becomes leader"
        );
        self.reset_for_term(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        let next = self.log.last_index() + 1;
        for p in self.membership.members().filter(|&p| p != self.cfg.id) {
            self.progress.insert(p, Progress::new(next));
        }
        info!(
            node = self.cfg.id,
            term = self.term,
            "[node {}] became leader",
            self.cfg.id
        );
        // §8: a no-op of the new term lets earlier-term entries commit (Figure 8) and tells
        // the leader its commit index, which ReadIndex needs.
        self.log.push(Entry {
            term: self.term,
            index: next,
            payload: Payload::Noop,
        });
        self.broadcast_append();
    }

    fn randomize_election_timeout(&mut self) {
        let base = self.cfg.election_ticks;
        self.election_timeout = self
            .rng
            .random_range(base..base.saturating_mul(2).max(base + 1));
    }

    fn quorum(&self) -> usize {
        // A majority of the voters (learners never count).
        self.membership.quorum()
    }

    fn has_quorum_of_votes(&self) -> bool {
        let counted = |id: &NodeId| {
            self.membership.is_voter(*id) || self.mutation == Mutation::CountLearnerVotes
        };
        let granted = self.votes.iter().filter(|&(id, &g)| g && counted(id));
        granted.count() >= self.quorum()
    }

    // ------------------------------------------------------------------ elections

    /// RequestVote receiver (Figure 2; §5.2, §5.4.1). Terms are already equal.
    ///
    /// A learner (or a node that does not know its membership yet) answers like a voter, as
    /// etcd's learners do: the candidate asked because its log says this node votes, and the
    /// promotion may be committed (on the other voters) before this node has the entry; were it
    /// to refuse, a cluster that lost the leader could be left with too few voters willing to
    /// elect anyone. Only the candidate decides whose votes count (`has_quorum_of_votes`).
    fn handle_request_vote(
        &mut self,
        msg: &Message,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        let can_vote = self.vote.is_none() || self.vote == Some(msg.from);
        // §5.4.1: the candidate's log must be at least as up-to-date as ours.
        let up_to_date =
            (last_log_term, last_log_index) >= (self.log.last_term(), self.log.last_index());
        let granted = can_vote && up_to_date && self.role != Role::Leader;
        if granted {
            self.vote = Some(msg.from);
            // Granting a vote resets the election timer (a candidate is making progress).
            self.election_elapsed = 0;
        }
        debug!(
            node = self.cfg.id,
            candidate = msg.from,
            term = self.term,
            granted,
            "vote request"
        );
        self.respond_after_persist(msg, MessageBody::RequestVoteResponse { granted });
    }

    /// True while a leader is known to be alive: a follower heard from it within the election
    /// timeout, or this node leads and its quorum check has not failed (CheckQuorum only).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && ((self.leader.is_some() && self.election_elapsed < self.cfg.election_ticks)
                || self.lease_sticky())
    }

    /// A leader's CheckQuorum test: did a majority (counting itself) answer since the last one?
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.cfg.id;
        let active = self
            .membership
            .voters
            .iter()
            .filter(|&&v| v == me || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        active >= self.quorum()
    }

    /// Election timeout with PreVote on: ask the others whether we could win the next term,
    /// without touching our own term or vote (nothing to persist, nothing disrupted).
    fn start_pre_campaign(&mut self) {
        self.election_elapsed = 0;
        self.randomize_election_timeout();
        self.leader = None;
        let proposed = self.term + 1;
        self.pre_campaign = Some(proposed);
        self.pre_votes.clear();
        self.pre_votes.insert(self.cfg.id, true);
        debug!(node = self.cfg.id, term = proposed, "starting pre-vote");
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for to in self.other_voters() {
            self.msgs.push(Message {
                from: self.cfg.id,
                to,
                term: proposed,
                rpc_id: 0,
                body: MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                },
            });
        }
    }

    /// PreVote receiver: grant if the proposed term is ahead of ours, the sender's log is at
    /// least as up-to-date as ours (§5.4.1), and no leader is known to be alive. Changes no
    /// state: no term, no vote, no timer.
    fn handle_pre_vote(&mut self, msg: &Message, last_log_index: LogIndex, last_log_term: Term) {
        let up_to_date =
            (last_log_term, last_log_index) >= (self.log.last_term(), self.log.last_index());
        let granted =
            msg.term > self.term && up_to_date && self.role != Role::Leader && !self.in_lease();
        let term = if granted { msg.term } else { self.term };
        debug!(
            node = self.cfg.id,
            candidate = msg.from,
            term = msg.term,
            granted,
            "pre-vote request"
        );
        self.msgs.push(Message {
            from: self.cfg.id,
            to: msg.from,
            term,
            rpc_id: msg.rpc_id,
            body: MessageBody::PreVoteResponse { granted },
        });
    }

    fn handle_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) {
        let Some(proposed) = self.pre_campaign else {
            return;
        };
        if self.role == Role::Leader
            || !self.membership.is_voter(from)
            || (granted && term != proposed)
        {
            return; // not pre-campaigning any more, or an answer to an earlier round
        }
        self.pre_votes.insert(from, granted);
        // Voters' answers only: this node's own counts only if it is one (see `may_campaign`).
        let voters = &self.membership;
        let granted = self
            .pre_votes
            .iter()
            .filter(|&(id, &g)| g && voters.is_voter(*id));
        if granted.count() >= self.quorum() {
            self.become_candidate();
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        // A reply that no longer fits our role (we already won, or stepped down) is ignored.
        if self.role != Role::Candidate || !self.membership.contains(from) {
            return;
        }
        self.votes.insert(from, granted);
        if self.has_quorum_of_votes() {
            self.become_leader();
        }
    }

    // ------------------------------------------------------------------ replication: follower

    /// AppendEntries receiver (Figure 2; §5.3). Terms are already equal.
    fn handle_append_entries(
        &mut self,
        msg: &Message,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: &[Entry],
        leader_commit: LogIndex,
        read_ctx: u64,
    ) {
        let reject = |conflict_index, conflict_term| MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 0,
            conflict_index,
            conflict_term,
            read_ctx,
        };
        if !self.follow_leader_of_term(msg) {
            self.respond_now(msg, reject(0, 0));
            return;
        }

        // Reject malformed batches outright: indexes must follow prev_log_index contiguously
        // and no entry may come from a term after the sender's.
        let well_formed = entries.iter().enumerate().all(|(i, e)| {
            Some(e.index) == prev_log_index.checked_add(i as u64 + 1) && e.term <= msg.term
        });
        if !well_formed {
            warn_limited!(
                self,
                Warning::MalformedAppend,
                from = msg.from,
                "dropping malformed AppendEntries"
            );
            self.respond_now(msg, reject(0, 0));
            return;
        }

        // What our snapshot covers is committed, so it matches the leader's log: re-anchor a
        // message that starts inside it at the snapshot (e.g. a late append from before an
        // install).
        let (prev_log_index, prev_log_term, entries) =
            self.anchor_at_snapshot(prev_log_index, prev_log_term, entries);

        match self.log.term(prev_log_index) {
            None => {
                // Our log is too short: retry right after our last entry.
                let hint = self.log.last_index() + 1;
                self.respond_now(msg, reject(hint, 0));
                return;
            }
            Some(t) if t != prev_log_term => {
                // Fast back-off: name the conflicting term and where our run of it starts.
                let hint = self
                    .log
                    .first_index_of_term_run(prev_log_index, t)
                    .max(self.commit + 1);
                self.respond_now(msg, reject(hint, t));
                return;
            }
            Some(_) => {}
        }

        // The logs match at prev_log_index. Append what is new; truncate only at a real conflict.
        // A configuration entry takes effect once in the log, and stops when truncated away.
        let mut conf_touched = false;
        for (i, e) in entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit {
                        warn_limited!(
                            self,
                            Warning::OverwriteCommitted,
                            from = msg.from,
                            index = e.index,
                            "refusing to overwrite a committed entry"
                        );
                        self.respond_now(msg, reject(0, 0));
                        return;
                    }
                    conf_touched |= e.index <= self.conf_index;
                    self.log.truncate_from(e.index);
                }
                None => {}
            }
            for e in &entries[i..] {
                conf_touched |= matches!(e.payload, Payload::ConfChange(_));
                self.log.push(e.clone());
            }
            break;
        }
        if conf_touched {
            self.refresh_membership();
        }

        let match_index = prev_log_index + entries.len() as u64;
        // Figure 2, rule 5: commit = min(leaderCommit, index of last new entry).
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.respond_after_persist(
            msg,
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index,
                conflict_index: 0,
                conflict_term: 0,
                read_ctx,
            },
        );
    }

    /// A message only the leader of our term sends (AppendEntries, InstallSnapshot): a
    /// candidate returns to follower (§5.2), and the leader is noted as alive (election timer,
    /// lease stickiness). Returns false if we lead this term ourselves: two leaders in one
    /// term would break Election Safety, so the caller refuses the message.
    pub(super) fn follow_leader_of_term(&mut self, msg: &Message) -> bool {
        match self.role {
            Role::Leader => {
                warn_limited!(
                    self,
                    Warning::SecondLeader,
                    from = msg.from,
                    term = self.term,
                    kind = msg.body.kind(),
                    "leader message from another leader of my term"
                );
                return false;
            }
            Role::Candidate => self.become_follower(self.term, Some(msg.from)),
            Role::Follower => {}
        }
        self.leader = Some(msg.from);
        self.election_elapsed = 0;
        self.pre_campaign = None;
        self.lease_heard_from_leader();
        true
    }

    // ------------------------------------------------------------------ replication: leader

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Term,
        read_ctx: u64,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let clock = self.lease_clock();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        // Any answer in our term confirms we were still leader when it was sent.
        pr.read_ack = pr.read_ack.max(read_ctx);
        pr.recent_active = true;
        pr.heard_at = Some(clock);
        if success {
            // A follower cannot hold more than we sent; clamp hostile or buggy values.
            if pr.ack(match_index.min(last_index)) {
                self.maybe_commit();
            }
        } else if pr.state == ProgressState::Snapshot {
            // A late rejection of an append sent before the snapshot: keep waiting for the
            // snapshot's answer (or its stall timeout).
        } else if conflict_term == 0 && conflict_index == 0 {
            // A refusal without a hint (a malformed batch, a committed entry it will not
            // overwrite): not about where its log ends, so nothing to back off to. The
            // window's stall detection probes again if nothing else moves.
        } else if conflict_term == 0 && conflict_index <= pr.matched {
            // "My log ends before what I acknowledged in this term": an old rejection
            // overtaken by later acknowledgements (e.g. a snapshot's, which travels on
            // another connection). Acting on it would move `matched` back and send a
            // snapshot again. Ignored, but noted: a follower that lost its data answers only
            // this, and `heartbeat_round` restarts it from what it holds.
            pr.doubt(conflict_index);
        } else {
            // §5.3 fast back-off with the follower's conflict hint.
            let hinted = if conflict_term == 0 {
                conflict_index
            } else {
                match self.log.last_index_of_term(conflict_term) {
                    Some(i) => i + 1,
                    None => conflict_index,
                }
            };
            let next = hinted.min(pr.next).max(1);
            debug!(
                node = self.cfg.id,
                peer = from,
                next,
                "append rejected, probing"
            );
            pr.become_probe(next);
        }
        self.confirm_reads();
        self.send_append(from);
        self.maybe_send_timeout_now(from);
    }

    /// Figure 2 / Figure 8: advance the commit index to the highest index stored on a quorum,
    /// but only by counting replicas of an entry from the current term (§5.4.2).
    fn maybe_commit(&mut self) {
        // The leader's own copy counts only once durable; only voters count (a leader that
        // removed itself no longer counts its own copy).
        let (me, persisted) = (self.cfg.id, self.log.persisted());
        let matched = self.membership.voters.iter().map(|&v| {
            if v == me {
                persisted
            } else {
                self.progress.get(&v).map_or(0, |p| p.matched)
            }
        });
        let candidate = quorum_value(matched, self.quorum());
        let current_term = self.log.term(candidate) == Some(self.term)
            || self.mutation == Mutation::CommitOldTerms;
        if candidate > self.commit && current_term {
            self.commit = candidate;
            debug!(node = self.cfg.id, commit = candidate, "commit advanced");
            if !self.reads_before_commit.is_empty() {
                for id in std::mem::take(&mut self.reads_before_commit) {
                    self.start_read(id);
                }
            }
            self.conf_committed();
        }
    }

    /// Sends each follower what it is missing (respecting its flow control).
    fn broadcast_append(&mut self) {
        for p in self.replication_targets() {
            self.send_append(p);
        }
    }

    /// Sends `peer` the entries from its `next`, if its window allows.
    fn send_append(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let max_inflight = self.cfg.max_inflight;
        let max_entries = self.cfg.max_entries_per_message;
        let Some(pr) = self.progress.get_mut(&peer) else {
            return;
        };
        if !pr.can_send(max_inflight) || pr.next > last {
            return;
        }
        if pr.next <= self.log.snapshot().index {
            self.send_snapshot(peer);
            return;
        }
        let prev_log_index = pr.next - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            // next is never past last + 1; fall back to probing from the end.
            pr.become_probe(last + 1);
            return;
        };
        let mut entries = self.log.slice(pr.next, last, max_entries);
        if self.mutation != Mutation::NoByteCap {
            super::config::limit_size(&mut entries, self.cfg.max_bytes_per_message);
        }
        pr.sent(prev_log_index + entries.len() as u64);
        let body = MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit,
            read_ctx: self.append_read_ctx(),
        };
        let msg = self.message(peer, 0, body);
        // §10.2.1: the leader may send before its own write is durable.
        self.msgs.push(msg);
    }

    /// The read round an AppendEntries carrying entries confirms when answered: the latest
    /// round already broadcast, never the open one. Every read of a broadcast round arrived
    /// before its heartbeats left, so an answer to anything sent later confirms them; a read
    /// joining the open round may arrive after this append left, and an answer to it proves
    /// nothing about leadership at that read's time (issue 11, defect 4: with a leadership
    /// transfer, a new leader can commit a write in between and the read would miss it).
    fn append_read_ctx(&self) -> u64 {
        if self.mutation == Mutation::StampOpenReadRound {
            self.read_round
        } else {
            self.read_round_sent
        }
    }

    /// Heartbeat (§5.2): every follower hears from us; followers whose window stalled (lost
    /// messages) fall back to probing; the heartbeat carries the current read round.
    fn heartbeat_round(&mut self) {
        self.lease_new_round();
        let stall_rounds = (self.cfg.election_ticks / self.cfg.heartbeat_ticks / 2).max(2);
        // A snapshot can take much longer to stream than a batch of entries.
        let snapshot_stall_rounds = stall_rounds.saturating_mul(SNAPSHOT_STALL_FACTOR);
        for p in self.replication_targets() {
            let Some(pr) = self.progress.get_mut(&p) else {
                continue;
            };
            let limit = if pr.state == ProgressState::Snapshot {
                snapshot_stall_rounds
            } else {
                stall_rounds
            };
            if let Some(next) = pr.doubt_round(LOST_DATA_ROUNDS) {
                warn_limited!(
                    self,
                    Warning::LostData,
                    peer = p,
                    next,
                    "follower lost entries it acknowledged, replicating again from its log's end"
                );
            } else if pr.stalled(limit) {
                debug!(
                    node = self.cfg.id,
                    peer = p,
                    matched = pr.matched,
                    "replication stalled, probing again"
                );
                pr.become_probe(pr.matched + 1);
            }
            self.send_heartbeat(p);
        }
        self.read_round_sent_now();
        self.confirm_reads();
        self.prune_progress();
    }

    /// An empty AppendEntries anchored at the follower's known match, so it always succeeds
    /// and lets the follower commit up to what it is known to hold. Its answer also un-pauses
    /// a probe whose message was lost (see `Progress::ack`).
    fn send_heartbeat(&mut self, peer: NodeId) {
        let Some(pr) = self.progress.get(&peer) else {
            return;
        };
        // A match inside our compacted prefix has no known term: anchor at 0, which always
        // matches (the follower then only learns that we lead; the snapshot does the rest).
        let prev_log_index = if self.log.is_compacted(pr.matched) {
            0
        } else {
            pr.matched
        };
        let prev_log_term = self.log.term(prev_log_index).unwrap_or(0);
        let body = MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: self.commit.min(prev_log_index),
            read_ctx: self.read_round,
        };
        let msg = self.message(peer, 0, body);
        self.msgs.push(msg);
    }

    // ------------------------------------------------------------------ reads

    fn start_read(&mut self, id: u64) {
        if self.sole_voter() {
            self.read_states.push(ReadState {
                id,
                index: self.commit,
            });
            return;
        }
        // Reads that arrive before the round is sent share it (see `read_round_sent`).
        if !self.read_round_open {
            self.read_round += 1;
            self.read_round_open = true;
            if self.confirmed_read_round() >= self.read_round_sent {
                self.need_broadcast = true;
            }
        }
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.commit,
            round: self.read_round,
        });
    }

    /// The latest read round a quorum (counting ourselves) has answered.
    fn confirmed_read_round(&self) -> u64 {
        let me = self.cfg.id;
        let acks = self.membership.voters.iter().map(|&v| {
            if v == me {
                u64::MAX
            } else {
                self.progress.get(&v).map_or(0, |p| p.read_ack)
            }
        });
        quorum_value(acks, self.quorum())
    }

    /// Heartbeats carrying the current read round just went to every peer.
    fn read_round_sent_now(&mut self) {
        self.read_round_sent = self.read_round;
        self.read_round_open = false;
    }

    /// Serves every pending read whose round a quorum (counting ourselves) has confirmed, and
    /// lets a waiting round go out once the one in flight is confirmed.
    fn confirm_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let confirmed = self.confirmed_read_round();
        if self.read_round_open && confirmed >= self.read_round_sent {
            self.need_broadcast = true;
        }
        while let Some(r) = self.pending_reads.front().copied() {
            if r.round > confirmed {
                break;
            }
            self.pending_reads.pop_front();
            self.read_states.push(ReadState {
                id: r.id,
                index: r.index,
            });
        }
    }

    // ------------------------------------------------------------------ messages

    fn message(&self, to: NodeId, rpc_id: u64, body: MessageBody) -> Message {
        Message {
            from: self.cfg.id,
            to,
            term: self.term,
            rpc_id,
            body,
        }
    }

    /// A response that promises nothing durable (a rejection): send at once.
    fn respond_now(&mut self, req: &Message, body: MessageBody) {
        let msg = self.message(req.from, req.rpc_id, body);
        self.msgs.push(msg);
    }

    /// A response that promises what this batch persists (a vote, an append ack).
    fn respond_after_persist(&mut self, req: &Message, body: MessageBody) {
        let msg = self.message(req.from, req.rpc_id, body);
        if self.mutation == Mutation::AckBeforePersist {
            self.msgs.push(msg);
        } else {
            self.persisted_msgs.push(msg);
        }
    }
}

mod lease;
mod membership;
mod snapshot;
#[cfg(test)]
mod tests;
mod transfer;
mod warn_limit;

pub use self::transfer::TransferError;
