//! Proposals per second through an in-memory Raft cluster (placeholder
//! replaced below).
fn main() {}
