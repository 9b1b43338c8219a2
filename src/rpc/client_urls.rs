//! Where clients reach each member: this node's advertised client address
//! (`--advertise-client-urls`, else `--host:--port`), and the ones its peers advertise.
//!
//! A follower redirects clients to the leader (`leader-addr`), and `--peers` says only where
//! this node dials the leader, which clients may not be able to (`127.0.0.1`, an internal
//! name). So every outgoing Raft call carries the caller's advertised address in the
//! [`CLIENT_URL_KEY`] request metadata (`rpc/peer.rs`), and the Raft service records it for
//! the sending member ([`ClientUrls::learn`]): checked like the flag
//! ([`config::parse_client_url`]), kept only for configured peers, so the table is bounded by
//! the membership. etcd publishes member client URLs through its log; the peer calls are
//! enough here, since a follower hears from its leader every heartbeat.
//!
//! The `ClientError::NotLeader` -> `Status` conversion (`status.rs`) runs inside the
//! services' handlers; `ClientUrls` is also the tower layer the server runs every call in
//! ([`Scoped`]), so that conversion finds this table ([`advertised_address_of`]) and names the
//! leader's advertised address, falling back to the configured one (outside a scope, as in
//! unit tests, or in a task a handler spawned, it keeps the configured one).

use crate::config::{self, NodeConfig};
use crate::raft::NodeId;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::futures::TaskLocalFuture;
use tonic::codegen::{http, Service};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tracing::{debug, warn};

/// Request metadata key of the caller's advertised client address (`HOST:PORT`) on every
/// Raft call.
pub const CLIENT_URL_KEY: &str = "kvstore-client-url";

/// After a warning about a bad advertised address from a peer, the next waits this long
/// (the others are logged at debug level).
const WARN_INTERVAL: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// The table of the node whose client service is handling the current request.
    static CURRENT: ClientUrls;
}

/// The advertised client addresses of this node and its peers. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ClientUrls(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: NodeId,
    /// This node's advertised address.
    own: String,
    /// The same, as the metadata value peer calls carry (`None` if not valid metadata, which
    /// a validated config rules out).
    own_value: Option<AsciiMetadataValue>,
    /// The peers' configured (dial) addresses: the fallback, and who may advertise.
    configured: BTreeMap<NodeId, String>,
    /// What the peers advertised on their last calls.
    learned: RwLock<HashMap<NodeId, String>>,
    /// When a bad advertised address was last warned about.
    warned: Mutex<Option<Instant>>,
}

impl ClientUrls {
    /// The table of the node configured by `config`, knowing no peer's advertised address yet.
    pub fn new(config: &NodeConfig) -> Self {
        let own = config.client_address();
        ClientUrls(Arc::new(Inner {
            id: config.id,
            own_value: AsciiMetadataValue::try_from(own.as_str()).ok(),
            own,
            configured: config
                .peers
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect(),
            learned: RwLock::new(HashMap::new()),
            warned: Mutex::new(None),
        }))
    }

    /// This node's advertised client address.
    pub fn own(&self) -> &str {
        &self.0.own
    }

    /// Where clients reach member `id`: this node's advertised address, a peer's advertised
    /// one once it was heard, else the peer's configured address; `None` for a non-member.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        if id == self.0.id {
            return Some(self.0.own.clone());
        }
        let learned = self
            .0
            .learned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        learned.or_else(|| self.0.configured.get(&id).cloned())
    }

    /// Adds this node's advertised address to an outgoing Raft call.
    pub fn tag<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(value) = &self.0.own_value {
            request.metadata_mut().insert(CLIENT_URL_KEY, value.clone());
        }
        request
    }

    /// Records the address peer `from` advertised in `metadata` (a Raft call's), if any and
    /// valid; a bad one is ignored with a rate-limited warning.
    pub fn learn(&self, from: NodeId, metadata: &MetadataMap) {
        let Some(value) = metadata.get(CLIENT_URL_KEY) else {
            return;
        };
        let url = match value.to_str() {
            Ok(url) if url.len() <= config::MAX_CLIENT_URL_BYTES => url,
            _ => return self.refuse(from, "not a short ASCII HOST:PORT".into()),
        };
        match config::parse_client_url(url) {
            Ok(normal) if normal == url => {}
            Ok(_) => return self.refuse(from, format!("{url:?} is not HOST:PORT")),
            Err(reason) => return self.refuse(from, format!("{url:?}: {reason}")),
        }
        if !self.0.configured.contains_key(&from) {
            debug!(from, url, "client address from a non-member ignored");
            return;
        }
        let known = self
            .0
            .learned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&from)
            .is_some_and(|u| u == url);
        if !known {
            debug!(peer = from, url, "peer advertises its client address");
            self.0
                .learned
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(from, url.to_string());
        }
    }

    fn refuse(&self, from: NodeId, why: String) {
        let now = Instant::now();
        let mut warned = self.0.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL) {
            *warned = Some(now);
            drop(warned);
            warn!(
                peer = from,
                "ignoring the client address a peer advertises: {why}"
            );
        } else {
            debug!(
                peer = from,
                "ignoring the client address a peer advertises: {why}"
            );
        }
    }

    /// `future` run with this table in scope: redirects built in it name advertised addresses
    /// ([`advertised_address_of`]).
    pub fn within<F: Future>(&self, future: F) -> TaskLocalFuture<ClientUrls, F> {
        CURRENT.scope(self.clone(), future)
    }
}

/// Runs a service's calls with this table in scope, so the redirects its handlers build name
/// advertised addresses ([`advertised_address_of`]).
impl<S> tower_layer::Layer<S> for ClientUrls {
    type Service = Scoped<S>;

    fn layer(&self, inner: S) -> Scoped<S> {
        Scoped {
            urls: self.clone(),
            inner,
        }
    }
}

/// Where clients reach member `id`, from the table of the node whose client service is
/// handling the current request; `None` outside such a handler, or for a non-member.
pub fn advertised_address_of(id: NodeId) -> Option<String> {
    CURRENT.try_with(|urls| urls.address_of(id)).ok().flatten()
}

/// A service whose calls run with a [`ClientUrls`] in scope (its tower layer).
#[derive(Clone, Debug)]
pub struct Scoped<S> {
    urls: ClientUrls,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Scoped<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<ClientUrls, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.urls.within(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_peers;

    fn urls() -> ClientUrls {
        let mut config = NodeConfig::new(1, 9001);
        config.peers = parse_peers("9002,9003", 1).unwrap();
        config.advertise_client_urls = vec!["kv-1.example:2379".into()];
        ClientUrls::new(&config)
    }

    fn advertising(url: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(CLIENT_URL_KEY, url.parse().unwrap());
        md
    }

    #[test]
    fn peers_fall_back_to_their_configured_address_until_heard() {
        let urls = urls();
        assert_eq!(urls.own(), "kv-1.example:2379");
        assert_eq!(urls.address_of(1).as_deref(), Some("kv-1.example:2379"));
        assert_eq!(urls.address_of(2).as_deref(), Some("127.0.0.1:9002"));
        urls.learn(2, &advertising("kv-2.example:2379"));
        assert_eq!(urls.address_of(2).as_deref(), Some("kv-2.example:2379"));
        assert_eq!(urls.address_of(3).as_deref(), Some("127.0.0.1:9003"));
        // A restart with another address replaces it; a call without one keeps it.
        urls.learn(2, &advertising("10.0.0.2:9002"));
        urls.learn(2, &MetadataMap::new());
        assert_eq!(urls.address_of(2).as_deref(), Some("10.0.0.2:9002"));
        assert_eq!(urls.address_of(9), None);
    }

    #[test]
    fn bad_or_foreign_advertised_addresses_are_ignored() {
        let urls = urls();
        let long = format!("{}:1", "a".repeat(config::MAX_CLIENT_URL_BYTES));
        for bad in [
            "0.0.0.0:9002",
            "http://kv-2:1",
            "kv-2",
            "kv-2:0",
            "a b:1",
            long.as_str(),
        ] {
            urls.learn(2, &advertising(bad));
            assert_eq!(
                urls.address_of(2).as_deref(),
                Some("127.0.0.1:9002"),
                "{bad}"
            );
        }
        // Not a member: never stored, so the table stays bounded.
        urls.learn(7, &advertising("kv-7:1"));
        assert_eq!(urls.address_of(7), None);
        // Nor may a peer advertise for this node.
        urls.learn(1, &advertising("kv-x:1"));
        assert_eq!(urls.address_of(1).as_deref(), Some("kv-1.example:2379"));
    }

    #[test]
    fn outgoing_calls_carry_the_own_address() {
        let request = urls().tag(tonic::Request::new(()));
        assert_eq!(
            request.metadata().get(CLIENT_URL_KEY).unwrap(),
            "kv-1.example:2379"
        );
    }

    #[tokio::test]
    async fn the_scope_resolves_advertised_addresses_for_its_handlers() {
        let urls = urls();
        urls.learn(3, &advertising("kv-3.example:2379"));
        assert_eq!(advertised_address_of(3), None);
        let inside = urls.within(async { advertised_address_of(3) }).await;
        assert_eq!(inside.as_deref(), Some("kv-3.example:2379"));
    }
}
