//! Model-based test of the lease → keys index: a [`StateMachine`] driven through encoded
//! commands (grants, revokes, puts with and without leases, deletes, txns whose compares pick
//! a branch and txns that fail and roll back, compactions, snapshot/restore) against a naive
//! model that keeps each key's value and lease and finds a lease's keys by scanning them all.

use crate::state_machine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KvLeaseSwitch, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use crate::state_machine::SessionLimits;
use crate::state_machine::{ApplyError, Command, KvWrite, Outcome, Proposal, StateMachine};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;

/// Lease ids the ops name: 1..=3 may be granted; 4 never is.
const LEASES: std::ops::RangeInclusive<i64> = 1..=4;

#[derive(Clone, Debug)]
enum Op {
    Grant(i64),
    Revoke(i64),
    Put {
        key: u8,
        lease: i64,
        ignore_lease: bool,
    },
    Delete {
        key: u8,
        to_end: bool,
    },
    /// If `key` exists: put `a` with `lease_a`, delete `b`; else put `c` with `lease_c`.
    Txn {
        key: u8,
        a: u8,
        lease_a: i64,
        b: u8,
        c: u8,
        lease_c: i64,
    },
    Compact,
    Snapshot,
}

fn key() -> impl Strategy<Value = u8> {
    0u8..5
}

fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 3 => 1i64..=3, 1 => Just(4i64)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1i64..=3).prop_map(Op::Grant),
        1 => (1i64..=4).prop_map(Op::Revoke),
        4 => (key(), lease(), prop::bool::weighted(0.15))
            .prop_map(|(key, lease, ignore_lease)| Op::Put { key, lease, ignore_lease }),
        1 => (key(), prop::bool::weighted(0.2)).prop_map(|(key, to_end)| Op::Delete { key, to_end }),
        3 => (key(), key(), lease(), key(), key(), lease()).prop_map(
            |(key, a, lease_a, b, c, lease_c)| Op::Txn { key, a, lease_a, b, c, lease_c }
        ),
        1 => Just(Op::Compact),
        1 => Just(Op::Snapshot),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..60)
}

fn k(key: u8) -> Vec<u8> {
    vec![b'a' + key]
}

fn put(key: u8, lease: i64) -> PutRequest {
    PutRequest {
        key: k(key),
        value: b"v".to_vec(),
        lease,
        ..PutRequest::default()
    }
}

/// The naive model: key → lease of its live version, and lease → granted TTL.
#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, i64>,
    leases: BTreeMap<i64, i64>,
    revision: i64,
}

impl Model {
    fn exists(&self, lease: i64) -> bool {
        lease == 0 || self.leases.contains_key(&lease)
    }

    /// The keys attached to `lease`, by scanning every key.
    fn keys_of(&self, lease: i64) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(_, l)| **l == lease)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

struct Run {
    sm: StateMachine,
    model: Model,
    index: u64,
}

impl Run {
    fn apply(&mut self, command: Command) -> Result<Outcome, ApplyError> {
        self.index += 1;
        let data = Proposal {
            session: None,
            command,
        }
        .encode();
        self.sm.apply(self.index, &data)
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let m = &mut self.model;
        match *op {
            Op::Grant(id) => {
                let got = self.apply(Command::LeaseGrant { id, ttl: 10 + id });
                let m = &mut self.model;
                let ok = !m.leases.contains_key(&id);
                if ok {
                    m.leases.insert(id, 10 + id);
                }
                if got.is_ok() != ok {
                    return Err(format!("grant {id}: {got:?}"));
                }
            }
            Op::Revoke(id) => {
                let known = m.leases.remove(&id).is_some();
                let doomed = m.keys_of(id);
                if known {
                    m.keys.retain(|_, l| *l != id);
                    if !doomed.is_empty() {
                        m.revision += 1;
                    }
                }
                let got = self.apply(Command::LeaseRevoke { id });
                match got {
                    Ok(Outcome::LeaseRevoked { deleted }) if known => {
                        if deleted != doomed.len() as u64 {
                            return Err(format!("revoke {id} deleted {deleted}, not {doomed:?}"));
                        }
                    }
                    Err(ApplyError::Kv(_)) if !known => {}
                    other => return Err(format!("revoke {id}: {other:?}")),
                }
            }
            Op::Put {
                key,
                lease,
                ignore_lease,
            } => {
                let mut req = put(key, if ignore_lease { 0 } else { lease });
                req.ignore_lease = ignore_lease;
                let ok = if ignore_lease {
                    m.keys.contains_key(&k(key))
                } else {
                    m.exists(lease)
                };
                if ok {
                    let keep = m.keys.get(&k(key)).copied().unwrap_or(0);
                    m.keys
                        .insert(k(key), if ignore_lease { keep } else { lease });
                    m.revision += 1;
                }
                let got = self.apply(Command::Kv {
                    op: KvWrite::Put(req),
                    fence: None,
                });
                if got.is_ok() != ok {
                    return Err(format!("put: {got:?}"));
                }
            }
            Op::Delete { key, to_end } => {
                let before = m.keys.len();
                m.keys.retain(|kk, _| {
                    if to_end {
                        kk.as_slice() < k(key).as_slice()
                    } else {
                        *kk != k(key)
                    }
                });
                if m.keys.len() != before {
                    m.revision += 1;
                }
                let req = DeleteRangeRequest {
                    key: k(key),
                    range_end: if to_end { vec![0] } else { Vec::new() },
                    prev_kv: false,
                };
                self.apply(Command::Kv {
                    op: KvWrite::DeleteRange(req),
                    fence: None,
                })
                .map_err(|e| format!("delete: {e}"))?;
            }
            Op::Txn {
                key,
                a,
                lease_a,
                b,
                c,
                lease_c,
            } => {
                let exists = m.keys.contains_key(&k(key));
                let (ops, model_ok) = if exists {
                    (
                        vec![
                            RequestOp::Put(put(a, lease_a)),
                            RequestOp::DeleteRange(DeleteRangeRequest {
                                key: k(b),
                                ..DeleteRangeRequest::default()
                            }),
                        ],
                        m.exists(lease_a),
                    )
                } else {
                    (vec![RequestOp::Put(put(c, lease_c))], m.exists(lease_c))
                };
                if model_ok {
                    // A put always writes, so the txn takes a revision.
                    m.revision += 1;
                    if exists {
                        m.keys.insert(k(a), lease_a);
                        m.keys.remove(&k(b));
                    } else {
                        m.keys.insert(k(c), lease_c);
                    }
                }
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Greater,
                        target: CompareTarget::Version(0),
                        key: k(key),
                        range_end: Vec::new(),
                    }],
                    success: ops.clone(),
                    failure: ops,
                };
                let got = self.apply(Command::Kv {
                    op: KvWrite::Txn(txn),
                    fence: None,
                });
                if got.is_ok() != model_ok {
                    return Err(format!("txn: {got:?}"));
                }
            }
            Op::Compact => {
                // Fails when nothing was written since the last compaction: either way the
                // index must not change.
                let revision = self.sm.revision();
                let _ = self.apply(Command::Compact { revision });
            }
            Op::Snapshot => {
                self.sm = StateMachine::restore(&self.sm.snapshot(), SessionLimits::default())
                    .map_err(|e| format!("restore: {e}"))?;
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        let (sm, m) = (&self.sm, &self.model);
        if sm.revision() != m.revision + 1 {
            return Err(format!(
                "revision {} != model {}",
                sm.revision(),
                m.revision + 1
            ));
        }
        let table: Vec<(i64, i64)> = sm.key_leases().iter().collect();
        let want: Vec<(i64, i64)> = m.leases.iter().map(|(a, b)| (*a, *b)).collect();
        if table != want {
            return Err(format!("lease table {table:?} != model {want:?}"));
        }
        for id in LEASES {
            let got: Vec<Vec<u8>> = sm.key_space().lease_keys(id).map(<[u8]>::to_vec).collect();
            if got != m.keys_of(id) {
                return Err(format!(
                    "lease {id}'s keys {got:?} != model {:?}",
                    m.keys_of(id)
                ));
            }
        }
        let in_use: Vec<i64> = sm.key_space().leases_in_use().map(|(id, _)| id).collect();
        let mut want_in_use: Vec<i64> = m.keys.values().copied().filter(|l| *l != 0).collect();
        want_in_use.sort_unstable();
        want_in_use.dedup();
        if in_use != want_in_use {
            return Err(format!("leases in use {in_use:?} != model {want_in_use:?}"));
        }
        let all = sm
            .range(&RangeRequest::every_key())
            .map_err(|e| e.to_string())?;
        let got: BTreeMap<Vec<u8>, i64> =
            all.kvs.into_iter().map(|kv| (kv.key, kv.lease)).collect();
        if got != m.keys {
            return Err(format!("keys {got:?} != model {:?}", m.keys));
        }
        Ok(())
    }
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut r = Run {
        sm: StateMachine::new(),
        model: Model::default(),
        index: 0,
    };
    for (i, op) in ops.iter().enumerate() {
        r.step(op)
            .map_err(|e| format!("step {} ({op:?}): {e}", i + 1))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn the_lease_index_matches_a_scan_of_every_key(ops in ops()) {
        let r = run(&ops);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    }
}

/// Mutation: a txn's writes leave the lease index alone, so a revoke forgets the keys
/// attached through a txn. The model test must catch it.
#[test]
fn the_model_test_catches_a_revoke_that_forgets_keys_attached_in_a_txn() {
    KvLeaseSwitch::set(true);
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&ops(), |ops| {
        let r = run(&ops);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
        Ok(())
    });
    KvLeaseSwitch::set(false);
    assert!(
        outcome.is_err(),
        "the model test did not notice keys attached in a txn missing from the lease index"
    );
}

/// A revoke deletes every attached key at one revision, and the deletes show in `changes`.
#[test]
fn a_revoke_deletes_its_keys_at_one_revision_seen_by_changes() {
    let mut r = Run {
        sm: StateMachine::new(),
        model: Model::default(),
        index: 0,
    };
    r.step(&Op::Grant(1)).unwrap();
    r.step(&Op::Put {
        key: 0,
        lease: 1,
        ignore_lease: false,
    })
    .unwrap();
    r.step(&Op::Put {
        key: 1,
        lease: 1,
        ignore_lease: false,
    })
    .unwrap();
    r.step(&Op::Put {
        key: 2,
        lease: 0,
        ignore_lease: false,
    })
    .unwrap();
    let before = r.sm.revision();
    assert_eq!(
        r.apply(Command::LeaseRevoke { id: 1 }),
        Ok(Outcome::LeaseRevoked { deleted: 2 })
    );
    assert_eq!(
        r.sm.revision(),
        before + 1,
        "one revision for the whole revoke"
    );
    let events =
        r.sm.key_space()
            .changes(before + 1, &[0], &[0], false)
            .unwrap();
    let deleted: Vec<(Vec<u8>, i64)> = events
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(deleted, vec![(k(0), before + 1), (k(1), before + 1)]);
    assert!(r.sm.key_leases().ttl(1).is_none());
    assert_eq!(
        r.sm.get_bytes(&k(2)),
        Some(&b"v"[..]),
        "keys of no lease stay"
    );
    assert_eq!(
        r.apply(Command::LeaseRevoke { id: 1 })
            .unwrap_err()
            .to_string(),
        "requested lease not found"
    );
}
