//! The commands carried in log entries and their outcomes. Encoded with postcard.

use serde::{Deserialize, Serialize};

/// An exactly-once session tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Client's id (random u64 chosen by the client).
    pub client_id: u64,
    /// Strictly increasing per client; 1-based.
    pub sequence: u64,
}

/// A state-machine command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// key
        key: String,
        /// value
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// key
        key: String,
    },
}

/// What goes in a log entry: a command and its optional session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Exactly-once session, if the client sent one.
    pub session: Option<Session>,
    /// The command.
    pub command: Command,
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put applied.
    Put,
    /// A delete applied; `existed` says whether the key was there.
    Delete {
        /// whether the key existed
        existed: bool,
    },
}

impl Proposal {
    /// Encodes for a log entry.
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }
    /// Decodes from a log entry.
    ///
    /// # Errors
    /// The bytes are not a valid proposal.
    pub fn decode(_data: &[u8]) -> Result<Self, String> {
        todo!()
    }
}
