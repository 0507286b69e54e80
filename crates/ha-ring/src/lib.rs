//! # ha-ring
//!
//! Consistent hashing and replica placement implementing ha_core::placement::Placement (issue 6: not built yet).
//!
//! This crate is an empty placeholder in the workspace so that the crate map
//! and dependency direction are fixed from the start; it exports nothing yet.
