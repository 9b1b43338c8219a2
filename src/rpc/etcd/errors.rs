//! The errors etcd clients recognise: etcd's gRPC code and exact message for each.
//!
//! etcd's client (clientv3, and etcdctl on top of it) turns a server error back into a typed
//! error by looking up the status MESSAGE in a table of known strings (`rpctypes`), and
//! decides whether to retry from the CODE (UNAVAILABLE is retried, on another endpoint for
//! reads). So the etcd front end answers with exactly these pairs, never with our own
//! wording: "etcdserver: no leader" must be UNAVAILABLE, a compacted revision OUT_OF_RANGE.
//! The strings are the same in etcd 3.4 and 3.5.
//!
//! Errors of our own that etcd has no word for (a fence refused, say) keep our one-line
//! messages with the closest code.

use crate::rpc::member_service;
use std::fmt;
use tonic::{Code, Status};

/// One of etcd's server errors: the gRPC code and the message its clients match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdError {
    code: Code,
    message: &'static str,
}

impl EtcdError {
    const fn new(code: Code, message: &'static str) -> Self {
        EtcdError { code, message }
    }

    /// The gRPC code etcd answers with.
    pub const fn code(self) -> Code {
        self.code
    }

    /// The exact message etcd answers with (clients compare it byte for byte).
    pub const fn message(self) -> &'static str {
        self.message
    }

    /// The status to answer with.
    pub fn status(self) -> Status {
        Status::new(self.code, self.message)
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.status()
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

// ------------------------------------------------------------ requests

/// A Range, Put or DeleteRange with an empty key.
pub const EMPTY_KEY: EtcdError =
    EtcdError::new(Code::InvalidArgument, "etcdserver: key is not provided");
/// A Put with `ignore_value` or `ignore_lease` on a key that does not exist.
pub const KEY_NOT_FOUND: EtcdError =
    EtcdError::new(Code::InvalidArgument, "etcdserver: key not found");
/// A Put with `ignore_value` that also carries a value.
pub const VALUE_PROVIDED: EtcdError =
    EtcdError::new(Code::InvalidArgument, "etcdserver: value is provided");
/// A Put with `ignore_lease` that also carries a lease.
pub const LEASE_PROVIDED: EtcdError =
    EtcdError::new(Code::InvalidArgument, "etcdserver: lease is provided");
/// A Txn with more ops in a branch than `--max-txn-ops` (etcd's default: 128).
pub const TOO_MANY_OPS: EtcdError = EtcdError::new(
    Code::InvalidArgument,
    "etcdserver: too many operations in txn request",
);
/// A Txn whose branch writes one key twice (or deletes a range and writes a key in it).
pub const DUPLICATE_KEY: EtcdError = EtcdError::new(
    Code::InvalidArgument,
    "etcdserver: duplicate key given in txn request",
);
/// A request larger than `--max-request-bytes` (etcd's default: 1.5 MiB).
pub const REQUEST_TOO_LARGE: EtcdError =
    EtcdError::new(Code::InvalidArgument, "etcdserver: request is too large");
/// Too many proposals in flight: the applied index lags too far behind the committed one.
pub const TOO_MANY_REQUESTS: EtcdError =
    EtcdError::new(Code::ResourceExhausted, "etcdserver: too many requests");

// ------------------------------------------------------------ revisions

/// A read (or watch, or compaction) at a revision below the compaction revision.
pub const COMPACTED: EtcdError = EtcdError::new(
    Code::OutOfRange,
    "etcdserver: mvcc: required revision has been compacted",
);
/// A read (or compaction) at a revision above the store's current one.
pub const FUTURE_REV: EtcdError = EtcdError::new(
    Code::OutOfRange,
    "etcdserver: mvcc: required revision is a future revision",
);
/// The space quota is exhausted (etcd raises the NOSPACE alarm).
pub const NO_SPACE: EtcdError = EtcdError::new(
    Code::ResourceExhausted,
    "etcdserver: mvcc: database space exceeded",
);

// ------------------------------------------------------------ leases

/// A request naming a lease that does not exist.
pub const LEASE_NOT_FOUND: EtcdError =
    EtcdError::new(Code::NotFound, "etcdserver: requested lease not found");
/// A LeaseGrant with an ID already in use.
pub const LEASE_EXIST: EtcdError =
    EtcdError::new(Code::FailedPrecondition, "etcdserver: lease already exists");
/// A LeaseGrant with a TTL above etcd's maximum.
pub const LEASE_TTL_TOO_LARGE: EtcdError =
    EtcdError::new(Code::OutOfRange, "etcdserver: too large lease TTL");

// ------------------------------------------------------------ cluster

/// A member ID that is not in the cluster.
pub const MEMBER_NOT_FOUND: EtcdError =
    EtcdError::new(Code::NotFound, "etcdserver: member not found");
/// A MemberAdd of an id the cluster already has.
pub const MEMBER_EXIST: EtcdError =
    EtcdError::new(Code::FailedPrecondition, member_service::MEMBER_EXIST);
/// A MemberAdd or MemberUpdate with a peer URL another member has.
pub const PEER_URL_EXIST: EtcdError =
    EtcdError::new(Code::FailedPrecondition, member_service::PEER_URL_EXIST);
/// A change that would leave too few started voters (etcd's `--strict-reconfig-check`).
pub const MEMBER_NOT_ENOUGH_STARTED: EtcdError =
    EtcdError::new(Code::FailedPrecondition, member_service::NOT_ENOUGH_STARTED);
/// A MemberAdd or MemberUpdate whose peer URLs do not parse.
pub const MEMBER_BAD_URLS: EtcdError =
    EtcdError::new(Code::InvalidArgument, member_service::BAD_URLS);
/// A MemberPromote of a voter.
pub const MEMBER_NOT_LEARNER: EtcdError =
    EtcdError::new(Code::FailedPrecondition, member_service::NOT_LEARNER);
/// A MemberPromote of a learner whose log is too far behind the leader's.
pub const LEARNER_NOT_READY: EtcdError =
    EtcdError::new(Code::FailedPrecondition, member_service::LEARNER_NOT_READY);
/// A MoveLeader to a member that cannot take over (unknown, or the leader itself).
pub const BAD_LEADER_TRANSFEREE: EtcdError = EtcdError::new(
    Code::FailedPrecondition,
    "etcdserver: bad leader transferee",
);
/// No leader is known (during an election): UNAVAILABLE, so clients retry.
pub const NO_LEADER: EtcdError = EtcdError::new(Code::Unavailable, "etcdserver: no leader");
/// A request only the leader may serve reached another member (MoveLeader).
pub const NOT_LEADER: EtcdError =
    EtcdError::new(Code::FailedPrecondition, "etcdserver: not leader");
/// The leader changed while the request waited: its outcome is unknown to this member.
pub const LEADER_CHANGED: EtcdError =
    EtcdError::new(Code::Unavailable, "etcdserver: leader changed");
/// The cluster does not support the request yet (its cluster version is too old).
pub const NOT_CAPABLE: EtcdError = EtcdError::new(Code::Unavailable, "etcdserver: not capable");
/// The member is stopping.
pub const STOPPED: EtcdError = EtcdError::new(Code::Unavailable, "etcdserver: server stopped");
/// The request was not committed in time; its outcome is unknown.
pub const TIMEOUT: EtcdError = EtcdError::new(Code::Unavailable, "etcdserver: request timed out");
/// [`TIMEOUT`], after a leader failure.
pub const TIMEOUT_DUE_TO_LEADER_FAIL: EtcdError = EtcdError::new(
    Code::Unavailable,
    "etcdserver: request timed out, possibly due to previous leader failure",
);
/// [`TIMEOUT`], after the member lost its connection to the leader.
pub const TIMEOUT_DUE_TO_CONNECTION_LOST: EtcdError = EtcdError::new(
    Code::Unavailable,
    "etcdserver: request timed out, possibly due to connection lost",
);
/// The member refuses a change that would leave too few members connected.
pub const UNHEALTHY: EtcdError = EtcdError::new(Code::Unavailable, "etcdserver: unhealthy cluster");
/// Members disagree about the key space (the CORRUPT alarm).
pub const CORRUPT: EtcdError = EtcdError::new(Code::DataLoss, "etcdserver: corrupt cluster");

// ------------------------------------------------------------ auth

/// An Auth call (other than enabling it) while auth is off, as it always is in kvstore.
pub const AUTH_NOT_ENABLED: EtcdError = EtcdError::new(
    Code::FailedPrecondition,
    "etcdserver: authentication is not enabled",
);

/// The answer of a method kvstore does not serve (yet): UNIMPLEMENTED, naming the method as
/// gRPC does (`etcdserverpb.KV/Range`), so the user sees which call is missing. Not an etcd
/// error: etcd serves every method.
pub fn not_implemented(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by kvstore yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client reads back from the response headers of `status`.
    fn on_the_wire(status: Status) -> Status {
        let mut headers = tonic::codegen::http::HeaderMap::new();
        status
            .add_header(&mut headers)
            .expect("a status encodes into headers");
        Status::from_header_map(&headers).expect("the headers carry a status")
    }

    /// Asserts that `error` reaches a client as etcd's `code` and `message`, byte for byte.
    fn assert_etcd(error: EtcdError, code: Code, message: &str) {
        assert_eq!((error.code(), error.message()), (code, message));
        let seen = on_the_wire(error.into());
        assert_eq!((seen.code(), seen.message()), (code, message));
    }

    // One test per error: each pair is etcd's `rpctypes` (server side), written out again
    // here so an edit of a constant shows up as a failing test, not as a client that no
    // longer recognises the error.

    #[test]
    fn empty_key() {
        assert_etcd(
            EMPTY_KEY,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
    }

    #[test]
    fn key_not_found() {
        assert_etcd(
            KEY_NOT_FOUND,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
    }

    #[test]
    fn value_provided() {
        assert_etcd(
            VALUE_PROVIDED,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        );
    }

    #[test]
    fn lease_provided() {
        assert_etcd(
            LEASE_PROVIDED,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        );
    }

    #[test]
    fn too_many_ops() {
        assert_etcd(
            TOO_MANY_OPS,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
    }

    #[test]
    fn duplicate_key() {
        assert_etcd(
            DUPLICATE_KEY,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
    }

    #[test]
    fn request_too_large() {
        assert_etcd(
            REQUEST_TOO_LARGE,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
    }

    #[test]
    fn too_many_requests() {
        assert_etcd(
            TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            "etcdserver: too many requests",
        );
    }

    #[test]
    fn compacted() {
        assert_etcd(
            COMPACTED,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }

    #[test]
    fn future_rev() {
        assert_etcd(
            FUTURE_REV,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
    }

    #[test]
    fn no_space() {
        assert_etcd(
            NO_SPACE,
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
    }

    #[test]
    fn lease_not_found() {
        assert_etcd(
            LEASE_NOT_FOUND,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
    }

    #[test]
    fn lease_exist() {
        assert_etcd(
            LEASE_EXIST,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        );
    }

    #[test]
    fn lease_ttl_too_large() {
        assert_etcd(
            LEASE_TTL_TOO_LARGE,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        );
    }

    #[test]
    fn membership_refusals() {
        use Code::{FailedPrecondition, InvalidArgument};
        for (error, code, message) in [
            (
                MEMBER_EXIST,
                FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                PEER_URL_EXIST,
                FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                MEMBER_NOT_ENOUGH_STARTED,
                FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                MEMBER_BAD_URLS,
                InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                MEMBER_NOT_LEARNER,
                FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                LEARNER_NOT_READY,
                FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
        ] {
            assert_etcd(error, code, message);
        }
    }

    #[test]
    fn member_not_found() {
        assert_etcd(
            MEMBER_NOT_FOUND,
            Code::NotFound,
            "etcdserver: member not found",
        );
    }

    #[test]
    fn bad_leader_transferee() {
        assert_etcd(
            BAD_LEADER_TRANSFEREE,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        );
    }

    #[test]
    fn no_leader() {
        assert_etcd(NO_LEADER, Code::Unavailable, "etcdserver: no leader");
    }

    #[test]
    fn not_leader() {
        assert_etcd(
            NOT_LEADER,
            Code::FailedPrecondition,
            "etcdserver: not leader",
        );
    }

    #[test]
    fn leader_changed() {
        assert_etcd(
            LEADER_CHANGED,
            Code::Unavailable,
            "etcdserver: leader changed",
        );
    }

    #[test]
    fn not_capable() {
        assert_etcd(NOT_CAPABLE, Code::Unavailable, "etcdserver: not capable");
    }

    #[test]
    fn stopped() {
        assert_etcd(STOPPED, Code::Unavailable, "etcdserver: server stopped");
    }

    #[test]
    fn timeout() {
        assert_etcd(TIMEOUT, Code::Unavailable, "etcdserver: request timed out");
    }

    #[test]
    fn timeout_due_to_leader_fail() {
        assert_etcd(
            TIMEOUT_DUE_TO_LEADER_FAIL,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
        );
    }

    #[test]
    fn timeout_due_to_connection_lost() {
        assert_etcd(
            TIMEOUT_DUE_TO_CONNECTION_LOST,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to connection lost",
        );
    }

    #[test]
    fn unhealthy() {
        assert_etcd(
            UNHEALTHY,
            Code::Unavailable,
            "etcdserver: unhealthy cluster",
        );
    }

    #[test]
    fn corrupt() {
        assert_etcd(CORRUPT, Code::DataLoss, "etcdserver: corrupt cluster");
    }

    #[test]
    fn auth_not_enabled() {
        assert_etcd(
            AUTH_NOT_ENABLED,
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        );
    }

    #[test]
    fn not_implemented_names_the_method_in_one_line() {
        let s = on_the_wire(not_implemented("etcdserverpb.KV/Range"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(
            s.message(),
            "etcdserverpb.KV/Range is not implemented by kvstore yet"
        );
    }
}
