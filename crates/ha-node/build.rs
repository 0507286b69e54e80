//! Generates the etcd v3 gRPC server code from `proto/` with a pure-Rust
//! proto compiler (protox), so building ha-node needs no `protoc`.

use std::path::PathBuf;

/// The proto files, relative to `proto/` (imports resolve from there).
const PROTOS: [&str; 4] = [
    "mvccpb/kv.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Keys and values are `bytes::Bytes`: no copy between the wire and ha-lock.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
