//! # ha-lock
//!
//! The coordination state machine: MVCC keys, leases, fair locks with
//! fencing tokens, optimistic CAS, elections and watch events, as a
//! deterministic `ha_core::StateMachine` (work in progress: the public API
//! in [`api`] is fixed; the machine follows).

#![forbid(unsafe_code)]

pub mod api;
