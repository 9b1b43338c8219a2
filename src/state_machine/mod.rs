//! PURE deterministic state machine: `apply(index, command) -> outcome`. (API stub; H1 implements.)
#![warn(missing_docs)]

pub mod command;

pub use command::{Command, Outcome, Proposal, Session};

use crate::raft::LogIndex;

/// A command that applied deterministically to an error (every replica gets the same error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// The entry's bytes do not decode as a [`Proposal`].
    #[error("undecodable command: {0}")]
    Undecodable(String),
    /// A retried write whose sequence is older than the session's last one.
    #[error("request sequence {sequence} of client {client_id} is older than its last applied sequence {last}; it was already applied or superseded")]
    StaleSequence {
        /// client id
        client_id: u64,
        /// the sequence sent
        sequence: u64,
        /// the session's last applied sequence
        last: u64,
    },
}

/// The replicated state.
#[derive(Debug, Default)]
pub struct StateMachine {
    _p: (),
}

impl StateMachine {
    /// An empty state machine (applied index 0).
    pub fn new() -> Self {
        todo!()
    }
    /// Applies the command encoded in `data` at `index`.
    ///
    /// # Errors
    /// A deterministic per-command failure (see [`ApplyError`]).
    pub fn apply(&mut self, _index: LogIndex, _data: &[u8]) -> Result<Outcome, ApplyError> {
        todo!()
    }
    /// Records a no-op entry at `index`.
    pub fn apply_noop(&mut self, _index: LogIndex) {
        todo!()
    }
    /// Reads a key from local state.
    pub fn get(&self, _key: &str) -> Option<&str> {
        todo!()
    }
    /// Last applied log index.
    pub fn applied_index(&self) -> LogIndex {
        todo!()
    }
}
