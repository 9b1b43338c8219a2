//! Watches, the I/O-free part: what the driver publishes after each apply ([`Publisher`],
//! [`Batch`]) and what one watcher delivers from it ([`Watcher`]). The etcd front end
//! (`rpc/etcd/watch.rs`) moves the batches and history answers between the driver and the
//! client; every decision about which event goes out is taken here.
//!
//! # The rule: exactly the history
//! A watcher starting at revision `s` delivers exactly the changes to its range with revision
//! `>= s`, in revision order, each once, the events of one revision (a txn) together. It gets
//! them from two sources:
//! - **batches**: after every Ready's applies, the driver publishes the changes of every key
//!   since the last batch, `(first ..= last)` (one `KeySpace::changes` walk: O(new changes)).
//!   Batches are contiguous: each one's `first` is the previous one's `last + 1`.
//! - **history** (catch-up): the changes of its range from its next revision, answered by the
//!   driver with the revision the answer reflects. A watcher catches up when it is created,
//!   when the stream lagged behind the broadcast, and when a batch does not continue where it
//!   stands (a gap: a reset after a snapshot install, or a truncated catch-up).
//!
//! A watcher keeps `next`, the lowest revision it has not delivered: it takes from a batch or
//! an answer only the events at `>= next` and then moves `next` past it, so overlapping
//! sources never deliver a revision twice, and it never moves `next` past a revision it has
//! not seen, so nothing is skipped. A start below the compaction revision (or a catch-up that
//! fell behind a compaction) cancels it with the compaction revision, as etcd does.
//!
//! # Snapshot installs
//! A snapshot replaces the state machine; its history is the same history (a follower's state
//! is a prefix of the leader's), so the next batch is simply the new state's changes since
//! the last one published. When the new state was compacted past that point the batch is a
//! **reset**: every watcher catches up from the new state (and is cancelled when it cannot).
//! [`Publisher::set_drop_snapshot_catch_up`] is the mutation that forgets this.

use crate::state_machine::mvcc::{Event, EventKind, KeySpace, MvccError};

/// The changes of every key with revision in `first ..= last`, or a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The lowest revision covered: the previous batch's `last + 1`.
    pub first: i64,
    /// The store revision after the applies this batch reports.
    pub last: i64,
    /// The changes, in revision order (with `prev_kv` when some watcher asked for it).
    pub events: Vec<Event>,
    /// The changes since `first` are not in the history any more (a snapshot install
    /// compacted past them): every watcher catches up from history instead.
    pub reset: bool,
}

/// Turns applied state into contiguous [`Batch`]es: owned by the driver.
#[derive(Debug)]
pub struct Publisher {
    /// The last revision published (or skipped because nobody listened).
    last: i64,
    /// Mutation switch: after a snapshot install, the next batch leaves out what the
    /// snapshot brought while claiming to continue the last one (the events of a follower's
    /// catch-up are lost).
    drop_snapshot_catch_up: bool,
    /// Under the mutation: the revision the installed snapshot brought the state to.
    skip_to: Option<i64>,
}

impl Publisher {
    /// A publisher for a state machine at `revision` (nothing before it is published).
    pub fn new(revision: i64) -> Self {
        Publisher {
            last: revision,
            drop_snapshot_catch_up: false,
            skip_to: None,
        }
    }

    /// The last revision published.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// Mutation switch for checker tests: see the module doc.
    #[doc(hidden)]
    pub fn set_drop_snapshot_catch_up(&mut self, on: bool) {
        self.drop_snapshot_catch_up = on;
    }

    /// The batch of what `keys` applied since the last one, if anything; `listening` false
    /// skips the walk (nobody could receive it, and a watcher that subscribes later asks for
    /// history from a later moment); `prev_kv` adds previous kvs.
    pub fn publish(&mut self, keys: &KeySpace, listening: bool, prev_kv: bool) -> Option<Batch> {
        let last = keys.revision();
        if last <= self.last {
            return None;
        }
        let first = self.last + 1;
        self.last = last;
        if !listening {
            self.skip_to = None;
            return None;
        }
        let from = self.skip_to.take().map_or(first, |r| r + 1);
        Some(match keys.changes(from, b"", &[0], prev_kv) {
            Ok(events) => Batch {
                first,
                last,
                events,
                reset: false,
            },
            Err(_) => Batch {
                first,
                last,
                events: Vec::new(),
                reset: true,
            },
        })
    }

    /// Called when a snapshot replaced the state machine with `keys`. Nothing to do: the next
    /// [`Publisher::publish`] reports the new state's changes (or a reset); unless the
    /// mutation is on, which drops them.
    pub fn snapshot_installed(&mut self, keys: &KeySpace) {
        if self.drop_snapshot_catch_up {
            self.skip_to = Some(keys.revision());
        }
    }
}

/// The driver's answer to a watcher's history request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The changes of the range from the asked revision, up to `reflects`; or the
    /// compaction revision when the asked revision is below it.
    pub events: Result<Vec<Event>, i64>,
    /// The revision the answer is complete up to (the store revision, unless the answer was
    /// cut at [`MAX_HISTORY_EVENTS`] or [`MAX_HISTORY_BYTES`]).
    pub reflects: i64,
    /// The answer was cut: ask again from the watcher's next revision.
    pub cut: bool,
}

/// Batches the broadcast keeps for the slowest receiver; a stream further behind lags and
/// its watchers catch up from history instead (so a slow client costs at most this many
/// batches of memory, shared by every stream).
pub const BATCH_CAPACITY: usize = 1024;

/// At most this many events (rounded up to a whole revision) in one history answer: a
/// watcher far behind catches up in several answers instead of one unbounded one.
pub const MAX_HISTORY_EVENTS: usize = 4096;

/// About this many bytes of keys and values (rounded up to a whole revision) in one
/// history answer at most.
pub const MAX_HISTORY_BYTES: usize = 16 << 20;

/// The history of `[key, range_end)` from `from` (0: nothing, just the current revision),
/// cut after [`MAX_HISTORY_EVENTS`] events or [`MAX_HISTORY_BYTES`] bytes, at a revision
/// boundary.
pub fn history(keys: &KeySpace, from: i64, key: &[u8], range_end: &[u8], prev_kv: bool) -> History {
    let revision = keys.revision();
    if from == 0 || from > revision {
        return History {
            events: Ok(Vec::new()),
            reflects: revision,
            cut: false,
        };
    }
    match keys.changes(from, key, range_end, prev_kv) {
        Ok(mut events) => {
            let mut reflects = revision;
            let mut bytes = 0;
            let over = events.iter().position(|e| {
                bytes += e.kv.key.len() + e.kv.value.len();
                bytes += e.prev_kv.as_ref().map_or(0, |p| p.value.len());
                bytes > MAX_HISTORY_BYTES
            });
            let last = over.unwrap_or(usize::MAX).min(MAX_HISTORY_EVENTS - 1);
            if let Some(cut_rev) = events.get(last).map(|e| e.kv.mod_revision) {
                let keep = events.partition_point(|e| e.kv.mod_revision <= cut_rev);
                if keep < events.len() {
                    events.truncate(keep);
                    reflects = cut_rev;
                }
            }
            History {
                events: Ok(events),
                cut: reflects < revision,
                reflects,
            }
        }
        Err(MvccError::Compacted { compact_revision }) => History {
            events: Err(compact_revision),
            reflects: revision,
            cut: false,
        },
        Err(_) => History {
            events: Ok(Vec::new()),
            reflects: revision,
            cut: false,
        },
    }
}

/// What a watcher watches (etcd's `WatchCreateRequest` minus ids and progress).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key.
    pub key: Vec<u8>,
    /// End of the interval: empty for `key` alone, `[0]` for every key from `key` on.
    pub range_end: Vec<u8>,
    /// Leave out puts (etcd's NOPUT filter).
    pub no_put: bool,
    /// Leave out deletes (NODELETE).
    pub no_delete: bool,
    /// Send each event's previous kv.
    pub prev_kv: bool,
}

/// What a watcher does with an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these events (maybe none: the watcher moved on without a match).
    Deliver(Vec<Event>),
    /// The input does not continue where the watcher stands: ask for history from
    /// [`Watcher::next`] and feed it to [`Watcher::caught_up`].
    CatchUp,
    /// The watcher is cancelled: its next revision was compacted away.
    Compacted(i64),
}

/// One watcher's position in the history.
///
/// Invariant: every event with revision `< next` in its range (and `>=` its start) was
/// delivered once, in order; none at or above `next` was. `next == 0` until the first
/// history answer for a watcher started "from now on".
#[derive(Clone, Debug)]
pub struct Watcher {
    spec: WatchSpec,
    next: i64,
}

impl Watcher {
    /// A watcher of `spec` from `start` (0: from the revision after the current one). It
    /// must catch up ([`Watcher::caught_up`]) before it takes batches.
    pub fn new(spec: WatchSpec, start: i64) -> Self {
        Watcher {
            spec,
            next: start.max(0),
        }
    }

    /// What it watches.
    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    /// The lowest revision not delivered yet (0: not known before the first catch-up).
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Feeds a history answer for a request from [`Watcher::next`].
    pub fn caught_up(&mut self, h: &History) -> Step {
        let events = match &h.events {
            Ok(events) => events,
            Err(compact) => return Step::Compacted(*compact),
        };
        if self.next == 0 {
            self.next = h.reflects + 1;
            return Step::Deliver(Vec::new());
        }
        let out = self.take(events.iter(), h.reflects);
        Step::Deliver(out)
    }

    /// Feeds a published batch.
    pub fn offer(&mut self, b: &Batch) -> Step {
        if self.next == 0 || b.last < self.next {
            return Step::Deliver(Vec::new());
        }
        if b.reset || b.first > self.next {
            return Step::CatchUp;
        }
        Step::Deliver(self.take(b.events.iter(), b.last))
    }

    /// The events of `events` at `>= next` that pass the watcher's range and filters; then
    /// `next` moves past `upto`, the revision the source is complete up to.
    fn take<'a>(&mut self, events: impl Iterator<Item = &'a Event>, upto: i64) -> Vec<Event> {
        let next = self.next;
        let s = &self.spec;
        let out = events
            .filter(|e| e.kv.mod_revision >= next && e.kv.mod_revision <= upto)
            .filter(|e| in_range(&e.kv.key, &s.key, &s.range_end))
            .filter(|e| match e.kind {
                EventKind::Put => !s.no_put,
                EventKind::Delete => !s.no_delete,
            })
            .map(|e| {
                let mut e = e.clone();
                if !s.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        self.next = self.next.max(upto + 1);
        out
    }
}

/// Whether `key` lies in `[begin, range_end)` (the key space's interval conventions).
fn in_range(key: &[u8], begin: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => key == begin,
        [0] => key >= begin,
        end => key >= begin && key < end,
    }
}

#[cfg(test)]
mod tests;
