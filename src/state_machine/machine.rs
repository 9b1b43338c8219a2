//! [`StateMachine`]: the KV map, the applied index and the client sessions.

use super::command::{Command, Outcome, Proposal};
use super::error::ApplyError;
use super::sessions::{ClientSession, SessionLimits, Sessions, Verdict};
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The replicated state.
///
/// Invariants: `applied_index` only grows, by exactly the indexes handed to
/// [`apply`](Self::apply) / [`apply_noop`](Self::apply_noop); the result of every call depends
/// only on the state and the call's arguments (ordered maps, no clock, no randomness).
#[derive(Debug, Default)]
pub struct StateMachine {
    /// The key-value data.
    kv: BTreeMap<String, String>,
    /// Index of the last entry applied (0 before any).
    applied_index: LogIndex,
    /// Exactly-once sessions.
    sessions: Sessions,
}

/// The snapshot format: everything that shapes future outcomes, in a stable order.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied_index: LogIndex,
    kv: BTreeMap<String, String>,
    sessions: Vec<ClientSession>,
}

/// A snapshot that could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("state machine snapshot is not decodable: {0}")]
pub struct SnapshotError(String);

impl StateMachine {
    /// An empty state machine (applied index 0) with the default [`SessionLimits`].
    pub fn new() -> Self {
        Self::with_limits(SessionLimits::default())
    }

    /// An empty state machine with the given session limits (the same on every replica).
    pub fn with_limits(limits: SessionLimits) -> Self {
        Self {
            kv: BTreeMap::new(),
            applied_index: 0,
            sessions: Sessions::new(limits),
        }
    }

    /// Applies the command encoded in `data` at `index`.
    ///
    /// A proposal with a session is applied at most once: a retry of the session's last
    /// sequence returns the cached outcome, an older sequence fails.
    ///
    /// # Errors
    /// A deterministic per-command failure (see [`ApplyError`]); the state is unchanged
    /// except for the applied index (and session expiry, which depends only on the index).
    ///
    /// # Panics
    /// If `index` is not above the applied index (the driver applied out of order).
    pub fn apply(&mut self, index: LogIndex, data: &[u8]) -> Result<Outcome, ApplyError> {
        self.advance_to(index);
        let proposal = Proposal::decode(data).map_err(ApplyError::Undecodable)?;
        let Some(session) = proposal.session else {
            return Ok(self.execute(proposal.command));
        };
        match self.sessions.check(session, index)? {
            Verdict::Duplicate(outcome) => Ok(outcome),
            Verdict::Apply => {
                let outcome = self.execute(proposal.command);
                self.sessions.record(session, outcome.clone(), index);
                Ok(outcome)
            }
        }
    }

    /// Records a no-op entry at `index`.
    ///
    /// # Panics
    /// If `index` is not above the applied index.
    pub fn apply_noop(&mut self, index: LogIndex) {
        self.advance_to(index);
    }

    /// Reads a key from local state.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    /// Last applied log index.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of remembered client sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The last applied sequence of `client_id`, if its session is remembered.
    pub fn session_sequence(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(client_id).map(|s| s.last_sequence)
    }

    /// Serializes the whole state (data, applied index, sessions) for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let data = SnapshotData {
            applied_index: self.applied_index,
            kv: self.kv.clone(),
            sessions: self.sessions.iter().cloned().collect(),
        };
        // Serializing strings and integers into a Vec cannot fail.
        postcard::to_allocvec(&data).unwrap_or_default()
    }

    /// Rebuilds a state machine from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// The bytes are not a snapshot.
    pub fn restore(data: &[u8], limits: SessionLimits) -> Result<Self, SnapshotError> {
        let snap: SnapshotData =
            postcard::from_bytes(data).map_err(|e| SnapshotError(e.to_string()))?;
        let mut sessions = Sessions::new(limits);
        // Oldest first, so `record`'s eviction keeps the most recently used if limits shrank.
        let mut by_age = snap.sessions;
        by_age.sort_by_key(|s| (s.last_used, s.client_id));
        for s in by_age {
            let session = super::Session {
                client_id: s.client_id,
                sequence: s.last_sequence,
            };
            sessions.record(session, s.outcome, s.last_used);
        }
        Ok(Self {
            kv: snap.kv,
            applied_index: snap.applied_index,
            sessions,
        })
    }

    fn advance_to(&mut self, index: LogIndex) {
        assert!(
            index > self.applied_index,
            "invariant: entries are applied in index order, but index {index} is not above the applied index {}",
            self.applied_index
        );
        self.applied_index = index;
        self.sessions.expire(index);
    }

    fn execute(&mut self, command: Command) -> Outcome {
        match command {
            Command::Put { key, value } => {
                self.kv.insert(key, value);
                Outcome::Put
            }
            Command::Delete { key } => Outcome::Delete {
                existed: self.kv.remove(&key).is_some(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
