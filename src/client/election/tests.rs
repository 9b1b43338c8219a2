//! Locks, fenced writes and the election helper against an in-process fake lock service
//! (a small in-memory model of the server's rules, no Raft).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use std::sync::atomic::Ordering;

use super::*;
use crate::pb;
use crate::pb::kv_server::{Kv, KvServer};
use crate::pb::lock_server::{Lock, LockServer};

#[derive(Default)]
struct State {
    /// (holder, token, lease end)
    held: Option<(String, u64, Instant)>,
    next_token: u64,
    /// Keep-alives answer UNAVAILABLE while set (a partitioned client).
    keep_alive_unavailable: bool,
    keep_alives: u32,
    /// Acquires answer FAILED_PRECONDITION at once while set (a lock held elsewhere, and a
    /// server that does not wait).
    refuse_acquires: bool,
    /// Keep-alives never get an answer while set (a store that stopped answering).
    keep_alive_hangs: bool,
    acquires: u32,
    writes: Vec<(String, u64)>,
}

#[derive(Clone, Default)]
struct FakeLocks(Arc<Mutex<State>>);

impl FakeLocks {
    fn current(state: &mut State) -> Option<(String, u64)> {
        match &state.held {
            Some((_, _, end)) if *end <= Instant::now() => {
                state.held = None;
                None
            }
            Some((holder, token, _)) => Some((holder.clone(), *token)),
            None => None,
        }
    }
    fn check(&self, name: &str, token: u64, what: &str) -> Result<(), Status> {
        let mut state = self.0.lock().unwrap();
        match Self::current(&mut state) {
            Some((_, current)) if current == token => Ok(()),
            Some((_, current)) => Err(Status::failed_precondition(format!(
                "stale {what} {token} for lock {name} (current {current})"
            ))),
            None => Err(Status::failed_precondition(format!(
                "stale {what} {token} for lock {name} (current: none, the lock is not held)"
            ))),
        }
    }
    fn set_keep_alive_unavailable(&self, on: bool) {
        self.0.lock().unwrap().keep_alive_unavailable = on;
    }
}

#[tonic::async_trait]
impl Lock for FakeLocks {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let r = request.into_inner();
        {
            let mut state = self.0.lock().unwrap();
            state.acquires += 1;
            if state.refuse_acquires {
                return Err(Status::failed_precondition("lock L is held by x (token 3)"));
            }
        }
        let until = Instant::now() + Duration::from_millis(r.wait_ms);
        loop {
            {
                let mut state = self.0.lock().unwrap();
                let end = Instant::now() + Duration::from_millis(r.ttl_ms);
                let token = match Self::current(&mut state) {
                    Some((holder, token)) if holder == r.holder => Some(token),
                    Some((holder, token)) if Instant::now() >= until => {
                        return Err(Status::failed_precondition(format!(
                            "lock {} is held by {holder} (token {token})",
                            r.name
                        )))
                    }
                    Some(_) => None,
                    None => {
                        state.next_token += 10;
                        Some(state.next_token)
                    }
                };
                if let Some(token) = token {
                    state.held = Some((r.holder.clone(), token, end));
                    return Ok(Response::new(pb::AcquireResponse {
                        header: None,
                        token,
                        ttl_ms: r.ttl_ms,
                    }));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let r = request.into_inner();
        let hangs = {
            let mut state = self.0.lock().unwrap();
            state.keep_alives += 1;
            if state.keep_alive_unavailable {
                return Err(Status::unavailable("no leader elected yet"));
            }
            state.keep_alive_hangs
        };
        if hangs {
            std::future::pending::<()>().await;
        }
        self.check(&r.name, r.token, "token")?;
        let mut state = self.0.lock().unwrap();
        let ttl = Duration::from_millis(600);
        if let Some((_, _, end)) = &mut state.held {
            *end = Instant::now() + ttl;
        }
        Ok(Response::new(pb::KeepAliveResponse {
            header: None,
            ttl_ms: 600,
        }))
    }
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = request.into_inner();
        self.check(&r.name, r.token, "token")?;
        self.0.lock().unwrap().held = None;
        Ok(Response::new(pb::ReleaseResponse { header: None }))
    }
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.0.lock().unwrap();
        let (holder, current) = Self::current(&mut state).unwrap_or_default();
        Ok(Response::new(pb::ValidateResponse {
            header: None,
            valid: current != 0 && current == r.token,
            current_token: current,
            holder,
        }))
    }
}

#[tonic::async_trait]
impl Kv for FakeLocks {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        let fence = r.fence.unwrap_or_default();
        self.check(&fence.lock, fence.token, "fencing token")?;
        self.0.lock().unwrap().writes.push((r.key, fence.token));
        Ok(Response::new(pb::PutResponse { header: None }))
    }
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let fence = request.into_inner().fence.unwrap_or_default();
        self.check(&fence.lock, fence.token, "fencing token")?;
        Ok(Response::new(pb::DeleteResponse {
            header: None,
            deleted: true,
        }))
    }
    async fn range(
        &self,
        _: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn compact(
        &self,
        _: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

async fn serve(fake: FakeLocks) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LockServer::new(fake.clone()))
            .add_service(KvServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn client(addr: &str) -> Client {
    let options = ClientOptions {
        timeout: Duration::from_millis(2000),
        attempt_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    Client::with_options(vec![addr.to_string()], options).unwrap()
}

const TTL: Duration = Duration::from_millis(600);

#[tokio::test]
async fn acquire_validate_fenced_put_and_release() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let mut a = client(&addr);
    let lease = a.acquire("svc", "A", TTL, Duration::ZERO).await.unwrap();
    assert_eq!(lease.ttl, TTL);
    let again = a.acquire("svc", "A", TTL, Duration::ZERO).await.unwrap();
    assert_eq!(again.token, lease.token, "same holder, same token");

    let mut b = client(&addr);
    let held = b
        .acquire("svc", "B", TTL, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        held,
        ClientError::FailedPrecondition(format!("lock svc is held by A (token {})", lease.token))
    );
    let check = b.validate("svc", lease.token).await.unwrap();
    assert!(check.valid);
    assert_eq!(check.holder, "A");

    let fence = Fence::new("svc", lease.token);
    a.put_fenced("k", "v", &fence).await.unwrap();
    a.delete_fenced("k", &fence).await.unwrap();
    a.keep_alive("svc", lease.token).await.unwrap();
    a.release("svc", lease.token).await.unwrap();
    let stale = a.put_fenced("k", "w", &fence).await.unwrap_err();
    assert!(
        stale.to_string().contains(&format!(
            "stale fencing token {} for lock svc (current: none",
            lease.token
        )),
        "{stale}"
    );
    assert!(!b.validate("svc", lease.token).await.unwrap().valid);
}

#[tokio::test]
async fn acquire_waits_for_the_holder_longer_than_the_attempt_timeout() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let mut a = client(&addr);
    let first = a.acquire("svc", "A", TTL, Duration::ZERO).await.unwrap();
    // B waits up to 2 s on the server (the attempt timeout is 300 ms); A's lease ends
    // after 600 ms, then B gets a higher token.
    let mut b = client(&addr);
    let second = b
        .acquire("svc", "B", TTL, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(second.token > first.token);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_for_a_ttl_reports_loss_and_its_writes_are_fenced() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let mut a = Election::campaign(client(&addr), "svc", "A", TTL)
        .await
        .unwrap();
    a.put("orders/1", "by A").await.unwrap();
    // Renewals keep the lease past several TTLs.
    tokio::time::sleep(TTL * 2).await;
    assert!(!a.is_lost());
    assert!(fake.0.lock().unwrap().keep_alives >= 3);

    // A is cut off: its renewals fail. It must give up within about one TTL of the last
    // renewal, on its own, and B takes over with a higher token.
    fake.set_keep_alive_unavailable(true);
    let cut = Instant::now();
    let b_campaign = tokio::spawn(Election::campaign(client(&addr), "svc", "B", TTL));
    tokio::time::timeout(TTL * 2, a.wait_lost()).await.unwrap();
    assert!(a.is_lost());
    assert!(cut.elapsed() <= TTL + Duration::from_millis(200));
    fake.set_keep_alive_unavailable(false);
    let mut b = b_campaign.await.unwrap().unwrap();
    assert!(b.token() > a.token());

    // The zombie A still tries to write: the store refuses it; B writes.
    let rejected = a.put("orders/2", "by A").await.unwrap_err();
    assert_eq!(
        rejected,
        ClientError::FailedPrecondition(format!(
            "stale fencing token {} for lock svc (current {})",
            a.token(),
            b.token()
        ))
    );
    b.put("orders/2", "by B").await.unwrap();
    let writes = fake.0.lock().unwrap().writes.clone();
    assert_eq!(
        writes,
        [
            ("orders/1".to_string(), a.token()),
            ("orders/2".to_string(), b.token())
        ]
    );
    b.resign().await.unwrap();
    assert_eq!(
        client(&addr)
            .validate("svc", 0)
            .await
            .unwrap()
            .current_token,
        0
    );
}

#[tokio::test]
async fn a_refused_renewal_is_reported_at_once() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let ttl = Duration::from_secs(3);
    let mut a = Election::campaign(client(&addr), "svc", "A", ttl)
        .await
        .unwrap();
    // Someone else holds the lock now (as after an expiry the client did not see): the
    // first renewal, a third of the TTL later, is refused, and the loss reported then,
    // not a whole TTL later.
    fake.0.lock().unwrap().held = Some(("B".into(), 99, Instant::now() + ttl * 2));
    let started = Instant::now();
    tokio::time::timeout(ttl, a.wait_lost()).await.unwrap();
    assert!(started.elapsed() < ttl / 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_campaign_holds_the_lock_as_its_name_plus_a_unique_suffix() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let a = Election::campaign(client(&addr), "svc", "A", TTL)
        .await
        .unwrap();
    let (name, suffix) = a.holder().split_once('/').unwrap();
    assert_eq!(name, "A");
    assert_eq!(suffix.len(), 16);
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{suffix}");
    let check = client(&addr).validate("svc", a.token()).await.unwrap();
    assert_eq!(check.holder, a.holder());

    // A second process with the same name is another holder: it waits (here: until the
    // timeout), instead of being handed A's token.
    let second =
        tokio::time::timeout(TTL * 2, Election::campaign(client(&addr), "svc", "A", TTL)).await;
    assert!(
        second.is_err(),
        "the same name got the lock while A held it"
    );
    assert!(!a.is_lost());
}

#[tokio::test]
async fn a_campaign_refuses_an_empty_or_too_long_name() {
    let addr = serve(FakeLocks::default()).await;
    let empty = Election::campaign(client(&addr), "svc", "", TTL)
        .await
        .unwrap_err();
    assert_eq!(
        empty,
        ClientError::InvalidArgument("holder name must not be empty".into())
    );
    // The longest accepted name leaves room for the suffix within the store's 4096 bytes.
    let longest = "h".repeat(4096 - 17);
    let a = Election::campaign(client(&addr), "svc", &longest, TTL)
        .await
        .unwrap();
    assert_eq!(a.holder().len(), 4096);
    let too_long = Election::campaign(client(&addr), "other", &format!("{longest}h"), TTL)
        .await
        .unwrap_err();
    assert_eq!(
        too_long.to_string(),
        "invalid argument: holder name is 4080 bytes, the limit for a campaign is 4079 (the store's 4096 less a 17-byte unique suffix)"
    );
}

#[tokio::test]
async fn a_campaign_backs_off_between_refused_attempts() {
    let fake = FakeLocks::default();
    fake.0.lock().unwrap().refuse_acquires = true;
    let addr = serve(fake.clone()).await;
    // Default backoff: 20, 40, 80, 160, 320, 500 ms ... so about 6 attempts in a second.
    let campaign = Election::campaign(client(&addr), "L", "me", TTL);
    let result = tokio::time::timeout(Duration::from_secs(1), campaign).await;
    assert!(result.is_err(), "the campaign cannot win");
    let attempts = fake.0.lock().unwrap().acquires;
    assert!((2..=12).contains(&attempts), "{attempts} attempts in 1 s");
}

/// Polls `leadership.is_lost()` for up to a second.
async fn becomes_lost(leadership: &Leadership) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if leadership.is_lost() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_leadership_whose_keep_alive_task_died_is_lost() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    // A long TTL: the losses below come from the task's end, not from the lease running out.
    let ttl = Duration::from_secs(3);
    let a = Election::campaign(client(&addr), "a", "A", ttl)
        .await
        .unwrap();
    a.task.abort();
    assert!(becomes_lost(&a).await, "an aborted keep-alive still leads");
    assert!(*a.lost().borrow());
    assert!(!a.lease.expired());

    let mut b = Election::campaign(client(&addr), "b", "B", ttl)
        .await
        .unwrap();
    b.lease.panic_at_renewal.store(true, Ordering::Relaxed);
    // The first renewal, a third of the TTL in, panics.
    tokio::time::sleep(ttl / 3).await;
    assert!(becomes_lost(&b).await, "a panicked keep-alive still leads");
    assert!(*b.lost().borrow());
    assert!(!b.lease.expired());
    tokio::time::timeout(Duration::from_millis(100), b.wait_lost())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lease_that_ran_out_during_a_suspend_is_lost_at_once() {
    let fake = FakeLocks::default();
    let addr = serve(fake.clone()).await;
    let options = ClientOptions {
        timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    let client = Client::with_options(vec![addr], options).unwrap();
    let ttl = Duration::from_secs(3);
    let clock = LeaseClock::default();
    fake.0.lock().unwrap().keep_alive_hangs = true;
    let mut a = Election::campaign_on(client, "svc", "A", ttl, clock.clone())
        .await
        .unwrap();
    // The first renewal (a third of the TTL in) gets stuck waiting for an answer.
    let started = Instant::now();
    while fake.0.lock().unwrap().keep_alives == 0 {
        assert!(started.elapsed() < ttl, "no renewal was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!a.is_lost());
    // The system sleeps past the TTL: tokio's clock did not move, the lease clock did.
    clock.advance(ttl);
    assert!(
        a.is_lost(),
        "a lease that ran out during a suspend still leads"
    );
    tokio::time::timeout(Duration::from_millis(50), a.wait_lost())
        .await
        .unwrap();
    // The task notices too, within a clock check, and reports it on the receiver.
    let mut lost = a.lost();
    tokio::time::timeout(Duration::from_millis(500), lost.wait_for(|lost| *lost))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < ttl,
        "noticed before the lease ran out on tokio's clock"
    );
}
