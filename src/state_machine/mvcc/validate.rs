//! The checks etcd's gRPC layer runs before proposing a request (v3rpc/key.go), and
//! `prefix_end`.

use super::types::{
    DeleteRangeRequest, MvccError, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::BTreeSet;

/// The range end that makes `[prefix, end)` hold exactly the keys starting with `prefix`
/// (etcd's `clientv3.GetPrefixRangeEnd`): the last byte below 0xff incremented, the 0xff
/// bytes after it dropped. A prefix of only 0xff bytes (or none) gives `[0]`, "to the end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// etcd's checkRangeRequest: the key must not be empty.
///
/// # Errors
/// [`MvccError::EmptyKey`].
pub fn validate_range(req: &RangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's checkPutRequest: a key, and no value (lease) when told to keep the current one.
///
/// # Errors
/// [`MvccError::EmptyKey`], [`MvccError::ValueProvided`], [`MvccError::LeaseProvided`].
pub fn validate_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's checkDeleteRequest: the key must not be empty.
///
/// # Errors
/// [`MvccError::EmptyKey`].
pub fn validate_delete_range(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's checks of a txn before it is proposed (v3rpc/key.go `checkTxnRequest` then
/// `checkIntervals` on each branch):
/// - the compare list and each branch hold at most `max_ops` entries; a nested txn gets the
///   budget `max_ops` minus its parent's largest list (etcd's rule);
/// - no compare, range, put or delete has an empty key, and every put passes
///   [`validate_put`];
/// - within one branch, taking nested txns into account, no key is put twice and no put
///   falls in a deleted range. The two branches of one nested txn may put the same key
///   (only one of them runs); deletes may overlap each other.
///
/// # Errors
/// [`MvccError::TooManyOps`], [`MvccError::EmptyKey`], [`MvccError::ValueProvided`],
/// [`MvccError::LeaseProvided`], [`MvccError::DuplicateKey`].
pub fn validate_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    check_txn(req, max_ops, max_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn(req: &TxnRequest, budget: usize, max_ops: usize) -> Result<(), MvccError> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > budget {
        return Err(MvccError::TooManyOps { max: max_ops });
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => validate_range(r)?,
            RequestOp::Put(p) => validate_put(p)?,
            RequestOp::DeleteRange(d) => validate_delete_range(d)?,
            RequestOp::Txn(t) => check_txn(t, budget - opc, max_ops)?,
        }
    }
    Ok(())
}

/// A deleted interval: `[begin, end)`, `end` `None` meaning "to the end of the key space".
struct Deleted {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn new(req: &DeleteRangeRequest) -> Self {
        let end = match req.range_end.as_slice() {
            [] => {
                // A single key: [key, key + "\0").
                let mut end = req.key.clone();
                end.push(0);
                Some(end)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Deleted {
            begin: req.key.clone(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.begin.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// etcd's checkIntervals over one list of ops: returns the keys it puts and the intervals
/// it deletes, nested txns included.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<&[u8]>, Vec<Deleted>), MvccError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Deleted::new(d)),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    let deleted = |dels: &[Deleted], key: &[u8]| dels.iter().any(|d| d.contains(key));
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for &k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        for &k in &puts_else {
            // Then and else exclude each other: the same key in both is fine.
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        let k = p.key.as_slice();
        if puts.contains(k) || deleted(&dels, k) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}
