//! The seam between the gRPC layer and a node: [`Backend`].
//!
//! The API layer turns etcd requests into [`ha_lock::api::Command`]s and
//! read closures; a backend decides how they reach the state machine (the
//! replicated node proposes through consensus; [`LocalBackend`](super::LocalBackend)
//! applies directly). No protocol logic lives above this trait.

use std::future::Future;
use std::sync::Arc;

use ha_lock::LockMachine;
use ha_lock::api::{Applied, Command, Event};

/// One applied command's events, as fanned out to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventBatch {
    /// Store revision the command produced (every event in the batch has it).
    pub revision: i64,
    /// The events, in the order the command produced them.
    pub events: Vec<Event>,
}

/// An event sink for [`LockMachine::set_event_sink`] that forwards every
/// applied batch into `sender` (what [`Backend::subscribe`] hands out). A
/// send without receivers is not an error: nobody watches.
pub fn broadcast_sink(
    sender: tokio::sync::broadcast::Sender<Arc<EventBatch>>,
) -> ha_lock::EventSink {
    Box::new(move |revision, events| {
        let _ = sender.send(Arc::new(EventBatch {
            revision,
            events: events.to_vec(),
        }));
    })
}

/// Identity and term stamped into every response header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Cluster identity.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// Current consensus term (or ballot).
    pub raft_term: u64,
}

/// A cluster member as the Cluster service reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Human-readable name (empty for a member added but not started).
    pub name: String,
    /// URLs peers reach it at.
    pub peer_urls: Vec<String>,
    /// URLs clients reach it at.
    pub client_urls: Vec<String>,
    /// Non-voting learner.
    pub is_learner: bool,
}

/// A member's status as Maintenance.Status reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// Server version string.
    pub version: String,
    /// Storage size in bytes.
    pub db_size_bytes: i64,
    /// Leader's member id; 0 = none known.
    pub leader: u64,
    /// Last log index.
    pub raft_index: u64,
    /// Current term.
    pub raft_term: u64,
    /// Last applied log index.
    pub raft_applied_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Active problems, human readable.
    pub errors: Vec<String>,
}

/// Why a backend could not serve a request. Every variant means the
/// request did not take effect — except [`BackendError::Timeout`], after
/// which the outcome of a write is unknown (as with etcd).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// This member is not the leader and could not forward.
    #[error("not leader")]
    NotLeader,
    /// No leader is known (election in progress or no quorum).
    #[error("no leader")]
    NoLeader,
    /// The request did not complete in time; a write may still apply.
    #[error("request timed out")]
    Timeout,
    /// Too many requests in flight; retry later.
    #[error("too many requests")]
    Busy,
    /// The encoded request exceeds the size limit.
    #[error("request is too large")]
    TooLarge,
    /// The backend is stopping or stopped.
    #[error("server stopped")]
    Stopped,
    /// The backend cannot serve now, for the reason given.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid for the reason given (e.g. a malformed peer URL).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The backend does not support this operation.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The request's keys live on several shards (`--shards` > 1) and the
    /// operation must be atomic; nothing was done.
    #[error("{0}")]
    CrossShard(String),
    /// No member has the given id.
    #[error("member not found")]
    MemberNotFound,
    /// A member with that id already exists.
    #[error("member id already exists")]
    MemberExists,
    /// A member already uses one of the given peer URLs.
    #[error("peer URLs already exist")]
    PeerUrlExists,
    /// Only a learner can be promoted.
    #[error("member is not a learner")]
    MemberNotLearner,
    /// The learner has not caught up with the leader yet.
    #[error("learner is not in sync with the leader")]
    LearnerNotReady,
    /// An internal failure (storage, a broken invariant); the message says which.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the gRPC services need from a node. Implemented by the replicated
/// node (consensus underneath) and by [`LocalBackend`](super::LocalBackend)
/// (one process, no replication).
///
/// Methods added later get default bodies so implementations keep compiling.
pub trait Backend: Send + Sync + 'static {
    /// Proposes `cmd` through consensus (forwarding to the leader when this
    /// member is not it) and returns the applied outcome. The state machine's
    /// own refusals come back as `Ok(Applied { result: Err(..) })`.
    fn write(&self, cmd: Command) -> impl Future<Output = Result<Applied, BackendError>> + Send;

    /// Runs `f` on the state machine: after a linearizable read barrier when
    /// `linearizable`, else on this member's applied state as it is.
    fn read<R, F>(
        &self,
        linearizable: bool,
        f: F,
    ) -> impl Future<Output = Result<R, BackendError>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&LockMachine) -> R + Send + 'static;

    /// A key range read (etcd `Range`): the machine's answer and the store
    /// revision it was read at. The default reads the one state machine; a
    /// sharded backend routes the range to the shards that may hold its
    /// keys and merges their answers.
    fn range(
        &self,
        linearizable: bool,
        req: ha_lock::api::RangeRequest,
    ) -> impl Future<
        Output = Result<
            (
                Result<ha_lock::api::RangeResponse, ha_lock::api::LockError>,
                i64,
            ),
            BackendError,
        >,
    > + Send {
        self.read(linearizable, move |m| (m.range(&req), m.current_revision()))
    }

    /// Why this backend refuses `what` (a service such as watch, leases,
    /// locks or elections), if it does: with `--shards` > 1 the node does
    /// not serve those yet. `None` = served.
    fn refuses(&self, what: &str) -> Option<BackendError> {
        let _ = what;
        None
    }

    /// Live events as they are applied on this member, in apply (revision)
    /// order, one batch per command that produced events: a bounded
    /// broadcast; a receiver that falls behind gets `RecvError::Lagged` and
    /// recovers from history (`LockMachine::events_since`). A batch may be
    /// sent before or after reads can observe its revision; watchers
    /// de-duplicate by revision.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<EventBatch>>;

    /// Identity and current term for response headers.
    fn header(&self) -> HeaderInfo;

    /// Remaining TTL of lease `id` as this member's lessor measures it now,
    /// when this member leads; `None` otherwise (TimeToLive then reports the
    /// remaining TTL as last checkpointed in the state machine).
    fn lease_remaining_ms(&self, id: i64) -> Option<i64> {
        let _ = id;
        None
    }

    /// The cluster's members.
    fn members(&self) -> impl Future<Output = Result<Vec<MemberInfo>, BackendError>> + Send;

    /// Adds a member; returns it and the member list afterwards.
    fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> impl Future<Output = Result<(MemberInfo, Vec<MemberInfo>), BackendError>> + Send;

    /// Removes member `id`; returns the member list afterwards.
    fn member_remove(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Vec<MemberInfo>, BackendError>> + Send;

    /// Promotes learner `id` to voter; returns the member list afterwards.
    fn member_promote(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Vec<MemberInfo>, BackendError>> + Send;

    /// This member's status.
    fn status(&self) -> impl Future<Output = Result<StatusInfo, BackendError>> + Send;
}
