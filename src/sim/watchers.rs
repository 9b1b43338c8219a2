//! Simulated watchers (`SimConfig::watches`): each node serves watchers of random key ranges
//! from random start revisions (some below the compaction revision), some with a filter
//! (NOPUT, NODELETE) or asking for previous kvs, fed by the daemon's own
//! I/O-free watch code (`node::watches`): a [`Publisher`] batch after each Ready's applies
//! (and so after snapshot installs), catch-ups from history when a batch does not continue
//! where a watcher stands.
//!
//! Checkers:
//! - a watcher's delivered events are exactly the node's history of its range from its start
//!   (`KeySpace::changes`), up to the revision it reached: no gap, no duplicate, in order; or
//!   it was cancelled with the compaction revision, because its start was below it. Checked
//!   when its node stops (the watch streams end with the process) and at the end;
//! - at the moment an event is delivered on node N (issue 14: "delivered after the change is
//!   applied locally, never before it is committed"): its revision is at most the revision
//!   of N's applied state, and it is the committed change at that revision, as recorded for
//!   the whole run by [`CommittedChanges`] (every node's applies must agree on it). An event
//!   at a revision not committed yet (possible only with the first check off) is checked when
//!   the revision commits, and fails the run if it never does. Watchers with NOPUT or
//!   NODELETE get no event of that kind, and an event's `prev_kv` is there only when asked
//!   for, and is then the key's version at the revision before (a Range at that revision on
//!   the node: another code path than the `changes` walk that produced it).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::node::watches::{history, Batch, Publisher, Step, WatchSpec, Watcher};
use crate::raft::NodeId;
use crate::state_machine::mvcc::{Event, EventKind, KeySpace, RangeRequest};

/// One change as the run-wide record keeps it: a digest of its kind and kv (never its
/// prev_kv), and a short description for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    digest: u64,
    text: String,
}

impl Change {
    fn of(e: &Event) -> Self {
        let bytes = postcard::to_allocvec(&(&e.kind, &e.kv)).unwrap_or_default();
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let kind = match e.kind {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
        };
        let value = String::from_utf8_lossy(&e.kv.value[..e.kv.value.len().min(24)]);
        Change {
            digest: h.finish(),
            text: format!(
                "{kind} of {:?} at revision {} (value {value:?}, {} bytes, version {}, lease {})",
                String::from_utf8_lossy(&e.kv.key),
                e.kv.mod_revision,
                e.kv.value.len(),
                e.kv.version,
                e.kv.lease
            ),
        }
    }
}

/// The committed changes of the whole run: revision → key → change, recorded when some node
/// first applies the revision (applies are of committed entries only), and compared at
/// every later apply of it on any node (replicas commit the same changes at the same
/// revisions).
#[derive(Debug, Default)]
pub(crate) struct CommittedChanges {
    by_revision: BTreeMap<i64, BTreeMap<Vec<u8>, Change>>,
    /// Events delivered at a revision not committed yet: revision → (node, key, change).
    unverified: BTreeMap<i64, Vec<(NodeId, Vec<u8>, Change)>>,
}

impl CommittedChanges {
    /// Node `node` applied revision `revision`, whose changes are `events` (its key space's
    /// `changes` at that revision).
    pub(crate) fn applied(
        &mut self,
        node: NodeId,
        revision: i64,
        events: &[Event],
    ) -> Result<(), String> {
        let changes: BTreeMap<Vec<u8>, Change> = events
            .iter()
            .filter(|e| e.kv.mod_revision == revision)
            .map(|e| (e.kv.key.clone(), Change::of(e)))
            .collect();
        if let Some(known) = self.by_revision.get(&revision) {
            if *known != changes {
                let texts = |m: &BTreeMap<Vec<u8>, Change>| -> Vec<String> {
                    m.values().map(|c| c.text.clone()).collect()
                };
                return Err(format!(
                    "committed changes differ: node {node} applied {:?} at revision {revision}, another node {:?}",
                    texts(&changes),
                    texts(known)
                ));
            }
            return Ok(());
        }
        self.by_revision.insert(revision, changes);
        for (node, key, change) in self.unverified.remove(&revision).unwrap_or_default() {
            self.compare(node, &key, revision, &change)?;
        }
        Ok(())
    }

    /// Node `node` delivers `e` to a watcher.
    fn delivered(&mut self, node: NodeId, e: &Event) -> Result<(), String> {
        let revision = e.kv.mod_revision;
        let change = Change::of(e);
        if !self.by_revision.contains_key(&revision) {
            self.unverified
                .entry(revision)
                .or_default()
                .push((node, e.kv.key.clone(), change));
            return Ok(());
        }
        self.compare(node, &e.kv.key, revision, &change)
    }

    fn compare(
        &self,
        node: NodeId,
        key: &[u8],
        revision: i64,
        change: &Change,
    ) -> Result<(), String> {
        let committed = self.by_revision.get(&revision).and_then(|m| m.get(key));
        if committed == Some(change) {
            return Ok(());
        }
        let was = committed.map_or_else(|| "no change of that key".to_string(), |c| c.text.clone());
        Err(format!(
            "watch event never committed: node {node} delivered the {}, but the change committed at revision {revision} is {was}",
            change.text
        ))
    }

    /// At the end of the run: events delivered at a revision that never committed.
    pub(crate) fn check_end(&self) -> Result<(), String> {
        match self.unverified.iter().next() {
            Some((_, events)) => {
                let (node, _, change) = &events[0];
                Err(format!(
                    "watch event never committed: node {node} delivered the {}, and that revision was never committed",
                    change.text
                ))
            }
            None => Ok(()),
        }
    }
}

/// What a delivery is checked against (see the module doc).
pub(crate) struct Deliveries<'a> {
    /// The node serving the watchers.
    node: NodeId,
    /// Its applied state (which may not be what the watchers are fed from, under the
    /// `watch_publish_on_append` mutation).
    applied: &'a KeySpace,
    /// Check that no event is above the applied revision (off only in the mutation test that
    /// shows the committed-change check catches early events on its own).
    check_applied: bool,
    committed: &'a mut CommittedChanges,
    /// The first violation found.
    pub(crate) failure: Option<String>,
}

impl<'a> Deliveries<'a> {
    /// Deliveries on `node`, whose applied state is `applied`.
    pub(crate) fn new(
        node: NodeId,
        applied: &'a KeySpace,
        check_applied: bool,
        committed: &'a mut CommittedChanges,
    ) -> Self {
        Deliveries {
            node,
            applied,
            check_applied,
            committed,
            failure: None,
        }
    }

    /// `events` go to a watcher of `spec`.
    fn check(&mut self, spec: &WatchSpec, events: &[Event]) {
        let node = self.node;
        let applied = self.applied.revision();
        let revisions: BTreeSet<i64> = events.iter().map(|e| e.kv.mod_revision).collect();
        if let Some(&r) = revisions.iter().next_back() {
            if self.check_applied && r > applied {
                self.failure.get_or_insert(format!(
                    "watch event before commit: node {node} delivered an event at revision {r} while its applied state is at revision {applied}"
                ));
            }
        }
        for e in events {
            if let Err(msg) = self.committed.delivered(node, e) {
                self.failure.get_or_insert(msg);
            }
            if let Err(msg) = self.check_prev_kv(spec, e) {
                self.failure.get_or_insert(msg);
            }
            let filtered = match e.kind {
                EventKind::Put => spec.no_put,
                EventKind::Delete => spec.no_delete,
            };
            if filtered {
                self.failure.get_or_insert(format!(
                    "watch filter: node {node} delivered a {:?} event of {:?} at revision {} to a watcher that filters them out",
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key),
                    e.kv.mod_revision
                ));
            }
        }
    }

    /// An event's `prev_kv` is there only when asked for, and then it is the key's version
    /// at the revision before the event, as a Range at that revision reads it on the node
    /// (when that revision is still readable there: not compacted, not above applied).
    fn check_prev_kv(&self, spec: &WatchSpec, e: &Event) -> Result<(), String> {
        let (node, rev) = (self.node, e.kv.mod_revision);
        let key = String::from_utf8_lossy(&e.kv.key);
        if !spec.prev_kv {
            return match &e.prev_kv {
                Some(_) => Err(format!(
                    "watch prev_kv: node {node} delivered the event of {key:?} at revision {rev} with a prev_kv nobody asked for"
                )),
                None => Ok(()),
            };
        }
        let before = rev - 1;
        if before <= self.applied.compact_revision() || rev > self.applied.revision() {
            return Ok(());
        }
        let want = if before == 0 {
            None
        } else {
            let req = RangeRequest {
                key: e.kv.key.clone(),
                revision: before,
                ..RangeRequest::default()
            };
            match self.applied.range(&req) {
                Ok(r) => r.kvs.into_iter().next(),
                Err(err) => {
                    return Err(format!(
                        "watch prev_kv: node {node} cannot read {key:?} at revision {before}: {err}"
                    ))
                }
            }
        };
        if e.prev_kv == want {
            return Ok(());
        }
        Err(format!(
            "watch prev_kv: node {node} delivered the event of {key:?} at revision {rev} with prev_kv {:?}, but at revision {before} the key was {want:?}",
            e.prev_kv
        ))
    }
}

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
    pub(crate) fn add(&mut self, spec: WatchSpec, start: i64, keys: &KeySpace, d: &mut Deliveries) {
        let mut w = SimWatch {
            watcher: Watcher::new(spec, start),
            start,
            from: start,
            delivered: Vec::new(),
            cancelled: None,
        };
        catch_up(&mut w, keys, &mut self.delivered, d);
        if w.start == 0 {
            w.from = w.watcher.next();
        }
        self.watchers.push(w);
    }

    /// After a Ready's applies (or a snapshot install): publish and feed every watcher.
    pub(crate) fn after_applies(&mut self, keys: &KeySpace, d: &mut Deliveries) {
        let live = || self.watchers.iter().filter(|w| w.cancelled.is_none());
        let listening = live().next().is_some();
        // Previous kvs only when some watcher asks for them, as the driver does.
        let prev_kv = live().any(|w| w.watcher.spec().prev_kv);
        let Some(batch) = self.publisher.publish(keys, listening, prev_kv) else {
            return;
        };
        for w in &mut self.watchers {
            offer(w, &batch, keys, &mut self.delivered, d);
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
                "watch: node {node}'s watcher of {:?}..{:?}{}{}{} from revision {} (asked {})",
                String::from_utf8_lossy(&spec.key),
                String::from_utf8_lossy(&spec.range_end),
                if spec.no_put { " NOPUT" } else { "" },
                if spec.no_delete { " NODELETE" } else { "" },
                if spec.prev_kv { " with prev_kv" } else { "" },
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
            let changes = keys.changes(from, &spec.key, &spec.range_end, spec.prev_kv);
            let want: Vec<Event> = match changes {
                Ok(events) => events
                    .into_iter()
                    .filter(|e| e.kv.mod_revision <= upto)
                    .filter(|e| match e.kind {
                        EventKind::Put => !spec.no_put,
                        EventKind::Delete => !spec.no_delete,
                    })
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
fn offer(
    w: &mut SimWatch,
    batch: &Batch,
    keys: &KeySpace,
    delivered: &mut u64,
    d: &mut Deliveries,
) {
    if w.cancelled.is_some() {
        return;
    }
    match w.watcher.offer(batch) {
        Step::Deliver(events) => deliver(w, events, delivered, d),
        Step::CatchUp => catch_up(w, keys, delivered, d),
        Step::Compacted(c) => w.cancelled = Some(c),
    }
}

/// Catches `w` up from `keys`'s history, in as many answers as it takes.
fn catch_up(w: &mut SimWatch, keys: &KeySpace, delivered: &mut u64, d: &mut Deliveries) {
    loop {
        let spec = w.watcher.spec();
        let h = history(
            keys,
            w.watcher.next(),
            &spec.key,
            &spec.range_end,
            spec.prev_kv,
        );
        match w.watcher.caught_up(&h) {
            Step::Deliver(events) => deliver(w, events, delivered, d),
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

fn deliver(w: &mut SimWatch, events: Vec<Event>, delivered: &mut u64, d: &mut Deliveries) {
    d.check(w.watcher.spec(), &events);
    *delivered += events.len() as u64;
    w.delivered.extend(events);
}
