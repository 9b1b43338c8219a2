//! `kvstore.v1.Lock`: named locks with leases and fencing tokens. Validates, proposes the lock
//! command and maps the outcome. Acquire and KeepAlive carry no session (resending them is
//! idempotent for their holder or token); Release carries the client's session when it sends
//! one, since a resent Release whose first reply was lost would otherwise find the lock freed
//! and answer "stale token". Lease time is kept by the leader's driver, never here.
//!
//! # Waiting Acquires
//! An Acquire with `wait_ms > 0` waits on the leader without writing to the log: it joins its
//! lock's queue on this node ([`LockWaiters`](crate::node::LockWaiters)) first, so no change
//! is missed, then looks at the lock's state as applied here and proposes only when
//! - the lock is free and it heads the queue (one proposal per release, not one per waiter), or
//! - the lock is held by the same holder (a renewal or a retry: whatever its place),
//!
//! and never while the state still shows the token that refused it last (`LockHeld`, or
//! `LockExpiring` for a renewal that met the grant's proposed expiry: it then waits for the
//! expiry and gets a new token). Otherwise it waits for the lock to change hands, for the
//! deadline, or `RECHECK_EVERY` (a node that lost leadership unnoticed redirects its
//! waiters; a driver that does not answer within `NOT_RESPONDING` fails them). A follower
//! redirects at once. At the deadline it answers the last known refusal. Beyond
//! `--max-waiting-acquires` waiters on this node, an Acquire that would wait is refused with
//! RESOURCE_EXHAUSTED.

use super::kv_service::{header, session_from_pb, validate_name};
use crate::node::{ClientError, Header, NodeHandle, Waiter};
use crate::pb;
use crate::state_machine::{ApplyError, Command, LockInfo, Outcome, Proposal};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// Shortest lease accepted, in ms: shorter ones would expire between two keep-alives.
pub const MIN_TTL_MS: u64 = 100;
/// Longest lease accepted, in ms (one day).
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// Longest an `Acquire` may wait for a held lock, in ms (ten minutes).
pub const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
/// A waiting `Acquire` looks at its lock and at leadership again at least this often, even
/// without a change of its lock.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// A waiting `Acquire` whose look at its lock the driver does not answer within this long
/// fails with UNAVAILABLE "node not responding" instead of holding the client.
const NOT_RESPONDING: Duration = Duration::from_secs(2);

/// The Lock service of one node.
#[derive(Clone, Debug)]
pub struct LockService {
    node: NodeHandle,
    /// Bound on the Acquire requests waiting on this node (`--max-waiting-acquires`).
    max_waiting: usize,
}

/// Whether a waiting Acquire by `holder` proposes now, given the lock's applied state, its
/// place in the queue and the token that refused it last (if any).
fn should_propose(
    lock: Option<&LockInfo>,
    holder: &str,
    head: bool,
    refused_by: Option<u64>,
) -> bool {
    match lock {
        // The refusal still stands: proposing again would append an entry to learn nothing.
        Some(l) if refused_by == Some(l.token) => false,
        // A renewal (or a retry of our own grant) needs no turn.
        Some(l) => l.holder == holder,
        // One proposal per release: the first in line.
        None => head,
    }
}

/// A granted Acquire: its token, its lease and where it took effect.
type Granted = (u64, u64, Header);

/// The answer to one proposed Acquire.
enum Attempt {
    Granted(Granted),
    /// Held by another holder, or this holder's grant is expiring: the refusing token and
    /// the error to answer if the wait ends now.
    Refused(u64, ClientError),
    Failed(Status),
}

impl LockService {
    /// A service backed by `node`, with at most `max_waiting` Acquires waiting on it.
    pub fn new(node: NodeHandle, max_waiting: usize) -> Self {
        LockService { node, max_waiting }
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

    /// Proposes the `Acquire` once: the linearizable answer.
    async fn attempt(&self, req: &pb::AcquireRequest) -> Attempt {
        let command = Command::Acquire {
            name: req.name.clone(),
            holder: req.holder.clone(),
            ttl_ms: req.ttl_ms,
        };
        match self.propose(command, None).await {
            Ok((Outcome::Acquired { token, ttl_ms }, h)) => Attempt::Granted((token, ttl_ms, h)),
            Ok((other, _)) => Attempt::Failed(unexpected(&other)),
            Err(
                e @ ClientError::Apply(
                    ApplyError::LockHeld { token, .. } | ApplyError::LockExpiring { token, .. },
                ),
            ) => Attempt::Refused(token, e),
            Err(e) => Attempt::Failed(e.into()),
        }
    }

    /// The lock's state as applied on this node, if it leads (else the redirect error);
    /// [`ClientError::NotResponding`] when the driver does not answer in time.
    async fn look(&self, name: &str) -> Result<Option<LockInfo>, ClientError> {
        let look = self.node.leader_local_lock(name.to_owned());
        match tokio::time::timeout(NOT_RESPONDING, look).await {
            Ok(Ok((lock, _))) => Ok(lock),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Err(ClientError::NotResponding),
        }
    }

    /// Acquires the lock, waiting up to `wait` for it without writing to the log meanwhile
    /// (see the module docs, "Waiting Acquires").
    async fn acquire_within(
        &self,
        req: &pb::AcquireRequest,
        wait: Duration,
    ) -> Result<Granted, Status> {
        if wait.is_zero() {
            return match self.attempt(req).await {
                Attempt::Granted(granted) => Ok(granted),
                Attempt::Refused(_, e) => Err(e.into()),
                Attempt::Failed(status) => Err(status),
            };
        }
        let deadline = Instant::now() + wait;
        // Joined before the first look, so a change after that look wakes this waiter.
        let mut waiter = match self.node.lock_waiters().join(&req.name, self.max_waiting) {
            Ok(waiter) => waiter,
            Err(full) => return self.acquire_without_waiting(req, full.limit).await,
        };
        let mut refused: Option<(u64, ClientError)> = None;
        loop {
            let lock = match self.look(&req.name).await {
                Ok(lock) => lock,
                // The inbox is full (a crowd of waiters looking at once): look again later.
                Err(ClientError::Overloaded) if Instant::now() < deadline => {
                    nap(&mut waiter, deadline).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let expired = Instant::now() >= deadline;
            let refused_by = refused.as_ref().map(|(token, _)| *token);
            // At the deadline a free lock gets one last proposal, whatever our place.
            let propose = should_propose(lock.as_ref(), &req.holder, waiter.is_head(), refused_by)
                || (expired && lock.is_none());
            if propose {
                match self.attempt(req).await {
                    Attempt::Granted(granted) => return Ok(granted),
                    Attempt::Refused(_, e) if expired => return Err(e.into()),
                    Attempt::Refused(token, e) => refused = Some((token, e)),
                    Attempt::Failed(status) => return Err(status),
                }
            } else if let (true, Some(lock)) = (expired, lock) {
                return Err(deadline_error(&req.name, lock, refused).into());
            }
            nap(&mut waiter, deadline).await;
        }
    }

    /// An Acquire that would wait while the bound of waiters is reached: proposed only if the
    /// lock looks free or held by the same holder, and refused with RESOURCE_EXHAUSTED if it
    /// looks held or the proposal finds it held.
    async fn acquire_without_waiting(
        &self,
        req: &pb::AcquireRequest,
        limit: usize,
    ) -> Result<Granted, Status> {
        let too_many = || Status::from(ClientError::TooManyWaiting { limit });
        if self
            .look(&req.name)
            .await?
            .is_some_and(|l| l.holder != req.holder)
        {
            return Err(too_many());
        }
        match self.attempt(req).await {
            Attempt::Granted(granted) => Ok(granted),
            Attempt::Refused(..) => Err(too_many()),
            Attempt::Failed(status) => Err(status),
        }
    }
}

/// Waits until the waiter's lock changes, the deadline, or `RECHECK_EVERY`.
async fn nap(waiter: &mut Waiter, deadline: Instant) {
    let nap = deadline
        .saturating_duration_since(Instant::now())
        .min(RECHECK_EVERY);
    let _ = tokio::time::timeout(nap, waiter.changed()).await;
}

/// The answer at the deadline to a waiter that saw `lock` held: its last refusal if the lock
/// still shows that token, else the usual `LockHeld` from the lock's state.
fn deadline_error(name: &str, lock: LockInfo, refused: Option<(u64, ClientError)>) -> ClientError {
    match refused {
        Some((token, err)) if token == lock.token => err,
        _ => ClientError::Apply(ApplyError::LockHeld {
            name: name.to_owned(),
            holder: lock.holder,
            token: lock.token,
        }),
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
        let (token, ttl_ms, h) = self.acquire_within(&req, wait).await?;
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
    use std::sync::{Arc, Mutex};

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
    fn a_waiter_proposes_when_the_lock_is_free_and_it_heads_the_queue_or_it_holds_the_lock() {
        let held_by = |holder: &str, token| LockInfo {
            holder: holder.into(),
            token,
            ttl_ms: 1000,
        };
        let other = held_by("other", 7);
        let mine = held_by("me", 7);
        assert!(should_propose(None, "me", true, None));
        assert!(!should_propose(None, "me", false, None), "not our turn");
        assert!(
            should_propose(None, "me", true, Some(7)),
            "the refusing grant ended"
        );
        assert!(!should_propose(Some(&other), "me", true, None));
        assert!(
            should_propose(Some(&mine), "me", false, None),
            "a renewal needs no turn"
        );
        assert!(
            !should_propose(Some(&mine), "me", true, Some(7)),
            "the grant that was expiring is still there"
        );
        assert!(should_propose(Some(&mine), "me", true, Some(5)));
    }

    /// Stands in for the driver behind `handle`: this node leads (or redirects to node 2 when
    /// `leader` is false), lock "L" is `lock`, and an Acquire is granted (token = its index)
    /// when "L" is free. Returns the shared state and the holders that proposed, in order.
    fn fake_driver(
        inbox: crate::node::Inbox,
        lock: Option<LockInfo>,
        leader: bool,
    ) -> Arc<Mutex<(Option<LockInfo>, Vec<String>)>> {
        use crate::node::Request as NodeRequest;
        let state = Arc::new(Mutex::new((lock, Vec::new())));
        let shared = state.clone();
        let mut requests = inbox.into_requests();
        tokio::spawn(async move {
            let mut index = 100;
            while let Some(req) = requests.recv().await {
                index += 1;
                let h = Header {
                    node_id: 1,
                    term: 1,
                    index,
                    revision: 1,
                };
                let mut state = shared.lock().unwrap();
                match req {
                    NodeRequest::LeaderLocalLock { reply, .. } if leader => {
                        let _ = reply.send(Ok((state.0.clone(), h)));
                    }
                    NodeRequest::LeaderLocalLock { reply, .. } => {
                        let _ = reply.send(Err(ClientError::NotLeader {
                            id: 2,
                            addr: "127.0.0.1:9002".into(),
                        }));
                    }
                    NodeRequest::Propose { data, reply } => {
                        let Ok(Proposal {
                            command: Command::Acquire { holder, ttl_ms, .. },
                            ..
                        }) = Proposal::decode(&data)
                        else {
                            panic!("not an acquire");
                        };
                        state.1.push(holder.clone());
                        let answer = match &state.0 {
                            Some(l) => Err(ClientError::Apply(ApplyError::LockHeld {
                                name: "L".into(),
                                holder: l.holder.clone(),
                                token: l.token,
                            })),
                            None => {
                                state.0 = Some(LockInfo {
                                    holder,
                                    token: index,
                                    ttl_ms,
                                });
                                Ok((
                                    Outcome::Acquired {
                                        token: index,
                                        ttl_ms,
                                    },
                                    h,
                                ))
                            }
                        };
                        let _ = reply.send(answer);
                    }
                    other => panic!("unexpected request {other:?}"),
                }
            }
        });
        state
    }

    async fn call(svc: &LockService, holder: &str, wait_ms: u64) -> Result<u64, Status> {
        use pb::lock_server::Lock as _;
        let req = acquire("L", holder, 1000, wait_ms);
        Ok(svc.acquire(Request::new(req)).await?.into_inner().token)
    }

    /// Issue 12, item 5: waiters re-proposed every 250 ms and on every release anywhere.
    /// Now none proposes while the lock is held (also when it changes hands to someone else),
    /// and a release lets exactly the first in line propose; the others answer "held" by the
    /// new holder at their deadline.
    #[tokio::test]
    async fn waiters_propose_nothing_while_the_lock_is_held_and_one_proposal_after_a_release() {
        let (handle, inbox) = crate::node::channel(1, 64);
        let owner = |holder: &str, token| LockInfo {
            holder: holder.into(),
            token,
            ttl_ms: 1000,
        };
        let state = fake_driver(inbox, Some(owner("owner", 1)), true);
        let svc = LockService::new(handle.clone(), 100);
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..5 {
            let svc = svc.clone();
            waiters.spawn(async move { call(&svc, &format!("w{i}"), 1500).await });
            // Joined in this order.
            while handle.lock_waiters().len() <= i {
                tokio::task::yield_now().await;
            }
        }
        // The lock changes hands to another owner: everyone looks again, nobody proposes.
        state.lock().unwrap().0 = Some(owner("owner2", 2));
        handle.lock_waiters().changed("L");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(state.lock().unwrap().1, Vec::<String>::new());
        // Released: the first in line proposes, once, and gets it.
        state.lock().unwrap().0 = None;
        handle.lock_waiters().changed("L");
        let first = waiters.join_next().await.unwrap().unwrap();
        assert!(first.is_ok(), "{first:?}");
        assert_eq!(state.lock().unwrap().1, vec!["w0".to_string()]);
        while let Some(done) = waiters.join_next().await {
            let status = done.unwrap().unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(
                status.message().starts_with("lock L is held by w0 (token "),
                "{status:?}"
            );
        }
        assert_eq!(
            state.lock().unwrap().1.len(),
            1,
            "no proposal at the deadline"
        );
        assert!(handle.lock_waiters().is_empty());
    }

    #[tokio::test]
    async fn a_waiting_acquire_on_a_follower_is_redirected_at_once() {
        let (handle, inbox) = crate::node::channel(1, 64);
        let state = fake_driver(inbox, None, false);
        let svc = LockService::new(handle.clone(), 100);
        let status = call(&svc, "w", 60_000).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get("leader-id").unwrap(), "2");
        assert!(state.lock().unwrap().1.is_empty());
        assert!(handle.lock_waiters().is_empty());
    }

    /// A driver that stopped answering holds a waiting client for [`NOT_RESPONDING`], not for
    /// its whole wait.
    #[tokio::test]
    async fn a_waiting_acquire_fails_when_the_driver_does_not_answer() {
        let (handle, _inbox) = crate::node::channel(1, 64);
        let svc = LockService::new(handle, 100);
        let started = Instant::now();
        let status = call(&svc, "w", 60_000).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "node not responding, retry");
        assert!(started.elapsed() < NOT_RESPONDING + Duration::from_secs(1));
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
