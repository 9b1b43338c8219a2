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
    assert_eq!(pairs(&sm), vec![("b".into(), "2".into())]);
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
    assert_eq!(pairs(&sm), vec![("a".into(), "1".into())]);
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

/// A retry answered from its session is answered with the revision its write left, even
/// after other writes moved the store on, and after a snapshot round trip.
#[test]
fn a_retry_is_answered_with_the_revision_of_its_write() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("k", "a", Some((42, 1)))).unwrap();
    let written = sm.answer_revision();
    assert_eq!(written, sm.revision());
    sm.apply(2, &put("other", "x", None)).unwrap();
    assert_eq!(sm.answer_revision(), written + 1);
    assert_eq!(sm.apply(3, &put("k", "a", Some((42, 1)))), Ok(Outcome::Put));
    assert_eq!(sm.answer_revision(), written, "the retry's revision");
    assert_eq!(sm.revision(), written + 1);
    let mut back = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    assert_eq!(
        back.apply(4, &put("k", "a", Some((42, 1)))),
        Ok(Outcome::Put)
    );
    assert_eq!(
        back.answer_revision(),
        written,
        "the retry's revision after a restore"
    );
}

/// A snapshot written before sessions kept their revisions (`KVSNAP\x03`) is read; a retry
/// of a write it remembers is answered with the current revision, as before.
#[test]
fn a_snapshot_without_session_revisions_is_read() {
    let mut sm = StateMachine::new();
    sm.apply(1, &put("k", "a", Some((42, 1)))).unwrap();
    sm.apply(2, &put("other", "x", None)).unwrap();
    let mut bytes = sm.snapshot();
    // The older format: its magic, without the last field (one session revision: a length
    // byte and the revision 2 as a zigzag varint).
    assert_eq!(bytes.pop(), Some(4));
    assert_eq!(bytes.pop(), Some(1));
    bytes[6] = 3;
    let mut back = StateMachine::restore(&bytes, SessionLimits::default()).unwrap();
    assert_eq!(back.get("k"), Some("a"));
    assert_eq!(
        back.apply(3, &put("k", "a", Some((42, 1)))),
        Ok(Outcome::Put)
    );
    assert_eq!(back.answer_revision(), back.revision());
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
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(2, &put("a", "2", Some((1, 5)))).unwrap();
    assert_eq!(sm.apply(3, &put("b", "1", Some((2, 1)))), Ok(Outcome::Put));
    assert_eq!(sm.session_sequence(1), Some(5));
    assert_eq!(sm.session_sequence(2), Some(1));
    assert_eq!(sm.session_count(), 2);
}

#[test]
fn least_recently_used_session_is_evicted_when_full() {
    let limits = SessionLimits {
        max_sessions: 2,
        idle_expiry: 1_000,
        max_retired: 10,
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
    // The evicted client's retry is refused, not applied again.
    sm.apply(5, &put("b", "again", None)).unwrap();
    assert_eq!(
        sm.apply(6, &put("b", "1", Some((2, 1)))),
        Err(ApplyError::SessionExpired {
            client_id: 2,
            sequence: 1
        })
    );
    assert_eq!(sm.get("b"), Some("again"));
}

/// Issue 12 item 1, the reported scenario: (A,1) applied, 10,500 other sessions write, B
/// overwrites the key and is acknowledged, then A's retry of (A,1) arrives. It must be
/// refused as expired, and B's write must stay.
#[test]
fn a_first_write_retried_after_its_session_was_evicted_is_refused_not_reapplied() {
    let mut sm = StateMachine::new();
    let a = 0xA;
    let retry = put("k", "from A", Some((a, 1)));
    assert_eq!(sm.apply(1, &retry), Ok(Outcome::Put));
    let mut index = 1;
    for client in 0..10_500u64 {
        index += 1;
        let key = format!("other-{client}");
        sm.apply(index, &put(&key, "x", Some((1_000_000 + client, 1))))
            .unwrap();
    }
    assert_eq!(sm.session_sequence(a), None, "A was evicted");
    index += 1;
    assert_eq!(
        sm.apply(index, &put("k", "from B", Some((0xB, 1)))),
        Ok(Outcome::Put)
    );
    index += 1;
    let err = sm.apply(index, &retry).unwrap_err();
    assert_eq!(
        err,
        ApplyError::SessionExpired {
            client_id: a,
            sequence: 1
        }
    );
    assert!(
        err.to_string()
            .starts_with("session expired; the outcome of your earlier attempt is unknown"),
        "{err}"
    );
    assert_eq!(sm.get("k"), Some("from B"), "B's acknowledged write stays");
    // A later request of A's dropped session is refused too.
    index += 1;
    assert!(matches!(
        sm.apply(index, &put("k", "A again", Some((a, 2)))),
        Err(ApplyError::SessionExpired { .. })
    ));
    assert_eq!(sm.get("k"), Some("from B"));
    // The refusals survive a snapshot (another replica installing it refuses alike).
    let mut restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    assert!(matches!(
        restored.apply(index + 1, &retry),
        Err(ApplyError::SessionExpired { .. })
    ));
    assert_eq!(restored.get("k"), Some("from B"));
}

#[test]
fn an_unknown_session_with_a_sequence_above_one_is_refused() {
    let mut sm = StateMachine::new();
    assert_eq!(
        sm.apply(1, &put("k", "v", Some((9, 2)))),
        Err(ApplyError::SessionExpired {
            client_id: 9,
            sequence: 2
        })
    );
    assert!(sm.is_empty());
    // Sequence 1 of an id never seen opens a session.
    assert_eq!(sm.apply(2, &put("k", "v", Some((9, 1)))), Ok(Outcome::Put));
}

#[test]
fn retired_ids_are_bounded_and_the_oldest_leaves_first() {
    let limits = SessionLimits {
        max_sessions: 1,
        idle_expiry: 1_000,
        max_retired: 2,
    };
    let mut sm = StateMachine::with_limits(limits);
    for client in 1..=4u64 {
        sm.apply(client, &put("k", "v", Some((client, 1)))).unwrap();
    }
    // Client 1 was retired first and aged out (the documented window); 2 and 3 are retired.
    assert_eq!(sm.sessions.retired().collect::<Vec<_>>(), vec![2, 3]);
    assert!(matches!(
        sm.apply(5, &put("k", "v", Some((2, 1)))),
        Err(ApplyError::SessionExpired { .. })
    ));
    assert_eq!(sm.apply(6, &put("k", "v", Some((1, 1)))), Ok(Outcome::Put));
}

#[test]
fn a_duplicate_sequence_with_a_different_command_is_refused() {
    let mut sm = StateMachine::new();
    assert_eq!(sm.apply(1, &put("k", "a", Some((4, 1)))), Ok(Outcome::Put));
    assert_eq!(
        sm.apply(2, &put("k", "b", Some((4, 1)))),
        Err(ApplyError::SessionMismatch {
            client_id: 4,
            sequence: 1
        })
    );
    assert_eq!(
        sm.apply(3, &delete("k", Some((4, 1)))),
        Err(ApplyError::SessionMismatch {
            client_id: 4,
            sequence: 1
        })
    );
    assert_eq!(sm.get("k"), Some("a"));
    // The same command is still answered from the cache, also after a snapshot.
    assert_eq!(sm.apply(4, &put("k", "a", Some((4, 1)))), Ok(Outcome::Put));
    let mut restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    assert!(matches!(
        restored.apply(5, &put("k", "b", Some((4, 1)))),
        Err(ApplyError::SessionMismatch { .. })
    ));
}

#[test]
fn a_failed_first_write_opens_the_session_so_the_next_sequence_applies() {
    let mut sm = StateMachine::new();
    let fenced = proposal(
        Command::Put {
            key: "k".into(),
            value: "v".into(),
            fence: Some(Fence {
                lock: "L".into(),
                token: 1,
            }),
        },
        Some((6, 1)),
    );
    assert!(matches!(
        sm.apply(1, &fenced),
        Err(ApplyError::StaleFence { .. })
    ));
    assert_eq!(sm.session_sequence(6), Some(0));
    assert_eq!(sm.apply(2, &put("k", "v", Some((6, 2)))), Ok(Outcome::Put));
    assert_eq!(sm.session_sequence(6), Some(2));
}

#[test]
fn zero_session_fields_are_refused_and_change_nothing() {
    let mut sm = StateMachine::new();
    for (i, session) in [(0, 1), (1, 0)].into_iter().enumerate() {
        let err = sm.apply(i as u64 + 1, &put("k", "v", Some(session)));
        assert!(matches!(err, Err(ApplyError::Undecodable(_))), "{err:?}");
    }
    assert!(sm.is_empty());
    assert_eq!(sm.session_count(), 0);
}

#[test]
fn a_snapshot_written_before_revisions_is_refused_with_one_line() {
    // The format before the key space had revisions: no magic, the fields straight away.
    #[derive(serde::Serialize)]
    struct Old {
        applied_index: LogIndex,
        kv: BTreeMap<String, String>,
        sessions: Vec<ClientSession>,
        locks: BTreeMap<String, LockInfo>,
    }
    let old = Old {
        applied_index: 1,
        kv: BTreeMap::from([("a".to_string(), "1".to_string())]),
        sessions: Vec::new(),
        locks: BTreeMap::new(),
    };
    let err = StateMachine::restore(
        &postcard::to_allocvec(&old).unwrap(),
        SessionLimits::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("without revisions"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn idle_sessions_expire_after_the_configured_number_of_entries() {
    let limits = SessionLimits {
        max_sessions: 10,
        idle_expiry: 3,
        max_retired: 10,
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
    // Expired, not forgotten: a retry is refused.
    assert!(matches!(
        sm.apply(7, &put("a", "1", Some((1, 1)))),
        Err(ApplyError::SessionExpired { .. })
    ));
}

#[test]
fn zero_max_sessions_disables_sessions() {
    let mut sm = StateMachine::with_limits(SessionLimits {
        max_sessions: 0,
        idle_expiry: 10,
        max_retired: 10,
    });
    sm.apply(1, &put("a", "1", Some((1, 1)))).unwrap();
    assert_eq!(sm.apply(2, &put("a", "2", Some((1, 2)))), Ok(Outcome::Put));
    assert_eq!(sm.session_count(), 0);
}

#[test]
fn replicas_applying_the_same_entries_agree() {
    let limits = SessionLimits {
        max_sessions: 3,
        idle_expiry: 20,
        max_retired: 5,
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
    sm.apply(1, &put("b", "1", Some((2, 1)))).unwrap();
    sm.apply(2, &put("a", "1", Some((1, 1)))).unwrap();
    sm.apply(3, &put("b", "2", Some((2, 4)))).unwrap();
    let restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    assert_eq!(restored.applied_index(), 3);
    assert_eq!(pairs(&restored), pairs(&sm));
    assert_eq!(restored.session_sequence(2), Some(4));
    assert_eq!(restored.revision(), sm.revision());
    assert_eq!(restored.snapshot(), sm.snapshot());
    let snapshot = sm.snapshot();
    assert!(snapshot.starts_with(SNAPSHOT_MAGIC));
    assert_eq!(snapshot.len(), snapshot.capacity(), "one exact allocation");

    // Shrunk limits keep the most recently used session.
    let small = SessionLimits {
        max_sessions: 1,
        idle_expiry: 10,
        max_retired: 10,
    };
    let restored = StateMachine::restore(&sm.snapshot(), small).unwrap();
    assert_eq!(restored.session_sequence(1), None);
    assert_eq!(restored.session_sequence(2), Some(4));
    assert!(
        restored.sessions.is_retired(1),
        "dropped on restore, so retired"
    );

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

mod locks {
    use super::{proposal, put};
    use crate::state_machine::machine::{LockInfo, StateMachine};
    use crate::state_machine::{ApplyError, Command, Fence, Outcome, SessionLimits};

    fn acquire(name: &str, holder: &str, ttl_ms: u64) -> Vec<u8> {
        let (name, holder) = (name.into(), holder.into());
        proposal(
            Command::Acquire {
                name,
                holder,
                ttl_ms,
            },
            None,
        )
    }

    fn keep_alive(name: &str, token: u64) -> Vec<u8> {
        let name = name.into();
        proposal(Command::KeepAlive { name, token }, None)
    }

    fn release(name: &str, token: u64) -> Vec<u8> {
        let name = name.into();
        proposal(Command::Release { name, token }, None)
    }

    fn expire(name: &str, token: u64) -> Vec<u8> {
        let name = name.into();
        proposal(Command::Expire { name, token }, None)
    }

    fn fence(lock: &str, token: u64) -> Option<Fence> {
        let lock = lock.into();
        Some(Fence { lock, token })
    }

    fn fenced_put(key: &str, value: &str, lock: &str, token: u64) -> Vec<u8> {
        let (key, value) = (key.into(), value.into());
        let fence = fence(lock, token);
        proposal(Command::Put { key, value, fence }, None)
    }

    fn fenced_delete(key: &str, lock: &str, token: u64) -> Vec<u8> {
        let key = key.into();
        let fence = fence(lock, token);
        proposal(Command::Delete { key, fence }, None)
    }

    fn held(holder: &str, token: u64, ttl_ms: u64) -> Option<LockInfo> {
        let holder = holder.into();
        Some(LockInfo {
            holder,
            token,
            ttl_ms,
        })
    }

    fn acquired(token: u64, ttl_ms: u64) -> Result<Outcome, ApplyError> {
        Ok(Outcome::Acquired { token, ttl_ms })
    }

    #[test]
    fn acquire_grants_with_the_granting_index_as_token() {
        let mut sm = StateMachine::new();
        sm.apply_noop(1);
        sm.apply_noop(2);
        assert_eq!(sm.apply(3, &acquire("L", "A", 300)), acquired(3, 300));
        assert_eq!(sm.lock("L").cloned(), held("A", 3, 300));
        assert_eq!(sm.lock("other"), None);
        assert_eq!(sm.locks().count(), 1);
    }

    #[test]
    fn same_holder_renews_with_the_same_token_and_the_new_ttl() {
        let mut sm = StateMachine::new();
        assert_eq!(sm.apply(1, &acquire("L", "A", 300)), acquired(1, 300));
        assert_eq!(sm.apply(2, &acquire("L", "A", 900)), acquired(1, 900));
        assert_eq!(sm.lock("L").cloned(), held("A", 1, 900));
    }

    #[test]
    fn another_holder_is_told_who_holds_it() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        let err = sm.apply(2, &acquire("L", "B", 300)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::LockHeld {
                name: "L".into(),
                holder: "A".into(),
                token: 1
            }
        );
        assert_eq!(err.to_string(), "lock L is held by A (token 1)");
        assert_eq!(sm.lock("L").cloned(), held("A", 1, 300));
        // Different locks are independent.
        assert_eq!(sm.apply(3, &acquire("M", "B", 50)), acquired(3, 50));
    }

    #[test]
    fn keep_alive_needs_the_current_token() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        assert_eq!(
            sm.apply(2, &keep_alive("L", 1)),
            Ok(Outcome::KeptAlive { ttl_ms: 300 })
        );
        let err = sm.apply(3, &keep_alive("L", 7)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::StaleToken {
                name: "L".into(),
                token: 7,
                current: Some(1)
            }
        );
        assert_eq!(err.to_string(), "stale token 7 for lock L (current 1)");
        let err = sm.apply(4, &keep_alive("free", 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stale token 1 for lock free (current: none, the lock is not held)"
        );
        assert_eq!(sm.lock("L").cloned(), held("A", 1, 300));
    }

    #[test]
    fn release_frees_and_the_next_grant_gets_a_higher_token() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        // A wrong token does not release.
        assert!(matches!(
            sm.apply(2, &release("L", 9)),
            Err(ApplyError::StaleToken {
                current: Some(1),
                ..
            })
        ));
        assert_eq!(sm.apply(3, &release("L", 1)), Ok(Outcome::Released));
        assert_eq!(sm.lock("L"), None);
        // Releasing again: nothing is held any more.
        assert!(matches!(
            sm.apply(4, &release("L", 1)),
            Err(ApplyError::StaleToken { current: None, .. })
        ));
        // The same holder re-acquiring after release gets a new token, not its old one.
        assert_eq!(sm.apply(5, &acquire("L", "A", 300)), acquired(5, 300));
        assert_eq!(sm.apply(6, &release("L", 5)), Ok(Outcome::Released));
        assert_eq!(sm.apply(7, &acquire("L", "B", 300)), acquired(7, 300));
    }

    #[test]
    fn a_release_retried_with_its_session_is_answered_released_not_stale() {
        // Issue 11: a Release whose reply was lost is resent; with its session (as the Rust
        // client and the Lock service now send it) the retry gets the first outcome.
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        let name = "L".to_string();
        let tagged = proposal(Command::Release { name, token: 1 }, Some((7, 1)));
        assert_eq!(sm.apply(2, &tagged), Ok(Outcome::Released));
        assert_eq!(sm.apply(3, &tagged), Ok(Outcome::Released));
        assert_eq!(sm.lock("L"), None);
        // Without a session the same retry cannot be told from a stale holder's release.
        assert!(matches!(
            sm.apply(4, &release("L", 1)),
            Err(ApplyError::StaleToken { current: None, .. })
        ));
        // A later grant is not released by the cached answer's session either.
        assert_eq!(sm.apply(5, &acquire("L", "B", 300)), acquired(5, 300));
        assert_eq!(sm.apply(6, &tagged), Ok(Outcome::Released));
        assert_eq!(sm.lock("L").map(|l| l.token), Some(5), "still held by B");
    }

    #[test]
    fn expire_with_the_current_token_frees_the_lock() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        assert_eq!(
            sm.apply(2, &expire("L", 1)),
            Ok(Outcome::Expired { expired: true })
        );
        assert_eq!(sm.lock("L"), None);
        assert_eq!(sm.apply(3, &acquire("L", "B", 300)), acquired(3, 300));
    }

    #[test]
    fn expire_with_an_old_token_is_a_no_op_and_keeps_the_newer_grant() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        sm.apply(2, &expire("L", 1)).unwrap();
        sm.apply(3, &acquire("L", "B", 300)).unwrap();
        // A second Expire for A's lease (e.g. proposed twice, or by an older leader).
        assert_eq!(
            sm.apply(4, &expire("L", 1)),
            Ok(Outcome::Expired { expired: false })
        );
        assert_eq!(sm.lock("L").cloned(), held("B", 3, 300));
        // On a lock nobody holds, too.
        assert_eq!(
            sm.apply(5, &expire("free", 3)),
            Ok(Outcome::Expired { expired: false })
        );
        assert_eq!(sm.locks().count(), 1);
    }

    #[test]
    fn fenced_writes_with_the_current_token_apply() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        assert_eq!(sm.apply(2, &fenced_put("k", "v", "L", 1)), Ok(Outcome::Put));
        assert_eq!(sm.get("k"), Some("v"));
        assert_eq!(
            sm.apply(3, &fenced_delete("k", "L", 1)),
            Ok(Outcome::Delete { existed: true })
        );
        assert_eq!(sm.get("k"), None);
    }

    #[test]
    fn a_zombie_writing_with_its_old_token_after_expiry_changes_nothing() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        sm.apply(2, &fenced_put("k", "a", "L", 1)).unwrap();
        sm.apply(3, &expire("L", 1)).unwrap();
        sm.apply(4, &acquire("L", "B", 300)).unwrap();
        sm.apply(5, &fenced_put("k", "b", "L", 4)).unwrap();
        let before = sm.snapshot();

        // A, paused through its lease, wakes up and writes with token 1.
        let err = sm.apply(6, &fenced_put("k", "a-late", "L", 1)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::StaleFence {
                lock: "L".into(),
                token: 1,
                current: Some(4)
            }
        );
        assert_eq!(
            err.to_string(),
            "stale fencing token 1 for lock L (current 4)"
        );
        let err = sm.apply(7, &fenced_delete("k", "L", 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stale fencing token 1 for lock L (current 4)"
        );
        assert_eq!(sm.get("k"), Some("b"));
        assert_eq!(sm.lock("L").cloned(), held("B", 4, 300));
        // Nothing but the applied index moved: restoring the earlier snapshot at index 7
        // gives the same state.
        let mut rebuilt = StateMachine::restore(&before, SessionLimits::default()).unwrap();
        rebuilt.apply_noop(6);
        rebuilt.apply_noop(7);
        assert_eq!(rebuilt.snapshot(), sm.snapshot());
    }

    #[test]
    fn a_fenced_write_on_a_lock_nobody_holds_is_stale() {
        let mut sm = StateMachine::new();
        let err = sm.apply(1, &fenced_put("k", "v", "L", 1)).unwrap_err();
        assert_eq!(
            err,
            ApplyError::StaleFence {
                lock: "L".into(),
                token: 1,
                current: None
            }
        );
        assert_eq!(
            err.to_string(),
            "stale fencing token 1 for lock L (current: none, the lock is not held)"
        );
        // Also after the holder released it.
        sm.apply(2, &acquire("L", "A", 300)).unwrap();
        sm.apply(3, &release("L", 2)).unwrap();
        assert!(matches!(
            sm.apply(4, &fenced_delete("k", "L", 2)),
            Err(ApplyError::StaleFence { current: None, .. })
        ));
        assert!(sm.is_empty());
    }

    #[test]
    fn a_fence_on_another_lock_does_not_count() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        sm.apply(2, &acquire("M", "A", 300)).unwrap();
        // Token 1 is current for L, not for M.
        assert!(matches!(
            sm.apply(3, &fenced_put("k", "v", "M", 1)),
            Err(ApplyError::StaleFence {
                current: Some(2),
                ..
            })
        ));
        assert_eq!(sm.get("k"), None);
        // Unfenced writes ignore locks altogether.
        assert_eq!(sm.apply(4, &put("k", "free", None)), Ok(Outcome::Put));
    }

    #[test]
    fn snapshot_restore_keeps_locks() {
        let mut sm = StateMachine::new();
        sm.apply(1, &acquire("L", "A", 300)).unwrap();
        sm.apply(2, &acquire("M", "B", 700)).unwrap();
        sm.apply(3, &expire("M", 2)).unwrap();
        sm.apply(4, &acquire("M", "C", 900)).unwrap();
        let mut restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
        assert_eq!(restored.snapshot(), sm.snapshot());
        let locks: Vec<(String, LockInfo)> = restored
            .locks()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect();
        let want = vec![
            ("L".to_string(), held("A", 1, 300).unwrap()),
            ("M".to_string(), held("C", 4, 900).unwrap()),
        ];
        assert_eq!(locks, want);
        // The restored machine enforces them: fences and holders carry over.
        assert!(matches!(
            restored.apply(5, &fenced_put("k", "v", "M", 2)),
            Err(ApplyError::StaleFence {
                current: Some(4),
                ..
            })
        ));
        assert_eq!(
            restored.apply(6, &fenced_put("k", "v", "M", 4)),
            Ok(Outcome::Put)
        );
        assert!(matches!(
            restored.apply(7, &acquire("L", "B", 300)),
            Err(ApplyError::LockHeld { token: 1, .. })
        ));
    }

    #[test]
    fn a_retried_acquire_returns_the_cached_grant() {
        let mut sm = StateMachine::new();
        let ask = |holder: &str, seq| {
            let (name, holder) = ("L".into(), holder.into());
            let command = Command::Acquire {
                name,
                holder,
                ttl_ms: 300,
            };
            proposal(command, Some((5, seq)))
        };
        assert_eq!(sm.apply(1, &ask("A", 1)), acquired(1, 300));
        sm.apply(2, &expire("L", 1)).unwrap();
        sm.apply(3, &acquire("L", "B", 300)).unwrap();
        // The retry of A's acquire (same session and sequence) is answered from the cache:
        // it does not apply again (which would fail with LockHeld by B).
        assert_eq!(sm.apply(4, &ask("A", 1)), acquired(1, 300));
        assert_eq!(sm.lock("L").cloned(), held("B", 3, 300));
        // A new request of the same client does apply.
        assert!(matches!(
            sm.apply(5, &ask("A", 2)),
            Err(ApplyError::LockHeld { token: 3, .. })
        ));
    }

    #[test]
    fn tokens_of_successive_grants_strictly_increase() {
        let mut sm = StateMachine::new();
        let mut last = 0;
        let mut index = 0;
        for round in 0..20u64 {
            index += 1;
            let holder = if round % 2 == 0 { "A" } else { "B" };
            let Ok(Outcome::Acquired { token, .. }) = sm.apply(index, &acquire("L", holder, 10))
            else {
                panic!("round {round}: lock not free")
            };
            assert!(token > last, "token {token} after {last}");
            last = token;
            index += 1;
            let end = if round % 3 == 0 {
                release("L", token)
            } else {
                expire("L", token)
            };
            sm.apply(index, &end).unwrap();
        }
    }
}

/// Every key and value, in key order, as text.
fn pairs(sm: &StateMachine) -> Vec<(String, String)> {
    sm.range(&RangeRequest::every_key())
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect()
}

/// The simulator's mutation switch splits a txn's writes over two revisions, and is not
/// part of the state: a snapshot neither carries it nor turns it on (whoever rebuilds a
/// state machine sets it again).
#[test]
fn the_split_txn_switch_splits_and_is_not_snapshotted() {
    use super::super::mvcc::{RequestOp, TxnRequest};
    let two_puts = |value: &str| {
        let put = |key: &str| {
            RequestOp::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })
        };
        proposal(
            Command::Kv {
                op: KvWrite::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![put("p0"), put("p1")],
                    failure: vec![],
                }),
                fence: None,
            },
            None,
        )
    };
    let mut sm = StateMachine::new();
    sm.set_split_txn_writes(true);
    sm.apply(1, &two_puts("a")).unwrap();
    assert_eq!(
        sm.revision(),
        3,
        "with the switch, two writes, two revisions"
    );
    let mut restored = StateMachine::restore(&sm.snapshot(), SessionLimits::default()).unwrap();
    restored.apply(2, &two_puts("b")).unwrap();
    assert_eq!(
        restored.revision(),
        4,
        "restored without the switch: one txn, one revision"
    );
}

#[test]
fn a_fenced_txn_applies_whole_with_the_current_token_and_not_at_all_with_a_stale_one() {
    use crate::state_machine::mvcc::{PutRequest, RequestOp, TxnRequest};
    let acquire = |holder: &str| Command::Acquire {
        name: "L".into(),
        holder: holder.into(),
        ttl_ms: 1000,
    };
    let txn = |token: u64, value: &str| Command::Kv {
        op: KvWrite::Txn(TxnRequest {
            success: ["a", "b"]
                .into_iter()
                .map(|k| {
                    RequestOp::Put(PutRequest {
                        key: k.into(),
                        value: value.into(),
                        ..PutRequest::default()
                    })
                })
                .collect(),
            ..TxnRequest::default()
        }),
        fence: Some(Fence {
            lock: "L".into(),
            token,
        }),
    };
    let mut sm = StateMachine::new();
    sm.apply(1, &proposal(acquire("x"), None)).unwrap();
    // Token 1: current. Both writes at one revision.
    assert!(matches!(
        sm.apply(2, &proposal(txn(1, "v1"), None)),
        Ok(Outcome::Kv(KvResult::Txn(_)))
    ));
    assert_eq!(sm.revision(), 2, "one revision for the whole txn");
    sm.apply(
        3,
        &proposal(
            Command::Expire {
                name: "L".into(),
                token: 1,
            },
            None,
        ),
    )
    .unwrap();
    sm.apply(4, &proposal(acquire("y"), None)).unwrap();
    // Token 1 is stale now: refused, nothing written, the revision unchanged.
    assert!(matches!(
        sm.apply(5, &proposal(txn(1, "late"), None)),
        Err(ApplyError::StaleFence {
            current: Some(4),
            ..
        })
    ));
    assert_eq!((sm.get("a"), sm.get("b")), (Some("v1"), Some("v1")));
    assert_eq!(sm.revision(), 2);
}

#[test]
fn a_resent_compact_is_answered_as_its_first_attempt() {
    let mut sm = StateMachine::new();
    for i in 1..=5 {
        sm.apply(i, &put("k", &i.to_string(), None)).unwrap();
    }
    let compact = proposal(Command::Compact { revision: 4 }, Some((9, 1)));
    assert_eq!(sm.apply(6, &compact), Ok(Outcome::Compacted));
    // The same request again (its answer was lost): the session answers, not the key space
    // (which would say the revision is compacted now).
    assert_eq!(sm.apply(7, &compact), Ok(Outcome::Compacted));
    // Without a session it is refused.
    let bare = proposal(Command::Compact { revision: 4 }, None);
    assert!(matches!(
        sm.apply(8, &bare),
        Err(ApplyError::Kv(
            crate::state_machine::mvcc::MvccError::Compacted { .. }
        ))
    ));
}

fn kv_put(key: &str, lease: i64) -> Vec<u8> {
    proposal(
        Command::Kv {
            op: KvWrite::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
                lease,
                ..PutRequest::default()
            }),
            fence: None,
        },
        None,
    )
}

/// The lease table travels in the snapshot: a restored replica still knows the lease, its
/// TTL and its keys, and a revoke there deletes them.
#[test]
fn leases_on_keys_survive_a_snapshot() {
    let mut sm = StateMachine::new();
    let grant = proposal(Command::LeaseGrant { id: 0, ttl: 30 }, None);
    assert_eq!(
        sm.apply(1, &grant),
        Ok(Outcome::LeaseGranted { id: 1, ttl: 30 })
    );
    sm.apply(2, &kv_put("a", 1)).unwrap();
    let bytes = sm.snapshot();
    assert!(bytes.starts_with(b"KVSNAP\x04\0"));
    let mut back = StateMachine::restore(&bytes, SessionLimits::default()).unwrap();
    assert_eq!(back.key_leases().ttl(1), Some(30));
    assert_eq!(
        back.key_space().lease_keys(1).collect::<Vec<_>>(),
        vec![b"a"]
    );
    let revoke = proposal(Command::LeaseRevoke { id: 1 }, None);
    assert_eq!(
        back.apply(3, &revoke),
        Ok(Outcome::LeaseRevoked { deleted: 1 })
    );
    assert!(back.get("a").is_none());
    assert_eq!(
        back.apply(4, &kv_put("b", 1)),
        Err(ApplyError::Kv(
            crate::state_machine::mvcc::MvccError::LeaseNotFound(1)
        ))
    );
}

/// A snapshot written before leases on keys (magic `\x02`, no lease table at the end) is
/// still read, with an empty lease table.
#[test]
fn a_snapshot_written_before_leases_on_keys_is_read_with_no_leases() {
    let mut sm = StateMachine::new();
    sm.apply(1, &kv_put("a", 0)).unwrap();
    let mut bytes = sm.snapshot();
    // The same state in the older format: its magic, and neither the empty lease list nor the
    // empty session revisions (one 0 byte each) at the end.
    assert_eq!(bytes.pop(), Some(0));
    assert_eq!(bytes.pop(), Some(0));
    bytes[6] = 2;
    let back = StateMachine::restore(&bytes, SessionLimits::default()).unwrap();
    assert_eq!(back.get("a"), Some("v"));
    assert_eq!(back.applied_index(), 1);
    assert!(back.key_leases().is_empty());
    assert_eq!(back.snapshot(), sm.snapshot());
}
