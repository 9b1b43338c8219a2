//! [`KeySpace`]: the per-key histories, the change log and the operations on them.

use super::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyValue, MvccError, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// Which leases exist, asked when a put attaches one.
pub trait LeaseLookup {
    /// Whether lease `lease` exists (never asked about lease 0, "no lease").
    fn exists(&self, lease: i64) -> bool;
}

/// A lease table with no leases: a put may attach only lease 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLeases;

impl LeaseLookup for NoLeases {
    fn exists(&self, lease: i64) -> bool {
        lease == 0
    }
}

/// One version of one key: a put, or the tombstone of a delete (`value` `None`, and
/// `create`, `version`, `lease` 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Version {
    pub(super) rev: i64,
    pub(super) sub: u32,
    pub(super) create: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
    pub(super) value: Option<Box<[u8]>>,
}

impl Version {
    fn kv(&self, key: &[u8], keys_only: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create,
            mod_revision: self.rev,
            version: self.version,
            value: match (&self.value, keys_only) {
                (Some(v), false) => v.to_vec(),
                _ => Vec::new(),
            },
            lease: self.lease,
        }
    }
}

/// The latest version of `history` at revision `rev`, if the key was live then.
fn live_at(history: &[Version], rev: i64) -> Option<&Version> {
    let n = match history.last() {
        Some(last) if last.rev <= rev => history.len(),
        _ => history.partition_point(|v| v.rev <= rev),
    };
    history[..n].last().filter(|v| v.value.is_some())
}

/// Every key's versions, oldest first.
pub(super) type Histories = BTreeMap<Arc<[u8]>, Vec<Version>>;

/// A change log entry: version `(rev, sub)` of `key`.
#[derive(Clone, Debug)]
struct Change {
    rev: i64,
    sub: u32,
    key: Arc<[u8]>,
}

/// The MVCC store: every key's history back to the compaction revision.
///
/// Invariants (besides the module's): `live` is the number of keys whose last version is a
/// put; `compact_revision <= revision`.
#[derive(Clone, Debug)]
pub struct KeySpace {
    /// Key → its versions, oldest first; never empty, first one a put. The key is shared with
    /// the change log.
    index: Histories,
    /// The versions newer than the compaction revision (and the survivors at it), in
    /// (revision, sub-revision) order: what `changes` walks and `compact` trims.
    log: VecDeque<Change>,
    /// The current store revision.
    revision: i64,
    /// Reads below it fail; 0 before the first compaction.
    compact_revision: i64,
    /// Live keys.
    live: usize,
    /// Lease id → the live keys whose latest version carries it. Invariant: exactly the
    /// non-zero leases of the live keys' latest versions, no empty sets; kept up to date when
    /// a write call commits (a rolled-back call never touched it) and derived on restore.
    leased: BTreeMap<i64, BTreeSet<Arc<[u8]>>>,
    /// Mutation switch (simulator checker tests only, never serialized): a txn gives its
    /// second and later writes a revision of their own, breaking "one txn, one revision".
    split_txn_writes: bool,
    /// Mutation switch (simulator checker tests only, never serialized): a txn's writes leave
    /// the lease index alone.
    txn_skips_lease_index: bool,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::new()
    }
}

/// The state of one write call (a put, a delete or a whole txn): every write gets `rev`
/// and the next sub-revision.
struct Writer {
    rev: i64,
    sub: u32,
    /// The log length before the call: rollback pops what came after.
    log_start: usize,
    live_before: usize,
    /// The revision reads inside a txn may name (the one before the txn).
    read_limit: i64,
    /// Mutation: each write after a txn's first gets its own revision.
    split: bool,
    /// Mutation (model test only): the call's writes leave the lease index as it was.
    skip_lease_index: bool,
}

impl Writer {
    fn wrote(&self) -> bool {
        self.sub > 0
    }

    /// The revision a read at "current" sees: the writes so far included.
    fn current(&self) -> i64 {
        if self.wrote() {
            self.rev
        } else {
            self.rev - 1
        }
    }

    fn next(&mut self) -> (i64, u32) {
        if self.split && self.sub > 0 {
            self.rev += 1;
            self.sub = 0;
        }
        let sub = self.sub;
        self.sub += 1;
        (self.rev, sub)
    }
}

#[cfg(test)]
thread_local! {
    /// Mutation switch for the model test: a txn gives its second (and later) write a
    /// revision of its own, breaking "one txn, one revision".
    pub(super) static SPLIT_TXN_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Mutation switch for the model test: a txn's puts and deletes leave the lease index
    /// alone, so a revoke forgets the keys attached through a txn.
    pub(super) static TXN_SKIPS_LEASE_INDEX: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Bounds of a key interval, for `BTreeMap::range`.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// `[key, range_end)` as map bounds; `None` when the interval is empty.
fn bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    match range_end {
        [] => Some((Bound::Included(key), Bound::Included(key))),
        [0] => Some((Bound::Included(key), Bound::Unbounded)),
        end if end > key => Some((Bound::Included(key), Bound::Excluded(end))),
        _ => None,
    }
}

/// Whether `key` lies in `[begin, range_end)` (same conventions as [`bounds`]).
fn in_range(key: &[u8], begin: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => key == begin,
        [0] => key >= begin,
        end => key >= begin && key < end,
    }
}

impl KeySpace {
    /// An empty store at revision 1, never compacted.
    pub fn new() -> Self {
        KeySpace {
            index: BTreeMap::new(),
            log: VecDeque::new(),
            revision: 1,
            compact_revision: 0,
            live: 0,
            leased: BTreeMap::new(),
            split_txn_writes: false,
            txn_skips_lease_index: false,
        }
    }

    /// Mutation switch for the simulator's checker tests: every txn from now on gives its
    /// second and later writes a revision of their own (a txn applied non-atomically). Not
    /// part of the state: snapshots neither carry nor restore it.
    #[doc(hidden)]
    pub fn set_split_txn_writes(&mut self, on: bool) {
        self.split_txn_writes = on;
    }

    /// Mutation switch for the simulator's checker tests: a txn's writes from now on leave
    /// the lease index alone, so a revoke misses the keys a txn attached. Not part of the
    /// state, like [`set_split_txn_writes`](Self::set_split_txn_writes).
    #[doc(hidden)]
    pub fn set_txn_skips_lease_index(&mut self, on: bool) {
        self.txn_skips_lease_index = on;
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compaction revision (0: never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The number of live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The current value of `key`, if it is live: the cheap point read of `kvstore.v1`'s Get.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.index.get(key)?.last()?.value.as_deref()
    }

    /// The live versions in `[key, range_end)` at revision `rev`, in key order.
    fn live_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> impl Iterator<Item = (&'a [u8], &'a Version)> + 'a {
        bounds(key, range_end)
            .into_iter()
            .flat_map(move |b| self.index.range::<[u8], _>(b))
            .filter_map(move |(k, h)| live_at(h, rev).map(|v| (&**k, v)))
    }

    /// etcd's Range: the store read (`rangeKeys`) then the apply layer's filters, sort and
    /// limit (applierV3backend.Range).
    ///
    /// # Errors
    /// [`MvccError::FutureRevision`] above the current revision, [`MvccError::Compacted`]
    /// below the compaction revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(req, self.revision, self.revision)
    }

    /// A range with `current` as the revision "0" means, refusing revisions above `limit`.
    fn range_at(
        &self,
        req: &RangeRequest,
        current: i64,
        limit: i64,
    ) -> Result<RangeResponse, MvccError> {
        if req.revision > limit {
            return Err(MvccError::FutureRevision);
        }
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev < self.compact_revision {
            return Err(MvccError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let mut resp = RangeResponse::default();
        let matching = self.live_in(&req.key, &req.range_end, rev);
        if req.count_only {
            resp.count = count(matching);
            return Ok(resp);
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let limit = usize::try_from(req.limit).unwrap_or(0);
        // etcd sorts unless the order is already the store's (key ascending).
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => None,
            (SortOrder::Descend, _) => Some(SortOrder::Descend),
            _ => Some(SortOrder::Ascend),
        };
        if !filtered && order.is_none() && limit > 0 {
            // The common case: materialize only what is returned.
            let mut n = 0i64;
            for (k, v) in matching {
                if resp.kvs.len() < limit {
                    resp.kvs.push(v.kv(k, req.keys_only));
                }
                n += 1;
            }
            resp.count = n;
            resp.more = n > req.limit;
            return Ok(resp);
        }
        // Filter, sort and cut on borrowed versions; copy out only what is returned.
        let mut found: Vec<(&[u8], &Version)> = matching.collect();
        resp.count = i64::try_from(found.len()).unwrap_or(i64::MAX);
        if filtered {
            found.retain(|(_, v)| {
                !(req.max_mod_revision != 0 && v.rev > req.max_mod_revision
                    || req.min_mod_revision != 0 && v.rev < req.min_mod_revision
                    || req.max_create_revision != 0 && v.create > req.max_create_revision
                    || req.min_create_revision != 0 && v.create < req.min_create_revision)
            });
        }
        if let Some(order) = order {
            // Stable: ties stay in key order (etcd's sort is unstable; ours is deterministic).
            // The value sort sees the values even with keys_only: etcd drops them afterwards.
            let by = |(ka, a): &(&[u8], &Version), (kb, b): &(&[u8], &Version)| -> Ordering {
                match req.sort_target {
                    SortTarget::Key => ka.cmp(kb),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create.cmp(&b.create),
                    SortTarget::Mod => a.rev.cmp(&b.rev),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            if order == SortOrder::Descend {
                found.sort_by(|a, b| by(b, a));
            } else {
                found.sort_by(by);
            }
        }
        if limit > 0 && found.len() > limit {
            found.truncate(limit);
            resp.more = true;
        }
        resp.kvs = found
            .into_iter()
            .map(|(k, v)| v.kv(k, req.keys_only))
            .collect();
        Ok(resp)
    }

    fn begin(&self) -> Writer {
        Writer {
            rev: self.revision + 1,
            sub: 0,
            log_start: self.log.len(),
            live_before: self.live,
            read_limit: self.revision,
            split: false,
            skip_lease_index: false,
        }
    }

    fn commit(&mut self, w: Writer) {
        if w.wrote() {
            if !w.skip_lease_index {
                self.index_leases(w.log_start);
            }
            self.revision = w.rev;
        }
    }

    /// Moves every key the committing call wrote (the change log from `log_start` on) from
    /// the lease its version before the call carried to the lease its latest version carries.
    /// Runs before the store revision moves: the version before the call is the latest at or
    /// below it.
    fn index_leases(&mut self, log_start: usize) {
        let mut keys: Vec<Arc<[u8]>> = self.log.range(log_start..).map(|c| c.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(h) = self.index.get(&*key) else {
                continue;
            };
            let lease_of =
                |v: Option<&Version>| v.filter(|v| v.value.is_some()).map_or(0, |v| v.lease);
            let before = lease_of(live_at(h, self.revision));
            let after = lease_of(h.last());
            if before == after {
                continue;
            }
            if before != 0 {
                if let Some(set) = self.leased.get_mut(&before) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.leased.remove(&before);
                    }
                }
            }
            if after != 0 {
                self.leased.entry(after).or_default().insert(key);
            }
        }
    }

    /// The live keys attached to `lease`, in key order.
    pub fn lease_keys(&self, lease: i64) -> impl Iterator<Item = &[u8]> + '_ {
        self.leased.get(&lease).into_iter().flatten().map(|k| &**k)
    }

    /// The leases some live key is attached to, with their keys (what a snapshot restore
    /// checks against the lease table).
    pub fn leases_in_use(&self) -> impl Iterator<Item = (i64, usize)> + '_ {
        self.leased.iter().map(|(id, keys)| (*id, keys.len()))
    }

    /// Deletes every key attached to `lease` in one write (one revision, like a txn of
    /// deletes): what revoking the lease does to the key space. Returns how many keys it
    /// deleted; none (and no new revision) if no key is attached.
    pub fn delete_lease_keys(&mut self, lease: i64) -> usize {
        let keys: Vec<Arc<[u8]>> = self
            .leased
            .get(&lease)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut w = self.begin();
        let deleted = keys.len();
        self.tombstone(&mut w, keys);
        self.commit(w);
        deleted
    }

    /// Undoes every write of `w`: pops the versions it appended, newest first.
    fn rollback(&mut self, w: Writer) {
        while self.log.len() > w.log_start {
            let Some(change) = self.log.pop_back() else {
                break;
            };
            let emptied = match self.index.get_mut(&*change.key) {
                Some(history) => {
                    debug_assert!(
                        history
                            .last()
                            .is_some_and(|v| (v.rev, v.sub) == (change.rev, change.sub)),
                        "invariant: a txn's versions are the last of their keys"
                    );
                    history.pop();
                    history.is_empty()
                }
                None => false,
            };
            if emptied {
                self.index.remove(&*change.key);
            }
        }
        self.live = w.live_before;
    }

    /// Runs `f` as one write call: committed if it succeeds, rolled back if it fails.
    fn write<T>(
        &mut self,
        w: Writer,
        f: impl FnOnce(&mut Self, &mut Writer) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        let mut w = w;
        match f(self, &mut w) {
            Ok(t) => {
                self.commit(w);
                Ok(t)
            }
            Err(e) => {
                self.rollback(w);
                Err(e)
            }
        }
    }

    /// etcd's Put.
    ///
    /// # Errors
    /// [`MvccError::EmptyKey`]; [`MvccError::LeaseNotFound`] for a lease `leases` does not
    /// know; [`MvccError::KeyNotFound`] for `ignore_value`/`ignore_lease` on a missing key.
    pub fn put(
        &mut self,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<PutResponse, MvccError> {
        let w = self.begin();
        self.write(w, |s, w| s.put_in(w, req, leases))
    }

    fn put_in(
        &mut self,
        w: &mut Writer,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<PutResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if req.lease != 0 && !leases.exists(req.lease) {
            return Err(MvccError::LeaseNotFound(req.lease));
        }
        let current = w.current();
        let entry = self
            .index
            .range_mut::<[u8], _>((Bound::Included(&req.key[..]), Bound::Included(&req.key[..])))
            .next();
        let prev = entry.as_ref().and_then(|(_, h)| live_at(h, current));
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let prev_kv = if req.prev_kv {
            prev.map(|v| v.kv(&req.key, false))
        } else {
            None
        };
        let (create, version) = match prev {
            Some(p) => (p.create, p.version + 1),
            None => (0, 1),
        };
        let value = match (req.ignore_value, prev) {
            (true, Some(p)) => p.value.clone(),
            _ => Some(req.value.as_slice().into()),
        };
        let lease = match (req.ignore_lease, prev) {
            (true, Some(p)) => p.lease,
            _ => req.lease,
        };
        let was_live = prev.is_some();
        let (rev, sub) = w.next();
        let version = Version {
            rev,
            sub,
            create: if was_live { create } else { rev },
            version,
            lease,
            value,
        };
        let key = match entry {
            Some((k, h)) => {
                push_version(h, version);
                k.clone()
            }
            None => {
                let k: Arc<[u8]> = req.key.as_slice().into();
                self.index.insert(k.clone(), vec![version]);
                k
            }
        };
        if !was_live {
            self.live += 1;
        }
        self.log.push_back(Change { rev, sub, key });
        Ok(PutResponse { prev_kv })
    }

    /// etcd's DeleteRange: a tombstone for every live key of the interval.
    ///
    /// # Errors
    /// [`MvccError::EmptyKey`].
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let w = self.begin();
        self.write(w, |s, w| s.delete_in(w, req))
    }

    fn delete_in(
        &mut self,
        w: &mut Writer,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let current = w.current();
        let mut resp = DeleteRangeResponse::default();
        let mut doomed = Vec::new();
        if let Some(b) = bounds(&req.key, &req.range_end) {
            for (k, h) in self.index.range::<[u8], _>(b) {
                if let Some(v) = live_at(h, current) {
                    if req.prev_kv {
                        resp.prev_kvs.push(v.kv(k, false));
                    }
                    doomed.push(k.clone());
                }
            }
        }
        resp.deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        self.tombstone(w, doomed);
        Ok(resp)
    }

    /// A tombstone for each of `keys` (live ones), at `w`'s revision.
    fn tombstone(&mut self, w: &mut Writer, keys: Vec<Arc<[u8]>>) {
        for key in keys {
            let (rev, sub) = w.next();
            if let Some(h) = self.index.get_mut(&*key) {
                push_version(
                    h,
                    Version {
                        rev,
                        sub,
                        create: 0,
                        version: 0,
                        lease: 0,
                        value: None,
                    },
                );
            }
            self.live -= 1;
            self.log.push_back(Change { rev, sub, key });
        }
    }

    /// etcd's Txn: every compare (nested txns' too) is evaluated on the store as it was
    /// before the txn (etcd's compareToPath). The ops of the chosen branches are then checked
    /// against that same state, the puts first and the ranges after (etcd's checkRequests,
    /// so a txn with several faults fails with etcd's error), and run in order, each seeing
    /// the writes before it, all at one revision. Any error undoes the whole txn.
    ///
    /// # Errors
    /// Those of the ops: [`MvccError::KeyNotFound`] and [`MvccError::LeaseNotFound`] for
    /// puts, then [`MvccError::FutureRevision`] for a range naming a revision above the one
    /// before the txn and [`MvccError::Compacted`] for one below the compaction revision
    /// (including a negative revision below etcd's -1 "never compacted", as etcd does);
    /// [`MvccError::EmptyKey`].
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path);
        walk(req, &path, &mut 0, &mut |op| self.check_put(op, leases))?;
        walk(req, &path, &mut 0, &mut |op| self.check_range(op))?;
        let mut w = self.begin();
        w.split = self.split_txn_writes;
        w.skip_lease_index = self.txn_skips_lease_index;
        #[cfg(test)]
        {
            w.split |= SPLIT_TXN_WRITES.with(|s| s.get());
            w.skip_lease_index |= TXN_SKIPS_LEASE_INDEX.with(|s| s.get());
        }
        self.write(w, |s, w| s.txn_in(w, req, &path, &mut 0, leases))
    }

    /// etcd's checkRequestPut, on the state before the txn.
    fn check_put(&self, op: &RequestOp, leases: &dyn LeaseLookup) -> Result<(), MvccError> {
        let RequestOp::Put(p) = op else { return Ok(()) };
        if (p.ignore_value || p.ignore_lease)
            && self.live_in(&p.key, &[], self.revision).next().is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if p.lease != 0 && !leases.exists(p.lease) {
            return Err(MvccError::LeaseNotFound(p.lease));
        }
        Ok(())
    }

    /// etcd's checkRequestRange, on the state before the txn. etcd's first revision is -1
    /// until the first compaction.
    fn check_range(&self, op: &RequestOp) -> Result<(), MvccError> {
        let RequestOp::Range(r) = op else {
            return Ok(());
        };
        let first = if self.compact_revision == 0 {
            -1
        } else {
            self.compact_revision
        };
        match r.revision {
            0 => Ok(()),
            rev if rev > self.revision => Err(MvccError::FutureRevision),
            rev if rev < first => Err(MvccError::Compacted {
                compact_revision: self.compact_revision,
            }),
            _ => Ok(()),
        }
    }

    fn compare_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let ok = req.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let RequestOp::Txn(t) = op {
                self.compare_path(t, path);
            }
        }
    }

    fn txn_in(
        &mut self,
        w: &mut Writer,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        leases: &dyn LeaseLookup,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        let mut revisions = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    ResponseOp::Range(self.range_at(r, w.current(), w.read_limit)?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(w, p, leases)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_in(w, d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn_in(w, t, path, at, leases)?),
            });
            revisions.push(w.current());
        }
        Ok(TxnResponse {
            succeeded,
            responses,
            revisions,
        })
    }

    /// etcd's applyCompare: every live key of the interval must satisfy it; an empty
    /// interval compares a zero kv, except that a value compare on it fails.
    fn compare(&self, c: &Compare) -> bool {
        let mut any = false;
        let all = self
            .live_in(&c.key, &c.range_end, self.revision)
            .all(|(_, v)| {
                any = true;
                compare_version(c, Some(v))
            });
        if !any {
            return !matches!(c.target, CompareTarget::Value(_)) && compare_version(c, None);
        }
        all
    }

    /// etcd's Compact.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] at or below the compaction revision,
    /// [`MvccError::FutureRevision`] above the current revision.
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.revision {
            return Err(MvccError::FutureRevision);
        }
        // Only keys with a version at or below `revision` in the log can lose versions: any
        // older version is the kept first one of its key.
        let upto = self.log.partition_point(|c| c.rev <= revision);
        let mut keys: Vec<Arc<[u8]>> = self.log.range(..upto).map(|c| c.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let emptied = match self.index.get_mut(&*key) {
                Some(h) => {
                    // Keep the latest version at or below `revision`, unless a tombstone.
                    let n = h.partition_point(|v| v.rev <= revision);
                    let mut drop = n.saturating_sub(1);
                    if h.get(drop).is_some_and(|v| v.value.is_none()) {
                        drop += 1;
                    }
                    h.drain(..drop);
                    if h.capacity() > 2 * h.len() + 4 {
                        h.shrink_to_fit();
                    }
                    h.is_empty()
                }
                None => false,
            };
            if emptied {
                self.index.remove(&*key);
            }
        }
        let below = self.log.partition_point(|c| c.rev < revision);
        self.log.drain(..below);
        // At exactly `revision`, keep only the versions that survived.
        let at = self.log.partition_point(|c| c.rev <= revision);
        let mut survivors: Vec<Change> = self.log.drain(..at).collect();
        survivors.retain(|c| self.version(&c.key, c.rev, c.sub).is_some());
        for c in survivors.into_iter().rev() {
            self.log.push_front(c);
        }
        self.compact_revision = revision;
        Ok(())
    }

    fn version(&self, key: &[u8], rev: i64, sub: u32) -> Option<&Version> {
        let h = self.index.get(key)?;
        h.binary_search_by(|v| (v.rev, v.sub).cmp(&(rev, sub)))
            .ok()
            .map(|i| &h[i])
    }

    /// Every change of a key in `[key, range_end)` at a revision `>= from_revision`, in
    /// revision order (what a watch starting at `from_revision` catches up with). At the
    /// compaction revision itself only the puts that survived it remain (as in etcd).
    /// `prev_kv` adds each change's previous kv: the key at the revision before the change.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `from_revision` is below the compaction revision.
    pub fn changes(
        &self,
        from_revision: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        if from_revision < self.compact_revision {
            return Err(MvccError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let start = self.log.partition_point(|c| c.rev < from_revision);
        let mut events = Vec::new();
        for c in self.log.range(start..) {
            if !in_range(&c.key, key, range_end) {
                continue;
            }
            let Some(v) = self.version(&c.key, c.rev, c.sub) else {
                debug_assert!(
                    false,
                    "invariant: every logged change is in its key's history"
                );
                continue;
            };
            let (kind, kv) = match v.value {
                Some(_) => (EventKind::Put, v.kv(&c.key, false)),
                None => (
                    EventKind::Delete,
                    KeyValue {
                        key: c.key.to_vec(),
                        mod_revision: c.rev,
                        ..KeyValue::default()
                    },
                ),
            };
            let prev = if prev_kv && c.rev > self.compact_revision {
                self.index
                    .get(&*c.key)
                    .and_then(|h| live_at(h, c.rev - 1))
                    .map(|p| p.kv(&c.key, false))
            } else {
                None
            };
            events.push(Event {
                kind,
                kv,
                prev_kv: prev,
            });
        }
        Ok(events)
    }

    /// How many keys have a history (live or not).
    #[cfg(test)]
    pub(super) fn stored_keys(&self) -> usize {
        self.index.len()
    }

    /// How many versions all histories hold.
    #[cfg(test)]
    pub(super) fn stored_versions(&self) -> usize {
        self.index.values().map(Vec::len).sum()
    }

    /// The parts of a snapshot: revision, compaction revision and the histories.
    pub(super) fn parts(&self) -> (i64, i64, &Histories) {
        (self.revision, self.compact_revision, &self.index)
    }

    /// Rebuilds a store from validated parts (the log and the live count are derived).
    pub(super) fn from_parts(revision: i64, compact_revision: i64, index: Histories) -> Self {
        let mut log: Vec<Change> = index
            .iter()
            .flat_map(|(k, h)| {
                h.iter()
                    .filter(|v| v.rev >= compact_revision)
                    .map(|v| Change {
                        rev: v.rev,
                        sub: v.sub,
                        key: k.clone(),
                    })
            })
            .collect();
        log.sort_unstable_by_key(|c| (c.rev, c.sub));
        let live = index
            .values()
            .filter(|h| h.last().is_some_and(|v| v.value.is_some()))
            .count();
        let mut leased: BTreeMap<i64, BTreeSet<Arc<[u8]>>> = BTreeMap::new();
        for (k, h) in &index {
            if let Some(v) = h.last().filter(|v| v.value.is_some() && v.lease != 0) {
                leased.entry(v.lease).or_default().insert(k.clone());
            }
        }
        KeySpace {
            index,
            log: log.into(),
            revision,
            compact_revision,
            live,
            leased,
            split_txn_writes: false,
            txn_skips_lease_index: false,
        }
    }
}

/// Calls `f` on every non-txn op of the branches `path` chooses, in order (etcd's
/// checkRequests walk).
fn walk(
    req: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    f: &mut dyn FnMut(&RequestOp) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let succeeded = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in if succeeded {
        &req.success
    } else {
        &req.failure
    } {
        match op {
            RequestOp::Txn(t) => walk(t, path, at, f)?,
            op => f(op)?,
        }
    }
    Ok(())
}

/// Appends to a history, growing it 1, 2, 4, ... rather than `Vec`'s minimum of 4: most
/// keys have one or two versions, and the spare slots would cost more than the version.
fn push_version(history: &mut Vec<Version>, version: Version) {
    if history.len() == history.capacity() {
        history.reserve_exact(history.len().max(1));
    }
    history.push(version);
}

fn count<'a>(it: impl Iterator<Item = (&'a [u8], &'a Version)>) -> i64 {
    i64::try_from(it.count()).unwrap_or(i64::MAX)
}

/// etcd's compareKV on a key's version (`None`: the zero kv of a missing key).
fn compare_version(c: &Compare, v: Option<&Version>) -> bool {
    let field = |f: fn(&Version) -> i64| v.map_or(0, f);
    let ord = match &c.target {
        CompareTarget::Version(t) => field(|v| v.version).cmp(t),
        CompareTarget::Create(t) => field(|v| v.create).cmp(t),
        CompareTarget::Mod(t) => field(|v| v.rev).cmp(t),
        CompareTarget::Lease(t) => field(|v| v.lease).cmp(t),
        CompareTarget::Value(t) => {
            let value: &[u8] = v.and_then(|v| v.value.as_deref()).unwrap_or(&[]);
            value.cmp(t.as_slice())
        }
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
