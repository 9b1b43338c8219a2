//! Exactly-once client sessions (Raft dissertation §6.3): per client, the last applied
//! sequence number and its outcome, so a retried write is answered from the cache instead of
//! being applied twice.
//!
//! Sessions are bounded and expire, both measured in log indexes rather than time, so every
//! replica drops exactly the same sessions at exactly the same entry.

use super::command::{Outcome, Session};
use super::error::ApplyError;
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many sessions are kept and for how long. Every replica must use the same limits,
/// since they decide which retries are answered from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// At most this many clients are remembered; a new client beyond it evicts the one used
    /// least recently (smallest last-used index; ties, which cannot happen since one index
    /// touches one session, would go to the smaller client id). 0 disables sessions.
    pub max_sessions: usize,
    /// A session not used for more than this many log indexes is dropped.
    pub idle_expiry: u64,
}

impl SessionLimits {
    /// Default bound on the number of sessions.
    pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
    /// Default idle expiry, in log indexes.
    pub const DEFAULT_IDLE_EXPIRY: u64 = 1_000_000;
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            idle_expiry: Self::DEFAULT_IDLE_EXPIRY,
        }
    }
}

/// One client's remembered state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientSession {
    /// Client id.
    pub(crate) client_id: u64,
    /// Sequence of the last write applied for this client.
    pub(crate) last_sequence: u64,
    /// What that write returned.
    pub(crate) outcome: Outcome,
    /// Log index at which the session was last used (applied or answered from cache).
    pub(crate) last_used: LogIndex,
}

/// What to do with a proposal that carries a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not seen before: apply it, then [`Sessions::record`] the outcome.
    Apply,
    /// A retry of the last applied write: answer with this outcome, do not apply.
    Duplicate(Outcome),
}

/// The session table.
///
/// Invariant: `by_last_used` holds exactly one `(last_used, client_id)` pair per entry of
/// `by_client`, and `by_client.len() <= limits.max_sessions`.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    limits: SessionLimits,
    by_client: BTreeMap<u64, ClientSession>,
    by_last_used: BTreeSet<(LogIndex, u64)>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            by_client: BTreeMap::new(),
            by_last_used: BTreeSet::new(),
        }
    }

    /// Number of remembered clients.
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The session of `client_id`, if remembered.
    pub(crate) fn get(&self, client_id: u64) -> Option<&ClientSession> {
        self.by_client.get(&client_id)
    }

    /// Every remembered session in client-id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ClientSession> {
        self.by_client.values()
    }

    /// Drops every session idle for more than `idle_expiry` indexes at `now`.
    pub(crate) fn expire(&mut self, now: LogIndex) {
        while let Some(&(last_used, client_id)) = self.by_last_used.first() {
            if now.saturating_sub(last_used) <= self.limits.idle_expiry {
                break;
            }
            self.by_last_used.pop_first();
            self.by_client.remove(&client_id);
        }
    }

    /// Decides what to do with a write tagged `session` at index `now`. A duplicate counts
    /// as a use of the session.
    ///
    /// # Errors
    /// [`ApplyError::StaleSequence`] if the sequence is older than the last applied one.
    pub(crate) fn check(&mut self, session: Session, now: LogIndex) -> Result<Verdict, ApplyError> {
        let Some(known) = self.by_client.get(&session.client_id) else {
            return Ok(Verdict::Apply);
        };
        let last = known.last_sequence;
        if session.sequence > last {
            return Ok(Verdict::Apply);
        }
        if session.sequence < last {
            return Err(ApplyError::StaleSequence {
                client_id: session.client_id,
                sequence: session.sequence,
                last,
            });
        }
        let outcome = known.outcome.clone();
        self.touch(session.client_id, now);
        Ok(Verdict::Duplicate(outcome))
    }

    /// Remembers that the write `session` applied at `now` with `outcome`, evicting the least
    /// recently used session if the table is full.
    pub(crate) fn record(&mut self, session: Session, outcome: Outcome, now: LogIndex) {
        if self.limits.max_sessions == 0 {
            return;
        }
        if let Some(known) = self.by_client.get_mut(&session.client_id) {
            self.by_last_used
                .remove(&(known.last_used, session.client_id));
            known.last_sequence = session.sequence;
            known.outcome = outcome;
            known.last_used = now;
            self.by_last_used.insert((now, session.client_id));
            return;
        }
        while self.by_client.len() >= self.limits.max_sessions {
            let Some((_, evicted)) = self.by_last_used.pop_first() else {
                break;
            };
            self.by_client.remove(&evicted);
        }
        self.insert(ClientSession {
            client_id: session.client_id,
            last_sequence: session.sequence,
            outcome,
            last_used: now,
        });
    }

    /// Inserts a session as is (used by `record` and by snapshot restore).
    pub(crate) fn insert(&mut self, session: ClientSession) {
        if let Some(old) = self.by_client.get(&session.client_id) {
            self.by_last_used.remove(&(old.last_used, old.client_id));
        }
        self.by_last_used
            .insert((session.last_used, session.client_id));
        self.by_client.insert(session.client_id, session);
    }

    fn touch(&mut self, client_id: u64, now: LogIndex) {
        if let Some(known) = self.by_client.get_mut(&client_id) {
            self.by_last_used.remove(&(known.last_used, client_id));
            known.last_used = now;
            self.by_last_used.insert((now, client_id));
        }
    }
}
