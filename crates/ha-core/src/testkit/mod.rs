//! The test kit (feature `testkit`): a deterministic cluster simulator and a
//! linearizability checker, so every protocol runs the same suite.
//!
//! * [`sim`] runs N nodes of any [`Consensus`](crate::consensus::Consensus)
//!   implementation on a virtual clock, emulating the replica driver, a
//!   faulty network, a disk that loses unsynced writes, clients and a
//!   nemesis, checking safety invariants after every step; one `u64` seed
//!   reproduces a run exactly.
//! * [`linearizability`] checks client histories (from the simulator or
//!   from real processes) against a sequential model.
//! * [`suite`] is the scenario set every protocol runs (same fault mixes,
//!   seed counts and checks, by construction): a protocol crate implements
//!   [`suite::SuiteProtocol`] and writes `ha_core::sim_suite!(MyProtocol);`.
//! * [`bench`] is the in-memory proposal-throughput bench every protocol's
//!   `benches/propose.rs` runs (feature `bench` adds the criterion glue).
//! * [`history`] is the simulator-independent history format.
//! * [`rng`] is the pinned PRNG every random choice comes from.
//!
//! A protocol crate gets the whole suite from a factory:
//!
//! ```ignore
//! use ha_core::testkit::{Harness, SimConfig};
//!
//! // (node id, initial configuration, what the node recovered, seed) -> protocol
//! let harness = Harness::new(|id, initial: &Membership, recovered, seed| {
//!     MyProtocol::new(id, my_config(), recovered, initial.clone(), seed)
//! })
//! .with_invariant("my-local-rule", |view| Ok(()));
//! if let Err(failure) = harness.run_seeds(0..200, &SimConfig::default()) {
//!     panic!("{failure}"); // seed, what broke, the tail of the trace
//! }
//! ```
//!
//! A failing run returns a [`Failure`] naming the seed, what broke and the
//! trace of events and messages (`Display` shows its tail; set
//! `HA_SIM_TRACE_DIR` to have the whole trace written to a file).

pub mod app;
pub mod bench;
pub mod config;
pub mod history;
pub mod linearizability;
pub mod rng;
pub mod sim;
pub mod suite;

pub use config::{
    Checks, ClientConfig, Delay, DiskConfig, Fault, NemesisConfig, NetConfig, PartitionSpec,
    ScheduledFault, SimConfig, TraceConfig,
};
pub use sim::{
    ClusterView, Failure, FailureKind, Harness, Invariant, NodeView, ProtocolFactory, Report,
    SeedsSummary, run,
};
