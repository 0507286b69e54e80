//! # ha-node
//!
//! The assembled coordination service: the etcd v3 gRPC API ([`api`]: KV,
//! Watch, Lease, Lock, Election, Cluster, Maintenance over any
//! [`api::Backend`]), the replicated lock-machine member behind it
//! ([`lock_node`]), configuration ([`config`]), member
//! ids ([`ids`]), peer certificates ([`certs`]), the data dir's identity
//! ([`datadir`]), the replicated member ([`cluster::Node`]), metrics and
//! health ([`metrics`], [`http`]). The `ha-node` binary wires them together.
//!
//! Cargo features pick the parts: `raft` (default) and/or `paxos` — at
//! least one; `--consensus` chooses among those compiled in at run time —,
//! `rocksdb` (default, durable) or memory storage, and `quic` (default, the
//! only peer transport, required).

#[cfg(not(any(feature = "raft", feature = "paxos")))]
compile_error!(
    "ha-node needs a consensus protocol: enable feature `raft` (default) and/or `paxos`"
);
#[cfg(not(feature = "quic"))]
compile_error!("ha-node needs the `quic` feature (the peer transport)");

pub mod api;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod datadir;
pub mod http;
pub mod ids;
pub mod lock_node;
pub mod metrics;
