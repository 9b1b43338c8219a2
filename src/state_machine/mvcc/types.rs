//! The request, response and error types of the key space (etcd's `etcdserverpb` and
//! `mvccpb` messages without the protobuf).

use serde::{Deserialize, Serialize};

/// A store revision: a logical clock incremented by every change.
pub type Revision = i64;

/// One key's state at some revision (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// The revision of the last put of the key.
    pub mod_revision: i64,
    /// 1 at creation, +1 per put; a delete ends the generation.
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// The lease attached to the key (0: none).
    pub lease: i64,
}

/// The order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (or ascending when the target is not the key).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// What a range sorts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value (bytewise).
    Value,
}

impl SortOrder {
    /// The order numbered `code` as etcd's `RangeRequest.SortOrder` (and `kvstore.v1`'s,
    /// which numbers them the same): 0 none, 1 ascend, 2 descend.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => return None,
        })
    }
}

impl SortTarget {
    /// The target numbered `code` as etcd's `RangeRequest.SortTarget` (and `kvstore.v1`'s):
    /// 0 key, 1 version, 2 create, 3 mod, 4 value.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => return None,
        })
    }
}

/// A read of `[key, range_end)` (etcd's `RangeRequest`).
///
/// `range_end` empty: the single key; `[0]`: every key from `key` on; `key = [0]` with
/// `range_end = [0]`: every key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the interval (exclusive); see the type's doc.
    pub range_end: Vec<u8>,
    /// At most this many kvs (0: no limit).
    pub limit: i64,
    /// Read at this revision (0 or less: the current one).
    pub revision: i64,
    /// Order of the result.
    pub sort_order: SortOrder,
    /// What the order applies to.
    pub sort_target: SortTarget,
    /// Leave the values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop kvs whose mod revision is below this (0: no bound).
    pub min_mod_revision: i64,
    /// Drop kvs whose mod revision is above this (0: no bound).
    pub max_mod_revision: i64,
    /// Drop kvs whose create revision is below this (0: no bound).
    pub min_create_revision: i64,
    /// Drop kvs whose create revision is above this (0: no bound).
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// Every key, at the current revision (etcd's `key = range_end = "\0"`).
    pub fn every_key() -> Self {
        RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..RangeRequest::default()
        }
    }
}

/// The result of a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The kvs (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut kvs off.
    pub more: bool,
    /// How many keys the interval holds at the revision read (before limit and filters).
    pub count: i64,
}

/// A write of one key (etcd's `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key (not empty).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The lease to attach (0: none).
    pub lease: i64,
    /// Return the previous kv.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// The result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The kv before the put, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of `[key, range_end)`, same interval conventions as [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key (not empty).
    pub key: Vec<u8>,
    /// End of the interval.
    pub range_end: Vec<u8>,
    /// Return the deleted kvs.
    pub prev_kv: bool,
}

/// The result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted kvs, in key order, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the key's field to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// field == target
    Equal,
    /// field > target
    Greater,
    /// field < target
    Less,
    /// field != target
    NotEqual,
}

/// The field a compare reads, with the target value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value (bytewise).
    Value(Vec<u8>),
    /// The lease.
    Lease(i64),
}

/// One condition of a txn, over `[key, range_end)` (every key in it must satisfy it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and target.
    pub target: CompareTarget,
    /// First key.
    pub key: Vec<u8>,
    /// End of the interval, same conventions as [`RangeRequest`].
    pub range_end: Vec<u8>,
}

/// One operation of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The result of one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// A read's result.
    Range(RangeResponse),
    /// A put's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A nested txn's result.
    Txn(TxnResponse),
}

/// An atomic if/then/else (etcd's `TxnRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions; all must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The result of a txn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held (`success` ran).
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
    /// For each response, the store revision as the txn saw it right after that op (the
    /// revision before the txn until its first write, the txn's own after it): the header
    /// revision etcd gives each op's answer.
    pub revisions: Vec<i64>,
}

/// The kind of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete.
    Delete,
}

/// One change of one key (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// A put's new kv; a delete's kv has only the key and `mod_revision` (the delete's
    /// revision), the other fields 0, as etcd sends it.
    pub kv: KeyValue,
    /// The key's kv just before the change's revision, when asked for and known (absent for
    /// a creation, and for changes at the compaction revision, whose past is gone).
    pub prev_kv: Option<KeyValue>,
}

/// A refused operation. The text is etcd's, without its "etcdserver: " prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MvccError {
    /// A read or compaction below the compaction revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The store's compaction revision.
        compact_revision: i64,
    },
    /// A read or compaction above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A txn writes one key twice (or puts a key it also deletes).
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A txn branch (or compare list) is longer than the limit.
    #[error("too many operations in txn request")]
    TooManyOps {
        /// The limit (`--max-txn-ops`).
        max: usize,
    },
    /// A put names a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound(i64),
    /// A request without a key.
    #[error("key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` and a value.
    #[error("value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` and a lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// A put with `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
}
