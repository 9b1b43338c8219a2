//! Simulated watchers (`SimConfig::watches`): each node serves watchers of random key ranges
//! from random start revisions (some below the compaction revision), fed by the daemon's own
//! I/O-free watch code (`node::watches`): a [`Publisher`] batch after each Ready's applies
//! (and so after snapshot installs), catch-ups from history when a batch does not continue
//! where a watcher stands.
//!
//! Checker: a watcher's delivered events are exactly the node's history of its range from
//! its start (`KeySpace::changes`), up to the revision it reached: no gap, no duplicate, in
//! order; or it was cancelled with the compaction revision, because its start was below it.
//! Checked when its node stops (the watch streams end with the process) and at the end.

use crate::node::watches::{history, Batch, Publisher, Step, WatchSpec, Watcher};
use crate::state_machine::mvcc::{Event, KeySpace};

/// One simulated watcher on a node.
#[derive(Debug)]
struct SimWatch {
    watcher: Watcher,
    /// The revision asked for (0: from now on).
    start: i64,
    /// The revision it actually started from (known after its first catch-up).
    from: i64,
    delivered: Vec<Event>,
    /// Cancelled with this compaction revision.
    cancelled: Option<i64>,
}

/// The watchers of one node and its publisher (one per life of the node).
#[derive(Debug)]
pub(crate) struct NodeWatches {
    publisher: Publisher,
    watchers: Vec<SimWatch>,
    /// Events delivered, over the node's watchers.
    pub(crate) delivered: u64,
}

impl NodeWatches {
    /// No watcher, publishing from `keys`'s revision; `drop_catch_up`: the publisher's
    /// mutation switch.
    pub(crate) fn new(keys: &KeySpace, drop_catch_up: bool) -> Self {
        let mut publisher = Publisher::new(keys.revision());
        publisher.set_drop_snapshot_catch_up(drop_catch_up);
        NodeWatches {
            publisher,
            watchers: Vec::new(),
            delivered: 0,
        }
    }

    /// How many watchers it serves.
    pub(crate) fn len(&self) -> usize {
        self.watchers.len()
    }

    /// A new watcher of `spec` from `start`, caught up from `keys` at once.
    pub(crate) fn add(&mut self, spec: WatchSpec, start: i64, keys: &KeySpace) {
        let mut w = SimWatch {
            watcher: Watcher::new(spec, start),
            start,
            from: start,
            delivered: Vec::new(),
            cancelled: None,
        };
        catch_up(&mut w, keys, &mut self.delivered);
        if w.start == 0 {
            w.from = w.watcher.next();
        }
        self.watchers.push(w);
    }

    /// After a Ready's applies (or a snapshot install): publish and feed every watcher.
    pub(crate) fn after_applies(&mut self, keys: &KeySpace) {
        let listening = self.watchers.iter().any(|w| w.cancelled.is_none());
        let Some(batch) = self.publisher.publish(keys, listening, false) else {
            return;
        };
        for w in &mut self.watchers {
            offer(w, &batch, keys, &mut self.delivered);
        }
    }

    /// A snapshot replaced the state machine with `keys`.
    pub(crate) fn snapshot_installed(&mut self, keys: &KeySpace) {
        self.publisher.snapshot_installed(keys);
    }

    /// The checker, against the node's history `keys`.
    pub(crate) fn check(&self, node: u64, keys: &KeySpace) -> Result<(), String> {
        for w in &self.watchers {
            let spec = w.watcher.spec();
            let name = format!(
                "watch: node {node}'s watcher of {:?}..{:?} from revision {} (asked {})",
                String::from_utf8_lossy(&spec.key),
                String::from_utf8_lossy(&spec.range_end),
                w.from,
                w.start
            );
            if let Some(c) = w.cancelled {
                if w.watcher.next() >= c || c > keys.compact_revision() {
                    return Err(format!("{name} was cancelled as compacted at {c}"));
                }
                continue;
            }
            let upto = w.watcher.next() - 1;
            // History at and below the compaction revision is gone (at it, only the versions
            // that survived): check what remains.
            let from = w.from.max(keys.compact_revision() + 1).max(1);
            let want: Vec<Event> = match keys.changes(from, &spec.key, &spec.range_end, false) {
                Ok(events) => events
                    .into_iter()
                    .filter(|e| e.kv.mod_revision <= upto)
                    .collect(),
                Err(e) => return Err(format!("{name}: history unreadable: {e}")),
            };
            let got: Vec<&Event> = w
                .delivered
                .iter()
                .filter(|e| e.kv.mod_revision >= from)
                .collect();
            if got.len() != want.len() || got.iter().zip(&want).any(|(g, w)| *g != w) {
                let revs = |es: &mut dyn Iterator<Item = &Event>| -> Vec<i64> {
                    es.map(|e| e.kv.mod_revision).collect()
                };
                return Err(format!(
                    "{name} delivered up to {upto} the events at revisions {:?}, but the history from {from} has {:?}",
                    revs(&mut got.iter().copied()),
                    revs(&mut want.iter())
                ));
            }
        }
        Ok(())
    }
}

/// Feeds `batch` to `w` (catching up from `keys` when it asks).
fn offer(w: &mut SimWatch, batch: &Batch, keys: &KeySpace, delivered: &mut u64) {
    if w.cancelled.is_some() {
        return;
    }
    match w.watcher.offer(batch) {
        Step::Deliver(events) => deliver(w, events, delivered),
        Step::CatchUp => catch_up(w, keys, delivered),
        Step::Compacted(c) => w.cancelled = Some(c),
    }
}

/// Catches `w` up from `keys`'s history, in as many answers as it takes.
fn catch_up(w: &mut SimWatch, keys: &KeySpace, delivered: &mut u64) {
    loop {
        let spec = w.watcher.spec();
        let h = history(keys, w.watcher.next(), &spec.key, &spec.range_end, false);
        match w.watcher.caught_up(&h) {
            Step::Deliver(events) => deliver(w, events, delivered),
            Step::Compacted(c) => {
                w.cancelled = Some(c);
                return;
            }
            Step::CatchUp => {}
        }
        if !h.cut {
            return;
        }
    }
}

fn deliver(w: &mut SimWatch, events: Vec<Event>, delivered: &mut u64) {
    *delivered += events.len() as u64;
    w.delivered.extend(events);
}
