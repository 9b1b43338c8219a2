//! Property tests of the wire path a hostile peer controls: raw bytes and arbitrary protobuf
//! requests go through prost decoding, `convert`, and into a live core. Nothing may panic,
//! malformed input must be refused, well-formed input must be accepted, and whatever is
//! accepted must leave the log consistent.
//!
//! The requests are generated well-formed, with absurd values where the format allows them,
//! and then, in about one case in three, given exactly one flaw `convert` must refuse. Each
//! test counts what was accepted: a conversion that refused everything would otherwise pass
//! every "nothing panics" property without ever handing the core an entry.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use prost::Message as _;

use super::convert::{append_request_in, vote_request_in};
use crate::pb;
use crate::raft::{Config, HardState, Message, MessageBody, RaftCore};

/// Cases per property.
const CASES: u32 = 256;

fn absurd() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..6, Just(u64::MAX), any::<u64>()]
}

/// The one flaw a generated request may carry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaw {
    None,
    /// One entry's index is not `prev_log_index + 1 + its position`.
    IndexGap,
    /// One entry has a type that is not NOOP or COMMAND.
    UnknownType(i32),
    /// One NOOP entry carries data.
    NoopWithData,
    /// Addressed to another node.
    NotForMe(u64),
    /// `leader_id` 0.
    NoSender,
}

fn flaw() -> impl Strategy<Value = Flaw> {
    prop_oneof![
        12 => Just(Flaw::None),
        2 => Just(Flaw::IndexGap),
        1 => prop_oneof![Just(0), Just(3), Just(-1), Just(i32::MAX)].prop_map(Flaw::UnknownType),
        1 => Just(Flaw::NoopWithData),
        1 => prop_oneof![Just(0), Just(2), Just(u64::MAX)].prop_map(Flaw::NotForMe),
        1 => Just(Flaw::NoSender),
    ]
}

/// A request for node 1 and whether `convert` must accept it.
fn append_req() -> impl Strategy<Value = (pb::AppendEntriesRequest, bool)> {
    let entry = (
        absurd(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    (
        (absurd(), 1u64..5, absurd(), absurd()),
        prop::collection::vec(entry, 0..40),
        (absurd(), absurd()),
        flaw(),
        any::<Index>(),
    )
        .prop_map(
            |(
                (term, leader_id, prev_log_index, prev_log_term),
                entries,
                (leader_commit, read_ctx),
                flaw,
                at,
            )| {
                let first = prev_log_index.saturating_add(1);
                let entries: Vec<pb::Entry> = entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, (term, noop, data))| pb::Entry {
                        term,
                        index: first.saturating_add(i as u64),
                        r#type: if noop {
                            pb::EntryType::Noop
                        } else {
                            pb::EntryType::Command
                        } as i32,
                        data: if noop { Vec::new() } else { data }.into(),
                    })
                    .collect();
                let mut req = pb::AppendEntriesRequest {
                    term,
                    leader_id,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    to: 1,
                    read_ctx,
                };
                let valid = apply_flaw(&mut req, flaw, at);
                (req, valid)
            },
        )
}

/// Gives `req` the flaw (an entry flaw goes to the entry `at` picks); returns whether the
/// request is still well-formed (an entry flaw on a request without entries is no flaw).
fn apply_flaw(req: &mut pb::AppendEntriesRequest, flaw: Flaw, at: Index) -> bool {
    let n = req.entries.len();
    let entry = (n > 0).then(|| at.index(n));
    match (flaw, entry) {
        (Flaw::NotForMe(to), _) => req.to = to,
        (Flaw::NoSender, _) => req.leader_id = 0,
        (Flaw::IndexGap, Some(i)) => {
            req.entries[i].index = req.entries[i].index.wrapping_add(1);
        }
        (Flaw::UnknownType(t), Some(i)) => req.entries[i].r#type = t,
        (Flaw::NoopWithData, Some(i)) => {
            let e = &mut req.entries[i];
            e.r#type = pb::EntryType::Noop as i32;
            e.data = vec![7].into();
        }
        (Flaw::None, _) | (_, None) => return true,
    }
    false
}

fn follower() -> RaftCore {
    let mut c = RaftCore::new(Config::new(1, vec![2, 3]), HardState::default(), vec![])
        .unwrap_or_else(|e| panic!("config: {e}"));
    let _ = c.ready();
    c.advance();
    c
}

/// How many entries an AppendEntries carries (0 for any other message).
fn entries_in(m: &Message) -> usize {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.len(),
        _ => 0,
    }
}

fn feed(core: &mut RaftCore, msg: Message) {
    core.step(msg);
    let rd = core.ready();
    core.advance();
    let s = core.status();
    assert!(
        s.commit <= s.last_index,
        "commit {} past last index {}",
        s.commit,
        s.last_index
    );
    // Every accepted entry sits at its own index.
    for e in &rd.entries {
        assert_eq!(core.entry(e.index).map(|x| x.index), Some(e.index));
    }
}

/// What a property saw over all its cases.
#[derive(Default)]
struct Counts {
    requests: Cell<u32>,
    accepted: Cell<u32>,
    /// Accepted requests that carried at least one entry.
    with_entries: Cell<u32>,
}

impl Counts {
    fn saw(&self, accepted: bool, entries: usize) {
        let add = |c: &Cell<u32>, yes: bool| c.set(c.get() + u32::from(yes));
        add(&self.requests, true);
        add(&self.accepted, accepted);
        add(&self.with_entries, accepted && entries > 0);
    }

    /// Fails unless at least `min_percent` of the requests were accepted, some of them with
    /// entries, and some were refused.
    fn assert_healthy(&self, what: &str, min_percent: u32) {
        let (n, ok, with) = (
            self.requests.get(),
            self.accepted.get(),
            self.with_entries.get(),
        );
        eprintln!("{what}: {ok} of {n} accepted, {with} of them with entries");
        assert!(
            ok * 100 >= min_percent * n,
            "{what}: only {ok} of {n} accepted (want {min_percent}%): the test exercises only refusals"
        );
        assert!(with * 10 >= ok, "{what}: only {with} accepted with entries");
        assert!(ok < n, "{what}: nothing was refused");
    }
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: CASES,
        ..RunnerConfig::default()
    })
}

/// Raw bytes: random ones, and encoded requests with a few bytes overwritten (so that some
/// decode, and some of those are still accepted).
#[test]
fn random_bytes_never_panic() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            append_req(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..3)
        )
            .prop_map(|((req, _), edits)| {
                let mut bytes = req.encode_to_vec();
                for (at, b) in edits {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                }
                bytes
            }),
    ];
    let counts = Counts::default();
    runner()
        .run(&bytes, |bytes| {
            let mut core = follower();
            let append = pb::AppendEntriesRequest::decode(bytes.as_slice())
                .ok()
                .and_then(|req| append_request_in(req, 1).ok());
            counts.saw(append.is_some(), append.as_ref().map_or(0, entries_in));
            if let Some(m) = append {
                feed(&mut core, m);
            }
            if let Ok(req) = pb::RequestVoteRequest::decode(bytes.as_slice()) {
                if let Ok(m) = vote_request_in(req, 1) {
                    feed(&mut core, m);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    counts.assert_healthy("random and edited bytes", 10);
}

/// Structured requests: exactly the well-formed ones are accepted, and the core takes them.
#[test]
fn arbitrary_requests_are_refused_or_handled() {
    let counts = Counts::default();
    runner()
        .run(&prop::collection::vec(append_req(), 1..6), |reqs| {
            let mut core = follower();
            for (req, valid) in reqs {
                let bytes = req.encode_to_vec();
                let decoded = pb::AppendEntriesRequest::decode(bytes.as_slice());
                prop_assert!(decoded.is_ok());
                let entries = req.entries.len();
                let converted = append_request_in(decoded.unwrap_or_default(), 1);
                counts.saw(converted.is_ok(), entries);
                prop_assert_eq!(converted.is_ok(), valid, "{:?}", converted.as_ref().err());
                if let Ok(m) = converted {
                    prop_assert_eq!(m.to, 1);
                    prop_assert_eq!(entries_in(&m), entries);
                    feed(&mut core, m);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    counts.assert_healthy("structured requests", 50);
}
