//! Generated protobuf and gRPC types: package `kvstore.v1` at the top, and etcd's v3 API in
//! [`etcd`]. The only home of wire types: `rpc/` and `client/` convert between these and the
//! core's own types.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

tonic::include_proto!("kvstore.v1");

/// Encoded FileDescriptorSet of proto/kvstore.proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kvstore_descriptor.bin"));

/// etcd's v3 API (proto/etcd/, our transcription of etcd 3.4 plus its 3.5 additions): the
/// packages keep etcd's names, so `etcdserverpb` refers to `super::mvccpb` as in etcd.
pub mod etcd {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }

    /// Encoded FileDescriptorSet of proto/etcd/, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));
}
