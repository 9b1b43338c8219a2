//! The watch core against the key space's own history: random writes, watchers created at
//! random points with random starts, ranges and filters, random lag (a bounded queue of
//! batches per watcher that overflows, forcing catch-up from history), compactions and
//! snapshot installs (the state jumps ahead without the batches in between). At the end every
//! watcher delivered exactly the changes of its range from its start, or it was cancelled
//! with the compaction revision because its next revision fell below it.

use super::*;
use crate::state_machine::mvcc::{
    DeleteRangeRequest, KeyValue, NoLeases, PutRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeSet, VecDeque};

const KEYS: [&[u8]; 4] = [b"k0", b"k1", b"k2", b"x"];

/// Batches a watcher's queue holds before it lags (the broadcast capacity, in small).
const QUEUE: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8),
    Delete(usize),
    /// A txn putting (true) or deleting (false) distinct keys.
    Txn(Vec<(usize, bool)>),
    Watch {
        key: usize,
        /// 0: the key alone, 1: prefix "k", 2: from the key on.
        shape: u8,
        /// 0: from now on; else `rev + start - 4` (may be below the compaction or ahead).
        start: i64,
        prev_kv: bool,
        /// 0: none, 1: NOPUT, 2: NODELETE.
        filter: u8,
    },
    /// Watcher `w % watchers` takes up to `n` queued batches.
    Drain(usize, usize),
    /// Compacts `back` revisions behind the current one (if above the compaction).
    Compact(i64),
    /// The state jumps ahead by these puts (and maybe a compaction) without publishing.
    Snapshot(Vec<(usize, u8)>, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..4usize).prop_map(Op::Delete),
        2 => proptest::collection::vec((0..4usize, any::<bool>()), 1..4).prop_map(Op::Txn),
        2 => (0..4usize, 0..3u8, 0..10i64, any::<bool>(), 0..3u8).prop_map(
            |(key, shape, start, prev_kv, filter)| Op::Watch { key, shape, start, prev_kv, filter }
        ),
        4 => (any::<usize>(), 0..5usize).prop_map(|(w, n)| Op::Drain(w, n)),
        1 => (0..4i64).prop_map(Op::Compact),
        1 => (proptest::collection::vec((0..4usize, any::<u8>()), 0..5), any::<bool>())
            .prop_map(|(w, c)| Op::Snapshot(w, c)),
    ]
}

struct TestWatcher {
    w: Watcher,
    start: i64,
    queue: VecDeque<Batch>,
    lagged: bool,
    delivered: Vec<Event>,
    cancelled: Option<i64>,
    /// Revisions it caught up from while they were the compaction revision: their
    /// deletes are gone from the history (etcd's behaviour too).
    lossy: BTreeSet<i64>,
}

impl TestWatcher {
    fn feed(&mut self, step: Step, keys: &KeySpace) {
        let mut step = step;
        loop {
            match step {
                Step::Deliver(events) => {
                    self.delivered.extend(events);
                    return;
                }
                Step::Compacted(c) => {
                    assert!(
                        self.w.next() < c,
                        "cancelled at {} >= compact {c}",
                        self.w.next()
                    );
                    self.cancelled = Some(c);
                    return;
                }
                Step::CatchUp => step = self.catch_up(keys),
            }
        }
    }

    fn catch_up(&mut self, keys: &KeySpace) -> Step {
        if self.w.next() != 0 && self.w.next() == keys.compact_revision() {
            self.lossy.insert(self.w.next());
        }
        let s = self.w.spec().clone();
        let h = history(keys, self.w.next(), &s.key, &s.range_end, s.prev_kv);
        let step = self.w.caught_up(&h);
        // A cut answer leaves the watcher behind the store: the next batch finds the gap.
        step
    }

    fn drain(&mut self, n: usize, keys: &KeySpace) {
        if self.cancelled.is_some() {
            self.queue.clear();
            self.lagged = false;
            return;
        }
        if self.lagged {
            self.lagged = false;
            let step = self.catch_up(keys);
            self.feed(step, keys);
        }
        for _ in 0..n {
            let Some(b) = self.queue.pop_front() else {
                return;
            };
            if self.cancelled.is_some() {
                return;
            }
            let step = self.w.offer(&b);
            self.feed(step, keys);
        }
    }
}

fn put(keys: &mut KeySpace, k: usize, v: u8) {
    let req = PutRequest {
        key: KEYS[k].to_vec(),
        value: vec![v],
        ..PutRequest::default()
    };
    keys.put(&req, &NoLeases)
        .unwrap_or_else(|e| panic!("put: {e}"));
}

fn write(keys: &mut KeySpace, op: &Op) {
    match op {
        Op::Put(k, v) => put(keys, *k, *v),
        Op::Delete(k) => {
            let req = DeleteRangeRequest {
                key: KEYS[*k].to_vec(),
                ..DeleteRangeRequest::default()
            };
            keys.delete_range(&req)
                .unwrap_or_else(|e| panic!("delete: {e}"));
        }
        Op::Txn(ops) => {
            let mut seen = BTreeSet::new();
            let success = ops
                .iter()
                .filter(|(k, _)| seen.insert(*k))
                .map(|&(k, is_put)| {
                    if is_put {
                        RequestOp::Put(PutRequest {
                            key: KEYS[k].to_vec(),
                            value: b"t".to_vec(),
                            ..PutRequest::default()
                        })
                    } else {
                        RequestOp::DeleteRange(DeleteRangeRequest {
                            key: KEYS[k].to_vec(),
                            ..DeleteRangeRequest::default()
                        })
                    }
                })
                .collect();
            let req = TxnRequest {
                success,
                ..TxnRequest::default()
            };
            keys.txn(&req, &NoLeases)
                .unwrap_or_else(|e| panic!("txn: {e}"));
        }
        _ => {}
    }
}

fn spec(key: usize, shape: u8, prev_kv: bool, filter: u8) -> WatchSpec {
    let (key, range_end) = match shape {
        0 => (KEYS[key].to_vec(), Vec::new()),
        1 => (b"k".to_vec(), b"l".to_vec()),
        _ => (KEYS[key].to_vec(), vec![0]),
    };
    WatchSpec {
        key,
        range_end,
        no_put: filter == 1,
        no_delete: filter == 2,
        prev_kv,
    }
}

/// Runs `ops`; checks every watcher against `truth` (the same writes, never compacted).
fn run(ops: &[Op], drop_snapshot_catch_up: bool) -> Result<(), String> {
    let mut keys = KeySpace::new();
    let mut truth = KeySpace::new();
    let mut publisher = Publisher::new(keys.revision());
    publisher.set_drop_snapshot_catch_up(drop_snapshot_catch_up);
    let mut watchers: Vec<TestWatcher> = Vec::new();
    for op in ops {
        match op {
            Op::Put(..) | Op::Delete(_) | Op::Txn(_) => {
                write(&mut keys, op);
                write(&mut truth, op);
            }
            Op::Watch {
                key,
                shape,
                start,
                prev_kv,
                filter,
            } => {
                let start = if *start == 0 {
                    0
                } else {
                    (keys.revision() + start - 4).max(1)
                };
                let mut t = TestWatcher {
                    w: Watcher::new(spec(*key, *shape, *prev_kv, *filter), start),
                    start,
                    queue: VecDeque::new(),
                    lagged: false,
                    delivered: Vec::new(),
                    cancelled: None,
                    lossy: BTreeSet::new(),
                };
                let step = t.catch_up(&keys);
                if t.start == 0 {
                    t.start = t.w.next();
                }
                t.feed(step, &keys);
                watchers.push(t);
            }
            Op::Drain(w, n) => {
                if !watchers.is_empty() {
                    let i = w % watchers.len();
                    watchers[i].drain(*n, &keys);
                }
            }
            Op::Compact(back) => {
                let target = keys.revision() - back;
                if target > keys.compact_revision() {
                    keys.compact(target).map_err(|e| e.to_string())?;
                }
            }
            Op::Snapshot(puts, compact) => {
                let mut next = keys.clone();
                for &(k, v) in puts {
                    put(&mut next, k, v);
                    put(&mut truth, k, v);
                }
                if *compact && next.revision() > next.compact_revision() {
                    next.compact(next.revision()).map_err(|e| e.to_string())?;
                }
                keys = next;
                publisher.snapshot_installed(&keys);
            }
        }
        // What the driver does after each Ready.
        if let Some(b) = publisher.publish(&keys, true, true) {
            for t in &mut watchers {
                if t.queue.len() == QUEUE {
                    t.queue.clear();
                    t.lagged = true;
                } else {
                    t.queue.push_back(b.clone());
                }
            }
        }
    }
    for t in &mut watchers {
        while !t.queue.is_empty() || t.lagged {
            t.drain(usize::MAX, &keys);
        }
        if t.cancelled.is_none() && t.w.next() <= keys.revision() {
            // A cut history answer: the last catch-ups.
            while t.cancelled.is_none() && t.w.next() <= keys.revision() {
                let step = t.catch_up(&keys);
                t.feed(step, &keys);
            }
        }
    }
    for (i, t) in watchers.iter().enumerate() {
        let s = t.w.spec();
        let expected: Vec<Event> = truth
            .changes(t.start.max(1), &s.key, &s.range_end, true)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| match e.kind {
                EventKind::Put => !s.no_put,
                EventKind::Delete => !s.no_delete && !t.lossy.contains(&e.kv.mod_revision),
            })
            .collect();
        let strip = |e: &Event| (e.kind, e.kv.clone());
        let got: Vec<(EventKind, KeyValue)> = t.delivered.iter().map(strip).collect();
        let want: Vec<(EventKind, KeyValue)> = expected.iter().map(strip).collect();
        match t.cancelled {
            None if got != want => {
                return Err(format!(
                    "watcher {i} (start {}, {s:?}): delivered {got:?}, expected {want:?}",
                    t.start
                ))
            }
            None => {}
            Some(_) if !want.starts_with(&got) => {
                return Err(format!(
                    "cancelled watcher {i}: delivered {got:?}, not a prefix of {want:?}"
                ))
            }
            Some(_) => {}
        }
        for (g, e) in t.delivered.iter().zip(&expected) {
            if !s.prev_kv && g.prev_kv.is_some() {
                return Err(format!("watcher {i}: prev_kv it did not ask for"));
            }
            if s.prev_kv && g.prev_kv.is_some() && g.prev_kv != e.prev_kv {
                return Err(format!(
                    "watcher {i}: prev_kv {:?} != {:?}",
                    g.prev_kv, e.prev_kv
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    #[test]
    fn every_watcher_delivers_exactly_the_history(ops in proptest::collection::vec(op(), 1..80)) {
        if let Err(e) = run(&ops, false) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn the_checker_catches_events_dropped_on_a_snapshot_catch_up() {
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let found = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        run(&ops, true).map_err(TestCaseError::fail)
    });
    assert!(
        found.is_err(),
        "2000 runs never noticed the dropped catch-up"
    );
}

#[test]
fn a_start_below_the_compaction_is_cancelled_with_the_compaction_revision() {
    let mut keys = KeySpace::new();
    for v in 0..5 {
        put(&mut keys, 0, v);
    }
    keys.compact(4).unwrap_or_else(|e| panic!("{e}"));
    let mut w = Watcher::new(spec(0, 0, false, 0), 2);
    let h = history(&keys, w.next(), b"k0", b"", false);
    assert_eq!(w.caught_up(&h), Step::Compacted(4));
    // At the compaction revision itself: the surviving put.
    let mut w = Watcher::new(spec(0, 0, false, 0), 4);
    let h = history(&keys, w.next(), b"k0", b"", false);
    match w.caught_up(&h) {
        Step::Deliver(events) => assert_eq!(
            events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
            vec![4, 5, 6]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_long_history_comes_in_cut_answers_without_gap_or_duplicate() {
    let mut keys = KeySpace::new();
    let n = MAX_HISTORY_EVENTS + 100;
    for i in 0..n {
        put(&mut keys, i % 2, 1);
    }
    let mut w = Watcher::new(spec(0, 2, false, 0), 1);
    let mut revs = Vec::new();
    while w.next() <= keys.revision() {
        let h = history(&keys, w.next(), b"k0", &[0], false);
        assert!(h.reflects < keys.revision() || revs.len() >= MAX_HISTORY_EVENTS);
        match w.caught_up(&h) {
            Step::Deliver(events) => revs.extend(events.iter().map(|e| e.kv.mod_revision)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(revs, (2..=keys.revision()).collect::<Vec<_>>());
}
