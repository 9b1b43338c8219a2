//! [`StateMachine`]: the KV map, the applied index and the client sessions.

use super::command::{encode_exact, Command, Fence, KvResult, KvWrite, Outcome, Proposal};
use super::error::ApplyError;
use super::key_leases::KeyLeases;
use super::mvcc::{
    DeleteRangeRequest, KeySpace, KeySpaceSnapshot, KeySpaceSnapshotView, PutRequest, RangeRequest,
    RangeResponse,
};
use super::sessions::{command_digest, ClientSession, SessionLimits, Sessions, Verdict};
use crate::raft::LogIndex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The replicated state.
///
/// Invariants: `applied_index` only grows, by exactly the indexes handed to
/// [`apply`](Self::apply) / [`apply_noop`](Self::apply_noop); the result of every call depends
/// only on the state and the call's arguments (ordered maps, no clock, no randomness).
#[derive(Debug, Default)]
pub struct StateMachine {
    /// The key space: keys, values, revisions and the history back to the compaction
    /// revision.
    keys: KeySpace,
    /// Index of the last entry applied (0 before any).
    applied_index: LogIndex,
    /// Exactly-once sessions.
    sessions: Sessions,
    /// Locks with a valid lease (a lock absent from the map is free). Lease time is measured
    /// by the leader, which proposes `Expire`; this map never reads a clock.
    locks: BTreeMap<String, LockInfo>,
    /// The leases on keys (etcd's). Invariant: every lease a live key carries is in it (a put
    /// naming an unknown lease fails; a revoke deletes the lease's keys with it).
    key_leases: KeyLeases,
    /// The store revision the last [`apply`](Self::apply) answers with (see
    /// [`answer_revision`](Self::answer_revision)). Not state: a function of the last call.
    answer_revision: i64,
}

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Who holds it.
    pub holder: String,
    /// Its fencing token: the log index of the entry that granted it. Tokens only grow.
    pub token: u64,
    /// The lease length the holder asked for.
    pub ttl_ms: u64,
}

/// The first bytes of a snapshot with the revision each session's last write left (what its
/// retry is answered with). A snapshot written before revisions existed starts with its
/// applied index instead, and is refused: its keys have no revisions, and none can be made up
/// that every replica would agree on.
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVSNAP\x04\x00";

/// The first bytes of a snapshot with leases on keys, before sessions kept their revisions:
/// [`SnapshotData`] without its last field. Still read: a retry of a write remembered there
/// is answered with the current revision, as it was then.
const SNAPSHOT_MAGIC_V3: &[u8; 8] = b"KVSNAP\x03\x00";

/// The first bytes of a snapshot of the revisioned key space written before leases on keys
/// existed: [`SnapshotData`] without its last field. Still read: no key could carry a lease
/// then, so an empty lease table is exact.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"KVSNAP\x02\x00";

/// The snapshot format after [`SNAPSHOT_MAGIC`]: everything that shapes future outcomes, in a
/// stable order.
#[derive(Deserialize)]
struct SnapshotData {
    applied_index: LogIndex,
    sessions: Vec<ClientSession>,
    locks: BTreeMap<String, LockInfo>,
    extra: SessionsExtra,
    keys: KeySpaceSnapshot,
    /// The leases on keys, `(id, granted ttl)` in id order.
    key_leases: Vec<(i64, i64)>,
    /// The revision each session's last write left, in the order of `sessions`.
    session_revisions: Vec<i64>,
}

/// The snapshot format after [`SNAPSHOT_MAGIC_V3`].
#[derive(Deserialize)]
struct SnapshotDataV3 {
    applied_index: LogIndex,
    sessions: Vec<ClientSession>,
    locks: BTreeMap<String, LockInfo>,
    extra: SessionsExtra,
    keys: KeySpaceSnapshot,
    key_leases: Vec<(i64, i64)>,
}

/// The snapshot format after [`SNAPSHOT_MAGIC_V2`].
#[derive(Deserialize)]
struct SnapshotDataV2 {
    applied_index: LogIndex,
    sessions: Vec<ClientSession>,
    locks: BTreeMap<String, LockInfo>,
    extra: SessionsExtra,
    keys: KeySpaceSnapshot,
}

/// What the session rule needs beyond [`SnapshotData`]'s sessions: the command digest of each
/// session (in the same order) and the retired ids, oldest first.
#[derive(Serialize, Deserialize, Default)]
struct SessionsExtra {
    digests: Vec<Option<u64>>,
    retired: Vec<u64>,
}

/// A `\x03` snapshot: its sessions' revisions unknown (0), so their retries are answered
/// with the current revision, as they were then.
impl From<SnapshotDataV3> for SnapshotData {
    fn from(v3: SnapshotDataV3) -> Self {
        SnapshotData {
            applied_index: v3.applied_index,
            sessions: v3.sessions,
            locks: v3.locks,
            extra: v3.extra,
            keys: v3.keys,
            key_leases: v3.key_leases,
            session_revisions: Vec::new(),
        }
    }
}

/// A `\x02` snapshot: no key could carry a lease then, so an empty lease table is exact.
impl From<SnapshotDataV2> for SnapshotDataV3 {
    fn from(v2: SnapshotDataV2) -> Self {
        SnapshotDataV3 {
            applied_index: v2.applied_index,
            sessions: v2.sessions,
            locks: v2.locks,
            extra: v2.extra,
            keys: v2.keys,
            key_leases: Vec::new(),
        }
    }
}

/// [`SnapshotData`] borrowed from a live state machine: the same bytes (serde writes a
/// reference as what it points to), without cloning the keys, sessions and locks first.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    applied_index: LogIndex,
    sessions: Vec<&'a ClientSession>,
    locks: &'a BTreeMap<String, LockInfo>,
    extra: SessionsExtra,
    keys: KeySpaceSnapshotView<'a>,
    key_leases: Vec<(i64, i64)>,
    session_revisions: Vec<i64>,
}

/// A snapshot that could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("state machine snapshot is not decodable: {0}")]
pub struct SnapshotError(String);

impl StateMachine {
    /// An empty state machine (applied index 0) with the default [`SessionLimits`].
    pub fn new() -> Self {
        Self::with_limits(SessionLimits::default())
    }

    /// An empty state machine with the given session limits (the same on every replica).
    pub fn with_limits(limits: SessionLimits) -> Self {
        Self {
            keys: KeySpace::new(),
            applied_index: 0,
            sessions: Sessions::new(limits),
            locks: BTreeMap::new(),
            key_leases: KeyLeases::new(),
            answer_revision: 0,
        }
    }

    /// Applies the command encoded in `data` at `index`.
    ///
    /// A proposal with a session is applied at most once (see the `sessions` module doc): a
    /// retry of the session's last sequence returns the cached outcome, an older sequence
    /// fails, and a write from a dropped session fails with [`ApplyError::SessionExpired`].
    ///
    /// # Errors
    /// A deterministic per-command failure (see [`ApplyError`]); the state is unchanged
    /// except for the applied index and the session table (both depend only on the entries).
    ///
    /// # Panics
    /// If `index` is not above the applied index (the driver applied out of order).
    pub fn apply(&mut self, index: LogIndex, data: &[u8]) -> Result<Outcome, ApplyError> {
        self.advance_to(index);
        self.answer_revision = self.keys.revision();
        let proposal = Proposal::decode(data).map_err(ApplyError::Undecodable)?;
        let Some(session) = proposal.session else {
            let result = self.execute(index, proposal.command);
            self.answer_revision = self.keys.revision();
            return result;
        };
        if session.client_id == 0 || session.sequence == 0 {
            // The services refuse these before proposing; an entry carrying one anyway
            // fails alike everywhere.
            return Err(ApplyError::Undecodable(
                "a session's client_id and sequence must not be 0".to_string(),
            ));
        }
        let digest = command_digest(&encode_exact(&proposal.command));
        match self.sessions.check(session, digest, index)? {
            Verdict::Duplicate(outcome, revision) => {
                if revision > 0 {
                    self.answer_revision = revision;
                }
                Ok(outcome)
            }
            Verdict::Apply => match self.execute(index, proposal.command) {
                Ok(outcome) => {
                    let revision = self.keys.revision();
                    self.answer_revision = revision;
                    self.sessions
                        .record(session, digest, outcome.clone(), revision, index);
                    Ok(outcome)
                }
                Err(e) => {
                    self.sessions.record_failure(session, index);
                    Err(e)
                }
            },
        }
    }

    /// The store revision the writer of the last [`apply`](Self::apply) is answered with: the
    /// revision right after its write, which for a retry answered from its session is the
    /// revision the first application left (not the current one: other writes may have come
    /// between). The current revision when unknown (a session restored from an older
    /// snapshot) and after a write that failed.
    pub fn answer_revision(&self) -> i64 {
        self.answer_revision
    }

    /// Records a no-op entry at `index`.
    ///
    /// # Panics
    /// If `index` is not above the applied index.
    pub fn apply_noop(&mut self, index: LogIndex) {
        self.advance_to(index);
    }

    /// The current value of a key, if it exists and is UTF-8 text (the `kvstore.v1` view).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The current value of a key, if it exists.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&[u8]> {
        self.keys.get(key)
    }

    /// An etcd Range over the key space, at its revision (0: the current one).
    ///
    /// # Errors
    /// The revision is compacted or in the future.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.keys.range(req).map_err(ApplyError::Kv)
    }

    /// The key space (revisions, history), read-only.
    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    /// Mutation switch for the simulator's checker tests ([`KeySpace::set_split_txn_writes`]):
    /// txns apply their writes at several revisions. Not part of the state: whoever rebuilds
    /// a state machine (restart, snapshot install) sets it again.
    #[doc(hidden)]
    pub fn set_split_txn_writes(&mut self, on: bool) {
        self.keys.set_split_txn_writes(on);
    }

    /// Mutation switch for the simulator's checker tests
    /// ([`KeySpace::set_txn_skips_lease_index`]): a revoke misses the keys a txn attached.
    /// Not part of the state, like [`set_split_txn_writes`](Self::set_split_txn_writes).
    #[doc(hidden)]
    pub fn set_txn_skips_lease_index(&mut self, on: bool) {
        self.keys.set_txn_skips_lease_index(on);
    }

    /// The store's revision (etcd's): 1 when empty, +1 per applied change.
    pub fn revision(&self) -> i64 {
        self.keys.revision()
    }

    /// Last applied log index.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of remembered client sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The last applied sequence of `client_id`, if its session is remembered.
    pub fn session_sequence(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(client_id).map(|s| s.last_sequence)
    }

    /// Serializes the whole state (data, applied index, sessions, retired session ids, locks)
    /// for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let data = SnapshotRef {
            applied_index: self.applied_index,
            sessions: self.sessions.iter().collect(),
            locks: &self.locks,
            extra: SessionsExtra {
                digests: self.sessions.iter().map(|s| s.digest).collect(),
                retired: self.sessions.retired().collect(),
            },
            keys: self.keys.snapshot_view(),
            key_leases: self.key_leases.to_snapshot(),
            session_revisions: self.sessions.iter().map(|s| s.revision).collect(),
        };
        // One allocation of the exact length, the magic first.
        let size = postcard::experimental::serialized_size(&data).unwrap_or_default();
        let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + size);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        // Serializing into a growable Vec cannot fail (see `encode_exact`).
        postcard::to_extend(&data, out).unwrap_or_default()
    }

    /// Rebuilds a state machine from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// The bytes are not a snapshot, or one written before the key space had revisions.
    pub fn restore(data: &[u8], limits: SessionLimits) -> Result<Self, SnapshotError> {
        let snap: SnapshotData = if let Some(body) = data.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
            postcard::from_bytes(body).map_err(|e| SnapshotError(e.to_string()))?
        } else if let Some(body) = data.strip_prefix(SNAPSHOT_MAGIC_V3.as_slice()) {
            let v3: SnapshotDataV3 =
                postcard::from_bytes(body).map_err(|e| SnapshotError(e.to_string()))?;
            v3.into()
        } else if let Some(body) = data.strip_prefix(SNAPSHOT_MAGIC_V2.as_slice()) {
            let v2: SnapshotDataV2 =
                postcard::from_bytes(body).map_err(|e| SnapshotError(e.to_string()))?;
            SnapshotDataV3::from(v2).into()
        } else {
            return Err(SnapshotError(
                "it was written by a kvstore without revisions (before 2026-12), whose snapshots this version cannot read; start the node on an empty data dir to catch up from the leader, or keep running the older version".to_string(),
            ));
        };
        let keys = KeySpace::restore(snap.keys).map_err(SnapshotError)?;
        let key_leases = KeyLeases::from_snapshot(snap.key_leases).map_err(SnapshotError)?;
        if let Some((id, _)) = keys
            .leases_in_use()
            .find(|(id, _)| key_leases.ttl(*id).is_none())
        {
            return Err(SnapshotError(format!(
                "a key is attached to lease {id}, which the lease table does not hold"
            )));
        }
        let extra = snap.extra;
        let mut sessions = Sessions::new(limits);
        for id in extra.retired {
            sessions.retire(id);
        }
        let mut all = snap.sessions;
        for (session, digest) in all.iter_mut().zip(extra.digests) {
            session.digest = digest;
        }
        for (session, revision) in all.iter_mut().zip(snap.session_revisions) {
            session.revision = revision;
        }
        // Oldest first, so `insert`'s eviction keeps the most recently used if limits shrank.
        all.sort_by_key(|s| (s.last_used, s.client_id));
        for s in all {
            sessions.insert(s);
        }
        Ok(Self {
            applied_index: snap.applied_index,
            sessions,
            locks: snap.locks,
            answer_revision: keys.revision(),
            keys,
            key_leases,
        })
    }

    fn advance_to(&mut self, index: LogIndex) {
        assert!(
            index > self.applied_index,
            "invariant: entries are applied in index order, but index {index} is not above the applied index {}",
            self.applied_index
        );
        self.applied_index = index;
        self.sessions.expire(index);
    }

    fn execute(&mut self, index: LogIndex, command: Command) -> Result<Outcome, ApplyError> {
        match command {
            Command::Put { key, value, fence } => {
                self.check_fence(fence.as_ref())?;
                let put = PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    ..PutRequest::default()
                };
                self.keys
                    .put(&put, &self.key_leases)
                    .map_err(ApplyError::Kv)?;
                Ok(Outcome::Put)
            }
            Command::Delete { key, fence } => {
                self.check_fence(fence.as_ref())?;
                let delete = DeleteRangeRequest {
                    key: key.into_bytes(),
                    ..DeleteRangeRequest::default()
                };
                let deleted = self.keys.delete_range(&delete).map_err(ApplyError::Kv)?;
                Ok(Outcome::Delete {
                    existed: deleted.deleted > 0,
                })
            }
            Command::Kv { op, fence } => {
                self.check_fence(fence.as_ref())?;
                let result = match op {
                    KvWrite::Put(put) => self.keys.put(&put, &self.key_leases).map(KvResult::Put),
                    KvWrite::DeleteRange(delete) => {
                        self.keys.delete_range(&delete).map(KvResult::DeleteRange)
                    }
                    KvWrite::Txn(txn) => self.keys.txn(&txn, &self.key_leases).map(KvResult::Txn),
                };
                result.map(Outcome::Kv).map_err(ApplyError::Kv)
            }
            Command::Compact { revision } => {
                self.keys.compact(revision).map_err(ApplyError::Kv)?;
                Ok(Outcome::Compacted)
            }
            Command::LeaseGrant { id, ttl } => {
                let (id, ttl) = self.key_leases.grant(index, id, ttl)?;
                Ok(Outcome::LeaseGranted { id, ttl })
            }
            Command::LeaseRevoke { id } => {
                self.key_leases.revoke(id)?;
                let deleted = self.keys.delete_lease_keys(id);
                Ok(Outcome::LeaseRevoked {
                    deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
                })
            }
            Command::Acquire {
                name,
                holder,
                ttl_ms,
            } => match self.locks.get_mut(&name) {
                None => {
                    self.locks.insert(
                        name,
                        LockInfo {
                            holder,
                            token: index,
                            ttl_ms,
                        },
                    );
                    Ok(Outcome::Acquired {
                        token: index,
                        ttl_ms,
                    })
                }
                // The same holder asking again renews its lease and keeps its token.
                Some(l) if l.holder == holder => {
                    l.ttl_ms = ttl_ms;
                    Ok(Outcome::Acquired {
                        token: l.token,
                        ttl_ms,
                    })
                }
                Some(l) => Err(ApplyError::LockHeld {
                    name,
                    holder: l.holder.clone(),
                    token: l.token,
                }),
            },
            Command::KeepAlive { name, token } => match self.locks.get(&name) {
                Some(l) if l.token == token => Ok(Outcome::KeptAlive { ttl_ms: l.ttl_ms }),
                other => Err(ApplyError::StaleToken {
                    current: other.map(|l| l.token),
                    name,
                    token,
                }),
            },
            Command::Release { name, token } => match self.locks.get(&name) {
                Some(l) if l.token == token => {
                    self.locks.remove(&name);
                    Ok(Outcome::Released)
                }
                other => Err(ApplyError::StaleToken {
                    current: other.map(|l| l.token),
                    name,
                    token,
                }),
            },
            Command::Expire { name, token } => {
                let current = self.locks.get(&name).is_some_and(|l| l.token == token);
                if current {
                    self.locks.remove(&name);
                }
                Ok(Outcome::Expired { expired: current })
            }
        }
    }

    /// A fenced write applies only if its token is the current valid token of its lock.
    fn check_fence(&self, fence: Option<&Fence>) -> Result<(), ApplyError> {
        let Some(f) = fence else { return Ok(()) };
        let current = self.locks.get(&f.lock).map(|l| l.token);
        if current == Some(f.token) {
            Ok(())
        } else {
            Err(ApplyError::StaleFence {
                lock: f.lock.clone(),
                token: f.token,
                current,
            })
        }
    }

    /// The lock `name` if it is held (its lease has not been expired or released).
    pub fn lock(&self, name: &str) -> Option<&LockInfo> {
        self.locks.get(name)
    }

    /// The leases on keys (etcd's): ids and granted TTLs; their keys are in
    /// [`key_space`](Self::key_space)'s [`lease_keys`](KeySpace::lease_keys).
    pub fn key_leases(&self) -> &KeyLeases {
        &self.key_leases
    }

    /// Every held lock, in name order (a new leader restarts each lease with its full TTL).
    pub fn locks(&self) -> impl Iterator<Item = (&str, &LockInfo)> {
        self.locks.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests;
