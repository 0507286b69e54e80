//! Code generated at build time from `proto/` (etcd v3.5 wire format): the
//! message types and the tonic server traits. Module names are the proto
//! packages, as the generated code refers to its siblings by them.
// Generated code: its docs come from the proto comments; lints that judge
// hand-written style do not apply.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `mvccpb`: stored key-values and change events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `etcdserverpb`: KV, Watch, Lease, Cluster and Maintenance.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `v3lockpb`: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// `v3electionpb`: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
