//! PLACEHOLDER (replaced by the h-mvcc branch at merge): the types of the API only.
#![allow(missing_docs, unused_variables, clippy::todo)]
use serde::{Deserialize, Serialize};
pub type Revision = i64;
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("too many operations in txn request")]
    TooManyOps { max: usize },
    #[error("requested lease not found")]
    LeaseNotFound(i64),
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
}
pub trait LeaseLookup {
    fn exists(&self, lease: i64) -> bool;
}
pub struct NoLeases;
impl LeaseLookup for NoLeases {
    fn exists(&self, lease: i64) -> bool {
        lease == 0
    }
}
#[derive(Debug, Default)]
pub struct KeySpace;
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeySpaceSnapshot;
impl KeySpace {
    pub fn new() -> Self {
        todo!()
    }
    pub fn revision(&self) -> i64 {
        todo!()
    }
    pub fn compact_revision(&self) -> i64 {
        todo!()
    }
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        todo!()
    }
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        todo!()
    }
    pub fn put(
        &mut self,
        req: &PutRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<PutResponse, MvccError> {
        todo!()
    }
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        todo!()
    }
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        leases: &dyn LeaseLookup,
    ) -> Result<TxnResponse, MvccError> {
        todo!()
    }
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    pub fn snapshot(&self) -> KeySpaceSnapshot {
        todo!()
    }
    pub fn restore(snap: KeySpaceSnapshot) -> Result<Self, String> {
        todo!()
    }
}
pub fn validate_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    todo!()
}
pub fn validate_put(req: &PutRequest) -> Result<(), MvccError> {
    todo!()
}
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    todo!()
}
