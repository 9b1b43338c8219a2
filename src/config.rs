//! Validated node configuration: what `kvstore` needs to start one node.
//!
//! Pure: no clap, no I/O. `main.rs` turns its clap arguments into a [`NodeConfig`] and this
//! module checks it once, so every later layer can rely on it (ids unique and non-zero, the
//! election timeout comfortably above the heartbeat interval). Every error is one line that
//! names the flag and says what to do.
//!
//! # Peer ids
//! `--peers` is a comma-separated list; each item is `PORT` (host 127.0.0.1), `HOST:PORT` or
//! `ID=HOST:PORT`. Items without an explicit id get the smallest ids not yet taken (by this
//! node or by an explicit `ID=`), in the order given. For a cluster of N nodes whose ids are
//! 1..=N this means: list the other nodes in increasing id order, and every node agrees on
//! every id without spelling them out.
//!
//! Items are refused at startup, each in one line: an item that names this node itself (its
//! own id, or its own `HOST:PORT`), an item with a URL scheme (`http://...`), and two items
//! with the same id or the same address.
//!
//! # Advertised client address
//! `--advertise-client-urls` (etcd's flag) is a comma-separated list of `http://HOST:PORT` or
//! `HOST:PORT`; the first is the address this node gives clients: in the redirects of a
//! follower (`leader-addr`, learned by its peers on their Raft calls) and in `Cluster/Status`.
//! Without it the node advertises `--host:--port`, and a `--host` that listens on every
//! interface (`0.0.0.0`, `::`) is refused at startup, as etcd refuses a listen URL without an
//! advertise URL: no client can dial `0.0.0.0`. `https://` is refused (no TLS yet).
//!
//! # Cluster identity
//! [`NodeConfig::members`] (this node and its peers, ids and addresses) and
//! [`NodeConfig::cluster_token`] (`--initial-cluster-token`) are what the data dir records at
//! first start and compares with on every later start (`storage/sled_store/identity.rs`).

use crate::raft::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// Host used when a peer item (or `--host`) gives only a port.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default election timeout (the minimum; the core randomises within `[t, 2t)`).
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// Default heartbeat interval (also the driver's tick).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// Default number of applied entries between snapshots.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 10_000;
/// Default bytes of applied commands between snapshots (64 MiB).
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 << 20;
/// Default `--initial-cluster-token` (etcd's name for the same idea).
pub const DEFAULT_CLUSTER_TOKEN: &str = "kvstore-cluster";
/// Default bound on the Acquire requests waiting on one node for a held lock
/// (`--max-waiting-acquires`).
pub const DEFAULT_MAX_WAITING_ACQUIRES: usize = 10_000;
/// Default bound on concurrent gRPC streams (calls) per client connection
/// (`--max-concurrent-streams`, etcd's flag and default).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;
/// Default bound on the ops in each branch of a Txn (`--max-txn-ops`, etcd's flag and
/// default).
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Default and largest bound on the encoded size of one client request that goes through the
/// log (`--max-request-bytes`, etcd's flag and default: 1.5 MiB). The peer protocol's message
/// limits are derived from it, so it can be lowered but not raised.
pub const MAX_REQUEST_BYTES: usize = 1_572_864;
/// The election timeout must be at least this many heartbeat intervals, so a few lost or
/// late heartbeats do not start an election.
pub const MIN_ELECTION_TO_HEARTBEAT: u32 = 5;

/// The shape every `--peers` item must have, quoted in errors.
const PEER_ITEM_SHAPE: &str = "expected PORT, HOST:PORT or ID=HOST:PORT";

/// The shape every `--advertise-client-urls` item must have, quoted in errors.
const CLIENT_URL_SHAPE: &str = "expected http://HOST:PORT or HOST:PORT";

/// The longest advertised client address (`HOST:PORT`) accepted, from the flag or from a peer.
pub const MAX_CLIENT_URL_BYTES: usize = 256;

/// `--auto-compaction-mode` with its `--auto-compaction-retention` (see
/// `node::compactor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// No automatic compaction (retention 0).
    Off,
    /// Keep this many revisions.
    Revision(u64),
    /// Keep what was written in this much time.
    Periodic(Duration),
}

/// Default `--auto-compaction-mode`.
pub const DEFAULT_AUTO_COMPACTION_MODE: &str = "revision";
/// Default `--auto-compaction-retention`: 100,000 revisions, a few tens of MB of history
/// with small values (README, "Memory").
pub const DEFAULT_AUTO_COMPACTION_RETENTION: &str = "100000";

/// Parses `--auto-compaction-mode` and `--auto-compaction-retention` as etcd does: in
/// `revision` mode the retention is a number of revisions; in `periodic` mode a duration
/// (`30m`, `1h30m`, `90s`) or a bare number of hours. A retention of 0 turns it off.
///
/// # Errors
/// An unknown mode, or a retention that does not parse.
pub fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
    let bad = |reason: &str| ConfigError::BadAutoCompaction {
        mode: mode.to_string(),
        retention: retention.to_string(),
        reason: reason.to_string(),
    };
    let retention = retention.trim();
    match mode {
        "revision" => match retention.parse::<u64>() {
            Ok(0) => Ok(AutoCompaction::Off),
            Ok(n) => Ok(AutoCompaction::Revision(n)),
            Err(_) => Err(bad(
                "revision mode needs a number of revisions, e.g. 100000",
            )),
        },
        "periodic" => {
            let d = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => parse_duration(retention).ok_or_else(|| {
                    bad("periodic mode needs a duration such as 30m, 1h30m or 90s, or a number of hours")
                })?,
            };
            Ok(if d.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(d)
            })
        }
        _ => Err(bad("the mode is periodic or revision")),
    }
}

/// etcd's default interval of watch progress notifications.
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// `--experimental-watch-progress-notify-interval`: a duration such as `10m` or `500ms`,
/// above 0.
///
/// # Errors
/// A value that does not parse, or 0.
pub fn parse_watch_progress_notify_interval(s: &str) -> Result<Duration, ConfigError> {
    match parse_duration(s.trim()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(ConfigError::BadWatchProgressNotifyInterval(s.to_string())),
    }
}

/// `1h30m`, `30m`, `90s`, `500ms`: a sequence of numbers with units h, m, s, ms.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n.checked_mul(3600)?), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n.checked_mul(60)?), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// How the leader confirms a linearizable read (`--read-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// A heartbeat round confirms leadership for each batch of reads (Raft thesis §6.4).
    #[default]
    ReadIndex,
    /// No round while the leader holds a lease: a quorum answered a heartbeat sent less than
    /// an election timeout (minus a margin) ago. Assumes bounded clock-rate drift between
    /// nodes (see `raft/core/lease.rs`); every node must use the same mode.
    Lease,
}

impl std::str::FromStr for ReadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readindex" => Ok(ReadMode::ReadIndex),
            "lease" => Ok(ReadMode::Lease),
            other => Err(format!(
                "unknown read mode {other:?}: expected lease or readindex"
            )),
        }
    }
}

/// Another member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its node id (never 0, never ours).
    pub id: NodeId,
    /// Where its gRPC server listens, as `HOST:PORT`.
    pub addr: String,
}

/// The configuration of one node, validated by [`NodeConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id (not 0).
    pub id: NodeId,
    /// Host the gRPC server listens on (and dials itself by, for peers' `--peers` checks).
    pub host: String,
    /// Port the gRPC server listens on (0 = chosen by the OS, for tests).
    pub port: u16,
    /// `--advertise-client-urls`, each as `HOST:PORT` (scheme dropped); the first is what
    /// clients are told ([`NodeConfig::client_address`]). Empty: `host:port`.
    pub advertise_client_urls: Vec<String>,
    /// Where sled keeps the hard state and the log.
    pub data_dir: PathBuf,
    /// The other members; empty means a single-node cluster.
    pub peers: Vec<PeerSpec>,
    /// Minimum election timeout.
    pub election_timeout: Duration,
    /// Leader heartbeat interval; also the period of the driver's tick.
    pub heartbeat_interval: Duration,
    /// Take a snapshot and compact the log once this many entries were applied since the
    /// last one, and their commands add up to a quarter of the last snapshot's size.
    pub snapshot_entries: u64,
    /// ... or once the commands applied since the last one reach this many bytes.
    pub snapshot_bytes: u64,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadMode,
    /// Mixed into the cluster id the data dir records at first start, so two clusters with
    /// the same members (say, a test cluster rebuilt on the same addresses) get different ids.
    pub cluster_token: String,
    /// Acquire requests that may wait on this node for a held lock; one more that would
    /// wait is refused with RESOURCE_EXHAUSTED (not 0).
    pub max_waiting_acquires: usize,
    /// Concurrent gRPC streams (calls) per client connection (HTTP/2 setting; not 0).
    pub max_concurrent_streams: u32,
    /// Ops allowed in each branch of a Txn (not 0); more is refused with etcd's error.
    pub max_txn_ops: usize,
    /// Largest encoded client request that goes through the log, in bytes (1 KiB to
    /// [`MAX_REQUEST_BYTES`]); larger is refused with etcd's "request is too large".
    pub max_request_bytes: usize,
    /// When the leader compacts the key space's history.
    pub auto_compaction: AutoCompaction,
    /// How often an idle etcd watch that asked for progress notifications gets one
    /// (`--experimental-watch-progress-notify-interval`, etcd's default 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// `--join HOST:PORT`: this node joins the existing cluster of the member there (it was
    /// added with `member add`); `None` for a node of a static `--peers` start.
    pub join: Option<String>,
}

/// A configuration that cannot work. Each message is one line for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--id 0`.
    #[error("--id must not be 0: node ids start at 1")]
    ZeroId,
    /// A `--peers` item that does not parse.
    #[error("invalid --peers item \"{item}\": {reason}")]
    BadPeerItem {
        /// The item as given.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer with an id that is 0, ours, or repeated.
    #[error("invalid --peers: {0}")]
    BadPeerId(String),
    /// Two peers with the same address.
    #[error("invalid --peers: address {0} appears twice")]
    DuplicateAddress(String),
    /// A peer at this node's own address.
    #[error("invalid --peers: {addr} is this node's own address (--host {host} --port {port}): list only the other nodes")]
    PeerIsSelf {
        /// The peer's address as given.
        addr: String,
        /// `--host`.
        host: String,
        /// `--port`.
        port: u16,
    },
    /// An empty `--initial-cluster-token`.
    #[error("--initial-cluster-token must not be empty")]
    EmptyClusterToken,
    /// The heartbeat interval is below 1 ms.
    #[error("--heartbeat-interval-ms must be at least 1")]
    HeartbeatTooShort,
    /// The election timeout is too close to the heartbeat interval.
    #[error("--election-timeout-ms ({election} ms) must be at least {MIN_ELECTION_TO_HEARTBEAT} x --heartbeat-interval-ms ({heartbeat} ms)")]
    ElectionTooShort {
        /// Election timeout in ms.
        election: u128,
        /// Heartbeat interval in ms.
        heartbeat: u128,
    },
    /// An empty `--host`.
    #[error("--host must not be empty")]
    EmptyHost,
    /// An `--advertise-client-urls` item that is not a usable client address.
    #[error("invalid --advertise-client-urls item \"{item}\": {reason}")]
    BadClientUrl {
        /// The item as given.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--advertise-client-urls` given, but empty.
    #[error("--advertise-client-urls is empty: give the HOST:PORT clients should use to reach this node")]
    EmptyClientUrls,
    /// A `--host` that listens on every interface, with nothing to advertise instead.
    #[error("--host {host} listens on every interface, which is no address for clients: add --advertise-client-urls HOST:{port} with a name or IP of this machine that clients can reach")]
    UnadvertisedWildcardHost {
        /// `--host`.
        host: String,
        /// `--port`.
        port: u16,
    },
    /// `--max-waiting-acquires 0`.
    #[error("--max-waiting-acquires must be at least 1 (default {DEFAULT_MAX_WAITING_ACQUIRES})")]
    ZeroMaxWaitingAcquires,
    /// `--max-concurrent-streams 0`.
    #[error(
        "--max-concurrent-streams must be at least 1 (default {DEFAULT_MAX_CONCURRENT_STREAMS})"
    )]
    ZeroMaxConcurrentStreams,
    /// Bad `--auto-compaction-mode` / `--auto-compaction-retention`.
    #[error(
        "invalid --auto-compaction-mode {mode} --auto-compaction-retention {retention}: {reason}"
    )]
    BadAutoCompaction {
        /// The mode as given.
        mode: String,
        /// The retention as given.
        retention: String,
        /// What is wrong.
        reason: String,
    },
    /// `--max-txn-ops 0`.
    #[error("--max-txn-ops must be at least 1 (default {DEFAULT_MAX_TXN_OPS})")]
    ZeroMaxTxnOps,
    /// `--max-request-bytes` out of range.
    #[error("--max-request-bytes {0} is out of range: give 1024 to {MAX_REQUEST_BYTES} (the default; this version cannot raise it)")]
    BadMaxRequestBytes(usize),
    /// `--experimental-watch-progress-notify-interval` does not parse or is 0.
    #[error("--experimental-watch-progress-notify-interval {0:?}: give a duration above 0 such as 10m, 30s or 500ms")]
    BadWatchProgressNotifyInterval(String),
    /// `--join` and `--peers` together.
    #[error("--join and --peers exclude each other: --peers starts a new cluster, --join joins an existing one (the members come from it)")]
    JoinWithPeers,
}

impl NodeConfig {
    /// A single-node configuration with every default: host 127.0.0.1, data dir
    /// `data/node-<id>`, 500 ms election timeout, 50 ms heartbeats.
    pub fn new(id: NodeId, port: u16) -> Self {
        NodeConfig {
            id,
            host: DEFAULT_HOST.to_string(),
            port,
            advertise_client_urls: Vec::new(),
            data_dir: default_data_dir(id),
            peers: Vec::new(),
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            read_mode: ReadMode::ReadIndex,
            cluster_token: DEFAULT_CLUSTER_TOKEN.to_string(),
            max_waiting_acquires: DEFAULT_MAX_WAITING_ACQUIRES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: MAX_REQUEST_BYTES,
            auto_compaction: AutoCompaction::Revision(100_000),
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            join: None,
        }
    }

    /// Checks everything that does not need I/O.
    ///
    /// # Errors
    /// The first problem found, as a one-line [`ConfigError`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.host.is_empty() {
            return Err(ConfigError::EmptyHost);
        }
        for url in &self.advertise_client_urls {
            parse_client_url(url).map_err(|reason| ConfigError::BadClientUrl {
                item: url.clone(),
                reason,
            })?;
        }
        if self.advertise_client_urls.is_empty() && is_wildcard_host(&self.host) {
            return Err(ConfigError::UnadvertisedWildcardHost {
                host: self.host.clone(),
                port: self.port,
            });
        }
        if self.cluster_token.is_empty() {
            return Err(ConfigError::EmptyClusterToken);
        }
        if self.join.is_some() && !self.peers.is_empty() {
            return Err(ConfigError::JoinWithPeers);
        }
        if self.max_waiting_acquires == 0 {
            return Err(ConfigError::ZeroMaxWaitingAcquires);
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::ZeroMaxConcurrentStreams);
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::ZeroMaxTxnOps);
        }
        if !(1024..=MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            return Err(ConfigError::BadMaxRequestBytes(self.max_request_bytes));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 {
                return Err(ConfigError::BadPeerId(
                    "peer id 0 is reserved: ids start at 1".into(),
                ));
            }
            if p.id == self.id {
                return Err(ConfigError::BadPeerId(format!(
                    "peer {} has this node's own id {}: list only the other nodes",
                    p.addr, self.id
                )));
            }
            if !ids.insert(p.id) {
                return Err(ConfigError::BadPeerId(format!(
                    "peer id {} appears twice",
                    p.id
                )));
            }
            if !addrs.insert(p.addr.as_str()) {
                return Err(ConfigError::DuplicateAddress(p.addr.clone()));
            }
            if self.is_own_address(&p.addr) {
                return Err(ConfigError::PeerIsSelf {
                    addr: p.addr.clone(),
                    host: self.host.clone(),
                    port: self.port,
                });
            }
        }
        if self.heartbeat_interval < Duration::from_millis(1) {
            return Err(ConfigError::HeartbeatTooShort);
        }
        if self.election_timeout < self.heartbeat_interval * MIN_ELECTION_TO_HEARTBEAT {
            return Err(ConfigError::ElectionTooShort {
                election: self.election_timeout.as_millis(),
                heartbeat: self.heartbeat_interval.as_millis(),
            });
        }
        Ok(())
    }

    /// This node's own listening address, `HOST:PORT`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The address this node gives clients, `HOST:PORT`: the first `--advertise-client-urls`
    /// item, else [`address`](Self::address).
    pub fn client_address(&self) -> String {
        self.advertise_client_urls
            .first()
            .cloned()
            .unwrap_or_else(|| self.address())
    }

    /// The configured address of a member (ourselves included), if known: `--peers` for
    /// the others (where this node dials them, not necessarily where clients can), this
    /// node's [`client_address`](Self::client_address) for itself.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        if id == self.id {
            return Some(self.client_address());
        }
        self.peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.clone())
    }

    /// Every member, this node included: id -> `HOST:PORT`.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.peers
            .iter()
            .map(|p| (p.id, p.addr.clone()))
            .chain([(self.id, self.address())])
            .collect()
    }

    /// Whether `addr` (`HOST:PORT`) is where this node listens: the same port, and the same
    /// host or two names of this machine (`localhost`, `127.0.0.1`, `::1`, `0.0.0.0`, `::`).
    fn is_own_address(&self, addr: &str) -> bool {
        let Some((host, port)) = addr.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.port) {
            return false;
        }
        let local = |h: &str| {
            matches!(
                h.trim_start_matches('[').trim_end_matches(']'),
                "localhost" | "127.0.0.1" | "::1" | "0.0.0.0" | "::"
            )
        };
        host.eq_ignore_ascii_case(&self.host) || (local(host) && local(&self.host))
    }

    /// The ids of the other members.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// The election timeout in heartbeat ticks (the core counts time in ticks).
    pub fn election_ticks(&self) -> u32 {
        let hb = self.heartbeat_interval.as_nanos().max(1);
        u32::try_from(self.election_timeout.as_nanos() / hb).unwrap_or(u32::MAX)
    }
}

/// Whether `host` listens on every interface (`0.0.0.0`, `::`): no address to give clients.
fn is_wildcard_host(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Parses an `--advertise-client-urls` value (see the module docs) into `HOST:PORT` items,
/// in the order given.
///
/// # Errors
/// An empty list, or an item [`parse_client_url`] refuses.
pub fn parse_client_urls(spec: &str) -> Result<Vec<String>, ConfigError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(ConfigError::EmptyClientUrls);
    }
    spec.split(',')
        .map(str::trim)
        .map(|item| {
            parse_client_url(item).map_err(|reason| ConfigError::BadClientUrl {
                item: item.to_string(),
                reason,
            })
        })
        .collect()
}

/// One client address, `http://HOST:PORT` or `HOST:PORT` (a trailing `/` allowed), as
/// `HOST:PORT`: a DNS name or IP (IPv6 in brackets) clients can dial, so not `0.0.0.0` or
/// `::`, at most [`MAX_CLIENT_URL_BYTES`], and a port in 1..=65535. Also checks the addresses
/// peers advertise to this node.
///
/// # Errors
/// Why the item is refused, for the operator.
pub fn parse_client_url(item: &str) -> Result<String, String> {
    if item.is_empty() {
        return Err("empty item (stray comma?)".into());
    }
    let rest = match item.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => return Err(
            "https is not supported (kvstore has no TLS yet): use http://HOST:PORT or HOST:PORT"
                .into(),
        ),
        Some(_) => return Err(format!("unknown URL scheme: {CLIENT_URL_SHAPE}")),
        None => item,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.len() > MAX_CLIENT_URL_BYTES {
        return Err(format!("longer than {MAX_CLIENT_URL_BYTES} bytes"));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("no port: {CLIENT_URL_SHAPE}"));
    };
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if !valid_host {
        return Err(CLIENT_URL_SHAPE.into());
    }
    if is_wildcard_host(host) {
        return Err(format!(
            "{host} is no address clients can reach: advertise a name or IP of this machine"
        ));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CLIENT_URL_SHAPE.into());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(format!("{host}:{p}")),
        _ => Err("port must be between 1 and 65535".into()),
    }
}

/// `data/node-<id>`.
pub fn default_data_dir(id: NodeId) -> PathBuf {
    PathBuf::from(format!("data/node-{id}"))
}

/// Parses a `--peers` value (see the module docs for the id rule).
///
/// # Errors
/// A malformed item, or an explicit id that is 0, ours or repeated.
pub fn parse_peers(spec: &str, own_id: NodeId) -> Result<Vec<PeerSpec>, ConfigError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    let mut parsed: Vec<(Option<NodeId>, String)> = Vec::new();
    for raw in spec.split(',') {
        parsed.push(parse_peer_item(raw.trim())?);
    }
    let mut taken = BTreeSet::from([own_id]);
    for (id, addr) in &parsed {
        if let Some(id) = *id {
            if id == own_id {
                return Err(ConfigError::BadPeerId(format!(
                    "{id}={addr} has this node's own id: list only the other nodes"
                )));
            }
            if !taken.insert(id) {
                return Err(ConfigError::BadPeerId(format!(
                    "peer id {id} appears twice"
                )));
            }
        }
    }
    let mut next = 1;
    let mut peers = Vec::with_capacity(parsed.len());
    for (id, addr) in parsed {
        let id = match id {
            Some(id) => id,
            None => {
                while taken.contains(&next) {
                    next += 1;
                }
                taken.insert(next);
                next
            }
        };
        peers.push(PeerSpec { id, addr });
    }
    Ok(peers)
}

/// One item: `PORT`, `HOST:PORT` or `ID=HOST:PORT` (also `ID=PORT`).
fn parse_peer_item(item: &str) -> Result<(Option<NodeId>, String), ConfigError> {
    let bad = |reason: &str| ConfigError::BadPeerItem {
        item: item.to_string(),
        reason: reason.to_string(),
    };
    if item.is_empty() {
        return Err(bad("empty item (stray comma?)"));
    }
    if item.contains("://") {
        return Err(bad(
            "drop the URL scheme: expected PORT, HOST:PORT or ID=HOST:PORT",
        ));
    }
    let (id, rest) = match item.split_once('=') {
        Some((id, rest)) => {
            let id: NodeId = id.trim().parse().map_err(|_| bad(PEER_ITEM_SHAPE))?;
            if id == 0 {
                return Err(bad("peer id 0 is reserved: ids start at 1"));
            }
            (Some(id), rest.trim())
        }
        None => (None, item),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => (DEFAULT_HOST, rest),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad(PEER_ITEM_SHAPE));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(PEER_ITEM_SHAPE));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => return Err(bad("port must be between 1 and 65535")),
    };
    Ok((id, format!("{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: NodeId, addr: &str) -> PeerSpec {
        PeerSpec {
            id,
            addr: addr.to_string(),
        }
    }

    #[test]
    fn empty_spec_is_a_single_node_cluster() {
        assert_eq!(parse_peers("", 1).unwrap(), vec![]);
        assert_eq!(parse_peers("  ", 1).unwrap(), vec![]);
    }

    #[test]
    fn implicit_ids_skip_own_id_in_order_given() {
        // Node 2 of a 3-node cluster: the others are 1 and 3, in the order listed.
        assert_eq!(
            parse_peers("9001,9003", 2).unwrap(),
            vec![peer(1, "127.0.0.1:9001"), peer(3, "127.0.0.1:9003")]
        );
        assert_eq!(
            parse_peers("9002,9003", 1).unwrap(),
            vec![peer(2, "127.0.0.1:9002"), peer(3, "127.0.0.1:9003")]
        );
        assert_eq!(
            parse_peers("9001,9002", 3).unwrap(),
            vec![peer(1, "127.0.0.1:9001"), peer(2, "127.0.0.1:9002")]
        );
    }

    #[test]
    fn accepts_port_host_port_and_explicit_ids() {
        assert_eq!(
            parse_peers("10.0.0.2:7000, node-3.local:7001 ,7=[::1]:7002", 1).unwrap(),
            vec![
                peer(2, "10.0.0.2:7000"),
                peer(3, "node-3.local:7001"),
                peer(7, "[::1]:7002")
            ]
        );
        assert_eq!(
            parse_peers("5=9005", 1).unwrap(),
            vec![peer(5, "127.0.0.1:9005")]
        );
    }

    #[test]
    fn mixed_implicit_ids_take_smallest_unused() {
        // 2 is explicit and 1 is ours, so the implicit items get 3 then 4.
        assert_eq!(
            parse_peers("9003,2=host:9002,9004", 1).unwrap(),
            vec![
                peer(3, "127.0.0.1:9003"),
                peer(2, "host:9002"),
                peer(4, "127.0.0.1:9004")
            ]
        );
    }

    #[test]
    fn malformed_items_are_rejected_with_one_line() {
        let err = parse_peers("abc", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --peers item \"abc\": expected PORT, HOST:PORT or ID=HOST:PORT"
        );
        for bad in [
            "9001,",
            "host:",
            ":9001",
            "x=9001",
            "1.2.3.4:port",
            "-3",
            "a b:9",
        ] {
            let e = parse_peers(bad, 1).unwrap_err();
            assert!(matches!(e, ConfigError::BadPeerItem { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        assert_eq!(
            parse_peers("99999", 1).unwrap_err().to_string(),
            "invalid --peers item \"99999\": port must be between 1 and 65535"
        );
        assert!(matches!(
            parse_peers("0", 1),
            Err(ConfigError::BadPeerItem { .. })
        ));
        assert!(matches!(
            parse_peers("0=9000", 1),
            Err(ConfigError::BadPeerItem { .. })
        ));
    }

    #[test]
    fn explicit_id_conflicts_are_rejected() {
        assert_eq!(
            parse_peers("1=9001", 1).unwrap_err().to_string(),
            "invalid --peers: 1=127.0.0.1:9001 has this node's own id: list only the other nodes"
        );
        assert_eq!(
            parse_peers("2=9001,2=9002", 1).unwrap_err().to_string(),
            "invalid --peers: peer id 2 appears twice"
        );
    }

    #[test]
    fn validate_rejects_duplicate_addresses() {
        let mut c = NodeConfig::new(1, 9001);
        c.peers = parse_peers("9002,127.0.0.1:9002", 1).unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid --peers: address 127.0.0.1:9002 appears twice"
        );
    }

    #[test]
    fn validate_checks_ids() {
        assert_eq!(NodeConfig::new(0, 1).validate(), Err(ConfigError::ZeroId));
        let mut c = NodeConfig::new(1, 9001);
        c.peers = vec![peer(1, "h:1")];
        assert!(matches!(c.validate(), Err(ConfigError::BadPeerId(_))));
        c.peers = vec![peer(0, "h:1")];
        assert!(matches!(c.validate(), Err(ConfigError::BadPeerId(_))));
        c.peers = vec![peer(2, "h:1"), peer(2, "h:2")];
        assert!(matches!(c.validate(), Err(ConfigError::BadPeerId(_))));
        c.peers = vec![peer(2, "h:1"), peer(3, "h:2")];
        assert_eq!(c.validate(), Ok(()));
        c.host = String::new();
        assert_eq!(c.validate(), Err(ConfigError::EmptyHost));
    }

    /// `--peers` on top of `NodeConfig::new(id, port)`, validated: the refusal, if any.
    fn refusal(id: NodeId, port: u16, peers: &str) -> Option<String> {
        let mut c = NodeConfig::new(id, port);
        c.peers = match parse_peers(peers, id) {
            Ok(p) => p,
            Err(e) => return Some(e.to_string()),
        };
        c.validate().err().map(|e| e.to_string())
    }

    #[test]
    fn peers_naming_this_node_are_refused_in_one_line() {
        // Its own id, explicit.
        assert_eq!(
            refusal(2, 9002, "1=9001,2=9002").as_deref(),
            Some("invalid --peers: 2=127.0.0.1:9002 has this node's own id: list only the other nodes")
        );
        // Its own address, under an implicit id (node 2 on 9002 listing all three ports).
        assert_eq!(
            refusal(2, 9002, "9001,9002,9003").as_deref(),
            Some("invalid --peers: 127.0.0.1:9002 is this node's own address (--host 127.0.0.1 --port 9002): list only the other nodes")
        );
        // Another name of the same host and port.
        assert_eq!(
            refusal(1, 9001, "3=localhost:9001").as_deref(),
            Some("invalid --peers: localhost:9001 is this node's own address (--host 127.0.0.1 --port 9001): list only the other nodes")
        );
        // The same port on another host is another node.
        assert_eq!(refusal(1, 9001, "10.0.0.2:9001"), None);
    }

    #[test]
    fn peers_with_a_url_scheme_are_refused_in_one_line() {
        assert_eq!(
            refusal(1, 9001, "http://127.0.0.1:9002").as_deref(),
            Some("invalid --peers item \"http://127.0.0.1:9002\": drop the URL scheme: expected PORT, HOST:PORT or ID=HOST:PORT")
        );
        assert_eq!(
            refusal(1, 9001, "9002,3=https://h:9003").as_deref(),
            Some("invalid --peers item \"3=https://h:9003\": drop the URL scheme: expected PORT, HOST:PORT or ID=HOST:PORT")
        );
        assert_eq!(
            refusal(1, 9001, "h/x:9002").as_deref(),
            Some("invalid --peers item \"h/x:9002\": expected PORT, HOST:PORT or ID=HOST:PORT")
        );
    }

    #[test]
    fn duplicated_peers_are_refused_in_one_line() {
        assert_eq!(
            refusal(1, 9001, "2=9002,2=9003").as_deref(),
            Some("invalid --peers: peer id 2 appears twice")
        );
        assert_eq!(
            refusal(1, 9001, "9002,3=127.0.0.1:9002").as_deref(),
            Some("invalid --peers: address 127.0.0.1:9002 appears twice")
        );
        let mut c = NodeConfig::new(1, 9001);
        c.peers = vec![peer(2, "h:1"), peer(2, "h:2")];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid --peers: peer id 2 appears twice"
        );
        c.peers = vec![peer(1, "h:1")];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid --peers: peer h:1 has this node's own id 1: list only the other nodes"
        );
    }

    #[test]
    fn members_include_this_node_and_an_empty_token_is_refused() {
        let mut c = NodeConfig::new(2, 9002);
        c.peers = parse_peers("9001,9003", 2).unwrap();
        assert_eq!(
            c.members(),
            BTreeMap::from([
                (1, "127.0.0.1:9001".to_string()),
                (2, "127.0.0.1:9002".to_string()),
                (3, "127.0.0.1:9003".to_string())
            ])
        );
        assert_eq!(c.cluster_token, DEFAULT_CLUSTER_TOKEN);
        c.cluster_token = String::new();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--initial-cluster-token must not be empty"
        );
    }

    #[test]
    fn zero_waiting_acquires_or_concurrent_streams_are_refused() {
        let mut c = NodeConfig::new(1, 9001);
        c.max_waiting_acquires = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--max-waiting-acquires must be at least 1 (default 10000)"
        );
        c.max_waiting_acquires = 1;
        c.max_concurrent_streams = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--max-concurrent-streams must be at least 1 (default 1000)"
        );
        c.max_concurrent_streams = 1;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_checks_timeouts() {
        let mut c = NodeConfig::new(1, 9001);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.election_ticks(), 10);
        c.election_timeout = Duration::from_millis(249);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--election-timeout-ms (249 ms) must be at least 5 x --heartbeat-interval-ms (50 ms)"
        );
        c.election_timeout = Duration::from_millis(250);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.election_ticks(), 5);
        c.heartbeat_interval = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::HeartbeatTooShort));
    }

    #[test]
    fn the_advertised_client_address_defaults_to_host_and_port() {
        let mut c = NodeConfig::new(1, 9001);
        assert_eq!(c.client_address(), "127.0.0.1:9001");
        c.advertise_client_urls =
            parse_client_urls("http://kv-1.example:2379, 10.0.0.5:9001").unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.client_address(), "kv-1.example:2379");
        assert_eq!(c.address_of(1).as_deref(), Some("kv-1.example:2379"));
        // Listening is unchanged.
        assert_eq!(c.address(), "127.0.0.1:9001");
    }

    #[test]
    fn every_interface_without_an_advertised_address_is_refused_in_one_line() {
        for host in ["0.0.0.0", "::", "[::]"] {
            let mut c = NodeConfig::new(1, 9001);
            c.host = host.to_string();
            assert_eq!(
                c.validate().unwrap_err().to_string(),
                format!(
                    "--host {host} listens on every interface, which is no address for clients: \
                     add --advertise-client-urls HOST:9001 with a name or IP of this machine that \
                     clients can reach"
                )
            );
            c.advertise_client_urls = vec!["10.0.0.5:9001".into()];
            assert_eq!(c.validate(), Ok(()), "{host}");
            assert_eq!(c.client_address(), "10.0.0.5:9001");
        }
        let mut c = NodeConfig::new(1, 9001);
        c.host = "10.0.0.5".into();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn client_url_lists_parse_to_host_port_in_order() {
        assert_eq!(
            parse_client_urls("http://a.example:1, b:2,HTTP://[::1]:3/,10.0.0.1:04").unwrap(),
            vec!["a.example:1", "b:2", "[::1]:3", "10.0.0.1:4"]
        );
        assert_eq!(
            parse_client_urls("localhost:9001").unwrap(),
            vec!["localhost:9001"]
        );
    }

    #[test]
    fn bad_client_urls_are_refused_in_one_line() {
        let refusal = |spec: &str| parse_client_urls(spec).unwrap_err().to_string();
        assert_eq!(
            refusal("https://kv:2379"),
            "invalid --advertise-client-urls item \"https://kv:2379\": https is not supported \
             (kvstore has no TLS yet): use http://HOST:PORT or HOST:PORT"
        );
        assert_eq!(
            refusal("kv:1,0.0.0.0:9001"),
            "invalid --advertise-client-urls item \"0.0.0.0:9001\": 0.0.0.0 is no address \
             clients can reach: advertise a name or IP of this machine"
        );
        assert_eq!(
            refusal("9001"),
            "invalid --advertise-client-urls item \"9001\": no port: expected http://HOST:PORT \
             or HOST:PORT"
        );
        assert_eq!(
            refusal(""),
            "--advertise-client-urls is empty: give the HOST:PORT clients should use to reach \
             this node"
        );
        assert_eq!(
            refusal("kv:0"),
            "invalid --advertise-client-urls item \"kv:0\": port must be between 1 and 65535"
        );
        let long = format!("{}:1", "a".repeat(MAX_CLIENT_URL_BYTES));
        assert_eq!(
            refusal(&long),
            format!("invalid --advertise-client-urls item \"{long}\": longer than 256 bytes")
        );
        for bad in [
            "kv:1,",
            "ftp://kv:1",
            "[::]:1",
            "kv:99999",
            "kv:port",
            ":1",
            "a b:1",
            "h/x:1",
            "http://kv:1/path",
            "http://user@kv:1",
            "::1:1",
            "[zz]:1",
        ] {
            let e = parse_client_urls(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadClientUrl { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        // A config built in code is checked too.
        let mut c = NodeConfig::new(1, 9001);
        c.advertise_client_urls = vec!["https://kv:1".into()];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadClientUrl { .. })
        ));
    }

    #[test]
    fn defaults_and_addresses() {
        let mut c = NodeConfig::new(3, 9003);
        assert_eq!(c.data_dir, PathBuf::from("data/node-3"));
        assert_eq!(c.address(), "127.0.0.1:9003");
        c.peers = parse_peers("9001,9002", 3).unwrap();
        assert_eq!(c.address_of(2).as_deref(), Some("127.0.0.1:9002"));
        assert_eq!(c.address_of(3).as_deref(), Some("127.0.0.1:9003"));
        assert_eq!(c.address_of(9), None);
        assert_eq!(c.peer_ids(), vec![1, 2]);
    }

    #[test]
    fn watch_progress_notify_interval_parses_durations_above_zero() {
        let p = parse_watch_progress_notify_interval;
        assert_eq!(p("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(p("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["0s", "", "ten"] {
            let err = p(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.starts_with("--experimental-watch-progress-notify-interval"),
                "{err}"
            );
        }
    }

    #[test]
    fn auto_compaction_flags_parse_as_etcd_reads_them() {
        let p = parse_auto_compaction;
        assert_eq!(
            p("revision", "1000").unwrap(),
            AutoCompaction::Revision(1000)
        );
        assert_eq!(p("revision", "0").unwrap(), AutoCompaction::Off);
        assert_eq!(
            p("periodic", "1").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        assert_eq!(
            p("periodic", "1h30m").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(5400))
        );
        assert_eq!(
            p("periodic", "500ms").unwrap(),
            AutoCompaction::Periodic(Duration::from_millis(500))
        );
        assert_eq!(p("periodic", "0").unwrap(), AutoCompaction::Off);
        for (mode, retention) in [
            ("revision", "1h"),
            ("periodic", "5x"),
            ("hourly", "1"),
            ("periodic", ""),
        ] {
            let e = p(mode, retention).unwrap_err().to_string();
            assert!(e.starts_with("invalid --auto-compaction-mode"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(
            parse_auto_compaction(
                DEFAULT_AUTO_COMPACTION_MODE,
                DEFAULT_AUTO_COMPACTION_RETENTION
            )
            .unwrap(),
            NodeConfig::new(1, 1).auto_compaction,
            "the flags' defaults are the config's"
        );
    }

    #[test]
    fn txn_and_request_limits_are_checked() {
        let mut c = NodeConfig::new(1, 7001);
        c.max_txn_ops = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-txn-ops"));
        c.max_txn_ops = 1;
        c.max_request_bytes = MAX_REQUEST_BYTES + 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-request-bytes"));
        c.max_request_bytes = 1024;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn join_excludes_peers() {
        let mut c = NodeConfig::new(4, 9004);
        c.join = Some("127.0.0.1:9001".into());
        assert_eq!(c.validate(), Ok(()));
        c.peers = parse_peers("9001", 4).unwrap();
        assert_eq!(c.validate(), Err(ConfigError::JoinWithPeers));
    }
}
