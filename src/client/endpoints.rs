//! The endpoint list, the addresses learned from redirects, the cached leader and one lazily
//! connected channel per address.
//!
//! The configured endpoints never change. A redirect's address (`leader-addr`) is kept apart,
//! among at most [`MAX_LEARNED`] learned addresses (the oldest is dropped first), and is
//! dropped as soon as an attempt to it fails: a client that follows redirects for a long
//! time does not collect every address it was ever sent to.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::{ClientError, ClientOptions};
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::lease_client::LeaseClient;
use crate::pb::lock_client::LockClient;
use crate::pb::watch_client::WatchClient;
use crate::rpc::kv_service::CLIENT_MESSAGE_LIMIT;

/// A KV stub on `channel` with the servers' message-size limits: a 1 MiB value goes out
/// and comes back (tonic's default decode limit is not relied upon).
pub(crate) fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// A Lock stub on `channel` with the servers' message-size limits.
pub(crate) fn lock(channel: Channel) -> LockClient<Channel> {
    LockClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// A Lease stub on `channel` with the servers' message-size limits.
pub(crate) fn lease(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// A Watch stub on `channel` with the servers' message-size limits (a watch answer may be
/// larger than any request: one revision's values, each with its previous value).
pub(crate) fn watch(channel: Channel) -> WatchClient<Channel> {
    WatchClient::new(channel)
        .max_decoding_message_size(crate::rpc::etcd::member::ENCODE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// A Cluster stub on `channel` with the servers' message-size limits.
pub(crate) fn cluster(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// The shortest HTTP/2 keep-alive ping interval and timeout, however short the attempt
/// timeout: a busy node must not lose its connections to late pongs.
const MIN_PING: Duration = Duration::from_millis(250);

/// Most addresses learned from redirects kept at once.
pub(crate) const MAX_LEARNED: usize = 8;

/// Known node addresses (`HOST:PORT`), which one answered as leader last, and their channels.
///
/// Invariants: `leader`, when set, is in `addrs` or `learned`; `addrs` and `learned` are
/// disjoint and every address in them parses as a URI; `learned` holds at most
/// [`MAX_LEARNED`]; `channels` has keys only from `addrs` and `learned`.
#[derive(Debug)]
pub(crate) struct Endpoints {
    /// The configured endpoints, in the order given.
    addrs: Vec<String>,
    /// Addresses learned from redirects, oldest first.
    learned: VecDeque<String>,
    leader: Option<String>,
    /// Round-robin position for the next non-leader pick.
    cursor: usize,
    channels: HashMap<String, Channel>,
}

impl Endpoints {
    /// Validates and normalises `endpoints` (`HOST:PORT` or `http://HOST:PORT`).
    pub(crate) fn new(endpoints: Vec<String>) -> Result<Self, ClientError> {
        let mut addrs: Vec<String> = Vec::new();
        for endpoint in endpoints {
            let addr = normalise(&endpoint)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(Self {
            addrs,
            learned: VecDeque::new(),
            leader: None,
            cursor: 0,
            channels: HashMap::new(),
        })
    }

    /// The configured endpoints.
    pub(crate) fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The node to try next: the cached leader if any, else the next address in turn (the
    /// configured endpoints, then the learned ones).
    pub(crate) fn pick(&mut self) -> String {
        if let Some(leader) = &self.leader {
            return leader.clone();
        }
        let addr = self.in_turn(self.cursor).to_string();
        self.cursor = self.cursor.wrapping_add(1);
        addr
    }

    /// The address at rotation position `cursor`: the configured endpoints, then the
    /// learned ones.
    fn in_turn(&self, cursor: usize) -> &str {
        let position = cursor % (self.addrs.len() + self.learned.len());
        match self.addrs.get(position) {
            Some(addr) => addr,
            None => &self.learned[position - self.addrs.len()],
        }
    }

    /// Remembers `addr` as the leader; an address that is not a configured endpoint is
    /// learned (dropping the oldest learned one beyond [`MAX_LEARNED`]).
    /// Returns false (and changes nothing) when the address is not usable.
    pub(crate) fn set_leader(&mut self, addr: &str) -> bool {
        let Ok(addr) = normalise(addr) else {
            return false;
        };
        if !self.addrs.contains(&addr) && !self.learned.contains(&addr) {
            if self.learned.len() == MAX_LEARNED {
                if let Some(oldest) = self.learned.pop_front() {
                    self.channels.remove(&oldest);
                }
            }
            self.learned.push_back(addr.clone());
        }
        self.leader = Some(addr);
        true
    }

    /// An attempt to `addr` failed: forgets it as the cached leader (so the next pick
    /// rotates, and not straight back to `addr` when there is another address), and forgets
    /// it altogether if it was only learned from a redirect.
    pub(crate) fn forget_leader(&mut self, addr: &str) {
        if self.leader.as_deref() == Some(addr) {
            self.leader = None;
        }
        if let Some(position) = self.learned.iter().position(|a| a == addr) {
            self.learned.remove(position);
            self.channels.remove(addr);
        }
        if self.addrs.len() + self.learned.len() > 1 && self.in_turn(self.cursor) == addr {
            self.cursor = self.cursor.wrapping_add(1);
        }
    }

    /// The channel to `addr`, created on first use. Connecting happens lazily, on the
    /// first RPC, bounded by the connect timeout.
    ///
    /// The channel pings the node (HTTP/2 keep-alive, also while idle) every half attempt
    /// timeout and drops the connection when a ping is not answered within another half:
    /// a frozen node (SIGSTOP, a hung host) that still accepts TCP fails every request on
    /// it within about one attempt timeout, even one the server may hold for a long time
    /// (a waiting Acquire), and the retry goes to another node.
    pub(crate) fn channel(
        &mut self,
        addr: &str,
        options: &ClientOptions,
    ) -> Result<Channel, ClientError> {
        if let Some(channel) = self.channels.get(addr) {
            return Ok(channel.clone());
        }
        let ping = (options.attempt_timeout / 2).max(MIN_PING);
        let channel = endpoint(addr)?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(ping)
            .keep_alive_timeout(ping)
            .keep_alive_while_idle(true)
            .connect_lazy();
        self.channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// `HOST:PORT` from `HOST:PORT` or `http://HOST:PORT`, checked to form a valid URI.
fn normalise(endpoint: &str) -> Result<String, ClientError> {
    let trimmed = endpoint.trim();
    let addr = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let addr = addr.trim_end_matches('/');
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    if addr.is_empty() {
        return Err(invalid("empty address"));
    }
    if addr.contains("://") {
        return Err(invalid("only plain http:// endpoints are supported"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("expected HOST:PORT"));
    };
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid("port must be a number from 0 to 65535"));
    }
    endpoint_uri(addr).map_err(|reason| invalid(&reason))?;
    Ok(addr.to_string())
}

fn endpoint_uri(addr: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())
}

fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    endpoint_uri(addr).map_err(|reason| ClientError::InvalidEndpoint {
        endpoint: addr.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Result<Endpoints, ClientError> {
        Endpoints::new(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn accepts_host_port_and_http_urls_and_drops_duplicates() {
        let e = endpoints(&["127.0.0.1:9001", "http://127.0.0.1:9002/", "127.0.0.1:9001"]).unwrap();
        assert_eq!(e.addrs(), ["127.0.0.1:9001", "127.0.0.1:9002"]);
    }

    #[test]
    fn rejects_empty_lists_and_bad_addresses() {
        assert_eq!(endpoints(&[]).unwrap_err(), ClientError::NoEndpoints);
        for bad in [
            "",
            "localhost",
            "127.0.0.1:port",
            ":9001",
            "https://h:1",
            "h:70000",
        ] {
            assert!(
                matches!(endpoints(&[bad]), Err(ClientError::InvalidEndpoint { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn pick_prefers_the_leader_then_rotates() {
        let mut e = endpoints(&["a:1", "b:2", "c:3"]).unwrap();
        assert_eq!(
            [e.pick(), e.pick(), e.pick(), e.pick()],
            ["a:1", "b:2", "c:3", "a:1"]
        );
        assert!(e.set_leader("c:3"));
        assert_eq!([e.pick(), e.pick()], ["c:3", "c:3"]);
        e.forget_leader("c:3");
        assert_eq!(e.pick(), "b:2");
    }

    #[test]
    fn the_rotation_does_not_go_straight_back_to_a_node_that_failed() {
        let mut e = endpoints(&["a:1", "b:2", "c:3"]).unwrap();
        assert_eq!(e.pick(), "a:1");
        // b:2 would be next in turn; it leads, then fails: the rotation passes it over once.
        assert!(e.set_leader("b:2"));
        assert_eq!(e.pick(), "b:2");
        e.forget_leader("b:2");
        assert_eq!([e.pick(), e.pick(), e.pick()], ["c:3", "a:1", "b:2"]);
        let mut single = endpoints(&["a:1"]).unwrap();
        single.forget_leader("a:1");
        assert_eq!(single.pick(), "a:1");
    }

    #[test]
    fn a_redirect_to_an_unknown_address_is_learned_apart_from_the_endpoints() {
        let mut e = endpoints(&["a:1"]).unwrap();
        assert!(e.set_leader("http://d:4"));
        assert_eq!(e.addrs(), ["a:1"]);
        assert_eq!(e.learned, ["d:4"]);
        assert_eq!(e.pick(), "d:4");
        assert!(!e.set_leader("garbage"));
        assert_eq!(e.pick(), "d:4");
        // While no leader is known, the rotation includes what was learned.
        e.leader = None;
        assert_eq!([e.pick(), e.pick(), e.pick()], ["a:1", "d:4", "a:1"]);
    }

    #[tokio::test]
    async fn a_learned_address_is_dropped_when_an_attempt_to_it_fails() {
        let options = ClientOptions::default();
        let mut e = endpoints(&["a:1", "b:2"]).unwrap();
        assert!(e.set_leader("d:4"));
        e.channel("d:4", &options).unwrap();
        e.forget_leader("d:4");
        assert!(e.learned.is_empty());
        assert!(!e.channels.contains_key("d:4"), "its channel is closed");
        assert_eq!([e.pick(), e.pick(), e.pick()], ["a:1", "b:2", "a:1"]);
        // A configured endpoint that fails stays.
        assert!(e.set_leader("b:2"));
        e.forget_leader("b:2");
        assert_eq!(e.addrs(), ["a:1", "b:2"]);
    }

    #[tokio::test]
    async fn at_most_eight_addresses_are_learned_oldest_dropped_first() {
        let options = ClientOptions::default();
        let mut e = endpoints(&["a:1"]).unwrap();
        for port in 10..30 {
            let addr = format!("h:{port}");
            assert!(e.set_leader(&addr));
            e.channel(&addr, &options).unwrap();
        }
        let newest: Vec<String> = (22..30).map(|port| format!("h:{port}")).collect();
        assert_eq!(e.learned, newest);
        assert_eq!(e.addrs(), ["a:1"]);
        assert_eq!(e.channels.len(), MAX_LEARNED);
        assert_eq!(e.pick(), "h:29");
    }
}
