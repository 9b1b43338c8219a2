//! [`ApplyError`]: the deterministic per-command failures.

/// A command that applied deterministically to an error (every replica gets the same error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// The entry's bytes do not decode as a [`Proposal`](super::Proposal).
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
