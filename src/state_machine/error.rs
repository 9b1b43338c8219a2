//! [`ApplyError`]: the deterministic per-command failures.

/// A command that applied deterministically to an error (every replica gets the same error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// The entry's bytes do not decode as a [`Proposal`](super::Proposal).
    #[error("undecodable command: {0}")]
    Undecodable(String),
    /// A retried write whose sequence is older than the session's last one.
    #[error("request sequence {sequence} of client {client_id} is older than its last applied sequence {last}; it was already applied or superseded")]
    StaleSequence {
        /// client id
        client_id: u64,
        /// the sequence sent
        sequence: u64,
        /// the session's last applied sequence
        last: u64,
    },
    /// A write from a session the state machine no longer knows (dropped when it expired or
    /// was evicted), or never knew with a sequence above 1. Nothing was applied; an earlier
    /// attempt of the same request may or may not have been.
    #[error("session expired; the outcome of your earlier attempt is unknown (client {client_id}, sequence {sequence}); start a new session")]
    SessionExpired {
        /// client id
        client_id: u64,
        /// the sequence sent
        sequence: u64,
    },
    /// A write reusing the session's last applied sequence with a different command.
    #[error("request sequence {sequence} of client {client_id} was already used for a different command; each new request needs a new sequence")]
    SessionMismatch {
        /// client id
        client_id: u64,
        /// the sequence sent
        sequence: u64,
    },
    /// Another holder has an unexpired lease on the lock.
    #[error("lock {name} is held by {holder} (token {token})")]
    LockHeld {
        /// lock name
        name: String,
        /// current holder
        holder: String,
        /// current token
        token: u64,
    },
    /// A lock operation (keep-alive, release) with a token that is not the current one.
    #[error("stale token {token} for lock {name} ({})", current_text(*current))]
    StaleToken {
        /// lock name
        name: String,
        /// the token sent
        token: u64,
        /// the current valid token, if the lock is held
        current: Option<u64>,
    },
    /// A fenced write whose token is not the current valid token of its lock; nothing changed.
    #[error("stale fencing token {token} for lock {lock} ({})", current_text(*current))]
    StaleFence {
        /// lock name
        lock: String,
        /// the token sent
        token: u64,
        /// the current valid token, if the lock is held
        current: Option<u64>,
    },
    /// A same-holder Acquire (a renewal) of a grant whose expiry the leader already proposed:
    /// the expiry ends the grant right after, so the renewal is refused. Never the state
    /// machine's own result (the leader's lease table answers it), so never cached in a
    /// session; added last all the same, so the postcard encoding of the others is unchanged.
    #[error("lock {name}'s lease (token {token}) is expiring; acquire again to get a new token")]
    LockExpiring {
        /// lock name
        name: String,
        /// the expiring grant's token
        token: u64,
    },
    /// A key-space request that etcd's rules refuse (compacted or future revision, a
    /// missing lease, ...); nothing changed.
    #[error("{0}")]
    Kv(super::mvcc::MvccError),
    /// A LeaseGrant naming a lease id in use (etcd's "lease already exists").
    #[error("lease already exists")]
    LeaseExists {
        /// the id asked for
        id: i64,
    },
    /// A LeaseGrant above etcd's largest TTL (etcd's "too large lease TTL").
    #[error("too large lease TTL")]
    LeaseTtlTooLarge {
        /// the TTL asked for, in seconds
        ttl: i64,
    },
}

fn current_text(current: Option<u64>) -> String {
    match current {
        Some(t) => format!("current {t}"),
        None => "current: none, the lock is not held".to_string(),
    }
}
