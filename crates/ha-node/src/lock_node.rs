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
//! - **Shards** (`--shards N` > 1, [`LockNode::start_sharded`]): data shard
//!   `g` in `1..=N` runs its own `LockMachine` (RocksDB keys under `g`);
//!   group 0 keeps the member table and holds no keys. A key's shard is
//!   [`ha_shard::Router::shard_for_key`]. Put, single-key delete and a txn
//!   whose keys (compares, ops, nested txns; a range inside a txn counts as
//!   every shard) all live on one shard go to that shard — to this member's
//!   replica or to one hosting it, leader hint as for group 0 — with full
//!   semantics; a txn or range delete spanning shards is refused
//!   (`FAILED_PRECONDITION`, nothing written). A range over several
//!   shards is scatter-gather: each shard's part is read with that shard's
//!   own linearizable (or serializable) read, the parts are merged in the
//!   requested order with each key once, then `limit` is applied; `count`
//!   is the sum. The whole is **not** an atomic snapshot across shards.
//!   Revisions are per shard: a response header's revision is the shard's
//!   for a single-shard request and the **largest** of the shards' for a
//!   multi-shard range; a range at a past revision must name one shard.
//!   Watch, leases, locks, elections and compaction are refused
//!   (`UNIMPLEMENTED`) with `--shards` > 1: their revisions and lease
//!   lifetimes would have to span shards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_core::GroupId;
use ha_core::consensus::Role;
use ha_lock::api::{self as hl, Applied, Command, Response};
use ha_lock::{Lessor, LockMachine};
use ha_shard::router::{KeyRange, Router};
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
    /// Key → shard with `--shards` > 1 (`None`: group 0 holds the data).
    router: Option<ha_shard::Router>,
    /// Most keys one range answer holds (the machine's limit, applied to a
    /// merged multi-shard answer too).
    max_range_keys: usize,
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
        Self::start_sharded(cfg, lock, metrics, None).await
    }

    /// As [`start`](Self::start), also hosting this member's data shards of
    /// `shards` (see the [module docs](self); `None` = one group).
    pub async fn start_sharded(
        cfg: NodeConfig,
        lock: LockNodeConfig,
        metrics: Arc<Metrics>,
        shards: Option<crate::cluster::hosting::ShardingConfig>,
    ) -> Result<LockNode, NodeError> {
        if lock.event_queue_len == 0 || lock.lease_tick_ms == 0 {
            return Err(NodeError::Start(
                "event_queue_len and lease_tick_ms must be > 0".into(),
            ));
        }
        let (events, _) = broadcast::channel(lock.event_queue_len);
        let sink_tx = events.clone();
        let limits = lock.limits.clone();
        let router = match &shards {
            Some(c) => Some(
                ha_shard::Router::new(ha_ring::hash::HashFn::V1, c.shards)
                    .map_err(|e| NodeError::Start(format!("shard router: {e}")))?,
            ),
            None => None,
        };
        let node = Node::start_groups(cfg, metrics, shards, move |store, group| {
            let limits = limits.clone();
            let mut machine = match store {
                #[cfg(feature = "rocksdb")]
                AppStore::Rocks(s) => {
                    LockMachine::open_rocks(s.db(), group, limits).map_err(|e| e.to_string())?
                }
                AppStore::Memory(_) => LockMachine::in_memory(limits).map_err(|e| e.to_string())?,
            };
            // Watch is served from group 0's events only (refused when
            // sharded).
            if group == crate::cluster::GROUP {
                machine.set_event_sink(crate::api::broadcast_sink(sink_tx.clone()));
            }
            Ok(machine)
        })
        .await?;
        let clock = Arc::new(Clock(Instant::now()));
        let lessor = Arc::new(Mutex::new(Lessor::new(lock.lease_checkpoint_interval_ms)));
        let handle = node.handle();
        handle.set_read_hook(Arc::new(|m: &LockMachine, query: &[u8]| {
            let answer: RangeAnswer = match ha_core::codec::decode::<hl::RangeRequest>(query) {
                Ok(req) => (m.range(&req), m.current_revision()),
                Err(e) => (
                    Err(hl::LockError::Malformed(format!("range query: {e}"))),
                    m.current_revision(),
                ),
            };
            ha_core::codec::encode(&answer).into()
        }));
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
            router,
            max_range_keys: lock.limits.max_range_keys,
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

/// Records a read's latency under `Read` or `ReadSerializable`.
fn observe_read(node: &NodeHandle<LockMachine>, linearizable: bool, started: Instant, ok: bool) {
    let name = if linearizable {
        "Read"
    } else {
        "ReadSerializable"
    };
    node.metrics().observe_request(name, started.elapsed(), ok);
}

/// A range read's answer: the machine's result and the revision it was read at.
type RangeAnswer = (Result<hl::RangeResponse, hl::LockError>, i64);

/// Adds the shards that may hold keys of the etcd range `[key, end)`.
fn range_shards(r: &Router, key: &[u8], end: &[u8], into: &mut BTreeSet<GroupId>) {
    into.extend(r.shards_for_range(KeyRange::from_etcd(key, end)));
}

/// Adds the shards every key a transaction touches lives on (compares and
/// operations of both branches, nested transactions included).
fn txn_shards(r: &Router, t: &hl::TxnRequest, into: &mut BTreeSet<GroupId>) {
    for c in &t.compare {
        range_shards(r, &c.key, &c.range_end, into);
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            hl::RequestOp::Range(q) => range_shards(r, &q.key, &q.range_end, into),
            hl::RequestOp::Put(p) => {
                into.insert(r.shard_for_key(&p.key));
            }
            hl::RequestOp::DeleteRange(d) => range_shards(r, &d.key, &d.range_end, into),
            hl::RequestOp::Txn(inner) => txn_shards(r, inner, into),
        }
    }
}

fn shard_list(shards: &BTreeSet<GroupId>) -> String {
    shards
        .iter()
        .map(|g| g.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shard a write goes to with `--shards` > 1, or why it is refused
/// (see the [module docs](self)).
fn shard_of(r: &Router, cmd: &Command) -> Result<GroupId, BackendError> {
    match cmd {
        Command::Put(p) => Ok(r.shard_for_key(&p.key)),
        Command::DeleteRange(d) => {
            let mut shards = BTreeSet::new();
            range_shards(r, &d.key, &d.range_end, &mut shards);
            match shards.len() {
                0 => Ok(r.shard_for_key(&d.key)),
                1 => Ok(*shards.first().unwrap_or(&GroupId(1))),
                _ => Err(BackendError::CrossShard(
                    "a delete over a range of keys spans every shard with --shards > 1 and \
                     cross-shard writes are not supported; nothing was deleted (delete the keys \
                     one by one)"
                        .into(),
                )),
            }
        }
        Command::Txn(t) => {
            let mut shards = BTreeSet::new();
            txn_shards(r, t, &mut shards);
            match shards.len() {
                0 => Ok(r.shard_for_key(b"")),
                1 => Ok(*shards.first().unwrap_or(&GroupId(1))),
                _ => Err(BackendError::CrossShard(format!(
                    "the transaction's keys live on shards {} (a range inside a transaction \
                     counts as every shard); cross-shard transactions are not supported with \
                     --shards > 1; nothing was written",
                    shard_list(&shards)
                ))),
            }
        }
        other => Err(BackendError::Unsupported(format!(
            "{} is not supported with --shards > 1 yet (leases, locks, elections and \
             compaction would span shards)",
            command_name(other)
        ))),
    }
}

/// Reads `query` (an encoded range request) on shard `group` and decodes
/// the answer.
async fn range_on(
    node: NodeHandle<LockMachine>,
    group: GroupId,
    linearizable: bool,
    query: bytes::Bytes,
) -> Result<RangeAnswer, BackendError> {
    let out = node.read_from(group, linearizable, query).await?;
    ha_core::codec::decode::<RangeAnswer>(&out).map_err(|e| {
        BackendError::Internal(format!("undecodable range answer from shard {group}: {e}"))
    })
}

/// Merges the shards' answers to one range (each key lives on exactly one
/// shard, so each appears once): the order the request asks for (ties in
/// key order, as the machine sorts), `limit` (and the machine's
/// `max_range_keys`) applied after the merge, `count` summed, revision =
/// the largest of the shards'.
fn merge_ranges(
    req: &hl::RangeRequest,
    parts: Vec<RangeAnswer>,
    max_range_keys: usize,
) -> RangeAnswer {
    let mut kvs = Vec::new();
    let mut count: i64 = 0;
    let mut more = false;
    let mut revision = 0;
    for (result, rev) in parts {
        revision = revision.max(rev);
        match result {
            Ok(r) => {
                count = count.saturating_add(r.count);
                more |= r.more;
                kvs.extend(r.kvs);
            }
            Err(e) => return (Err(e), revision),
        }
    }
    let mut order = req.sort_order;
    if req.sort_target != hl::SortTarget::Key && order == hl::SortOrder::None {
        order = hl::SortOrder::Ascend;
    }
    let by = |a: &hl::KeyValue, b: &hl::KeyValue| match req.sort_target {
        hl::SortTarget::Key => a.key.cmp(&b.key),
        hl::SortTarget::Version => a.version.cmp(&b.version),
        hl::SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        hl::SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        hl::SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        hl::SortOrder::Descend => kvs.sort_by(|a, b| by(b, a).then_with(|| a.key.cmp(&b.key))),
        _ => kvs.sort_by(|a, b| by(a, b).then_with(|| a.key.cmp(&b.key))),
    }
    let cap = if req.limit > 0 {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .min(max_range_keys)
    } else {
        max_range_keys
    };
    if kvs.len() > cap {
        kvs.truncate(cap);
        more = true;
    }
    (Ok(hl::RangeResponse { kvs, more, count }), revision)
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
        let proposed = match &self.router {
            None => self.node.propose(&bytes).await,
            Some(r) => match shard_of(r, &cmd) {
                Ok(group) => self.node.propose_to(group, &bytes).await,
                Err(e) => {
                    self.node
                        .metrics()
                        .observe_request(name, started.elapsed(), false);
                    return Err(e);
                }
            },
        };
        let result = match proposed {
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
        observe_read(&self.node, linearizable, started, r.is_ok());
        r
    }

    async fn range(
        &self,
        linearizable: bool,
        req: hl::RangeRequest,
    ) -> Result<RangeAnswer, BackendError> {
        let Some(router) = self.router else {
            return self
                .read(linearizable, move |m| (m.range(&req), m.current_revision()))
                .await;
        };
        let started = Instant::now();
        let shards: Vec<GroupId> = router
            .shards_for_range(KeyRange::from_etcd(&req.key, &req.range_end))
            .collect();
        let query: bytes::Bytes = ha_core::codec::encode(&req).into();
        let r = match shards.as_slice() {
            [] => {
                let g = router.shard_for_key(&req.key);
                range_on(self.node.clone(), g, linearizable, query).await
            }
            [g] => range_on(self.node.clone(), *g, linearizable, query).await,
            _ if req.revision != 0 => Err(BackendError::CrossShard(
                "a range at a past revision must fall in one shard with --shards > 1 \
                 (revisions are per shard)"
                    .into(),
            )),
            _ => {
                let mut set = tokio::task::JoinSet::new();
                for (i, g) in shards.iter().enumerate() {
                    let node = self.node.clone();
                    let (g, q) = (*g, query.clone());
                    set.spawn(async move { (i, range_on(node, g, linearizable, q).await) });
                }
                let mut parts: Vec<Option<RangeAnswer>> = vec![None; shards.len()];
                let mut failed = None;
                while let Some(joined) = set.join_next().await {
                    match joined {
                        Ok((i, Ok(a))) => parts[i] = Some(a),
                        Ok((_, Err(e))) => {
                            failed.get_or_insert(e);
                        }
                        Err(e) => {
                            failed.get_or_insert(BackendError::Internal(format!(
                                "a shard read task failed: {e}"
                            )));
                        }
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok(merge_ranges(
                        &req,
                        parts.into_iter().flatten().collect(),
                        self.max_range_keys,
                    )),
                }
            }
        };
        observe_read(&self.node, linearizable, started, r.is_ok());
        r
    }

    fn refuses(&self, what: &str) -> Option<BackendError> {
        self.router.map(|_| {
            BackendError::Unsupported(format!(
                "{what}: not supported with --shards > 1 yet (this version serves KV \
                 put/get/delete/txn within one shard and multi-shard ranges)"
            ))
        })
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
