//! Watchers through the faults, and the check of what they saw.
//!
//! One watcher per node, pinned to that node (it sees the node die, freeze, restart and catch
//! up from its own history), and one through every endpoint (the client library's watch,
//! which resumes on another member by itself). Under `--membership` the watcher of a removed
//! node moves to the node that replaces it, and the one over every member to the new member
//! list, each resuming after the last revision it recorded (see [`Watchers::repin`]). All
//! watch the prefix the clients write (`k`:
//! the linearizability keys and the leased keys) from the revision before the workload, for
//! the whole run. At the end each must have reached the cluster's final revision, and then:
//!
//! - **order**: each watcher's events are in revision order, no change twice;
//! - **no gap**: every revision after the start up to the final one has an event (every
//!   write of the run is in the watched prefix, and a write that changes nothing takes no
//!   revision);
//! - **agreement**: every watcher saw exactly the same sequence;
//! - **the writes issued**: replayed in order, each put carries a value some client issued
//!   for that key (each value once) with the right lease, each delete removes a present key,
//!   and no key is deleted more often than clients asked (leased keys: by their lease);
//! - **the writes acknowledged**: each acknowledged put is an event with its value, each
//!   acknowledged delete and each acknowledged revoke a delete of the key, at the revision the
//!   answer carried or before it: a write the client retried is answered from its session,
//!   with the revision of the moment of the retry (those are counted and shown);
//! - **the end state**: the replay ends with the final linearizable reads' values, and with
//!   the leased keys present exactly when their lease was kept alive to the end.
//!
//! The nodes run without automatic compaction, so the history a watcher resumes from is
//! never gone; a `WatchCanceled` fails the check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvstore::client::{Client, ClientOptions, EventKind, WatchOptions};
use tokio::task::JoinHandle;

use crate::identity;

/// The prefix every key of the run starts with.
pub const PREFIX: &str = "k";

/// One event as recorded: no values, only their identity (see [`identity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub revision: i64,
    pub key: String,
    /// `Some((value identity, lease))` for a put, `None` for a delete.
    pub put: Option<(String, i64)>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.put {
            Some((value, 0)) => write!(f, "put {}={value} @{}", self.key, self.revision),
            Some((value, lease)) => write!(
                f,
                "put {}={value} (lease {lease}) @{}",
                self.key, self.revision
            ),
            None => write!(f, "delete {} @{}", self.key, self.revision),
        }
    }
}

/// What one watcher recorded.
#[derive(Default)]
struct Log {
    events: Vec<Seen>,
    /// The error that ended the watch.
    ended: Option<String>,
    /// Which stream writes here (see [`Watchers::repin`]): a stream that was moved away
    /// records nothing more, even between its abort and its end.
    owner: u64,
}

/// The running watchers.
pub struct Watchers {
    /// Name ("node 2", "any member") and log of each.
    logs: Vec<(String, Arc<Mutex<Log>>)>,
    tasks: Vec<JoinHandle<()>>,
    /// The revision they start after.
    pub base: i64,
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    /// Starts one watcher per endpoint plus one over all of them, each from `base + 1`.
    pub fn start(endpoints: &[String], base: i64) -> anyhow::Result<Watchers> {
        let mut targets: Vec<(String, Vec<String>)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| (format!("node {}", i + 1), vec![ep.clone()]))
            .collect();
        targets.push(("any member".to_string(), endpoints.to_vec()));
        let mut watchers = Watchers {
            logs: Vec::new(),
            tasks: Vec::new(),
            base,
        };
        for (name, eps) in targets {
            let log = Arc::new(Mutex::new(Log::default()));
            watchers
                .tasks
                .push(spawn_watch(eps, base + 1, log.clone(), 0)?);
            watchers.logs.push((name, log));
        }
        Ok(watchers)
    }

    /// Moves watcher `name` (a node removed from the cluster, or the one over every member) to
    /// `endpoints`: its stream stops and a new one resumes after the last revision it recorded,
    /// into the same record, so the checks see one unbroken sequence. The watcher is renamed
    /// `new_name`. Unknown names are ignored.
    pub fn repin(
        &mut self,
        name: &str,
        new_name: String,
        endpoints: Vec<String>,
    ) -> anyhow::Result<()> {
        let Some(i) = self.logs.iter().position(|(n, _)| n == name) else {
            return Ok(());
        };
        self.tasks[i].abort();
        let log = self.logs[i].1.clone();
        let (from, owner) = {
            let mut l = lock(&log);
            l.owner += 1;
            (
                l.events.last().map_or(self.base, |e| e.revision) + 1,
                l.owner,
            )
        };
        self.tasks[i] = spawn_watch(endpoints, from, log, owner)?;
        self.logs[i].0 = new_name;
        Ok(())
    }

    /// Waits (up to `bound`) until every watcher has seen an event at `revision` or later,
    /// then stops them all and returns each one's events up to `revision`; the first
    /// watcher that fell short or ended is an error.
    pub async fn finish(
        self,
        revision: i64,
        bound: Duration,
    ) -> Result<Vec<(String, Vec<Seen>)>, String> {
        let started = Instant::now();
        let behind = |logs: &[(String, Arc<Mutex<Log>>)]| -> Option<String> {
            logs.iter().find_map(|(name, log)| {
                let log = lock(log);
                let last = log.events.last().map_or(self.base, |e| e.revision);
                if let Some(e) = &log.ended {
                    return Some(format!("the watcher on {name} ended after revision {last}: {e}"));
                }
                (last < revision).then(|| {
                    format!("the watcher on {name} saw events up to revision {last}, the cluster is at {revision}")
                })
            })
        };
        let mut outcome = Ok(());
        loop {
            match behind(&self.logs) {
                None => break,
                Some(e) if started.elapsed() >= bound => {
                    outcome = Err(format!("{e} ({} s after the final reads)", bound.as_secs()));
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        outcome?;
        Ok(self
            .logs
            .iter()
            .map(|(name, log)| {
                let mut events = std::mem::take(&mut lock(log).events);
                events.retain(|e| e.revision <= revision);
                (name.clone(), events)
            })
            .collect())
    }
}

/// Watches the prefix through `endpoints` from revision `from`, appending to `sink`.
fn spawn_watch(
    endpoints: Vec<String>,
    from: i64,
    sink: Arc<Mutex<Log>>,
    owner: u64,
) -> anyhow::Result<JoinHandle<()>> {
    let client = Client::with_options(
        endpoints,
        ClientOptions::with_timeout(Duration::from_secs(3)),
    )?;
    let mut watcher = client.watch(PREFIX, WatchOptions::prefix().from_revision(from))?;
    Ok(tokio::spawn(async move {
        while let Some(next) = watcher.next().await {
            let mut log = lock(&sink);
            if log.owner != owner {
                return;
            }
            match next {
                Ok(events) => log.events.extend(events.into_iter().map(|e| Seen {
                    revision: e.revision(),
                    put: (e.kind == EventKind::Put).then(|| (identity(&e.kv.value), e.kv.lease)),
                    key: e.kv.key,
                })),
                Err(e) => {
                    log.ended = Some(e.to_string());
                    return;
                }
            }
        }
    }))
}

impl Drop for Watchers {
    /// Stops every watcher (dropping a task's handle alone would leave it running).
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Order and gaps of one watcher's events: revisions in order, no (revision, key) twice, and
/// every revision of `(base, end]` present.
pub fn check_sequence(name: &str, events: &[Seen], base: i64, end: i64) -> Result<(), String> {
    let mut expected = base + 1;
    let mut last: Option<&Seen> = None;
    for e in events {
        if let Some(prev) = last {
            if (e.revision, &e.key) <= (prev.revision, &prev.key) {
                return Err(format!(
                    "the watcher on {name} got `{e}` after `{prev}`: out of order or twice"
                ));
            }
        }
        if e.revision > expected {
            return Err(format!(
                "the watcher on {name} skipped revision {expected}: `{e}` came after {}",
                last.map_or_else(|| "nothing".to_string(), |p| format!("`{p}`"))
            ));
        }
        if e.revision == expected {
            expected += 1;
        }
        last = Some(e);
    }
    if expected <= end {
        return Err(format!(
            "the watcher on {name} has no event at revision {expected} (the cluster is at {end})"
        ));
    }
    Ok(())
}

/// The first difference between two watchers' sequences.
pub fn check_agree(a: (&str, &[Seen]), b: (&str, &[Seen])) -> Result<(), String> {
    let show = |e: Option<&Seen>| e.map_or_else(|| "nothing".to_string(), |e| format!("`{e}`"));
    for i in 0..a.1.len().max(b.1.len()) {
        let (x, y) = (a.1.get(i), b.1.get(i));
        if x != y {
            return Err(format!(
                "the watchers disagree at event {i}: {} saw {}, {} saw {}",
                a.0,
                show(x),
                b.0,
                show(y)
            ));
        }
    }
    Ok(())
}

/// What the clients did to one key, as far as the watch check needs it.
#[derive(Default, Debug)]
pub struct KeyWrites {
    /// Value identities of every put issued (acknowledged or not); each may show up once.
    pub values: BTreeMap<String, bool>,
    /// Deletes issued (acknowledged or not); a leased key is deleted by its lease.
    pub deletes: u64,
    /// The lease its puts carry (0: none).
    pub lease: i64,
    /// Acknowledged changes: revision -> `Some(value identity)` for a put, `None` for a
    /// delete (of a present key, or by a revoke).
    pub acked: BTreeMap<i64, Option<String>>,
    /// Where the key must be at the end: `Some(value identity)` or `None` (absent).
    pub end: Option<String>,
}

/// Replays `events` against what the clients issued and acknowledged; see the module doc.
/// Leased keys (a non-zero `lease`) may be deleted once per put by their lease. Returns the
/// acknowledged changes found at another revision than their answer carried (each one a
/// failure for the caller: a retry answered from its session carries its write's revision).
pub fn check_history(
    events: &[Seen],
    keys: &mut BTreeMap<String, KeyWrites>,
) -> Result<Vec<String>, String> {
    let mut state: BTreeMap<&str, String> = BTreeMap::new();
    let mut deletes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut at: BTreeMap<(&str, i64), &Seen> = BTreeMap::new();
    for e in events {
        let Some(writes) = keys.get_mut(&e.key) else {
            return Err(format!("`{e}`: no client wrote key {}", e.key));
        };
        match &e.put {
            Some((value, lease)) => {
                match writes.values.get_mut(value) {
                    None => return Err(format!("`{e}`: no client put that value in {}", e.key)),
                    Some(seen) if *seen => {
                        return Err(format!("`{e}`: that put shows up twice"));
                    }
                    Some(seen) => *seen = true,
                }
                if *lease != writes.lease {
                    return Err(format!(
                        "`{e}`: the put was issued with lease {}",
                        writes.lease
                    ));
                }
                state.insert(&e.key, value.clone());
            }
            None => {
                if state.remove(e.key.as_str()).is_none() {
                    return Err(format!("`{e}`: the key was absent"));
                }
                let n = deletes.entry(&e.key).or_default();
                *n += 1;
                if writes.lease == 0 && *n > writes.deletes {
                    return Err(format!(
                        "`{e}`: delete number {n} of {}, but clients issued {}",
                        e.key, writes.deletes
                    ));
                }
            }
        }
        at.insert((&e.key, e.revision), e);
    }
    let mut late = Vec::new();
    for (key, writes) in keys.iter() {
        // Delete events of this key not yet matched to an acknowledged delete.
        let mut unmatched: BTreeMap<i64, ()> = at
            .range((key.as_str(), i64::MIN)..=(key.as_str(), i64::MAX))
            .filter(|(_, e)| e.put.is_none())
            .map(|((_, r), _)| (*r, ()))
            .collect();
        for (revision, change) in &writes.acked {
            // The change itself: a put by its (unique) value, a delete at the acknowledged
            // revision or, failing that, the latest unmatched one before it.
            let found = match change {
                Some(v) => events
                    .iter()
                    .find(|e| e.key == *key && e.put.as_ref().is_some_and(|(x, _)| x == v))
                    .map(|e| e.revision)
                    .filter(|r| r <= revision),
                None if unmatched.remove(revision).is_some() => Some(*revision),
                None => unmatched
                    .range(..*revision)
                    .next_back()
                    .map(|(r, ())| *r)
                    .inspect(|r| {
                        unmatched.remove(r);
                    }),
            };
            let what = match change {
                Some(v) => format!("put {key}={v}"),
                None => format!("delete of {key}"),
            };
            match found {
                Some(r) if r == *revision => {}
                Some(r) => late.push(format!("{what} at revision {r} acknowledged at {revision}")),
                None => {
                    let there = at.get(&(key.as_str(), *revision));
                    return Err(format!(
                        "the acknowledged {what} (revision {revision}) is not in the watch ({})",
                        there.map_or_else(
                            || "no event of that key there".to_string(),
                            |e| format!("`{e}` there")
                        )
                    ));
                }
            }
        }
        let got = state.get(key.as_str());
        if got != writes.end.as_ref() {
            let show = |v: Option<&String>| v.map_or("(absent)".to_string(), Clone::clone);
            return Err(format!(
                "replaying the watch leaves {key} = {}, the end state is {}",
                show(got),
                show(writes.end.as_ref())
            ));
        }
    }
    Ok(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str, lease: i64) -> Seen {
        Seen {
            revision,
            key: key.into(),
            put: Some((value.into(), lease)),
        }
    }
    fn del(revision: i64, key: &str) -> Seen {
        Seen {
            revision,
            key: key.into(),
            put: None,
        }
    }

    fn run() -> (Vec<Seen>, BTreeMap<String, KeyWrites>) {
        let events = vec![
            put(2, "k0", "a", 0),
            put(3, "kl1", "l1", 7),
            del(4, "k0"),
            del(5, "kl1"),
        ];
        let mut keys = BTreeMap::new();
        keys.insert(
            "k0".to_string(),
            KeyWrites {
                values: [("a".to_string(), false), ("b".to_string(), false)].into(),
                deletes: 1,
                acked: [(2, Some("a".to_string())), (4, None)].into(),
                ..KeyWrites::default()
            },
        );
        keys.insert(
            "kl1".to_string(),
            KeyWrites {
                values: [("l1".to_string(), false)].into(),
                lease: 7,
                acked: [(3, Some("l1".to_string())), (5, None)].into(),
                ..KeyWrites::default()
            },
        );
        (events, keys)
    }

    #[test]
    fn a_faithful_watch_passes() {
        let (events, mut keys) = run();
        check_sequence("w", &events, 1, 5).unwrap();
        check_history(&events, &mut keys).unwrap();
    }

    #[test]
    fn a_gap_a_repeat_or_a_short_watch_fails() {
        let (mut events, _) = run();
        assert!(check_sequence("w", &events, 1, 6)
            .unwrap_err()
            .contains("no event at revision 6"));
        let dropped = events.remove(1);
        assert!(check_sequence("w", &events, 1, 5)
            .unwrap_err()
            .contains("skipped revision 3"));
        events.insert(1, dropped.clone());
        events.insert(1, dropped);
        assert!(check_sequence("w", &events, 1, 5)
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn disagreeing_watchers_fail() {
        let (events, _) = run();
        let mut other = events.clone();
        other[2] = put(4, "k0", "b", 0);
        assert!(check_agree(("a", &events), ("b", &events)).is_ok());
        assert!(check_agree(("a", &events), ("b", &other))
            .unwrap_err()
            .contains("event 2"));
        assert!(check_agree(("a", &events), ("b", &events[..3])).is_err());
    }

    #[test]
    fn the_replay_catches_forged_lost_and_wrong_events() {
        let (mut events, mut keys) = run();
        events[0] = put(2, "k0", "zz", 0);
        assert!(check_history(&events, &mut keys)
            .unwrap_err()
            .contains("no client put"));

        let (mut events, mut keys) = run();
        events[1] = put(3, "kl1", "l1", 0);
        assert!(check_history(&events, &mut keys)
            .unwrap_err()
            .contains("lease 7"));

        let (mut events, mut keys) = run();
        events.insert(3, del(4, "k0"));
        assert!(check_history(&events, &mut keys)
            .unwrap_err()
            .contains("absent"));

        // An acknowledged revoke whose delete is missing.
        let (mut events, mut keys) = run();
        events.pop();
        assert!(check_history(&events, &mut keys)
            .unwrap_err()
            .contains("revision 5"));

        // The end state disagrees with the final reads.
        let (events, mut keys) = run();
        keys.get_mut("k0").unwrap().end = Some("a".into());
        assert!(check_history(&events, &mut keys)
            .unwrap_err()
            .contains("end state"));
    }
}
