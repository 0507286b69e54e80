//! # ha-lock
//!
//! The coordination state machine: MVCC keys, leases, fair locks with
//! fencing tokens, optimistic CAS, elections and watch events, as a
//! deterministic `ha_core::StateMachine`.

#![forbid(unsafe_code)]

pub mod api;
mod lessor;
mod machine;
#[cfg(feature = "rocksdb")]
mod rocks;
mod store;

pub use lessor::{DEFAULT_CHECKPOINT_BATCH, DEFAULT_MAX_EXPIRES_PER_TICK, Lessor};
pub use machine::{EventSink, LockMachine};

#[cfg(test)]
mod tests;
