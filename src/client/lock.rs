//! Named locks with leases and fencing tokens (the `Lock` service), as [`Client`] methods.
//!
//! Same discovery, redirect and retry rules as writes. Acquire is idempotent for one holder
//! (the same holder acquiring again renews the lease and gets the same token), so a retried
//! acquire is safe; for the same reason a holder must be unique per process and attempt, or
//! two processes would share one token ([`super::Election`] adds a random suffix to the
//! name). Keep-alive names the token, so resending it is harmless too. Release carries the
//! client's session like a put: a release resent because its reply was lost is answered with
//! the first one's outcome, not with "stale token" for the lock it already freed.
//! FAILED_PRECONDITION (stale token, lock held by someone else) is never retried.

use std::time::Duration;

use super::endpoints;
use super::kv_client::Header;
use super::{Client, ClientError};
use crate::pb;

/// A fencing token for a write: the write applies only while `token` is the current token
/// of lock `lock`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The token its holder was granted.
    pub token: u64,
}

impl Fence {
    /// A fence for `lock` with `token`.
    pub fn new(lock: impl Into<String>, token: u64) -> Self {
        Self {
            lock: lock.into(),
            token,
        }
    }
}

impl From<&Fence> for pb::Fence {
    fn from(fence: &Fence) -> Self {
        Self {
            lock: fence.lock.clone(),
            token: fence.token,
        }
    }
}

/// A granted (or renewed) lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token: the log index of the granting entry; strictly increasing across
    /// grants, never reused.
    pub token: u64,
    /// The lease length the server granted.
    pub ttl: Duration,
    /// Where the grant took effect.
    pub header: Header,
}

/// The answer to [`Client::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// Whether the token asked about is the current valid token.
    pub valid: bool,
    /// The current token, or 0 when the lock is not held.
    pub current_token: u64,
    /// The current holder (empty when the lock is not held).
    pub holder: String,
}

impl Client {
    /// Takes lock `name` for `holder` with a lease of `ttl`, waiting up to `wait` while
    /// another holder has an unexpired lease. Returns the fencing token.
    ///
    /// `holder` must be unique per process and per attempt to lead: the same holder
    /// acquiring again renews the lease and gets the SAME token, so two processes using one
    /// holder would both hold the lock with one token (and one's release frees the other's
    /// lock). Reuse a holder only to retry your own acquire. [`super::Election::campaign`]
    /// makes its holders unique.
    ///
    /// # Errors
    /// [`ClientError::FailedPrecondition`] `lock NAME is held by HOLDER (token N)` when the
    /// lock stayed held for the whole wait; otherwise as for [`Client::put`].
    pub async fn acquire(
        &mut self,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, ClientError> {
        let request = pb::AcquireRequest {
            name: name.to_string(),
            holder: holder.to_string(),
            ttl_ms: millis(ttl),
            wait_ms: millis(wait),
        };
        let response = self
            .run_waiting("acquire", true, wait, |channel| {
                let request = request.clone();
                async move { endpoints::lock(channel).acquire(request).await }
            })
            .await?;
        Ok(Lease {
            token: response.token,
            ttl: Duration::from_millis(response.ttl_ms),
            header: response.header.into(),
        })
    }

    /// Renews the lease of `name` held with `token`; returns the renewed lease length.
    ///
    /// # Errors
    /// [`ClientError::FailedPrecondition`] when `token` is no longer current (the lease ran
    /// out or someone else holds the lock); otherwise as for [`Client::put`].
    pub async fn keep_alive(&mut self, name: &str, token: u64) -> Result<Duration, ClientError> {
        let request = pb::KeepAliveRequest {
            name: name.to_string(),
            token,
        };
        let response = self
            .run("keep-alive", true, |channel| {
                let request = request.clone();
                async move { endpoints::lock(channel).keep_alive(request).await }
            })
            .await?;
        Ok(Duration::from_millis(response.ttl_ms))
    }

    /// Gives up lock `name` held with `token`.
    ///
    /// # Errors
    /// As for [`Client::keep_alive`].
    pub async fn release(&mut self, name: &str, token: u64) -> Result<Header, ClientError> {
        let session = self.next_session();
        let request = pb::ReleaseRequest {
            name: name.to_string(),
            token,
            session: Some(session),
        };
        let response = self
            .run("release", true, |channel| {
                let request = request.clone();
                async move { endpoints::lock(channel).release(request).await }
            })
            .await;
        self.end_write(session.sequence, &response);
        Ok(response?.header.into())
    }

    /// Whether `token` is the current valid token of `name` (a linearizable read on the
    /// leader): the check an external system can make before accepting a write.
    ///
    /// # Errors
    /// As for [`Client::get`].
    pub async fn validate(&mut self, name: &str, token: u64) -> Result<Validation, ClientError> {
        let request = pb::ValidateRequest {
            name: name.to_string(),
            token,
        };
        let response = self
            .run("validate", true, |channel| {
                let request = request.clone();
                async move { endpoints::lock(channel).validate(request).await }
            })
            .await?;
        Ok(Validation {
            valid: response.valid,
            current_token: response.current_token,
            holder: response.holder,
        })
    }
}

/// A duration in whole milliseconds for the wire (saturating; at least 1 for a non-zero
/// duration, so a sub-millisecond TTL is not sent as "none").
fn millis(duration: Duration) -> u64 {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !duration.is_zero() {
        1
    } else {
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientOptions;
    use crate::pb::lock_server::{Lock, LockServer};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    /// A lock server whose first Release frees the lock but loses its reply (UNAVAILABLE),
    /// and which, like the real one, answers a resent Release from its session: with the
    /// same session it says released, otherwise "stale token".
    #[derive(Clone, Default)]
    struct LosesFirstReleaseReply {
        /// The session of the Release that freed the lock, once one did.
        freed_by: Arc<Mutex<Option<Option<pb::Session>>>>,
    }

    #[tonic::async_trait]
    impl Lock for LosesFirstReleaseReply {
        async fn acquire(
            &self,
            _: Request<pb::AcquireRequest>,
        ) -> Result<Response<pb::AcquireResponse>, Status> {
            Err(Status::unimplemented("not in the fake"))
        }
        async fn keep_alive(
            &self,
            _: Request<pb::KeepAliveRequest>,
        ) -> Result<Response<pb::KeepAliveResponse>, Status> {
            Err(Status::unimplemented("not in the fake"))
        }
        async fn validate(
            &self,
            _: Request<pb::ValidateRequest>,
        ) -> Result<Response<pb::ValidateResponse>, Status> {
            Err(Status::unimplemented("not in the fake"))
        }
        async fn release(
            &self,
            request: Request<pb::ReleaseRequest>,
        ) -> Result<Response<pb::ReleaseResponse>, Status> {
            let session = request.into_inner().session;
            let mut freed_by = self.freed_by.lock().unwrap();
            match &*freed_by {
                None => {
                    *freed_by = Some(session);
                    Err(Status::unavailable("connection reset (the reply was lost)"))
                }
                Some(first) if first.is_some() && *first == session => {
                    Ok(Response::new(pb::ReleaseResponse { header: None }))
                }
                Some(_) => Err(Status::failed_precondition(
                    "stale token 3 for lock L (current: none, the lock is not held)",
                )),
            }
        }
    }

    #[tokio::test]
    async fn a_release_whose_reply_was_lost_is_resent_with_its_session() {
        let fake = LosesFirstReleaseReply::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LockServer::new(fake.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let options = ClientOptions {
            timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(1),
            ..ClientOptions::default()
        };
        let mut client = Client::with_options(vec![addr], options).unwrap();
        client.release("L", 3).await.unwrap();
        let freed_by = fake.freed_by.lock().unwrap().flatten().unwrap();
        assert_eq!(freed_by.client_id, client.client_id());
    }
}
