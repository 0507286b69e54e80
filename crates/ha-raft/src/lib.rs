//! # ha-raft
//!
//! Raft as a deterministic, sans-IO state machine implementing ha_core::consensus::Consensus (issue 4: not built yet).
//!
//! This crate is an empty placeholder in the workspace so that the crate map
//! and dependency direction are fixed from the start; it exports nothing yet.
