//! [`Node`]: one replicated member — log store, consensus, QUIC transport,
//! the [`Replica`] driver and the [`ClusterMachine`] around the
//! application state machine `S` — plus what a member does besides
//! consensus: forwarding writes to the leader, membership changes with a
//! replicated member table, peer address management, and a status poller
//! feeding [`Metrics`].
//!
//! ```text
//!  client call ─► NodeHandle ─► local Replica ──(NotLeader)──► transport request ─► leader's
//!                   │                                                              request task
//!                   └─ reads: read_index (any member) / query (serializable)        │
//!                                                                  leader Replica ◄─┘
//! ```
//!
//! ## Forwarding
//!
//! A write on a follower is sent to the leader over the transport's request
//! path with a deadline ([`NodeConfig::forward_timeout_ms`]); the leader
//! proposes it locally (it never forwards again) and answers with the state
//! machine's response. A request is retried — at most
//! [`MAX_LEADER_ATTEMPTS`] times in all, within the same deadline — only
//! when it was certainly not applied (the receiver was not the leader, the
//! request never left, or the proposal was dropped); when the outcome is
//! unknown (timeout, connection lost mid-request, or this member stopped
//! taking the target for the leader while waiting — a crashed leader never
//! answers) the caller gets [`NodeError::OutcomeUnknown`] and nothing is
//! retried.
//!
//! Concurrent forwarded writes to the same leader and group are coalesced
//! ([`batch`]): while [`batch::MAX_BATCHES_IN_FLIGHT`] batches are on their
//! way, new writes queue and then travel together as one
//! [`PeerRequest::ProposeBatch`]; the leader proposes the items
//! concurrently and answers each one's own result. The rule above holds
//! per item: an item the leader refused as not the leader, or a batch that
//! never left, is retried; a batch whose outcome is unknown is unknown for
//! every item in it; each caller keeps its own deadline. A leader of a
//! build from before batches answers a batch "undecodable request"
//! (nothing applied): its entries are sent again singly, and the follower
//! forwards to that leader singly for the rest of the term (at most
//! [`batch::BATCH_REFUSAL_TTL`]).
//!
//! ## Membership
//!
//! Changes run on the leader, one at a time, each in its own task (a caller
//! that stops waiting cannot stop a change half-way): add = table entry,
//! then consensus `AddLearner`/`AddVoter` (the table entry is withdrawn if
//! that fails); remove = consensus `Remove`, then the table entry;
//! promote = consensus `Promote`, then the table. A change answers once its
//! configuration entry has committed (etcd's rule), so a re-added member can
//! be started after `MemberAdd` returns.
//!
//! Invariant: the member list a client sees is the table filtered by the
//! consensus configuration, so it never names a member that is not in the
//! configuration; the leader withdraws table entries that are not in the
//! configuration (a lost second step). Members added at run time get a
//! fresh id from the member table (never one used before in the cluster,
//! see [`machine`]) and publish their name and client URLs once they run.
//!
//! Invariant: frames and requests from a removed member's id (a tombstone
//! in the member table) are dropped/refused on every member, logged once
//! per id and counted ([`NodeHandle::removed_refusals`]).
//!
//! A learner is promoted only when it is in sync: the leader asks it for its
//! applied index ([`PeerRequest::Progress`]) and refuses (etcd's "can only
//! promote a learner member which is in sync with leader") when it is more
//! than 10 % of the leader's commit index behind ([`learner_in_sync`],
//! capped by [`PROMOTE_MAX_LAG_ENTRIES`]) or does not answer within
//! [`PROGRESS_TIMEOUT_MS`].
//!
//! ## Joining
//!
//! A member joining an existing cluster knows its own id (from its data dir
//! or its certificate, which the operator issued for the id `MemberAdd`
//! returned) but not the ids of the members it is told to contact when
//! those were added at run time. It dials each contact under the id the
//! contact would have as a founder; and the leader dials *it* (the table
//! gives the leader its id and address): a sender it does not know yet is
//! tried at the contacts' addresses in turn until the connection comes up,
//! so replies reach the leader and the member table arrives through the log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ha_core::consensus::{MembershipChange, ProposeError, Role};
use ha_core::replica::{Replica, ReplicaConfig, ReplicaError, ReplicaHandle};
use ha_core::state_machine::StateMachine;
use ha_core::storage::{LogStore, MemLogStore};
use ha_core::{GroupId, Membership, NodeId, codec};
use ha_transport_quic::{
    IncomingRequest, NodeIdentity, QuicConfig, QuicTransport, RequestError, TransportError,
};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ConsensusKind;
use crate::ids;
use crate::metrics::{Metrics, Sample};

pub mod batch;
#[cfg(test)]
mod forward_tests;
pub mod hosting;
pub mod machine;
pub mod wire;

pub use machine::{ClusterMachine, Member, MemberTable, MetaCommand, MetaResponse};
use wire::{BatchItem, PeerRequest, PeerResponse, WireError};

/// The consensus group of the node's one log.
pub const GROUP: GroupId = GroupId(0);
/// Attempts to reach the leader for one request (local try, forward, one
/// retry after a leader change).
pub const MAX_LEADER_ATTEMPTS: usize = 3;
/// Requests from peers served at once; more are answered `Busy`.
pub const MAX_SERVED_REQUESTS: usize = 512;
/// How long shutdown waits for the transport to drain, in milliseconds.
pub const SHUTDOWN_DRAIN_MS: u64 = 1_000;
/// Most files visited when measuring the database size.
pub const MAX_DB_FILES_WALKED: usize = 100_000;
/// Time a peer-address lookup may take, in milliseconds.
pub const RESOLVE_TIMEOUT_MS: u64 = 2_000;
/// Largest command the node proposes, in bytes: etcd's default request
/// limit (1.5 MiB + 512) with room for the command encoding.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;
/// Bytes the driver's request tag and the entry tag add to a command.
const PROPOSAL_OVERHEAD_BYTES: usize = 64;
/// Pause between two tries when waiting for a leader, in milliseconds.
const LEADER_POLL_MS: u64 = 20;
/// How long a request forwarded to a member that lost its leadership
/// meanwhile still waits for that member's answer, ms (see
/// [`NodeHandle::forward_to_leader`]).
const LEADER_LEFT_GRACE_MS: u64 = 300;
/// Longest a leader holds a proposal refused because a leader transfer or
/// membership change is in progress, retrying every [`LEADER_POLL_MS`]
/// (a transfer completes within an election timeout).
const IN_PROGRESS_WAIT_MS: u64 = 3_000;
/// Status polls between two checks of the member table against the
/// consensus configuration on the leader (with the default 200 ms poll:
/// every second).
const RECONCILE_EVERY_TICKS: u64 = 5;
/// Most log entries a learner's applied index may trail the leader's
/// commit index for `MemberPromote` to accept it (the cap of the relative
/// rule in [`learner_in_sync`]). A learner this close catches up within a
/// few heartbeats; one further behind would stall commits (Raft) or accept
/// rounds (Paxos) of the configuration it joins.
pub const PROMOTE_MAX_LAG_ENTRIES: u64 = 1_000;
/// Lag in entries always tolerated (small logs, writes in flight).
pub const PROMOTE_MIN_LAG_ENTRIES: u64 = 16;
/// How long the leader waits for a learner's progress answer before a
/// promotion is refused as not in sync, in milliseconds.
pub const PROGRESS_TIMEOUT_MS: u64 = 1_000;
/// Most not-yet-known senders a joining member remembers while it learns
/// their addresses (see [Joining](self#joining)).
pub const MAX_UNKNOWN_SENDERS: usize = 64;
/// How long the leader waits for a member to acknowledge a snapshot before
/// it probes the member again (and sends a new snapshot if still needed),
/// in election timeouts; at least [`MIN_SNAPSHOT_SEND_TIMEOUT_MS`]. A
/// transfer lost on the way (sent while the member's connection was coming
/// back, or discarded by its receiver) then costs seconds, not the
/// protocols' default minute.
pub const SNAPSHOT_SEND_TIMEOUT_ELECTIONS: u64 = 10;
/// Lower bound of the snapshot send timeout, in milliseconds.
pub const MIN_SNAPSHOT_SEND_TIMEOUT_MS: u64 = 5_000;

fn snapshot_send_timeout_ms(cfg: &NodeConfig) -> u64 {
    cfg.election_timeout_ms
        .saturating_mul(SNAPSHOT_SEND_TIMEOUT_ELECTIONS)
        .max(MIN_SNAPSHOT_SEND_TIMEOUT_MS)
}

/// Why a node call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This member is not the leader and could not reach one; nothing was
    /// done.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// No leader within the deadline, or the leader cannot be reached;
    /// nothing was done.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A queue or limit is full; nothing was done.
    #[error("busy: {0}")]
    Busy(String),
    /// The command is larger than the limit.
    #[error("request of {size_bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge {
        /// Size.
        size_bytes: usize,
        /// Limit.
        max_bytes: usize,
    },
    /// The request may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request is invalid; nothing was done.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No member with this id.
    #[error("member {0:x} not found")]
    MemberNotFound(u64),
    /// A learner is not (known to be) in sync with the leader; nothing was
    /// done.
    #[error("can only promote a learner member which is in sync with leader: {0}")]
    LearnerNotReady(String),
    /// The id belongs to a member that was removed from the cluster; ids
    /// are never admitted again.
    #[error(
        "member {0:x} was removed from the cluster and cannot rejoin under this id: \
         add it again (`member add`), issue a certificate for the new id and start it \
         with an empty data dir"
    )]
    Removed(u64),
    /// The node is shutting down (for a write: outcome unknown).
    #[error("node is shutting down")]
    Shutdown,
    /// Storage or the state machine failed; the replica stopped.
    #[error("replica stopped: {0}")]
    Fatal(String),
    /// The node could not start.
    #[error("{0}")]
    Start(String),
}

impl From<ReplicaError> for NodeError {
    fn from(e: ReplicaError) -> Self {
        use ha_core::consensus::ProposeError;
        match e {
            ReplicaError::NotLeader { leader } => NodeError::NotLeader { leader },
            ReplicaError::Busy(m) => NodeError::Busy(m),
            ReplicaError::TooLarge {
                size_bytes,
                max_bytes,
            } => NodeError::TooLarge {
                size_bytes,
                max_bytes,
            },
            ReplicaError::Dropped => NodeError::Unavailable(
                "the proposal lost its log position to a leader change; it was not applied".into(),
            ),
            ReplicaError::Shutdown => NodeError::Shutdown,
            ReplicaError::Rejected(ProposeError::InProgress) => NodeError::Unavailable(
                "a membership change or leader transfer is in progress".into(),
            ),
            ReplicaError::Rejected(ProposeError::NotLeader { leader }) => {
                NodeError::NotLeader { leader }
            }
            ReplicaError::Rejected(ProposeError::Overloaded(m)) => NodeError::Busy(m),
            ReplicaError::Rejected(ProposeError::Invalid(m)) => NodeError::Invalid(m),
            ReplicaError::OutcomeUnknown => {
                NodeError::OutcomeUnknown("a snapshot replaced the state".into())
            }
            ReplicaError::Storage(m)
            | ReplicaError::StateMachine(m)
            | ReplicaError::Protocol(m) => NodeError::Fatal(m),
            ReplicaError::Config(m) => NodeError::Start(m),
        }
    }
}

impl From<NodeError> for WireError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader } => WireError::NotLeader(leader.map(|l| l.0)),
            NodeError::Busy(m) => WireError::Busy(m),
            NodeError::TooLarge {
                size_bytes,
                max_bytes,
            } => WireError::Invalid(format!(
                "request of {size_bytes} bytes exceeds the limit of {max_bytes}"
            )),
            NodeError::Invalid(m) => WireError::Invalid(m),
            NodeError::MemberNotFound(id) => WireError::MemberNotFound(id),
            NodeError::LearnerNotReady(m) => WireError::LearnerNotReady(m),
            NodeError::Removed(id) => WireError::Removed(id),
            NodeError::OutcomeUnknown(m) => WireError::OutcomeUnknown(m),
            NodeError::Shutdown => WireError::OutcomeUnknown("the leader is shutting down".into()),
            NodeError::Unavailable(m) | NodeError::Fatal(m) | NodeError::Start(m) => {
                WireError::Unavailable(m)
            }
        }
    }
}

impl From<WireError> for NodeError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader(l) => NodeError::NotLeader {
                leader: l.map(NodeId),
            },
            WireError::Busy(m) => NodeError::Busy(m),
            WireError::Unavailable(m) => NodeError::Unavailable(m),
            WireError::OutcomeUnknown(m) => NodeError::OutcomeUnknown(m),
            WireError::Invalid(m) => NodeError::Invalid(m),
            WireError::MemberNotFound(id) => NodeError::MemberNotFound(id),
            WireError::LearnerNotReady(m) => NodeError::LearnerNotReady(m),
            WireError::Removed(id) => NodeError::Removed(id),
        }
    }
}

/// Where the log lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// RocksDB in this directory (durable).
    #[cfg(feature = "rocksdb")]
    Rocks(PathBuf),
    /// In memory: lost when the process ends.
    Memory,
}

/// Everything a [`Node`] needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's name.
    pub name: String,
    /// This member's id.
    pub member_id: NodeId,
    /// Cluster id from the configuration (0 = learn it from the cluster).
    pub cluster_id: u64,
    /// Cluster token (founding member ids derive from it).
    pub token: String,
    /// Founding members when founding a cluster; `None` when joining.
    pub founding: Option<Vec<Member>>,
    /// Peers to dial before the member table is known: (id, peer URLs).
    pub contacts: Vec<(NodeId, Vec<String>)>,
    /// Peer URLs this member advertises.
    pub advertise_peer_urls: Vec<String>,
    /// Client URLs this member advertises.
    pub advertise_client_urls: Vec<String>,
    /// Peer transport listen address.
    pub listen_peer: SocketAddr,
    /// TLS identity.
    pub identity: NodeIdentity,
    /// Protocol.
    pub consensus: ConsensusKind,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Election timeout (lower bound; the upper is 1.5 × it), ms.
    pub election_timeout_ms: u64,
    /// Log store.
    pub storage: StorageKind,
    /// Deadline of a request, ms: a write waits at most this for a leader
    /// to be known, to be forwarded and to commit (on the leader too), a
    /// linearizable read for its read barrier. Past it the caller gets
    /// [`NodeError::OutcomeUnknown`] (etcd's "request timed out"). `ha-node`
    /// sets it as etcd does: 5 s + 2 election timeouts.
    pub forward_timeout_ms: u64,
    /// Status poll period (metrics, health, housekeeping), ms.
    pub status_interval_ms: u64,
    /// Peer address refresh period, ms.
    pub peer_resolve_interval_ms: u64,
    /// Driver limits. `snapshot_every_entries` is `--snapshot-count`: the
    /// node builds a snapshot (and the protocol purges its log) every this
    /// many applied entries; the member table is stored with the
    /// application's state, so the log is not needed to rebuild it (see
    /// [`machine`]). Use it only with a durable application (the lock
    /// machine on RocksDB): an in-memory one is rebuilt from the log.
    pub replica: ReplicaConfig,
    /// Entries the protocol keeps in its log behind a snapshot
    /// (`--snapshot-catchup-entries`), so that a member that lags by fewer
    /// catches up from the log instead of receiving a snapshot.
    pub snapshot_catchup_entries: u64,
    /// Directory whose size is reported as the database size.
    pub db_dir: Option<PathBuf>,
}

impl NodeConfig {
    /// A config for `cfg` with default limits.
    pub fn from_config(cfg: &crate::config::Config, identity: NodeIdentity) -> NodeConfig {
        let founding = match cfg.initial_cluster_state {
            crate::config::ClusterState::New => Some(
                cfg.initial_cluster
                    .iter()
                    .map(|m| Member {
                        id: ids::member_id(&cfg.token, &m.name).0,
                        name: m.name.clone(),
                        peer_urls: m.peer_urls.clone(),
                        client_urls: if m.name == cfg.name {
                            cfg.advertise_client_urls.clone()
                        } else {
                            Vec::new()
                        },
                        is_learner: false,
                    })
                    .collect(),
            ),
            crate::config::ClusterState::Existing => None,
        };
        // A contact's id follows from its name if it founded the cluster; a
        // contact added at run time has an id the cluster assigned, which a
        // joining member learns from the leader's traffic (see the module
        // docs, "Joining").
        let contacts = cfg
            .initial_cluster
            .iter()
            .filter(|m| m.name != cfg.name)
            .map(|m| (ids::member_id(&cfg.token, &m.name), m.peer_urls.clone()))
            .collect();
        #[cfg(feature = "rocksdb")]
        let storage = StorageKind::Rocks(cfg.data_dir.join("db"));
        #[cfg(not(feature = "rocksdb"))]
        let storage = StorageKind::Memory;
        NodeConfig {
            name: cfg.name.clone(),
            member_id: cfg.member_id,
            cluster_id: match cfg.initial_cluster_state {
                crate::config::ClusterState::New => cfg.cluster_id,
                crate::config::ClusterState::Existing => 0,
            },
            token: cfg.token.clone(),
            founding,
            contacts,
            advertise_peer_urls: cfg.advertise_peer_urls.clone(),
            advertise_client_urls: cfg.advertise_client_urls.clone(),
            listen_peer: cfg.listen_peer,
            identity,
            consensus: cfg.consensus,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            storage,
            // etcd's request timeout: 5 s + 2 election timeouts.
            forward_timeout_ms: 5_000 + 2 * cfg.election_timeout_ms,
            status_interval_ms: 200,
            peer_resolve_interval_ms: 2_000,
            replica: ReplicaConfig {
                group: GROUP,
                max_proposal_bytes: MAX_COMMAND_BYTES,
                snapshot_every_entries: Some(cfg.snapshot_count),
                ..ReplicaConfig::default()
            },
            snapshot_catchup_entries: cfg.snapshot_catchup_entries,
            db_dir: Some(cfg.data_dir.join("db")),
        }
    }
}

/// What [`NodeHandle::status`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member.
    pub member_id: NodeId,
    /// The cluster.
    pub cluster_id: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Role.
    pub role: Role,
    /// Term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Bytes of the database directory (0 for memory storage).
    pub db_size_bytes: u64,
    /// The consensus configuration.
    pub membership: Membership,
}

#[derive(Clone)]
enum Store {
    #[cfg(feature = "rocksdb")]
    Rocks(Arc<ha_core::storage::RocksLogStore>),
    Mem(Arc<MemLogStore>),
}

/// The open log store, as the application may use it.
pub enum AppStore<'a> {
    /// The node's RocksDB (the application may use its `sm` column family).
    #[cfg(feature = "rocksdb")]
    Rocks(&'a Arc<ha_core::storage::RocksLogStore>),
    /// Memory storage: the application keeps its state in memory too.
    Memory(std::marker::PhantomData<&'a ()>),
}

impl Store {
    fn app_store(&self) -> AppStore<'_> {
        match self {
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => AppStore::Rocks(s),
            Store::Mem(_) => AppStore::Memory(std::marker::PhantomData),
        }
    }

    fn dyn_store(&self) -> Arc<dyn LogStore> {
        match self {
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => Arc::clone(s) as Arc<dyn LogStore>,
            Store::Mem(s) => Arc::clone(s) as Arc<dyn LogStore>,
        }
    }

    fn counters(&self) -> (u64, u64, u64) {
        match self {
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => {
                let st = s.stats();
                (st.writes, st.fsyncs, st.bytes)
            }
            Store::Mem(s) => (0, s.sync_count(), 0),
        }
    }
}

/// A data shard hosted on this member (see [`hosting`]).
struct ShardSlot<S: StateMachine> {
    replica: ReplicaHandle<ClusterMachine<S>>,
    /// Bounded inbox of the shard's replica (full: the frame is dropped).
    inbox: tokio::sync::mpsc::Sender<ha_core::transport::Inbound>,
    /// Frames dropped because the inbox was full.
    drops: AtomicU64,
    /// The running replica, taken when the shard is stopped.
    owner: std::sync::Mutex<Option<Replica<ClusterMachine<S>>>>,
}

/// Hosted data shards by group.
type ShardSlots<S> = std::collections::BTreeMap<GroupId, Arc<ShardSlot<S>>>;

/// A read run on a member hosting a shard for a member that does not
/// ([`PeerRequest::Read`]): the query's bytes in, the answer's bytes out.
pub type ReadHook<S> = Arc<dyn Fn(&S, &[u8]) -> Bytes + Send + Sync>;

struct Shared<S: StateMachine> {
    /// Group 0's replica (the member table; the data too with one shard).
    replica: ReplicaHandle<ClusterMachine<S>>,
    /// Data shards this member hosts (empty with one shard).
    shards: std::sync::RwLock<ShardSlots<S>>,
    /// Sharding at run time (`None` with one shard).
    hosting: Option<hosting::Hosting<S>>,
    /// Frames for a group this member does not host.
    unknown_group_frames: AtomicU64,
    /// How a hosted shard serves another member's [`PeerRequest::Read`].
    read_hook: std::sync::OnceLock<ReadHook<S>>,
    transport: Arc<QuicTransport>,
    view: watch::Receiver<Arc<MemberTable>>,
    me: NodeId,
    name: String,
    cluster_id_cfg: u64,
    advertise_client_urls: Vec<String>,
    forward_timeout_ms: u64,
    metrics: Arc<Metrics>,
    db_size_bytes: AtomicU64,
    leader_hook: std::sync::OnceLock<LeaderHook>,
    /// Serialises membership changes on this member (see
    /// [`NodeHandle::change_members`]).
    membership_lock: tokio::sync::Mutex<()>,
    /// Peer URLs this member advertises.
    advertise_peer_urls: Vec<String>,
    /// Frames and requests refused because the sender's id is a tombstone.
    removed_refusals: AtomicU64,
    /// Removed ids already logged at warn level (later refusals log at
    /// debug; bounded by the table's tombstones).
    removed_logged: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Senders not in the member table (or before it is known), at most
    /// [`MAX_UNKNOWN_SENDERS`]: a joining member learns their addresses.
    unknown_senders: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// Coalescers of forwarded writes, per (group, leader); bounded by
    /// [`MAX_FORWARD_TARGETS`].
    forwarders: std::sync::Mutex<HashMap<(GroupId, NodeId), Arc<batch::Coalescer>>>,
}

/// Most (group, leader) pairs a member keeps a forwarding queue for; the
/// idle ones are dropped beyond that.
const MAX_FORWARD_TARGETS: usize = 1_024;

/// Called on the leader after an application command it proposed (its own
/// or forwarded to it) was applied: `(command, response)`. Lets leader-only
/// bookkeeping (e.g. a lease clock) see every write, wherever it came from.
pub type LeaderHook = Arc<dyn Fn(&[u8], &Bytes) + Send + Sync>;

/// A cheap, cloneable client of a [`Node`]. It shares the node's
/// transport: the peer port is released once the node is shut down *and*
/// every handle is dropped.
///
/// A handle addresses one consensus group: [`Node::handle`] gives group 0
/// (the member table; with one shard also the data), [`NodeHandle::shard`]
/// a data shard this member hosts. Proposals, reads and status go to the
/// handle's group; membership calls always go to group 0.
pub struct NodeHandle<S: StateMachine> {
    shared: Arc<Shared<S>>,
    group: GroupId,
    replica: ReplicaHandle<ClusterMachine<S>>,
}

impl<S: StateMachine> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            group: self.group,
            replica: self.replica.clone(),
        }
    }
}

/// A running member.
pub struct Node<S: StateMachine> {
    handle: NodeHandle<S>,
    replica: Replica<ClusterMachine<S>>,
    transport: Arc<QuicTransport>,
    store: Store,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Frames a hosted data shard's inbox holds before new ones are dropped.
pub const SHARD_INBOX_FRAMES: usize = 4096;
/// Period of the shard upkeep (metrics, `/shards`, leader spreading), ms.
pub const SHARD_UPKEEP_MS: u64 = 1_000;
/// Pause before a shard leader tries again to hand leadership to the
/// shard's preferred leader, ms.
pub const LEADER_TRANSFER_RETRY_MS: u64 = 5_000;
/// How long the preferred leader may take to answer the liveness probe
/// that precedes a transfer, ms.
pub const LEADER_PROBE_TIMEOUT_MS: u64 = 500;

fn random_seed(id: NodeId, group: GroupId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ids::pinned_hash(
        "ha-node-seed",
        &[
            &nanos.to_le_bytes(),
            &std::process::id().to_le_bytes(),
            &id.0.to_le_bytes(),
            &group.0.to_le_bytes(),
        ],
    )
}

fn open_store(kind: &StorageKind) -> Result<Store, NodeError> {
    match kind {
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocks(path) => {
            std::fs::create_dir_all(path)
                .map_err(|e| NodeError::Start(format!("cannot create {}: {e}", path.display())))?;
            let store = ha_core::storage::RocksLogStore::open(
                path,
                ha_core::storage::RocksOptions::default(),
            )
            .map_err(|e| {
                NodeError::Start(format!(
                    "cannot open the log store in {} (is another ha-node using this data dir?): {e}",
                    path.display()
                ))
            })?;
            Ok(Store::Rocks(Arc::new(store)))
        }
        StorageKind::Memory => Ok(Store::Mem(Arc::new(MemLogStore::new()))),
    }
}

impl<S: StateMachine> Node<S> {
    /// Opens the store, recovers the protocol, binds the transport and
    /// starts the replica and the node's tasks. Must run inside a tokio
    /// runtime.
    pub async fn start(cfg: NodeConfig, app: S, metrics: Arc<Metrics>) -> Result<Self, NodeError> {
        Self::start_with(cfg, metrics, |_| Ok(app)).await
    }

    /// As [`start`](Self::start), building the application once the log
    /// store is open (a state machine that keeps its data in the node's
    /// RocksDB opens it from [`AppStore::Rocks`]).
    pub async fn start_with<F>(
        cfg: NodeConfig,
        metrics: Arc<Metrics>,
        make_app: F,
    ) -> Result<Self, NodeError>
    where
        F: FnOnce(AppStore<'_>) -> Result<S, String>,
    {
        Self::start_impl(cfg, metrics, None, make_app).await
    }

    /// As [`start_with`](Self::start_with), hosting the data shards of
    /// `shards` (the static placement of `--shards N --replication R`)
    /// this member is listed in, besides group 0: one [`Replica`] per
    /// shard over the same store (every record keyed by group) and the same
    /// transport (inbound frames demultiplexed by group into a bounded inbox
    /// per shard, [`SHARD_INBOX_FRAMES`]). `make_app` builds each group's
    /// application (group 0 first). `None` is the single-group node.
    pub async fn start_groups<F>(
        cfg: NodeConfig,
        metrics: Arc<Metrics>,
        sharding: Option<hosting::ShardingConfig>,
        make_app: F,
    ) -> Result<Self, NodeError>
    where
        F: FnMut(AppStore<'_>, GroupId) -> Result<S, String> + Send + 'static,
    {
        let make = Arc::new(std::sync::Mutex::new(make_app));
        let first = {
            let make = Arc::clone(&make);
            move |store: AppStore<'_>| {
                let mut f = make.lock().unwrap_or_else(|p| p.into_inner());
                (*f)(store, GROUP)
            }
        };
        let hosting = sharding.map(|c| {
            let later: hosting::MakeApp<S> = Box::new(move |store, group| {
                let mut f = make.lock().unwrap_or_else(|p| p.into_inner());
                (*f)(store, group)
            });
            (c, later)
        });
        Self::start_impl(cfg, metrics, hosting, first).await
    }

    async fn start_impl<F>(
        cfg: NodeConfig,
        metrics: Arc<Metrics>,
        sharding: Option<(hosting::ShardingConfig, hosting::MakeApp<S>)>,
        make_first: F,
    ) -> Result<Self, NodeError>
    where
        F: FnOnce(AppStore<'_>) -> Result<S, String>,
    {
        let store = open_store(&cfg.storage)?;
        let app = make_first(store.app_store())
            .map_err(|e| NodeError::Start(format!("state machine: {e}")))?;
        let dyn_store = store.dyn_store();
        let recovered = {
            let s = Arc::clone(&dyn_store);
            tokio::task::spawn_blocking(move || s.recover(GROUP))
                .await
                .map_err(|e| NodeError::Start(format!("recovery task failed: {e}")))?
                .map_err(|e| NodeError::Start(format!("cannot recover the log: {e}")))?
        };
        let bootstrap = match &cfg.founding {
            Some(members) => Membership::new(members.iter().map(|m| NodeId(m.id))),
            None => Membership::default(),
        };

        let mut qc = QuicConfig::new(cfg.listen_peer);
        qc.max_request_budget_ms = qc.max_request_budget_ms.max(cfg.forward_timeout_ms);
        // Frames pass through the tombstone filter on their way to the
        // replica; its queue is as long as the transport's.
        let (admitted_tx, admitted_rx) = tokio::sync::mpsc::channel(qc.inbound_queue_frames.max(1));
        let bound = QuicTransport::bind(cfg.identity.clone(), qc).map_err(|e| match e {
            TransportError::Bind { addr, source } => NodeError::Start(format!(
                "cannot listen for peers on {addr} (--listen-peer-urls): {source}"
            )),
            other => NodeError::Start(format!("peer transport: {other}")),
        })?;
        let transport = Arc::new(bound.transport);
        let transport_inbound = bound.inbound;
        let (view_tx, view_rx) = watch::channel(Arc::new(MemberTable::default()));
        let machine = ClusterMachine::new(app, Arc::new(view_tx))
            .map_err(|e| NodeError::Start(format!("state machine: {e}")))?;
        // After a compaction the log starts past what the store records as
        // a snapshot: the protocol resumes from the application's state.
        let mut recovered = recovered;
        if let Some(base) = machine.resume_point() {
            machine::resume_from(&mut recovered, &base);
        }

        let replica = match cfg.consensus {
            #[cfg(feature = "raft")]
            ConsensusKind::Raft => start_replica(
                &cfg,
                raft_protocol(&cfg, recovered, bootstrap)?,
                Arc::clone(&dyn_store),
                machine,
                &transport,
                admitted_rx,
            )?,
            #[cfg(feature = "paxos")]
            ConsensusKind::Paxos => start_replica(
                &cfg,
                paxos_protocol(&cfg, recovered, bootstrap)?,
                Arc::clone(&dyn_store),
                machine,
                &transport,
                admitted_rx,
            )?,
            // Config validation refuses protocols that are not compiled in;
            // this arm only keeps the match total in single-protocol builds.
            #[allow(unreachable_patterns)]
            other => {
                return Err(NodeError::Start(format!(
                    "--consensus {0}: this binary was built without the {0} feature",
                    other.name()
                )));
            }
        };

        let hosting = sharding.map(|(config, make_app)| hosting::Hosting {
            founding: config.founding.clone().map(Arc::new),
            config,
            make_app: std::sync::Mutex::new(make_app),
            store: store.clone(),
            node_cfg: cfg.clone(),
            lock: tokio::sync::Mutex::new(()),
            liveness: hosting::Liveness::default(),
            started: Instant::now(),
            mismatch_logged: std::sync::atomic::AtomicBool::new(false),
        });
        let shared = Arc::new(Shared {
            shards: std::sync::RwLock::new(ShardSlots::new()),
            hosting,
            unknown_group_frames: AtomicU64::new(0),
            read_hook: std::sync::OnceLock::new(),
            replica: replica.handle(),
            transport: Arc::clone(&transport),
            view: view_rx,
            me: cfg.member_id,
            name: cfg.name.clone(),
            cluster_id_cfg: cfg.cluster_id,
            advertise_client_urls: cfg.advertise_client_urls.clone(),
            forward_timeout_ms: cfg.forward_timeout_ms,
            metrics: Arc::clone(&metrics),
            db_size_bytes: AtomicU64::new(0),
            leader_hook: std::sync::OnceLock::new(),
            membership_lock: tokio::sync::Mutex::new(()),
            advertise_peer_urls: cfg.advertise_peer_urls.clone(),
            removed_refusals: AtomicU64::new(0),
            removed_logged: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            unknown_senders: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            forwarders: std::sync::Mutex::new(HashMap::new()),
        });
        let handle = NodeHandle {
            replica: shared.replica.clone(),
            group: GROUP,
            shared,
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if handle.shared.hosting.is_some() {
            metrics.set_shards_text(format!(
                "# member {}: starting; the shard table follows shortly\n",
                cfg.member_id
            ));
            // The shards the map gives this member, before serving.
            hosting::reconcile(&handle).await?;
            tasks.extend([
                tokio::spawn(shard_upkeep(handle.clone(), stop_rx.clone())),
                tokio::spawn(hosting::hosting_loop(handle.clone(), stop_rx.clone())),
                tokio::spawn(hosting::controller(handle.clone(), stop_rx.clone())),
            ]);
        }
        tasks.extend([
            tokio::spawn(admit_inbound(
                handle.clone(),
                transport_inbound,
                admitted_tx,
                stop_rx.clone(),
            )),
            tokio::spawn(serve_requests(
                handle.clone(),
                bound.requests,
                stop_rx.clone(),
            )),
            tokio::spawn(manage_peers(
                handle.clone(),
                cfg.contacts.clone(),
                cfg.peer_resolve_interval_ms,
                stop_rx.clone(),
            )),
            tokio::spawn(housekeeping(
                handle.clone(),
                cfg.founding.clone(),
                cfg.status_interval_ms,
                store.clone(),
                cfg.db_dir.clone(),
                stop_rx,
            )),
        ]);
        tracing::info!(
            member = %format!("{:x}", cfg.member_id.0),
            name = %cfg.name,
            peer = %cfg.listen_peer,
            protocol = cfg.consensus.name(),
            "replica started"
        );
        Ok(Node {
            handle,
            replica,
            transport,
            store,
            stop,
            tasks,
        })
    }

    /// A client handle.
    pub fn handle(&self) -> NodeHandle<S> {
        self.handle.clone()
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.transport.local_addr()
    }

    /// Graceful stop: background tasks end, the replica finishes the write
    /// in flight and answers every waiter, the transport drains, the store
    /// is closed. Returns the application state machine.
    pub async fn shutdown(mut self) -> Result<S, NodeError> {
        self.stop.send_replace(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        for r in self.handle.take_shard_replicas() {
            if let Err(e) = r.shutdown().await {
                tracing::warn!(error = %e, "a shard replica stopped with an error");
            }
        }
        let result = self.replica.shutdown().await;
        self.handle.shared.metrics.mark_stopped();
        self.transport.shutdown(SHUTDOWN_DRAIN_MS).await;
        #[cfg(feature = "rocksdb")]
        if let Store::Rocks(s) = &self.store {
            let s = Arc::clone(s);
            let _ = tokio::task::spawn_blocking(move || s.close()).await;
        }
        result
            .map(ClusterMachine::into_inner)
            .map_err(NodeError::from)
    }

    /// Stops everything at once without draining or closing anything —
    /// what a crash does to the process's in-memory state (what the OS
    /// already holds of the store's files survives, as after `kill -9`).
    /// For tests.
    pub async fn abort(mut self) {
        self.stop.send_replace(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        drop(self.replica);
        drop(self.handle.take_shard_replicas());
        drop(self.transport);
        drop(self.store);
    }
}

/// Recovers and starts the replica of data shard `group` (its log and
/// state keyed by `group` in the shared store; `bootstrap` = its founding
/// voters), with its own election randomness (seeded from the member and
/// the group, so shards do not elect in lock-step).
async fn start_group<S: StateMachine>(
    cfg: &NodeConfig,
    group: GroupId,
    bootstrap: Membership,
    app: S,
    store: &Arc<dyn LogStore>,
    transport: &Arc<QuicTransport>,
    inbox: tokio::sync::mpsc::Receiver<ha_core::transport::Inbound>,
) -> Result<Replica<ClusterMachine<S>>, NodeError> {
    let mut gcfg = cfg.clone();
    gcfg.replica.group = group;
    let recovered = {
        let s = Arc::clone(store);
        tokio::task::spawn_blocking(move || s.recover(group))
            .await
            .map_err(|e| NodeError::Start(format!("recovery task failed: {e}")))?
            .map_err(|e| {
                NodeError::Start(format!("cannot recover the log of shard {group}: {e}"))
            })?
    };
    // A shard's machine keeps an (always empty) member table: only the
    // configuration it stores with its state matters (restart after a
    // log purge, see `machine`).
    let (view, _) = watch::channel(Arc::new(MemberTable::default()));
    let machine = ClusterMachine::new(app, Arc::new(view))
        .map_err(|e| NodeError::Start(format!("state machine of shard {group}: {e}")))?;
    let mut recovered = recovered;
    if let Some(base) = machine.resume_point() {
        machine::resume_from(&mut recovered, &base);
    }
    let store = Arc::clone(store);
    match gcfg.consensus {
        #[cfg(feature = "raft")]
        ConsensusKind::Raft => start_replica(
            &gcfg,
            raft_protocol(&gcfg, recovered, bootstrap)?,
            store,
            machine,
            transport,
            inbox,
        ),
        #[cfg(feature = "paxos")]
        ConsensusKind::Paxos => start_replica(
            &gcfg,
            paxos_protocol(&gcfg, recovered, bootstrap)?,
            store,
            machine,
            transport,
            inbox,
        ),
        #[allow(unreachable_patterns)]
        other => Err(NodeError::Start(format!(
            "--consensus {0}: this binary was built without the {0} feature",
            other.name()
        ))),
    }
}

/// Starts the driver over `consensus`, whichever protocol it is.
fn start_replica<S: StateMachine, C: ha_core::consensus::Consensus>(
    cfg: &NodeConfig,
    consensus: C,
    store: Arc<dyn LogStore>,
    machine: ClusterMachine<S>,
    transport: &Arc<QuicTransport>,
    inbound: tokio::sync::mpsc::Receiver<ha_core::transport::Inbound>,
) -> Result<Replica<ClusterMachine<S>>, NodeError> {
    Replica::start(
        cfg.replica.clone(),
        consensus,
        store,
        machine,
        Arc::clone(transport) as Arc<dyn ha_core::transport::Transport>,
        inbound,
    )
    .map_err(|e| NodeError::Start(format!("replica: {e}")))
}

/// The largest proposal the protocol must accept: the driver's limit plus
/// the request tag, never below the protocol's own default.
fn protocol_max_proposal_bytes(cfg: &NodeConfig, protocol_default: usize) -> usize {
    cfg.replica
        .max_proposal_bytes
        .saturating_add(PROPOSAL_OVERHEAD_BYTES)
        .max(protocol_default)
}

/// The upper end of the randomized election timer for a configured
/// election timeout `et`: followers time out at a uniform time in
/// `[et, 1.5 × et)` after they last heard from the leader.
///
/// etcd draws from `[et, 2 × et)`. The spread only has to make two
/// survivors unlikely to campaign within one pre-vote round trip of each
/// other (the only way to split a vote once a pre-vote is needed first);
/// half an election timeout does that on any network the timeout suits,
/// while the wider spread put the failover time — the earlier of the
/// survivors' timers, plus one election — above 2 × `et` in a few of every
/// 20 `kill -9`s of the leader (measured in docs/BENCHMARKS.md, "Failover
/// after the connection-id key fix"). Leases and leader stickiness use
/// only the lower end, so they do not change.
fn election_timeout_max_ms(et: u64) -> u64 {
    et.saturating_add((et / 2).max(1))
}

#[cfg(feature = "raft")]
fn raft_protocol(
    cfg: &NodeConfig,
    recovered: ha_core::consensus::Recovered,
    bootstrap: Membership,
) -> Result<ha_raft::Raft, NodeError> {
    let rc = ha_raft::Config {
        election_timeout_min_ms: cfg.election_timeout_ms,
        election_timeout_max_ms: election_timeout_max_ms(cfg.election_timeout_ms),
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        append_retransmit_ms: cfg.heartbeat_interval_ms.saturating_mul(5).max(500),
        max_proposal_bytes: protocol_max_proposal_bytes(
            cfg,
            ha_raft::Config::default().max_proposal_bytes,
        ),
        snapshot_trailing_entries: cfg.snapshot_catchup_entries,
        snapshot_send_timeout_ms: snapshot_send_timeout_ms(cfg),
        ..ha_raft::Config::default()
    };
    ha_raft::Raft::new(
        cfg.member_id,
        rc,
        recovered,
        bootstrap,
        random_seed(cfg.member_id, cfg.replica.group),
    )
    .map_err(|e| NodeError::Start(format!("raft: {e}")))
}

/// Multi-Paxos with the same knobs as Raft: the leader-failure timeout is
/// the election timeout, and phase 1 is retried after one more of it.
#[cfg(feature = "paxos")]
fn paxos_protocol(
    cfg: &NodeConfig,
    recovered: ha_core::consensus::Recovered,
    bootstrap: Membership,
) -> Result<ha_paxos::Paxos, NodeError> {
    let pc = ha_paxos::Config {
        election_timeout_min_ms: cfg.election_timeout_ms,
        election_timeout_max_ms: election_timeout_max_ms(cfg.election_timeout_ms),
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        accept_retransmit_ms: cfg.heartbeat_interval_ms.saturating_mul(5).max(500),
        prepare_timeout_ms: cfg.election_timeout_ms,
        max_proposal_bytes: protocol_max_proposal_bytes(
            cfg,
            ha_paxos::Config::default().max_proposal_bytes,
        ),
        snapshot_trailing_entries: cfg.snapshot_catchup_entries,
        snapshot_send_timeout_ms: snapshot_send_timeout_ms(cfg),
        ..ha_paxos::Config::default()
    };
    ha_paxos::Paxos::new(
        cfg.member_id,
        pc,
        recovered,
        bootstrap,
        random_seed(cfg.member_id, cfg.replica.group),
    )
    .map_err(|e| NodeError::Start(format!("paxos: {e}")))
}

/// Whether a forward failed before the request could have been applied.
fn request_not_sent(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::UnknownPeer(_)
            | RequestError::TooManyInflight
            | RequestError::Busy
            | RequestError::NoHandler
    )
}

/// What a forwarding loop does with the answer to one forwarded request.
enum ForwardStep {
    /// The final answer (the receiver's response or error, or an outcome
    /// that is unknown).
    Done(Result<PeerResponse, NodeError>),
    /// Certainly not applied (the receiver is not the leader, or the
    /// request never left): try again.
    Retry {
        /// The leader the receiver named.
        hint: Option<NodeId>,
        /// What to report if no later try succeeds.
        error: NodeError,
    },
}

/// Classifies the transport's answer to a forwarded request; `peer` names
/// the receiver ("leader 5") and `answerer` what answered ("the leader")
/// in the errors.
fn classify_forward_answer(
    answer: Result<Bytes, RequestError>,
    peer: impl FnOnce() -> String,
    answerer: impl FnOnce() -> String,
) -> ForwardStep {
    match answer {
        Ok(bytes) => match PeerResponse::decode(&bytes) {
            Ok(PeerResponse::Error(WireError::NotLeader(l))) => ForwardStep::Retry {
                hint: l.map(NodeId),
                error: NodeError::NotLeader { leader: None },
            },
            Ok(PeerResponse::Error(e)) => ForwardStep::Done(Err(e.into())),
            Ok(ok) => ForwardStep::Done(Ok(ok)),
            Err(e) => ForwardStep::Done(Err(NodeError::OutcomeUnknown(format!(
                "undecodable answer from {}: {e}",
                answerer()
            )))),
        },
        Err(e) if request_not_sent(&e) => ForwardStep::Retry {
            hint: None,
            error: NodeError::Unavailable(format!("{} unreachable: {e}", peer())),
        },
        Err(RequestError::TooLarge { len, max }) => ForwardStep::Done(Err(NodeError::TooLarge {
            size_bytes: usize::try_from(len).unwrap_or(usize::MAX),
            max_bytes: max,
        })),
        Err(RequestError::Shutdown) => ForwardStep::Done(Err(NodeError::Shutdown)),
        Err(e) => ForwardStep::Done(Err(NodeError::OutcomeUnknown(format!(
            "request to {} failed: {e}",
            peer()
        )))),
    }
}

impl<S: StateMachine> NodeHandle<S> {
    /// This member's id.
    pub fn member_id(&self) -> NodeId {
        self.shared.me
    }

    /// The consensus group this handle addresses.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The handle of group 0 (the member table).
    pub fn meta(&self) -> NodeHandle<S> {
        NodeHandle {
            shared: Arc::clone(&self.shared),
            group: GROUP,
            replica: self.shared.replica.clone(),
        }
    }

    /// The handle of data shard `group` if this member hosts it.
    pub fn shard(&self, group: GroupId) -> Option<NodeHandle<S>> {
        self.shards_read().get(&group).map(|slot| NodeHandle {
            shared: Arc::clone(&self.shared),
            group,
            replica: slot.replica.clone(),
        })
    }

    /// The data shards this member hosts now.
    pub fn hosted_shards(&self) -> std::collections::BTreeSet<GroupId> {
        self.shards_read().keys().copied().collect()
    }

    fn shards_read(&self) -> std::sync::RwLockReadGuard<'_, ShardSlots<S>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.shared.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shards_write(&self) -> std::sync::RwLockWriteGuard<'_, ShardSlots<S>> {
        self.shared
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Every hosted shard's running replica, for shutdown.
    fn take_shard_replicas(&self) -> Vec<Replica<ClusterMachine<S>>> {
        std::mem::take(&mut *self.shards_write())
            .into_values()
            .filter_map(|slot| slot.owner.lock().unwrap_or_else(|p| p.into_inner()).take())
            .collect()
    }

    /// The handle of `group` (0 or a hosted shard); an error naming why
    /// otherwise: `NotLeader` (nothing done, ask another replica) for a
    /// shard of the map this member does not host, `Invalid` for a group
    /// that does not exist.
    fn for_group(&self, group: GroupId) -> Result<NodeHandle<S>, NodeError> {
        if group == GROUP {
            return Ok(self.meta());
        }
        if let Some(h) = self.shard(group) {
            return Ok(h);
        }
        match &self.shared.hosting {
            Some(h) if (1..=u64::from(h.config.shards)).contains(&group.0) => {
                Err(NodeError::NotLeader { leader: None })
            }
            _ => Err(NodeError::Invalid(format!("unknown group {group}"))),
        }
    }

    /// Installs the [`ReadHook`] (once; later calls return false).
    pub fn set_read_hook(&self, hook: ReadHook<S>) -> bool {
        self.shared.read_hook.set(hook).is_ok()
    }

    /// Per hosted shard, frames dropped because its inbox was full; and
    /// frames dropped because they named a group this member does not host.
    pub fn frame_drops(&self) -> (Vec<(GroupId, u64)>, u64) {
        (
            self.shards_read()
                .iter()
                .map(|(g, s)| (*g, s.drops.load(Ordering::Relaxed)))
                .collect(),
            self.shared.unknown_group_frames.load(Ordering::Relaxed),
        )
    }

    /// Proposes an application command to data shard `group`: through this
    /// member's replica if it hosts the shard, else sent to the shard's
    /// replicas in turn (or the leader one of them names), within the
    /// request deadline; retried only when certainly not applied.
    pub async fn propose_to(&self, group: GroupId, cmd: &[u8]) -> Result<Bytes, NodeError> {
        if let Ok(h) = self.for_group(group) {
            return h.propose(cmd).await;
        }
        match self
            .remote(group, PeerRequest::Propose(machine::app_entry(cmd)))
            .await?
        {
            PeerResponse::Applied(b) => Ok(b),
            other => Err(NodeError::Unavailable(format!(
                "unexpected answer from shard {group}: {other:?}"
            ))),
        }
    }

    /// Runs `query` through the [`ReadHook`] on data shard `group`: on
    /// this member if it hosts the shard as a voter, else on a voter of it.
    pub async fn read_from(
        &self,
        group: GroupId,
        linearizable: bool,
        query: Bytes,
    ) -> Result<Bytes, NodeError> {
        if let Ok(h) = self.for_group(group)
            && !self.is_learner_of(group)
        {
            return h
                .handle_local(PeerRequest::Read {
                    linearizable,
                    query,
                })
                .await
                .and_then(|r| match r {
                    PeerResponse::Applied(b) => Ok(b),
                    other => Err(NodeError::Unavailable(format!(
                        "unexpected answer: {other:?}"
                    ))),
                });
        }
        match self
            .remote(
                group,
                PeerRequest::Read {
                    linearizable,
                    query,
                },
            )
            .await?
        {
            PeerResponse::Applied(b) => Ok(b),
            other => Err(NodeError::Unavailable(format!(
                "unexpected answer from shard {group}: {other:?}"
            ))),
        }
    }

    /// Whether the map lists this member as a learner of `group`: its
    /// replica may still be catching up (or empty), so it serves no reads;
    /// they go to the shard's voters.
    fn is_learner_of(&self, group: GroupId) -> bool {
        group != GROUP
            && self
                .shard_map()
                .and_then(|m| {
                    m.shard(group)
                        .map(|s| s.learners().contains(&self.shared.me))
                })
                .unwrap_or(false)
    }

    /// Sends `req` for a shard this member does not host to the shard's
    /// replicas (the map's voters in turn, or the leader a replica names),
    /// within [`NodeConfig::forward_timeout_ms`] and at most
    /// [`MAX_LEADER_ATTEMPTS`] × replicas tries. Retried only when it was
    /// certainly not applied (the receiver refused it as not the leader, or
    /// it never left); otherwise the outcome is unknown.
    async fn remote(&self, group: GroupId, req: PeerRequest) -> Result<PeerResponse, NodeError> {
        let mut replicas: Vec<NodeId> = match self.shard_map() {
            Some(map) => match map.shard(group) {
                Some(st) => st.voters().iter().copied().collect(),
                None => return Err(NodeError::Invalid(format!("unknown group {group}"))),
            },
            None if self.shared.hosting.is_some() => {
                return Err(NodeError::Unavailable(
                    "this member has not learned the shard map yet; retry shortly".into(),
                ));
            }
            None => return Err(NodeError::Invalid(format!("unknown group {group}"))),
        };
        if replicas.is_empty() {
            return Err(NodeError::Unavailable(format!(
                "shard {group} has no replicas"
            )));
        }
        // Replicas heard from lately first: a request to a dead one waits
        // for its whole budget.
        let mut heard = replicas.len();
        if let Some(h) = &self.shared.hosting {
            let now = h.now_ms();
            replicas.sort_by_key(|r| !h.liveness.recently(*r, now));
            heard = replicas
                .iter()
                .filter(|r| h.liveness.recently(**r, now))
                .count()
                .max(1);
        }
        let deadline = Instant::now() + Duration::from_millis(self.shared.forward_timeout_ms);
        let payload = req.encode();
        let mut last =
            NodeError::Unavailable(format!("no replica of shard {group} could be reached"));
        let mut hint: Option<NodeId> = None;
        // Start at a replica heard lately that depends on this member, to
        // spread load (the first pick below is `next + 1`).
        let mut next = ((self.shared.me.0 as usize) % heard + replicas.len() - 1) % replicas.len();
        for _ in 0..MAX_LEADER_ATTEMPTS * replicas.len() {
            let target = match hint.take() {
                Some(l) if l != self.shared.me => l,
                _ => {
                    next = (next + 1) % replicas.len();
                    replicas[next]
                }
            };
            let budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            if budget_ms == 0 {
                break;
            }
            let answer = self
                .shared
                .transport
                .request(target, group, payload.clone(), budget_ms)
                .await;
            match classify_forward_answer(
                answer,
                || format!("replica {target} of shard {group}"),
                || format!("shard {group}"),
            ) {
                ForwardStep::Done(r) => return r,
                ForwardStep::Retry { hint: h, error } => {
                    hint = h;
                    last = error;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
                    }
                }
            }
        }
        Err(last)
    }

    /// The cluster id (learned from the cluster when joining).
    pub fn cluster_id(&self) -> u64 {
        let learned = self.shared.view.borrow().cluster_id;
        if learned != 0 {
            learned
        } else {
            self.shared.cluster_id_cfg
        }
    }

    /// Installs the [`LeaderHook`] (once; later calls return false).
    pub fn set_leader_hook(&self, hook: LeaderHook) -> bool {
        self.shared.leader_hook.set(hook).is_ok()
    }

    /// The metrics handle (the API layer records request latencies in it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The member table as applied locally (serializable).
    pub fn local_members(&self) -> Arc<MemberTable> {
        Arc::clone(&self.shared.view.borrow())
    }

    /// Proposes an application command (through the leader) and returns the
    /// state machine's response bytes.
    pub async fn propose(&self, cmd: &[u8]) -> Result<Bytes, NodeError> {
        match self
            .on_leader(PeerRequest::Propose(machine::app_entry(cmd)))
            .await?
        {
            PeerResponse::Applied(b) => Ok(b),
            other => Err(NodeError::Unavailable(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
        }
    }

    /// Reads the application state: linearizable (read index, on any
    /// member) or serializable (local state as applied).
    pub async fn read<R, F>(&self, linearizable: bool, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        let q = move |m: &ClusterMachine<S>| f(m.inner());
        let r = if linearizable {
            self.bounded("the linearizable read", self.replica.linearizable_query(q))
                .await?
        } else {
            self.replica.query(q).await
        };
        r.map_err(NodeError::from)
    }

    /// The error of a request that did not finish within
    /// [`NodeConfig::forward_timeout_ms`].
    fn timed_out(&self, what: &str) -> NodeError {
        NodeError::OutcomeUnknown(format!(
            "{what} did not complete within {} ms (is a quorum of members reachable?); \
             a write may still be applied",
            self.shared.forward_timeout_ms
        ))
    }

    /// Runs `fut` within [`NodeConfig::forward_timeout_ms`].
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, NodeError> {
        tokio::time::timeout(Duration::from_millis(self.shared.forward_timeout_ms), fut)
            .await
            .map_err(|_| self.timed_out(what))
    }

    /// The members, after a linearizable read barrier.
    pub async fn members(&self) -> Result<Vec<Member>, NodeError> {
        self.bounded(
            "the member list's read barrier",
            self.shared.replica.read_index(),
        )
        .await??;
        if !self.local_members().initialized {
            return Err(NodeError::Unavailable(
                "the member table is not bootstrapped yet".into(),
            ));
        }
        let config = self.current_membership().await?;
        Ok(self.members_in(&config))
    }

    /// Adds a member by peer URLs (as a learner or a voter); returns it and
    /// the members after the change.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>), NodeError> {
        match self
            .meta()
            .on_leader(PeerRequest::MemberAdd {
                peer_urls,
                is_learner,
            })
            .await?
        {
            PeerResponse::Members {
                added: Some(m),
                members,
            } => Ok((m, members)),
            other => Err(NodeError::Unavailable(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
        }
    }

    /// Removes a member; returns the members after the change.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        self.members_call(PeerRequest::MemberRemove { id }).await
    }

    /// Promotes a learner to voter; returns the members after the change.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, NodeError> {
        self.members_call(PeerRequest::MemberPromote { id }).await
    }

    async fn members_call(&self, req: PeerRequest) -> Result<Vec<Member>, NodeError> {
        match self.meta().on_leader(req).await? {
            PeerResponse::Members { members, .. } => Ok(members),
            other => Err(NodeError::Unavailable(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
        }
    }

    /// Leader, term, indexes and database size.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let st = self.replica.status().await?;
        let p = &st.protocol;
        Ok(NodeStatus {
            member_id: self.shared.me,
            cluster_id: self.cluster_id(),
            leader: p.leader,
            role: p.role,
            term: p.term.0,
            commit_index: p.commit.0,
            applied_index: st.applied.0,
            last_index: p.last_index.0,
            is_learner: p.membership.is_learner(self.shared.me),
            db_size_bytes: self.shared.db_size_bytes.load(Ordering::Relaxed),
            membership: p.membership.clone(),
        })
    }

    /// Waits until a leader is known (or `deadline`).
    async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId, NodeError> {
        loop {
            let st = self.replica.status().await?;
            if let Some(l) = st.protocol.leader {
                return Ok(l);
            }
            if Instant::now() + Duration::from_millis(LEADER_POLL_MS) >= deadline {
                return Err(NodeError::Unavailable(
                    "no leader is known (is a quorum of members running?)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
        }
    }

    /// Runs `req` on the leader: locally if this member leads, else
    /// forwarded (see the [module docs](self) for the retry rule).
    async fn on_leader(&self, req: PeerRequest) -> Result<PeerResponse, NodeError> {
        let deadline = Instant::now() + Duration::from_millis(self.shared.forward_timeout_ms);
        let mut last = NodeError::Unavailable("no leader could be reached".into());
        for _ in 0..MAX_LEADER_ATTEMPTS {
            // Bounded on the leader too: a leader that lost its quorum keeps
            // the proposal pending and never answers it.
            let local = tokio::time::timeout_at(deadline, self.handle_local(req.clone()))
                .await
                .unwrap_or_else(|_| Err(self.timed_out("the request")));
            let hint = match local {
                Err(NodeError::NotLeader { leader }) => leader,
                Err(e @ NodeError::Unavailable(_)) => {
                    // Dropped by a leader change: certainly not applied.
                    last = e;
                    None
                }
                other => return other,
            };
            let target = match hint {
                Some(l) if l != self.shared.me => l,
                _ => {
                    // Give a new leader time to be elected.
                    let l = self.wait_for_leader(deadline).await?;
                    if l == self.shared.me {
                        continue;
                    }
                    l
                }
            };
            let budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            if budget_ms == 0 {
                break;
            }
            if let PeerRequest::Propose(entry) = &req
                && let Some(queue) = self.batching_queue(target).await
            {
                let node = self.clone();
                let send: batch::SendFn =
                    Arc::new(move |entries: Vec<Bytes>| -> batch::BatchFuture {
                        let node = node.clone();
                        Box::pin(async move { node.send_batch(target, entries).await })
                    });
                let rx = queue.submit(entry.clone(), send);
                let r = match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(batch::BatchFailure::Unknown(
                        "the forwarding task ended before answering".into(),
                    )),
                    Err(_) => return Err(self.timed_out("the forwarded request")),
                };
                // Refused as a batch (nothing applied): sent singly below.
                if !matches!(r, Err(batch::BatchFailure::Unsupported { .. })) {
                    match batch::item_step(r) {
                        std::ops::ControlFlow::Break(done) => {
                            return done.map(PeerResponse::Applied);
                        }
                        std::ops::ControlFlow::Continue(e) => {
                            last = e;
                            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
                            continue;
                        }
                    }
                }
            }
            let budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            if budget_ms == 0 {
                break;
            }
            let forwarded = match self
                .forward_to_leader(target, req.encode(), budget_ms)
                .await
            {
                Ok(r) => r,
                Err(now) => {
                    return Err(NodeError::OutcomeUnknown(format!(
                        "leader {target} lost its leadership while the request was forwarded to it \
                         ({now}); it may still be applied"
                    )));
                }
            };
            match classify_forward_answer(
                forwarded,
                || format!("leader {target}"),
                || "the leader".to_string(),
            ) {
                ForwardStep::Done(r) => return r,
                // The receiver's hint is not followed: this member's own
                // view of the leader is asked again.
                ForwardStep::Retry { error, .. } => {
                    last = error;
                    tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
                }
            }
        }
        Err(last)
    }

    /// Sends `payload` to `target` (taken for this group's leader) and
    /// waits for the answer, within `budget_ms`. If this member sees
    /// another leader meanwhile ([`leader_left`](Self::leader_left)), the
    /// answer is awaited [`LEADER_LEFT_GRACE_MS`] more: a live old leader
    /// (a transfer, an election it lost) answers at once — applied, or
    /// refused as not the leader — and only a crashed one leaves the
    /// outcome unknown (`Err` with what this member sees now).
    async fn forward_to_leader(
        &self,
        target: NodeId,
        payload: Bytes,
        budget_ms: u64,
    ) -> Result<Result<Bytes, RequestError>, String> {
        let request = self
            .shared
            .transport
            .request(target, self.group, payload, budget_ms);
        tokio::pin!(request);
        tokio::select! {
            r = &mut request => Ok(r),
            now = self.leader_left(target) => {
                tokio::time::timeout(Duration::from_millis(LEADER_LEFT_GRACE_MS), &mut request)
                    .await
                    .map_err(|_| now)
            }
        }
    }

    /// Resolves once this member no longer takes `target` for the leader
    /// (it started an election itself, voted for another member, or follows
    /// a new leader), describing what it sees now. Checked every
    /// [`LEADER_POLL_MS`]; never resolves while `target` is the leader or
    /// when the replica cannot answer.
    ///
    /// A request forwarded to a leader that died without closing its
    /// connections (`kill -9`) gets no answer until the forward deadline or
    /// the transport's idle timeout. Waiting that long held every client
    /// whose write was forwarded at the time of the crash past the
    /// election, so the first write after a failover came up to a client
    /// timeout later than the new leader (etcd answers such requests
    /// "timed out, possibly due to previous leader failure" too).
    async fn leader_left(&self, target: NodeId) -> String {
        loop {
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
            match self.replica.status().await {
                Ok(st) if st.protocol.leader == Some(target) => {}
                Ok(st) => {
                    return match st.protocol.leader {
                        Some(l) => format!("the leader is {l} now"),
                        None => format!("no leader known in term {}", st.protocol.term.0),
                    };
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }

    fn require_bootstrapped(&self) -> Result<(), NodeError> {
        if self.local_members().initialized {
            Ok(())
        } else {
            Err(NodeError::Unavailable(
                "the member table is not bootstrapped yet; retry shortly".into(),
            ))
        }
    }

    async fn require_leader(&self) -> Result<(), NodeError> {
        let st = self.shared.replica.status().await?;
        if st.protocol.role == Role::Leader {
            Ok(())
        } else {
            Err(NodeError::NotLeader {
                leader: st.protocol.leader.filter(|l| *l != self.shared.me),
            })
        }
    }

    /// Proposes a table change locally; returns the member it added (for
    /// [`MetaCommand::AddNewMember`]) and the table after it.
    async fn propose_meta(
        &self,
        cmd: MetaCommand,
    ) -> Result<(Option<Member>, Vec<Member>), NodeError> {
        let out = self.shared.replica.propose(cmd.encode_entry()).await?;
        match codec::decode::<MetaResponse>(&out) {
            Ok(MetaResponse::Ok(members)) => Ok((None, members)),
            Ok(MetaResponse::Added { member, members }) => Ok((Some(member), members)),
            Ok(MetaResponse::Refused(e)) => Err(NodeError::Invalid(e)),
            Err(e) => Err(NodeError::Fatal(format!("undecodable meta response: {e}"))),
        }
    }

    /// Frames and requests refused because the sender was removed.
    pub fn removed_refusals(&self) -> u64 {
        self.shared.removed_refusals.load(Ordering::Relaxed)
    }

    /// Whether `from` is a removed member; if so, counts and logs the
    /// refusal (warn once per id, then debug).
    fn refuse_removed(&self, table: &MemberTable, from: NodeId, what: &str) -> bool {
        if !table.is_removed(from.0) {
            return false;
        }
        self.shared.removed_refusals.fetch_add(1, Ordering::Relaxed);
        let first = self
            .shared
            .removed_logged
            .lock()
            .map(|mut l| {
                // Bounded like the tombstones it mirrors.
                if l.len() >= machine::MAX_TOMBSTONES {
                    l.clear();
                }
                l.insert(from.0)
            })
            .unwrap_or(false);
        let id = format!("{:x}", from.0);
        if first {
            tracing::warn!(member = %id, what, "refused: this id belongs to a member removed from the cluster (ids are never reused; a re-added member has a new id)");
        } else {
            tracing::debug!(member = %id, what, "refused a removed member");
        }
        true
    }

    /// The learner's applied index, asked over the transport.
    async fn learner_applied(&self, id: NodeId) -> Result<u64, NodeError> {
        let answer = self
            .shared
            .transport
            .request(
                id,
                self.group,
                PeerRequest::Progress.encode(),
                PROGRESS_TIMEOUT_MS,
            )
            .await
            .map_err(|e| {
                NodeError::LearnerNotReady(format!("learner {:x} did not answer: {e}", id.0))
            })?;
        match PeerResponse::decode(&answer) {
            Ok(PeerResponse::Progress { applied_index }) => Ok(applied_index),
            Ok(other) => Err(NodeError::LearnerNotReady(format!(
                "learner {:x} answered {other:?}",
                id.0
            ))),
            Err(e) => Err(NodeError::LearnerNotReady(format!(
                "learner {:x}: undecodable answer: {e}",
                id.0
            ))),
        }
    }

    /// Proposes one tagged entry on this member's replica (runs the
    /// [`LeaderHook`] for application commands).
    async fn propose_entry(&self, entry: Bytes) -> Result<Bytes, NodeError> {
        // A leader handing over (or changing its configuration) refuses
        // proposals for a moment: certainly not applied, so it waits here
        // (the caller's deadline bounds it) rather than failing the client;
        // once another member leads, the caller is pointed at it.
        let give_up = Instant::now() + Duration::from_millis(IN_PROGRESS_WAIT_MS);
        let out = loop {
            match self.replica.propose(entry.clone()).await {
                Err(ReplicaError::Rejected(ProposeError::InProgress))
                    if Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
                    let st = self.replica.status().await?;
                    if st.protocol.role != Role::Leader {
                        return Err(NodeError::NotLeader {
                            leader: st.protocol.leader.filter(|l| *l != self.shared.me),
                        });
                    }
                }
                other => break other?,
            }
        };
        if let Some(hook) = self.shared.leader_hook.get()
            && let Some((&machine::TAG_APP, cmd)) = entry.split_first()
        {
            hook(cmd, &out);
        }
        Ok(out)
    }

    /// The batching queue for writes forwarded to `target`; `None` while
    /// `target` is known to refuse batches (a build from before them) in
    /// the current term: they go singly. A refusal from an earlier term is
    /// forgotten (the leader may have been upgraded since).
    async fn batching_queue(&self, target: NodeId) -> Option<Arc<batch::Coalescer>> {
        let queue = self.forwarder(target);
        let Some(term) = queue.batch_refusal() else {
            return Some(queue);
        };
        match self.replica.status().await {
            Ok(st) if st.protocol.term.0 != term => {
                queue.forget_refusal(term);
                Some(queue)
            }
            _ => None,
        }
    }

    /// The forwarding queue for `target` in this handle's group.
    fn forwarder(&self, target: NodeId) -> Arc<batch::Coalescer> {
        let mut map = self
            .shared
            .forwarders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_FORWARD_TARGETS && !map.contains_key(&(self.group, target)) {
            map.retain(|_, c| Arc::strong_count(c) > 1 || c.queued() > 0);
        }
        Arc::clone(
            map.entry((self.group, target))
                .or_insert_with(|| Arc::new(batch::Coalescer::new(batch::Limits::default()))),
        )
    }

    /// Sends one batch of forwarded entries to `target` (a single entry as
    /// [`PeerRequest::Propose`]) and answers each entry's result, or why
    /// the whole batch has none.
    async fn send_batch(
        &self,
        target: NodeId,
        mut entries: Vec<Bytes>,
    ) -> Result<Vec<BatchItem>, batch::BatchFailure> {
        use batch::BatchFailure;
        let n = entries.len();
        let req = if n == 1 {
            PeerRequest::Propose(entries.remove(0))
        } else {
            PeerRequest::ProposeBatch(entries)
        };
        let forwarded = match self
            .forward_to_leader(target, req.encode(), self.shared.forward_timeout_ms)
            .await
        {
            Ok(r) => r,
            Err(now) => {
                return Err(BatchFailure::Unknown(format!(
                    "leader {target} lost its leadership while the request was forwarded to it \
                     ({now}); it may still be applied"
                )));
            }
        };
        match forwarded {
            Ok(bytes) => match PeerResponse::decode(&bytes) {
                Ok(PeerResponse::Batch(items)) if n > 1 => Ok(items),
                Ok(PeerResponse::Applied(b)) if n == 1 => Ok(vec![BatchItem::Applied(b)]),
                // A build from before batches: it decoded nothing, so
                // nothing was applied.
                Ok(PeerResponse::Error(e)) if n > 1 && e.is_undecodable_request() => {
                    let term = self
                        .replica
                        .status()
                        .await
                        .map_or(0, |st| st.protocol.term.0);
                    tracing::warn!(leader = %target, group = %self.group, term,
                        "the leader cannot decode batched writes (a build from before them): \
                         forwarding its writes one by one in this term");
                    Err(BatchFailure::Unsupported { term })
                }
                // Refused as a whole: the same error for every item.
                Ok(PeerResponse::Error(e)) => Ok(vec![BatchItem::Error(e); n]),
                Ok(other) => Err(BatchFailure::Unknown(format!(
                    "unexpected answer from the leader: {other:?}"
                ))),
                Err(e) => Err(BatchFailure::Unknown(format!(
                    "undecodable answer from the leader: {e}"
                ))),
            },
            Err(e) if request_not_sent(&e) => Err(BatchFailure::NotSent(format!(
                "leader {target} unreachable: {e}"
            ))),
            Err(RequestError::TooLarge { len, max }) => Err(BatchFailure::TooLarge {
                size_bytes: usize::try_from(len).unwrap_or(usize::MAX),
                max_bytes: max,
            }),
            Err(RequestError::Shutdown) => Err(BatchFailure::Shutdown),
            Err(e) => Err(BatchFailure::Unknown(format!(
                "request to leader {target} failed: {e}"
            ))),
        }
    }

    /// Serves `req` on this member without forwarding.
    async fn handle_local(&self, req: PeerRequest) -> Result<PeerResponse, NodeError> {
        match req {
            PeerRequest::Propose(entry) => {
                Ok(PeerResponse::Applied(self.propose_entry(entry).await?))
            }
            PeerRequest::ProposeBatch(entries) => {
                batch::check_batch(&entries)?;
                // Proposed concurrently so that they share consensus rounds.
                let mut set = tokio::task::JoinSet::new();
                for (i, entry) in entries.into_iter().enumerate() {
                    let node = self.clone();
                    set.spawn(async move { (i, node.propose_entry(entry).await) });
                }
                let mut items: Vec<Option<BatchItem>> = vec![None; set.len()];
                while let Some(done) = set.join_next().await {
                    if let Ok((i, r)) = done
                        && let Some(slot) = items.get_mut(i)
                    {
                        *slot = Some(match r {
                            Ok(out) => BatchItem::Applied(out),
                            Err(e) => BatchItem::Error(e.into()),
                        });
                    }
                }
                Ok(PeerResponse::Batch(
                    items
                        .into_iter()
                        .map(|i| {
                            i.unwrap_or_else(|| {
                                BatchItem::Error(WireError::OutcomeUnknown(
                                    "the proposal task ended abnormally".into(),
                                ))
                            })
                        })
                        .collect(),
                ))
            }
            PeerRequest::Progress => Ok(PeerResponse::Progress {
                applied_index: self.replica.status().await?.applied.0,
            }),
            PeerRequest::Read {
                linearizable,
                query,
            } => {
                let Some(hook) = self.shared.read_hook.get().cloned() else {
                    return Err(NodeError::Invalid(
                        "this member serves no reads for other members".into(),
                    ));
                };
                let out = self
                    .read(linearizable, move |m: &S| hook(m, &query))
                    .await?;
                Ok(PeerResponse::Applied(out))
            }
            PeerRequest::ShardChange { kind, member } => {
                if self.group == GROUP {
                    return Err(NodeError::Invalid(
                        "shard changes go to a data shard's group".into(),
                    ));
                }
                // As a membership change of group 0: in its own task, one
                // at a time on this member.
                let node = self.clone();
                let task = tokio::spawn(async move {
                    let _serial = node.shared.membership_lock.lock().await;
                    node.change_shard(kind, NodeId(member)).await
                });
                match task.await {
                    Ok(r) => r,
                    Err(e) => Err(NodeError::OutcomeUnknown(format!(
                        "the shard change task ended abnormally: {e}"
                    ))),
                }
            }
            PeerRequest::MemberAdd { .. }
            | PeerRequest::MemberRemove { .. }
            | PeerRequest::MemberPromote { .. } => {
                if self.group != GROUP {
                    return Err(NodeError::Invalid(
                        "membership changes go to group 0".into(),
                    ));
                }
                // A membership change is two log entries (table, consensus
                // configuration). It runs in its own task, one at a time, so
                // that a caller that stops waiting (client deadline, the
                // forwarding member's timeout) cannot cut it in half.
                let node = self.clone();
                let task = tokio::spawn(async move {
                    let _serial = node.shared.membership_lock.lock().await;
                    node.change_members(req).await
                });
                match task.await {
                    Ok(r) => r,
                    Err(e) => Err(NodeError::OutcomeUnknown(format!(
                        "the membership change task ended abnormally: {e}"
                    ))),
                }
            }
        }
    }

    /// The table's members that are in the consensus configuration `m`
    /// (hides a table entry whose configuration change failed or was not
    /// made yet; the leader withdraws such entries, see
    /// [`reconcile_table`](Self::reconcile_table)).
    fn members_in(&self, m: &Membership) -> Vec<Member> {
        let nodes = m.all_nodes();
        self.local_members()
            .members
            .values()
            .filter(|x| nodes.contains(&NodeId(x.id)))
            .cloned()
            .collect()
    }

    async fn current_membership(&self) -> Result<Membership, NodeError> {
        Ok(self.shared.replica.status().await?.protocol.membership)
    }

    /// Runs one membership change on the leader (the caller holds
    /// `membership_lock`).
    ///
    /// - add: table entry, then consensus `AddLearner`/`AddVoter` (the
    ///   entry is withdrawn if that fails; a leftover entry of an earlier
    ///   failed add with the same id is replaced);
    /// - remove: consensus `Remove`, then the table entry (so the table
    ///   never lacks a member of the configuration; if the second step is
    ///   lost, the leader's reconciliation removes the entry);
    /// - promote: consensus `Promote`, then the table.
    async fn change_members(&self, req: PeerRequest) -> Result<PeerResponse, NodeError> {
        self.require_leader().await?;
        self.require_bootstrapped()?;
        match req {
            PeerRequest::MemberAdd {
                peer_urls,
                is_learner,
            } => {
                check_peer_urls(&peer_urls)?;
                let config = self.current_membership().await?;
                // Withdraw table entries not in the configuration that use
                // one of these peer URLs: leftovers of an add whose
                // configuration change failed.
                let stale: Vec<u64> = self
                    .local_members()
                    .members
                    .values()
                    .filter(|m| !config.all_nodes().contains(&NodeId(m.id)))
                    .filter(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)))
                    .map(|m| m.id)
                    .collect();
                for old in stale {
                    self.propose_meta(MetaCommand::RemoveMember { id: old })
                        .await?;
                }
                // The table assigns the id (fresh, never used before).
                let (added, _) = self
                    .propose_meta(MetaCommand::AddNewMember {
                        peer_urls,
                        is_learner,
                    })
                    .await?;
                let member = added
                    .ok_or_else(|| NodeError::Fatal("the member table added no member".into()))?;
                let id = NodeId(member.id);
                let change = if is_learner {
                    MembershipChange::AddLearner(id)
                } else {
                    MembershipChange::AddVoter(id)
                };
                if let Err(e) = self.shared.replica.change_membership(change).await {
                    if let Err(undo) = self
                        .propose_meta(MetaCommand::RemoveMember { id: id.0 })
                        .await
                    {
                        tracing::warn!(error = %undo, "could not withdraw the member table entry of a failed add; reconciliation will");
                    }
                    return Err(e.into());
                }
                tracing::info!(member = %format!("{:x}", id.0), peer_urls = ?member.peer_urls, is_learner, "member added");
                let config = self.current_membership().await?;
                Ok(PeerResponse::Members {
                    added: Some(member),
                    members: self.members_in(&config),
                })
            }
            PeerRequest::MemberRemove { id } => {
                let config = self.current_membership().await?;
                let in_config = config.all_nodes().contains(&NodeId(id));
                if !in_config {
                    return Err(NodeError::MemberNotFound(id));
                }
                self.shared
                    .replica
                    .change_membership(MembershipChange::Remove(NodeId(id)))
                    .await?;
                // The removal has committed: that is the answer. The table
                // entry follows; if that step is lost (leader change), the
                // entry is hidden (not in the configuration) and the next
                // leader's reconciliation withdraws it.
                if self.local_members().members.contains_key(&id)
                    && let Err(e) = self.propose_meta(MetaCommand::RemoveMember { id }).await
                {
                    tracing::warn!(error = %e, member = %format!("{id:x}"), "removed from the configuration; the table entry stays until reconciliation");
                }
                let config = self.current_membership().await?;
                Ok(PeerResponse::Members {
                    added: None,
                    members: self.members_in(&config),
                })
            }
            PeerRequest::MemberPromote { id } => {
                match self.local_members().members.get(&id) {
                    None => return Err(NodeError::MemberNotFound(id)),
                    Some(m) if !m.is_learner => {
                        return Err(NodeError::Invalid(format!(
                            "member {id:x} is not a learner"
                        )));
                    }
                    Some(_) => {}
                }
                let commit = self.shared.replica.status().await?.protocol.commit.0;
                let applied = self.learner_applied(NodeId(id)).await?;
                if !learner_in_sync(commit, applied, PROMOTE_MAX_LAG_ENTRIES) {
                    return Err(NodeError::LearnerNotReady(format!(
                        "learner {id:x} has applied index {applied}, the leader's commit index is \
                         {commit}"
                    )));
                }
                self.shared
                    .replica
                    .change_membership(MembershipChange::Promote(NodeId(id)))
                    .await?;
                self.propose_meta(MetaCommand::PromoteMember { id }).await?;
                let config = self.current_membership().await?;
                Ok(PeerResponse::Members {
                    added: None,
                    members: self.members_in(&config),
                })
            }
            PeerRequest::Propose(_)
            | PeerRequest::ProposeBatch(_)
            | PeerRequest::Progress
            | PeerRequest::Read { .. }
            | PeerRequest::ShardChange { .. } => {
                Err(NodeError::Invalid("not a membership change".into()))
            }
        }
    }

    /// On the leader, withdraws table entries whose member is not in the
    /// consensus configuration (an add whose configuration change failed,
    /// a removal whose table step was lost). Runs only when no membership
    /// change is in progress here and the configuration has committed.
    async fn reconcile_table(&self) -> Result<(), NodeError> {
        let Ok(_serial) = self.shared.membership_lock.try_lock() else {
            return Ok(());
        };
        let st = self.shared.replica.status().await?;
        let p = &st.protocol;
        if p.role != Role::Leader || st.applied < p.last_index || p.membership.is_joint() {
            return Ok(());
        }
        let nodes = p.membership.all_nodes();
        let table = self.local_members();
        if !table.initialized {
            return Ok(());
        }
        let stale: Vec<u64> = table
            .members
            .keys()
            .filter(|id| !nodes.contains(&NodeId(**id)))
            .copied()
            .collect();
        for id in stale {
            tracing::info!(member = %format!("{id:x}"), "withdrawing a member table entry that is not in the configuration");
            self.propose_meta(MetaCommand::RemoveMember { id }).await?;
        }
        Ok(())
    }
}

/// Whether a learner that has applied `learner_applied` is close enough to
/// the leader's `leader_commit` to be promoted: etcd's rule (the learner
/// has at least 90 % of the leader's log), with the tolerated lag at least
/// [`PROMOTE_MIN_LAG_ENTRIES`] and at most `max_lag_entries`.
pub fn learner_in_sync(leader_commit: u64, learner_applied: u64, max_lag_entries: u64) -> bool {
    let allowed = (leader_commit / 10)
        .max(PROMOTE_MIN_LAG_ENTRIES)
        .min(max_lag_entries);
    leader_commit.saturating_sub(learner_applied) <= allowed
}

/// The member each data shard's leadership belongs to when it is live,
/// computed alike on every member: shards in id order, each given to the
/// voter that prefers the fewest shards so far (ties broken by rotating
/// the voters by the shard id), so leaderships spread within one of even
/// over the members the placement uses.
pub fn preferred_leaders(map: &ha_shard::ShardMap) -> HashMap<GroupId, NodeId> {
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    let mut out = HashMap::new();
    for st in map.shards() {
        let voters: Vec<NodeId> = st.voters().iter().copied().collect();
        if voters.is_empty() {
            continue;
        }
        let n = voters.len();
        let start = usize::try_from(st.id().0 % n as u64).unwrap_or(0);
        let best = (0..n)
            .map(|k| voters[(start + k) % n])
            .min_by_key(|v| load.get(v).copied().unwrap_or(0));
        if let Some(b) = best {
            *load.entry(b).or_default() += 1;
            out.insert(st.id(), b);
        }
    }
    out
}

/// Every [`SHARD_UPKEEP_MS`] with `--shards` > 1: records each hosted
/// shard's state in the metrics and the `/shards` table, and spreads
/// leadership: a member leading a shard whose [preferred
/// leader](preferred_leaders) is another member asks that member (on the
/// shard's group, bounded by [`LEADER_PROBE_TIMEOUT_MS`]) how far it has
/// applied; if it answers and is within [`PROMOTE_MIN_LAG_ENTRIES`] of the
/// commit index, the leader transfers leadership to it. At most one try per
/// shard every [`LEADER_TRANSFER_RETRY_MS`]; the preferred leader never
/// hands leadership away, so leadership does not bounce.
async fn shard_upkeep<S: StateMachine>(node: NodeHandle<S>, mut stop: watch::Receiver<bool>) {
    let me = node.shared.me;
    let mut last_try: HashMap<GroupId, Instant> = HashMap::new();
    let mut first = true;
    loop {
        // The first table right away: `/shards` must not show the
        // single-group page while the first tick is pending.
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SHARD_UPKEEP_MS)) => {}
                _ = stop.changed() => return,
            }
        }
        let Some(map) = node.shard_map() else {
            node.shared
                .metrics
                .set_shards_text(format!("# member {me}: the shard map is not known yet\n"));
            continue;
        };
        let preferred = preferred_leaders(&map);
        let list = |ids: &std::collections::BTreeSet<NodeId>| {
            if ids.is_empty() {
                "-".to_string()
            } else {
                ids.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        let mut text = format!(
            "# shards {} replication {} map-version {} target-epoch {}; member {me}\n\
             # target members {}\n\
             # shard voters learners leader hosted role\n",
            map.shard_count(),
            map.replication(),
            map.version(),
            map.target_epoch(),
            list(&map.target_members().keys().copied().collect()),
        );
        for st in map.shards() {
            let g = st.id();
            let replicas = format!("{} {}", list(st.voters()), list(st.learners()));
            let Some(h) = node.shard(g) else {
                text.push_str(&format!("{g} {replicas} - no -\n"));
                continue;
            };
            let status = match h.replica.status().await {
                Ok(s) => s,
                Err(_) => {
                    text.push_str(&format!("{g} {replicas} - yes stopped\n"));
                    continue;
                }
            };
            let p = &status.protocol;
            let leading = p.role == Role::Leader;
            node.shared
                .metrics
                .record_shard(g.0, leading, p.leader.is_some(), p.commit.0);
            text.push_str(&format!(
                "{g} {replicas} {} yes {:?}\n",
                p.leader.map_or("-".to_string(), |l| l.to_string()),
                p.role
            ));
            let Some(&pref) = preferred.get(&g) else {
                continue;
            };
            if !leading
                || pref == me
                || last_try
                    .get(&g)
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(LEADER_TRANSFER_RETRY_MS))
            {
                continue;
            }
            last_try.insert(g, Instant::now());
            let probe = node
                .shared
                .transport
                .request(
                    pref,
                    g,
                    PeerRequest::Progress.encode(),
                    LEADER_PROBE_TIMEOUT_MS,
                )
                .await;
            let applied = match probe.map(|b| PeerResponse::decode(&b)) {
                Ok(Ok(PeerResponse::Progress { applied_index })) => applied_index,
                other => {
                    tracing::debug!(shard = %g, to = %pref, answer = ?other, "preferred leader not reachable; keeping leadership");
                    continue;
                }
            };
            if applied.saturating_add(PROMOTE_MIN_LAG_ENTRIES) < p.commit.0 {
                continue;
            }
            match h.replica.transfer_leader(pref).await {
                Ok(()) => {
                    tracing::info!(shard = %g, to = %pref, "handing shard leadership to its preferred leader")
                }
                Err(e) => {
                    tracing::debug!(shard = %g, to = %pref, error = %e, "leader transfer refused")
                }
            }
        }
        let (drops, unknown) = node.frame_drops();
        let drops: Vec<(u64, u64)> = drops.into_iter().map(|(g, n)| (g.0, n)).collect();
        node.shared.metrics.record_frame_drops(&drops, unknown);
        node.shared.metrics.set_shards_text(text);
    }
}

/// Passes frames from the transport to the replica, dropping those from
/// removed members, and remembers senders the member table does not know
/// yet (a joining member learns their addresses, see
/// [`manage_peers`]).
async fn admit_inbound<S: StateMachine>(
    node: NodeHandle<S>,
    mut from_transport: tokio::sync::mpsc::Receiver<ha_core::transport::Inbound>,
    to_replica: tokio::sync::mpsc::Sender<ha_core::transport::Inbound>,
    mut stop: watch::Receiver<bool>,
) {
    let mut view = node.shared.view.clone();
    let mut table = Arc::clone(&view.borrow_and_update());
    loop {
        let frame = tokio::select! {
            f = from_transport.recv() => match f { Some(f) => f, None => return },
            _ = stop.changed() => return,
        };
        if view.has_changed().unwrap_or(false) {
            table = Arc::clone(&view.borrow_and_update());
        }
        if node.refuse_removed(&table, frame.from, "consensus frame") {
            continue;
        }
        if let Some(h) = &node.shared.hosting {
            h.liveness.heard(frame.from, h.now_ms());
        }
        if !table.members.contains_key(&frame.from.0)
            && let Ok(mut unknown) = node.shared.unknown_senders.lock()
            && unknown.len() < MAX_UNKNOWN_SENDERS
        {
            unknown.insert(frame.from);
        }
        let group = frame.frame.group;
        if group != GROUP {
            // A data shard: its bounded inbox, never waiting (the protocols
            // tolerate loss; one slow shard must not stall the others).
            let slot = node.shards_read().get(&group).cloned();
            match slot {
                Some(slot) => {
                    if slot.inbox.try_send(frame).is_err() {
                        slot.drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    let n = node
                        .shared
                        .unknown_group_frames
                        .fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        tracing::warn!(%group, from = %frame.from, "dropping frames for a group this member does not host");
                    }
                }
            }
            continue;
        }
        if to_replica.send(frame).await.is_err() {
            return;
        }
    }
}

fn check_peer_urls(urls: &[String]) -> Result<(), NodeError> {
    if urls.is_empty() || urls.len() > machine::MAX_MEMBER_URLS {
        return Err(NodeError::Invalid(format!(
            "a member needs 1..={} peer URLs",
            machine::MAX_MEMBER_URLS
        )));
    }
    for u in urls {
        let parsed = crate::config::SimpleUrl::parse(u).map_err(NodeError::Invalid)?;
        if parsed.port.is_none() {
            return Err(NodeError::Invalid(format!("{u}: a port is required")));
        }
    }
    Ok(())
}

/// Serves requests peers forward to this member.
async fn serve_requests<S: StateMachine>(
    node: NodeHandle<S>,
    mut requests: tokio::sync::mpsc::Receiver<IncomingRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_SERVED_REQUESTS));
    loop {
        let req = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            _ = stop.changed() => return,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            req.responder.respond(
                PeerResponse::Error(WireError::Busy(format!(
                    "{MAX_SERVED_REQUESTS} forwarded requests in progress"
                )))
                .encode(),
            );
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = if node.refuse_removed(&node.local_members(), req.from, "request") {
                PeerResponse::Error(WireError::Removed(req.from.0))
            } else if let Err(e) = node.for_group(req.group) {
                PeerResponse::Error(e.into())
            } else {
                let node = node.for_group(req.group).unwrap_or(node);
                let decoded = PeerRequest::decode(&req.payload);
                #[cfg(test)]
                let decoded = forward_tests::decode_as_old_build(node.shared.me, &req.payload)
                    .unwrap_or(decoded);
                match decoded {
                    Err(e) => PeerResponse::Error(wire::undecodable_request(&e)),
                    Ok(r) => {
                        match tokio::time::timeout_at(req.deadline, node.handle_local(r)).await {
                            Ok(Ok(resp)) => resp,
                            Ok(Err(e)) => PeerResponse::Error(e.into()),
                            // The requester stopped waiting; it reports the
                            // outcome as unknown.
                            Err(_) => return,
                        }
                    }
                }
            };
            req.responder.respond(answer.encode());
        });
    }
}

/// Resolves `host:port` of a peer URL.
async fn resolve(url: &str) -> Option<SocketAddr> {
    let parsed = crate::config::SimpleUrl::parse(url).ok()?;
    let port = parsed.port?;
    if let Ok(ip) = parsed.host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((parsed.host.as_str(), port));
    match tokio::time::timeout(Duration::from_millis(RESOLVE_TIMEOUT_MS), lookup).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        _ => None,
    }
}

/// Keeps the transport's peer set equal to the member table (or the
/// configured contacts before the table is known), re-resolving names.
async fn manage_peers<S: StateMachine>(
    node: NodeHandle<S>,
    contacts: Vec<(NodeId, Vec<String>)>,
    interval_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut view = node.shared.view.clone();
    let mut known: HashMap<NodeId, SocketAddr> = HashMap::new();
    let mut round: usize = 0;
    loop {
        let table = Arc::clone(&view.borrow_and_update());
        let mut wanted: Vec<(NodeId, Vec<String>)> = if table.initialized {
            table
                .members
                .values()
                .map(|m| (NodeId(m.id), m.peer_urls.clone()))
                .collect()
        } else {
            contacts.clone()
        };
        wanted.retain(|(id, _)| *id != node.shared.me);
        let voters = match node.shared.replica.status().await {
            Ok(st) => st.protocol.membership.all_nodes(),
            Err(_) => return,
        };
        for (id, urls) in &wanted {
            let Some(first) = urls.first() else { continue };
            if let Some(addr) = resolve(first).await
                && known.get(id) != Some(&addr)
            {
                match node.shared.transport.add_peer(*id, addr) {
                    Ok(()) => {
                        tracing::info!(peer = %format!("{:x}", id.0), %addr, "peer address set");
                        known.insert(*id, addr);
                    }
                    Err(e) => tracing::warn!(peer = %id, error = %e, "cannot add peer"),
                }
            }
        }
        // Before the table is known: senders we cannot place (a leader added
        // at run time, dialling this joining member) are tried at the
        // contacts' addresses in turn until their connection comes up.
        if !table.initialized {
            let contact_addrs: Vec<SocketAddr> = wanted
                .iter()
                .filter_map(|(id, _)| known.get(id).copied())
                .collect();
            let unknown: Vec<NodeId> = node
                .shared
                .unknown_senders
                .lock()
                .map(|u| {
                    u.iter()
                        .filter(|id| !wanted.iter().any(|(w, _)| w == *id))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for (k, id) in unknown.into_iter().enumerate() {
                if contact_addrs.is_empty() || node.shared.transport.is_connected(id) {
                    continue;
                }
                let addr = contact_addrs[(round + k) % contact_addrs.len()];
                if node.shared.transport.add_peer(id, addr).is_ok() {
                    tracing::debug!(peer = %format!("{:x}", id.0), %addr, "trying a contact address for a sender not known yet");
                }
            }
            round = round.wrapping_add(1);
        }
        // Forget peers that left both the table and the consensus
        // configuration (a member being removed must still get the entry
        // that removes it).
        let gone: Vec<NodeId> = known
            .keys()
            .filter(|id| !wanted.iter().any(|(w, _)| w == *id) && !voters.contains(id))
            .copied()
            .collect();
        for id in gone {
            if table.initialized {
                node.shared.transport.remove_peer(id);
                known.remove(&id);
                tracing::info!(peer = %format!("{:x}", id.0), "peer removed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = view.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

fn dir_size_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            visited += 1;
            if visited > MAX_DB_FILES_WALKED {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Checks this member's id against the member table once it is known and
/// logs an error when the cluster removed it or knows its peer URL under
/// another id. Returns whether the check is done.
fn check_own_identity<S: StateMachine>(node: &NodeHandle<S>, table: &MemberTable) -> bool {
    let me = node.shared.me.0;
    if table.is_removed(me) {
        tracing::error!(member = %format!("{me:x}"), "{}", NodeError::Removed(me));
        return true;
    }
    if table.members.contains_key(&me) {
        return true;
    }
    match table.by_peer_urls(&node.shared.advertise_peer_urls) {
        Some(other) => {
            tracing::error!(
                member = %format!("{me:x}"),
                "the cluster lists this member's peer URLs under member id {:x}, but this \
                 member runs as {me:x}: start it with a certificate for {:x} and an empty data dir",
                other.id,
                other.id
            );
            true
        }
        // Not added (yet): a member is only sent the log once it is in the
        // configuration, so this is a stale view; check again later.
        None => false,
    }
}

/// Status polling (metrics, health), bootstrap of the member table by the
/// first leader, and publishing this member's name and client URLs.
async fn housekeeping<S: StateMachine>(
    node: NodeHandle<S>,
    founding: Option<Vec<Member>>,
    interval_ms: u64,
    store: Store,
    db_dir: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let sh = &node.shared;
    let mut ticks: u64 = 0;
    let mut bootstrap_in_flight: Option<JoinHandle<()>> = None;
    let mut publish_in_flight: Option<JoinHandle<()>> = None;
    let mut reconcile_in_flight: Option<JoinHandle<()>> = None;
    let mut identity_checked = false;
    loop {
        match sh.replica.status().await {
            Ok(st) => {
                let p = &st.protocol;
                if ticks.is_multiple_of(25)
                    && let Some(dir) = db_dir.clone()
                {
                    let size = tokio::task::spawn_blocking(move || dir_size_bytes(&dir))
                        .await
                        .unwrap_or(0);
                    sh.db_size_bytes.store(size, Ordering::Relaxed);
                }
                sh.metrics.record_sample(&Sample {
                    term: p.term.0,
                    commit: p.commit.0,
                    applied: st.applied.0,
                    last_index: p.last_index.0,
                    leader: p.leader.map_or(0, |l| l.0),
                    is_leader: p.role == Role::Leader,
                    running: true,
                    db_size_bytes: sh.db_size_bytes.load(Ordering::Relaxed),
                });
                sh.metrics.record_replica(&st.stats);
                sh.metrics.record_transport(&sh.transport.stats());
                let (w, f, b) = store.counters();
                sh.metrics.record_storage(w, f, b);
                sh.metrics
                    .record_removed_refusals(sh.removed_refusals.load(Ordering::Relaxed));

                let table = node.local_members();
                if table.initialized && !identity_checked {
                    identity_checked = check_own_identity(&node, &table);
                }
                let idle = |h: &Option<JoinHandle<()>>| h.as_ref().is_none_or(|h| h.is_finished());
                if !table.initialized
                    && p.role == Role::Leader
                    && idle(&bootstrap_in_flight)
                    && let Some(members) = &founding
                {
                    let cmd = MetaCommand::Bootstrap {
                        cluster_id: sh.cluster_id_cfg,
                        members: members.clone(),
                    };
                    let n = node.clone();
                    bootstrap_in_flight = Some(tokio::spawn(async move {
                        match n.propose_meta(cmd).await {
                            Ok(_) => tracing::info!("member table bootstrapped"),
                            Err(e) => {
                                tracing::debug!(error = %e, "member table bootstrap not done yet")
                            }
                        }
                    }));
                }
                if table.initialized
                    && p.role == Role::Leader
                    && ticks.is_multiple_of(RECONCILE_EVERY_TICKS)
                    && idle(&reconcile_in_flight)
                    && table
                        .members
                        .keys()
                        .any(|id| !p.membership.all_nodes().contains(&NodeId(*id)))
                {
                    let n = node.clone();
                    reconcile_in_flight = Some(tokio::spawn(async move {
                        if let Err(e) = n.reconcile_table().await {
                            tracing::debug!(error = %e, "member table reconciliation not done yet");
                        }
                    }));
                }
                if table.initialized
                    && p.leader.is_some()
                    && idle(&publish_in_flight)
                    && let Some(me) = table.members.get(&sh.me.0)
                    && (me.name != sh.name || me.client_urls != sh.advertise_client_urls)
                {
                    let cmd = MetaCommand::Publish {
                        id: sh.me.0,
                        name: sh.name.clone(),
                        client_urls: sh.advertise_client_urls.clone(),
                    };
                    let n = node.clone();
                    publish_in_flight = Some(tokio::spawn(async move {
                        let req = PeerRequest::Propose(cmd.encode_entry());
                        match n.on_leader(req).await {
                            Ok(_) => tracing::info!("published this member's name and client URLs"),
                            Err(e) => {
                                tracing::debug!(error = %e, "publishing member attributes failed; will retry")
                            }
                        }
                    }));
                }
            }
            Err(_) => {
                sh.metrics.mark_stopped();
                return;
            }
        }
        ticks = ticks.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = stop.changed() => {
                for h in [bootstrap_in_flight, publish_in_flight, reconcile_in_flight].into_iter().flatten() {
                    h.abort();
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_answers_are_retried_only_when_certainly_not_applied() {
        let classify = |a: Result<Bytes, RequestError>| {
            classify_forward_answer(a, || "leader 5".into(), || "the leader".into())
        };
        let answer = |r: PeerResponse| Ok(r.encode());
        let retry = |s: ForwardStep| match s {
            ForwardStep::Retry { hint, error } => (hint, error.to_string()),
            ForwardStep::Done(r) => panic!("not retried: {r:?}"),
        };
        let done = |s: ForwardStep| match s {
            ForwardStep::Done(r) => r,
            ForwardStep::Retry { error, .. } => panic!("retried: {error}"),
        };
        let not_leader = NodeError::NotLeader { leader: None }.to_string();
        assert_eq!(
            retry(classify(answer(PeerResponse::Error(WireError::NotLeader(
                Some(7)
            ))))),
            (Some(NodeId(7)), not_leader.clone())
        );
        assert_eq!(
            retry(classify(answer(PeerResponse::Error(WireError::NotLeader(
                None
            ))))),
            (None, not_leader)
        );
        for e in [
            RequestError::UnknownPeer(NodeId(5)),
            RequestError::TooManyInflight,
            RequestError::Busy,
            RequestError::NoHandler,
        ] {
            let want = NodeError::Unavailable(format!("leader 5 unreachable: {e}")).to_string();
            assert_eq!(retry(classify(Err(e))), (None, want));
        }
        assert_eq!(
            done(classify(answer(PeerResponse::Applied(Bytes::from("x"))))),
            Ok(PeerResponse::Applied(Bytes::from("x")))
        );
        assert!(matches!(
            done(classify(answer(PeerResponse::Error(WireError::Invalid("no".into()))))),
            Err(NodeError::Invalid(m)) if m == "no"
        ));
        assert!(matches!(
            done(classify(Ok(Bytes::from("garbage")))),
            Err(NodeError::OutcomeUnknown(m)) if m.starts_with("undecodable answer from the leader: ")
        ));
        assert!(matches!(
            done(classify(Err(RequestError::TooLarge { len: 9, max: 4 }))),
            Err(NodeError::TooLarge {
                size_bytes: 9,
                max_bytes: 4
            })
        ));
        assert!(matches!(
            done(classify(Err(RequestError::Shutdown))),
            Err(NodeError::Shutdown)
        ));
        for e in [
            RequestError::Timeout,
            RequestError::Connection("reset".into()),
        ] {
            let want = format!("request to leader 5 failed: {e}");
            assert!(matches!(
                done(classify(Err(e))),
                Err(NodeError::OutcomeUnknown(m)) if m == want
            ));
        }
    }

    #[test]
    fn preferred_leaders_spread_over_the_members() {
        for (members, shards) in [(3usize, 4u64), (3, 16), (5, 8), (5, 16)] {
            let cluster = ha_ring::Cluster::uniform(members).unwrap();
            let map = ha_shard::ShardMap::new(shards, 3, &cluster).unwrap();
            let pref = preferred_leaders(&map);
            let mut per: std::collections::BTreeMap<NodeId, u64> = Default::default();
            for st in map.shards() {
                let p = pref[&st.id()];
                assert!(st.voters().contains(&p));
                *per.entry(p).or_default() += 1;
            }
            let max = per.values().max().copied().unwrap_or(0);
            let fair = shards.div_ceil(members as u64);
            assert!(
                max <= fair,
                "{members} members, {shards} shards: {per:?} (fair share {fair})"
            );
            if shards >= members as u64 {
                assert_eq!(per.len(), members, "every member leads some shard: {per:?}");
            }
        }
    }

    #[test]
    fn election_timer_spreads_over_half_an_election_timeout() {
        assert_eq!(election_timeout_max_ms(1_000), 1_500);
        assert_eq!(election_timeout_max_ms(500), 750);
        // Always a non-empty range, which both protocols require.
        for et in [
            1,
            2,
            3,
            crate::config::MAX_ELECTION_TIMEOUT_MS,
            u64::MAX - 1,
        ] {
            assert!(election_timeout_max_ms(et) > et, "et {et}");
        }
        #[cfg(feature = "raft")]
        {
            let rc = ha_raft::Config {
                election_timeout_min_ms: 1_000,
                election_timeout_max_ms: election_timeout_max_ms(1_000),
                heartbeat_interval_ms: 100,
                ..ha_raft::Config::default()
            };
            assert!(rc.validate().is_ok());
        }
    }

    #[test]
    fn learner_in_sync_follows_etcds_ninety_percent_rule_within_bounds() {
        // Small logs: a lag of up to PROMOTE_MIN_LAG_ENTRIES is tolerated.
        assert!(learner_in_sync(10, 0, PROMOTE_MAX_LAG_ENTRIES));
        assert!(learner_in_sync(200, 184, PROMOTE_MAX_LAG_ENTRIES));
        assert!(!learner_in_sync(200, 179, PROMOTE_MAX_LAG_ENTRIES));
        // 90 % of the leader's log.
        assert!(learner_in_sync(1_000, 900, PROMOTE_MAX_LAG_ENTRIES));
        assert!(!learner_in_sync(1_000, 899, PROMOTE_MAX_LAG_ENTRIES));
        // Capped for long logs.
        assert!(learner_in_sync(1_000_000, 999_000, PROMOTE_MAX_LAG_ENTRIES));
        assert!(!learner_in_sync(
            1_000_000,
            998_999,
            PROMOTE_MAX_LAG_ENTRIES
        ));
        // Ahead of the leader's commit (it learned a later commit first).
        assert!(learner_in_sync(5, 7, PROMOTE_MAX_LAG_ENTRIES));
    }
}
