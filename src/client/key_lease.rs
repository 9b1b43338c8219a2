//! Leases on keys through the `kvstore.v1` Lease service: [`Client::grant_lease`](super::Client::grant_lease),
//! [`Client::revoke_lease`](super::Client::revoke_lease), [`Client::lease_time_to_live`](super::Client::lease_time_to_live), [`Client::leases`](super::Client::leases), and
//! [`Client::keep_lease_alive`](super::Client::keep_lease_alive), a handle whose background task renews the lease until it is
//! dropped.
//!
//! The keeper renews every third of the lease's TTL on a KeepAlive stream to the leader
//! (a follower answers UNAVAILABLE with the leader's address; the keeper goes there). When
//! a stream breaks it opens another on the next node, after a backoff; the lease survives as
//! long as one renewal lands within each TTL. A renewal answered with TTL 0 means the lease
//! is gone (revoked, or it ran out while no node could be reached): the keeper stops and
//! [`LeaseKeeper::lost`] reports it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::endpoints::{self, Endpoints};
use super::kv_client::Header;
use super::retry::{classify, Backoff, Verdict};
use super::{ClientError, ClientOptions};
use crate::pb;

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedLease {
    /// Its id (attach keys with [`Client::put_with_lease`](super::Client::put_with_lease)).
    pub id: i64,
    /// Its TTL in seconds (the cluster may have raised the one asked for to its minimum).
    pub ttl: i64,
    /// Where the grant took effect.
    pub header: Header,
}

/// The answer to [`Client::lease_time_to_live`](super::Client::lease_time_to_live).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// Seconds left on the leader's clock; -1 when the lease does not exist.
    pub ttl: i64,
    /// The TTL it was granted with.
    pub granted_ttl: i64,
    /// The keys attached (when asked for).
    pub keys: Vec<String>,
}

impl super::Client {
    /// Grants a lease of `ttl_seconds` (`id` 0: the cluster picks the id).
    ///
    /// # Errors
    /// As for [`Client::put`](super::Client::put); an id in use or a TTL too large is [`ClientError::Server`]
    /// with etcd's message.
    pub async fn grant_lease(
        &mut self,
        ttl_seconds: i64,
        id: i64,
    ) -> Result<GrantedLease, ClientError> {
        let request = pb::LeaseGrantRequest {
            ttl: ttl_seconds,
            id,
        };
        let r = self
            .run("lease grant", true, |channel| async move {
                endpoints::lease(channel).grant(request).await
            })
            .await?;
        Ok(GrantedLease {
            id: r.id,
            ttl: r.ttl,
            header: r.header.into(),
        })
    }

    /// Revokes lease `id`: every key attached to it is deleted, at one revision.
    ///
    /// # Errors
    /// As for [`Client::put`](super::Client::put); an unknown lease is [`ClientError::Server`] with
    /// `requested lease not found`.
    pub async fn revoke_lease(&mut self, id: i64) -> Result<Header, ClientError> {
        let request = pb::LeaseRevokeRequest { id };
        let r = self
            .run("lease revoke", true, |channel| async move {
                endpoints::lease(channel).revoke(request).await
            })
            .await?;
        Ok(r.header.into())
    }

    /// The remaining and granted TTL of lease `id`, with its keys if `keys`.
    ///
    /// # Errors
    /// As for [`Client::get`](super::Client::get).
    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLive, ClientError> {
        let request = pb::LeaseTimeToLiveRequest { id, keys };
        let r = self
            .run("lease timetolive", true, |channel| async move {
                endpoints::lease(channel).time_to_live(request).await
            })
            .await?;
        Ok(LeaseTimeToLive {
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys: r.keys,
        })
    }

    /// The ids of every lease.
    ///
    /// # Errors
    /// As for [`Client::get`](super::Client::get).
    pub async fn leases(&mut self) -> Result<Vec<i64>, ClientError> {
        let r = self
            .run("lease list", true, |channel| async move {
                endpoints::lease(channel)
                    .leases(pb::LeaseLeasesRequest {})
                    .await
            })
            .await?;
        Ok(r.ids)
    }

    /// Keeps lease `id` alive until the returned handle is dropped (see the module doc).
    pub fn keep_lease_alive(&self, id: i64) -> Result<LeaseKeeper, ClientError> {
        let endpoints = Endpoints::new(self.endpoints().to_vec())?;
        let (ttl_tx, ttl_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let task = KeeperTask {
            endpoints,
            options: self.options().clone(),
            id,
            ttl: ttl_tx,
            stop: stop_rx,
        };
        tokio::spawn(task.run());
        Ok(LeaseKeeper {
            id,
            ttl: ttl_rx,
            _stop: stop_tx,
        })
    }
}

/// Renews a lease in the background until dropped.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    /// The TTL of the last renewal: `None` before the first, `Some(0)` once the lease is
    /// gone.
    ttl: watch::Receiver<Option<i64>>,
    /// Dropped with the keeper: its task sees the channel close and stops.
    _stop: mpsc::Sender<()>,
}

impl LeaseKeeper {
    /// The lease kept alive.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the last renewal answered (`None` before the first).
    pub fn last_ttl(&self) -> Option<i64> {
        *self.ttl.borrow()
    }

    /// Waits until the lease is known to be gone (a renewal answered TTL 0).
    pub async fn lost(&mut self) {
        let _ = self.ttl.wait_for(|ttl| *ttl == Some(0)).await;
    }
}

/// The background side of a [`LeaseKeeper`].
struct KeeperTask {
    endpoints: Endpoints,
    options: ClientOptions,
    id: i64,
    ttl: watch::Sender<Option<i64>>,
    stop: mpsc::Receiver<()>,
}

impl KeeperTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        loop {
            let addr = self.endpoints.pick();
            let Ok(channel) = self.endpoints.channel(&addr, &self.options) else {
                return;
            };
            match self.stream(channel).await {
                Ok(()) => return,
                Err(Verdict::Redirect(leader)) if leader != addr => {
                    if !self.endpoints.set_leader(&leader) {
                        self.endpoints.forget_leader(&addr);
                    }
                    continue;
                }
                Err(Verdict::Fail(e)) => {
                    tracing::warn!(lease = self.id, error = %e, "lease keep-alive failed for good");
                    let _ = self.ttl.send(Some(0));
                    return;
                }
                Err(_) => self.endpoints.forget_leader(&addr),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.stop.recv() => return,
            }
        }
    }

    /// Renews on one stream until it breaks (`Err`), the lease is gone or the keeper was
    /// dropped (`Ok`).
    async fn stream(&mut self, channel: Channel) -> Result<(), Verdict> {
        let (req_tx, req_rx) = mpsc::channel(1);
        let request = pb::LeaseKeepAliveRequest { id: self.id };
        let _ = req_tx.try_send(request);
        let opened = tokio::time::timeout(
            self.options.attempt_timeout,
            endpoints::lease(channel)
                .keep_alive(tokio_stream::wrappers::ReceiverStream::new(req_rx)),
        )
        .await;
        let mut responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(classify(&status)),
            Err(_) => return Err(Verdict::Retry),
        };
        loop {
            let answer = tokio::time::timeout(self.options.attempt_timeout, responses.message());
            let ttl = tokio::select! {
                a = answer => match a {
                    Ok(Ok(Some(r))) => r.ttl,
                    Ok(Ok(None)) | Err(_) => return Err(Verdict::Retry),
                    Ok(Err(status)) => return Err(classify(&status)),
                },
                _ = self.stop.recv() => return Ok(()),
            };
            let _ = self.ttl.send(Some(ttl));
            if ttl <= 0 {
                tracing::warn!(
                    lease = self.id,
                    "lease is gone: its keep-alive answered ttl 0"
                );
                return Ok(());
            }
            // Renew at a third of the TTL, as etcd's clients do.
            let pause = Duration::from_millis((ttl as u64).saturating_mul(1000) / 3)
                .max(Duration::from_millis(100));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = self.stop.recv() => return Ok(()),
            }
            if req_tx.send(request).await.is_err() {
                return Err(Verdict::Retry);
            }
        }
    }
}
