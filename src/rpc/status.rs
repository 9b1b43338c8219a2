//! The one place a [`ClientError`] becomes a `tonic::Status`.
//!
//! A NOT-leader redirect names the leader's advertised client address when the handler runs
//! in a [`ClientUrls`](super::client_urls::ClientUrls) scope (the client services do), else
//! the address the driver found in the config.

use super::client_urls;
use crate::node::ClientError;
use crate::state_machine::mvcc::MvccError;
use crate::state_machine::ApplyError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key naming the leader's id on a NOT-leader redirect.
pub const LEADER_ID_KEY: &str = "leader-id";
/// Metadata key naming the leader's client address (`HOST:PORT`, as the leader advertises
/// it) on a NOT-leader redirect.
pub const LEADER_ADDR_KEY: &str = "leader-addr";
/// Metadata key set to [`SESSION_EXPIRED`] on the FAILED_PRECONDITION answering a write
/// from an expired session, so clients can tell it from other refusals without parsing the
/// message (the Rust client turns it into an "unknown outcome" error).
pub const ERROR_KIND_KEY: &str = "kvstore-error";
/// The [`ERROR_KIND_KEY`] value of an expired session.
pub const SESSION_EXPIRED: &str = "session-expired";
/// The [`ERROR_KIND_KEY`] value of a peer call refused because the caller was removed from
/// the cluster.
pub const MEMBER_REMOVED: &str = "member-removed";
/// etcd's words for a removed member's call (its rafthttp answers HTTP 410 with them).
pub const MEMBER_REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// The answer to a peer call from a member that was removed: FAILED_PRECONDITION with
/// etcd's words, tagged [`MEMBER_REMOVED`] so the caller can tell it from other refusals.
pub fn member_removed() -> Status {
    let mut status = Status::failed_precondition(MEMBER_REMOVED_MESSAGE);
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(MEMBER_REMOVED));
    status
}

/// Whether `status` is [`member_removed`]'s answer.
pub fn is_member_removed(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .metadata()
            .get(ERROR_KIND_KEY)
            .is_some_and(|v| v == MEMBER_REMOVED)
}

impl From<ClientError> for Status {
    fn from(err: ClientError) -> Status {
        let message = err.to_string();
        match err {
            ClientError::NotLeader { id, addr } => {
                not_leader(id, client_urls::advertised_address_of(id).unwrap_or(addr))
            }
            ClientError::NoLeader
            | ClientError::LeadershipLost
            | ClientError::ShuttingDown
            | ClientError::StorageFailed(_)
            | ClientError::Overloaded
            | ClientError::NotResponding
            | ClientError::TransferInProgress => Status::unavailable(message),
            ClientError::TooManyWaiting { .. } => Status::resource_exhausted(message),
            ClientError::TransferTimedOut { .. } => Status::deadline_exceeded(message),
            ClientError::Invalid(_) => Status::invalid_argument(message),
            ClientError::NotText(_) => Status::failed_precondition(message),
            ClientError::Apply(ApplyError::SessionExpired { .. }) => {
                let mut status = Status::failed_precondition(message);
                status
                    .metadata_mut()
                    .insert(ERROR_KIND_KEY, MetadataValue::from_static(SESSION_EXPIRED));
                status
            }
            ClientError::Apply(ApplyError::Kv(e)) => Status::new(mvcc_code(&e), message),
            ClientError::Apply(_) => Status::failed_precondition(message),
            ClientError::Membership(_) => Status::failed_precondition(message),
        }
    }
}

/// The code etcd answers a key-space refusal with (the same in both front ends).
pub(crate) fn mvcc_code(e: &MvccError) -> Code {
    match e {
        MvccError::Compacted { .. } | MvccError::FutureRevision => Code::OutOfRange,
        MvccError::LeaseNotFound(_) => Code::NotFound,
        _ => Code::InvalidArgument,
    }
}

/// The redirect to leader `id` at client address `addr`.
fn not_leader(id: crate::raft::NodeId, addr: String) -> Status {
    let message = ClientError::NotLeader {
        id,
        addr: addr.clone(),
    }
    .to_string();
    let mut status = Status::new(Code::Unavailable, message);
    let md = status.metadata_mut();
    md.insert(LEADER_ID_KEY, MetadataValue::from(id));
    if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
        md.insert(LEADER_ADDR_KEY, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_redirect_metadata() {
        let s = Status::from(ClientError::NotLeader {
            id: 2,
            addr: "127.0.0.1:9002".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "not leader, try node 2 (127.0.0.1:9002)");
        assert_eq!(s.metadata().get(LEADER_ID_KEY).unwrap(), "2");
        assert_eq!(s.metadata().get(LEADER_ADDR_KEY).unwrap(), "127.0.0.1:9002");
    }

    #[tokio::test]
    async fn not_leader_names_the_advertised_address_in_a_client_urls_scope() {
        use crate::rpc::client_urls::{ClientUrls, CLIENT_URL_KEY};
        let mut config = crate::config::NodeConfig::new(1, 9001);
        config.peers = crate::config::parse_peers("9002", 1).unwrap();
        let urls = ClientUrls::new(&config);
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            CLIENT_URL_KEY,
            MetadataValue::from_static("kv-2.example:2379"),
        );
        urls.learn(2, &md);
        let redirect = || {
            Status::from(ClientError::NotLeader {
                id: 2,
                addr: "127.0.0.1:9002".into(),
            })
        };
        let s = urls.within(async { redirect() }).await;
        assert_eq!(s.message(), "not leader, try node 2 (kv-2.example:2379)");
        assert_eq!(
            s.metadata().get(LEADER_ADDR_KEY).unwrap(),
            "kv-2.example:2379"
        );
        assert_eq!(s.metadata().get(LEADER_ID_KEY).unwrap(), "2");
        // Outside a scope: the driver's address.
        assert_eq!(
            redirect().metadata().get(LEADER_ADDR_KEY).unwrap(),
            "127.0.0.1:9002"
        );
    }

    #[test]
    fn maps_every_variant() {
        let cases = [
            (ClientError::NoLeader, Code::Unavailable, "no leader elected yet"),
            (
                ClientError::LeadershipLost,
                Code::Unavailable,
                "leadership lost before the request completed; it may or may not have been applied, retry",
            ),
            (ClientError::ShuttingDown, Code::Unavailable, "node is shutting down"),
            (ClientError::Overloaded, Code::Unavailable, "node overloaded, retry"),
            (
                ClientError::StorageFailed("cannot sync /d/db to disk: No space left".into()),
                Code::Unavailable,
                "node is stopping: storage failed (cannot sync /d/db to disk: No space left); retry on another node",
            ),
            (ClientError::NotResponding, Code::Unavailable, "node not responding, retry"),
            (
                ClientError::TooManyWaiting { limit: 3 },
                Code::ResourceExhausted,
                "too many Acquire requests are waiting on this node (limit 3); retry later or wait on another lock",
            ),
            (
                ClientError::Invalid("key must not be empty".into()),
                Code::InvalidArgument,
                "key must not be empty",
            ),
        ];
        for (err, code, msg) in cases {
            let s = Status::from(err);
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), msg);
            assert!(s.metadata().get(LEADER_ID_KEY).is_none());
        }
        let s = Status::from(ClientError::Apply(ApplyError::Undecodable("x".into())));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "undecodable command: x");
        let lock_errors = [
            (
                ApplyError::LockHeld {
                    name: "L".into(),
                    holder: "h1".into(),
                    token: 4,
                },
                "lock L is held by h1 (token 4)",
            ),
            (
                ApplyError::StaleToken {
                    name: "L".into(),
                    token: 4,
                    current: Some(9),
                },
                "stale token 4 for lock L (current 9)",
            ),
            (
                ApplyError::StaleFence {
                    lock: "L".into(),
                    token: 5,
                    current: Some(9),
                },
                "stale fencing token 5 for lock L (current 9)",
            ),
            (
                ApplyError::LockExpiring {
                    name: "L".into(),
                    token: 4,
                },
                "lock L's lease (token 4) is expiring; acquire again to get a new token",
            ),
        ];
        for (err, msg) in lock_errors {
            let s = Status::from(ClientError::Apply(err));
            assert_eq!(s.code(), Code::FailedPrecondition);
            assert_eq!(s.message(), msg);
            assert!(s.metadata().get(ERROR_KIND_KEY).is_none());
        }
    }

    #[test]
    fn an_expired_session_is_failed_precondition_marked_in_metadata() {
        let s = Status::from(ClientError::Apply(ApplyError::SessionExpired {
            client_id: 7,
            sequence: 1,
        }));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "session expired; the outcome of your earlier attempt is unknown (client 7, sequence 1); start a new session"
        );
        assert_eq!(s.metadata().get(ERROR_KIND_KEY).unwrap(), SESSION_EXPIRED);
        let s = Status::from(ClientError::Apply(ApplyError::SessionMismatch {
            client_id: 7,
            sequence: 2,
        }));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.metadata().get(ERROR_KIND_KEY).is_none());
    }
}
