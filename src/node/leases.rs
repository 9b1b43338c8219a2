//! The leader's lease clock, without I/O, for both kinds of lease: held locks (the Lock
//! service's) and leases on keys (etcd's). One table times both ([`Timed`]): which leases run,
//! when each runs out, which expiries were proposed, and the answer to a renewal that came
//! too late. The daemon's
//! driver and the simulator both run this code; they differ only in the time they pass in
//! (`Instant` in the daemon, simulated time as a `Duration` since the start in the simulator).
//!
//! What it may import: `raft` types and `state_machine` (pure), std. No tokio, no clock: `now`
//! is an argument of every call that needs it.
//!
//! # Rules
//! - Only the leader times leases. On leading a new term every held lock and every lease on
//!   keys gets its full TTL from that moment: a lease may outlive its TTL across a change of
//!   leader, never end early. (etcd 3.5 does the same on promotion; its optional checkpoints
//!   of the remaining TTL are not implemented.)
//! - An applied grant or keep-alive of the current token restarts that lease; a release or an
//!   expiry drops it. The table follows the state machine, never the outcome alone (a session's
//!   cached outcome may describe an older grant).
//! - A lease on keys is renewed by the leader alone, without a log entry (etcd's
//!   LeaseKeepAlive): [`Leases::renew`] restarts its full TTL, and refuses a lease whose revoke
//!   was already proposed. A grant starts its lease; a revoke drops it.
//! - A lease whose deadline passed is *due*: the leader proposes `Command::Expire` for a lock,
//!   `Command::LeaseRevoke` for a lease on keys, and
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
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::raft::Term;
use crate::state_machine::{ApplyError, Command, Outcome, Proposal, StateMachine};

/// Longest lock lease timed, in ms (the Lock service accepts at most one day); caps the
/// deadline arithmetic whatever a log entry says. Leases on keys have etcd's own cap.
const MAX_LEASE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A point in time the table can add a TTL to: `Instant` in the daemon, `Duration` since the
/// start of the run in the simulator and in tests.
pub(crate) trait LeaseTime:
    Copy + Ord + Add<Duration, Output = Self> + Sub<Output = Duration>
{
}
impl<T: Copy + Ord + Add<Duration, Output = T> + Sub<Output = Duration>> LeaseTime for T {}

/// What a lease belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timed {
    /// The lock of this name (its grant is the lease's token).
    Lock(String),
    /// The lease on keys of this id (etcd's; its token is always 0).
    KeyLease(i64),
}

impl Timed {
    /// The lock `name`.
    pub(crate) fn lock(name: &str) -> Self {
        Timed::Lock(name.to_owned())
    }
}

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timed::Lock(name) => write!(f, "lock {name}"),
            Timed::KeyLease(id) => write!(f, "lease {id}"),
        }
    }
}

/// The leader's clock for one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease<T> {
    /// The grant this lease belongs to (a lock's token; 0 for a lease on keys, whose id
    /// names it alone).
    token: u64,
    /// The TTL it restarts with.
    ttl: Duration,
    /// When it runs out on this leader's clock.
    deadline: T,
    /// An `Expire` for it was accepted by the core (in the current term); do not propose
    /// another. Set only after a successful proposal.
    expiring: bool,
}

/// The lease of every held lock and every lease on keys, kept only while leading.
#[derive(Debug)]
pub(crate) struct Leases<T> {
    /// The term whose leadership `leases` was built in.
    term: Option<Term>,
    /// By what they time. Invariant: empty unless `term` is `Some`.
    leases: BTreeMap<Timed, Lease<T>>,
    /// `(deadline, what)` of every lease in `leases` that is not `expiring`, and of nothing
    /// else: what [`Leases::due`] walks, earliest first.
    by_deadline: BTreeSet<(T, Timed)>,
    /// Mutation switch for the checkers: mark every due lease `expiring` before proposing any
    /// (the bug of issue 11, defect 3).
    pub(crate) mark_before_proposing: bool,
    /// Mutation switch for the simulator's checkers: a new leader does not restart the
    /// leases on keys, it starts them with nothing left (so it revokes them at once, however
    /// recently the last leader renewed them).
    pub(crate) key_leases_not_restarted: bool,
}

impl<T> Default for Leases<T> {
    fn default() -> Self {
        Leases {
            term: None,
            leases: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            mark_before_proposing: false,
            key_leases_not_restarted: false,
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
    /// and every lease on keys gets its full TTL from `now`. Returns how many leases were
    /// restarted, when they were.
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
            self.insert(Timed::lock(name), new_lease(l.token, l.ttl_ms, now));
        }
        for (id, ttl) in sm.key_leases().iter() {
            let mut lease = key_lease(ttl, now);
            if self.key_leases_not_restarted {
                lease.deadline = now;
            }
            self.insert(Timed::KeyLease(id), lease);
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
        if !self.leading() {
            return None;
        }
        match (command, outcome) {
            (Command::LeaseGrant { .. }, Some(Outcome::LeaseGranted { id, .. })) => {
                // The state machine's lease, not the outcome's: a session's cached outcome may
                // name a lease revoked since.
                if let Some(ttl) = sm.key_leases().ttl(*id) {
                    self.insert(Timed::KeyLease(*id), key_lease(ttl, now));
                }
                return None;
            }
            (Command::LeaseRevoke { id }, _) => {
                if sm.key_leases().ttl(*id).is_none() {
                    self.remove(&Timed::KeyLease(*id));
                }
                return None;
            }
            _ => {}
        }
        let name = lock_name(command)?;
        let Some(current) = sm.lock(name) else {
            self.remove(&Timed::lock(name));
            return None;
        };
        let renewed = renewed_token(command, outcome) == Some(current.token);
        let key = Timed::lock(name);
        let lease = self.leases.get(&key).filter(|l| l.token == current.token);
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
            self.insert(key, new_lease(current.token, current.ttl_ms, now));
        }
        None
    }

    /// etcd's LeaseKeepAlive on the leader: restarts lease `id`'s full TTL from `now` and
    /// returns that TTL in seconds (the granted one). `None` if this node does not lead, the lease does not
    /// exist, or its revoke was already proposed (it ends right after: too late).
    pub(crate) fn renew(&mut self, id: i64, now: T) -> Option<i64> {
        let key = Timed::KeyLease(id);
        let lease = *self.leases.get(&key).filter(|l| !l.expiring)?;
        self.insert(
            key,
            Lease {
                deadline: now + lease.ttl,
                ..lease
            },
        );
        i64::try_from(lease.ttl.as_secs()).ok()
    }

    /// The time lease `id` has left on this leader's clock (zero once due), if it is timed.
    pub(crate) fn remaining(&self, id: i64, now: T) -> Option<Duration> {
        let lease = self.leases.get(&Timed::KeyLease(id))?;
        Some(if lease.deadline > now {
            lease.deadline - now
        } else {
            Duration::ZERO
        })
    }

    /// The leases that ran out by `now` and whose expiry is not proposed yet, as
    /// `(what, token)`, earliest deadline first (locks first, by name, then leases on keys,
    /// by id, among equal deadlines).
    pub(crate) fn due(&self, now: T) -> Vec<(Timed, u64)> {
        if !self.leading() {
            return Vec::new();
        }
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter_map(|(_, what)| Some((what.clone(), self.leases.get(what)?.token)))
            .collect()
    }

    /// Proposes through `propose` the expiry of every due lease (an `Expire` for a lock, a
    /// `LeaseRevoke` for a lease on keys), once each, and returns the `(what, token)` pairs
    /// whose proposal the core accepted. `propose` returns whether the
    /// core accepted; after a refusal (leadership gone or being handed over) nothing more is
    /// proposed and the refused leases stay due for the next call.
    pub(crate) fn propose_due(
        &mut self,
        now: T,
        mut propose: impl FnMut(Vec<u8>) -> bool,
    ) -> Vec<(Timed, u64)> {
        let due = self.due(now);
        if self.mark_before_proposing {
            for (what, token) in &due {
                self.mark_expiring(what, *token);
            }
        }
        let mut proposed = Vec::new();
        for (what, token) in due {
            if !propose(expire_proposal(&what, token)) {
                break;
            }
            self.mark_expiring(&what, token);
            proposed.push((what, token));
        }
        proposed
    }

    /// The core accepted the expiry of `(what, token)`: do not propose it again this term.
    fn mark_expiring(&mut self, what: &Timed, token: u64) {
        if let Some(l) = self.leases.get_mut(what).filter(|l| l.token == token) {
            if !l.expiring {
                l.expiring = true;
                self.by_deadline.remove(&(l.deadline, what.clone()));
            }
        }
    }

    /// Times `lease` for `what`, replacing its previous lease.
    fn insert(&mut self, what: Timed, lease: Lease<T>) {
        self.remove(&what);
        if !lease.expiring {
            self.by_deadline.insert((lease.deadline, what.clone()));
        }
        self.leases.insert(what, lease);
    }

    /// Stops timing `what`.
    fn remove(&mut self, what: &Timed) {
        if let Some(old) = self.leases.remove(what) {
            if !old.expiring {
                self.by_deadline.remove(&(old.deadline, what.clone()));
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
        let expected: BTreeSet<(T, Timed)> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.expiring)
            .map(|(what, l)| (l.deadline, what.clone()))
            .collect();
        assert!(
            expected == self.by_deadline,
            "the deadline index disagrees with the leases"
        );
    }
}

/// The encoded proposal that ends `what`: grant `token` of a lock, or a lease on keys.
fn expire_proposal(what: &Timed, token: u64) -> Vec<u8> {
    let command = match what {
        Timed::Lock(name) => Command::Expire {
            name: name.clone(),
            token,
        },
        Timed::KeyLease(id) => Command::LeaseRevoke { id: *id },
    };
    Proposal {
        session: None,
        command,
    }
    .encode()
}

/// The lease of a lease on keys granted `ttl` seconds, starting at `now`. etcd's largest TTL
/// (9e9 s) is timed as it is, not capped like a lock's; a negative TTL (never proposed by the
/// front end, which raises it to the minimum) runs out at once.
fn key_lease<T: LeaseTime>(ttl: i64, now: T) -> Lease<T> {
    let ttl = ttl.clamp(0, crate::state_machine::MAX_LEASE_TTL);
    let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    Lease {
        token: 0,
        ttl,
        deadline: now + ttl,
        expiring: false,
    }
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
    let ttl = Duration::from_millis(ttl_ms.min(MAX_LEASE_MS));
    Lease {
        token,
        ttl,
        deadline: now + ttl,
        expiring: false,
    }
}

#[cfg(test)]
mod tests;
