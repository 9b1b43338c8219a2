//! `kvstore.v1.Lock`: named locks with leases and fencing tokens. Validates, proposes the lock
//! command and maps the outcome. Acquire and KeepAlive carry no session (resending them is
//! idempotent for their holder or token); Release carries the client's session when it sends
//! one, since a resent Release whose first reply was lost would otherwise find the lock freed
//! and answer "stale token". Lease time is kept by the leader's driver, never here.

use super::kv_service::{header, session_from_pb, validate_name};
use crate::node::{ClientError, Header, NodeHandle};
use crate::pb;
use crate::state_machine::{ApplyError, Command, Outcome, Proposal};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// Shortest lease accepted, in ms: shorter ones would expire between two keep-alives.
pub const MIN_TTL_MS: u64 = 100;
/// Longest lease accepted, in ms (one day).
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// Longest an `Acquire` may wait for a held lock, in ms (ten minutes).
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
/// A waiting `Acquire` retries when this node sees a lock freed, and at least this often
/// (a fallback: the lock may be freed by an expiry applied just before we subscribed).
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The Lock service of one node.
#[derive(Clone, Debug)]
pub struct LockService {
    node: NodeHandle,
}

impl LockService {
    /// A service backed by `node`.
    pub fn new(node: NodeHandle) -> Self {
        LockService { node }
    }

    async fn propose(
        &self,
        command: Command,
        session: Option<pb::Session>,
    ) -> Result<(Outcome, Header), ClientError> {
        let proposal = Proposal {
            session: session_from_pb(session)?,
            command,
        };
        self.node.propose(proposal.encode()).await
    }

    /// Proposes `Acquire` until it is granted, it fails otherwise than "held", or `wait` ran
    /// out; retries when this node applies a release or expiry, or after [`RETRY_EVERY`].
    async fn acquire_within(
        &self,
        req: pb::AcquireRequest,
        wait: Duration,
    ) -> Result<(u64, u64, Header), Status> {
        let deadline = Instant::now() + wait;
        loop {
            // Subscribe before proposing, so a lock freed after the attempt wakes us.
            let mut freed = self.node.watch_locks_freed();
            let command = Command::Acquire {
                name: req.name.clone(),
                holder: req.holder.clone(),
                ttl_ms: req.ttl_ms,
            };
            match self.propose(command, None).await {
                Ok((Outcome::Acquired { token, ttl_ms }, h)) => return Ok((token, ttl_ms, h)),
                Ok((other, _)) => return Err(unexpected(&other)),
                Err(ClientError::Apply(ApplyError::LockHeld { .. }))
                    if Instant::now() < deadline =>
                {
                    let nap = deadline
                        .saturating_duration_since(Instant::now())
                        .min(RETRY_EVERY);
                    // Err (the driver stopped) is seen by the next proposal.
                    let _ = tokio::time::timeout(nap, freed.changed()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The state machine answered a lock command with another command's outcome.
fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!(
        "unexpected outcome {outcome:?} for a lock command; this is a bug"
    ))
}

/// Rejects a token of 0 (tokens are log indexes, so they start at 1).
fn validate_token(token: u64) -> Result<(), ClientError> {
    if token == 0 {
        return Err(ClientError::Invalid(
            "token must not be 0: use the token Lock/Acquire returned".into(),
        ));
    }
    Ok(())
}

/// Checks an `Acquire`'s name, holder, ttl and wait.
fn validate_acquire(req: &pb::AcquireRequest) -> Result<(), ClientError> {
    validate_name("lock name", &req.name)?;
    validate_name("holder", &req.holder)?;
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&req.ttl_ms) {
        return Err(ClientError::Invalid(format!(
            "ttl_ms {} is out of range: a lease lasts from {MIN_TTL_MS} ms to {MAX_TTL_MS} ms (one day)",
            req.ttl_ms
        )));
    }
    if req.wait_ms > MAX_WAIT_MS {
        return Err(ClientError::Invalid(format!(
            "wait_ms {} is too long: the limit is {MAX_WAIT_MS} ms (10 minutes)",
            req.wait_ms
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let req = request.into_inner();
        validate_acquire(&req)?;
        let wait = Duration::from_millis(req.wait_ms);
        let (token, ttl_ms, h) = self.acquire_within(req, wait).await?;
        Ok(Response::new(pb::AcquireResponse {
            header: header(h),
            token,
            ttl_ms,
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let req = request.into_inner();
        validate_name("lock name", &req.name)?;
        validate_token(req.token)?;
        let command = Command::KeepAlive {
            name: req.name,
            token: req.token,
        };
        match self.propose(command, None).await? {
            (Outcome::KeptAlive { ttl_ms }, h) => Ok(Response::new(pb::KeepAliveResponse {
                header: header(h),
                ttl_ms,
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let req = request.into_inner();
        validate_name("lock name", &req.name)?;
        validate_token(req.token)?;
        let command = Command::Release {
            name: req.name,
            token: req.token,
        };
        match self.propose(command, req.session).await? {
            (Outcome::Released, h) => Ok(Response::new(pb::ReleaseResponse { header: header(h) })),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = request.into_inner();
        validate_name("lock name", &req.name)?;
        let (lock, h) = self.node.read_lock(req.name).await?;
        let (current_token, holder) = lock.map_or((0, String::new()), |l| (l.token, l.holder));
        Ok(Response::new(pb::ValidateResponse {
            header: header(h),
            valid: req.token != 0 && req.token == current_token,
            current_token,
            holder,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(name: &str, holder: &str, ttl_ms: u64, wait_ms: u64) -> pb::AcquireRequest {
        pb::AcquireRequest {
            name: name.into(),
            holder: holder.into(),
            ttl_ms,
            wait_ms,
        }
    }

    #[test]
    fn acquire_limits() {
        assert!(validate_acquire(&acquire("L", "h", MIN_TTL_MS, 0)).is_ok());
        assert!(validate_acquire(&acquire("L", "h", MAX_TTL_MS, MAX_WAIT_MS)).is_ok());
        let msg = |r| validate_acquire(&r).unwrap_err().to_string();
        assert_eq!(
            msg(acquire("", "h", 1000, 0)),
            "lock name must not be empty"
        );
        assert_eq!(msg(acquire("L", "", 1000, 0)), "holder must not be empty");
        assert_eq!(
            msg(acquire("L", &"h".repeat(4097), 1000, 0)),
            "holder is 4097 bytes, the limit is 4096"
        );
        assert_eq!(
            msg(acquire("L", "h", 99, 0)),
            "ttl_ms 99 is out of range: a lease lasts from 100 ms to 86400000 ms (one day)"
        );
        assert!(validate_acquire(&acquire("L", "h", MAX_TTL_MS + 1, 0)).is_err());
        assert_eq!(
            msg(acquire("L", "h", 1000, MAX_WAIT_MS + 1)),
            "wait_ms 600001 is too long: the limit is 600000 ms (10 minutes)"
        );
        let s = Status::from(validate_acquire(&acquire("L", "h", 0, 0)).unwrap_err());
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn zero_token_is_invalid() {
        assert!(validate_token(1).is_ok());
        assert_eq!(
            Status::from(validate_token(0).unwrap_err()).code(),
            tonic::Code::InvalidArgument
        );
    }
}
