//! One client's handle on the system under test: the same operations for every target. Put
//! and get go through each system's own API; the etcd-API operations (compare-and-swap, prefix
//! range) through etcd's, for kvstore too.

use super::kvstore::KvConn;
use super::{BenchConfig, BenchError, ReadConsistency, Target};

/// What a client last saw of a counter: its mod revision (0: the counter does not exist) and
/// its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub mod_revision: i64,
    pub value: i64,
}

/// The answer to one compare-and-swap attempt, with the counter as it is now.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // only etcd connections answer it
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cas {
    /// The compare held: the counter now holds the incremented value.
    Swapped(Seen),
    /// Someone else changed it first: this is what the else branch read.
    Conflict(Seen),
}

/// Why a put/get connection was asked for an etcd-API operation (never happens: `connect`
/// opens etcd-API connections for the workloads that use them).
const NOT_ETCD_API: &str = "invariant: an etcd-API operation on a kvstore.v1 connection";

/// A cloneable connection: clones share the underlying gRPC channel.
#[derive(Clone)]
pub(crate) enum Conn {
    /// kvstore's `KV` service.
    Kvstore(KvConn),
    /// etcd's KV service (boxed: etcd-client's handle is several times larger).
    #[cfg(feature = "etcd")]
    Etcd(Box<super::etcd::EtcdConn>),
}

impl Conn {
    /// Writes `key` = `value`.
    ///
    /// # Errors
    /// One short line naming the failure kind (it is used to count errors by kind).
    pub(crate) async fn put(&mut self, key: String, value: &str) -> Result<(), String> {
        match self {
            Conn::Kvstore(conn) => conn.put(key, value).await,
            #[cfg(feature = "etcd")]
            Conn::Etcd(conn) => conn.put(key, value).await,
        }
    }

    /// Reads `key`; `Ok(false)` when it does not exist.
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    pub(crate) async fn get(
        &mut self,
        key: String,
        consistency: ReadConsistency,
    ) -> Result<bool, String> {
        match self {
            Conn::Kvstore(conn) => conn.get(key, consistency).await,
            #[cfg(feature = "etcd")]
            Conn::Etcd(conn) => conn.get(key, consistency).await,
        }
    }

    /// One compare-and-swap increment attempt of counter `key`, last seen as `seen`.
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))] // no etcd connection then
    pub(crate) async fn txn_cas(&mut self, key: String, seen: Seen) -> Result<Cas, String> {
        match self {
            Conn::Kvstore(_) => Err(NOT_ETCD_API.to_string()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(conn) => conn.txn_cas(key, seen).await,
        }
    }

    /// Reads every key under `prefix`; returns how many there were.
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))] // no etcd connection then
    pub(crate) async fn range(
        &mut self,
        prefix: String,
        consistency: ReadConsistency,
    ) -> Result<usize, String> {
        match self {
            Conn::Kvstore(_) => Err(NOT_ETCD_API.to_string()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(conn) => conn.range(prefix, consistency).await,
        }
    }

    /// Every key under `prefix` with what it holds as a counter (a value that is not a
    /// decimal number is an error).
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))] // no etcd connection then
    pub(crate) async fn counters(&mut self, prefix: String) -> Result<Vec<(String, Seen)>, String> {
        match self {
            Conn::Kvstore(_) => Err(NOT_ETCD_API.to_string()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(conn) => conn.counters(prefix).await,
        }
    }
}

/// The leader's address and a pool of `config.connections` connections to it.
///
/// # Errors
/// No leader found, a connection that cannot be opened, or an etcd target in a build
/// without the `etcd` feature.
pub(crate) async fn connect(config: &BenchConfig) -> Result<(String, Vec<Conn>), BenchError> {
    if config.workload.uses_etcd_api() {
        #[cfg(feature = "etcd")]
        {
            let (leader, pool) = super::etcd::connect(config).await?;
            return Ok((
                leader,
                pool.into_iter().map(|c| Conn::Etcd(Box::new(c))).collect(),
            ));
        }
        #[cfg(not(feature = "etcd"))]
        return Err(BenchError::EtcdNotBuilt);
    }
    match config.target {
        Target::Kvstore => {
            let (leader, pool) = super::kvstore::connect(config).await?;
            Ok((leader, pool.into_iter().map(Conn::Kvstore).collect()))
        }
        #[cfg(feature = "etcd")]
        Target::Etcd => {
            let (leader, pool) = super::etcd::connect(config).await?;
            Ok((
                leader,
                pool.into_iter().map(|c| Conn::Etcd(Box::new(c))).collect(),
            ))
        }
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => Err(BenchError::EtcdNotBuilt),
    }
}
