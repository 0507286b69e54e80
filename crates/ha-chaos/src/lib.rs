//! The heavy half of `cargo xtask cluster | chaos | bench`.
//!
//! - [`server`]: member processes of `ha-node` or etcd (both take etcd's
//!   flag names), on loopback or in network namespaces;
//! - [`status`]: leader/term/index per member through the Maintenance API;
//! - [`cluster_cmd`]: `ha-chaos cluster`, a local cluster with live status;
//! - [`bench`]: the etcd-v3 load generator and the failover measurement;
//! - [`net`]: one network namespace per member, nftables partitions;
//! - [`workload`]: register/CAS, set and lock workloads and their checks;
//! - [`chaos`]: the nemesis scheduler and the chaos run;
//! - [`shards`]: the shard failover scenario (kill, re-replication, join);
//! - [`report`], [`svg`]: the HTML report and the charts.
//!
//! Everything here talks to servers only through the etcd v3 gRPC API, so
//! the same tools measure and check `ha-node` and etcd alike; only
//! [`shards`], which checks ha-node's placement, also reads ha-node's
//! `/shards` table.

pub mod bench;
pub mod chaos;
pub mod cluster_cmd;
pub mod net;
pub mod report;
pub mod server;
pub mod shards;
pub mod status;
pub mod svg;
pub mod workload;

/// Prefix of every file, directory, namespace and token this process
/// creates (`ha-chaos-<pid>-`), so a later run can find and remove the
/// leftovers of a run that was killed.
pub fn run_prefix() -> String {
    format!("ha-chaos-{}-", std::process::id())
}
