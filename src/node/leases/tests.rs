use super::*;

const TERM: Term = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A state machine and a leader's lease table over it, with the index of the next entry.
struct Leader {
    sm: StateMachine,
    leases: Leases<Duration>,
    next: u64,
    /// Check the deadline index against the leases after every apply (O(n) each).
    check_index: bool,
}

impl Leader {
    fn new() -> Leader {
        let mut l = Leader {
            sm: StateMachine::new(),
            leases: Leases::default(),
            next: 1,
            check_index: true,
        };
        l.leases.sync(Some(TERM), &l.sm, ms(0));
        l
    }

    /// Applies `command` at the next index at time `now`, as the driver does: the state
    /// machine first, then the lease table. Returns the state machine's result, or the
    /// too-late answer that replaces it.
    fn apply(&mut self, command: Command, now: Duration) -> Result<Outcome, ApplyError> {
        let data = Proposal {
            session: None,
            command: command.clone(),
        }
        .encode();
        let result = self.sm.apply(self.next, &data);
        self.next += 1;
        let too_late = self
            .leases
            .after_apply(&command, result.as_ref().ok(), &self.sm, now);
        if self.check_index {
            self.leases.assert_index_consistent();
        }
        match too_late {
            Some(too_late) => Err(too_late),
            None => result,
        }
    }

    /// Acquires `name` for `ttl` ms at `now`; returns the token.
    fn acquire(&mut self, name: &str, ttl: u64, now: Duration) -> u64 {
        let acquire = Command::Acquire {
            name: name.into(),
            holder: format!("holder of {name}"),
            ttl_ms: ttl,
        };
        match self.apply(acquire, now) {
            Ok(Outcome::Acquired { token, .. }) => token,
            other => panic!("acquire {name}: {other:?}"),
        }
    }
}

fn expire(name: &str, token: u64) -> Command {
    Command::Expire {
        name: name.into(),
        token,
    }
}

fn keep_alive(name: &str, token: u64) -> Command {
    Command::KeepAlive {
        name: name.into(),
        token,
    }
}

/// The `(name, token)` of every `Expire` in `proposals`.
fn expiries(proposals: &[Vec<u8>]) -> Vec<(Timed, u64)> {
    proposals
        .iter()
        .map(|p| match Proposal::decode(p).map(|p| p.command) {
            Ok(Command::Expire { name, token }) => (Timed::Lock(name), token),
            Ok(Command::LeaseRevoke { id }) => (Timed::KeyLease(id), 0),
            other => panic!("not an expiry: {other:?}"),
        })
        .collect()
}

#[test]
fn a_lease_is_due_at_its_deadline_not_before() {
    let mut l = Leader::new();
    let t = l.acquire("a", 300, ms(10));
    assert_eq!(l.leases.due(ms(309)), vec![]);
    assert_eq!(l.leases.due(ms(310)), vec![(Timed::lock("a"), t)]);
}

#[test]
fn a_due_lease_is_proposed_once() {
    let mut l = Leader::new();
    let t = l.acquire("a", 100, ms(0));
    let mut sent = Vec::new();
    let accepted = l.leases.propose_due(ms(100), |p| {
        sent.push(p);
        true
    });
    assert_eq!(accepted, vec![(Timed::lock("a"), t)]);
    assert_eq!(expiries(&sent), vec![(Timed::lock("a"), t)]);
    let again = l.leases.propose_due(ms(500), |p| {
        sent.push(p);
        true
    });
    assert!(again.is_empty(), "proposed twice: {again:?}");
    assert_eq!(sent.len(), 1);
}

/// Issue 11, defect 3: the core refuses proposals while a leadership transfer is in progress.
/// The refused leases must stay due, so that the tick after an abandoned transfer proposes
/// them. With the old marking (every due lease marked before any was proposed) the lock
/// never expired for the rest of the term.
#[test]
fn a_refused_expiry_leaves_the_lease_due_for_the_next_tick() {
    let mut l = Leader::new();
    let a = l.acquire("a", 100, ms(0));
    let b = l.acquire("b", 100, ms(0));
    let refused = l.leases.propose_due(ms(100), |_| false);
    assert!(refused.is_empty());
    let both = vec![(Timed::lock("a"), a), (Timed::lock("b"), b)];
    assert_eq!(
        l.leases.due(ms(110)),
        both,
        "refused expiries no longer due"
    );
    let mut sent = Vec::new();
    l.leases.propose_due(ms(110), |p| {
        sent.push(p);
        true
    });
    assert_eq!(expiries(&sent), both);
}

/// The mutation switch re-introduces the old marking, and the test above would catch it.
#[test]
fn mutation_mark_before_proposing_loses_a_refused_expiry() {
    let mut l = Leader::new();
    l.leases.mark_before_proposing = true;
    l.acquire("a", 100, ms(0));
    l.leases.propose_due(ms(100), |_| false);
    assert_eq!(l.leases.due(ms(110)), vec![]);
}

/// A refusal stops the round: what comes after it is not proposed (the core would refuse it
/// too), and stays due; what was accepted before it is not proposed again.
#[test]
fn a_refusal_midway_keeps_the_rest_due() {
    let mut l = Leader::new();
    let a = l.acquire("a", 100, ms(0));
    let b = l.acquire("b", 100, ms(0));
    let mut calls = 0;
    let accepted = l.leases.propose_due(ms(100), |_| {
        calls += 1;
        calls == 1
    });
    assert_eq!(accepted, vec![(Timed::lock("a"), a)]);
    assert_eq!(calls, 2);
    assert_eq!(l.leases.due(ms(100)), vec![(Timed::lock("b"), b)]);
}

#[test]
fn a_keep_alive_restarts_the_lease() {
    let mut l = Leader::new();
    let t = l.acquire("a", 100, ms(0));
    assert!(matches!(
        l.apply(keep_alive("a", t), ms(80)),
        Ok(Outcome::KeptAlive { .. })
    ));
    assert_eq!(l.leases.due(ms(179)), vec![]);
    assert_eq!(l.leases.due(ms(180)), vec![(Timed::lock("a"), t)]);
}

/// A keep-alive applied after this leader proposed the grant's expiry is answered
/// `StaleToken { current: None }` (the expiry ends the grant right after), and does not
/// restart the lease.
#[test]
fn a_renewal_after_the_expiry_was_proposed_came_too_late() {
    let mut l = Leader::new();
    let t = l.acquire("a", 100, ms(0));
    l.leases.propose_due(ms(100), |_| true);
    match l.apply(keep_alive("a", t), ms(101)) {
        Err(ApplyError::StaleToken {
            name,
            token,
            current: None,
        }) => assert_eq!((name.as_str(), token), ("a", t)),
        other => panic!("renewal after the expiry: {other:?}"),
    }
    assert_eq!(l.leases.due(ms(500)), vec![], "proposed a second expiry");
    assert!(matches!(
        l.apply(expire("a", t), ms(102)),
        Ok(Outcome::Expired { expired: true })
    ));
    assert_eq!(l.leases.len(), 0);
}

/// Without a proposed expiry (a refused one included) a renewal is an ordinary renewal.
#[test]
fn a_renewal_after_a_refused_expiry_is_kept() {
    let mut l = Leader::new();
    let t = l.acquire("a", 100, ms(0));
    l.leases.propose_due(ms(100), |_| false);
    assert!(matches!(
        l.apply(keep_alive("a", t), ms(101)),
        Ok(Outcome::KeptAlive { .. })
    ));
    assert_eq!(l.leases.due(ms(200)), vec![]);
    assert_eq!(l.leases.due(ms(201)), vec![(Timed::lock("a"), t)]);
}

#[test]
fn a_release_or_an_expiry_drops_the_lease() {
    let mut l = Leader::new();
    let a = l.acquire("a", 100, ms(0));
    let b = l.acquire("b", 100, ms(0));
    let release = Command::Release {
        name: "a".into(),
        token: a,
    };
    assert!(matches!(l.apply(release, ms(5)), Ok(Outcome::Released)));
    assert!(matches!(
        l.apply(expire("b", b), ms(5)),
        Ok(Outcome::Expired { expired: true })
    ));
    assert_eq!(l.leases.len(), 0);
    assert_eq!(l.leases.due(ms(1_000)), vec![]);
}

/// A new grant of a lock whose old grant was being expired starts a fresh lease.
#[test]
fn a_new_grant_replaces_an_expiring_lease() {
    let mut l = Leader::new();
    let old = l.acquire("a", 100, ms(0));
    l.leases.propose_due(ms(100), |_| true);
    l.apply(expire("a", old), ms(101)).ok();
    let new = l.acquire("a", 100, ms(150));
    assert!(new > old);
    assert_eq!(l.leases.due(ms(249)), vec![]);
    assert_eq!(l.leases.due(ms(250)), vec![(Timed::lock("a"), new)]);
}

/// A new leader gives every held lock its full TTL from the moment it leads; a follower
/// times nothing; the same term does not restart anything.
#[test]
fn leadership_restarts_every_lease_and_losing_it_clears_them() {
    let mut l = Leader::new();
    let t = l.acquire("a", 100, ms(0));
    l.leases.propose_due(ms(100), |_| true);
    assert_eq!(l.leases.sync(Some(TERM), &l.sm, ms(150)), None);
    assert_eq!(l.leases.due(ms(1_000)), vec![], "same term restarted");
    assert_eq!(l.leases.sync(None, &l.sm, ms(200)), None);
    assert!(!l.leases.leading());
    assert_eq!(l.leases.due(ms(1_000)), vec![]);
    assert_eq!(l.leases.sync(Some(TERM + 1), &l.sm, ms(300)), Some(1));
    assert_eq!(l.leases.due(ms(399)), vec![]);
    assert_eq!(l.leases.due(ms(400)), vec![(Timed::lock("a"), t)]);
}

/// A follower applying lock commands times nothing.
#[test]
fn a_follower_times_no_lease() {
    let mut l = Leader::new();
    l.leases.sync(None, &l.sm, ms(0));
    l.acquire("a", 100, ms(0));
    assert_eq!(l.leases.len(), 0);
    assert_eq!(l.leases.propose_due(ms(1_000), |_| true), vec![]);
}

/// A session's cached outcome of an older grant (a retried Acquire) does not restart the
/// current grant's lease.
#[test]
fn a_cached_outcome_of_an_older_grant_renews_nothing() {
    let mut l = Leader::new();
    let current = l.acquire("a", 100, ms(0));
    let stale = Some(Outcome::Acquired {
        token: current - 1,
        ttl_ms: 100,
    });
    let acquire = Command::Acquire {
        name: "a".into(),
        holder: "h".into(),
        ttl_ms: 100,
    };
    assert!(l
        .leases
        .after_apply(&acquire, stale.as_ref(), &l.sm, ms(90))
        .is_none());
    assert_eq!(l.leases.due(ms(100)), vec![(Timed::lock("a"), current)]);
}

/// A TTL beyond any legal one cannot overflow the deadline.
#[test]
fn a_huge_ttl_is_capped() {
    let mut l = Leader::new();
    l.acquire("a", u64::MAX, ms(0));
    assert_eq!(l.leases.due(ms(MAX_LEASE_MS - 1)), vec![]);
    assert_eq!(l.leases.due(ms(MAX_LEASE_MS)).len(), 1);
}

/// The command an expiry proposal of `what` carries.
fn expiry(what: &Timed, token: u64) -> Command {
    match what {
        Timed::Lock(name) => expire(name, token),
        Timed::KeyLease(id) => Command::LeaseRevoke { id: *id },
    }
}

/// Grants lease on keys `id` with `ttl` seconds at `now`.
fn grant(l: &mut Leader, id: i64, ttl: i64, now: Duration) {
    assert_eq!(
        l.apply(Command::LeaseGrant { id, ttl }, now),
        Ok(Outcome::LeaseGranted { id, ttl })
    );
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_lease_on_keys_is_due_at_its_ttl_and_its_revoke_proposed_once() {
    let mut l = Leader::new();
    grant(&mut l, 7, 5, ms(0));
    assert_eq!(l.leases.remaining(7, secs(2)), Some(secs(3)));
    assert_eq!(l.leases.due(secs(5) - ms(1)), vec![]);
    let mut sent = Vec::new();
    let proposed = l.leases.propose_due(secs(5), |p| {
        sent.push(p);
        true
    });
    assert_eq!(proposed, vec![(Timed::KeyLease(7), 0)]);
    assert_eq!(expiries(&sent), vec![(Timed::KeyLease(7), 0)]);
    assert!(
        l.leases.propose_due(secs(9), |_| true).is_empty(),
        "proposed twice"
    );
    assert_eq!(l.leases.remaining(7, secs(9)), Some(Duration::ZERO));
}

#[test]
fn a_keep_alive_restarts_the_full_ttl_and_is_refused_once_the_revoke_was_proposed() {
    let mut l = Leader::new();
    grant(&mut l, 7, 5, ms(0));
    assert_eq!(l.leases.renew(7, secs(4)), Some(5));
    assert_eq!(
        l.leases.due(secs(9) - ms(1)),
        vec![],
        "renewed at 4 s for 5 s"
    );
    assert_eq!(l.leases.due(secs(9)), vec![(Timed::KeyLease(7), 0)]);
    assert_eq!(l.leases.renew(8, secs(4)), None, "no such lease");
    // A refused proposal keeps the lease renewable; an accepted one does not.
    assert!(l.leases.propose_due(secs(9), |_| false).is_empty());
    assert_eq!(l.leases.renew(7, secs(9)), Some(5));
    l.leases.propose_due(secs(14), |_| true);
    assert_eq!(
        l.leases.renew(7, secs(14)),
        None,
        "renewed a lease being revoked"
    );
}

/// A new leader gives every lease on keys its full TTL from the moment it leads, however
/// much of it the old leader had used.
#[test]
fn a_new_term_restarts_every_lease_on_keys_with_its_full_ttl() {
    let mut l = Leader::new();
    grant(&mut l, 7, 5, ms(0));
    l.acquire("a", 60_000, ms(0));
    l.leases.sync(None, &l.sm, secs(4));
    assert_eq!(
        l.leases.renew(7, secs(4)),
        None,
        "a follower renews nothing"
    );
    assert_eq!(l.leases.len(), 0);
    assert_eq!(l.leases.sync(Some(TERM + 1), &l.sm, secs(6)), Some(2));
    assert_eq!(l.leases.due(secs(11) - ms(1)), vec![]);
    assert_eq!(l.leases.due(secs(11)), vec![(Timed::KeyLease(7), 0)]);
}

/// etcd's largest TTL is timed as it is (a lock's cap of 30 days does not apply), and a
/// keep-alive answers the granted TTL.
#[test]
fn a_lease_on_keys_of_etcds_largest_ttl_is_not_capped() {
    let mut l = Leader::new();
    let max = crate::state_machine::MAX_LEASE_TTL;
    grant(&mut l, 7, max, ms(0));
    assert_eq!(l.leases.due(ms(MAX_LEASE_MS) + secs(1)), vec![]);
    assert_eq!(l.leases.renew(7, secs(1)), Some(max));
}

/// A grant answered from a session's cache (the lease since revoked) times nothing.
#[test]
fn a_grant_outcome_for_a_lease_that_no_longer_exists_times_nothing() {
    let mut l = Leader::new();
    let granted = Outcome::LeaseGranted { id: 7, ttl: 5 };
    let grant = Command::LeaseGrant { id: 7, ttl: 5 };
    assert_eq!(
        l.leases.after_apply(&grant, Some(&granted), &l.sm, ms(0)),
        None
    );
    assert_eq!(l.leases.len(), 0);
}

#[test]
fn a_revoke_stops_timing_the_lease() {
    let mut l = Leader::new();
    grant(&mut l, 7, 5, ms(0));
    assert_eq!(
        l.apply(Command::LeaseRevoke { id: 7 }, secs(1)),
        Ok(Outcome::LeaseRevoked { deleted: 0 })
    );
    assert_eq!(l.leases.len(), 0);
    assert_eq!(l.leases.renew(7, secs(2)), None);
    assert_eq!(l.leases.due(secs(60)), vec![]);
}

/// What `due` must return, found the slow way: every lease not expiring whose deadline
/// passed, earliest first.
fn due_by_scanning(leases: &Leases<Duration>, now: Duration) -> Vec<(Timed, u64)> {
    let mut due: Vec<(Duration, Timed, u64)> = leases
        .leases
        .iter()
        .filter(|(_, l)| !l.expiring && l.deadline <= now)
        .map(|(name, l)| (l.deadline, name.clone(), l.token))
        .collect();
    due.sort();
    due.into_iter()
        .map(|(_, name, token)| (name, token))
        .collect()
}

proptest::proptest! {
    /// Random grants, renewals, releases, expiry rounds (some refused) and leadership
    /// changes: the deadline index always answers `due` exactly as a scan of every lease.
    #[test]
    fn the_deadline_index_answers_as_a_scan_of_every_lease(
        steps in proptest::collection::vec((0u8..9, 0u8..5, 1u64..400, 1u64..50), 1..120),
    ) {
        let mut l = Leader::new();
        let mut now = ms(0);
        let mut term = TERM;
        for (op, lock, ttl, dt) in steps {
            now += ms(dt);
            let name = format!("L{lock}");
            let token = l.sm.lock(&name).map_or(1, |info| info.token);
            match op {
                0 => {
                    let _ = l.apply(
                        Command::Acquire { name, holder: format!("h{}", ttl % 2), ttl_ms: ttl },
                        now,
                    );
                }
                1 => {
                    let _ = l.apply(keep_alive(&name, token), now);
                }
                2 => {
                    let _ = l.apply(Command::Release { name, token }, now);
                }
                3 => {
                    let refuse_after = ttl % 3;
                    let mut calls = 0;
                    for (name, token) in l.leases.propose_due(now, |_| {
                        calls += 1;
                        calls <= refuse_after
                    }) {
                        let _ = l.apply(expiry(&name, token), now);
                    }
                    l.leases.assert_index_consistent();
                }
                4 => {
                    term += 1;
                    l.leases.sync(Some(term), &l.sm, now);
                    l.leases.assert_index_consistent();
                }
                5 => {
                    let ttl = i64::try_from(ttl % 3).unwrap_or(0) + 1;
                    let _ = l.apply(Command::LeaseGrant { id: i64::from(lock) + 1, ttl }, now);
                }
                6 => {
                    let _ = l.leases.renew(i64::from(lock) + 1, now);
                    l.leases.assert_index_consistent();
                }
                7 => {
                    let _ = l.apply(Command::LeaseRevoke { id: i64::from(lock) + 1 }, now);
                }
                _ => {}
            }
            proptest::prop_assert_eq!(l.leases.due(now), due_by_scanning(&l.leases, now));
            let later = now + ms(ttl);
            proptest::prop_assert_eq!(l.leases.due(later), due_by_scanning(&l.leases, later));
        }
    }
}

/// Issue 12, item 6: the leader asks for due leases on every tick (every 50 ms). With many
/// long leases none of which is due, that must not walk them all: 2,000 ticks over 100,000
/// held locks take well under a second here; walking every lease on each (the old scan)
/// takes tens of seconds in a debug build.
#[test]
fn a_tick_does_not_walk_every_held_lock() {
    let mut l = Leader::new();
    l.check_index = false;
    for i in 0..100_000 {
        l.acquire(&format!("lock-{i:06}"), 3_600_000, ms(0));
    }
    let soon = l.acquire("soon", 100, ms(0));
    let started = std::time::Instant::now();
    for tick in 0..2_000u64 {
        let due = l.leases.due(ms(tick % 100));
        assert!(due.is_empty());
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "2,000 ticks over 100,001 leases took {elapsed:?}"
    );
    assert_eq!(l.leases.due(ms(100)), vec![(Timed::lock("soon"), soon)]);
}
