//! The kvstore target: leader discovery through `Cluster/Status` and raw `KV` calls on the
//! generated tonic client (no session, no retry loop: the bench measures the server).

use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{BenchConfig, BenchError, ReadConsistency};
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::pb::{Consistency, GetRequest, PutRequest, Role, StatusRequest};

/// Bound on one status probe or one connection attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of status probes.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// NOT-leader redirects one request follows before it counts as failed.
const MAX_REDIRECTS: usize = 3;
/// Metadata key of the leader's address on a redirect (see `rpc::status`).
const LEADER_ADDR_KEY: &str = "leader-addr";

/// A `KV` client on a shared channel.
#[derive(Clone)]
pub(crate) struct KvConn {
    client: KvClient<Channel>,
}

impl KvConn {
    pub(crate) async fn put(&mut self, key: String, value: &str) -> Result<(), String> {
        let request = PutRequest {
            key,
            value: value.to_string(),
            session: None,
            fence: None,
            lease: 0,
        };
        for _ in 0..MAX_REDIRECTS {
            match self.client.put(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(status) => self.follow_redirect(&status)?,
            }
        }
        Err("too many redirects".to_string())
    }

    pub(crate) async fn get(
        &mut self,
        key: String,
        consistency: ReadConsistency,
    ) -> Result<bool, String> {
        let consistency = match consistency {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Serializable => Consistency::Serializable,
        };
        let request = GetRequest {
            key,
            consistency: consistency.into(),
        };
        for _ in 0..MAX_REDIRECTS {
            match self.client.get(request.clone()).await {
                Ok(response) => return Ok(response.into_inner().found),
                Err(status) => self.follow_redirect(&status)?,
            }
        }
        Err("too many redirects".to_string())
    }

    /// On a NOT-leader answer, switches this client to the named leader (a channel of its
    /// own) so the caller can retry; any other failure is returned as its error kind.
    fn follow_redirect(&mut self, status: &Status) -> Result<(), String> {
        let leader = status
            .metadata()
            .get(LEADER_ADDR_KEY)
            .and_then(|v| v.to_str().ok());
        match leader {
            Some(addr) if status.code() == Code::Unavailable => {
                let channel = endpoint(addr).map_err(|e| e.to_string())?.connect_lazy();
                self.client = KvClient::new(channel);
                Ok(())
            }
            _ => Err(describe(status)),
        }
    }
}

/// The error kind of a failed call: the code and the message.
fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn endpoint(addr: &str) -> Result<Endpoint, BenchError> {
    let addr = addr.trim().trim_start_matches("http://");
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(PROBE_TIMEOUT).tcp_nodelay(true))
        .map_err(|e| BenchError::Connect {
            endpoint: addr.to_string(),
            reason: e.to_string(),
        })
}

/// A connected channel to `addr` (`HOST:PORT` or `http://HOST:PORT`).
pub(crate) async fn channel(addr: &str) -> Result<Channel, BenchError> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|e| BenchError::Connect {
            endpoint: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Asks every endpoint for its status until one is leader or names one.
pub(crate) async fn find_leader(config: &BenchConfig) -> Result<String, BenchError> {
    let endpoints = &config.endpoints;
    let started = Instant::now();
    let mut last = "no answer yet".to_string();
    loop {
        for addr in endpoints {
            let mut client = ClusterClient::new(endpoint(addr)?.connect_lazy());
            match tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await {
                Ok(Ok(response)) => {
                    let status = response.into_inner();
                    if status.role == Role::Leader as i32 {
                        return Ok(addr.trim_start_matches("http://").to_string());
                    }
                    if !status.leader_address.is_empty() {
                        return Ok(status.leader_address);
                    }
                    last = format!("{addr}: node {} knows no leader", status.id);
                }
                Ok(Err(status)) => last = format!("{addr}: {}", describe(&status)),
                Err(_) => last = format!("{addr}: no answer within {PROBE_TIMEOUT:?}"),
            }
        }
        if started.elapsed() > config.leader_timeout {
            return Err(BenchError::NoLeader {
                endpoints: endpoints.join(","),
                waited_s: config.leader_timeout.as_secs_f64(),
                last,
            });
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// The leader's address and `config.connections` connected clients to it.
pub(crate) async fn connect(config: &BenchConfig) -> Result<(String, Vec<KvConn>), BenchError> {
    let leader = find_leader(config).await?;
    let mut pool = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let channel = channel(&leader).await?;
        pool.push(KvConn {
            client: KvClient::new(channel),
        });
    }
    Ok((leader, pool))
}
