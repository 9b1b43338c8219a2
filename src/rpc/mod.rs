//! gRPC: the tonic services (thin adapters into the driver), the peer senders, and
//! [`run`], which wires a whole node together on one pre-bound listener.
//!
//! # What this module may import
//! `node` (through [`NodeHandle`]), `config`, `pb`, `raft` types (for conversions),
//! `state_machine` command types, tonic, tokio. Every protobuf <-> core conversion lives in
//! `convert.rs`, and every `ClientError` -> `Status` mapping in `status.rs`. Where clients
//! reach each member (advertised client addresses, learned on peer calls) is `client_urls.rs`.
//!
//! # Invariants
//! - Handlers never touch Raft state: they send a request to the driver and await its answer.
//! - One port serves Raft, KV, Lock, Cluster, etcd's v3 services ([`etcd`]), `grpc.health.v1`
//!   and reflection (v1 and v1alpha).
//! - Message-size limits are explicit, never tonic's defaults: the Raft service's is
//!   [`peer::PEER_MESSAGE_LIMIT`], above the largest message a leader builds; the client
//!   services' is [`kv_service::CLIENT_MESSAGE_LIMIT`], above the largest legal request.

pub mod client_urls;
pub mod cluster_service;
pub mod convert;
pub mod etcd;
pub mod instances;
pub mod join;
pub mod kv_service;
pub mod lease_service;
pub mod lock_service;
pub mod member_service;
pub mod peer;
pub mod raft_service;
pub mod status;
pub mod watch_service;

use self::client_urls::ClientUrls;
use self::cluster_service::ClusterService;
use self::kv_service::{KvService, CLIENT_MESSAGE_LIMIT};
use self::lease_service::LeaseService;
use self::lock_service::LockService;
use self::peer::{PeerAddrError, PeerSenders, PEER_MESSAGE_LIMIT};
use self::raft_service::RaftService;
use self::watch_service::WatchService;
use crate::config::NodeConfig;
use crate::node::{self, Driver, Fatal, NodeHandle};
use crate::pb::cluster_server::ClusterServer;
use crate::pb::kv_server::KvServer;
use crate::pb::lease_server::LeaseServer;
use crate::pb::lock_server::LockServer;
use crate::pb::raft_server::RaftServer;
use crate::pb::watch_server::WatchServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{debug, info, warn};

/// How long shutdown waits for in-flight tasks (peer calls, the driver) before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long, once stopping, the server lets open connections finish (answers being written,
/// streams such as `grpc.health.v1.Health/Watch`, which never end on their own) before it
/// drops them. The driver fails pending requests at once, so little needs the time.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A peer address is not usable.
    #[error(transparent)]
    PeerAddr(#[from] PeerAddrError),
    /// Storage could not be opened, or failed while running.
    #[error(transparent)]
    Fatal(#[from] Fatal),
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Listener(#[source] std::io::Error),
    /// Reflection could not be built from the descriptor sets.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The driver task panicked.
    #[error("driver task failed: {0}")]
    Driver(String),
    /// `--join` failed at first start.
    #[error(transparent)]
    Join(#[from] join::JoinError),
}

/// Runs one node on a pre-bound `listener` until `shutdown` is cancelled (mini-redis style:
/// tests bind port 0 and pass the listener). If `config.port` is 0 it is replaced by the
/// listener's port, so the node advertises where it really listens.
///
/// Shutdown order (STYLE.md §13): health NOT_SERVING, stop accepting RPCs, the driver fails
/// pending requests and finishes its current Ready, then peers stop and tasks are awaited.
/// Every wait is bounded: open connections get [`SHUTDOWN_DRAIN`], then are dropped; the
/// driver and other tasks get `SHUTDOWN_GRACE`. A panic in the driver stops the node too
/// ([`RunError::Driver`]).
///
/// # Errors
/// [`RunError`]: invalid config, storage that cannot be opened (e.g. locked by another
/// process) or that failed while running, or a server failure.
pub async fn run(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_node(listener, config, shutdown, None).await
}

/// [`run`] for the `kvstore` binary: when `signal` is cancelled (SIGTERM, SIGINT), a leader
/// first hands leadership to its most up-to-date peer and waits, at most two election
/// timeouts, until it no longer leads, so clients see no election gap; then the node stops as
/// [`run`] does. A follower stops at once. The whole hand-over is bounded by the same two
/// election timeouts, even if the driver does not answer.
///
/// # Errors
/// As [`run`].
pub async fn run_until_signal(
    listener: TcpListener,
    config: NodeConfig,
    signal: CancellationToken,
) -> Result<(), RunError> {
    run_node(listener, config, CancellationToken::new(), Some(signal)).await
}

async fn run_node(
    listener: TcpListener,
    mut config: NodeConfig,
    shutdown: CancellationToken,
    handover: Option<CancellationToken>,
) -> Result<(), RunError> {
    if config.port == 0 {
        config.port = listener.local_addr().map_err(RunError::Listener)?.port();
    }
    config.validate()?;
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    // `stop` ends the server and the driver: on shutdown, or when the driver fails.
    let stop = shutdown.child_token();
    // Peers stop last, after the driver has finished its final Ready.
    let peers_stop = CancellationToken::new();

    let (handle, inbox) = node::channel(config.id, node::INBOX_CAPACITY);
    let urls = ClientUrls::new(&config);
    let instances = instances::Instances::default();
    let peers = PeerSenders::spawn(
        &config,
        &urls,
        &instances,
        handle.clone(),
        &tracker,
        peers_stop.clone(),
    )?;
    let joined = match &config.join {
        Some(addr) => match crate::storage::SledStore::recorded_identity(&config.data_dir) {
            Ok(Some(_)) => {
                info!(join = %addr, "the data dir already joined a cluster: --join is ignored");
                None
            }
            Ok(None) => match join::fetch_identity(&config, addr, &stop).await {
                Ok(identity) => Some(identity),
                Err(e) => {
                    peers_stop.cancel();
                    return Err(e.into());
                }
            },
            Err(e) => {
                peers_stop.cancel();
                return Err(Fatal::from(e).into());
            }
        },
        None => None,
    };
    let driver = match Driver::open_joining(config.clone(), inbox, Arc::new(peers), joined)
        .and_then(|d| {
            // Before the driver runs: its first message is tagged, and no call is admitted
            // unchecked (`instances.rs`).
            instances.attach(&d.store_handle()).map_err(Fatal::from)?;
            Ok(d)
        }) {
        Ok(d) => d,
        Err(e) => {
            peers_stop.cancel();
            tracker.close();
            tracker.wait().await;
            return Err(e.into());
        }
    };
    if let Some(signal) = handover {
        let (node, stop, bound) = (handle.clone(), stop.clone(), config.election_timeout * 2);
        tracker.spawn(async move {
            tokio::select! {
                _ = signal.cancelled() => {}
                _ = stop.cancelled() => return,
            }
            node.hand_over(bound).await;
            stop.cancel();
        });
    }
    let driver_stop = stop.clone();
    let driver_task = tracker.spawn(async move {
        // A fatal error stops the server too, and so does a panic (the guard cancels while
        // unwinding), or the node would serve "shutting down" forever.
        let _stop_server = driver_stop.clone().drop_guard();
        driver.run(driver_stop).await
    });

    let served = serve(listener, &config, &urls, &instances, handle, stop.clone()).await;
    stop.cancel();
    let driven = match tokio::time::timeout(SHUTDOWN_GRACE, driver_task).await {
        Ok(joined) => joined.map_err(|e| RunError::Driver(e.to_string())),
        Err(_elapsed) => Err(RunError::Driver(format!(
            "the driver did not stop within {SHUTDOWN_GRACE:?}"
        ))),
    };
    peers_stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    driven??;
    served?;
    info!(node_id = config.id, "stopped");
    Ok(())
}

/// Serves every service on `listener` until `stop` is cancelled, then drains open connections
/// for at most [`SHUTDOWN_DRAIN`] and drops the rest. Every call runs in `urls`' scope, so
/// redirects name advertised client addresses.
async fn serve(
    listener: TcpListener,
    config: &Arc<NodeConfig>,
    urls: &ClientUrls,
    instances: &instances::Instances,
    handle: NodeHandle,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let service_names = [
        "",
        <RaftServer<RaftService> as NamedService>::NAME,
        <KvServer<KvService> as NamedService>::NAME,
        <LockServer<LockService> as NamedService>::NAME,
        <LeaseServer<LeaseService> as NamedService>::NAME,
        <WatchServer<WatchService> as NamedService>::NAME,
        <ClusterServer<ClusterService> as NamedService>::NAME,
    ];
    for name in service_names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    // The etcd front end's view of this member: its services, and the watch engine that
    // kvstore.v1.Watch shares with etcd's Watch.
    let member = etcd::Member::new(config, handle.clone());
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let router = Server::builder()
        .layer(urls.clone())
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            RaftServer::new(RaftService::new(
                config.id,
                handle.clone(),
                urls.clone(),
                instances.clone(),
                stop.clone(),
            ))
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT),
        )
        .add_service(
            KvServer::new(KvService::new(handle.clone(), config.max_txn_ops))
                .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
                .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
        )
        .add_service(
            LockServer::new(LockService::new(
                handle.clone(),
                config.max_waiting_acquires,
            ))
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(
                handle.clone(),
                etcd::member::min_lease_ttl(config.election_timeout),
            ))
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
        )
        .add_service(
            // One revision's events are never split, and with prev_kv each carries two values:
            // answers may exceed a request's size (the etcd Watch has the same limit).
            WatchServer::new(WatchService::new(etcd::EtcdWatch::new(member.clone())))
                .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
                .max_encoding_message_size(etcd::member::ENCODE_LIMIT),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(
                config.clone(),
                urls.clone(),
                handle.clone(),
            ))
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT),
        );
    let router = etcd::add_services(router, &member, urls);
    info!(
        node_id = config.id,
        addr = %config.address(),
        advertised = urls.own(),
        peers = config.peers.len(),
        version = env!("CARGO_PKG_VERSION"),
        etcd_api = etcd::ETCD_API_VERSION,
        "serving gRPC"
    );
    let drained = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        }
    };
    let shutdown = async move {
        stop.cancelled().await;
        for name in service_names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    // Accepted sockets get TCP_NODELAY: without it a small answer can wait ~40 ms for the
    // peer's delayed ACK (Nagle), on client calls and on AppendEntries replies alike.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
        })
    });
    tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, shutdown) => served?,
        () = drained => warn!(
            drain_ms = SHUTDOWN_DRAIN.as_millis() as u64,
            "connections still open after the drain period; dropping them"
        ),
    }
    Ok(())
}

/// A reflection builder with our descriptors (kvstore.v1 and etcd's) and the health service's.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::pb::etcd::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
