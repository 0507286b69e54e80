//! [`LockNode`]: a replicated [`Node`] running `ha_lock::LockMachine`, and
//! [`NodeBackend`], the etcd API's [`Backend`] over it.
//!
//! - **Events**: the machine's event sink feeds a bounded broadcast
//!   ([`LockNodeConfig::event_queue_len`]); a watcher that falls behind gets
//!   `Lagged` and recovers from history, as the API layer does.
//! - **Leases**: a leader-only loop drives a [`Lessor`]: on becoming leader
//!   it starts from the replicated remaining TTLs (read after a
//!   linearizable barrier), every [`LockNodeConfig::lease_tick_ms`] it
//!   reconciles with the lease table (`Lessor::sync`) and proposes what
//!   `Lessor::tick` returns (expiries, checkpoints); it steps down when the
//!   member loses leadership. Grants and keep-alives applied through the
//!   leader — its own or forwarded to it — renew the lessor's deadlines
//!   through the node's leader hook.
//! - **Latency**: every write and read is recorded in [`Metrics`] by
//!   command kind (`Put`, `Txn`, `LeaseKeepAlive`, `Range`, ...).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_core::consensus::Role;
use ha_lock::api::{self as hl, Applied, Command, Response};
use ha_lock::{Lessor, LockMachine};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::api::{Backend, BackendError, EventBatch, HeaderInfo, MemberInfo, StatusInfo};
use crate::cluster::{AppStore, Member, Node, NodeConfig, NodeError, NodeHandle};
use crate::metrics::Metrics;

/// Largest response the leader hook decodes to look for lease grants and
/// renewals (those responses are a few bytes; skipping big ones keeps the
/// hook cheap for large reads-with-prev_kv).
pub const MAX_HOOK_RESPONSE_BYTES: usize = 256;

/// Settings of a [`LockNode`] beyond the [`NodeConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockNodeConfig {
    /// The state machine's limits.
    pub limits: hl::Limits,
    /// Capacity of the live event broadcast, in batches.
    pub event_queue_len: usize,
    /// Period of the leader's lease loop, ms (lease expiry precision).
    pub lease_tick_ms: u64,
    /// Period of lease checkpoints, ms (the most a lease can outlive its
    /// TTL over a failover, plus the failover time).
    pub lease_checkpoint_interval_ms: u64,
    /// Version string Status reports.
    pub version: String,
}

impl Default for LockNodeConfig {
    fn default() -> Self {
        Self {
            limits: hl::Limits::default(),
            event_queue_len: 1024,
            lease_tick_ms: 100,
            lease_checkpoint_interval_ms: 5_000,
            version: concat!("3.5.0+ha.", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The etcd API [`Backend`] of a replicated member.
pub struct NodeBackend {
    node: NodeHandle<LockMachine>,
    events: broadcast::Sender<Arc<EventBatch>>,
    lessor: Arc<Mutex<Lessor>>,
    clock: Arc<Clock>,
    term: AtomicU64,
    version: String,
}

impl std::fmt::Debug for NodeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBackend").finish_non_exhaustive()
    }
}

/// A running member serving the lock machine.
pub struct LockNode {
    node: Node<LockMachine>,
    backend: Arc<NodeBackend>,
    stop: watch::Sender<bool>,
    lessor_task: JoinHandle<()>,
}

fn lock_lessor(l: &Mutex<Lessor>) -> std::sync::MutexGuard<'_, Lessor> {
    // The lessor is plain data; a panic elsewhere leaves it usable.
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl LockNode {
    /// Starts the member: the node (store, consensus, transport), the lock
    /// machine (in the node's RocksDB when it has one), the event broadcast
    /// and the lease loop.
    pub async fn start(
        cfg: NodeConfig,
        lock: LockNodeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<LockNode, NodeError> {
        if lock.event_queue_len == 0 || lock.lease_tick_ms == 0 {
            return Err(NodeError::Start(
                "event_queue_len and lease_tick_ms must be > 0".into(),
            ));
        }
        let (events, _) = broadcast::channel(lock.event_queue_len);
        let sink_tx = events.clone();
        let limits = lock.limits.clone();
        let node = Node::start_with(cfg, metrics, move |store| {
            let mut machine = match store {
                #[cfg(feature = "rocksdb")]
                AppStore::Rocks(s) => {
                    LockMachine::open_rocks(s.db(), crate::cluster::GROUP, limits)
                        .map_err(|e| e.to_string())?
                }
                AppStore::Memory(_) => LockMachine::in_memory(limits).map_err(|e| e.to_string())?,
            };
            machine.set_event_sink(crate::api::broadcast_sink(sink_tx));
            Ok(machine)
        })
        .await?;
        let clock = Arc::new(Clock(Instant::now()));
        let lessor = Arc::new(Mutex::new(Lessor::new(lock.lease_checkpoint_interval_ms)));
        let handle = node.handle();
        {
            let lessor = Arc::clone(&lessor);
            let clock = Arc::clone(&clock);
            handle.set_leader_hook(Arc::new(move |_cmd, resp| {
                if resp.len() > MAX_HOOK_RESPONSE_BYTES {
                    return;
                }
                let Ok(applied) = hl::decode_applied(resp) else {
                    return;
                };
                let (id, ttl_ms) = match applied.result {
                    Ok(Response::LeaseGrant(g)) => (g.id, g.ttl_ms),
                    Ok(Response::LeaseKeepAlive(k)) => (k.id, k.ttl_ms),
                    _ => return,
                };
                lock_lessor(&lessor).keep_alive(id, ttl_ms, clock.now_ms());
            }));
        }
        let backend = Arc::new(NodeBackend {
            node: handle,
            events,
            lessor,
            clock,
            term: AtomicU64::new(0),
            version: lock.version.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let lessor_task = tokio::spawn(lease_loop(
            Arc::clone(&backend),
            lock.lease_tick_ms,
            stop_rx,
        ));
        Ok(LockNode {
            node,
            backend,
            stop,
            lessor_task,
        })
    }

    /// The API backend.
    pub fn backend(&self) -> Arc<NodeBackend> {
        Arc::clone(&self.backend)
    }

    /// The node handle.
    pub fn handle(&self) -> NodeHandle<LockMachine> {
        self.node.handle()
    }

    /// Graceful stop (see [`Node::shutdown`]). The lease loop is stopped
    /// first, wherever it waits: a proposal or read of it that cannot
    /// complete (a leader whose peers are gone) is only answered by the
    /// node's shutdown, so waiting for the loop to finish it would wait
    /// forever.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.stop.send_replace(true);
        self.lessor_task.abort();
        let _ = self.lessor_task.await;
        self.node.shutdown().await.map(|_| ())
    }
}

/// The leader-only lease loop (see the [module docs](self)).
async fn lease_loop(b: Arc<NodeBackend>, tick_ms: u64, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(tick_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let st = match b.node.status().await {
            Ok(st) => st,
            Err(NodeError::Shutdown) => return,
            Err(_) => continue,
        };
        b.term.store(st.term, Ordering::Relaxed);
        let leading = st.role == Role::Leader;
        let was_leading = lock_lessor(&b.lessor).is_leader();
        if !leading {
            if was_leading {
                lock_lessor(&b.lessor).step_down();
                tracing::info!("lessor stepped down");
            }
            continue;
        }
        // Linearizable when taking over, so the lease table includes every
        // committed checkpoint; serializable (local, leader) afterwards.
        let leases = match b
            .node
            .read(!was_leading, |m: &LockMachine| m.leases())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "lease table not readable yet");
                continue;
            }
        };
        let now = b.clock.now_ms();
        let cmds = {
            let mut lessor = lock_lessor(&b.lessor);
            if was_leading {
                lessor.sync(now, &leases);
            } else {
                lessor.become_leader(now, &leases);
                tracing::info!(leases = leases.len(), "lessor took over as leader");
            }
            lessor.tick(now)
        };
        for cmd in cmds {
            if let Err(e) = b.node.propose(&hl::encode_command(&cmd)).await {
                tracing::debug!(error = %e, "lease command not proposed; the lessor retries");
            }
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Put(_) => "Put",
        Command::DeleteRange(_) => "DeleteRange",
        Command::Txn(_) => "Txn",
        Command::Compact(_) => "Compact",
        Command::LeaseGrant(_) => "LeaseGrant",
        Command::LeaseRevoke { .. } => "LeaseRevoke",
        Command::LeaseKeepAlive { .. } => "LeaseKeepAlive",
        Command::LeaseCheckpoint(_) => "LeaseCheckpoint",
        Command::LeaseExpire { .. } => "LeaseExpire",
        Command::Lock { .. } => "Lock",
        Command::Unlock { .. } => "Unlock",
        Command::Campaign { .. } => "Campaign",
        Command::Proclaim { .. } => "Proclaim",
        Command::Resign { .. } => "Resign",
        #[allow(unreachable_patterns)]
        _ => "Other",
    }
}

impl From<NodeError> for BackendError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader: Some(_) } => BackendError::NotLeader,
            NodeError::NotLeader { leader: None } => BackendError::NoLeader,
            NodeError::Unavailable(m) if m.contains("no leader") => BackendError::NoLeader,
            NodeError::Unavailable(m) => BackendError::Unavailable(m),
            NodeError::Busy(_) => BackendError::Busy,
            NodeError::TooLarge { .. } => BackendError::TooLarge,
            NodeError::OutcomeUnknown(_) => BackendError::Timeout,
            NodeError::Invalid(m) if m.contains("already used") => BackendError::PeerUrlExists,
            NodeError::Invalid(m) if m.contains("already exists") => BackendError::MemberExists,
            NodeError::Invalid(m) if m.contains("not a learner") => BackendError::MemberNotLearner,
            NodeError::Invalid(m) => BackendError::InvalidRequest(m),
            NodeError::MemberNotFound(_) => BackendError::MemberNotFound,
            NodeError::LearnerNotReady(m) => {
                tracing::info!(reason = %m, "member promote refused");
                BackendError::LearnerNotReady
            }
            e @ NodeError::Removed(_) => BackendError::Unavailable(e.to_string()),
            NodeError::Shutdown => BackendError::Stopped,
            NodeError::Fatal(m) | NodeError::Start(m) => BackendError::Internal(m),
        }
    }
}

fn info(m: Member) -> MemberInfo {
    MemberInfo {
        id: m.id,
        name: m.name,
        peer_urls: m.peer_urls,
        client_urls: m.client_urls,
        is_learner: m.is_learner,
    }
}

impl Backend for NodeBackend {
    async fn write(&self, cmd: Command) -> Result<Applied, BackendError> {
        let started = Instant::now();
        let name = command_name(&cmd);
        let bytes = hl::encode_command(&cmd);
        let result = match self.node.propose(&bytes).await {
            Ok(out) => hl::decode_applied(&out)
                .map_err(|e| BackendError::Internal(format!("undecodable response: {e}"))),
            Err(e) => Err(e.into()),
        };
        self.node
            .metrics()
            .observe_request(name, started.elapsed(), result.is_ok());
        result
    }

    async fn read<R, F>(&self, linearizable: bool, f: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&LockMachine) -> R + Send + 'static,
    {
        let started = Instant::now();
        let r = self
            .node
            .read(linearizable, f)
            .await
            .map_err(BackendError::from);
        let name = if linearizable {
            "Read"
        } else {
            "ReadSerializable"
        };
        self.node
            .metrics()
            .observe_request(name, started.elapsed(), r.is_ok());
        r
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.events.subscribe()
    }

    fn header(&self) -> HeaderInfo {
        HeaderInfo {
            cluster_id: self.node.cluster_id(),
            member_id: self.node.member_id().0,
            raft_term: self.term.load(Ordering::Relaxed),
        }
    }

    fn lease_remaining_ms(&self, id: i64) -> Option<i64> {
        lock_lessor(&self.lessor).remaining_ms(id, self.clock.now_ms())
    }

    async fn members(&self) -> Result<Vec<MemberInfo>, BackendError> {
        Ok(self.node.members().await?.into_iter().map(info).collect())
    }

    async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(MemberInfo, Vec<MemberInfo>), BackendError> {
        let (m, all) = self.node.member_add(peer_urls, is_learner).await?;
        Ok((info(m), all.into_iter().map(info).collect()))
    }

    async fn member_remove(&self, id: u64) -> Result<Vec<MemberInfo>, BackendError> {
        Ok(self
            .node
            .member_remove(id)
            .await?
            .into_iter()
            .map(info)
            .collect())
    }

    async fn member_promote(&self, id: u64) -> Result<Vec<MemberInfo>, BackendError> {
        Ok(self
            .node
            .member_promote(id)
            .await?
            .into_iter()
            .map(info)
            .collect())
    }

    async fn status(&self) -> Result<StatusInfo, BackendError> {
        let st = self.node.status().await?;
        self.term.store(st.term, Ordering::Relaxed);
        let mut errors = Vec::new();
        if st.leader.is_none() {
            errors.push("no leader".to_string());
        }
        Ok(StatusInfo {
            version: self.version.clone(),
            db_size_bytes: i64::try_from(st.db_size_bytes).unwrap_or(i64::MAX),
            leader: st.leader.map_or(0, |l| l.0),
            raft_index: st.last_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            is_learner: st.is_learner,
            errors,
        })
    }
}
