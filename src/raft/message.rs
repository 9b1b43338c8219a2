//! Messages between Raft cores. Every input that comes from another node is a [`Message`],
//! replies included, so that every one of them passes `check_term` in `RaftCore::step`.

use super::types::{Entry, LogIndex, NodeId, Snapshot, Term};

/// A message from one node's core to another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's current term (Raft Figure 2: every RPC and reply carries it).
    pub term: Term,
    /// Transport-level correlation id, opaque to Raft: a response carries the `rpc_id` of
    /// the request it answers, so the driver can route it to the waiting gRPC call.
    /// 0 for messages that are not answers.
    pub rpc_id: u64,
    /// What kind of message.
    pub body: MessageBody,
}

/// The kinds of peer messages (Raft Figure 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote RPC (§5.2, §5.4.1).
    RequestVote {
        /// Index of the candidate's last log entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
    },
    /// Reply to RequestVote.
    RequestVoteResponse {
        /// True means the sender voted for the receiver in `term`.
        granted: bool,
    },
    /// PreVote (Raft thesis §9.6): "would you vote for me in `term`?", asked before bumping
    /// the term, so a node that was cut off cannot disrupt a healthy leader. The message's
    /// `term` is the term the sender would campaign in; nobody adopts it.
    PreVote {
        /// Index of the sender's last log entry.
        last_log_index: LogIndex,
        /// Term of the sender's last log entry.
        last_log_term: Term,
    },
    /// Reply to PreVote. A grant carries the proposed term; a refusal carries the
    /// responder's own term.
    PreVoteResponse {
        /// True if the responder would vote for the sender.
        granted: bool,
    },
    /// AppendEntries RPC (§5.3); a heartbeat when `entries` is empty.
    AppendEntries {
        /// Index of the entry just before `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry.
        prev_log_term: Term,
        /// Entries to store, in order, starting at `prev_log_index + 1`.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: LogIndex,
        /// The ReadIndex round this message confirms (echoed in the reply); 0 for none.
        read_ctx: u64,
    },
    /// Reply to AppendEntries.
    AppendEntriesResponse {
        /// True if the follower's log matched at `prev_log_index` and now holds the entries.
        success: bool,
        /// On success: the last index the follower knows to match the leader's log.
        match_index: LogIndex,
        /// On failure: where the leader should retry from (fast back-off hint).
        conflict_index: LogIndex,
        /// On failure: the term of the follower's conflicting entry, or 0 when its log
        /// is simply too short.
        conflict_term: Term,
        /// Echo of the request's `read_ctx`.
        read_ctx: u64,
    },
    /// InstallSnapshot RPC (Raft §7, Figure 13): the leader's latest snapshot, for a
    /// follower that needs entries the leader has compacted. The core sends it with the
    /// snapshot's meta and empty `data`: the driver attaches its stored snapshot (the state
    /// machine's bytes never live in the core), and the transport streams it in chunks.
    /// The answer is an `AppendEntriesResponse` whose `match_index` is the snapshot's index.
    InstallSnapshot {
        /// The snapshot: last included index and term, and the state machine's bytes.
        snapshot: Snapshot,
    },
    /// Leadership transfer (Raft thesis §3.10): the leader tells a caught-up follower to start
    /// an election now, skipping PreVote. Acted on only when it comes from the receiver's
    /// current-term leader.
    TimeoutNow,
    /// Reply to TimeoutNow (an acknowledgement; the leader needs nothing from it).
    TimeoutNowResponse,
    /// A RequestVote sent by a candidate campaigning because its leader sent it TimeoutNow.
    /// Voters do not apply leader stickiness to it (the leader asked for this election);
    /// the term rules and the log up-to-date check (§5.4.1) apply as to any vote request.
    /// Answered with `RequestVoteResponse`.
    TransferRequestVote {
        /// Index of the candidate's last log entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last log entry.
        last_log_term: Term,
    },
}

impl MessageBody {
    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::TimeoutNowResponse => "TimeoutNowResponse",
            MessageBody::TransferRequestVote { .. } => "TransferRequestVote",
        }
    }

    /// True for the request kinds (which expect exactly one response).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            MessageBody::RequestVote { .. }
                | MessageBody::AppendEntries { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
                | MessageBody::TransferRequestVote { .. }
        )
    }
}
