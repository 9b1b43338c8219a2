//! Compiles the protobuf files without a system `protoc`: protox parses them into
//! FileDescriptorSets, tonic-prost-build generates the code from those sets, and each encoded
//! set is written to OUT_DIR for gRPC server reflection.
//!
//! Two sets: proto/kvstore.proto (package `kvstore.v1`), and etcd's v3 API under proto/etcd/
//! (packages `etcdserverpb`, `mvccpb`, `authpb`; our own transcription, see the files).
use std::path::{Path, PathBuf};

/// etcd's v3 API, one file per package.
const ETCD_PROTOS: [&str; 3] = [
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/authpb/auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed=proto/kvstore.proto");
    let fds = protox::compile(["proto/kvstore.proto"], ["proto"])?;
    write_descriptor(&fds, &out_dir.join("kvstore_descriptor.bin"))?;
    tonic_prost_build::configure()
        // Entry data and snapshot chunks decode as slices of the received buffer (no copy
        // per entry) and encode from the core's reference-counted payloads.
        .bytes(".kvstore.v1.Entry.data")
        .bytes(".kvstore.v1.InstallSnapshotChunk.data")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    for file in ETCD_PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(ETCD_PROTOS, ["proto"])?;
    write_descriptor(&fds, &out_dir.join("etcd_descriptor.bin"))?;
    tonic_prost_build::configure()
        .build_server(true)
        // Clients too (unused so far): Rust tests and the load generator can then drive both
        // kvstore and a real etcd through the etcd API without protoc (the etcd-client crate
        // behind kvstore-bench's `etcd` feature needs it).
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Writes an encoded FileDescriptorSet where `pb.rs` includes it for reflection.
fn write_descriptor(fds: &impl prost::Message, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, fds.encode_to_vec())
}
