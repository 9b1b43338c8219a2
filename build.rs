//! Compiles proto/kvstore.proto without a system `protoc`: protox parses it into a
//! FileDescriptorSet, tonic-prost-build generates the code from that set, and the encoded
//! set is written to OUT_DIR for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kvstore.proto");
    let fds = protox::compile(["proto/kvstore.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("kvstore_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Entry data and snapshot chunks decode as slices of the received buffer (no copy
        // per entry) and encode from the core's reference-counted payloads.
        .bytes(".kvstore.v1.Entry.data")
        .bytes(".kvstore.v1.InstallSnapshotChunk.data")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
