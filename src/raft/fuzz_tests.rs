//! Property tests: hostile or absurd peer messages (random terms, indexes near u64::MAX,
//! non-contiguous or oversized batches, unknown senders) thrown at cores in every role. The
//! core must never panic, never change a committed entry, never move its term or commit index
//! backwards, and must answer every request exactly once.

use proptest::prelude::*;

use crate::raft::testkit::*;
use crate::raft::*;

fn absurd_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (
        absurd_u64(),
        absurd_u64(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    )
        .prop_map(|(term, index, data)| Entry {
            term,
            index,
            payload: data.map_or(Payload::Noop, |d| Payload::Command(d.into())),
        })
}

/// A configuration entry whose membership gives nodes 1..=4 the roles two bits each of `roles`
/// name: absent, voter, learner, removed.
fn conf_entry(roles: u16) -> ConfEntry {
    let mut membership = Membership::default();
    for id in 1..=4u64 {
        match (roles >> (2 * (id - 1))) & 3 {
            1 => membership.voters.insert(id),
            2 => membership.learners.insert(id),
            3 => membership.removed.insert(id),
            _ => false,
        };
    }
    ConfEntry {
        change: ConfChange {
            kind: ConfChangeKind::UpdateAddress,
            node: 1,
            context: Vec::new(),
        },
        membership,
    }
}

fn body_strategy() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (absurd_u64(), absurd_u64()).prop_map(|(last_log_index, last_log_term)| {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
            }
        }),
        any::<bool>().prop_map(|granted| MessageBody::RequestVoteResponse { granted }),
        (
            absurd_u64(),
            absurd_u64(),
            prop::collection::vec(entry_strategy(), 0..6),
            absurd_u64(),
            absurd_u64()
        )
            .prop_map(
                |(prev_log_index, prev_log_term, entries, leader_commit, read_ctx)| {
                    MessageBody::AppendEntries {
                        prev_log_index,
                        prev_log_term,
                        entries,
                        leader_commit,
                        read_ctx,
                    }
                }
            ),
        // Well-formed appends that extend the log, so the core really accepts some input;
        // some carry configuration entries with arbitrary memberships (this node a voter, a
        // learner, removed, or absent; no voters at all).
        (0u64..4, 1u64..4, 0u64..6, any::<u16>()).prop_map(|(prev, n, commit, roles)| {
            MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: if prev == 0 { 0 } else { 1 },
                entries: (1..=n)
                    .map(|i| Entry {
                        term: 1,
                        index: prev + i,
                        payload: if roles & (1 << i) == 0 {
                            Payload::Noop
                        } else {
                            Payload::ConfChange(Box::new(conf_entry(roles >> 4)))
                        },
                    })
                    .collect(),
                leader_commit: commit,
                read_ctx: 0,
            }
        }),
        (
            any::<bool>(),
            absurd_u64(),
            absurd_u64(),
            absurd_u64(),
            absurd_u64()
        )
            .prop_map(
                |(success, match_index, conflict_index, conflict_term, read_ctx)| {
                    MessageBody::AppendEntriesResponse {
                        success,
                        match_index,
                        conflict_index,
                        conflict_term,
                        read_ctx,
                    }
                }
            ),
    ]
}

fn message_strategy() -> impl Strategy<Value = Message> {
    (
        prop_oneof![1u64..5, Just(0u64), Just(u64::MAX)],
        prop_oneof![0u64..4, absurd_u64()],
        body_strategy(),
    )
        .prop_map(|(from, term, body)| Message {
            from,
            to: 1,
            term,
            rpc_id: 99,
            body,
        })
}

/// A core of 3 nodes in a chosen role: 0 follower, 1 candidate, 2 leader.
fn core_in_role(role: u8) -> RaftCore {
    let mut c = core(1, 3, 1, None, &[1, 1]);
    if role >= 1 {
        campaign(&mut c);
        take_ready(&mut c);
    }
    if role == 2 {
        let t = c.status().term;
        c.step(msg(
            2,
            1,
            t,
            MessageBody::RequestVoteResponse { granted: true },
        ));
        take_ready(&mut c);
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn hostile_messages_never_break_the_core(role in 0u8..3, msgs in prop::collection::vec(message_strategy(), 1..12)) {
        let mut c = core_in_role(role);
        let mut committed: Vec<Entry> = Vec::new();
        for m in msgs {
            let before = c.status();
            let is_request = m.body.is_request();
            c.step(m);
            // Propose and tick sometimes, so leaders keep doing leader things.
            let _ = c.propose(vec![7]);
            c.tick();
            let rd = take_ready(&mut c);
            let s = c.status();
            prop_assert!(s.term >= before.term, "term went back");
            prop_assert!(s.commit >= before.commit, "commit went back");
            prop_assert!(s.commit <= s.last_index, "commit {} past last index {}", s.commit, s.last_index);
            let answers = all_msgs(&rd).iter().filter(|m| m.rpc_id == 99).count();
            prop_assert_eq!(answers, usize::from(is_request), "requests get exactly one answer");
            for e in &committed {
                prop_assert_eq!(c.entry(e.index), Some(e), "committed entry changed");
            }
            for i in committed.len() as u64 + 1..=s.commit {
                if let Some(e) = c.entry(i) {
                    committed.push(e.clone());
                }
            }
        }
    }
}
