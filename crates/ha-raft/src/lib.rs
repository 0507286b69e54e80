//! # ha-raft
//!
//! Raft as a deterministic, sans-IO state machine implementing
//! [`ha_core::consensus::Consensus`]. It performs no IO, reads no clock and
//! uses only the seed it is given: the driver (or the simulator) feeds time,
//! messages and proposals in, and carries out the [`Ready`] batches that come
//! out, in the order the [`Consensus`] docs prescribe.
//!
//! Features:
//!
//! - **Election**: randomized timeouts from the seed ([`rng::SplitMix64`]),
//!   pre-vote, check-quorum with leader stickiness, a no-op entry on
//!   election.
//! - **Replication**: pipelined AppendEntries per follower within an
//!   in-flight window bounded by count and bytes, probe / replicate /
//!   snapshot progress states, fast backtracking with conflict hints (one
//!   round trip per conflicting term), proposals batched into one message
//!   and one persist, heartbeats coalesced with replication.
//! - **Durability**: term and vote reach the log store before any message
//!   that depends on them ([`Ready::persisted_messages`]); a leader counts
//!   itself toward commit only after its own [`advance`](ha_core::consensus::Consensus::advance);
//!   only current-term entries are committed by counting. The commit index
//!   is stored only along with a write the Ready makes anyway (it is
//!   volatile in Raft and re-learned after a restart), so advancing it never
//!   costs an fsync of its own.
//! - **Reads**: ReadIndex on the leader (one heartbeat round confirms
//!   leadership) and on followers (forwarded to the leader); optional lease
//!   reads ([`Config::lease_read`], with its clock-drift assumption).
//! - **Leadership transfer** (TimeoutNow).
//! - **Membership**: learners, single-server changes, joint consensus for
//!   arbitrary changes, removal of the leader. A configuration takes effect
//!   when appended; members it removes are still sent the log until it
//!   commits, so they learn of their removal (and stop campaigning).
//! - **Snapshots**: log compaction on [`snapshot_built`](ha_core::consensus::Consensus::snapshot_built),
//!   snapshot streaming to followers whose entries were purged, install on
//!   receipt.
//!
//! ```
//! use ha_core::consensus::Consensus;
//! use ha_core::{Bytes, Membership, NodeId};
//! use ha_raft::{Config, Raft};
//!
//! // A one-node cluster elects itself and commits a proposal.
//! let members = Membership::new([NodeId(1)]);
//! let mut raft = Raft::new(NodeId(1), Config::default(), Default::default(), members, 7).unwrap();
//! raft.tick(0);
//! raft.tick(5_000); // past the election timeout
//! let id = raft.propose(Bytes::from_static(b"hello")).unwrap();
//! let mut committed = Vec::new();
//! for _ in 0..10 {
//!     if !raft.has_ready() { break; }
//!     let rd = raft.ready();
//!     // persist rd.entries / rd.hard_state durably here, send messages, ...
//!     committed.extend(rd.committed.iter().map(|e| e.log_id));
//!     raft.advance(rd.number);
//! }
//! assert!(committed.contains(&id));
//! ```
//!
//! [`Ready`]: ha_core::consensus::Ready
//! [`Ready::persisted_messages`]: ha_core::consensus::Ready::persisted_messages
//! [`Consensus`]: ha_core::consensus::Consensus

pub mod config;
mod log;
pub mod message;
mod progress;
mod raft;
pub mod rng;

#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError};
pub use message::Message;
pub use raft::{ROUND_HISTORY_MAX, Raft, RaftError};
