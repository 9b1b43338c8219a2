//! Generated protobuf and gRPC types (package `kvstore.v1`). The only home of wire types:
//! `rpc/` and `client/` convert between these and the core's own types.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

tonic::include_proto!("kvstore.v1");

/// Encoded FileDescriptorSet of proto/kvstore.proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kvstore_descriptor.bin"));
