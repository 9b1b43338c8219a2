use super::*;
use crate::state_machine::Session;

fn put(key: &str, value: &str, session: Option<(u64, u64)>) -> Vec<u8> {
    proposal(
        Command::Put {
            key: key.into(),
            value: value.into(),
            fence: None,
        },
        session,
    )
}

fn delete(key: &str, session: Option<(u64, u64)>) -> Vec<u8> {
    proposal(
        Command::Delete {
            key: key.into(),
            fence: None,
        },
        session,
    )
}

fn proposal(command: Command, session: Option<(u64, u64)>) -> Vec<u8> {
    Proposal {
        session: session.map(|(client_id, sequence)| Session {
            client_id,
            sequence,
        }),
        command,
    }
    .encode()
}

#[test]
fn put_get_delete() {
    let mut sm = StateMachine::new();
    assert_eq!(sm.apply(1, &put("a", "1", None)), Ok(Outcome::Put));
    assert_eq!(sm.apply(2, &put("b", "2", None)), Ok(Outcome::Put));
    assert_eq!(sm.apply(3, &put("a", "3", None)), Ok(Outcome::Put));
    assert_eq!(sm.get("a"), Some("3"));
    assert_eq!(sm.get("b"), Some("2"));
    assert_eq!(sm.len(), 2);
    assert_eq!(
        sm.apply(4, &delete("a", None)),
        Ok(Outcome::Delete { existed: true })
    );
    assert_eq!(sm.get("a"), None);
    assert_eq!(sm.iter().collect::<Vec<_>>(), vec![("b", "2")]);
    assert_eq!(sm.applied_index(), 4);
}

#[test]
fn delete_of_missing_key_reports_it_did_not_exist() {
    let mut sm = StateMachine::new();
    assert_eq!(
        sm.apply(1, &delete("nope", None)),
        Ok(Outcome::Delete { existed: false })
    );
    assert!(sm.is_empty());
    assert_eq!(sm.applied_index(), 1);
}

#[test]
fn noop_advances_applied_index_only() {
    let mut sm = StateMachine::new();
    sm.apply_noop(1);
    sm.apply_noop(5);
    assert_eq!(sm.applied_index(), 5);
    assert!(sm.is_empty());
}

#[test]
#[should_panic(expected = "invariant:")]
fn applying_out_of_order_is_an_invariant_violation() {
    let mut sm = StateMachine::new();
    sm.apply_noop(2);
    sm.apply_noop(2);
}

#[test]
fn garbage_bytes_are_undecodable_and_change_nothing_but_the_index() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("a", "1", Some((7, 1)))).unwrap();
    for (i, garbage) in [&[][..], &[0xff; 9][..], &[1, 2, 3][..]].iter().enumerate() {
        let index = 2 + i as u64;
        let err = sm.apply(index, garbage).unwrap_err();
        assert!(matches!(err, ApplyError::Undecodable(_)), "{err:?}");
        assert_eq!(sm.applied_index(), index);
    }
    assert_eq!(sm.iter().collect::<Vec<_>>(), vec![("a", "1")]);
    assert_eq!(sm.session_sequence(7), Some(1));
}

#[test]
fn duplicate_returns_cached_outcome_without_reapplying() {
    let mut sm = StateMachine::new();
    let c = 42;
    assert_eq!(sm.apply(1, &put("k", "a", Some((c, 1)))), Ok(Outcome::Put));
    assert_eq!(sm.apply(2, &put("k", "b", Some((c, 2)))), Ok(Outcome::Put));
    // Someone else changes the key; a re-applied retry would overwrite it.
    sm.apply(3, &put("k", "other", None)).unwrap();

    // Retry of the first write: it was superseded.
    assert_eq!(
        sm.apply(4, &put("k", "a", Some((c, 1)))),
        Err(ApplyError::StaleSequence {
            client_id: c,
            sequence: 1,
            last: 2
        })
    );
    // Retry of the last write: cached, not re-applied.
    assert_eq!(sm.apply(5, &put("k", "b", Some((c, 2)))), Ok(Outcome::Put));
    assert_eq!(sm.get("k"), Some("other"));
    assert_eq!(sm.applied_index(), 5);
}

#[test]
fn duplicate_delete_returns_the_original_outcome() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("k", "v", None)).unwrap();
    let first = sm.apply(2, &delete("k", Some((9, 1))));
    assert_eq!(first, Ok(Outcome::Delete { existed: true }));
    // Applied again it would say `existed: false`; the cache says what really happened.
    assert_eq!(sm.apply(3, &delete("k", Some((9, 1)))), first);
}

#[test]
fn sessions_are_independent_per_client() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("a", "1", Some((1, 5)))).unwrap();
    assert_eq!(sm.apply(2, &put("b", "1", Some((2, 1)))), Ok(Outcome::Put));
    assert_eq!(sm.session_sequence(1), Some(5));
    assert_eq!(sm.session_sequence(2), Some(1));
    assert_eq!(sm.session_count(), 2);
}

#[test]
fn least_recently_used_session_is_evicted_when_full() {
    let limits = SessionLimits {
        max_sessions: 2,
        idle_expiry: 1_000,
    };
    let mut sm = StateMachine::with_limits(limits);
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(2, &put("b", "1", Some((2, 1)))).unwrap();
    // A cached retry counts as a use: client 1 is now more recent than client 2.
    sm.apply(3, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(4, &put("c", "1", Some((3, 1)))).unwrap();
    assert_eq!(sm.session_count(), 2);
    assert_eq!(sm.session_sequence(1), Some(1));
    assert_eq!(
        sm.session_sequence(2),
        None,
        "client 2 was least recently used"
    );
    assert_eq!(sm.session_sequence(3), Some(1));
    // The evicted client's retry is applied again (documented limit).
    sm.apply(5, &put("b", "again", None)).unwrap();
    assert_eq!(sm.apply(6, &put("b", "1", Some((2, 1)))), Ok(Outcome::Put));
    assert_eq!(sm.get("b"), Some("1"));
}

#[test]
fn idle_sessions_expire_after_the_configured_number_of_entries() {
    let limits = SessionLimits {
        max_sessions: 10,
        idle_expiry: 3,
    };
    let mut sm = StateMachine::with_limits(limits);
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(2, &put("b", "1", Some((2, 1)))).unwrap();
    sm.apply_noop(4); // client 1 idle for 3 entries: still kept
    assert_eq!(sm.session_sequence(1), Some(1));
    sm.apply_noop(5); // idle for 4 > 3: dropped; client 2 (idle 3) kept
    assert_eq!(sm.session_sequence(1), None);
    assert_eq!(sm.session_sequence(2), Some(1));
    sm.apply_noop(6);
    assert_eq!(sm.session_count(), 0);
}

#[test]
fn zero_max_sessions_disables_sessions() {
    let mut sm = StateMachine::with_limits(SessionLimits {
        max_sessions: 0,
        idle_expiry: 10,
    });
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    assert_eq!(sm.session_count(), 0);
}

#[test]
fn replicas_applying_the_same_entries_agree() {
    let limits = SessionLimits {
        max_sessions: 3,
        idle_expiry: 20,
    };
    let mut entries = Vec::new();
    for i in 0..200u64 {
        let client = i % 7;
        let seq = i / 3;
        entries.push(match i % 4 {
            0 => put(&format!("k{}", i % 11), &i.to_string(), Some((client, seq))),
            1 => delete(&format!("k{}", i % 5), Some((client, seq))),
            2 => vec![0xff, 0x00, i as u8],
            _ => put("x", "y", None),
        });
    }
    let run = || {
        let mut sm = StateMachine::with_limits(limits);
        let outcomes: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| sm.apply(i as u64 + 1, e))
            .collect();
        (outcomes, sm.snapshot())
    };
    assert_eq!(run(), run());
}

#[test]
fn snapshot_restore_preserves_data_index_and_sessions() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(2, &put("b", "2", Some((2, 4)))).unwrap();
    let restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    assert_eq!(restored.applied_index(), 2);
    assert_eq!(
        restored.iter().collect::<Vec<_>>(),
        sm.iter().collect::<Vec<_>>()
    );
    assert_eq!(restored.session_sequence(2), Some(4));
    assert_eq!(restored.snapshot(), sm.snapshot());

    // Shrunk limits keep the most recently used session.
    let small = SessionLimits {
        max_sessions: 1,
        idle_expiry: 10,
    };
    let restored = StateMachine::restore(&sm.snapshot(), small).unwrap();
    assert_eq!(restored.session_sequence(1), None);
    assert_eq!(restored.session_sequence(2), Some(4));

    assert!(StateMachine::restore(&[0xff; 3], small).is_err());
}

mod apply_fuzz {
    use super::super::StateMachine;
    use crate::state_machine::{Command, Proposal, Session};
    use proptest::prelude::*;

    fn input() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (
                0u8..3,
                prop::option::of((
                    prop_oneof![Just(0u64), Just(u64::MAX), 1u64..4],
                    prop_oneof![Just(0u64), Just(u64::MAX), 1u64..6]
                )),
                "[a-c]{0,3}",
                ".{0,8}"
            )
                .prop_map(|(kind, session, key, value)| {
                    let command = if kind == 0 {
                        Command::Delete { key, fence: None }
                    } else {
                        Command::Put {
                            key,
                            value,
                            fence: None,
                        }
                    };
                    let session = session.map(|(client_id, sequence)| Session {
                        client_id,
                        sequence,
                    });
                    Proposal { session, command }.encode()
                }),
        ]
    }

    proptest! {
        /// Garbage and absurd sessions never panic, every entry advances the applied index,
        /// and two replicas fed the same entries end identical (same answers, same snapshot).
        #[test]
        fn apply_is_total_and_deterministic(inputs in prop::collection::vec(input(), 1..40)) {
            let (mut a, mut b) = (StateMachine::new(), StateMachine::new());
            for (i, data) in inputs.iter().enumerate() {
                let index = i as u64 + 1;
                prop_assert_eq!(a.apply(index, data), b.apply(index, data));
                prop_assert_eq!(a.applied_index(), index);
            }
            prop_assert_eq!(a.snapshot(), b.snapshot());
        }
    }
}
