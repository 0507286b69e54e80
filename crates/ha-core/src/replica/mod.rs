//! The [`Replica`] driver: runs one [`Consensus`] instance on tokio against a
//! [`LogStore`], a [`StateMachine`] and a [`Transport`].
//!
//! ```text
//!  clients ──ReplicaHandle──► command queue ─┐        ┌─► Transport (messages, at once)
//!  Transport ─► inbound queue ───────────────┼► driver┼─► LogStore::write_queued (or spawn_blocking(write)) ── one synced write per Ready
//!  tokio interval ─► tick(now_ms) ───────────┘  task  └─► apply task ──► StateMachine (spawn_blocking)
//!                                                  ▲                         │
//!                                                  └──── applied index ◄─────┘
//! ```
//!
//! ## What the driver guarantees
//!
//! - **Ready order** (as documented in [`crate::consensus`]): `messages` are
//!   sent at once; `snapshot/truncate_from/entries/hard_state/purge_to` go to
//!   the store as **one** `LogWrite { sync: true }` — queued straight to the
//!   store's writer when it supports [`LogStore::write_queued`] (no thread
//!   hand-off; RocksDB's completion wakes the driver), else on the blocking
//!   pool — while the driver keeps taking proposals and messages; when the
//!   write is durable, `persisted_messages` are sent, `committed` entries are handed
//!   to the apply task, `reads` are registered and `advance(number)` is
//!   called. A Ready that needs no write is carried out at once.
//! - **Group commit**: only one Ready is in flight; proposals that arrive
//!   while its fsync runs accumulate in the protocol and share the next one.
//! - **A proposal is answered only after its entry is durable and applied**:
//!   the answer is the state machine's response, sent by the apply task
//!   right after `apply`. If a different entry is committed at the
//!   proposal's index, the answer is [`ReplicaError::Dropped`] (the proposal
//!   is certainly not applied). Every proposal is answered exactly once —
//!   by the apply task, by an error, or with [`ReplicaError::Shutdown`]
//!   ("outcome unknown") when the replica stops.
//! - **Linearizable reads**: [`ReplicaHandle::read_index`] resolves once the
//!   state machine has applied the protocol's read index; reading local state
//!   after that ([`ReplicaHandle::query`]) is linearizable.
//!   [`ReplicaHandle::linearizable_query`] does both.
//! - **Bounded**: at most [`ReplicaConfig::max_pending_proposals`] proposals
//!   and [`ReplicaConfig::max_inflight_reads`] reads wait at once, at most
//!   [`ReplicaConfig::max_queued_queries`] queries queue, proposals are at
//!   most [`ReplicaConfig::max_proposal_bytes`], and the driver takes no new
//!   Ready while more than [`ReplicaConfig::max_apply_backlog_entries`]
//!   committed entries wait for the state machine. A caller over a limit
//!   gets [`ReplicaError::Busy`] at once; nothing blocks, nothing grows
//!   without bound. A caller that gives up (drops the future) frees its slot
//!   within [`ReplicaConfig::prune_interval_ticks`] ticks.
//! - **Bad input**: an inbound frame for another group, or one that does not
//!   decode as the protocol's message, is counted and dropped.
//! - **Failures**: a failed log write or state-machine apply is fatal (the
//!   replica cannot acknowledge anything it cannot persist or apply). The
//!   driver answers every waiter with the error and stops; nothing after the
//!   failed write is sent, applied or advanced.
//!
//! ## Request tags
//!
//! The driver wraps each command in a [`TaggedCommand`] `{ proposer, seq,
//! data }`. `seq` starts from a random 64-bit base per driver lifetime
//! (wall clock, process id and std's per-process random hash keys, mixed
//! with SplitMix64; or [`ReplicaConfig::seq_base`]) and counts up, so tags
//! of two lifetimes of the same node do not collide in practice. The state
//! machine receives only `data`. A `Normal` entry whose payload is not a
//! valid `TaggedCommand` (written by another tool, or corrupt) is applied
//! as `Applied::Command(raw payload)`: this is a pure function of the
//! committed bytes, so every replica decides the same way.
//!
//! ## Snapshots
//!
//! For each `Ready::send_snapshots` the apply task builds the state
//! machine's snapshot and streams its chunks to the follower as
//! `FrameKind::Snapshot` frames (format and limits in the `snapshot`
//! submodule: `Begin{meta, header}`, `Chunk`s, `End{totals}`, each a codec
//! frame). The receiving driver stages a transfer in memory (at most
//! [`ReplicaConfig::max_snapshot_bytes`]); when it is complete it hands the
//! header message to its protocol via `step`. When that protocol then emits
//! `Ready::snapshot`, the driver installs the staged chunks into the state
//! machine *before* the write that records the snapshot and resets the log,
//! so a crash never leaves a log that starts after state the machine lacks.
//! Proposals waiting at or below the snapshot's index are answered
//! [`ReplicaError::OutcomeUnknown`]. A `Ready::snapshot` with no matching
//! staged transfer stops the replica ([`ReplicaError::Protocol`]).
//!
//! The leader's driver streams its state machine's *current* snapshot,
//! which may cover more than the protocol's `SnapshotSend::meta` (the
//! state machine applied more since the protocol recorded its snapshot).
//! The receiver therefore installs a staged snapshot whose index is at
//! least the one the protocol's `Ready::snapshot` names, under the staged
//! meta (what the chunks really cover), while the log store records the
//! protocol's meta. The state machine is then ahead of the protocol's log:
//! the protocol re-learns the entries between the two indexes from the
//! leader (so its configuration is taken from them as usual), and the
//! state machine skips them when they are committed (the idempotent-replay
//! rule of [`StateMachine`]); waiters up to the staged index are answered
//! `OutcomeUnknown`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::codec;
use crate::consensus::{
    Consensus, MembershipChange, Outbound, ProposeError, ReadCtx, ReadState, SnapshotSend, Status,
};
use crate::request::TaggedCommand;
use crate::state_machine::StateMachine;
use crate::storage::{LogStore, LogWrite};
use crate::transport::{Frame, FrameKind, Inbound, Transport};
use crate::types::{Entry, EntryPayload, GroupId, LogId, LogIndex, NodeId};

mod apply;
mod snapshot;
#[cfg(test)]
mod tests;

pub use snapshot::MAX_STAGING_SENDERS;

use apply::{ApplyItem, ApplyMsg, ApplyPayload, ApplyReply, Query, SnapshotCounters};

/// Room in the command queue for status requests beyond the proposal and
/// read permits.
const CONTROL_QUEUE_LEN: usize = 64;

/// Most commands (or inbound frames) the driver takes from its queue in one
/// go before it looks for a Ready: what is already queued is stepped
/// together, so it shares one Ready (one log write, one message per peer);
/// the bound keeps ticks and the other queue served.
const DRAIN_MAX: usize = 256;

/// Settings and limits of a [`Replica`]. Checked by [`ReplicaConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The consensus group this replica belongs to; outbound frames carry
    /// it and inbound frames for other groups are dropped.
    pub group: GroupId,
    /// Period of protocol ticks, in milliseconds (1..=60000). Default 10.
    pub tick_interval_ms: u64,
    /// Proposals waiting for their outcome at once; more get
    /// [`ReplicaError::Busy`]. Default 4096.
    pub max_pending_proposals: usize,
    /// Linearizable reads waiting at once; more get [`ReplicaError::Busy`].
    /// Default 4096.
    pub max_inflight_reads: usize,
    /// Queries queued for the apply task; more get [`ReplicaError::Busy`].
    /// Default 1024.
    pub max_queued_queries: usize,
    /// Largest command accepted by [`ReplicaHandle::propose`], in bytes.
    /// Default 1 MiB.
    pub max_proposal_bytes: usize,
    /// Committed entries handed to the apply task and not yet applied; while
    /// over this, the driver takes no new Ready (back-pressure on the
    /// protocol). Default 16384.
    pub max_apply_backlog_entries: u64,
    /// Every this many ticks the driver forgets waiters whose caller gave up,
    /// freeing their slots. Default 16.
    pub prune_interval_ticks: u32,
    /// Largest snapshot sent or received, in bytes of chunks; a receiver
    /// stages at most this much per transfer in memory. Default 256 MiB.
    pub max_snapshot_bytes: u64,
    /// Build a state-machine snapshot and report it to the protocol
    /// (`snapshot_built`, which lets it purge its log) every this many
    /// applied entries. `None` (default): never. Enable it only with a
    /// **durable** state machine: after a purge the log can no longer
    /// rebuild an in-memory one such as `MemKv`.
    pub snapshot_every_entries: Option<u64>,
    /// First request sequence number; `None` draws a random base (see the
    /// [module docs](self)). Set it only in tests or from a persisted counter.
    pub seq_base: Option<u64>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            group: GroupId(0),
            tick_interval_ms: 10,
            max_pending_proposals: 4096,
            max_inflight_reads: 4096,
            max_queued_queries: 1024,
            max_proposal_bytes: 1 << 20,
            max_apply_backlog_entries: 16384,
            prune_interval_ticks: 16,
            max_snapshot_bytes: 256 << 20,
            snapshot_every_entries: None,
            seq_base: None,
        }
    }
}

impl ReplicaConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), ReplicaError> {
        let bad = |m: &str| Err(ReplicaError::Config(m.to_string()));
        if !(1..=60_000).contains(&self.tick_interval_ms) {
            return bad("tick_interval_ms must be in 1..=60000");
        }
        if self.max_pending_proposals == 0 || self.max_pending_proposals > 1 << 20 {
            return bad("max_pending_proposals must be in 1..=1048576");
        }
        if self.max_inflight_reads == 0 || self.max_inflight_reads > 1 << 20 {
            return bad("max_inflight_reads must be in 1..=1048576");
        }
        if self.max_queued_queries == 0 || self.max_queued_queries > 1 << 20 {
            return bad("max_queued_queries must be in 1..=1048576");
        }
        if self.max_proposal_bytes == 0 || self.max_proposal_bytes > 1 << 30 {
            return bad("max_proposal_bytes must be in 1..=1 GiB");
        }
        if self.max_apply_backlog_entries == 0 {
            return bad("max_apply_backlog_entries must be >= 1");
        }
        if self.prune_interval_ticks == 0 {
            return bad("prune_interval_ticks must be >= 1");
        }
        if self.max_snapshot_bytes == 0 {
            return bad("max_snapshot_bytes must be >= 1");
        }
        if self.snapshot_every_entries == Some(0) {
            return bad("snapshot_every_entries must be >= 1 (or None)");
        }
        Ok(())
    }
}

/// Why a request to a [`Replica`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// This node cannot accept the request; `leader` is a hint. Nothing was
    /// proposed.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// Known leader, if any.
        leader: Option<NodeId>,
    },
    /// A queue or limit is full; nothing was done. Retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The command exceeds [`ReplicaConfig::max_proposal_bytes`].
    #[error("command of {size_bytes} bytes exceeds max_proposal_bytes ({max_bytes})")]
    TooLarge {
        /// Size of the command.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Another entry was committed at the proposal's index: the proposal is
    /// certainly not applied.
    #[error("proposal dropped: another entry was committed at its index")]
    Dropped,
    /// The replica stopped before the request finished. For a proposal the
    /// outcome is unknown (it may still commit).
    #[error("replica shut down; the request's outcome is unknown")]
    Shutdown,
    /// The protocol refused the request (e.g. an invalid change). Nothing
    /// was proposed.
    #[error("refused by the protocol: {0}")]
    Rejected(ProposeError),
    /// The log store failed; the replica stopped.
    #[error("log store failed: {0}")]
    Storage(String),
    /// The state machine failed; the replica stopped.
    #[error("state machine failed: {0}")]
    StateMachine(String),
    /// A snapshot from the leader replaced the state before the proposal's
    /// entry was applied locally: it may or may not be part of that state.
    #[error("outcome unknown: a snapshot covered the proposal's index")]
    OutcomeUnknown,
    /// The protocol broke the driver contract (e.g. asked to install a
    /// snapshot that was never staged); the replica stopped.
    #[error("protocol contract violation: {0}")]
    Protocol(String),
    /// The configuration is invalid, or the replica was started outside a
    /// tokio runtime.
    #[error("invalid replica config: {0}")]
    Config(String),
}

/// Driver counters, monotonic over the driver's lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Proposals the protocol accepted.
    pub proposals: u64,
    /// Proposals whose own entry was committed (answered with the response).
    pub proposals_committed: u64,
    /// Proposals answered [`ReplicaError::Dropped`].
    pub proposals_dropped: u64,
    /// Readys carried out.
    pub readys: u64,
    /// Synced log writes (fsyncs requested from the store).
    pub persists: u64,
    /// Entries written to the store.
    pub persisted_entries: u64,
    /// Committed entries handed to the state machine.
    pub committed_entries: u64,
    /// Committed `Normal` entries without a valid request tag (applied raw).
    pub untagged_entries: u64,
    /// Protocol messages handed to the transport.
    pub messages_sent: u64,
    /// Inbound frames received.
    pub frames_received: u64,
    /// Inbound frames dropped because they did not decode.
    pub frames_undecodable: u64,
    /// Inbound frames dropped because they named another group.
    pub frames_wrong_group: u64,
    /// Snapshot sends the protocol asked for.
    pub snapshot_sends_requested: u64,
    /// Snapshot transfers streamed completely to a follower.
    pub snapshots_sent: u64,
    /// Snapshot sends that failed (building, reading or over the limit).
    pub snapshot_sends_failed: u64,
    /// Snapshot transfers received completely and handed to the protocol.
    pub snapshots_received: u64,
    /// Inbound snapshot frames rejected (undecodable, out of order, over the
    /// limit); each discards its sender's transfer.
    pub snapshot_frames_rejected: u64,
    /// Snapshots installed into the state machine.
    pub snapshots_installed: u64,
    /// Snapshots the protocol asked to install that the state machine had
    /// already passed (an earlier install of a newer snapshot); not
    /// installed, so the state never moves backwards.
    pub snapshots_skipped: u64,
    /// Proposals answered [`ReplicaError::OutcomeUnknown`].
    pub proposals_unknown: u64,
    /// Local snapshots built and reported to the protocol
    /// ([`ReplicaConfig::snapshot_every_entries`]).
    pub snapshots_built: u64,
    /// Linearizable reads answered.
    pub reads_served: u64,
    /// Waiters forgotten because their caller gave up.
    pub waiters_abandoned: u64,
}

/// What [`ReplicaHandle::status`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The protocol's view.
    pub protocol: Status,
    /// Highest index the state machine has applied.
    pub applied: LogIndex,
    /// Driver counters.
    pub stats: ReplicaStats,
}

/// A slot of a bounded budget, released on drop.
struct Permit(Arc<AtomicUsize>);

impl Permit {
    fn acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(counter)))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where one request's answer goes; holds the request's slot until answered
/// or dropped (a dropped reply reads as [`ReplicaError::Shutdown`]).
/// Which bounded slot pool a handle call takes from.
#[derive(Clone, Copy)]
enum Limit {
    /// `max_pending_proposals`: proposals, membership changes, transfers.
    Proposals,
    /// `max_inflight_reads`.
    Reads,
}

pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T, ReplicaError>>,
    _permit: Permit,
}

impl<T> Reply<T> {
    fn send(self, result: Result<T, ReplicaError>) {
        let Reply { tx, _permit } = self;
        // Free the slot first: a caller that proposes again as soon as it
        // has its answer must find it free.
        drop(_permit);
        // The caller may have given up; that is its right.
        let _ = tx.send(result);
    }

    fn is_abandoned(&self) -> bool {
        self.tx.is_closed()
    }
}

enum Command {
    ChangeMembership {
        change: MembershipChange,
        reply: Reply<LogId>,
    },
    TransferLeader {
        to: NodeId,
        reply: Reply<()>,
    },
    Propose {
        data: Bytes,
        reply: Reply<Bytes>,
    },
    Read {
        reply: Reply<LogIndex>,
    },
    Status {
        reply: oneshot::Sender<ReplicaStatus>,
    },
}

struct Shared {
    pending_proposals: Arc<AtomicUsize>,
    inflight_reads: Arc<AtomicUsize>,
    max_pending_proposals: usize,
    max_inflight_reads: usize,
    max_proposal_bytes: usize,
}

/// A cheap, cloneable client of a [`Replica`].
pub struct ReplicaHandle<S> {
    cmd_tx: mpsc::Sender<Command>,
    query_tx: mpsc::Sender<Query<S>>,
    shared: Arc<Shared>,
}

impl<S> Clone for ReplicaHandle<S> {
    fn clone(&self) -> Self {
        Self {
            cmd_tx: self.cmd_tx.clone(),
            query_tx: self.query_tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>, what: &str) -> ReplicaError {
    match e {
        mpsc::error::TrySendError::Full(_) => ReplicaError::Busy(format!("{what} queue full")),
        mpsc::error::TrySendError::Closed(_) => ReplicaError::Shutdown,
    }
}

impl<S: StateMachine> ReplicaHandle<S> {
    /// Takes a slot of the bounded `limit` (`Busy` when none is free),
    /// sends the command `make` builds around its reply, and waits for the
    /// answer (`Shutdown` if the driver stops first).
    async fn call<T>(
        &self,
        limit: Limit,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ReplicaError> {
        let (counter, max, what) = match limit {
            Limit::Proposals => (
                &self.shared.pending_proposals,
                self.shared.max_pending_proposals,
                "max_pending_proposals reached",
            ),
            Limit::Reads => (
                &self.shared.inflight_reads,
                self.shared.max_inflight_reads,
                "max_inflight_reads reached",
            ),
        };
        let permit =
            Permit::acquire(counter, max).ok_or_else(|| ReplicaError::Busy(what.into()))?;
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            _permit: permit,
        };
        self.cmd_tx
            .try_send(make(reply))
            .map_err(|e| queue_error(e, "command"))?;
        rx.await.unwrap_or(Err(ReplicaError::Shutdown))
    }

    /// Proposes `data` and waits until it is committed and applied; returns
    /// the state machine's response.
    ///
    /// Fails at once with [`ReplicaError::NotLeader`], [`ReplicaError::Busy`]
    /// or [`ReplicaError::TooLarge`] without proposing anything. Cancelling
    /// the future does not withdraw the proposal.
    pub async fn propose(&self, data: Bytes) -> Result<Bytes, ReplicaError> {
        if data.len() > self.shared.max_proposal_bytes {
            return Err(ReplicaError::TooLarge {
                size_bytes: data.len(),
                max_bytes: self.shared.max_proposal_bytes,
            });
        }
        self.call(Limit::Proposals, |reply| Command::Propose { data, reply })
            .await
    }

    /// Linearizable read barrier: resolves with an index once the state
    /// machine has applied it; state read afterwards reflects every write
    /// acknowledged before this call.
    pub async fn read_index(&self) -> Result<LogIndex, ReplicaError> {
        self.call(Limit::Reads, |reply| Command::Read { reply })
            .await
    }

    /// Runs `f` on the state machine, on the apply task, between batches.
    /// Serializable, not linearizable: see
    /// [`linearizable_query`](Self::linearizable_query).
    pub async fn query<R, F>(&self, f: F) -> Result<R, ReplicaError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let q: Query<S> = Box::new(move |sm: &S| {
            let _ = tx.send(f(sm));
        });
        self.query_tx
            .try_send(q)
            .map_err(|e| queue_error(e, "query"))?;
        rx.await.map_err(|_| ReplicaError::Shutdown)
    }

    /// [`read_index`](Self::read_index), then [`query`](Self::query): a
    /// linearizable read of the state machine.
    pub async fn linearizable_query<R, F>(&self, f: F) -> Result<R, ReplicaError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        self.read_index().await?;
        self.query(f).await
    }

    /// Asks the protocol for a membership change and waits until the
    /// change's entry is committed and applied; returns its id. Counts
    /// against [`ReplicaConfig::max_pending_proposals`]. If another entry is
    /// committed at its index the answer is [`ReplicaError::Dropped`].
    pub async fn change_membership(&self, change: MembershipChange) -> Result<LogId, ReplicaError> {
        self.call(Limit::Proposals, |reply| Command::ChangeMembership {
            change,
            reply,
        })
        .await
    }

    /// Asks the leader to hand leadership to `to`. Resolves once the
    /// protocol accepted the request (not when the transfer completes: watch
    /// [`status`](Self::status)).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ReplicaError> {
        self.call(Limit::Proposals, |reply| Command::TransferLeader {
            to,
            reply,
        })
        .await
    }

    /// The protocol's status and the driver's counters.
    pub async fn status(&self) -> Result<ReplicaStatus, ReplicaError> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .try_send(Command::Status { reply: tx })
            .map_err(|e| queue_error(e, "command"))?;
        rx.await.map_err(|_| ReplicaError::Shutdown)
    }
}

struct DriverExit<S> {
    state_machine: Option<S>,
    error: Option<ReplicaError>,
}

/// A running replica: owns the driver and apply tasks.
///
/// Dropping it stops the driver as [`shutdown`](Self::shutdown) does (the
/// state machine is then dropped with it).
pub struct Replica<S> {
    handle: ReplicaHandle<S>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<DriverExit<S>>>,
}

impl<S: StateMachine> Replica<S> {
    /// Starts the driver and apply tasks on the current tokio runtime.
    ///
    /// `consensus` must be built from what `store` recovered for
    /// `config.group`; `inbound` receives the frames the transport delivers
    /// to this node.
    pub fn start<C: Consensus>(
        config: ReplicaConfig,
        consensus: C,
        store: Arc<dyn LogStore>,
        state_machine: S,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<Self, ReplicaError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReplicaError::Config(
                "Replica::start must be called inside a tokio runtime".into(),
            ));
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(
            config.max_pending_proposals + config.max_inflight_reads + CONTROL_QUEUE_LEN,
        );
        let (query_tx, query_rx) = mpsc::channel(config.max_queued_queries);
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let applied0 = state_machine.last_applied().index;
        let (applied_tx, applied_rx) = watch::channel(applied0);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            pending_proposals: Arc::new(AtomicUsize::new(0)),
            inflight_reads: Arc::new(AtomicUsize::new(0)),
            max_pending_proposals: config.max_pending_proposals,
            max_inflight_reads: config.max_inflight_reads,
            max_proposal_bytes: config.max_proposal_bytes,
        });
        let counters = Arc::new(SnapshotCounters::default());
        let apply_task = tokio::spawn(apply::run(
            state_machine,
            apply_rx,
            query_rx,
            applied_tx,
            Arc::clone(&counters),
        ));
        let mut consensus = consensus;
        consensus.applied(applied0);
        let id = consensus.id();
        let seq_base = config.seq_base.unwrap_or_else(random_seq_base);
        let driver = Driver {
            id,
            consensus,
            store,
            transport,
            started: Instant::now(),
            next_seq: seq_base,
            next_read_ctx: 1,
            proposals: BTreeMap::new(),
            changes: BTreeMap::new(),
            changes_decided: BTreeMap::new(),
            reads_pending: HashMap::new(),
            reads_ready: BTreeMap::new(),
            in_flight: None,
            apply_tx: Some(apply_tx),
            applied: applied0,
            handed_to_apply: applied0,
            stats: ReplicaStats::default(),
            fatal: None,
            ticks: 0,
            receiver: snapshot::Receiver::new(config.max_snapshot_bytes),
            counters,
            next_transfer: splitmix64(seq_base),
            last_snapshot: applied0,
            config,
            _sm: std::marker::PhantomData,
        };
        let task = tokio::spawn(driver.run(cmd_rx, inbound, shutdown_rx, applied_rx, apply_task));
        Ok(Self {
            handle: ReplicaHandle {
                cmd_tx,
                query_tx,
                shared,
            },
            shutdown_tx: Some(shutdown_tx),
            driver: Some(task),
        })
    }

    /// A client handle.
    pub fn handle(&self) -> ReplicaHandle<S> {
        self.handle.clone()
    }

    /// Whether the driver has stopped (after a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.driver.as_ref().is_none_or(|d| d.is_finished())
    }

    /// Stops the replica: no more ticks or requests; the Ready being
    /// persisted is finished (its committed entries applied and answered);
    /// every other waiting request is answered with
    /// [`ReplicaError::Shutdown`]; the apply task drains and the state
    /// machine is returned. No task is left running.
    ///
    /// Returns the error that stopped the replica earlier, if one did.
    pub async fn shutdown(mut self) -> Result<S, ReplicaError> {
        if let Some(tx) = self.shutdown_tx.take() {
            // The driver may already have stopped after a fatal error.
            let _ = tx.send(());
        }
        let Some(task) = self.driver.take() else {
            return Err(ReplicaError::Shutdown);
        };
        match task.await {
            Ok(DriverExit { error: Some(e), .. }) => Err(e),
            Ok(DriverExit {
                state_machine: Some(sm),
                error: None,
            }) => Ok(sm),
            Ok(DriverExit {
                state_machine: None,
                error: None,
            }) => Err(ReplicaError::StateMachine(
                "the state machine was lost".into(),
            )),
            Err(join) => Err(ReplicaError::StateMachine(format!(
                "the driver task failed: {join}"
            ))),
        }
    }
}

/// A Ready whose write is in flight.
struct InFlight<M> {
    number: u64,
    persisted_messages: Vec<Outbound<M>>,
    committed: Vec<Entry>,
    reads: Vec<ReadState>,
    send_snapshots: Vec<SnapshotSend<M>>,
}

/// The write of the Ready in flight (after installing its snapshot, if any).
type PersistTask =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ReplicaError>> + Send + 'static>>;

struct Driver<C: Consensus, S> {
    config: ReplicaConfig,
    id: NodeId,
    consensus: C,
    store: Arc<dyn LogStore>,
    transport: Arc<dyn Transport>,
    started: Instant,
    next_seq: u64,
    next_read_ctx: ReadCtx,
    /// Proposals by the index the protocol gave them: (seq, reply).
    proposals: BTreeMap<LogIndex, (u64, Reply<Bytes>)>,
    /// Membership changes by index, not yet committed: (id, reply).
    changes: BTreeMap<LogIndex, (LogId, Reply<LogId>)>,
    /// Membership changes decided, answered once applied.
    changes_decided: BTreeMap<LogIndex, (Result<LogId, ReplicaError>, Reply<LogId>)>,
    /// Reads given to the protocol, not yet safe.
    reads_pending: HashMap<ReadCtx, Reply<LogIndex>>,
    /// Safe reads waiting for the state machine to reach their index.
    reads_ready: BTreeMap<LogIndex, Vec<Reply<LogIndex>>>,
    in_flight: Option<InFlight<C::Message>>,
    apply_tx: Option<mpsc::UnboundedSender<ApplyMsg>>,
    applied: LogIndex,
    handed_to_apply: LogIndex,
    stats: ReplicaStats,
    fatal: Option<ReplicaError>,
    ticks: u64,
    receiver: snapshot::Receiver,
    counters: Arc<SnapshotCounters>,
    next_transfer: u64,
    /// Index covered by the last local snapshot (or where the driver started).
    last_snapshot: LogIndex,
    _sm: std::marker::PhantomData<fn() -> S>,
}

/// A local snapshot being built by the apply task.
type BuildTask = oneshot::Receiver<Result<crate::types::SnapshotMeta, ReplicaError>>;

async fn wait_build(b: &mut Option<BuildTask>) -> Result<crate::types::SnapshotMeta, ReplicaError> {
    match b.as_mut() {
        Some(rx) => rx.await.unwrap_or(Err(ReplicaError::Shutdown)),
        None => std::future::pending().await,
    }
}

async fn wait_persist(h: &mut Option<PersistTask>) -> Result<(), ReplicaError> {
    match h.as_mut() {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Writes `write` to `store`: queued without a thread hand-off when the
/// store supports it ([`LogStore::write_queued`]), else on the blocking
/// pool.
fn start_write(store: Arc<dyn LogStore>, group: GroupId, write: LogWrite) -> PersistTask {
    let (tx, rx) = oneshot::channel();
    let done: crate::storage::WriteDone = Box::new(move |res| {
        let _ = tx.send(res);
    });
    match store.write_queued(group, write, done) {
        Ok(()) => Box::pin(async move {
            match rx.await {
                Ok(res) => res.map_err(|e| ReplicaError::Storage(e.to_string())),
                Err(_) => Err(ReplicaError::Storage(
                    "the log store dropped a write without answering".into(),
                )),
            }
        }),
        Err(back) => {
            let write = back.write;
            let task = tokio::task::spawn_blocking(move || {
                store
                    .write(group, write)
                    .map_err(|e| ReplicaError::Storage(e.to_string()))
            });
            Box::pin(async move {
                task.await.unwrap_or_else(|join| {
                    Err(ReplicaError::Storage(format!(
                        "log write task failed: {join}"
                    )))
                })
            })
        }
    }
}

impl<C: Consensus, S: StateMachine> Driver<C, S> {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut shutdown_rx: oneshot::Receiver<()>,
        mut applied_rx: watch::Receiver<LogIndex>,
        apply_task: JoinHandle<apply::ApplyExit<S>>,
    ) -> DriverExit<S> {
        let period = std::time::Duration::from_millis(self.config.tick_interval_ms);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut persist: Option<PersistTask> = None;
        let mut building: Option<BuildTask> = None;
        let mut inbound_open = true;
        let mut commands_open = true;
        self.pump(&mut persist);
        while self.fatal.is_none() {
            tokio::select! {
                _ = &mut shutdown_rx => break,
                res = wait_persist(&mut persist) => {
                    persist = None;
                    self.on_persisted(res);
                }
                built = wait_build(&mut building) => {
                    building = None;
                    match built {
                        Ok(meta) => {
                            self.stats.snapshots_built += 1;
                            self.last_snapshot = self.last_snapshot.max(meta.last_log_id.index);
                            self.consensus.snapshot_built(meta);
                        }
                        // A failed snapshot build is not fatal: the log
                        // simply stays longer; try again later.
                        Err(e) => {
                            self.last_snapshot = self.applied;
                            tracing::warn!(error = %e, "building a local snapshot failed");
                        }
                    }
                }
                changed = applied_rx.changed() => match changed {
                    Ok(()) => {
                        let idx = *applied_rx.borrow_and_update();
                        self.on_applied(idx);
                        if building.is_none() {
                            building = self.maybe_build_snapshot();
                        }
                    }
                    // The apply task stopped; its exit says why.
                    Err(_) => break,
                },
                cmd = cmd_rx.recv(), if commands_open => match cmd {
                    Some(c) => {
                        self.on_command(c);
                        // Everything already queued joins the same Ready:
                        // a burst of proposals (a forwarded batch, many
                        // clients) becomes one round, not one round for the
                        // first and another for the rest.
                        for _ in 1..DRAIN_MAX {
                            let Ok(c) = cmd_rx.try_recv() else { break };
                            self.on_command(c);
                        }
                    }
                    None => commands_open = false,
                },
                inb = inbound.recv(), if inbound_open => match inb {
                    Some(i) => {
                        self.on_inbound(i);
                        for _ in 1..DRAIN_MAX {
                            let Ok(i) = inbound.try_recv() else { break };
                            self.on_inbound(i);
                        }
                    }
                    None => inbound_open = false,
                },
                _ = ticker.tick() => self.on_tick(),
            }
            self.pump(&mut persist);
        }
        // Stop taking requests; those already queued are answered below.
        cmd_rx.close();
        if persist.is_some() {
            let res = wait_persist(&mut persist).await;
            self.on_persisted(res);
        }
        self.finish(cmd_rx, applied_rx, apply_task).await
    }

    async fn finish(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        applied_rx: watch::Receiver<LogIndex>,
        apply_task: JoinHandle<apply::ApplyExit<S>>,
    ) -> DriverExit<S> {
        let err = self.fatal.clone().unwrap_or(ReplicaError::Shutdown);
        while let Ok(cmd) = cmd_rx.try_recv() {
            match cmd {
                Command::Propose { reply, .. } => reply.send(Err(err.clone())),
                Command::Read { reply } => reply.send(Err(err.clone())),
                Command::ChangeMembership { reply, .. } => reply.send(Err(err.clone())),
                Command::TransferLeader { reply, .. } => reply.send(Err(err.clone())),
                Command::Status { reply } => {
                    let _ = reply.send(self.status());
                }
            }
        }
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.changes) {
            reply.send(Err(err.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.reads_pending) {
            reply.send(Err(err.clone()));
        }
        // Let the apply task drain what was committed, then stop it.
        self.apply_tx = None;
        let exit = match apply_task.await {
            Ok(exit) => exit,
            Err(join) => apply::ApplyExit {
                state_machine: None,
                error: Some(ReplicaError::StateMachine(format!(
                    "apply task failed: {join}"
                ))),
            },
        };
        let applied = *applied_rx.borrow();
        for (index, (result, reply)) in std::mem::take(&mut self.changes_decided) {
            if index <= applied && exit.error.is_none() && self.fatal.is_none() {
                reply.send(result);
            } else {
                reply.send(Err(err.clone()));
            }
        }
        for (index, replies) in std::mem::take(&mut self.reads_ready) {
            for reply in replies {
                if index <= applied && exit.error.is_none() && self.fatal.is_none() {
                    reply.send(Ok(index));
                } else {
                    reply.send(Err(err.clone()));
                }
            }
        }
        DriverExit {
            state_machine: exit.state_machine,
            error: self.fatal.or(exit.error),
        }
    }

    fn status(&self) -> ReplicaStatus {
        let mut stats = self.stats;
        stats.snapshots_sent = self.counters.sent.load(Ordering::Relaxed);
        stats.snapshot_sends_failed = self.counters.send_failed.load(Ordering::Relaxed);
        ReplicaStatus {
            protocol: self.consensus.status(),
            applied: self.applied,
            stats,
        }
    }

    fn fail(&mut self, err: ReplicaError) {
        tracing::error!(group = %self.config.group, error = %err, "replica stopping");
        if self.fatal.is_none() {
            self.fatal = Some(err);
        }
    }

    /// Takes and carries out Readys until one needs a write (then it is in
    /// flight) or none is available.
    fn pump(&mut self, persist: &mut Option<PersistTask>) {
        while persist.is_none()
            && self.fatal.is_none()
            && self.handed_to_apply.0.saturating_sub(self.applied.0)
                <= self.config.max_apply_backlog_entries
            && self.consensus.has_ready()
        {
            let mut rd = self.consensus.ready();
            self.stats.readys += 1;
            let needs_persist = rd.needs_persist();
            self.send(std::mem::take(&mut rd.messages));
            // Install a staged snapshot before the write that records it.
            let installed = match &rd.snapshot {
                None => None,
                Some(meta) => match self.start_install(meta) {
                    Ok(done) => Some(done),
                    Err(e) => return self.fail(e),
                },
            };
            let flight = InFlight {
                number: rd.number,
                persisted_messages: rd.persisted_messages,
                committed: rd.committed,
                reads: rd.reads,
                send_snapshots: rd.send_snapshots,
            };
            if needs_persist {
                self.stats.persists += 1;
                self.stats.persisted_entries += rd.entries.len() as u64;
                let write = LogWrite {
                    snapshot: rd.snapshot,
                    truncate_from: rd.truncate_from,
                    entries: rd.entries,
                    hard_state: rd.hard_state,
                    purge_to: rd.purge_to,
                    sync: true,
                };
                let store = Arc::clone(&self.store);
                let group = self.config.group;
                *persist = Some(match installed {
                    // The common case: straight to the store.
                    None => start_write(store, group, write),
                    Some(done) => Box::pin(async move {
                        done.await.unwrap_or(Err(ReplicaError::StateMachine(
                            "the apply task stopped during a snapshot install".into(),
                        )))?;
                        start_write(store, group, write).await
                    }),
                });
                self.in_flight = Some(flight);
            } else {
                self.complete(flight);
            }
        }
    }

    fn on_persisted(&mut self, res: Result<(), ReplicaError>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match res {
            Ok(()) => self.complete(flight),
            Err(e) => self.fail(e),
        }
    }

    /// Hands the staged snapshot `meta` to the apply task; the returned
    /// receiver resolves once it is installed. Proposals at or below the
    /// snapshot can no longer be matched to an entry.
    fn start_install(
        &mut self,
        meta: &crate::types::SnapshotMeta,
    ) -> Result<oneshot::Receiver<Result<(), ReplicaError>>, ReplicaError> {
        let staged = self.receiver.take(meta).ok_or_else(|| {
            ReplicaError::Protocol(format!(
                "asked to install snapshot {:?}, which was not staged",
                meta.last_log_id
            ))
        })?;
        // The staged snapshot may be newer than the one the protocol named
        // (see `snapshot::Receiver::take`): the state machine jumps to the
        // staged index, so every waiter up to *that* index can no longer be
        // matched to its entry (the entries up to it are skipped on apply).
        let index = staged.meta.last_log_id.index.max(meta.last_log_id.index);
        let later = self.proposals.split_off(&index.next());
        for (_, (_, reply)) in std::mem::replace(&mut self.proposals, later) {
            self.stats.proposals_unknown += 1;
            reply.send(Err(ReplicaError::OutcomeUnknown));
        }
        let later = self.changes.split_off(&index.next());
        for (_, (_, reply)) in std::mem::replace(&mut self.changes, later) {
            reply.send(Err(ReplicaError::OutcomeUnknown));
        }
        let (done_tx, done_rx) = oneshot::channel();
        if staged.meta.last_log_id.index <= self.handed_to_apply {
            // The state machine already holds (or will, once the entries
            // handed to it are applied) everything this snapshot covers: an
            // earlier install of a newer snapshot put it ahead of the
            // protocol. Installing would move it backwards; skip it. The
            // log store still records the protocol's snapshot.
            self.stats.snapshots_skipped += 1;
            let _ = done_tx.send(Ok(()));
            return Ok(done_rx);
        }
        self.handed_to_apply = self.handed_to_apply.max(index);
        let msg = ApplyMsg::Install {
            meta: staged.meta,
            chunks: staged.chunks,
            done: done_tx,
        };
        if !self.to_apply(msg) {
            return Err(ReplicaError::StateMachine("the apply task stopped".into()));
        }
        self.stats.snapshots_installed += 1;
        Ok(done_rx)
    }

    /// Steps 3–6 of a Ready, once its write (if any) is durable.
    fn complete(&mut self, flight: InFlight<C::Message>) {
        self.send(flight.persisted_messages);
        self.hand_to_apply(flight.committed);
        for rs in flight.reads {
            self.read_safe(rs);
        }
        for send in flight.send_snapshots {
            self.send_snapshot(send);
        }
        self.consensus.advance(flight.number);
    }

    /// Asks the apply task to build a snapshot and stream it to `send.to`.
    fn send_snapshot(&mut self, send: SnapshotSend<C::Message>) {
        self.stats.snapshot_sends_requested += 1;
        self.next_transfer = self.next_transfer.wrapping_add(1);
        let job = snapshot::SnapshotJob {
            to: send.to,
            group: self.config.group,
            want: send.meta,
            header: codec::encode(&send.header).into(),
            transfer: self.next_transfer,
            transport: Arc::clone(&self.transport),
            max_bytes: self.config.max_snapshot_bytes,
        };
        if !self.to_apply(ApplyMsg::Send(job)) {
            self.fail(ReplicaError::StateMachine("the apply task stopped".into()));
        }
    }

    /// Queues work for the apply task; false if it has stopped.
    fn to_apply(&self, msg: ApplyMsg) -> bool {
        match &self.apply_tx {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    fn send(&mut self, messages: Vec<Outbound<C::Message>>) {
        for m in messages {
            let frame = Frame {
                group: self.config.group,
                kind: FrameKind::Protocol,
                payload: codec::encode(&m.msg).into(),
            };
            self.transport.send(m.to, frame);
            self.stats.messages_sent += 1;
        }
    }

    fn hand_to_apply(&mut self, committed: Vec<Entry>) {
        if committed.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(committed.len());
        for e in committed {
            let index = e.index();
            // A proposal at an index the log passed without committing it
            // there (a gap) is certainly not applied at its index.
            while let Some(first) = self.proposals.first_entry() {
                if *first.key() >= index {
                    break;
                }
                let (_, reply) = first.remove();
                self.stats.proposals_dropped += 1;
                reply.send(Err(ReplicaError::Dropped));
            }
            while let Some(first) = self.changes.first_entry() {
                if *first.key() >= index {
                    break;
                }
                let (_, reply) = first.remove();
                reply.send(Err(ReplicaError::Dropped));
            }
            if let Some((id, reply)) = self.changes.remove(&index) {
                let ours = e.log_id == id && matches!(e.payload, EntryPayload::Membership(_));
                let result = if ours {
                    Ok(id)
                } else {
                    Err(ReplicaError::Dropped)
                };
                self.changes_decided.insert(index, (result, reply));
            }
            let mut tag = None;
            let payload = match e.payload {
                EntryPayload::Blank => ApplyPayload::Blank,
                EntryPayload::Membership(m) => ApplyPayload::Membership(*m),
                EntryPayload::Normal(raw) => match TaggedCommand::decode(&raw) {
                    Ok(t) => {
                        tag = Some((t.proposer, t.seq));
                        ApplyPayload::Command(t.data)
                    }
                    Err(_) => {
                        self.stats.untagged_entries += 1;
                        ApplyPayload::Command(raw)
                    }
                },
            };
            let reply = self.proposals.remove(&index).map(|(seq, reply)| {
                if tag == Some((self.id, seq)) {
                    self.stats.proposals_committed += 1;
                    ApplyReply::Matched(reply)
                } else {
                    self.stats.proposals_dropped += 1;
                    ApplyReply::Dropped(reply)
                }
            });
            batch.push(ApplyItem {
                log_id: e.log_id,
                payload,
                reply,
            });
            self.handed_to_apply = self.handed_to_apply.max(index);
        }
        self.stats.committed_entries += batch.len() as u64;
        if !self.to_apply(ApplyMsg::Batch(batch)) {
            self.fail(ReplicaError::StateMachine("the apply task stopped".into()));
        }
    }

    fn read_safe(&mut self, rs: ReadState) {
        let Some(reply) = self.reads_pending.remove(&rs.ctx) else {
            return;
        };
        if rs.index <= self.applied {
            self.stats.reads_served += 1;
            reply.send(Ok(rs.index));
        } else {
            self.reads_ready.entry(rs.index).or_default().push(reply);
        }
    }

    /// Asks the apply task for a snapshot when enough entries were applied
    /// since the last one.
    fn maybe_build_snapshot(&mut self) -> Option<BuildTask> {
        let every = self.config.snapshot_every_entries?;
        if self.applied.0.saturating_sub(self.last_snapshot.0) < every {
            return None;
        }
        let (done, rx) = oneshot::channel();
        self.to_apply(ApplyMsg::Build { done }).then_some(rx)
    }

    fn on_applied(&mut self, index: LogIndex) {
        if index <= self.applied {
            return;
        }
        self.applied = index;
        self.consensus.applied(index);
        let later = self.changes_decided.split_off(&index.next());
        for (_, (result, reply)) in std::mem::replace(&mut self.changes_decided, later) {
            reply.send(result);
        }
        let later = self.reads_ready.split_off(&index.next());
        for (idx, replies) in std::mem::replace(&mut self.reads_ready, later) {
            for reply in replies {
                self.stats.reads_served += 1;
                reply.send(Ok(idx));
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { data, reply } => self.propose(data, reply),
            Command::Read { reply } => {
                let ctx = self.next_read_ctx;
                self.next_read_ctx = self.next_read_ctx.wrapping_add(1);
                match self.consensus.read_index(ctx) {
                    Ok(()) => {
                        self.reads_pending.insert(ctx, reply);
                    }
                    Err(e) => reply.send(Err(refusal(e))),
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::ChangeMembership { change, reply } => {
                match self.consensus.change_membership(change) {
                    Ok(id) if id.index <= self.handed_to_apply => {
                        reply.send(Err(ReplicaError::Dropped))
                    }
                    Ok(id) => {
                        if let Some((_, old)) = self.changes.insert(id.index, (id, reply)) {
                            old.send(Err(ReplicaError::Dropped));
                        }
                    }
                    Err(e) => reply.send(Err(refusal(e))),
                }
            }
            Command::TransferLeader { to, reply } => {
                reply.send(self.consensus.transfer_leader(to).map_err(refusal));
            }
        }
    }

    fn propose(&mut self, data: Bytes, reply: Reply<Bytes>) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let tagged = TaggedCommand {
            proposer: self.id,
            seq,
            data,
        };
        match self.consensus.propose(tagged.encode()) {
            Ok(log_id) => {
                self.stats.proposals += 1;
                if log_id.index <= self.handed_to_apply {
                    // The protocol reused a committed index: it cannot commit
                    // this entry there.
                    self.stats.proposals_dropped += 1;
                    reply.send(Err(ReplicaError::Dropped));
                } else if let Some((_, old)) = self.proposals.insert(log_id.index, (seq, reply)) {
                    // Our own newer entry now holds the index in the
                    // leader's log: the older proposal lost it.
                    self.stats.proposals_dropped += 1;
                    old.send(Err(ReplicaError::Dropped));
                }
            }
            Err(e) => reply.send(Err(refusal(e))),
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        self.stats.frames_received += 1;
        let Inbound { from, frame } = inbound;
        if frame.group != self.config.group {
            self.stats.frames_wrong_group += 1;
            tracing::debug!(%from, group = %frame.group, "dropping frame for another group");
            return;
        }
        match frame.kind {
            FrameKind::Protocol => match codec::decode::<C::Message>(&frame.payload) {
                Ok(msg) => self.consensus.step(from, msg),
                Err(e) => {
                    self.stats.frames_undecodable += 1;
                    tracing::debug!(%from, error = %e, "dropping undecodable frame");
                }
            },
            FrameKind::Snapshot => match self.receiver.on_frame(from, &frame.payload) {
                snapshot::Received::Progress => {}
                snapshot::Received::Failed(why) => {
                    self.stats.snapshot_frames_rejected += 1;
                    tracing::debug!(%from, why, "snapshot transfer discarded");
                }
                snapshot::Received::Complete { header } => {
                    match codec::decode::<C::Message>(&header) {
                        Ok(msg) => {
                            self.stats.snapshots_received += 1;
                            self.consensus.step(from, msg);
                        }
                        Err(e) => {
                            self.stats.frames_undecodable += 1;
                            tracing::debug!(%from, error = %e, "undecodable snapshot header");
                        }
                    }
                }
            },
        }
    }

    fn on_tick(&mut self) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.consensus.tick(now_ms);
        self.ticks += 1;
        if self
            .ticks
            .is_multiple_of(u64::from(self.config.prune_interval_ticks))
        {
            self.prune_abandoned();
        }
    }

    fn prune_abandoned(&mut self) {
        let before = self.proposals.len()
            + self.reads_pending.len()
            + self.reads_ready.values().map(Vec::len).sum::<usize>();
        self.proposals.retain(|_, (_, r)| !r.is_abandoned());
        self.changes.retain(|_, (_, r)| !r.is_abandoned());
        self.reads_pending.retain(|_, r| !r.is_abandoned());
        self.reads_ready.retain(|_, v| {
            v.retain(|r| !r.is_abandoned());
            !v.is_empty()
        });
        let after = self.proposals.len()
            + self.reads_pending.len()
            + self.reads_ready.values().map(Vec::len).sum::<usize>();
        self.stats.waiters_abandoned += (before - after) as u64;
    }
}

fn refusal(e: ProposeError) -> ReplicaError {
    match e {
        ProposeError::NotLeader { leader } => ReplicaError::NotLeader { leader },
        ProposeError::Overloaded(m) => ReplicaError::Busy(m),
        other => ReplicaError::Rejected(other),
    }
}

/// SplitMix64 finaliser (Steele, Lea, Flood 2014): a fixed, well-mixing
/// 64-bit permutation.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random request-sequence base for one driver lifetime. Not persisted and
/// not placement-relevant: std's randomly keyed hasher only contributes
/// entropy here.
fn random_seq_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    splitmix64(h.finish() ^ splitmix64(nanos))
}
