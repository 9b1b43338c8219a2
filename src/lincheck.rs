//! Linearizability checker for key-value histories (Wing & Gong's search with Lowe's
//! memoisation, the algorithm Porcupine uses), partitioned per key: single-key operations on
//! a map are linearizable iff each key's sub-history is (linearizability is local, Herlihy &
//! Wing 1990). Each key is a register with put, delete, get and compare-and-set.
//!
//! An operation whose outcome the client never learned (timed out) may have taken effect at
//! any time after it was invoked, or never: it is given an infinite completion time and an
//! unconstrained result, which covers both (taking effect after everything else is
//! indistinguishable from never). An unknown compare-and-set takes effect where it is
//! linearized exactly when the register then holds its expected value, as a real one would.
//!
//! Pure: used by the simulator and by the real-process fault runner alike.

use std::collections::{BTreeMap, HashSet};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Set the key.
    Put(String),
    /// Remove the key.
    Delete,
    /// Read the key.
    Get,
    /// Compare-and-set: set the key to `new` if it holds `expected` (`None`: is absent).
    Cas {
        /// The value the key must hold (`None`: the key must not exist).
        expected: Option<String>,
        /// The value written when it does.
        new: String,
    },
}

/// What the client was told. `None` in [`Op::result`] means it never learned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A put succeeded.
    Put,
    /// A delete succeeded; whether the key existed.
    Delete(bool),
    /// A read returned this value (None: not found).
    Get(Option<String>),
    /// A compare-and-set answered: whether it set the key, and the value it found there
    /// (the expected one when it succeeded; what a failed one read instead).
    Cas {
        /// Whether the key held the expected value, and now holds the new one.
        succeeded: bool,
        /// The value the key held when it was compared.
        found: Option<String>,
    },
}

/// One client operation in a history. Times are any monotonic clock shared by all clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who issued it (for reports only).
    pub client: u64,
    /// The key.
    pub key: String,
    /// What was asked.
    pub kind: OpKind,
    /// When it was invoked.
    pub invoke: u64,
    /// When the answer arrived; `None` if it never did (timed out, unknown outcome).
    pub complete: Option<u64>,
    /// The answer, if one arrived.
    pub result: Option<OpResult>,
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history has no linearization.
    pub key: String,
    /// That sub-history, in invocation order, for the report.
    pub ops: Vec<Op>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "history of key {:?} is not linearizable:", self.key)?;
        for op in &self.ops {
            let end = op
                .complete
                .map_or_else(|| "?".to_string(), |c| c.to_string());
            writeln!(
                f,
                "  client {:>3} [{:>8} .. {:>8}] {:?} -> {:?}",
                op.client, op.invoke, end, op.kind, op.result
            )?;
        }
        Ok(())
    }
}

/// Checks a whole history. Reads that never completed are dropped (they constrain nothing).
///
/// # Errors
/// The first key (in key order) whose sub-history is not linearizable.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        if op.kind == OpKind::Get && op.result.is_none() {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.invoke);
        if !check_key(&ops) {
            return Err(Violation {
                key: key.to_string(),
                ops,
            });
        }
    }
    Ok(())
}

/// Applies `op` to the register state; `None` if the op's recorded result is impossible there.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match (&op.kind, &op.result) {
        (OpKind::Put(v), None | Some(OpResult::Put)) => Some(Some(v.clone())),
        (OpKind::Delete, None) => Some(None),
        (OpKind::Delete, Some(OpResult::Delete(existed))) => {
            (*existed == state.is_some()).then_some(None)
        }
        (OpKind::Get, Some(OpResult::Get(v))) => (v == state).then(|| state.clone()),
        (OpKind::Cas { expected, new }, None) => Some(if state == expected {
            Some(new.clone())
        } else {
            state.clone()
        }),
        (
            OpKind::Cas { expected, new },
            Some(OpResult::Cas {
                succeeded: true,
                found,
            }),
        ) => (state == expected && found == state).then(|| Some(new.clone())),
        (
            OpKind::Cas { expected, .. },
            Some(OpResult::Cas {
                succeeded: false,
                found,
            }),
        ) => (state != expected && found == state).then(|| state.clone()),
        _ => None,
    }
}

/// One key's history: depth-first search for a linearization, with the set of already
/// linearized ops and the resulting state memoised.
fn check_key(ops: &[Op]) -> bool {
    let n = ops.len();
    // Events in time order: (time, is_return, op). Calls sort before returns at equal times,
    // so operations that merely touch are treated as concurrent (the permissive choice).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.complete.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // A doubly linked list over the events, so ops can be lifted out and put back.
    let len = events.len();
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let head = len; // sentinel index
    next.push(0);
    prev.push(usize::MAX);
    let mut ret_pos = vec![0usize; n];
    let mut call_pos = vec![0usize; n];
    for (pos, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_pos[op] = pos;
        } else {
            call_pos[op] = pos;
        }
    }
    // Point event 0's prev at the sentinel.
    if len > 0 {
        prev[0] = head;
    }

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = None;
    let mut cur = next[head];

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = b;
        if b < len {
            prev[b] = a;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = p;
        if b < len {
            prev[b] = p;
        }
    };

    while next[head] < len {
        if cur >= len {
            // Ran off the end without linearizing everything (cannot happen: the last event is a
            // return, handled below); treat as a dead end.
            return false;
        }
        let (_, is_ret, op) = events[cur];
        if !is_ret {
            if let Some(new_state) = step(&state, &ops[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((op, state.clone()));
                    linearized = lin;
                    state = new_state;
                    unlink(&mut next, &mut prev, call_pos[op]);
                    unlink(&mut next, &mut prev, ret_pos[op]);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // An op returned before we could linearize it: backtrack.
            let Some((op, old_state)) = stack.pop() else {
                return false;
            };
            linearized[op / 64] &= !(1 << (op % 64));
            state = old_state;
            relink(&mut next, &mut prev, ret_pos[op]);
            relink(&mut next, &mut prev, call_pos[op]);
            cur = next[call_pos[op]];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: u64, v: &str, t: (u64, u64)) -> Op {
        Op {
            client: c,
            key: "k".into(),
            kind: OpKind::Put(v.into()),
            invoke: t.0,
            complete: Some(t.1),
            result: Some(OpResult::Put),
        }
    }
    fn get(c: u64, v: Option<&str>, t: (u64, u64)) -> Op {
        Op {
            client: c,
            key: "k".into(),
            kind: OpKind::Get,
            invoke: t.0,
            complete: Some(t.1),
            result: Some(OpResult::Get(v.map(String::from))),
        }
    }
    fn del(c: u64, existed: bool, t: (u64, u64)) -> Op {
        Op {
            client: c,
            key: "k".into(),
            kind: OpKind::Delete,
            invoke: t.0,
            complete: Some(t.1),
            result: Some(OpResult::Delete(existed)),
        }
    }
    fn unknown(mut op: Op) -> Op {
        op.complete = None;
        op.result = None;
        op
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            put(1, "a", (0, 1)),
            get(2, Some("a"), (2, 3)),
            del(1, true, (4, 5)),
            get(2, None, (6, 7)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn stale_read_after_completed_write_is_not() {
        // put(b) completes before the read starts, yet the read sees a.
        let h = vec![
            put(1, "a", (0, 1)),
            put(1, "b", (2, 3)),
            get(2, Some("a"), (4, 5)),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("not linearizable"));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        let h = vec![
            put(1, "a", (0, 10)),
            get(2, Some("a"), (1, 2)),
            get(3, None, (0, 3)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Two sequential reads by concurrent-with-write clients: a then None (write undone?).
        let h = vec![
            put(1, "a", (0, 10)),
            get(2, Some("a"), (1, 2)),
            get(2, None, (3, 4)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = vec![put(1, "a", (0, 1)), get(2, None, (5, 6))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn timed_out_write_may_or_may_not_apply() {
        let applied = vec![unknown(put(1, "a", (0, 1))), get(2, Some("a"), (5, 6))];
        assert_eq!(check(&applied), Ok(()));
        let not_applied = vec![unknown(put(1, "a", (0, 1))), get(2, None, (5, 6))];
        assert_eq!(check(&not_applied), Ok(()));
        // But it cannot take effect before it was invoked.
        let too_early = vec![get(2, Some("a"), (0, 1)), unknown(put(1, "a", (2, 3)))];
        assert!(check(&too_early).is_err());
    }

    #[test]
    fn delete_result_must_match_state() {
        assert!(check(&[del(1, true, (0, 1))]).is_err());
        assert_eq!(
            check(&[
                put(1, "a", (0, 1)),
                del(1, true, (2, 3)),
                del(2, false, (4, 5))
            ]),
            Ok(())
        );
    }

    fn cas(c: u64, expected: Option<&str>, new: &str, found: Option<&str>, t: (u64, u64)) -> Op {
        Op {
            client: c,
            key: "k".into(),
            kind: OpKind::Cas {
                expected: expected.map(String::from),
                new: new.into(),
            },
            invoke: t.0,
            complete: Some(t.1),
            result: Some(OpResult::Cas {
                succeeded: expected == found,
                found: found.map(String::from),
            }),
        }
    }

    #[test]
    fn a_counter_of_compare_and_sets_is_linearizable() {
        // The generation-counter loop: create, then bump from the value last seen; a loser
        // of a race sees the winner's value and retries from it.
        let h = vec![
            cas(1, None, "1", None, (0, 1)),
            cas(1, Some("1"), "2", Some("1"), (2, 5)),
            cas(2, Some("1"), "2b", Some("2"), (3, 6)),
            cas(2, Some("2"), "3", Some("2"), (7, 8)),
            get(1, Some("3"), (9, 10)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn two_successful_cas_from_one_expected_value_are_not() {
        // Both replaced "1": one of them must have seen the other's value.
        let h = vec![
            put(1, "1", (0, 1)),
            cas(1, Some("1"), "a", Some("1"), (2, 5)),
            cas(2, Some("1"), "b", Some("1"), (3, 6)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_failed_cas_must_report_the_value_there() {
        // It failed although the key held what it expected.
        let h = vec![
            put(1, "1", (0, 1)),
            cas(2, Some("1"), "a", Some("x"), (2, 3)),
        ];
        assert!(check(&h).is_err());
        // It failed and found a value no one wrote.
        let mut failed = cas(2, Some("0"), "a", Some("1"), (2, 3));
        assert_eq!(check(&[put(1, "1", (0, 1)), failed.clone()]), Ok(()));
        failed.result = Some(OpResult::Cas {
            succeeded: false,
            found: Some("2".into()),
        });
        assert!(check(&[put(1, "1", (0, 1)), failed]).is_err());
        // An expected absence fails once the key exists.
        let h = vec![put(1, "1", (0, 1)), cas(2, None, "a", None, (2, 3))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_cas_may_apply_or_not() {
        let base = || {
            vec![
                put(1, "1", (0, 1)),
                unknown(cas(2, Some("1"), "a", None, (2, 3))),
            ]
        };
        let mut applied = base();
        applied.push(get(1, Some("a"), (5, 6)));
        assert_eq!(check(&applied), Ok(()));
        let mut not_applied = base();
        not_applied.push(get(1, Some("1"), (5, 6)));
        assert_eq!(check(&not_applied), Ok(()));
        // But it cannot write when the key held another value.
        let h = vec![
            put(1, "2", (0, 1)),
            unknown(cas(2, Some("1"), "a", None, (2, 3))),
            get(1, Some("a"), (5, 6)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = put(1, "x", (0, 1));
        other.key = "other".into();
        let h = vec![other, get(2, None, (2, 3))];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn large_concurrent_history_checks_quickly() {
        // 5 clients, 300 ops, all consistent with a sequential execution at op midpoints.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        for i in 0..300u64 {
            let (s, e) = (i * 10, i * 10 + 25); // overlaps its neighbours
            let c = i % 5;
            match i % 3 {
                0 => {
                    h.push(put(c, &i.to_string(), (s, e)));
                    value = Some(i.to_string());
                }
                1 => h.push(get(c, value.as_deref(), (s, e))),
                _ => h.push(unknown(get(c, None, (s, e)))),
            }
        }
        assert_eq!(check(&h), Ok(()));
    }
}
