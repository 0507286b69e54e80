//! # ha-transport-quic
//!
//! The peer Transport over QUIC with mutual TLS (issue 5: not built yet).
//!
//! This crate is an empty placeholder in the workspace so that the crate map
//! and dependency direction are fixed from the start; it exports nothing yet.
