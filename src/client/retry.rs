//! Backoff and the classification of failed attempts.

use std::time::Duration;

use tonic::{Code, Status};

use super::ClientError;

/// Exponential backoff: `initial`, doubling, capped at `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    /// The delay to wait now; the following one doubles (up to `max`).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }
}

/// What to do after an attempt failed with a gRPC status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The node named another node as leader (`leader-addr` metadata): go there.
    Redirect(String),
    /// Transient (no leader yet, leadership lost, node down or shutting down): try again.
    Retry,
    /// Retrying cannot help: return this error.
    Fail(ClientError),
}

/// Response metadata key (and value) the server sets on a write refused because its session
/// expired (`rpc::status`; the client may not import it, so the strings are repeated here and
/// in proto/kvstore.proto).
const ERROR_KIND_KEY: &str = "kvstore-error";
const SESSION_EXPIRED: &str = "session-expired";

/// Classifies a failed attempt. Only UNAVAILABLE-like failures are retried; the caller's
/// mistakes (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) are returned at once, an expired
/// session as [`ClientError::UnknownOutcome`].
pub(crate) fn classify(status: &Status) -> Verdict {
    match status.code() {
        Code::FailedPrecondition if is_session_expired(status) => {
            Verdict::Fail(ClientError::UnknownOutcome(one_line(status.message())))
        }
        Code::Unavailable => match leader_hint(status) {
            Some(addr) => Verdict::Redirect(addr),
            None => Verdict::Retry,
        },
        // Connection trouble surfaces under these codes too (a reset stream, a node killed
        // mid-request); a write is safe to resend because it carries its session.
        Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal => Verdict::Retry,
        Code::InvalidArgument => {
            Verdict::Fail(ClientError::InvalidArgument(one_line(status.message())))
        }
        Code::FailedPrecondition => {
            Verdict::Fail(ClientError::FailedPrecondition(one_line(status.message())))
        }
        code => Verdict::Fail(ClientError::Server {
            code: format!("{code:?}"),
            message: one_line(status.message()),
        }),
    }
}

fn is_session_expired(status: &Status) -> bool {
    status
        .metadata()
        .get(ERROR_KIND_KEY)
        .is_some_and(|v| v.as_bytes() == SESSION_EXPIRED.as_bytes())
}

/// The `leader-addr` response metadata of a redirect, if present and readable.
pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    let addr = status.metadata().get("leader-addr")?.to_str().ok()?.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

/// A status as one line for error messages: `Unavailable: not leader, ...`.
pub(crate) fn describe(status: &Status) -> String {
    let message = one_line(status.message());
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// Joins a possibly multi-line message into one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let delays: Vec<u128> = (0..7).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 500, 500]);
    }

    #[test]
    fn unavailable_with_leader_addr_is_a_redirect() {
        let mut status = Status::unavailable("not leader, try node 2 (127.0.0.1:9002)");
        status
            .metadata_mut()
            .insert("leader-addr", MetadataValue::from_static("127.0.0.1:9002"));
        assert_eq!(
            classify(&status),
            Verdict::Redirect("127.0.0.1:9002".to_string())
        );
    }

    #[test]
    fn unavailable_without_hint_and_transport_errors_are_retried() {
        assert_eq!(
            classify(&Status::unavailable("no leader elected yet")),
            Verdict::Retry
        );
        assert_eq!(
            classify(&Status::unknown("h2 protocol error")),
            Verdict::Retry
        );
    }

    #[test]
    fn caller_errors_are_not_retried() {
        assert_eq!(
            classify(&Status::invalid_argument("key is empty")),
            Verdict::Fail(ClientError::InvalidArgument("key is empty".into()))
        );
        assert_eq!(
            classify(&Status::failed_precondition("stale sequence")),
            Verdict::Fail(ClientError::FailedPrecondition("stale sequence".into()))
        );
        assert!(matches!(
            classify(&Status::unimplemented("no")),
            Verdict::Fail(ClientError::Server { .. })
        ));
    }

    #[test]
    fn an_expired_session_is_an_unknown_outcome() {
        let message = "session expired; the outcome of your earlier attempt is unknown (client 7, sequence 1); start a new session";
        let mut status = Status::failed_precondition(message);
        status
            .metadata_mut()
            .insert(ERROR_KIND_KEY, MetadataValue::from_static(SESSION_EXPIRED));
        let Verdict::Fail(error) = classify(&status) else {
            panic!("not a failure")
        };
        assert_eq!(error, ClientError::UnknownOutcome(message.into()));
        assert_eq!(error.to_string(), format!("outcome unknown: {message}"));
        // Without the marker it stays an ordinary refusal.
        assert_eq!(
            classify(&Status::failed_precondition(message)),
            Verdict::Fail(ClientError::FailedPrecondition(message.into()))
        );
    }

    #[test]
    fn messages_are_folded_to_one_line() {
        assert_eq!(
            describe(&Status::unavailable("a\nb  c")),
            "Unavailable: a b c"
        );
    }
}
