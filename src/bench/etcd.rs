//! The etcd target (cargo feature `etcd`): the same two operations through the etcd-client
//! crate, sent straight to etcd's leader, as the kvstore target does.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use super::{BenchConfig, BenchError, ReadConsistency};

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
        self.client
            .put(key, value, None)
            .await
            .map(drop)
            .map_err(describe)
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
}

fn describe(err: etcd_client::Error) -> String {
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

async fn client(endpoints: &[String]) -> Result<Client, BenchError> {
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

/// The leader's client URL and `config.connections` clients connected to it alone.
pub(crate) async fn connect(config: &BenchConfig) -> Result<(String, Vec<EtcdConn>), BenchError> {
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
    let mut pool = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = client(std::slice::from_ref(&leader)).await?;
        pool.push(EtcdConn {
            client: client.kv_client(),
        });
    }
    Ok((leader, pool))
}
