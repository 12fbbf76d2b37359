//! Compiles cedargate's own gRPC API (`proto/cedargate/v1/`) with protox, a protobuf compiler
//! written in Rust, so a build needs no `protoc` on the machine. The descriptor set is kept in
//! `OUT_DIR` for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cedargate/v1/authorizer.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cedargate_v1_descriptor.binpb"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
