//! Step 4 of the Ready loop for one committed entry, without I/O: apply it to the state
//! machine, keep the leader's lease table in step with what it did, and work out the answer
//! owed to the writer waiting on its index. The daemon's driver and the simulator both run
//! this code, in log order, after the lease table was synced for the Ready
//! ([`super::leases::Leases::sync`]).
//!
//! What it may import: `raft` types, `state_machine`, the lease table, std. No tokio, no clock.

use super::leases::{LeaseTime, Leases};
use crate::raft::{Entry, Payload, Term};
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

    /// The lock this entry freed (a release, or an expiry that ended a grant), if any.
    pub(crate) fn freed_lock(&self) -> Option<&str> {
        match (&self.result, &self.proposal) {
            (Some(Ok(Outcome::Released | Outcome::Expired { expired: true })), Some(p)) => {
                super::leases::lock_name(&p.command)
            }
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

    /// The lease table's too-late answer replaces the state machine's outcome.
    #[test]
    fn a_renewal_after_the_expiry_was_proposed_is_answered_stale() {
        let (mut sm, mut leases) = (StateMachine::new(), Leases::<Duration>::default());
        leases.sync(Some(1), &sm, Duration::ZERO);
        let acquire = Command::Acquire {
            name: "l".into(),
            holder: "h".into(),
            ttl_ms: 10,
        };
        let a = apply_entry(
            &mut sm,
            &mut leases,
            &entry(1, 1, Some(acquire)),
            Duration::ZERO,
        );
        let Answer::Applied(Outcome::Acquired { token, .. }) = a.answer_for(1) else {
            panic!("not acquired: {a:?}");
        };
        let proposed = leases.propose_due(Duration::from_millis(10), |_| true);
        assert_eq!(proposed.len(), 1);
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
        assert_eq!(k.freed_lock(), None);
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
        assert_eq!(e.freed_lock(), Some("l"));
    }
}
