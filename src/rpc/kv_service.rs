//! `kvstore.v1.KV`: client reads and writes. Validates, builds a `Proposal`, hands it to the
//! driver and maps the answer; every answer carries a `ResponseHeader`.

use crate::config::MAX_REQUEST_BYTES;
use crate::node::{ClientError, Header, NodeHandle};
use crate::pb;
use crate::state_machine::mvcc;
use crate::state_machine::{
    ApplyError, Command, Fence, KvResult, KvWrite, Outcome, Proposal, Session,
};
use tonic::{Request, Response, Status};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1_048_576;
/// An upper bound of the largest command a client can have proposed, encoded as a log
/// entry's payload: a `kvstore.v1` Put with the longest key, the largest value, a fence
/// naming the longest lock, and a session (`rpc::peer`'s tests encode it), or any request
/// the etcd front end let through (at most `--max-request-bytes` encoded). Every
/// message-size limit is derived from it.
pub const MAX_COMMAND_BYTES: usize = {
    let v1_put = MAX_VALUE_BYTES + 2 * MAX_KEY_BYTES + 64;
    if v1_put > MAX_REQUEST_BYTES {
        v1_put
    } else {
        MAX_REQUEST_BYTES
    }
};
/// The gRPC decode and encode limit of the client services (KV, Lock, Cluster) and of the
/// Rust client: the largest legal request or answer is below [`MAX_COMMAND_BYTES`] plus its
/// protobuf framing; the room above it lets a request just over a field's limit reach
/// validation, which refuses it with INVALID_ARGUMENT naming the field, instead of the
/// decoder refusing it with OUT_OF_RANGE.
pub const CLIENT_MESSAGE_LIMIT: usize = MAX_COMMAND_BYTES + (256 << 10);

/// The KV service of one node.
#[derive(Clone, Debug)]
pub struct KvService {
    node: NodeHandle,
    /// `--max-txn-ops`.
    max_txn_ops: usize,
}

impl KvService {
    /// A service backed by `node`.
    pub fn new(node: NodeHandle, max_txn_ops: usize) -> Self {
        KvService { node, max_txn_ops }
    }

    async fn write(
        &self,
        command: Command,
        session: Option<pb::Session>,
    ) -> Result<(Outcome, Header), Status> {
        let proposal = Proposal {
            session: session_from_pb(session)?,
            command,
        };
        let data = proposal.encode();
        if data.len() > MAX_COMMAND_BYTES {
            return Err(ClientError::Invalid(format!(
                "the request is {} bytes once encoded, above the limit of {MAX_COMMAND_BYTES}; split it",
                data.len()
            ))
            .into());
        }
        Ok(self.node.propose(data).await?)
    }
}

/// The wire header of an answer.
pub fn header(h: Header) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        node_id: h.node_id,
        term: h.term,
        index: h.index,
        revision: h.revision,
    })
}

/// The request's session, if it has one.
///
/// # Errors
/// INVALID_ARGUMENT when `client_id` or `sequence` is 0: a session needs both (a write
/// without a session is sent without the `session` field).
pub(super) fn session_from_pb(s: Option<pb::Session>) -> Result<Option<Session>, ClientError> {
    let Some(s) = s else { return Ok(None) };
    if s.client_id == 0 || s.sequence == 0 {
        return Err(ClientError::Invalid(format!(
            "session client_id and sequence must both be non-zero (got client_id {}, sequence {}); omit the session to write without one",
            s.client_id, s.sequence
        )));
    }
    Ok(Some(Session {
        client_id: s.client_id,
        sequence: s.sequence,
    }))
}

/// Rejects an empty or oversized key.
fn validate_key(key: &str) -> Result<(), ClientError> {
    validate_name("key", key)
}

/// Rejects an empty `field` or one over [`MAX_KEY_BYTES`].
pub fn validate_name(field: &str, value: &str) -> Result<(), ClientError> {
    if value.is_empty() {
        return Err(ClientError::Invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(ClientError::Invalid(format!(
            "{field} is {} bytes, the limit is {MAX_KEY_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// The fencing token a write carries, if any. A fence that is present must name a lock and a
/// token (tokens start at 1).
fn fence_from_pb(f: Option<pb::Fence>) -> Result<Option<Fence>, ClientError> {
    let Some(f) = f else { return Ok(None) };
    validate_name("fence lock", &f.lock)?;
    if f.token == 0 {
        return Err(ClientError::Invalid(format!(
            "fence token for lock {} must not be 0: use the token Lock/Acquire returned",
            f.lock
        )));
    }
    Ok(Some(Fence {
        lock: f.lock,
        token: f.token,
    }))
}

/// Rejects an oversized value.
fn validate_value(value: &str) -> Result<(), ClientError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ClientError::Invalid(format!(
            "value is {} bytes, the limit is {MAX_VALUE_BYTES} (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

/// Whether a read must be linearizable; unknown enum values are rejected.
fn linearizable(consistency: i32) -> Result<bool, ClientError> {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Unspecified | pb::Consistency::Linearizable) => Ok(true),
        Ok(pb::Consistency::Serializable) => Ok(false),
        Err(_) => Err(ClientError::Invalid(format!(
            "unknown consistency {consistency}: expected LINEARIZABLE (1) or SERIALIZABLE (2)"
        ))),
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        validate_key(&req.key)?;
        validate_value(&req.value)?;
        let fence = fence_from_pb(req.fence)?;
        // A put with a lease goes through the key space's etcd-shaped Put (the plain Put
        // command, kept for the entries already in logs, has no lease).
        let command = if req.lease == 0 {
            Command::Put {
                key: req.key,
                value: req.value,
                fence,
            }
        } else {
            Command::Kv {
                op: KvWrite::Put(mvcc::PutRequest {
                    key: req.key.into_bytes(),
                    value: req.value.into_bytes(),
                    lease: req.lease,
                    ..mvcc::PutRequest::default()
                }),
                fence,
            }
        };
        let (_, h) = self.write(command, req.session).await?;
        Ok(Response::new(pb::PutResponse { header: header(h) }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        validate_key(&req.key)?;
        let linearizable = linearizable(req.consistency)?;
        let (value, h) = self.node.read(req.key.clone(), linearizable).await?;
        let found = value.is_some();
        let value = match value {
            Some(v) => text(v, "value", req.key.as_bytes())?,
            None => String::new(),
        };
        Ok(Response::new(pb::GetResponse {
            header: header(h),
            found,
            value,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        validate_key(&req.key)?;
        let command = Command::Delete {
            key: req.key,
            fence: fence_from_pb(req.fence)?,
        };
        let (outcome, h) = self.write(command, req.session).await?;
        Ok(Response::new(pb::DeleteResponse {
            header: header(h),
            deleted: matches!(outcome, Outcome::Delete { existed: true }),
        }))
    }

    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        let linearizable = linearizable(req.consistency)?;
        let range = range_from_pb(req)?;
        let (answer, h) = self.node.range(range, linearizable).await?;
        let answer = answer.map_err(ClientError::Apply)?;
        Ok(Response::new(range_to_pb(answer, Some(h))?))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let mut req = request.into_inner();
        let fence = fence_from_pb(req.fence.take())?;
        let session = req.session.take();
        let txn = txn_from_pb(req)?;
        mvcc::validate_txn(&txn, self.max_txn_ops)
            .map_err(|e| ClientError::Apply(ApplyError::Kv(e)))?;
        let command = Command::Kv {
            op: KvWrite::Txn(txn),
            fence,
        };
        match self.write(command, session).await? {
            (Outcome::Kv(KvResult::Txn(r)), h) => Ok(Response::new(txn_to_pb(r, Some(h))?)),
            (other, _) => Err(Status::internal(format!(
                "the log applied an unexpected outcome: {other:?}"
            ))),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let req = request.into_inner();
        let command = Command::Compact {
            revision: req.revision,
        };
        let (_, h) = self.write(command, req.session).await?;
        Ok(Response::new(pb::CompactResponse { header: header(h) }))
    }
}

/// Bytes from the key space as text, or FAILED_PRECONDITION: `kvstore.v1` carries UTF-8
/// strings, and a key or value written through the etcd API may be any bytes.
fn text(bytes: Vec<u8>, what: &str, key: &[u8]) -> Result<String, ClientError> {
    String::from_utf8(bytes).map_err(|_| {
        ClientError::NotText(format!(
            "the {what} of key {:?} is not UTF-8 text, which kvstore.v1 cannot carry; read it through the etcd API",
            String::from_utf8_lossy(key)
        ))
    })
}

/// A key selector as the key space's `[key, range_end)`.
pub(super) fn keys_from_pb(k: Option<pb::KeySelector>) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    let k = k.unwrap_or_default();
    let given = [!k.range_end.is_empty(), k.prefix, k.from_key];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ClientError::Invalid(
            "give at most one of range_end, prefix and from_key".to_string(),
        ));
    }
    if k.key.len() > MAX_KEY_BYTES || k.range_end.len() > MAX_KEY_BYTES {
        return Err(ClientError::Invalid(format!(
            "key and range_end must be at most {MAX_KEY_BYTES} bytes"
        )));
    }
    let key = k.key.into_bytes();
    if k.prefix || k.from_key {
        // An empty key with either means every key, as etcdctl's `--prefix ""`.
        let all = key.is_empty();
        let start = if all { vec![0] } else { key };
        let end = if all || k.from_key {
            vec![0]
        } else {
            mvcc::prefix_end(&start)
        };
        return Ok((start, end));
    }
    if key.is_empty() {
        return Err(ClientError::Invalid("key must not be empty".to_string()));
    }
    Ok((key, k.range_end.into_bytes()))
}

fn range_from_pb(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, ClientError> {
    let (key, range_end) = keys_from_pb(r.keys)?;
    let sort_order = mvcc::SortOrder::from_code(r.sort_order)
        .ok_or_else(|| bad_enum("sort_order", r.sort_order))?;
    let sort_target = mvcc::SortTarget::from_code(r.sort_target)
        .ok_or_else(|| bad_enum("sort_target", r.sort_target))?;
    Ok(mvcc::RangeRequest {
        key,
        range_end,
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

fn bad_enum(field: &str, value: i32) -> ClientError {
    ClientError::Invalid(format!("{field} {value} is not a defined value"))
}

fn txn_from_pb(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, ClientError> {
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

fn compare_from_pb(c: pb::Compare) -> Result<mvcc::Compare, ClientError> {
    use pb::compare::{Against, Result as Cmp, Target};
    let (key, range_end) = keys_from_pb(c.keys)?;
    let result = match Cmp::try_from(c.result) {
        Ok(Cmp::Equal) => mvcc::CompareResult::Equal,
        Ok(Cmp::NotEqual) => mvcc::CompareResult::NotEqual,
        Ok(Cmp::Greater) => mvcc::CompareResult::Greater,
        Ok(Cmp::Less) => mvcc::CompareResult::Less,
        Ok(Cmp::Unspecified) | Err(_) => {
            return Err(ClientError::Invalid(format!(
                "compare result {} must be EQUAL, NOT_EQUAL, GREATER or LESS",
                c.result
            )))
        }
    };
    let number = match &c.against {
        Some(Against::Number(n)) => Some(*n),
        _ => None,
    };
    let need_number = |what: &str| {
        number.ok_or_else(|| ClientError::Invalid(format!("a {what} compare needs `number`")))
    };
    let target = match Target::try_from(c.target) {
        Ok(Target::Value) => match c.against {
            Some(Against::Value(v)) => mvcc::CompareTarget::Value(v.into_bytes()),
            _ => {
                return Err(ClientError::Invalid(
                    "a VALUE compare needs `value`".to_string(),
                ))
            }
        },
        Ok(Target::Version) => mvcc::CompareTarget::Version(need_number("VERSION")?),
        Ok(Target::Create) => mvcc::CompareTarget::Create(need_number("CREATE")?),
        Ok(Target::Mod) => mvcc::CompareTarget::Mod(need_number("MOD")?),
        Ok(Target::Lease) => mvcc::CompareTarget::Lease(need_number("LEASE")?),
        Ok(Target::Unspecified) | Err(_) => {
            return Err(ClientError::Invalid(format!(
                "compare target {} must be VALUE, VERSION, CREATE, MOD or LEASE",
                c.target
            )))
        }
    };
    Ok(mvcc::Compare {
        result,
        target,
        key,
        range_end,
    })
}

fn op_from_pb(op: pb::TxnOp) -> Result<mvcc::RequestOp, ClientError> {
    use pb::txn_op::Op;
    Ok(match op.op {
        Some(Op::Range(r)) => mvcc::RequestOp::Range(range_from_pb(r)?),
        Some(Op::Put(p)) => {
            validate_key(&p.key)?;
            validate_value(&p.value)?;
            mvcc::RequestOp::Put(mvcc::PutRequest {
                key: p.key.into_bytes(),
                value: p.value.into_bytes(),
                prev_kv: p.prev_kv,
                lease: p.lease,
                ..mvcc::PutRequest::default()
            })
        }
        Some(Op::Delete(d)) => {
            let (key, range_end) = keys_from_pb(d.keys)?;
            mvcc::RequestOp::DeleteRange(mvcc::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: d.prev_kv,
            })
        }
        Some(Op::Txn(t)) => {
            if t.session.is_some() || t.fence.is_some() {
                return Err(ClientError::Invalid(
                    "a nested Txn takes no session or fence: give them on the outermost one"
                        .to_string(),
                ));
            }
            mvcc::RequestOp::Txn(txn_from_pb(t)?)
        }
        None => return Err(ClientError::Invalid("a Txn op carries no op".to_string())),
    })
}

fn kv_to_pb(kv: mvcc::KeyValue) -> Result<pb::KeyValue, ClientError> {
    let value = text(kv.value, "value", &kv.key)?;
    let key = text(kv.key, "key", b"")?;
    Ok(pb::KeyValue {
        key,
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    })
}

fn kvs_to_pb(kvs: Vec<mvcc::KeyValue>) -> Result<Vec<pb::KeyValue>, ClientError> {
    kvs.into_iter().map(kv_to_pb).collect()
}

fn range_to_pb(
    r: mvcc::RangeResponse,
    h: Option<Header>,
) -> Result<pb::RangeResponse, ClientError> {
    Ok(pb::RangeResponse {
        header: h.and_then(header),
        kvs: kvs_to_pb(r.kvs)?,
        more: r.more,
        count: r.count,
    })
}

fn txn_to_pb(r: mvcc::TxnResponse, h: Option<Header>) -> Result<pb::TxnResponse, ClientError> {
    use pb::txn_op_result::Result as R;
    let results = r
        .responses
        .into_iter()
        .map(|op| {
            Ok(pb::TxnOpResult {
                result: Some(match op {
                    mvcc::ResponseOp::Range(r) => R::Range(range_to_pb(r, None)?),
                    mvcc::ResponseOp::Put(p) => R::Put(pb::TxnPutResult {
                        prev_kv: p.prev_kv.map(kv_to_pb).transpose()?,
                    }),
                    mvcc::ResponseOp::DeleteRange(d) => R::Delete(pb::TxnDeleteResult {
                        deleted: d.deleted,
                        prev_kvs: kvs_to_pb(d.prev_kvs)?,
                    }),
                    mvcc::ResponseOp::Txn(t) => R::Txn(txn_to_pb(t, None)?),
                }),
            })
        })
        .collect::<Result<_, ClientError>>()?;
    Ok(pb::TxnResponse {
        header: h.and_then(header),
        succeeded: r.succeeded,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_sort_enums_are_numbered_as_etcds() {
        use pb::range_request::{SortOrder as O, SortTarget as T};
        for (code, want) in [
            (O::Unspecified, mvcc::SortOrder::None),
            (O::Ascend, mvcc::SortOrder::Ascend),
            (O::Descend, mvcc::SortOrder::Descend),
        ] {
            assert_eq!(mvcc::SortOrder::from_code(code as i32), Some(want));
        }
        for (code, want) in [
            (T::Unspecified, mvcc::SortTarget::Key),
            (T::Version, mvcc::SortTarget::Version),
            (T::Create, mvcc::SortTarget::Create),
            (T::Mod, mvcc::SortTarget::Mod),
            (T::Value, mvcc::SortTarget::Value),
        ] {
            assert_eq!(mvcc::SortTarget::from_code(code as i32), Some(want));
        }
        assert_eq!(mvcc::SortTarget::from_code(5), None);
    }

    #[test]
    fn key_and_value_limits() {
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let e = validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(e.to_string(), "key is 4097 bytes, the limit is 4096");
        assert!(validate_value("").is_ok());
        assert!(validate_value(&"v".repeat(MAX_VALUE_BYTES)).is_ok());
        let e = validate_value(&"v".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn fences_must_name_a_lock_and_a_token() {
        assert_eq!(fence_from_pb(None), Ok(None));
        let f = |lock: &str, token| {
            Some(pb::Fence {
                lock: lock.into(),
                token,
            })
        };
        assert_eq!(
            fence_from_pb(f("L", 7)),
            Ok(Some(Fence {
                lock: "L".into(),
                token: 7
            }))
        );
        let e = fence_from_pb(f("", 7)).unwrap_err();
        assert_eq!(e.to_string(), "fence lock must not be empty");
        let e = fence_from_pb(f("L", 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fence token for lock L must not be 0: use the token Lock/Acquire returned"
        );
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn consistency_mapping() {
        assert_eq!(linearizable(0), Ok(true));
        assert_eq!(linearizable(1), Ok(true));
        assert_eq!(linearizable(2), Ok(false));
        assert!(matches!(linearizable(7), Err(ClientError::Invalid(_))));
    }

    #[test]
    fn zero_session_fields_are_invalid() {
        assert_eq!(session_from_pb(None), Ok(None));
        let s = |client_id, sequence| {
            Some(pb::Session {
                client_id,
                sequence,
            })
        };
        for (client_id, sequence) in [(0, 3), (5, 0), (0, 0)] {
            let err = session_from_pb(s(client_id, sequence)).unwrap_err();
            assert!(matches!(err, ClientError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains("must both be non-zero"), "{err}");
            assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(
            session_from_pb(s(5, 3)),
            Ok(Some(Session {
                client_id: 5,
                sequence: 3
            }))
        );
    }
}
