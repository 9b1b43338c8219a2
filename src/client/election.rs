//! Leader election for client services on top of a kvstore lock: [`Election::campaign`]
//! waits until it holds the lock, then keeps the lease alive in the background and reports
//! its loss; [`Leadership`] writes fenced with the lock's token.
//!
//! # Holders
//! Each campaign acquires the lock as its own holder: the given name plus a random 64-bit
//! suffix (`worker-1/1f3a9c2e7b5d4a60`). A same-holder Acquire renews and returns the same
//! token, so a replacement process started with the same name must not share the holder: it
//! waits for the old lease to end and gets a higher token. Retries within one campaign reuse
//! its holder (idempotent). Between refused attempts the campaign backs off with the
//! client's [`ClientOptions::backoff_initial`]..[`ClientOptions::backoff_max`].
//!
//! # Timing assumption
//! The store's leader measures a lease from the moment it applies the grant or renewal,
//! which is after the client sent the request. The client counts the lease from the moment
//! it *sent* the request that succeeded, so its own view of the lease ends first, provided
//! its clock does not run slower than the store leader's (bounded clock-rate drift; no
//! clock synchronisation is needed). When a renewal has not succeeded for a whole TTL
//! measured that way, the client declares the leadership lost without asking anyone.
//!
//! That is only an early warning: a process can be paused (GC, SIGSTOP, a slow disk)
//! between checking [`Leadership::is_lost`] and writing. The fence is what makes it safe:
//! [`Leadership::put`] carries the token, and the store rejects it atomically at apply time
//! once a newer token exists. So `put` does not consult `is_lost` itself; the store decides.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::kv_client::{random_id, DeleteResult, Header};
use super::retry::Backoff;
use super::{Client, ClientError, ClientOptions, Fence};

/// Renewals per TTL: the keep-alive runs every `ttl / RENEWALS_PER_TTL`.
const RENEWALS_PER_TTL: u32 = 3;

/// The store's limit on a holder's length in bytes (the same as for keys).
const MAX_HOLDER_BYTES: usize = 4096;

/// What [`unique_holder`] appends: `/` and 16 hex digits.
const HOLDER_SUFFIX_BYTES: usize = 17;

/// Pause between two failed renewal attempts (bounded by what is left of the lease).
const RENEW_RETRY: Duration = Duration::from_millis(50);

/// Campaigns for leadership (see the module doc).
#[derive(Debug)]
pub struct Election;

impl Election {
    /// Waits until this campaign holds lock `name` (retrying the acquire, each waiting up to
    /// a third of `ttl` on the server, with the client's backoff between attempts, for as
    /// long as it takes; wrap it in a timeout to bound it), then starts the background
    /// keep-alive (every `ttl / 3`).
    ///
    /// The lock's holder is `holder` plus a random per-campaign suffix
    /// (`HOLDER/1f3a9c2e7b5d4a60`, see [`Leadership::holder`]), so two processes started with
    /// the same name never share a token: the second waits for the first. Every retry within
    /// one campaign uses the same holder, so a retried acquire is idempotent.
    ///
    /// # Errors
    /// Only errors retrying cannot fix (an empty or too long `holder`, an invalid name or
    /// TTL); an unavailable cluster or a lock held by someone else make it wait.
    pub async fn campaign(
        mut client: Client,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Leadership, ClientError> {
        let holder = unique_holder(holder)?;
        let wait = ttl / RENEWALS_PER_TTL;
        let options = client.options().clone();
        let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        let (token, renewed_at) = loop {
            let sent = Instant::now();
            let error = match client.acquire(name, &holder, ttl, wait).await {
                Ok(lease) => {
                    // A long-retried acquire leaves little of the lease by our count:
                    // re-anchor it with a renewal before claiming leadership.
                    if sent.elapsed() < wait {
                        break (lease.token, sent);
                    }
                    backoff = Backoff::new(options.backoff_initial, options.backoff_max);
                    let renew_sent = Instant::now();
                    match client.keep_alive(name, lease.token).await {
                        Ok(_) => break (lease.token, renew_sent),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if !retryable_campaign_error(&error) {
                return Err(error);
            }
            // Held by someone else (the server already waited), or no answer in time: pause
            // before the next attempt, so a lock held elsewhere or a server that refuses at
            // once is not asked in a tight loop.
            tokio::time::sleep(backoff.next_delay()).await;
        };
        let keeper = Client::with_options(
            client.endpoints().to_vec(),
            ClientOptions {
                timeout: wait,
                attempt_timeout: options.attempt_timeout.min(wait),
                ..options
            },
        )?;
        let (lost_tx, lost) = watch::channel(false);
        let task = KeepAliveTask(tokio::spawn(keep_alive(
            keeper,
            name.to_string(),
            token,
            ttl,
            renewed_at,
            lost_tx,
        )));
        Ok(Leadership {
            client,
            fence: Fence::new(name, token),
            holder,
            lost,
            task,
        })
    }
}

/// `holder` plus a random 64-bit suffix in hex: unique per campaign.
///
/// # Errors
/// `holder` is empty, or too long to fit the store's holder limit with the suffix.
fn unique_holder(holder: &str) -> Result<String, ClientError> {
    if holder.is_empty() {
        return Err(ClientError::InvalidArgument(
            "holder name must not be empty".into(),
        ));
    }
    let limit = MAX_HOLDER_BYTES - HOLDER_SUFFIX_BYTES;
    if holder.len() > limit {
        return Err(ClientError::InvalidArgument(format!(
            "holder name is {} bytes, the limit for a campaign is {limit} (the store's {MAX_HOLDER_BYTES} less a {HOLDER_SUFFIX_BYTES}-byte unique suffix)",
            holder.len()
        )));
    }
    Ok(format!("{holder}/{:016x}", random_id()))
}

/// A held lock: its token, a fenced writer, and the loss signal.
#[derive(Debug)]
pub struct Leadership {
    client: Client,
    fence: Fence,
    holder: String,
    lost: watch::Receiver<bool>,
    task: KeepAliveTask,
}

impl Leadership {
    /// The fencing token of this term of leadership.
    pub fn token(&self) -> u64 {
        self.fence.token
    }

    /// The holder this campaign acquired the lock as: the given name plus its random
    /// suffix (`NAME/1f3a9c2e7b5d4a60`), as Validate reports it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fence every write of this leadership carries.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether the keep-alive has given the lease up (a renewal was refused, or none
    /// succeeded for a whole TTL). Once true it stays true.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// A receiver that turns `true` when the leadership is lost.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Resolves when the leadership is lost.
    pub async fn wait_lost(&mut self) {
        // An error means the keep-alive task ended, which it does only after losing.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Sets `key` to `value`, fenced with this leadership's token. The store rejects it
    /// with [`ClientError::FailedPrecondition`] once a newer token exists (see the module
    /// doc: this does not check [`Leadership::is_lost`] first).
    ///
    /// # Errors
    /// As for [`Client::put_fenced`].
    pub async fn put(&mut self, key: &str, value: &str) -> Result<Header, ClientError> {
        self.client.put_fenced(key, value, &self.fence).await
    }

    /// Deletes `key`, fenced with this leadership's token.
    ///
    /// # Errors
    /// As for [`Client::delete_fenced`].
    pub async fn delete(&mut self, key: &str) -> Result<DeleteResult, ClientError> {
        self.client.delete_fenced(key, &self.fence).await
    }

    /// Stops the keep-alive and releases the lock; returns the client.
    ///
    /// # Errors
    /// The release failed (a stale token means the lock was already lost); the lease then
    /// simply runs out.
    pub async fn resign(mut self) -> Result<Client, ClientError> {
        self.task.abort();
        let token = self.fence.token;
        let name = self.fence.lock.clone();
        self.client.release(&name, token).await?;
        Ok(self.into_client())
    }

    /// Stops the keep-alive without releasing (the lease runs out); returns the client.
    pub fn into_client(self) -> Client {
        self.task.abort();
        self.client
    }
}

/// The keep-alive task, aborted when the [`Leadership`] is dropped.
#[derive(Debug)]
struct KeepAliveTask(JoinHandle<()>);

impl KeepAliveTask {
    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for KeepAliveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a campaign should try again after `error`.
fn retryable_campaign_error(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::FailedPrecondition(_) | ClientError::Timeout { .. }
    )
}

/// Renews the lease every `ttl / 3` until a renewal is refused or none succeeded for `ttl`
/// since the last one was sent; then reports the loss and ends.
async fn keep_alive(
    mut client: Client,
    name: String,
    token: u64,
    ttl: Duration,
    mut renewed_at: Instant,
    lost: watch::Sender<bool>,
) {
    let period = ttl / RENEWALS_PER_TTL;
    'renewals: loop {
        tokio::time::sleep_until(renewed_at + period).await;
        loop {
            let expires = renewed_at + ttl;
            let now = Instant::now();
            if now >= expires {
                break 'renewals;
            }
            match tokio::time::timeout(expires - now, client.keep_alive(&name, token)).await {
                Ok(Ok(_)) => {
                    renewed_at = now;
                    continue 'renewals;
                }
                Ok(Err(ClientError::FailedPrecondition(_))) | Err(_) => break 'renewals,
                Ok(Err(_)) => {
                    let left = expires.saturating_duration_since(Instant::now());
                    tokio::time::sleep(RENEW_RETRY.min(left)).await;
                }
            }
        }
    }
    let _ = lost.send(true);
}

#[cfg(test)]
mod tests;
