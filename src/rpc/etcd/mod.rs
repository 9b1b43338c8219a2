//! The etcd v3 front end: etcd's gRPC services (`etcdserverpb`: KV, Watch, Lease, Cluster,
//! Maintenance, Auth) on the node's one port, so etcd's own clients (etcdctl, clientv3, the
//! official client libraries) talk to kvstore unchanged.
//!
//! Served: KV ([`EtcdKv`], on the revisioned key space; a follower forwards to the leader
//! through [`Member`]), Watch ([`EtcdWatch`], every member from its own applied state), Lease
//! ([`EtcdLease`], leases on keys timed by the leader), Maintenance as far as kvstore has
//! it and Cluster (membership changes, `etcdctl member ...`) ([`EtcdMaintenance`]). Every other method answers UNIMPLEMENTED with one line naming it
//! ([`Unimplemented`]). [`errors`] holds the code and exact message of each etcd error, since
//! etcd's clients match errors by message.
//!
//! # What this module may import
//! As the rest of `rpc/`: `pb::etcd` wire types, `node` through its handle, tonic, tokio.
//!
//! # Invariants
//! - Package, service, method, message and field names and numbers are etcd's (3.4, plus the
//!   3.5 additions): etcd clients are compiled against them.
//! - Errors carry etcd's gRPC code and message ([`errors`]), never our own wording, whenever
//!   etcd has a word for the case.
//! - Message-size limits are explicit, as for every client service: KV and Watch decode up to
//!   [`member::DECODE_LIMIT`] and encodes up to [`member::ENCODE_LIMIT`] (etcd's request
//!   limit plus framing, and a cap on Range answers); the others [`CLIENT_MESSAGE_LIMIT`]
//!   both ways.

mod cluster;
mod convert;
pub mod errors;
mod kv;
mod lease;
mod maintenance;
pub mod member;
mod unimplemented;
pub mod watch;

pub use self::kv::EtcdKv;
pub use self::lease::EtcdLease;
pub use self::maintenance::{EtcdMaintenance, ETCD_API_VERSION};
pub use self::member::Member;
pub use self::unimplemented::Unimplemented;
pub use self::watch::EtcdWatch;

use super::client_urls::ClientUrls;
use super::kv_service::CLIENT_MESSAGE_LIMIT;
use crate::pb::etcd::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tonic::transport::server::Router;

/// `$server` with the client services' message-size limits, both ways.
macro_rules! with_client_limits {
    ($server:expr) => {
        $server
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
    };
}

/// Adds every etcd service of `member` to `router`.
pub fn add_services<L>(router: Router<L>, member: &Member, urls: &ClientUrls) -> Router<L> {
    let maintenance = EtcdMaintenance::new(member.clone(), urls.clone());
    router
        .add_service(
            KvServer::new(EtcdKv::new(member.clone()))
                .max_decoding_message_size(member::DECODE_LIMIT)
                .max_encoding_message_size(member::ENCODE_LIMIT),
        )
        .add_service(
            WatchServer::new(EtcdWatch::new(member.clone()))
                .max_decoding_message_size(member::DECODE_LIMIT)
                .max_encoding_message_size(member::ENCODE_LIMIT),
        )
        .add_service(with_client_limits!(LeaseServer::new(EtcdLease::new(
            member.clone()
        ))))
        .add_service(with_client_limits!(ClusterServer::new(maintenance.clone())))
        .add_service(with_client_limits!(MaintenanceServer::new(maintenance)))
        .add_service(with_client_limits!(AuthServer::new(Unimplemented)))
}

#[cfg(test)]
mod tests;
