//! Generates the `ferry.v1` gRPC code. A fresh machine has no `protoc`, so the vendored one is used, and only
//! here: raft-proto's own build rejects a protoc that is not 3.x, so `PROTOC` must never be set globally.

#[cfg(not(feature = "grpc"))]
fn main() {}

#[cfg(feature = "grpc")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_build::Config::new();
    config.protoc_executable(protoc);
    // `bytes` fields become `bytes::Bytes` so batches pass through without copies.
    config.bytes(["."]);
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        // A message that does not decode is the sender's mistake: INVALID_ARGUMENT (src/codec.rs).
        .codec_path("crate::codec::FerryCodec")
        .compile_protos_with_config(config, &["proto/ferry/v1/ferry.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/ferry/v1/ferry.proto");
    Ok(())
}
