//! The key-space workload of the simulated clients (`SimConfig::kv_txns`): etcd-style Txns
//! and Ranges on top of the plain puts, gets and deletes, and the checks on their answers.
//!
//! - **CAS** on `kN`, the generation-counter loop: a Txn `value(kN) == last seen` (or
//!   `create_revision(kN) == 0` when the client last saw it absent) → put the next
//!   generation (`<n+1>:<fresh id>`), else range `kN`; a CAS that lost retries at once from
//!   the value it found, up to 3 tries. Recorded as a compare-and-set on the register `kN`
//!   (`crate::lincheck`). Expectations use only plain values (a padded large value's bytes
//!   are not its id).
//! - **pair writes**: one Txn puts the same fresh id into `p0` and `p1`, or deletes both;
//!   **pair reads**: a Txn of two Ranges, or a linearizable Range over the prefix `p`. Every
//!   pair read must see both keys absent, or both with the same value and the same
//!   mod_revision (written together, at one revision): the **pair atomicity** check. Each
//!   key's part is also recorded for the per-key linearizability check.
//! - **Range reads** of `kN` through ReadIndex, at the current revision (recorded as a get)
//!   or at a past revision the client saw (a compacted one may answer Compacted).
//! - **Compact** at a revision the client saw minus a few (refusals as Compacted or future
//!   revision are fine).
//!
//! Every Range answer carries the revision it read at: all answers that read one key at one
//! revision, on any member, before or after any compaction, must agree, and no kv's
//! mod_revision may be above the revision read (the **revision consistency** check,
//! [`Observations`]).

use std::collections::BTreeMap;

use rand::Rng;

use super::{value_id, Client, ReqOp};
use crate::lincheck::{OpKind, OpResult};
use crate::sim::world::World;
use crate::state_machine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, MvccError, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use crate::state_machine::{ApplyError, Command, KvResult, KvWrite, Outcome as SmOutcome};

/// The two keys pair writes keep equal.
pub(crate) const PAIR: [&str; 2] = ["p0", "p1"];

/// How many times a CAS loop tries before the client moves on.
const CAS_TRIES: u8 = 3;

/// What the operation in flight is, to read its answer.
#[derive(Clone, Debug, Default)]
pub(crate) enum Pending {
    /// A put, get or delete of one key (the plain mix): the answer is its `OpResult`.
    #[default]
    Single,
    /// A compare-and-set of `key`.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
        /// Which try of the loop this is (from 1).
        tries: u8,
    },
    /// A Txn writing both pair keys.
    PairWrite,
    /// A Txn of two Ranges over the pair keys, or a Range over their prefix.
    PairRead,
    /// A Range of `key` at `revision` (0: the current one, recorded as a get).
    Range { key: String, revision: i64 },
    /// A compaction.
    Compact,
}

/// The next operation: its history entries (key, kind), the request, how to read the answer.
pub(crate) struct Next {
    pub(crate) ops: Vec<(String, OpKind)>,
    pub(crate) req: ReqOp,
    pub(crate) pending: Pending,
}

impl Next {
    pub(crate) fn single(key: String, kind: OpKind, req: ReqOp) -> Next {
        Next {
            ops: vec![(key, kind)],
            req,
            pending: Pending::Single,
        }
    }
}

fn single_range(key: &str, revision: i64) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..RangeRequest::default()
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Command {
    Command::Kv {
        op: KvWrite::Txn(TxnRequest {
            compare,
            success,
            failure,
        }),
        fence: None,
    }
}

impl Client {
    /// The next operation of the key-space mix.
    pub(super) fn next_kv_op(&mut self, w: &mut World) -> Next {
        // A CAS that lost a race retries at once from the value it found (the loop).
        if let Some((key, tries)) = self.cas_retry.take() {
            return self.cas_op(key, tries + 1);
        }
        let keys = w.keys();
        let key = format!("k{}", w.rng().random_range(0..keys));
        match w.rng().random_range(0..20u8) {
            0..=4 => self.cas_op(key, 1),
            5..=6 => self.put_op(w, key),
            7 => self.delete_op(key),
            8..=9 => Next {
                ops: vec![(key.clone(), OpKind::Get)],
                req: ReqOp::Range(single_range(&key, 0)),
                pending: Pending::Range { key, revision: 0 },
            },
            10 => {
                // A past revision this client saw (maybe compacted by now).
                let back = w.rng().random_range(0..4);
                let revision = (self.max_revision - back).max(1);
                Next {
                    ops: Vec::new(),
                    req: ReqOp::Range(single_range(&key, revision)),
                    pending: Pending::Range { key, revision },
                }
            }
            11..=13 => {
                let delete = w.rng().random_range(0..4u8) == 0;
                let (ops, kinds): (Vec<RequestOp>, Vec<(String, OpKind)>) = if delete {
                    PAIR.iter()
                        .map(|k| {
                            let op = RequestOp::DeleteRange(DeleteRangeRequest {
                                key: k.as_bytes().to_vec(),
                                ..DeleteRangeRequest::default()
                            });
                            (op, (k.to_string(), OpKind::Delete))
                        })
                        .unzip()
                } else {
                    let id = self.fresh_id();
                    PAIR.iter()
                        .map(|k| {
                            let op = RequestOp::Put(PutRequest {
                                key: k.as_bytes().to_vec(),
                                value: id.as_bytes().to_vec(),
                                ..PutRequest::default()
                            });
                            (op, (k.to_string(), OpKind::Put(id.clone())))
                        })
                        .unzip()
                };
                Next {
                    ops: kinds,
                    req: self.write(txn(Vec::new(), ops, Vec::new())),
                    pending: Pending::PairWrite,
                }
            }
            14..=16 => {
                let ops = PAIR.iter().map(|k| (k.to_string(), OpKind::Get)).collect();
                let req = if w.rng().random_bool(0.5) {
                    let ranges = PAIR
                        .iter()
                        .map(|k| RequestOp::Range(single_range(k, 0)))
                        .collect();
                    self.write(txn(Vec::new(), ranges, Vec::new()))
                } else {
                    ReqOp::Range(RangeRequest {
                        key: b"p".to_vec(),
                        range_end: b"q".to_vec(),
                        ..RangeRequest::default()
                    })
                };
                Next {
                    ops,
                    req,
                    pending: Pending::PairRead,
                }
            }
            17 if self.max_revision > 1 => {
                let back = w.rng().random_range(0..4);
                let revision = (self.max_revision - back).max(1);
                Next {
                    ops: Vec::new(),
                    req: self.write(Command::Compact { revision }),
                    pending: Pending::Compact,
                }
            }
            _ => Next::single(key.clone(), OpKind::Get, ReqOp::Read(key)),
        }
    }

    /// Try `tries` (from 1) of the generation-counter loop on `key`: compare with the last
    /// value this client saw there if plain (unknown: expect it absent; a failed CAS reads
    /// the key and teaches it), and write the next generation: `<generation>:<fresh id>`.
    fn cas_op(&mut self, key: String, tries: u8) -> Next {
        let expected = self.seen.get(&key).cloned().flatten();
        let generation = expected
            .as_deref()
            .and_then(|v| v.split_once(':'))
            .and_then(|(g, _)| g.parse::<u64>().ok())
            .unwrap_or(0);
        let new = format!("{}:{}", generation + 1, self.fresh_id());
        let target = match &expected {
            Some(v) => CompareTarget::Value(v.as_bytes().to_vec()),
            None => CompareTarget::Create(0),
        };
        let command = txn(
            vec![Compare {
                result: CompareResult::Equal,
                target,
                key: key.as_bytes().to_vec(),
                range_end: Vec::new(),
            }],
            vec![RequestOp::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: new.as_bytes().to_vec(),
                ..PutRequest::default()
            })],
            vec![RequestOp::Range(single_range(&key, 0))],
        );
        Next {
            ops: vec![(
                key.clone(),
                OpKind::Cas {
                    expected: expected.clone(),
                    new: new.clone(),
                },
            )],
            req: self.write(command),
            pending: Pending::Cas {
                key,
                expected,
                new,
                tries,
            },
        }
    }

    /// Reads the answer to a key-space operation (`pending` is not [`Pending::Single`]): the
    /// results of its history entries, in order, or the violation it shows.
    pub(super) fn kv_answer(
        &mut self,
        w: &mut World,
        pending: &Pending,
        answer: KvAnswer,
    ) -> Result<Vec<OpResult>, String> {
        let who = self.idx;
        match (pending, answer) {
            (
                Pending::Cas {
                    key,
                    expected,
                    new,
                    tries,
                },
                KvAnswer::Applied(SmOutcome::Kv(KvResult::Txn(t))),
            ) => {
                let stats = w.stats();
                if t.succeeded {
                    stats.cas_succeeded += 1;
                } else {
                    stats.cas_failed += 1;
                }
                let found = if t.succeeded {
                    self.seen.insert(key.clone(), Some(new.clone()));
                    expected.clone()
                } else {
                    let kv = only_range(&t, 0)?.kvs.first();
                    self.learn(key, kv.map(|kv| kv.value.as_slice()));
                    if *tries < CAS_TRIES {
                        self.cas_retry = Some((key.clone(), *tries));
                    }
                    kv.map(id_of).transpose()?
                };
                Ok(vec![OpResult::Cas {
                    succeeded: t.succeeded,
                    found,
                }])
            }
            (Pending::PairWrite, KvAnswer::Applied(SmOutcome::Kv(KvResult::Txn(t)))) => t
                .responses
                .iter()
                .map(|r| match r {
                    ResponseOp::Put(_) => Ok(OpResult::Put),
                    ResponseOp::DeleteRange(d) => Ok(OpResult::Delete(d.deleted > 0)),
                    other => Err(format!("client {who}: a pair write answered {other:?}")),
                })
                .collect(),
            (Pending::PairRead, KvAnswer::Applied(SmOutcome::Kv(KvResult::Txn(t)))) => {
                let p0 = only_range(&t, 0)?.kvs.first();
                let p1 = only_range(&t, 1)?.kvs.first();
                pair_results(w, who, p0, p1)
            }
            (Pending::PairRead, KvAnswer::Range { revision, result }) => {
                let r = result
                    .map_err(|e| format!("client {who}: a range of the pairs failed: {e}"))?;
                let find = |k: &str| r.kvs.iter().find(|kv| kv.key == k.as_bytes());
                for k in PAIR {
                    w.observations().observe(k.as_bytes(), revision, find(k))?;
                }
                self.max_revision = self.max_revision.max(revision);
                pair_results(w, who, find(PAIR[0]), find(PAIR[1]))
            }
            (
                Pending::Range {
                    key,
                    revision: asked,
                },
                KvAnswer::Range { revision, result },
            ) => {
                let read_at = if *asked > 0 { *asked } else { revision };
                match result {
                    Ok(r) => {
                        let kv = r.kvs.first();
                        w.observations().observe(key.as_bytes(), read_at, kv)?;
                        self.max_revision = self.max_revision.max(revision);
                        if *asked > 0 {
                            w.stats().past_reads += 1;
                            return Ok(Vec::new());
                        }
                        self.learn(key, kv.map(|kv| kv.value.as_slice()));
                        Ok(vec![OpResult::Get(kv.map(id_of).transpose()?)])
                    }
                    // A past revision may be compacted by now.
                    Err(ApplyError::Kv(MvccError::Compacted { .. })) if *asked > 0 => {
                        w.stats().past_reads_compacted += 1;
                        Ok(Vec::new())
                    }
                    Err(e) => Err(format!(
                        "client {who}: a range of {key} at revision {asked} failed: {e}"
                    )),
                }
            }
            (Pending::Compact, KvAnswer::Applied(SmOutcome::Compacted)) => {
                w.stats().compactions += 1;
                Ok(Vec::new())
            }
            (
                Pending::Compact,
                KvAnswer::Rejected(ApplyError::Kv(
                    MvccError::Compacted { .. } | MvccError::FutureRevision,
                )),
            ) => Ok(Vec::new()),
            (pending, answer) => Err(format!("client {who}: answer {answer:?} to {pending:?}")),
        }
    }

    /// Remembers what `key` holds (`None`: absent), for the next CAS's expectation: only
    /// plain values (a padded large value's bytes are not its id).
    pub(super) fn learn(&mut self, key: &str, value: Option<&[u8]>) {
        match value.map(std::str::from_utf8) {
            None => {
                self.seen.insert(key.to_string(), None);
            }
            Some(Ok(v)) if !v.contains('/') => {
                self.seen.insert(key.to_string(), Some(v.to_string()));
            }
            Some(_) => {
                self.seen.remove(key);
            }
        }
    }
}

/// An answer to a key-space operation.
#[derive(Debug)]
pub(crate) enum KvAnswer {
    /// A write (Txn, Compact) applied with this outcome.
    Applied(SmOutcome),
    /// A write was refused.
    Rejected(ApplyError),
    /// A linearizable Range: the store revision it was served at, and its result.
    Range {
        revision: i64,
        result: Result<RangeResponse, ApplyError>,
    },
}

/// The `i`th response of `t`, which must be a Range.
fn only_range(t: &TxnResponse, i: usize) -> Result<&RangeResponse, String> {
    match t.responses.get(i) {
        Some(ResponseOp::Range(r)) => Ok(r),
        other => Err(format!("response {i} of a txn of ranges is {other:?}")),
    }
}

/// The id of a kv's value (see `value_id`).
fn id_of(kv: &KeyValue) -> Result<String, String> {
    let v = String::from_utf8_lossy(&kv.value);
    value_id(&v).map_err(|e| format!("a read returned a corrupted value: {e}"))
}

/// The pair atomicity check, then the two keys' results.
fn pair_results(
    w: &mut World,
    who: usize,
    p0: Option<&KeyValue>,
    p1: Option<&KeyValue>,
) -> Result<Vec<OpResult>, String> {
    check_pair(p0, p1).map_err(|e| format!("client {who}: {e}"))?;
    if p0.is_some() {
        w.stats().pair_reads_present += 1;
    }
    Ok(vec![
        OpResult::Get(p0.map(id_of).transpose()?),
        OpResult::Get(p1.map(id_of).transpose()?),
    ])
}

/// Pair atomicity: `p0` and `p1` are written only together, by one Txn, so a read sees both
/// absent, or both with the same value written at the same revision.
pub(crate) fn check_pair(p0: Option<&KeyValue>, p1: Option<&KeyValue>) -> Result<(), String> {
    let show = |kv: Option<&KeyValue>| match kv {
        None => "absent".to_string(),
        Some(kv) => format!(
            "{:?} at mod_revision {}",
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision
        ),
    };
    let atomic = match (p0, p1) {
        (None, None) => true,
        (Some(a), Some(b)) => a.value == b.value && a.mod_revision == b.mod_revision,
        _ => false,
    };
    if atomic {
        Ok(())
    } else {
        Err(format!(
            "pair atomicity: a read saw p0 {} and p1 {} (one Txn writes both, at one revision)",
            show(p0),
            show(p1)
        ))
    }
}

/// A version a read saw: its value's id and its mod_revision.
type Seen = (String, i64);

/// Revision consistency: every answer that read a key at a revision, on any member and at
/// any time, saw the same version of it (value id and mod_revision), and never a version
/// newer than the revision read.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    /// (key, revision read) → the version seen: its value's id and mod_revision, or absent.
    seen: BTreeMap<(Vec<u8>, i64), Option<Seen>>,
}

impl Observations {
    /// Records that a read of `key` at `revision` saw `kv`.
    ///
    /// # Errors
    /// The violation, when it disagrees with an earlier read or is newer than `revision`.
    pub(crate) fn observe(
        &mut self,
        key: &[u8],
        revision: i64,
        kv: Option<&KeyValue>,
    ) -> Result<(), String> {
        let name = String::from_utf8_lossy(key).into_owned();
        let got = match kv {
            None => None,
            Some(kv) => {
                if kv.mod_revision > revision {
                    return Err(format!(
                        "revision consistency: a read of {name} at revision {revision} saw mod_revision {}",
                        kv.mod_revision
                    ));
                }
                Some((id_of(kv)?, kv.mod_revision))
            }
        };
        match self.seen.get(&(key.to_vec(), revision)) {
            Some(earlier) if *earlier != got => Err(format!(
                "revision consistency: reads of {name} at revision {revision} disagree: {earlier:?} then {got:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.seen.insert((key.to_vec(), revision), got);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: b"p".to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
            create_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn pair_atomicity_accepts_pairs_written_together() {
        assert_eq!(check_pair(None, None), Ok(()));
        assert_eq!(check_pair(Some(&kv("a", 5)), Some(&kv("a", 5))), Ok(()));
    }

    #[test]
    fn pair_atomicity_rejects_a_half_written_pair() {
        let one = check_pair(Some(&kv("a", 5)), None).unwrap_err();
        assert!(one.starts_with("pair atomicity:"), "{one}");
        // Same value, two revisions: the writes of one txn split over two.
        let split = check_pair(Some(&kv("a", 5)), Some(&kv("a", 6))).unwrap_err();
        assert!(split.contains("mod_revision 6"), "{split}");
        assert!(check_pair(Some(&kv("a", 5)), Some(&kv("b", 5))).is_err());
    }

    #[test]
    fn revision_consistency_rejects_two_answers_at_one_revision() {
        let mut o = Observations::default();
        o.observe(b"k0", 7, Some(&kv("a", 5))).unwrap();
        o.observe(b"k0", 7, Some(&kv("a", 5))).unwrap();
        o.observe(b"k0", 8, None).unwrap();
        let e = o.observe(b"k0", 7, None).unwrap_err();
        assert!(e.starts_with("revision consistency:"), "{e}");
        let e = o.observe(b"k1", 4, Some(&kv("a", 5))).unwrap_err();
        assert!(e.contains("saw mod_revision 5"), "{e}");
    }
}
