//! One client's handle on the system under test: the same two operations for every target.

use super::kvstore::KvConn;
use super::{BenchConfig, BenchError, ReadConsistency, Target};

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
}

/// The leader's address and a pool of `config.connections` connections to it.
///
/// # Errors
/// No leader found, a connection that cannot be opened, or an etcd target in a build
/// without the `etcd` feature.
pub(crate) async fn connect(config: &BenchConfig) -> Result<(String, Vec<Conn>), BenchError> {
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
