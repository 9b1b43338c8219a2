//! Step 4 of the Ready loop for one committed entry, without I/O: apply it to the state
//! machine, keep the leader's lease table in step with what it did, and work out the answer
//! owed to the writer waiting on its index. The daemon's driver and the simulator both run
//! this code, in log order, after the lease table was synced for the Ready
//! ([`super::leases::Leases::sync`]).
//!
//! What it may import: `raft` types, `state_machine`, the lease table, std. No tokio, no clock.

use super::leases::{LeaseTime, Leases};
use crate::raft::{Entry, LogIndex, Payload, Term};
use crate::state_machine::{ApplyError, Outcome, Proposal, StateMachine};

/// What applying one committed entry did.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The entry's term (a writer whose proposal had another term lost its entry).
    term: Term,
    /// The decoded proposal; `None` for a no-op (or bytes that do not decode).
    pub(crate) proposal: Option<Proposal>,
    /// The state machine's result; `None` for a no-op.
    pub(crate) result: Option<Result<Outcome, ApplyError>>,
    /// The answer that replaces a successful result: a lock renewal that came too late
    /// (the leader already proposed the expiry of that grant).
    too_late: Option<ApplyError>,
}

/// What the writer of an entry is told.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its command applied with this outcome.
    Applied(Outcome),
    /// Its command applied to this deterministic error.
    Rejected(ApplyError),
    /// Another leader's entry took its index (Raft §5.3): its command was not applied there.
    LeadershipLost,
}

/// Applies `entry` (the next one: `sm.applied_index() + 1`) to `sm`, then updates the lease
/// table with what a lock command did, at time `now`.
pub(crate) fn apply_entry<T: LeaseTime>(
    sm: &mut StateMachine,
    leases: &mut Leases<T>,
    entry: &Entry,
    now: T,
) -> Applied {
    let Payload::Command(data) = &entry.payload else {
        sm.apply_noop(entry.index);
        return Applied {
            term: entry.term,
            proposal: None,
            result: None,
            too_late: None,
        };
    };
    let result = sm.apply(entry.index, data);
    let proposal = Proposal::decode(data).ok();
    let too_late = proposal
        .as_ref()
        .and_then(|p| leases.after_apply(&p.command, result.as_ref().ok(), sm, now));
    Applied {
        term: entry.term,
        proposal,
        result: Some(result),
        too_late,
    }
}

impl Applied {
    /// The answer for a writer who proposed this index in term `proposed_in`.
    pub(crate) fn answer_for(&self, proposed_in: Term) -> Answer {
        if proposed_in != self.term {
            return Answer::LeadershipLost;
        }
        match (&self.too_late, &self.result) {
            (Some(err), _) => Answer::Rejected(err.clone()),
            (None, Some(Ok(outcome))) => Answer::Applied(outcome.clone()),
            (None, Some(Err(err))) => Answer::Rejected(err.clone()),
            // A no-op at the index we proposed at: ours was overwritten.
            (None, None) => Answer::LeadershipLost,
        }
    }

    /// The lock whose holder or token this entry (at `index`) changed: a grant of a new
    /// token (tokens are the index of their grant, so a renewal or a session's cached
    /// outcome, which keep an older token, do not count), a release, or an expiry that ended
    /// a grant. Keep-alives change neither.
    pub(crate) fn changed_lock(&self, index: LogIndex) -> Option<&str> {
        let changed = match &self.result {
            Some(Ok(Outcome::Released | Outcome::Expired { expired: true })) => true,
            Some(Ok(Outcome::Acquired { token, .. })) => *token == index,
            _ => false,
        };
        match &self.proposal {
            Some(p) if changed => super::leases::lock_name(&p.command),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::Command;
    use std::time::Duration;

    fn entry(index: u64, term: Term, command: Option<Command>) -> Entry {
        Entry {
            index,
            term,
            payload: match command {
                Some(command) => Payload::Command(
                    Proposal {
                        session: None,
                        command,
                    }
                    .encode()
                    .into(),
                ),
                None => Payload::Noop,
            },
        }
    }

    fn put(key: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: "v".into(),
            fence: None,
        }
    }

    #[test]
    fn a_writer_of_the_entrys_term_gets_its_outcome_another_term_lost_it() {
        let (mut sm, mut leases) = (StateMachine::new(), Leases::<Duration>::default());
        let a = apply_entry(
            &mut sm,
            &mut leases,
            &entry(1, 2, Some(put("k"))),
            Duration::ZERO,
        );
        assert_eq!(a.answer_for(2), Answer::Applied(Outcome::Put));
        assert_eq!(a.answer_for(1), Answer::LeadershipLost);
        assert_eq!(sm.get("k"), Some("v"));
        let noop = apply_entry(&mut sm, &mut leases, &entry(2, 2, None), Duration::ZERO);
        assert_eq!(noop.answer_for(2), Answer::LeadershipLost);
        assert_eq!(sm.applied_index(), 2);
    }

    /// Holder "h" acquiring lock "l" for 10 ms.
    fn acquire_l() -> Command {
        Command::Acquire {
            name: "l".into(),
            holder: "h".into(),
            ttl_ms: 10,
        }
    }

    /// A leader (term 1) whose lease table proposed the expiry of the grant of lock "l" to
    /// "h" at index 1; returns its state machine, its lease table and the grant's token.
    fn leader_with_an_expiring_grant() -> (StateMachine, Leases<Duration>, u64) {
        let (mut sm, mut leases) = (StateMachine::new(), Leases::<Duration>::default());
        leases.sync(Some(1), &sm, Duration::ZERO);
        let a = apply_entry(
            &mut sm,
            &mut leases,
            &entry(1, 1, Some(acquire_l())),
            Duration::ZERO,
        );
        let Answer::Applied(Outcome::Acquired { token, .. }) = a.answer_for(1) else {
            panic!("not acquired: {a:?}");
        };
        assert_eq!(a.changed_lock(1), Some("l"), "a grant changes the lock");
        let proposed = leases.propose_due(Duration::from_millis(10), |_| true);
        assert_eq!(proposed.len(), 1);
        (sm, leases, token)
    }

    /// The lease table's too-late answer replaces the state machine's outcome.
    #[test]
    fn a_renewal_after_the_expiry_was_proposed_is_answered_stale() {
        let (mut sm, mut leases, token) = leader_with_an_expiring_grant();
        let keep = Command::KeepAlive {
            name: "l".into(),
            token,
        };
        let k = apply_entry(
            &mut sm,
            &mut leases,
            &entry(2, 1, Some(keep)),
            Duration::ZERO,
        );
        assert!(matches!(k.result, Some(Ok(Outcome::KeptAlive { .. }))));
        assert!(matches!(
            k.answer_for(1),
            Answer::Rejected(ApplyError::StaleToken { current: None, .. })
        ));
        assert_eq!(k.changed_lock(2), None);
        let expire = Command::Expire {
            name: "l".into(),
            token,
        };
        let e = apply_entry(
            &mut sm,
            &mut leases,
            &entry(3, 1, Some(expire)),
            Duration::ZERO,
        );
        assert_eq!(e.changed_lock(3), Some("l"));
    }

    /// Issue 12: a same-holder Acquire (a renewal) applied after the leader proposed the
    /// grant's expiry was answered "stale token", which told a waiting Acquire to give up.
    /// It is `LockExpiring` now (the waiter waits for the expiry, then gets a new token),
    /// and it changes no lock (no waiter is woken by it).
    #[test]
    fn a_same_holder_acquire_after_the_expiry_was_proposed_is_told_the_lock_is_expiring() {
        let (mut sm, mut leases, token) = leader_with_an_expiring_grant();
        let again = apply_entry(
            &mut sm,
            &mut leases,
            &entry(2, 1, Some(acquire_l())),
            Duration::ZERO,
        );
        let Answer::Rejected(err) = again.answer_for(1) else {
            panic!("renewed an expiring lease: {again:?}");
        };
        assert_eq!(
            err,
            ApplyError::LockExpiring {
                name: "l".into(),
                token
            }
        );
        assert_eq!(
            err.to_string(),
            "lock l's lease (token 1) is expiring; acquire again to get a new token"
        );
        assert_eq!(again.changed_lock(2), None, "a renewal changes no lock");
    }
}
