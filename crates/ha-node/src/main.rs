//! `ha-node`: the assembled coordination service (issue 8: not built yet).
//!
//! Until the service lands this binary only says so and exits non-zero, so
//! nobody mistakes it for a working node. Try `cargo run --example kv_cluster -p ha-core`.

fn main() {
    eprintln!(
        "ha-node {}: the etcd-compatible service is not built yet; \
         run `cargo run -p ha-core --example kv_cluster` for a working replicated KV demo",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
