//! # ha-node (library)
//!
//! The parts of the `ha-node` binary that tests and embedders use directly:
//!
//! - [`api`]: the etcd v3 gRPC API (KV, Watch, Lease, Lock, Election,
//!   Cluster, Maintenance) served over any [`api::Backend`].

pub mod api;
