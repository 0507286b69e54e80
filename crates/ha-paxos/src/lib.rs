//! # ha-paxos
//!
//! Multi-Paxos as a deterministic, sans-IO state machine implementing
//! [`ha_core::consensus::Consensus`]: the same contract, driver and test
//! suite as `ha-raft`, so a deployment switches protocol with one config
//! value. It performs no IO, reads no clock and uses only the seed it is
//! given.
//!
//! ## The model: ballots and slots
//!
//! The replicated log is a sequence of **slots**; each slot is an
//! independent instance of single-decree Paxos whose chosen value is one
//! [`Entry`](ha_core::Entry). A **ballot** is a `(round, node id)` pair
//! packed into a [`Term`](ha_core::Term) ([`message::ballot`]); ballots are
//! totally ordered and each belongs to exactly one proposer. Every node is
//! acceptor, learner and (when leading) proposer:
//!
//! - **Acceptor state** is the promised ballot (stored as
//!   [`HardState::term`](ha_core::HardState)) and, per slot, the value
//!   accepted with the ballot it was accepted in (stored as the entry's
//!   `log_id.term`). Both reach the log store before any answer that
//!   depends on them ([`Ready::persisted_messages`]). Acceptors hold slots
//!   out of order and with gaps: the log store's out-of-order writes.
//! - **Phase 1, once for all slots.** A voter that hears no leader for a
//!   randomized timeout (and passes the PrePrepare round described below)
//!   picks a ballot above every one it has heard of and sends one
//!   `Prepare { ballot, from: commit + 1 }`. Each acceptor promises and
//!   answers with every entry it accepted at `from` or above, in chunks of
//!   bounded size. With complete answers from a quorum (of every
//!   configuration involved, see below) the candidate becomes leader: for
//!   each open slot it adopts the value accepted in the **highest
//!   ballot**, fills gaps with **no-ops**, and re-proposes all of them in
//!   its own ballot.
//! - **Phase 2, pipelined and batched.** The leader assigns the next slot to
//!   each proposal and streams `Accept` messages of contiguous slots to
//!   every member within a bounded in-flight window. Acceptors answer with
//!   a cumulative acknowledgement ("everything up to slot *s* is accepted
//!   in your ballot"), so a lost or reordered answer is repaired by the
//!   next one. A slot is chosen when a quorum accepted it; the commit point
//!   is the highest slot up to which everything is chosen.
//! - **Learning.** The commit point rides on every Accept and heartbeat; a
//!   member marks a slot chosen when it holds that slot in the leader's
//!   ballot. A member that holds an older value (or nothing) is re-sent the
//!   slot; one whose slots the leader compacted gets a snapshot through the
//!   driver's snapshot path.
//! - **Stable leader, duel avoidance.** Leader-failure timeouts are drawn
//!   from the seed. Before phase 1 a node asks the voters whether they
//!   *would* promise its next ballot (`PrePrepare`, which changes nothing);
//!   an acceptor says no while it hears from a live leader (stickiness) or
//!   when the asker is behind its snapshot. Only with a quorum of yes does
//!   the node pick a ballot above every ballot it has heard of and run
//!   phase 1, so a node returning from a partition, or one too far behind
//!   to lead, never raises anyone's promise or deposes a healthy leader;
//!   duelling candidates lose a round to a higher ballot, learn it from the
//!   refusal and retry after a fresh random timeout. A leader that cannot
//!   reach a quorum within `election_timeout_min_ms` steps down.
//! - **Snapshots and catch-up.** When the driver reports a snapshot
//!   ([`snapshot_built`](ha_core::consensus::Consensus::snapshot_built)),
//!   slots up to it (minus [`Config::snapshot_trailing_entries`]) are
//!   purged; a member whose next slot is gone gets the snapshot through
//!   [`Ready::send_snapshots`](ha_core::consensus::Ready::send_snapshots),
//!   keeping its accepted slots above it.
//! - **Limits.** Every queue, batch and window is a named [`Config`] value:
//!   in-flight Accepts and bytes per member, entries and bytes per message,
//!   how far ahead of its commit point an acceptor holds slots, how many
//!   slots a phase 1 may recover, uncommitted bytes, pending reads, bytes
//!   applied per Ready.
//!
//! ## Mapping onto the `Consensus` contract
//!
//! | contract | Multi-Paxos |
//! |---|---|
//! | `Term` | ballot `(round << 32) \| node id` |
//! | `HardState.term` | promised ballot (`vote` unused) |
//! | `Entry.log_id.term` | ballot the value was accepted in |
//! | `Ready.entries` | accepted slots, possibly out of order |
//! | `Ready.persisted_messages` | promises and acknowledgements |
//! | `Role::PreCandidate` | asking whether voters would promise (`PrePrepare`) |
//! | `Role::Candidate` | phase 1 in progress |
//! | `read_index` | quorum read (a heartbeat round acknowledged by a quorum), or a leader lease ([`Config::lease_read`], with its clock assumption) |
//! | `transfer_leader` | the target runs phase 1 at once, bypassing stickiness |
//!
//! Unlike Raft, two logs that hold an entry with the same `LogId` need not
//! agree on earlier slots (log matching does not hold); what holds is that a
//! slot's chosen value never changes, and that a new leader holds every
//! chosen value once its phase 1 completes (leader completeness).
//!
//! ## Configuration changes
//!
//! A membership entry at slot *g* **takes effect for the slots after *g*
//! once it is chosen**; until then the leader sends no slot above *g* (it
//! may assign them). The entry at *g* itself must be accepted by a quorum of
//! the old *and* of the new configuration, so when it is chosen a quorum of
//! the new configuration already holds every earlier slot. One change at a
//! time; arbitrary changes (`Replace`) need no joint step. A phase 1 must
//! hear from a quorum of the configuration in force at the candidate's
//! commit point and of every configuration among the values it adopts.
//!
//! ```
//! use ha_core::consensus::Consensus;
//! use ha_core::{Bytes, Membership, NodeId};
//! use ha_paxos::{Config, Paxos};
//!
//! // A one-node cluster: phase 1 with itself, then phase 2 for a proposal.
//! let members = Membership::new([NodeId(1)]);
//! let mut px = Paxos::new(NodeId(1), Config::default(), Default::default(), members, 7).unwrap();
//! px.tick(0);
//! px.tick(5_000); // past the leader-failure timeout: run phase 1
//! let mut committed = Vec::new();
//! let mut id = None;
//! for _ in 0..10 {
//!     if id.is_none() {
//!         id = px.propose(Bytes::from_static(b"hello")).ok();
//!     }
//!     if !px.has_ready() { break; }
//!     let rd = px.ready();
//!     // persist rd.entries / rd.hard_state durably here, then send
//!     // rd.persisted_messages, apply rd.committed ...
//!     committed.extend(rd.committed.iter().map(|e| e.log_id));
//!     px.advance(rd.number);
//! }
//! assert!(committed.contains(&id.unwrap()));
//! ```
//!
//! [`Ready::persisted_messages`]: ha_core::consensus::Ready::persisted_messages

pub mod config;
mod log;
pub mod message;
mod paxos;
pub mod rng;

#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError};
pub use message::Message;
pub use paxos::{Paxos, PaxosError, ROUND_HISTORY_MAX};
