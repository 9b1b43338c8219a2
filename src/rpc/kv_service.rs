//! `kvstore.v1.KV`: client reads and writes. Validates, builds a `Proposal`, hands it to the
//! driver and maps the answer; every answer carries a `ResponseHeader`.

use crate::config::MAX_REQUEST_BYTES;
use crate::node::{ClientError, Header, NodeHandle};
use crate::pb;
use crate::state_machine::{Command, Fence, Outcome, Proposal, Session};
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
}

impl KvService {
    /// A service backed by `node`.
    pub fn new(node: NodeHandle) -> Self {
        KvService { node }
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
        Ok(self.node.propose(proposal.encode()).await?)
    }
}

/// The wire header of an answer.
pub fn header(h: Header) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        node_id: h.node_id,
        term: h.term,
        index: h.index,
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
        let command = Command::Put {
            key: req.key,
            value: req.value,
            fence: fence_from_pb(req.fence)?,
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
        let (value, h) = self.node.read(req.key, linearizable).await?;
        Ok(Response::new(pb::GetResponse {
            header: header(h),
            found: value.is_some(),
            value: value.unwrap_or_default(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
