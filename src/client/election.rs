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
//! The client counts on a clock that keeps running while the system is suspended (Linux
//! `CLOCK_BOOTTIME`, see `clock.rs`), not on tokio's monotonic clock, which stops: after a
//! suspend longer than the TTL the lease is over, and [`Leadership::is_lost`] says so at
//! once, at the call itself, whatever the keep-alive task is doing. The leadership also
//! counts as lost as soon as the keep-alive task ends for any reason (a refused renewal, a
//! panic, an abort).
//!
//! That is only an early warning: a process can be paused (GC, SIGSTOP, a slow disk)
//! between checking [`Leadership::is_lost`] and writing. The fence is what makes it safe:
//! [`Leadership::put`] carries the token, and the store rejects it atomically at apply time
//! once a newer token exists. So `put` does not consult `is_lost` itself; the store decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::clock::LeaseClock;
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

/// Longest a wait on the lease clock sleeps on tokio's clock before reading the lease clock
/// again: after a suspend, the time it takes to notice that the lease ran out.
const CLOCK_CHECK: Duration = Duration::from_millis(100);

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
        client: Client,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Leadership, ClientError> {
        Self::campaign_on(client, name, holder, ttl, LeaseClock::default()).await
    }

    /// [`Election::campaign`], counting the lease on `clock`.
    async fn campaign_on(
        mut client: Client,
        name: &str,
        holder: &str,
        ttl: Duration,
        clock: LeaseClock,
    ) -> Result<Leadership, ClientError> {
        let holder = unique_holder(holder)?;
        let wait = ttl / RENEWALS_PER_TTL;
        let options = client.options().clone();
        let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        let (token, renewed_at) = loop {
            let sent = clock.now();
            let error = match client.acquire(name, &holder, ttl, wait).await {
                Ok(lease) => {
                    // A long-retried acquire leaves little of the lease by our count:
                    // re-anchor it with a renewal before claiming leadership.
                    if clock.now().saturating_sub(sent) < wait {
                        break (lease.token, sent);
                    }
                    backoff = Backoff::new(options.backoff_initial, options.backoff_max);
                    let renew_sent = clock.now();
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
        let lease = Arc::new(LeaseState::new(clock, ttl, renewed_at));
        let task = KeepAliveTask(tokio::spawn(keep_alive(
            keeper,
            name.to_string(),
            token,
            lease.clone(),
            LostOnDrop(lost_tx),
        )));
        Ok(Leadership {
            client,
            fence: Fence::new(name, token),
            holder,
            lease,
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
    /// When the lease was last renewed, shared with the keep-alive task.
    lease: Arc<LeaseState>,
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

    /// Whether the leadership is lost: a renewal was refused, no renewal succeeded for a
    /// whole TTL on the lease clock (checked now, at this call: a suspend longer than the
    /// TTL counts), or the keep-alive task ended for any reason (a panic included). Once
    /// true it stays true.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.task.0.is_finished() || self.lease.expired()
    }

    /// A receiver that turns `true` when the leadership is lost: set by the keep-alive task
    /// when a renewal is refused, when the lease runs out on the lease clock (noticed within
    /// about 100 ms, also after a suspend), or when the task ends for any other reason.
    /// [`Leadership::is_lost`] checks the clock itself and can be true slightly earlier.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Resolves when the leadership is lost (as [`Leadership::is_lost`] tells it).
    pub async fn wait_lost(&mut self) {
        while !self.is_lost() {
            let left = self.lease.left().min(CLOCK_CHECK);
            // Err: the task ended, which the next is_lost sees.
            let _ = tokio::time::timeout(left, self.lost.changed()).await;
        }
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

/// The lease as the client counts it, on the lease clock.
#[derive(Debug)]
struct LeaseState {
    clock: LeaseClock,
    ttl: Duration,
    /// When the last successful renewal (or the grant) was sent, in nanoseconds on `clock`.
    renewed_at: AtomicU64,
    /// Makes the keep-alive task panic at its next renewal (tests: a task that dies).
    #[cfg(test)]
    panic_at_renewal: std::sync::atomic::AtomicBool,
}

impl LeaseState {
    fn new(clock: LeaseClock, ttl: Duration, renewed_at: Duration) -> Self {
        Self {
            clock,
            ttl,
            renewed_at: AtomicU64::new(nanos(renewed_at)),
            #[cfg(test)]
            panic_at_renewal: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn renewed_at(&self) -> Duration {
        Duration::from_nanos(self.renewed_at.load(Ordering::Acquire))
    }

    /// Records a successful renewal sent at `sent`.
    fn renewed(&self, sent: Duration) {
        self.renewed_at.fetch_max(nanos(sent), Ordering::AcqRel);
    }

    /// When the lease ends by the client's count.
    fn expires(&self) -> Duration {
        self.renewed_at() + self.ttl
    }

    fn expired(&self) -> bool {
        self.clock.now() >= self.expires()
    }

    /// What is left of the lease.
    fn left(&self) -> Duration {
        self.expires().saturating_sub(self.clock.now())
    }

    /// Sleeps until `at` on the lease clock, reading it at least every [`CLOCK_CHECK`] (a
    /// tokio timer alone would not count the time the system was suspended).
    async fn sleep_until(&self, at: Duration) {
        loop {
            let left = at.saturating_sub(self.clock.now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(CLOCK_CHECK)).await;
        }
    }
}

/// A duration in whole nanoseconds (saturating; the lease clock counts from boot).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Reports the leadership lost when dropped: however the keep-alive task ends (returning,
/// panicking, aborted), its future is dropped and with it this guard.
#[derive(Debug)]
struct LostOnDrop(watch::Sender<bool>);

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
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
/// since the last one was sent (on the lease clock); then ends, and `_lost` reports the loss
/// (as it does if the task panics or is aborted).
async fn keep_alive(
    mut client: Client,
    name: String,
    token: u64,
    lease: Arc<LeaseState>,
    _lost: LostOnDrop,
) {
    let period = lease.ttl / RENEWALS_PER_TTL;
    loop {
        lease.sleep_until(lease.renewed_at() + period).await;
        loop {
            #[cfg(test)]
            if lease.panic_at_renewal.load(Ordering::Relaxed) {
                panic!("injected keep-alive panic");
            }
            let sent = lease.clock.now();
            let expires = lease.expires();
            if sent >= expires {
                return;
            }
            let outcome = tokio::select! {
                outcome = client.keep_alive(&name, token) => outcome,
                () = lease.sleep_until(expires) => return,
            };
            match outcome {
                Ok(_) => {
                    lease.renewed(sent);
                    break;
                }
                Err(ClientError::FailedPrecondition(_)) => return,
                Err(_) => {
                    let retry_at = (lease.clock.now() + RENEW_RETRY).min(expires);
                    lease.sleep_until(retry_at).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
