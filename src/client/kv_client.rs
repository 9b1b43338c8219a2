//! [`Client`]: the operations, and the one retry loop they all run through.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Status;

use super::endpoints::{self, Endpoints};
use super::retry::{classify, describe, Backoff, Verdict};
use super::{ClientError, ClientOptions, Consistency, Fence};
use crate::pb;

/// Redirects followed back to back without a backoff pause; more than this in a row means
/// the nodes disagree about the leader (an election is under way), so the client waits.
const MAX_IMMEDIATE_REDIRECTS: u32 = 3;

/// The least time worth starting another attempt with.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// Where and when an operation took effect (the response header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The node that answered.
    pub node_id: u64,
    /// Its term when it answered.
    pub term: u64,
    /// The log index the operation took effect at (reads: the index served at).
    pub index: u64,
    /// The key space's revision after the operation (reads: the revision served from).
    pub revision: i64,
}

impl From<Option<pb::ResponseHeader>> for Header {
    fn from(header: Option<pb::ResponseHeader>) -> Self {
        let header = header.unwrap_or_default();
        Self {
            node_id: header.node_id,
            term: header.term,
            index: header.index,
            revision: header.revision,
        }
    }
}

/// The answer to [`Client::get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// The value, or `None` when the key does not exist.
    pub value: Option<String>,
    /// Where it was read.
    pub header: Header,
}

/// The answer to [`Client::delete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteResult {
    /// Whether the key existed.
    pub deleted: bool,
    /// Where the delete took effect.
    pub header: Header,
}

/// One endpoint's answer to [`Client::status_all`].
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// The endpoint asked (`HOST:PORT`).
    pub address: String,
    /// Its status, or why it could not be had.
    pub result: Result<pb::StatusResponse, ClientError>,
}

/// A kvstore client over a list of node endpoints. See the module doc for the retry rules.
#[derive(Debug)]
pub struct Client {
    endpoints: Endpoints,
    options: ClientOptions,
    /// This client's session id: random, non-zero.
    client_id: u64,
    /// The sequence the next write will carry (1-based, strictly increasing).
    next_sequence: u64,
    /// Whether the cluster has applied (or refused at apply time) a write of this session, so
    /// it knows `client_id`. Until then a write with a sequence above 1 would be refused as
    /// from an expired session.
    session_known: bool,
}

impl Client {
    /// A client with default options over `endpoints` (`HOST:PORT` or `http://HOST:PORT`).
    /// Connects lazily: no node needs to be up yet.
    ///
    /// # Errors
    /// No endpoints, or one that is not a valid address.
    pub fn new(endpoints: Vec<String>) -> Result<Self, ClientError> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// Like [`Client::new`] with explicit options.
    ///
    /// # Errors
    /// No endpoints, or one that is not a valid address.
    pub fn with_options(
        endpoints: Vec<String>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            endpoints: Endpoints::new(endpoints)?,
            options,
            client_id: random_id(),
            next_sequence: 1,
            session_known: false,
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// This client's session id (sent with every write).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The configured endpoints (addresses learned from redirects are kept apart: at most a
    /// few, each dropped when an attempt to it fails).
    pub fn endpoints(&self) -> &[String] {
        self.endpoints.addrs()
    }

    /// Sets `key` to `value` through the leader, exactly once.
    ///
    /// # Errors
    /// The request is invalid, or no leader acknowledged it before the deadline (it may
    /// still have been applied; retrying with the same client is safe only for the same
    /// call, so treat the outcome as unknown), or [`ClientError::UnknownOutcome`]: the
    /// cluster had dropped this client's session, so it refused the write and cannot say
    /// whether an earlier attempt of it applied.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<Header, ClientError> {
        self.put_with(key, value, None, 0).await
    }

    /// Sets `key` to `value` attached to lease `lease` (see [`Client::grant_lease`]): the key
    /// is deleted when the lease is revoked or runs out.
    ///
    /// # Errors
    /// As for [`Client::put`]; a lease that does not exist is [`ClientError::Server`] with
    /// the server's `requested lease not found`.
    pub async fn put_with_lease(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<Header, ClientError> {
        self.put_with(key, value, None, lease).await
    }

    /// Sets `key` to `value` only if `fence` names the current holder of its lock: the
    /// store checks the token when it applies the write, atomically with it.
    ///
    /// # Errors
    /// As for [`Client::put`]; a stale token is [`ClientError::FailedPrecondition`]
    /// (`stale fencing token N for lock L (current M)`) and is never retried.
    pub async fn put_fenced(
        &mut self,
        key: &str,
        value: &str,
        fence: &Fence,
    ) -> Result<Header, ClientError> {
        self.put_with(key, value, Some(fence.into()), 0).await
    }

    async fn put_with(
        &mut self,
        key: &str,
        value: &str,
        fence: Option<pb::Fence>,
        lease: i64,
    ) -> Result<Header, ClientError> {
        let session = self.next_session();
        let request = pb::PutRequest {
            fence,
            key: key.to_string(),
            value: value.to_string(),
            session: Some(session),
            lease,
        };
        let response = self
            .run("put", true, |channel| {
                let request = request.clone();
                async move { endpoints::kv(channel).put(request).await }
            })
            .await;
        self.end_write(session.sequence, &response);
        Ok(response?.header.into())
    }

    /// Reads `key`. `Linearizable` goes to the leader; `Serializable` takes the first node
    /// that answers and may return stale data.
    ///
    /// # Errors
    /// The request is invalid, or no node answered before the deadline.
    pub async fn get(
        &mut self,
        key: &str,
        consistency: Consistency,
    ) -> Result<GetResult, ClientError> {
        let request = pb::GetRequest {
            key: key.to_string(),
            consistency: consistency.into(),
        };
        let needs_leader = consistency != Consistency::Serializable;
        let response = self
            .run("get", needs_leader, |channel| {
                let request = request.clone();
                async move { endpoints::kv(channel).get(request).await }
            })
            .await?;
        Ok(GetResult {
            value: response.found.then_some(response.value),
            header: response.header.into(),
        })
    }

    /// Deletes `key` through the leader, exactly once.
    ///
    /// # Errors
    /// As for [`Client::put`].
    pub async fn delete(&mut self, key: &str) -> Result<DeleteResult, ClientError> {
        self.delete_with(key, None).await
    }

    /// Deletes `key` only if `fence` names the current holder of its lock (see
    /// [`Client::put_fenced`]).
    ///
    /// # Errors
    /// As for [`Client::put_fenced`].
    pub async fn delete_fenced(
        &mut self,
        key: &str,
        fence: &Fence,
    ) -> Result<DeleteResult, ClientError> {
        self.delete_with(key, Some(fence.into())).await
    }

    async fn delete_with(
        &mut self,
        key: &str,
        fence: Option<pb::Fence>,
    ) -> Result<DeleteResult, ClientError> {
        let session = self.next_session();
        let request = pb::DeleteRequest {
            fence,
            key: key.to_string(),
            session: Some(session),
        };
        let response = self
            .run("delete", true, |channel| {
                let request = request.clone();
                async move { endpoints::kv(channel).delete(request).await }
            })
            .await;
        self.end_write(session.sequence, &response);
        let response = response?;
        Ok(DeleteResult {
            deleted: response.deleted,
            header: response.header.into(),
        })
    }

    /// Asks every known endpoint for its status, concurrently, one attempt each (bounded by
    /// the attempt timeout). The result is in endpoint order.
    pub async fn status_all(&mut self) -> Vec<NodeStatus> {
        let wait = self.options.attempt_timeout.min(self.options.timeout);
        let mut tasks = tokio::task::JoinSet::new();
        let addrs = self.endpoints.addrs().to_vec();
        for (position, address) in addrs.iter().enumerate() {
            let channel = self.endpoints.channel(address, &self.options);
            tasks.spawn(async move {
                let result = match channel {
                    Ok(channel) => status_of(channel, wait).await,
                    Err(e) => Err(e),
                };
                (position, result)
            });
        }
        let mut results: Vec<Option<Result<pb::StatusResponse, ClientError>>> =
            vec![None; addrs.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((position, result)) = joined {
                results[position] = Some(result);
            }
        }
        addrs
            .into_iter()
            .zip(results)
            .map(|(address, result)| NodeStatus {
                address,
                result: result
                    .unwrap_or_else(|| Err(ClientError::Unreachable("status task failed".into()))),
            })
            .collect()
    }

    /// Settles the session after a write that carried `sequence` ended with `result`:
    /// - an expired session ([`ClientError::UnknownOutcome`]) is replaced by a new one;
    /// - a timeout before the cluster knew the session also starts a new one (the next
    ///   sequence of a session whose first write never applied would be refused as expired);
    /// - a write refused before it reached the log (INVALID_ARGUMENT) gives its sequence back;
    /// - anything the state machine answered marks the session as known.
    pub(super) fn end_write<T>(&mut self, sequence: u64, result: &Result<T, ClientError>) {
        match result {
            Ok(_) | Err(ClientError::FailedPrecondition(_)) => self.session_known = true,
            Err(ClientError::UnknownOutcome(_)) => self.new_session(),
            Err(ClientError::Timeout { .. }) if !self.session_known => self.new_session(),
            Err(ClientError::InvalidArgument(_)) if self.next_sequence == sequence + 1 => {
                self.next_sequence = sequence;
            }
            Err(_) => {}
        }
    }

    fn new_session(&mut self) {
        self.client_id = random_id();
        self.next_sequence = 1;
        self.session_known = false;
    }

    pub(super) fn next_session(&mut self) -> pb::Session {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        pb::Session {
            client_id: self.client_id,
            sequence,
        }
    }

    /// Runs one operation until it succeeds, fails for good, or the deadline passes.
    /// `attempt` makes one RPC on a channel; it is called again for each retry with the
    /// same request (so a write keeps its session sequence).
    pub(super) async fn run<T, F, Fut>(
        &mut self,
        operation: &'static str,
        needs_leader: bool,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.run_waiting(operation, needs_leader, Duration::ZERO, attempt)
            .await
    }

    /// [`Client::run`] for an operation the server may hold for up to `server_wait` (a lock
    /// acquire that waits for the holder): that time is added to the overall deadline and to
    /// each attempt's timeout. A node that freezes meanwhile still costs only about one
    /// attempt timeout: the channel's HTTP/2 keep-alive pings go unanswered, the connection
    /// is dropped, and the attempt fails and is retried elsewhere (see `endpoints.rs`).
    pub(super) async fn run_waiting<T, F, Fut>(
        &mut self,
        operation: &'static str,
        needs_leader: bool,
        server_wait: Duration,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.options.timeout + server_wait;
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut attempts = 0u32;
        let mut redirects_in_row = 0u32;
        let mut last_error: String;
        loop {
            let addr = self.endpoints.pick();
            let channel = self.endpoints.channel(&addr, &self.options)?;
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(self.options.attempt_timeout + server_wait);
            attempts += 1;
            let mut pause = true;
            match tokio::time::timeout(wait, attempt(channel)).await {
                Ok(Ok(response)) => {
                    if needs_leader {
                        self.endpoints.set_leader(&addr);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    last_error = format!("{addr}: {}", describe(&status));
                    match classify(&status) {
                        Verdict::Fail(error) => return Err(error),
                        Verdict::Redirect(_) if !self.options.follow_redirects => {
                            return Err(ClientError::Server {
                                code: format!("{:?}", status.code()),
                                message: super::retry::one_line(status.message()),
                            });
                        }
                        Verdict::Redirect(leader) if leader != addr => {
                            if self.endpoints.set_leader(&leader) {
                                redirects_in_row += 1;
                                pause = redirects_in_row > MAX_IMMEDIATE_REDIRECTS;
                            } else {
                                self.endpoints.forget_leader(&addr);
                            }
                        }
                        Verdict::Redirect(_) | Verdict::Retry => {
                            self.endpoints.forget_leader(&addr);
                        }
                    }
                }
                Err(_elapsed) => {
                    last_error = format!("{addr}: no answer within {} ms", wait.as_millis());
                    self.endpoints.forget_leader(&addr);
                }
            }
            if pause {
                redirects_in_row = 0;
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(backoff.next_delay().min(remaining)).await;
            }
            // An attempt with almost no time left could not succeed anyway.
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                return Err(ClientError::Timeout {
                    operation,
                    elapsed_ms: started.elapsed().as_millis(),
                    attempts,
                    last_error,
                });
            }
        }
    }
}

async fn status_of(channel: Channel, wait: Duration) -> Result<pb::StatusResponse, ClientError> {
    let mut cluster = endpoints::cluster(channel);
    match tokio::time::timeout(wait, cluster.status(pb::StatusRequest {})).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err(
            ClientError::Unreachable(super::retry::one_line(status.message())),
        ),
        Ok(Err(status)) => Err(ClientError::Server {
            code: format!("{:?}", status.code()),
            message: super::retry::one_line(status.message()),
        }),
        Err(_elapsed) => Err(ClientError::Unreachable(format!(
            "no answer within {} ms",
            wait.as_millis()
        ))),
    }
}

/// A random non-zero id (session ids, campaign holder suffixes), from the OS-seeded keys of
/// std's `RandomState` mixed with the time and process id (so two clients started together
/// still differ).
pub(super) fn random_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests;
