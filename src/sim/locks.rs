//! Lock and fencing checks, run at every apply on every node, against an independent replay
//! of the lock commands (a model of what the lock table must hold), plus the cluster-wide
//! timeline of grants and frees that acknowledged fenced writes are checked against.
//!
//! What is checked:
//! - the state machine's lock table equals the replayed one after every apply, and its
//!   outcome is the one the replay predicts (grant, renewal, LockHeld, StaleToken, expiry);
//! - tokens of successive grants of a lock strictly increase, and the same index grants the
//!   same token on every node and in every life of a node;
//! - a fenced write applies only if its token is the lock's current token just before the
//!   apply, and a rejected one changes nothing;
//! - the tokens of the fenced writes that applied never go down, in log order (no write of an
//!   older holder lands after a newer holder's);
//! - a fenced write acknowledged to a client carried the token that was current at the index
//!   it applied at (checked on the client side, against the grant/free timeline).

use std::collections::BTreeMap;

use crate::raft::{LogIndex, NodeId};
use crate::state_machine::{ApplyError, Command, Outcome, Proposal, StateMachine};

/// The lock table as the replay sees it: name -> (holder, token).
type Table = BTreeMap<String, (String, u64)>;

#[derive(Default)]
struct NodeModel {
    locks: Table,
    /// Highest token of a fenced write applied, per lock.
    last_fenced: BTreeMap<String, u64>,
}

/// What was true just before an apply.
pub(crate) struct Before {
    duplicate: bool,
    fence_current: Option<u64>,
    value: Option<String>,
}

#[derive(Default)]
pub(crate) struct LockCheck {
    /// Per lock, what happened at each index: `Some(token)` a grant, `None` a free.
    timeline: BTreeMap<String, BTreeMap<LogIndex, Option<u64>>>,
    models: BTreeMap<NodeId, NodeModel>,
    /// Where each session-tagged fenced write really applied (a retry answered from the
    /// session cache is acknowledged at a later index, where its token may be stale).
    applied_at: BTreeMap<(u64, u64), LogIndex>,
    /// Fenced writes applied / rejected as stale, counted on the node that answered.
    pub(crate) fenced_ok: u64,
    pub(crate) fenced_stale: u64,
    pub(crate) grants: u64,
}

fn written_key(c: &Command) -> Option<(&str, Option<&crate::state_machine::Fence>)> {
    match c {
        Command::Put { key, fence, .. } | Command::Delete { key, fence } => {
            Some((key, fence.as_ref()))
        }
        _ => None,
    }
}

impl LockCheck {
    /// A node restarts with an empty state machine: its replay starts over too.
    pub(crate) fn on_crash(&mut self, id: NodeId) {
        self.models.remove(&id);
    }

    /// A node's state machine was replaced by a snapshot: its replay continues from the
    /// snapshot's lock table (tokens of fenced writes seen so far stay: they only grow).
    pub(crate) fn on_snapshot(&mut self, id: NodeId, sm: &StateMachine) {
        let model = self.models.entry(id).or_default();
        model.locks = sm
            .locks()
            .map(|(n, l)| (n.to_string(), (l.holder.clone(), l.token)))
            .collect();
    }

    pub(crate) fn before(sm: &StateMachine, p: &Proposal) -> Before {
        let duplicate = p.session.is_some_and(|s| {
            sm.session_sequence(s.client_id)
                .is_some_and(|last| s.sequence <= last)
        });
        let (fence_current, value) = match written_key(&p.command) {
            Some((key, Some(f))) => (
                sm.lock(&f.lock).map(|l| l.token),
                sm.get(key).map(String::from),
            ),
            _ => (None, None),
        };
        Before {
            duplicate,
            fence_current,
            value,
        }
    }

    /// Checks one apply of `p` at `index` on node `id`.
    ///
    /// # Errors
    /// A description of the violated property.
    pub(crate) fn after(
        &mut self,
        id: NodeId,
        index: LogIndex,
        p: &Proposal,
        before: &Before,
        result: &Result<Outcome, ApplyError>,
        sm: &StateMachine,
    ) -> Result<(), String> {
        let model = self.models.entry(id).or_default();
        let mut event = None;
        // A write refused by its session (expired, or a reused sequence) executed nothing.
        let refused = matches!(
            result,
            Err(ApplyError::SessionExpired { .. } | ApplyError::SessionMismatch { .. })
        );
        if !before.duplicate && !refused {
            event = replay(model, index, &p.command, result, before, sm)
                .map_err(|e| format!("node {id}, index {index}: {e}"))?;
        }
        let held: Table = sm
            .locks()
            .map(|(n, l)| (n.to_string(), (l.holder.clone(), l.token)))
            .collect();
        if held != model.locks {
            return Err(format!(
                "node {id}, index {index}: lock table {held:?} differs from the replayed history {:?} after {:?}",
                model.locks, p.command
            ));
        }
        if let (Some(s), false, Ok(_), Some((_, Some(_)))) =
            (p.session, before.duplicate, result, written_key(&p.command))
        {
            self.applied_at
                .entry((s.client_id, s.sequence))
                .or_insert(index);
        }
        if let Some((name, ev)) = event {
            self.record(&name, index, ev)
                .map_err(|e| format!("node {id}: {e}"))?;
        }
        Ok(())
    }

    fn record(&mut self, name: &str, index: LogIndex, ev: Option<u64>) -> Result<(), String> {
        let line = self.timeline.entry(name.to_string()).or_default();
        if let Some(&seen) = line.get(&index) {
            if seen != ev {
                return Err(format!(
                    "lock {name} at index {index}: {ev:?} here, {seen:?} on another node or life"
                ));
            }
            return Ok(());
        }
        if let Some(token) = ev {
            self.grants += 1;
            let earlier = line.range(..index).rev().find_map(|(_, t)| *t);
            let later = line.range(index + 1..).find_map(|(_, t)| *t);
            if earlier.is_some_and(|e| e >= token) || later.is_some_and(|l| l <= token) {
                return Err(format!(
                    "lock {name}: grant at index {index} has token {token}, but grants before/after it have tokens {earlier:?}/{later:?}: tokens must strictly increase"
                ));
            }
        }
        line.insert(index, ev);
        Ok(())
    }

    /// The index where the fenced write of session (`client_id`, `sequence`) applied, and the
    /// token of `lock` that was current there (every node that applied an index recorded the
    /// events up to it).
    pub(crate) fn applied_with(
        &self,
        client_id: u64,
        sequence: u64,
        lock: &str,
    ) -> Option<(LogIndex, Option<u64>)> {
        let index = *self.applied_at.get(&(client_id, sequence))?;
        Some((index, self.current_at(lock, index)))
    }

    fn current_at(&self, lock: &str, index: LogIndex) -> Option<u64> {
        self.timeline
            .get(lock)
            .and_then(|l| l.range(..=index).next_back())
            .and_then(|(_, t)| *t)
    }
}

/// Replays one (non-duplicate) command on the model, checks the state machine's outcome
/// against it, and returns the grant (`Some(token)`) or free (`None`) it caused, if any.
fn replay(
    m: &mut NodeModel,
    index: LogIndex,
    c: &Command,
    result: &Result<Outcome, ApplyError>,
    before: &Before,
    sm: &StateMachine,
) -> Result<Option<(String, Option<u64>)>, String> {
    let current = |m: &NodeModel, name: &str| m.locks.get(name).map(|l| l.1);
    let mismatch = |want: &str| format!("{c:?} should give {want}, got {result:?}");
    match c {
        Command::Acquire { name, holder, .. } => match m.locks.get(name) {
            None => {
                if !matches!(result, Ok(Outcome::Acquired { token, .. }) if *token == index) {
                    return Err(mismatch(&format!("a grant with token {index}")));
                }
                m.locks.insert(name.clone(), (holder.clone(), index));
                Ok(Some((name.clone(), Some(index))))
            }
            Some((h, t)) if h == holder => {
                if !matches!(result, Ok(Outcome::Acquired { token, .. }) if token == t) {
                    return Err(mismatch(&format!("a renewal keeping token {t}")));
                }
                Ok(None)
            }
            Some((_, t)) => {
                if !matches!(result, Err(ApplyError::LockHeld { token, .. }) if token == t) {
                    return Err(mismatch(&format!("LockHeld (token {t})")));
                }
                Ok(None)
            }
        },
        Command::KeepAlive { name, token } => {
            let ok = current(m, name) == Some(*token);
            if ok != matches!(result, Ok(Outcome::KeptAlive { .. })) {
                return Err(mismatch(if ok { "KeptAlive" } else { "StaleToken" }));
            }
            Ok(None)
        }
        Command::Release { name, token } | Command::Expire { name, token } => {
            let ok = current(m, name) == Some(*token);
            let got = match result {
                Ok(Outcome::Released | Outcome::Expired { expired: true }) => true,
                Ok(Outcome::Expired { expired: false }) | Err(ApplyError::StaleToken { .. }) => {
                    false
                }
                _ => return Err(mismatch("Released, Expired or StaleToken")),
            };
            if ok != got {
                return Err(mismatch(if ok { "the lock freed" } else { "a no-op" }));
            }
            if !ok {
                return Ok(None);
            }
            m.locks.remove(name);
            Ok(Some((name.clone(), None)))
        }
        Command::Put { key, .. } | Command::Delete { key, .. } => {
            let Some(f) = written_key(c).and_then(|(_, f)| f) else {
                return Ok(None);
            };
            let want = current(m, &f.lock);
            if before.fence_current != want {
                return Err(format!(
                    "lock {} had token {:?} in the state machine but {want:?} in the replay",
                    f.lock, before.fence_current
                ));
            }
            let applied = result.is_ok();
            if applied != (want == Some(f.token)) {
                return Err(format!(
                    "fenced write {c:?} with token {} applied={applied}, but the current token of {} was {want:?}",
                    f.token, f.lock
                ));
            }
            if applied {
                let last = m.last_fenced.entry(f.lock.clone()).or_insert(0);
                if f.token < *last {
                    return Err(format!(
                        "fenced write with token {} of lock {} applied after one with token {last}",
                        f.token, f.lock
                    ));
                }
                *last = f.token;
            } else if sm.get(key) != before.value.as_deref() {
                return Err(format!(
                    "rejected fenced write {c:?} changed {key} from {:?} to {:?}",
                    before.value,
                    sm.get(key)
                ));
            }
            Ok(None)
        }
        // The lock clients send neither (the key-space clients' writes are checked by the
        // linearizability checker and the replica comparison).
        Command::Kv { .. }
        | Command::Compact { .. }
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. } => Ok(None),
    }
}
