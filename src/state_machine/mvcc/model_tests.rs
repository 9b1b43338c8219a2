//! Model-based test: [`KeySpace`] against a naive reference model that keeps a full copy of
//! the key space for every revision, driven by random puts, deletes, txns (nested), ranges,
//! compactions and snapshot/restore round trips over a small key alphabet. After every step
//! it compares every range at every revision and every `changes` start.

use super::store::SPLIT_TXN_WRITES;
use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Leases 1 and 2 exist; any other non-zero id does not.
struct TwoLeases;

impl LeaseLookup for TwoLeases {
    fn exists(&self, lease: i64) -> bool {
        matches!(lease, 0..=2)
    }
}

type Map = BTreeMap<Vec<u8>, KeyValue>;

/// The reference: `states[r]` is the whole key space at revision `r`.
struct Model {
    states: Vec<Map>,
    /// (revision, event without prev_kv), in the order they happened.
    events: Vec<(i64, Event)>,
    compact: i64,
}

/// One write call in progress in the model.
struct Ctx {
    map: Map,
    rev: i64,
    pre_rev: i64,
    events: Vec<(i64, Event)>,
}

fn member(key: &[u8], begin: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == begin
    } else if end == [0] {
        key >= begin
    } else {
        begin <= key && key < end
    }
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![Map::new(), Map::new()],
            events: Vec::new(),
            compact: 0,
        }
    }

    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            map: self.states[self.states.len() - 1].clone(),
            rev: self.rev() + 1,
            pre_rev: self.rev(),
            events: Vec::new(),
        }
    }

    fn finish<T>(&mut self, ctx: Ctx, r: Result<T, MvccError>) -> Result<T, MvccError> {
        if r.is_ok() && !ctx.events.is_empty() {
            self.states.push(ctx.map);
            self.events.extend(ctx.events);
        }
        r
    }

    fn range(&self, ctx: &Ctx, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.revision > ctx.pre_rev {
            return Err(MvccError::FutureRevision);
        }
        if req.revision > 0 && req.revision < self.compact {
            return Err(MvccError::Compacted {
                compact_revision: self.compact,
            });
        }
        let map = if req.revision <= 0 {
            &ctx.map
        } else {
            &self.states[req.revision as usize]
        };
        let all: Vec<KeyValue> = map
            .values()
            .filter(|kv| member(&kv.key, &req.key, &req.range_end))
            .cloned()
            .collect();
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: vec![],
                more: false,
                count,
            });
        }
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            .filter(|kv| req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            .filter(|kv| {
                req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision
            })
            .filter(|kv| {
                req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision
            })
            .collect();
        let target = |a: &KeyValue, b: &KeyValue| match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        match req.sort_order {
            SortOrder::Descend => kvs.sort_by(|a, b| target(b, a)),
            SortOrder::Ascend => kvs.sort_by(target),
            SortOrder::None => kvs.sort_by(target),
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse { kvs, more, count })
    }

    fn put(&self, ctx: &mut Ctx, req: &PutRequest) -> Result<PutResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if !TwoLeases.exists(req.lease) {
            return Err(MvccError::LeaseNotFound(req.lease));
        }
        let prev = ctx.map.get(&req.key).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(ctx.rev, |p| p.create_revision),
            mod_revision: ctx.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: match &prev {
                Some(p) if req.ignore_value => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match &prev {
                Some(p) if req.ignore_lease => p.lease,
                _ => req.lease,
            },
        };
        ctx.map.insert(req.key.clone(), kv.clone());
        ctx.events.push((
            ctx.rev,
            Event {
                kind: EventKind::Put,
                kv,
                prev_kv: None,
            },
        ));
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(
        &self,
        ctx: &mut Ctx,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let doomed: Vec<KeyValue> = ctx
            .map
            .values()
            .filter(|kv| member(&kv.key, &req.key, &req.range_end))
            .cloned()
            .collect();
        for kv in &doomed {
            ctx.map.remove(&kv.key);
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: ctx.rev,
                ..KeyValue::default()
            };
            ctx.events.push((
                ctx.rev,
                Event {
                    kind: EventKind::Delete,
                    kv: tomb,
                    prev_kv: None,
                },
            ));
        }
        Ok(DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { vec![] },
        })
    }

    fn holds(map: &Map, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = map
            .values()
            .filter(|kv| member(&kv.key, &c.key, &c.range_end))
            .collect();
        let one = |kv: &KeyValue| {
            let ord = match &c.target {
                CompareTarget::Version(t) => kv.version.cmp(t),
                CompareTarget::Create(t) => kv.create_revision.cmp(t),
                CompareTarget::Mod(t) => kv.mod_revision.cmp(t),
                CompareTarget::Lease(t) => kv.lease.cmp(t),
                CompareTarget::Value(t) => kv.value.cmp(t),
            };
            match c.result {
                CompareResult::Equal => ord == Ordering::Equal,
                CompareResult::NotEqual => ord != Ordering::Equal,
                CompareResult::Greater => ord == Ordering::Greater,
                CompareResult::Less => ord == Ordering::Less,
            }
        };
        if kvs.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_)) && one(&KeyValue::default());
        }
        kvs.into_iter().all(one)
    }

    fn path(map: &Map, req: &TxnRequest, out: &mut Vec<bool>) {
        let ok = req.compare.iter().all(|c| Self::holds(map, c));
        out.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let RequestOp::Txn(t) = op {
                Self::path(map, t, out);
            }
        }
    }

    fn run_txn(
        &self,
        ctx: &mut Ctx,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*at];
        *at += 1;
        let mut responses = vec![];
        let mut revisions = vec![];
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(ctx, r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(ctx, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(ctx, d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.run_txn(ctx, t, path, at)?),
            });
            revisions.push(if ctx.events.is_empty() {
                ctx.pre_rev
            } else {
                ctx.rev
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
            revisions,
        })
    }

    /// The non-txn ops the path runs, in order.
    fn flatten<'a>(
        req: &'a TxnRequest,
        path: &[bool],
        at: &mut usize,
        out: &mut Vec<&'a RequestOp>,
    ) {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &req.success } else { &req.failure } {
            match op {
                RequestOp::Txn(t) => Self::flatten(t, path, at, out),
                op => out.push(op),
            }
        }
    }

    /// etcd's checks before a txn runs: puts first, then ranges, on the state before it.
    fn precheck(&self, map: &Map, ops: &[&RequestOp]) -> Result<(), MvccError> {
        for op in ops {
            if let RequestOp::Put(p) = op {
                if (p.ignore_value || p.ignore_lease) && !map.contains_key(&p.key) {
                    return Err(MvccError::KeyNotFound);
                }
                if !TwoLeases.exists(p.lease) {
                    return Err(MvccError::LeaseNotFound(p.lease));
                }
            }
        }
        for op in ops {
            if let RequestOp::Range(r) = op {
                let first = if self.compact == 0 { -1 } else { self.compact };
                if r.revision != 0 && r.revision > self.rev() {
                    return Err(MvccError::FutureRevision);
                }
                if r.revision != 0 && r.revision < first {
                    return Err(MvccError::Compacted {
                        compact_revision: self.compact,
                    });
                }
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut ctx = self.ctx();
        let mut path = vec![];
        Self::path(&ctx.map, req, &mut path);
        let mut ops = vec![];
        Self::flatten(req, &path, &mut 0, &mut ops);
        self.precheck(&ctx.map, &ops)?;
        let r = self.run_txn(&mut ctx, req, &path, &mut 0);
        self.finish(ctx, r)
    }

    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact {
            return Err(MvccError::Compacted {
                compact_revision: self.compact,
            });
        }
        if rev > self.rev() {
            return Err(MvccError::FutureRevision);
        }
        self.compact = rev;
        Ok(())
    }

    fn changes(
        &self,
        from: i64,
        key: &[u8],
        end: &[u8],
        prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        if from < self.compact {
            return Err(MvccError::Compacted {
                compact_revision: self.compact,
            });
        }
        let mut out = vec![];
        for (i, (rev, ev)) in self.events.iter().enumerate() {
            if *rev < from || !member(&ev.kv.key, key, end) {
                continue;
            }
            if *rev == self.compact {
                // Only a put that was its key's last change at the compaction revision.
                let last = !self.events[i + 1..]
                    .iter()
                    .any(|(r, e)| r == rev && e.kv.key == ev.kv.key);
                if !(last && ev.kind == EventKind::Put) {
                    continue;
                }
            }
            let mut ev = ev.clone();
            if prev_kv && *rev > self.compact {
                ev.prev_kv = self.states[(rev - 1) as usize].get(&ev.kv.key).cloned();
            }
            out.push(ev);
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Range(RangeRequest),
    /// Compact at `selector % (revision + 2)`.
    Compact(u8),
    Snapshot,
}

const KEYS: &[&[u8]] = &[b"a", b"ab", b"b", b"c", b"d"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![0]),
        2 => key(),
        1 => key().prop_map(|k| prefix_end(&k)),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    const VALUES: &[&[u8]] = &[b"", b"x", b"yy", b"z"];
    prop::sample::select(VALUES).prop_map(|v| v.to_vec())
}

fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        prop_oneof![4 => Just(0i64), 1 => 1..4i64],
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn small_rev() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 1 => -1..12i64]
}

fn range() -> impl Strategy<Value = RangeRequest> {
    let order = prop::sample::select(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend][..]);
    let target = prop::sample::select(
        &[
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][..],
    );
    let filter = prop_oneof![4 => Just(0i64), 1 => 1..10i64];
    (
        (
            key(),
            range_end(),
            prop_oneof![2 => Just(0i64), 1 => 1..4i64],
            small_rev(),
        ),
        (
            order,
            target,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        ),
        (filter.clone(), filter.clone(), filter.clone(), filter),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (sort_order, sort_target, keys_only, count_only),
                (a, b, c, d),
            )| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    min_mod_revision: a,
                    max_mod_revision: b,
                    min_create_revision: c,
                    max_create_revision: d,
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(
        &[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ][..],
    );
    let target = prop_oneof![
        (0..4i64).prop_map(CompareTarget::Version),
        (0..8i64).prop_map(CompareTarget::Create),
        (0..8i64).prop_map(CompareTarget::Mod),
        value().prop_map(CompareTarget::Value),
        (0..3i64).prop_map(CompareTarget::Lease),
    ];
    (
        result,
        target,
        key(),
        prop_oneof![3 => Just(vec![]), 1 => range_end()],
    )
        .prop_map(|(result, target, key, range_end)| Compare {
            result,
            target,
            key,
            range_end,
        })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        3 => put().prop_map(RequestOp::Put),
        2 => delete().prop_map(RequestOp::DeleteRange),
        2 => range().prop_map(RequestOp::Range),
    ];
    let op = leaf.prop_recursive(2, 12, 4, |inner| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(inner.clone(), 0..4),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(compare, success, failure)| {
                RequestOp::Txn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    });
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put().prop_map(Op::Put),
        2 => delete().prop_map(Op::Delete),
        4 => txn().prop_map(Op::Txn),
        2 => range().prop_map(Op::Range),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => Just(Op::Snapshot),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..40)
}

fn same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    step: usize,
    got: T,
    want: T,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "step {step}: {what}: store {got:?}, model {want:?}"
        ))
    }
}

/// Everything observable, after a step: revisions, len, every range at every revision, every
/// `changes` start.
fn check_all(step: usize, store: &KeySpace, model: &Model) -> Result<(), String> {
    same("revision", step, store.revision(), model.rev())?;
    same(
        "compact revision",
        step,
        store.compact_revision(),
        model.compact,
    )?;
    same(
        "len",
        step,
        store.len(),
        model.states[model.states.len() - 1].len(),
    )?;
    let top = model.ctx();
    for rev in 0..=model.rev() + 1 {
        let req = RangeRequest {
            revision: rev,
            ..RangeRequest::every_key()
        };
        same(
            &format!("range all at {rev}"),
            step,
            store.range(&req),
            model.range(&top, &req),
        )?;
    }
    for from in 0..=model.rev() + 1 {
        same(
            &format!("changes from {from}"),
            step,
            store.changes(from, &[0], &[0], true),
            model.changes(from, &[0], &[0], true),
        )?;
        same(
            &format!("changes of [ab, c) from {from}"),
            step,
            store.changes(from, b"ab", b"c", false),
            model.changes(from, b"ab", b"c", false),
        )?;
    }
    Ok(())
}

fn round_trip(store: &KeySpace) -> Result<KeySpace, String> {
    let bytes = postcard::to_allocvec(&store.snapshot_view()).map_err(|e| e.to_string())?;
    let decoded: KeySpaceSnapshot = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
    if decoded != store.snapshot() {
        return Err("the view and the owned snapshot differ".into());
    }
    KeySpace::restore(decoded)
}

/// Runs `ops` on a fresh store and a fresh model; the first difference, if any.
fn run(ops: &[Op]) -> Result<(), String> {
    let mut store = KeySpace::new();
    let mut model = Model::new();
    check_all(0, &store, &model)?;
    for (step, op) in ops.iter().enumerate() {
        let step = step + 1;
        match op {
            Op::Put(p) => {
                let mut ctx = model.ctx();
                let want = model.put(&mut ctx, p);
                let want = model.finish(ctx, want);
                same("put", step, store.put(p, &TwoLeases), want)?;
            }
            Op::Delete(d) => {
                let mut ctx = model.ctx();
                let want = model.delete(&mut ctx, d);
                let want = model.finish(ctx, want);
                same("delete", step, store.delete_range(d), want)?;
            }
            Op::Txn(t) => same("txn", step, store.txn(t, &TwoLeases), model.txn(t))?,
            Op::Range(r) => same("range", step, store.range(r), model.range(&model.ctx(), r))?,
            Op::Compact(sel) => {
                let rev = i64::from(*sel) % (model.rev() + 2);
                same("compact", step, store.compact(rev), model.compact(rev))?;
            }
            Op::Snapshot => {
                store = round_trip(&store).map_err(|e| format!("step {step}: restore: {e}"))?
            }
        }
        check_all(step, &store, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    #[test]
    fn key_space_matches_the_model(ops in ops()) {
        let r = run(&ops);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
    }
}

/// The mutation switch: a txn that gives its second write a revision of its own must be
/// caught by the model test.
#[test]
fn model_test_catches_split_txn_writes() {
    SPLIT_TXN_WRITES.with(|s| s.set(true));
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&ops(), |ops| {
        let r = run(&ops);
        prop_assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
        Ok(())
    });
    SPLIT_TXN_WRITES.with(|s| s.set(false));
    assert!(
        outcome.is_err(),
        "the model test did not notice txn writes at two revisions"
    );
}
