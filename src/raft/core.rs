//! [`RaftCore`]: API stub, implementation in progress.
use super::config::{Config, ConfigError};
use super::message::Message;
use super::ready::Ready;
use super::types::{Entry, HardState, LogIndex, NodeId, Status, Term};

/// The node is not the leader (or cannot serve the request as leader right now).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not leader")]
pub struct NotLeader {
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
}

/// Where a proposal went in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// Log index of the new entry.
    pub index: LogIndex,
    /// Term of the new entry: if a different entry is applied at `index`, the proposal was lost.
    pub term: Term,
}

/// The consensus state machine of one node.
pub struct RaftCore {
    _p: (),
}

impl RaftCore {
    /// Rebuilds a core from what storage holds.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn new(
        _config: Config,
        _hard_state: HardState,
        _log: Vec<Entry>,
    ) -> Result<Self, ConfigError> {
        todo!()
    }
    /// Feeds one message from a peer (request or reply) into the core.
    pub fn step(&mut self, _msg: Message) {
        todo!()
    }
    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        todo!()
    }
    /// Appends a command to the log (leader only).
    ///
    /// # Errors
    /// [`NotLeader`] if this node is not the leader.
    pub fn propose(&mut self, _data: Vec<u8>) -> Result<Proposed, NotLeader> {
        todo!()
    }
    /// Starts a linearizable read with the caller's id; it comes back in `Ready::read_states`.
    ///
    /// # Errors
    /// [`NotLeader`] if this node is not the leader.
    pub fn read_index(&mut self, _id: u64) -> Result<(), NotLeader> {
        todo!()
    }
    /// True if there is a Ready to handle.
    pub fn has_ready(&self) -> bool {
        todo!()
    }
    /// Takes the pending work.
    pub fn ready(&mut self) -> Ready {
        todo!()
    }
    /// Acknowledges that the last Ready was fully handled (persisted, sent, applied).
    pub fn advance(&mut self) {
        todo!()
    }
    /// A consistent view of the core's state.
    pub fn status(&self) -> Status {
        todo!()
    }
}
