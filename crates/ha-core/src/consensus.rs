//! The [`Consensus`] contract: a replicated-log protocol as a deterministic,
//! sans-IO state machine.
//!
//! A protocol (Raft in `ha-raft`, Multi-Paxos in `ha-paxos`) never performs
//! IO, never reads a clock, never spawns a task and uses only the randomness
//! it was seeded with. Everything goes in through method calls, and
//! everything it wants done comes out as a [`Ready`] batch. The caller — the
//! async [`Replica`](crate::replica::Replica) driver in production, the
//! deterministic simulator in tests — carries the batch out:
//!
//! 1. send [`Ready::messages`] at once (in parallel with persisting);
//! 2. persist [`Ready::snapshot`] (already staged), then truncate/append
//!    [`Ready::entries`] and save [`Ready::hard_state`] in **one** durable
//!    (fsync'd) write;
//! 3. only then send [`Ready::persisted_messages`] (votes, acknowledgements:
//!    messages that promise something about durable state);
//! 4. apply [`Ready::committed`] in order, after step 2;
//! 5. answer [`Ready::reads`] once the state machine has applied up to each
//!    read's index;
//! 6. call [`Consensus::advance`] with the Ready's number.
//!
//! A protocol hands out at most one Ready at a time: [`Consensus::has_ready`]
//! is false until the previous one was advanced. Proposals made while a
//! Ready is being persisted accumulate and go into the next one, which is
//! how many proposals share one fsync (group commit).
//!
//! ## Identity of proposals
//!
//! [`Consensus::propose`] returns the [`LogId`] the entry was given. An index
//! holds at most one committed entry, so if the entry committed at that index
//! has a different payload the proposal was dropped. The driver tags each
//! command with a unique request id inside the payload, so a protocol that
//! re-proposes a value under a later ballot (Paxos) needs no extra rule.
//!
//! ## The log in memory
//!
//! A protocol keeps the entries after its last snapshot in memory (it needs
//! them to replicate); the log store is written through and read back only on
//! restart ([`Recovered`]). Snapshotting at a configured log size bounds this
//! memory.

use std::fmt::Debug;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{
    Entry, HardState, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};

/// Sequence number of a [`Ready`], starting at 1.
pub type ReadyNumber = u64;

/// Opaque token identifying a linearizable read request; echoed back in
/// [`ReadState`].
pub type ReadCtx = u64;

/// A message to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound<M> {
    /// Destination.
    pub to: NodeId,
    /// Protocol message.
    pub msg: M,
}

/// A read request that is now linearizable: once the local state machine has
/// applied `index`, reading it returns a state at least as new as any write
/// acknowledged before [`Consensus::read_index`] was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The token given to `read_index`.
    pub ctx: ReadCtx,
    /// Commit index the read must wait for.
    pub index: LogIndex,
}

/// A snapshot the leader wants streamed to a follower. The driver streams its
/// state machine's latest snapshot (whose meta must be at least `meta`) with
/// `header` in front; the receiver hands `header` to its protocol via
/// [`Consensus::step`] once the data is staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend<M> {
    /// Destination.
    pub to: NodeId,
    /// The snapshot the leader expects to send.
    pub meta: SnapshotMeta,
    /// Protocol message to deliver with the snapshot.
    pub header: M,
}

/// What the protocol needs done. See the [module docs](self) for the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready<M> {
    /// Sequence number; pass it to [`Consensus::advance`].
    pub number: ReadyNumber,
    /// Send now, in parallel with persisting.
    pub messages: Vec<Outbound<M>>,
    /// Install the snapshot staged from the leader with this meta: replace the
    /// state machine's state and reset the log to start after it. The staged
    /// snapshot may cover more than this meta (the sender streams its state
    /// machine's current one, see [`SnapshotSend`]); the driver then installs
    /// it as it is, and the state machine skips the entries up to its index
    /// when the protocol commits them again.
    pub snapshot: Option<SnapshotMeta>,
    /// Remove every stored entry with index `>=` this before writing
    /// `entries` (a conflicting suffix).
    pub truncate_from: Option<LogIndex>,
    /// Entries to store. Usually contiguous and ascending; Paxos acceptors may
    /// store slots out of order and with gaps.
    pub entries: Vec<Entry>,
    /// New hard state to store, if it changed.
    pub hard_state: Option<HardState>,
    /// Send only after everything above is durable.
    pub persisted_messages: Vec<Outbound<M>>,
    /// Committed entries to apply, in index order, after persisting.
    pub committed: Vec<Entry>,
    /// Reads that became safe.
    pub reads: Vec<ReadState>,
    /// Snapshots to stream to followers.
    pub send_snapshots: Vec<SnapshotSend<M>>,
    /// The log before and including this index is covered by a snapshot and
    /// may be purged from the store.
    pub purge_to: Option<LogIndex>,
}

impl<M> Ready<M> {
    /// An empty Ready with the given number.
    pub fn empty(number: ReadyNumber) -> Self {
        Self {
            number,
            messages: Vec::new(),
            snapshot: None,
            truncate_from: None,
            entries: Vec::new(),
            hard_state: None,
            persisted_messages: Vec::new(),
            committed: Vec::new(),
            reads: Vec::new(),
            send_snapshots: Vec::new(),
            purge_to: None,
        }
    }

    /// Whether the Ready asks for any durable write.
    pub fn needs_persist(&self) -> bool {
        self.snapshot.is_some()
            || self.truncate_from.is_some()
            || !self.entries.is_empty()
            || self.hard_state.is_some()
            || self.purge_to.is_some()
    }
}

/// A node's role as the protocol sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Role {
    /// Follows a leader (Raft follower / Paxos acceptor not leading).
    Follower,
    /// Soliciting votes or running phase 1.
    Candidate,
    /// Pre-vote phase (Raft).
    PreCandidate,
    /// The leader of its term / ballot.
    Leader,
    /// Receives the log, never votes.
    Learner,
}

/// A snapshot of the protocol's observable state, for status pages and the
/// test kit's invariant checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term / ballot.
    pub term: Term,
    /// Known leader, if any.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit: LogIndex,
    /// Last index in the (possibly unpersisted) log.
    pub last_index: LogIndex,
    /// Configuration in force (the latest appended, as Raft prescribes).
    pub membership: Membership,
}

/// A membership change request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a node as learner.
    AddLearner(NodeId),
    /// Promote a learner to voter (single-server change).
    Promote(NodeId),
    /// Add a voter directly (single-server change).
    AddVoter(NodeId),
    /// Remove a voter or learner (single-server change).
    Remove(NodeId),
    /// Move to an arbitrary configuration through joint consensus.
    Replace(Membership),
}

/// Why a request to the protocol was refused. Refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is a hint.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// Known leader, if any.
        leader: Option<NodeId>,
    },
    /// A membership change or leader transfer is already in progress.
    #[error("a membership change or leader transfer is in progress")]
    InProgress,
    /// The proposal is too large or a queue is full; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request is invalid (e.g. a membership with no voters).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A replicated-log protocol, deterministic and sans-IO.
///
/// Implementations are constructed by their own crate from a config, a
/// [`Recovered`] state and a seed; this trait covers everything after that.
pub trait Consensus: Send + 'static {
    /// The protocol's peer message type.
    type Message: Clone + Debug + Send + Serialize + DeserializeOwned + 'static;

    /// This node's id.
    fn id(&self) -> NodeId;

    /// Advances the protocol's notion of time to `now` (monotonic). Drives
    /// election timeouts, heartbeats and lease expiry.
    fn tick(&mut self, now: Millis);

    /// Handles a message from a peer. Malformed or stale messages are
    /// ignored (the network is unreliable by contract), never a panic.
    fn step(&mut self, from: NodeId, msg: Self::Message);

    /// Proposes an application command. Returns the entry's id; the command
    /// is committed when an entry with this id shows up in
    /// [`Ready::committed`].
    fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError>;

    /// Requests a linearizable read; the answer comes in [`Ready::reads`].
    fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError>;

    /// Starts a membership change; committed like a proposal.
    fn change_membership(&mut self, change: MembershipChange) -> Result<LogId, ProposeError>;

    /// Asks the leader to hand leadership to `to`.
    fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError>;

    /// Whether a Ready is available (and the previous one was advanced).
    fn has_ready(&self) -> bool;

    /// Takes the pending work. Call only when [`has_ready`](Self::has_ready).
    fn ready(&mut self) -> Ready<Self::Message>;

    /// Reports that Ready `number` was carried out: its writes are durable
    /// and its persisted messages were handed to the transport.
    fn advance(&mut self, number: ReadyNumber);

    /// Reports that the state machine has applied up to `index`.
    fn applied(&mut self, index: LogIndex);

    /// Reports that the state machine built a snapshot covering `meta`; the
    /// protocol may compact its log up to it.
    fn snapshot_built(&mut self, meta: SnapshotMeta);

    /// The protocol's observable state.
    fn status(&self) -> Status;
}

/// What a node finds in its log store on start, handed to the protocol's
/// constructor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Saved hard state (default on first start).
    pub hard_state: HardState,
    /// Last snapshot, if any; entries up to it are gone.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries after the snapshot (Paxos: may have gaps).
    pub entries: Vec<Entry>,
}
