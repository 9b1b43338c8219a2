//! etcd's wire messages to and from the key space's requests and responses
//! (`state_machine::mvcc`): the same fields, names and meaning, so the conversion is a copy.
//! An enum value etcd does not define is refused with INVALID_ARGUMENT naming the field.

use crate::pb::etcd::etcdserverpb as pb;
use crate::pb::etcd::mvccpb;
use crate::state_machine::mvcc;
use tonic::Status;

/// A Range from the wire.
///
/// # Errors
/// INVALID_ARGUMENT for a sort order or target etcd does not define.
pub fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    let sort_order = mvcc::SortOrder::from_code(r.sort_order)
        .ok_or_else(|| bad_enum("sort_order", r.sort_order))?;
    let sort_target = mvcc::SortTarget::from_code(r.sort_target)
        .ok_or_else(|| bad_enum("sort_target", r.sort_target))?;
    Ok(mvcc::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// A Put from the wire.
pub fn put_request(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// A DeleteRange from the wire.
pub fn delete_request(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

/// A Txn from the wire (nested Txns included).
///
/// # Errors
/// INVALID_ARGUMENT for an op with no request, or an enum value etcd does not define.
pub fn txn_request(r: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: ops(r.success)?,
        failure: ops(r.failure)?,
    })
}

fn ops(ops: Vec<pb::RequestOp>) -> Result<Vec<mvcc::RequestOp>, Status> {
    ops.into_iter().map(request_op).collect()
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => mvcc::RequestOp::Range(range_request(r)?),
        Some(Request::RequestPut(r)) => mvcc::RequestOp::Put(put_request(r)),
        Some(Request::RequestDeleteRange(r)) => mvcc::RequestOp::DeleteRange(delete_request(r)),
        Some(Request::RequestTxn(r)) => mvcc::RequestOp::Txn(txn_request(r)?),
        None => {
            return Err(Status::invalid_argument(
                "a Txn op carries no request (set one of request_range, request_put, request_delete_range, request_txn)",
            ))
        }
    })
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => return Err(bad_enum("compare result", c.result)),
    };
    // As etcd: the target says which field is compared; the union's value counts only when
    // it is that field (otherwise the field's zero value).
    let union = c.target_union;
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => mvcc::CompareTarget::Version(match union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => mvcc::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => mvcc::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => mvcc::CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(CompareTarget::Lease) => mvcc::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => return Err(bad_enum("compare target", c.target)),
    };
    Ok(mvcc::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn bad_enum(field: &str, value: i32) -> Status {
    Status::invalid_argument(format!("{field} {value} is not one etcd defines"))
}

/// A key-value to the wire.
pub fn key_value(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A Range's answer to the wire.
pub fn range_response(r: mvcc::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A Put's answer to the wire.
pub fn put_response(r: mvcc::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

/// A DeleteRange's answer to the wire.
pub fn delete_response(
    r: mvcc::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A Txn's answer to the wire. As etcd's, each nested answer's header carries only the
/// revision the txn was at right after that op.
pub fn txn_response(r: mvcc::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .zip(r.revisions)
        .map(|(op, revision)| {
            (
                op,
                pb::ResponseHeader {
                    revision,
                    ..pb::ResponseHeader::default()
                },
            )
        })
        .map(|(op, nested)| pb::ResponseOp {
            response: Some(match op {
                mvcc::ResponseOp::Range(r) => Response::ResponseRange(range_response(r, nested)),
                mvcc::ResponseOp::Put(r) => Response::ResponsePut(put_response(r, nested)),
                mvcc::ResponseOp::DeleteRange(r) => {
                    Response::ResponseDeleteRange(delete_response(r, nested))
                }
                mvcc::ResponseOp::Txn(r) => Response::ResponseTxn(txn_response(r, nested)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_reads_the_union_only_for_its_own_target() {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let c = pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            target_union: Some(TargetUnion::ModRevision(7)),
            range_end: Vec::new(),
        };
        assert_eq!(
            compare(c.clone()).unwrap().target,
            mvcc::CompareTarget::Mod(7)
        );
        let other = pb::Compare {
            target_union: Some(TargetUnion::Version(7)),
            ..c
        };
        assert_eq!(compare(other).unwrap().target, mvcc::CompareTarget::Mod(0));
    }

    #[test]
    fn undefined_enum_values_are_refused_naming_the_field() {
        let r = pb::RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        let e = range_request(r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("sort_order 9"), "{}", e.message());
        let empty_op = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert!(txn_request(empty_op).is_err());
    }
}
