//! The leader's lease clock for held locks, without I/O: which leases run, when each runs out,
//! which expiries were proposed, and the answer to a renewal that came too late. The daemon's
//! driver and the simulator both run this code; they differ only in the time they pass in
//! (`Instant` in the daemon, simulated time as a `Duration` since the start in the simulator).
//!
//! What it may import: `raft` types and `state_machine` (pure), std. No tokio, no clock: `now`
//! is an argument of every call that needs it.
//!
//! # Rules
//! - Only the leader times leases. On leading a new term every held lock gets its full TTL
//!   from that moment: a lease may outlive its TTL across a change of leader, never end early.
//! - An applied grant or keep-alive of the current token restarts that lease; a release or an
//!   expiry drops it. The table follows the state machine, never the outcome alone (a session's
//!   cached outcome may describe an older grant).
//! - A lease whose deadline passed is *due*: the leader proposes `Command::Expire` for it, and
//!   marks it `expiring` only once the core accepted the proposal. A refused proposal (a
//!   leadership transfer in progress) leaves it due, so the next tick proposes it again
//!   (issue 11, defect 3: marking before proposing kept a dead holder's lock forever).
//! - A renewal of a lease whose expiry was already proposed came too late: the expiry will end
//!   the grant right after, so the renewal is refused: a keep-alive with
//!   `StaleToken { current: None }`, a same-holder Acquire with `LockExpiring` (it may wait
//!   for the expiry and then get a new token).
//!
//! # Cost
//! The leases that may become due are also kept ordered by deadline, so a tick costs
//! O(log n + due) however many locks are held (issue 12: scanning every lock on every tick
//! stalled the driver's heartbeats with millions of long-TTL locks). Only gaining
//! leadership walks every held lock, once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Add;
use std::time::Duration;

use crate::raft::Term;
use crate::state_machine::{ApplyError, Command, Outcome, Proposal, StateMachine};

/// Longest lease timed, in ms (the Lock service accepts at most one day); caps the deadline
/// arithmetic whatever a log entry says.
const MAX_LEASE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A point in time the table can add a TTL to: `Instant` in the daemon, `Duration` since the
/// start of the run in the simulator and in tests.
pub(crate) trait LeaseTime: Copy + Ord + Add<Duration, Output = Self> {}
impl<T: Copy + Ord + Add<Duration, Output = T>> LeaseTime for T {}

/// The leader's clock for one held lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease<T> {
    /// The grant this lease belongs to.
    token: u64,
    /// When it runs out on this leader's clock.
    deadline: T,
    /// An `Expire` for it was accepted by the core (in the current term); do not propose
    /// another. Set only after a successful proposal.
    expiring: bool,
}

/// The lease of every held lock, kept only while leading.
#[derive(Debug)]
pub(crate) struct Leases<T> {
    /// The term whose leadership `leases` was built in.
    term: Option<Term>,
    /// By lock name. Invariant: empty unless `term` is `Some`.
    leases: BTreeMap<String, Lease<T>>,
    /// `(deadline, name)` of every lease in `leases` that is not `expiring`, and of nothing
    /// else: what [`Leases::due`] walks, earliest first.
    by_deadline: BTreeSet<(T, String)>,
    /// Mutation switch for the checkers: mark every due lease `expiring` before proposing any
    /// (the bug of issue 11, defect 3).
    pub(crate) mark_before_proposing: bool,
}

impl<T> Default for Leases<T> {
    fn default() -> Self {
        Leases {
            term: None,
            leases: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            mark_before_proposing: false,
        }
    }
}

impl<T: LeaseTime> Leases<T> {
    /// Whether the table is timing leases (this node leads).
    pub(crate) fn leading(&self) -> bool {
        self.term.is_some()
    }

    /// Keeps the table in step with leadership: `leading` is the term this node leads in, if
    /// it leads. Cleared when it does not lead; on leading a new term, every lock held in `sm`
    /// gets its full TTL from `now`. Returns how many leases were restarted, when they were.
    pub(crate) fn sync(
        &mut self,
        leading: Option<Term>,
        sm: &StateMachine,
        now: T,
    ) -> Option<usize> {
        let Some(term) = leading else {
            if self.term.take().is_some() {
                self.leases.clear();
                self.by_deadline.clear();
            }
            return None;
        };
        if self.term == Some(term) {
            return None;
        }
        self.term = Some(term);
        self.leases.clear();
        self.by_deadline.clear();
        for (name, l) in sm.locks() {
            self.insert(name, new_lease(l.token, l.ttl_ms, now));
        }
        Some(self.leases.len())
    }

    /// After a lock command applied to `sm` with `outcome` (`None`: it applied to an error):
    /// restarts or drops the lock's lease to match the state machine. Returns the error to
    /// answer instead of a renewal that came too late (this leader already proposed the
    /// expiry of that very grant).
    pub(crate) fn after_apply(
        &mut self,
        command: &Command,
        outcome: Option<&Outcome>,
        sm: &StateMachine,
        now: T,
    ) -> Option<ApplyError> {
        let name = lock_name(command)?;
        if !self.leading() {
            return None;
        }
        let Some(current) = sm.lock(name) else {
            self.remove(name);
            return None;
        };
        let renewed = renewed_token(command, outcome) == Some(current.token);
        let lease = self.leases.get(name).filter(|l| l.token == current.token);
        if renewed && lease.is_some_and(|l| l.expiring) {
            let (name, token) = (name.to_owned(), current.token);
            // An Acquire asked for the lock, not for this grant: "stale token" would tell a
            // waiter to give up; "expiring" tells it to wait for the expiry and ask again.
            return Some(match command {
                Command::Acquire { .. } => ApplyError::LockExpiring { name, token },
                _ => ApplyError::StaleToken {
                    name,
                    token,
                    current: None,
                },
            });
        }
        if renewed || lease.is_none() {
            self.insert(name, new_lease(current.token, current.ttl_ms, now));
        }
        None
    }

    /// The leases that ran out by `now` and whose expiry is not proposed yet, as
    /// `(lock, token)`, earliest deadline first (name order among equal deadlines).
    pub(crate) fn due(&self, now: T) -> Vec<(String, u64)> {
        if !self.leading() {
            return Vec::new();
        }
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter_map(|(_, name)| Some((name.clone(), self.leases.get(name)?.token)))
            .collect()
    }

    /// Proposes through `propose` the expiry of every due lease, once each, and returns the
    /// `(lock, token)` pairs whose proposal the core accepted. `propose` returns whether the
    /// core accepted; after a refusal (leadership gone or being handed over) nothing more is
    /// proposed and the refused leases stay due for the next call.
    pub(crate) fn propose_due(
        &mut self,
        now: T,
        mut propose: impl FnMut(Vec<u8>) -> bool,
    ) -> Vec<(String, u64)> {
        let due = self.due(now);
        if self.mark_before_proposing {
            for (name, token) in &due {
                self.mark_expiring(name, *token);
            }
        }
        let mut proposed = Vec::new();
        for (name, token) in due {
            if !propose(expire_proposal(&name, token)) {
                break;
            }
            self.mark_expiring(&name, token);
            proposed.push((name, token));
        }
        proposed
    }

    /// The core accepted an `Expire` of `(name, token)`: do not propose it again this term.
    fn mark_expiring(&mut self, name: &str, token: u64) {
        if let Some(l) = self.leases.get_mut(name).filter(|l| l.token == token) {
            if !l.expiring {
                l.expiring = true;
                self.by_deadline.remove(&(l.deadline, name.to_owned()));
            }
        }
    }

    /// Times `lease` for lock `name`, replacing its previous lease.
    fn insert(&mut self, name: &str, lease: Lease<T>) {
        self.remove(name);
        if !lease.expiring {
            self.by_deadline.insert((lease.deadline, name.to_owned()));
        }
        self.leases.insert(name.to_owned(), lease);
    }

    /// Stops timing lock `name`.
    fn remove(&mut self, name: &str) {
        if let Some(old) = self.leases.remove(name) {
            if !old.expiring {
                self.by_deadline.remove(&(old.deadline, name.to_owned()));
            }
        }
    }

    /// How many leases are timed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    /// Checks that `by_deadline` indexes exactly the leases not `expiring`.
    #[cfg(test)]
    pub(crate) fn assert_index_consistent(&self) {
        let expected: BTreeSet<(T, String)> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.expiring)
            .map(|(name, l)| (l.deadline, name.clone()))
            .collect();
        assert!(
            expected == self.by_deadline,
            "the deadline index disagrees with the leases"
        );
    }
}

/// The encoded proposal that ends grant `token` of lock `name`.
fn expire_proposal(name: &str, token: u64) -> Vec<u8> {
    Proposal {
        session: None,
        command: Command::Expire {
            name: name.to_owned(),
            token,
        },
    }
    .encode()
}

/// The lock a command acts on; `None` for key-value commands.
pub(crate) fn lock_name(command: &Command) -> Option<&str> {
    match command {
        Command::Acquire { name, .. }
        | Command::KeepAlive { name, .. }
        | Command::Release { name, .. }
        | Command::Expire { name, .. } => Some(name),
        Command::Put { .. }
        | Command::Delete { .. }
        | Command::Kv { .. }
        | Command::Compact { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. } => None,
    }
}

/// The grant a command's result renewed (a grant or a keep-alive), if any.
fn renewed_token(command: &Command, outcome: Option<&Outcome>) -> Option<u64> {
    match (command, outcome) {
        (_, Some(Outcome::Acquired { token, .. })) => Some(*token),
        (Command::KeepAlive { token, .. }, Some(Outcome::KeptAlive { .. })) => Some(*token),
        _ => None,
    }
}

/// A lease of `ttl_ms` starting at `now`.
fn new_lease<T: LeaseTime>(token: u64, ttl_ms: u64, now: T) -> Lease<T> {
    Lease {
        token,
        deadline: now + Duration::from_millis(ttl_ms.min(MAX_LEASE_MS)),
        expiring: false,
    }
}

#[cfg(test)]
mod tests;
