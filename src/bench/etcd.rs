//! The etcd target (cargo feature `etcd`): the same two operations through the etcd-client
//! crate, sent straight to etcd's leader, as the kvstore target does. Also the etcd-API
//! workloads (compare-and-swap, prefix range) for both targets: kvstore's leader is found
//! through its own `Cluster/Status`, then etcd-client talks to its etcd front end.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use super::conn::{Cas, Seen};
use super::{BenchConfig, BenchError, ReadConsistency, Target};

/// The key a kvstore target is probed with before an etcd-API workload.
const PROBE_KEY: &str = "bench/probe";

/// Bound on one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two leader probes.
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// An etcd KV client on a shared channel.
#[derive(Clone)]
pub(crate) struct EtcdConn {
    client: KvClient,
}

impl EtcdConn {
    pub(crate) async fn put(&mut self, key: String, value: &str) -> Result<(), String> {
        self.put_revision(key, value).await.map(drop)
    }

    /// Writes `key` = `value`; returns the revision of the write.
    pub(crate) async fn put_revision(&mut self, key: String, value: &str) -> Result<i64, String> {
        let response = self.client.put(key, value, None).await.map_err(describe)?;
        response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| "Put answer without a header".to_string())
    }

    pub(crate) async fn get(
        &mut self,
        key: String,
        consistency: ReadConsistency,
    ) -> Result<bool, String> {
        let options = match consistency {
            ReadConsistency::Linearizable => None,
            ReadConsistency::Serializable => Some(GetOptions::new().with_serializable()),
        };
        let response = self.client.get(key, options).await.map_err(describe)?;
        Ok(!response.kvs().is_empty())
    }

    /// `Txn(if mod_revision(key) == seen then put key seen+1 else get key)`.
    pub(crate) async fn txn_cas(&mut self, key: String, seen: Seen) -> Result<Cas, String> {
        let next = seen.value + 1;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                seen.mod_revision,
            )])
            .and_then([TxnOp::put(key.clone(), next.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.client.txn(txn).await.map_err(describe)?;
        if response.succeeded() {
            let revision = response
                .header()
                .map(|h| h.revision())
                .ok_or("Txn answer without a header")?;
            return Ok(Cas::Swapped(Seen {
                mod_revision: revision,
                value: next,
            }));
        }
        match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                Some(kv) => Ok(Cas::Conflict(Seen {
                    mod_revision: kv.mod_revision(),
                    value: counter_value(&key, kv.value())?,
                })),
                None => Ok(Cas::Conflict(Seen::default())),
            },
            _ => Err("failed Txn answer without the Range of its else branch".to_string()),
        }
    }

    /// A Range of every key under `prefix`: the number of keys.
    pub(crate) async fn range(
        &mut self,
        prefix: String,
        consistency: ReadConsistency,
    ) -> Result<usize, String> {
        let options = match consistency {
            ReadConsistency::Linearizable => GetOptions::new().with_prefix(),
            ReadConsistency::Serializable => GetOptions::new().with_prefix().with_serializable(),
        };
        let response = self
            .client
            .get(prefix, Some(options))
            .await
            .map_err(describe)?;
        Ok(response.kvs().len())
    }

    /// Every key under `prefix` with its mod revision and decimal value.
    pub(crate) async fn counters(&mut self, prefix: String) -> Result<Vec<(String, Seen)>, String> {
        let options = GetOptions::new().with_prefix();
        let response = self
            .client
            .get(prefix, Some(options))
            .await
            .map_err(describe)?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let value = counter_value(&key, kv.value())?;
                Ok((
                    key,
                    Seen {
                        mod_revision: kv.mod_revision(),
                        value,
                    },
                ))
            })
            .collect()
    }
}

/// A counter's value: a decimal number.
fn counter_value(key: &str, value: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "counter {key} holds {} bytes that are not a number",
                value.len()
            )
        })
}

/// The error kind of a failed call: the gRPC code and message, or the client's error.
pub(crate) fn describe(err: etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

fn connect_error(endpoint: &str) -> impl Fn(etcd_client::Error) -> BenchError + '_ {
    move |e| BenchError::Connect {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

/// An etcd client on `endpoints` (one HTTP/2 connection when there is one endpoint).
pub(crate) async fn client(endpoints: &[String]) -> Result<Client, BenchError> {
    let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(connect_error(&endpoints.join(",")))
}

/// The leader's client URL, from the maintenance status (leader id) and the member list.
async fn leader_url(client: &mut Client) -> Result<Option<String>, etcd_client::Error> {
    let leader = client.status().await?.leader();
    if leader == 0 {
        return Ok(None);
    }
    let members = client.member_list().await?;
    Ok(members
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .and_then(|m| m.client_urls().first().cloned()))
}

/// The leader's client URL and `config.connections` etcd clients connected to it alone. For
/// a kvstore target (an etcd-API workload), the leader comes from kvstore's own status, and a
/// probe Range makes an etcd front end that is not there yet fail the run in one line.
pub(crate) async fn connect(config: &BenchConfig) -> Result<(String, Vec<EtcdConn>), BenchError> {
    let leader = leader(config).await?;
    let mut pool = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = client(std::slice::from_ref(&leader)).await?;
        pool.push(EtcdConn {
            client: client.kv_client(),
        });
    }
    if config.target == Target::Kvstore {
        if let Some(conn) = pool.first_mut() {
            if let Err(etcd_client::Error::GRpcStatus(status)) =
                conn.client.get(PROBE_KEY, None).await
            {
                if status.code() == Code::Unimplemented {
                    return Err(BenchError::EtcdApiUnimplemented {
                        endpoint: leader,
                        service: "KV",
                        message: status.message().to_string(),
                        workload: config.workload,
                    });
                }
            }
        }
    }
    Ok((leader, pool))
}

/// The leader's client address: etcd's from its status, kvstore's from its own.
pub(crate) async fn leader(config: &BenchConfig) -> Result<String, BenchError> {
    match config.target {
        Target::Etcd => etcd_leader(config).await,
        Target::Kvstore => super::kvstore::find_leader(config).await,
    }
}

/// Every member's client address: etcd's member list, or kvstore's `--endpoints` (its
/// members answer etcd's API on the port they were given).
pub(crate) async fn members(config: &BenchConfig) -> Result<Vec<String>, BenchError> {
    if config.target == Target::Kvstore {
        return Ok(config.endpoints.clone());
    }
    let mut any = client(&config.endpoints).await?;
    let list = any
        .member_list()
        .await
        .map_err(connect_error(&config.endpoints.join(",")))?;
    let urls: Vec<String> = list
        .members()
        .iter()
        .filter_map(|m| m.client_urls().first().cloned())
        .collect();
    if urls.is_empty() {
        return Ok(config.endpoints.clone());
    }
    Ok(urls)
}

/// `Err(EtcdApiUnimplemented)` when `status` says a kvstore node lacks `service`, else the
/// error kind of the failed call.
pub(crate) fn unimplemented(
    config: &BenchConfig,
    endpoint: &str,
    service: &'static str,
    err: etcd_client::Error,
) -> BenchError {
    match err {
        etcd_client::Error::GRpcStatus(status)
            if config.target == Target::Kvstore && status.code() == Code::Unimplemented =>
        {
            BenchError::EtcdApiUnimplemented {
                endpoint: endpoint.to_string(),
                service,
                message: status.message().to_string(),
                workload: config.workload,
            }
        }
        other => BenchError::Connect {
            endpoint: endpoint.to_string(),
            reason: describe(other),
        },
    }
}

/// The etcd leader's client URL, asking until `config.leader_timeout`.
async fn etcd_leader(config: &BenchConfig) -> Result<String, BenchError> {
    let mut any = client(&config.endpoints).await?;
    let started = Instant::now();
    let leader = loop {
        let last = match leader_url(&mut any).await {
            Ok(Some(url)) => break url,
            Ok(None) => "no leader elected".to_string(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > config.leader_timeout {
            return Err(BenchError::NoLeader {
                endpoints: config.endpoints.join(","),
                waited_s: config.leader_timeout.as_secs_f64(),
                last,
            });
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    };
    Ok(leader)
}
