//! The `lease-keepalive` workload (etcd API, cargo feature `etcd`): many leases renewed over
//! a few streams.
//!
//! `key_space` leases with a [`LEASE_TTL_S`] TTL are granted through the leader before the run
//! (and revoked after it). `clients` LeaseKeepAlive streams to the leader, one per client on
//! the `connections` shared channels, each renew their share (lease `i` belongs to client
//! `i % clients`) in turn: send one keep-alive, await its answer, go on with the next lease.
//! One stream carries many leases, as etcd's own client does.
//!
//! Invariants:
//! - One operation is one answered renewal of the lease asked for, with a TTL above 0. An
//!   answer with TTL 0 (the lease expired or is unknown), an answer for another lease, a
//!   failed or timed-out renewal each count as one error.
//! - After a failure the client opens a new stream: a late answer on the old one must not be
//!   taken for the next lease's.
//!
//! The keep-alive streams use the generated etcd client (`crate::pb::etcd`): etcd-client's
//! keeper is bound to one lease per stream, and real clients multiplex.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::Client;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::etcd;
use super::report::ClientStats;
use super::runner::{self, Admission, PRELOAD_WRITERS};
use super::{BenchConfig, BenchError, Report, TestFault};
use crate::pb::etcd::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcd::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};

/// The TTL of every lease, in seconds: long enough that a lease renewed about once per
/// round of its client's share never expires during a run.
pub(crate) const LEASE_TTL_S: i64 = 60;

/// The error kind of a renewal answered with TTL 0.
const EXPIRED: &str = "keep-alive answered TTL 0: the lease expired or is unknown";

/// A client's open keep-alive stream: requests out, answers in.
type KeepAlive = (
    mpsc::Sender<LeaseKeepAliveRequest>,
    Streaming<LeaseKeepAliveResponse>,
);

/// What the clients share.
struct Shared {
    admission: Admission,
    /// Measured renewals answered, for the progress bar.
    completed: AtomicU64,
    config: BenchConfig,
}

/// Runs the workload: see the module doc.
///
/// # Errors
/// No leader, a connection that cannot be opened, a grant that fails, or a kvstore without
/// etcd's Lease service.
pub(crate) async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let leader = etcd::leader(config).await?;
    let mut clients = Vec::with_capacity(config.connections);
    let mut channels = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        clients.push(etcd::client(std::slice::from_ref(&leader)).await?);
        channels.push(super::kvstore::channel(&leader).await?);
    }
    let leases = grant_all(config, &leader, &clients).await?;
    if config.test_fault == Some(TestFault::RevokeLease) {
        if let (Some(&first), Some(client)) = (leases.first(), clients.first_mut()) {
            client
                .lease_client()
                .revoke(first)
                .await
                .map_err(|e| BenchError::Preload(format!("revoking lease {first}: {e}")))?;
        }
    }
    let report = keep_alive_all(config, leader, &channels, &leases).await;
    revoke_all(&clients, leases).await;
    report
}

/// Renews `leases` from `clients` streams until the limit; the report.
async fn keep_alive_all(
    config: &BenchConfig,
    leader: String,
    channels: &[Channel],
    leases: &[i64],
) -> Result<Report, BenchError> {
    let shared = Arc::new(Shared {
        admission: Admission::new(config),
        completed: AtomicU64::new(0),
        config: config.clone(),
    });
    let measure_start = shared.admission.measure_start;
    let mut tasks = JoinSet::new();
    for c in 0..config.clients {
        let share: Vec<i64> = leases
            .iter()
            .skip(c)
            .step_by(config.clients)
            .copied()
            .collect();
        let channel = channels[c % channels.len()].clone();
        tasks.spawn(keeper(
            channel,
            share,
            Arc::clone(&shared),
            runner::new_stats()?,
        ));
    }
    let stats = runner::join_clients(tasks, config, measure_start, &shared.completed).await?;
    let elapsed = Instant::now().saturating_duration_since(measure_start);
    Ok(Report::new(config, leader, elapsed.as_secs_f64(), &stats))
}

/// One client: renews its share of the leases in turn on one stream.
async fn keeper(
    channel: Channel,
    leases: Vec<i64>,
    shared: Arc<Shared>,
    mut stats: ClientStats,
) -> ClientStats {
    let timeout = shared.config.request_timeout;
    let mut stream: Option<KeepAlive> = None;
    for &id in leases.iter().cycle() {
        let start = Instant::now();
        let Some(measured) = shared.admission.admit(start) else {
            break;
        };
        let result = match tokio::time::timeout(timeout, renew(&channel, &mut stream, id)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timeout: no answer within {timeout:?}")),
        };
        if result.is_err() {
            stream = None;
        }
        if !measured {
            continue;
        }
        match result {
            Ok(ttl) if ttl > 0 => {
                stats.record(start.elapsed().as_micros() as u64);
                stats.writes += 1;
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => stats.error(EXPIRED.to_string()),
            Err(kind) => stats.error(kind),
        }
    }
    stats
}

/// One renewal of lease `id` on `stream` (opened first if there is none); the TTL answered.
async fn renew(channel: &Channel, stream: &mut Option<KeepAlive>, id: i64) -> Result<i64, String> {
    let request = LeaseKeepAliveRequest { id };
    let answers = match stream {
        Some((requests, answers)) => {
            requests
                .send(request)
                .await
                .map_err(|_| "keep-alive stream closed".to_string())?;
            answers
        }
        None => {
            // The first request goes into the channel before the call: a server may hold the
            // response headers back until the stream's first message.
            // Room for one request: a client has at most one renewal in flight.
            let (requests, outgoing) = mpsc::channel(1);
            requests
                .send(request)
                .await
                .map_err(|_| "keep-alive stream closed".to_string())?;
            let answers = LeaseClient::new(channel.clone())
                .lease_keep_alive(ReceiverStream::new(outgoing))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            &mut stream.insert((requests, answers)).1
        }
    };
    match answers.message().await {
        Ok(Some(answer)) if answer.id == id => Ok(answer.ttl),
        Ok(Some(_)) => Err("keep-alive answered for another lease".to_string()),
        Ok(None) => Err("keep-alive stream closed by the server".to_string()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Grants `config.key_space` leases, [`PRELOAD_WRITERS`] at a time; their ids.
async fn grant_all(
    config: &BenchConfig,
    leader: &str,
    clients: &[Client],
) -> Result<Vec<i64>, BenchError> {
    let n = config.key_space;
    let granters = PRELOAD_WRITERS.min(n);
    let mut tasks = JoinSet::new();
    for g in 0..granters {
        let mut lease = clients[g as usize % clients.len()].lease_client();
        let (config, leader) = (config.clone(), leader.to_string());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in (g..n).step_by(granters as usize) {
                let timeout = config.request_timeout;
                match tokio::time::timeout(timeout, lease.grant(LEASE_TTL_S, None)).await {
                    Ok(Ok(granted)) => ids.push(granted.id()),
                    Ok(Err(e)) => {
                        return Err(match etcd::unimplemented(&config, &leader, "Lease", e) {
                            BenchError::Connect { reason, .. } => {
                                BenchError::Preload(format!("granting a lease: {reason}"))
                            }
                            other => other,
                        })
                    }
                    Err(_) => {
                        return Err(BenchError::Preload(format!(
                            "granting a lease: no answer within {timeout:?}"
                        )))
                    }
                }
            }
            Ok(ids)
        });
    }
    let mut leases = Vec::with_capacity(n as usize);
    while let Some(joined) = tasks.join_next().await {
        leases.extend(joined.map_err(|e| BenchError::Preload(e.to_string()))??);
    }
    Ok(leases)
}

/// Revokes `leases` so they do not expire into the next run; failures are ignored (the leases
/// then expire after [`LEASE_TTL_S`]).
async fn revoke_all(clients: &[Client], leases: Vec<i64>) {
    let revokers = (PRELOAD_WRITERS as usize).min(leases.len());
    let mut tasks = JoinSet::new();
    for r in 0..revokers {
        let mut lease = clients[r % clients.len()].lease_client();
        let mine: Vec<i64> = leases.iter().skip(r).step_by(revokers).copied().collect();
        tasks.spawn(async move {
            for id in mine {
                // Best effort: a lease the run saw expire is already gone.
                let _ = lease.revoke(id).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
