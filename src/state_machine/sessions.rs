//! Exactly-once client sessions (Raft dissertation §6.3): per client, the last applied
//! sequence number and its outcome, so a retried write is answered from the cache instead of
//! being applied twice.
//!
//! # Expiry, and why a dropped session's id is remembered
//! Memory is bounded, so sessions are dropped: after `idle_expiry` indexes without use, or the
//! least recently used one when `max_sessions` are known. A retry from a dropped session must
//! then not be applied again (it may already have been, and a later write of someone else
//! acknowledged since would be overwritten). The state machine cannot tell such a retry from
//! a new client by its sequence alone: a client's *first* write `(A, 1)` looks the same
//! whether `A` is new or was dropped after `(A, 1)` applied. So the ids of dropped sessions
//! are *retired*: kept, without their cached outcome, in a set of at most `max_retired` ids,
//! and the rule for a write tagged `(client_id, sequence)` is
//!
//! - a known session: apply a higher sequence, answer the last one from the cache (if it
//!   carries the same command; a different command reusing the sequence is refused), refuse
//!   an older one ([`ApplyError::StaleSequence`]);
//! - an unknown id with sequence 1 that is not retired: a new session, apply;
//! - a retired id, or an unknown id with a sequence above 1: refused with
//!   [`ApplyError::SessionExpired`]; nothing is applied, and the client learns that the
//!   outcome of its earlier attempts is unknown.
//!
//! This is the dissertation's "reject requests from expired sessions" with the client's
//! random id instead of a registration entry: the first write registers the session. The
//! window it leaves is the retired set's bound: a first write `(A, 1)` whose session was
//! dropped and whose id then aged out of the retired set (after `max_retired` further
//! sessions were dropped) would be applied again if it were retried only then.
//!
//! Memory: at most `max_sessions` sessions (each with its cached outcome) plus `max_retired`
//! ids (about 24 bytes each in memory, up to 10 bytes each in a snapshot); with the defaults,
//! 10,000 sessions and 1,000,000 ids, about 25 MB.
//!
//! Everything here is measured in log indexes and decided in apply order, never by a clock,
//! so every replica drops and retires exactly the same sessions at exactly the same entry.

use super::command::{Outcome, Session};
use super::error::ApplyError;
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many sessions are kept and for how long. Every replica must use the same limits,
/// since they decide which retries are answered from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// At most this many clients are remembered; a new client beyond it evicts the one used
    /// least recently (smallest last-used index; ties, which cannot happen since one index
    /// touches one session, would go to the smaller client id). 0 disables sessions: every
    /// write is applied, retries included.
    pub max_sessions: usize,
    /// A session not used for more than this many log indexes is dropped.
    pub idle_expiry: u64,
    /// At most this many ids of dropped sessions are remembered (oldest dropped first out);
    /// a write from one of them is refused as expired.
    pub max_retired: usize,
}

impl SessionLimits {
    /// Default bound on the number of sessions.
    pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
    /// Default idle expiry, in log indexes.
    pub const DEFAULT_IDLE_EXPIRY: u64 = 1_000_000;
    /// Default bound on the number of retired session ids.
    pub const DEFAULT_MAX_RETIRED: usize = 1_000_000;
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            idle_expiry: Self::DEFAULT_IDLE_EXPIRY,
            max_retired: Self::DEFAULT_MAX_RETIRED,
        }
    }
}

/// One client's remembered state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientSession {
    /// Client id.
    pub(crate) client_id: u64,
    /// Sequence of the last write applied for this client (0: none yet; the session was
    /// opened by a first write that failed and changed nothing).
    pub(crate) last_sequence: u64,
    /// What that write returned.
    pub(crate) outcome: Outcome,
    /// Log index at which the session was last used (applied or answered from cache).
    pub(crate) last_used: LogIndex,
    /// A digest of the command of `last_sequence` ([`command_digest`]), to refuse a different
    /// command reusing the sequence. Not in the session's own snapshot bytes (the snapshot
    /// carries it after them, so older snapshots still decode); `None` when restored from
    /// such an older snapshot, and then not checked.
    #[serde(skip)]
    pub(crate) digest: Option<u64>,
    /// The store revision right after that write applied: what a retry of it is answered
    /// with. Carried after the sessions in the snapshot, like `digest`; 0 when restored from
    /// a snapshot written before it was kept (a retry then gets the current revision).
    #[serde(skip)]
    pub(crate) revision: i64,
}

/// What to do with a proposal that carries a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not seen before: apply it, then [`Sessions::record`] the outcome.
    Apply,
    /// A retry of the last applied write: answer with this outcome and the store revision
    /// right after it (0: unknown), do not apply.
    Duplicate(Outcome, i64),
}

/// FNV-1a over the command's encoded bytes: the same on every replica and platform.
pub(crate) fn command_digest(encoded_command: &[u8]) -> u64 {
    encoded_command
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The session table.
///
/// Invariants: `by_last_used` holds exactly one `(last_used, client_id)` pair per entry of
/// `by_client`, and `by_client.len() <= limits.max_sessions`; `retired` and `retired_order`
/// hold the same ids, none of them in `by_client`, at most `limits.max_retired`.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    limits: SessionLimits,
    by_client: BTreeMap<u64, ClientSession>,
    by_last_used: BTreeSet<(LogIndex, u64)>,
    /// Ids of dropped sessions, for lookup.
    retired: BTreeSet<u64>,
    /// The same ids, in the order they were dropped (the oldest leaves first).
    retired_order: VecDeque<u64>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            by_client: BTreeMap::new(),
            by_last_used: BTreeSet::new(),
            retired: BTreeSet::new(),
            retired_order: VecDeque::new(),
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

    /// The retired ids, oldest first.
    pub(crate) fn retired(&self) -> impl Iterator<Item = u64> + '_ {
        self.retired_order.iter().copied()
    }

    /// Whether `client_id` belongs to a dropped session still remembered as retired.
    pub(crate) fn is_retired(&self, client_id: u64) -> bool {
        self.retired.contains(&client_id)
    }

    /// Drops every session idle for more than `idle_expiry` indexes at `now`.
    pub(crate) fn expire(&mut self, now: LogIndex) {
        while let Some(&(last_used, client_id)) = self.by_last_used.first() {
            if now.saturating_sub(last_used) <= self.limits.idle_expiry {
                break;
            }
            self.by_last_used.pop_first();
            self.by_client.remove(&client_id);
            self.retire(client_id);
        }
    }

    /// Decides what to do with a write tagged `session`, whose command has digest `digest`,
    /// at index `now`. A duplicate counts as a use of the session.
    ///
    /// # Errors
    /// [`ApplyError::StaleSequence`] if the sequence is older than the last applied one,
    /// [`ApplyError::SessionMismatch`] if it is the last one with another command,
    /// [`ApplyError::SessionExpired`] if the session was dropped (see the module doc).
    pub(crate) fn check(
        &mut self,
        session: Session,
        digest: u64,
        now: LogIndex,
    ) -> Result<Verdict, ApplyError> {
        if self.limits.max_sessions == 0 {
            return Ok(Verdict::Apply);
        }
        let Some(known) = self.by_client.get(&session.client_id) else {
            if session.sequence == 1 && !self.is_retired(session.client_id) {
                return Ok(Verdict::Apply);
            }
            return Err(ApplyError::SessionExpired {
                client_id: session.client_id,
                sequence: session.sequence,
            });
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
        if known.digest.is_some_and(|d| d != digest) {
            return Err(ApplyError::SessionMismatch {
                client_id: session.client_id,
                sequence: session.sequence,
            });
        }
        let (outcome, revision) = (known.outcome.clone(), known.revision);
        self.touch(session.client_id, now);
        Ok(Verdict::Duplicate(outcome, revision))
    }

    /// Remembers that the write `session` (command digest `digest`) applied at `now` with
    /// `outcome`, leaving the store at `revision`, evicting the least recently used session
    /// if the table is full.
    pub(crate) fn record(
        &mut self,
        session: Session,
        digest: u64,
        outcome: Outcome,
        revision: i64,
        now: LogIndex,
    ) {
        if let Some(known) = self.by_client.get_mut(&session.client_id) {
            self.by_last_used
                .remove(&(known.last_used, session.client_id));
            known.last_sequence = session.sequence;
            known.outcome = outcome;
            known.last_used = now;
            known.digest = Some(digest);
            known.revision = revision;
            self.by_last_used.insert((now, session.client_id));
            return;
        }
        self.insert(ClientSession {
            client_id: session.client_id,
            last_sequence: session.sequence,
            outcome,
            last_used: now,
            digest: Some(digest),
            revision,
        });
    }

    /// Notes that the write `session` failed at `now` (it changed nothing): the session stays
    /// (or, for a first write, becomes) known with its last applied sequence unchanged, so
    /// the client's next sequence is accepted and a retry of this one is tried again.
    pub(crate) fn record_failure(&mut self, session: Session, now: LogIndex) {
        if self.by_client.contains_key(&session.client_id) {
            self.touch(session.client_id, now);
            return;
        }
        self.insert(ClientSession {
            client_id: session.client_id,
            last_sequence: session.sequence - 1,
            // Never answered: a duplicate needs `sequence == last_sequence`, and sequence 0
            // is refused before it gets here.
            outcome: Outcome::Put,
            last_used: now,
            digest: None,
            revision: 0,
        });
    }

    /// Inserts a session as is (used by `record` and by snapshot restore), evicting the least
    /// recently used sessions while the table is full. Does nothing when sessions are
    /// disabled.
    pub(crate) fn insert(&mut self, session: ClientSession) {
        if self.limits.max_sessions == 0 {
            return;
        }
        if let Some(old) = self.by_client.remove(&session.client_id) {
            self.by_last_used.remove(&(old.last_used, old.client_id));
        }
        while self.by_client.len() >= self.limits.max_sessions {
            let Some((_, evicted)) = self.by_last_used.pop_first() else {
                break;
            };
            self.by_client.remove(&evicted);
            self.retire(evicted);
        }
        self.by_last_used
            .insert((session.last_used, session.client_id));
        self.by_client.insert(session.client_id, session);
    }

    /// Adds `client_id` to the retired ids, dropping the oldest beyond `max_retired`.
    pub(crate) fn retire(&mut self, client_id: u64) {
        if self.limits.max_retired == 0 || !self.retired.insert(client_id) {
            return;
        }
        self.retired_order.push_back(client_id);
        while self.retired_order.len() > self.limits.max_retired {
            if let Some(oldest) = self.retired_order.pop_front() {
                self.retired.remove(&oldest);
            }
        }
    }

    fn touch(&mut self, client_id: u64, now: LogIndex) {
        if let Some(known) = self.by_client.get_mut(&client_id) {
            self.by_last_used.remove(&(known.last_used, client_id));
            known.last_used = now;
            self.by_last_used.insert((now, client_id));
        }
    }
}
