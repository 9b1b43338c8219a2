//! The client's error type: one line per variant, saying what happened.

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// `Client::new` got no endpoints.
    #[error("no endpoints given; pass at least one HOST:PORT")]
    NoEndpoints,
    /// An endpoint is not a usable `HOST:PORT` (or `http://HOST:PORT`) address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server rejected the request as malformed (INVALID_ARGUMENT); not retried.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server refused the request in its current state (FAILED_PRECONDITION); not retried.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The node could not be reached or did not answer in time (status queries).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Another error the server returned that retrying cannot fix.
    #[error("server error ({code}): {message}")]
    Server {
        /// gRPC status code name.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The cluster refused the write because this client's session had expired (it was idle
    /// too long, or evicted by newer clients): the write was not applied by this attempt, but
    /// an earlier attempt of it may have been, so whether it took effect is unknown. Check the
    /// state before writing again. The client has already started a new session; later
    /// writes work as usual. Not retried.
    #[error("outcome unknown: {0}")]
    UnknownOutcome(String),
    /// A watch ended because the history it needs is gone: its next revision is below the
    /// compaction revision. Read the keys afresh and watch again from a revision at or above
    /// `compact_revision`.
    #[error("watch cancelled: {reason} (compact revision {compact_revision}); read the keys again and watch from a revision >= {compact_revision}")]
    WatchCanceled {
        /// The node's reason.
        reason: String,
        /// The compaction revision that made the history unavailable.
        compact_revision: i64,
    },
    /// The operation did not succeed before its deadline.
    #[error("{operation} gave up after {elapsed_ms} ms and {attempts} attempts; last error: {last_error}")]
    Timeout {
        /// What was attempted (`put`, `get`, ...).
        operation: &'static str,
        /// Time spent, in milliseconds.
        elapsed_ms: u128,
        /// RPC attempts made.
        attempts: u32,
        /// The last failure seen, one line.
        last_error: String,
    },
}
