//! Tunables of [`super::Client`].

use std::time::Duration;

/// How long the client waits and how it backs off. `Default` suits a LAN cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline of one operation, retries and redirects included (default 10 s).
    pub timeout: Duration,
    /// Longest one RPC attempt may wait for an answer before the client tries another node
    /// (default 2 s). Bounds the time lost on a frozen node that accepts connections but
    /// never answers; for a request the server may hold longer (a waiting acquire) the
    /// HTTP/2 keep-alive pings, sent every half of it, bound that time instead.
    pub attempt_timeout: Duration,
    /// TCP connect timeout per endpoint (default 300 ms), so a dead node costs little.
    pub connect_timeout: Duration,
    /// First backoff delay between retries (default 20 ms); doubles after each failure.
    pub backoff_initial: Duration,
    /// Largest backoff delay (default 500 ms).
    pub backoff_max: Duration,
    /// Follow a node's "not leader, try node Y" answer to Y (default true). When false, that
    /// answer ends the operation as a [`ClientError::Server`](super::ClientError::Server)
    /// error carrying the node's words (`kvctl --no-redirect`: ask one node only).
    pub follow_redirects: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(300),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            follow_redirects: true,
        }
    }
}

impl ClientOptions {
    /// The defaults with a different overall timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }
}
