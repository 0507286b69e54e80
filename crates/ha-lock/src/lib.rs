//! # ha-lock
//!
//! The coordination state machine: MVCC keys, leases, fair locks with fencing tokens, optimistic CAS, elections, watches (issue 7: not built yet).
//!
//! This crate is an empty placeholder in the workspace so that the crate map
//! and dependency direction are fixed from the start; it exports nothing yet.
