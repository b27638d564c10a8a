//! Generates the gRPC example's code from `proto/ticker.proto` with the protoc that
//! `protoc-bin-vendored` ships, so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_with_config(config, &["proto/ticker.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/ticker.proto");
    Ok(())
}
