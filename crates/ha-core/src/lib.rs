//! # ha-core
//!
//! The shared foundation of the `ha` toolbox: identifiers and log types
//! ([`types`]), the one serialisation format ([`codec`]), the contracts every
//! other crate plugs into — [`Consensus`](consensus::Consensus),
//! [`LogStore`](storage::LogStore), [`StateMachine`](state_machine::StateMachine),
//! [`Transport`](transport::Transport), [`Placement`](placement::Placement) —
//! in-memory implementations of them, a RocksDB log store (feature
//! `rocksdb`), and the async [`Replica`](replica::Replica) driver that runs
//! any protocol against any store, transport and state machine.
//!
//! ha-core knows no protocol's messages: Raft and Multi-Paxos live in
//! `ha-raft` and `ha-paxos`.

pub mod codec;
pub mod consensus;
pub mod kv;
pub mod placement;
#[cfg(feature = "driver")]
pub mod replica;
pub mod request;
pub mod solo;

pub mod state_machine;
pub mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;
pub mod types;

pub use bytes::Bytes;
pub use types::{
    Entry, EntryPayload, GroupId, HardState, LogId, LogIndex, Membership, Millis, NodeId,
    SnapshotMeta, Term,
};
