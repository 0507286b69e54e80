//! openraft's side of the ha-raft comparison bench.
//!
//! The shape of openraft's `benchmarks/minimal` (and of ha-raft's
//! `benches/propose.rs`): `members` openraft nodes in one process, each with
//! an in-memory log store and a state machine that only counts what it
//! applied, joined by an in-process "network" that calls the target node's
//! [`Raft`] handle directly. `clients` tokio tasks each keep one empty
//! proposal outstanding on the leader (`Raft::client_write`), so a round of
//! `ops` proposals measures openraft's protocol plus its own runtime
//! machinery (its core task, replication tasks, channels), with no disk and
//! no serialization.
//!
//! Written against openraft's public API (0.9, `storage-v2`); nothing here
//! is taken from openraft's own benchmark code.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Config, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork,
    RaftNetworkFactory, RaftSnapshotBuilder, ServerState, Snapshot, SnapshotMeta, SnapshotPolicy,
    StorageError, StorageIOError, StoredMembership, Vote,
};

/// The payload of one proposal: empty, like ha-raft's `Bytes::new()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Proposal;

openraft::declare_raft_types!(
    /// openraft type configuration of the bench: empty proposals, `()`
    /// responses, `u64` node ids, in-memory snapshots.
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// An openraft node handle of this bench.
pub type Raft = openraft::Raft<TypeConfig>;
type NodeId = u64;
type Fault = StorageError<NodeId>;

/// Most proposals one round may commit (bounds a run's time and memory).
pub const MAX_OPS_PER_ROUND: u64 = 10_000_000;
/// Most concurrent clients a round may run (each is one tokio task).
pub const MAX_CLIENTS: u64 = 100_000;
/// Most members a bench cluster may have.
pub const MAX_MEMBERS: u64 = 9;
/// Length of a snapshot's data: the number of applied proposals, u64 LE.
pub const SNAPSHOT_LEN_BYTES: usize = 8;
/// How long a fresh cluster may take to elect a leader.
pub const ELECTION_WAIT_MS: u64 = 10_000;

/// Locks a mutex; a poisoned lock (a panicked holder) still holds
/// consistent data here because every critical section is a few plain
/// assignments, so the guard is taken over rather than panicking again.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------- log store

/// The in-memory log of one node: entries `first_index..` in a ring
/// buffer, plus the vote and the purge point.
#[derive(Debug, Default)]
struct LogInner {
    /// Index of `entries[0]` (meaningful when `entries` is non-empty).
    first_index: u64,
    entries: VecDeque<Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogInner {
    /// The stored entries whose indexes fall in `range`, cloned.
    fn range(&self, range: &impl RangeBounds<u64>) -> Vec<Entry<TypeConfig>> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let first = self.first_index;
        let end_stored = first + self.entries.len() as u64;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => first,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => end_stored,
        }
        .min(end_stored);
        if start >= end {
            return Vec::new();
        }
        self.entries
            .range((start - first) as usize..(end - first) as usize)
            .cloned()
            .collect()
    }
}

/// An in-memory [`RaftLogStorage`]; clones share one log (the clone is the
/// log reader openraft's replication tasks use).
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

impl MemLog {
    /// Number of entries currently held (after purges).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Fault> {
        Ok(lock(&self.inner).range(&range))
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Fault> {
        let g = lock(&self.inner);
        let last_log_id = g.entries.back().map(|e| e.log_id).or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Fault> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Fault> {
        Ok(lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Fault> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Fault> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Fault>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut g = lock(&self.inner);
            for e in entries {
                let expected = g.first_index + g.entries.len() as u64;
                if g.entries.is_empty() {
                    g.first_index = e.log_id.index;
                } else if e.log_id.index != expected {
                    // openraft truncates before it appends over a conflict,
                    // so a gap or overlap is a caller bug; refuse it.
                    return Err(StorageIOError::write_log_entry(
                        e.log_id,
                        AnyError::error(format!(
                            "append at index {} but the log ends before {expected}",
                            e.log_id.index
                        )),
                    )
                    .into());
                }
                g.entries.push_back(e);
            }
        }
        // In memory, so "flushed" as soon as it is stored.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Fault> {
        let mut g = lock(&self.inner);
        let keep = log_id.index.saturating_sub(g.first_index) as usize;
        g.entries.truncate(keep);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Fault> {
        let mut g = lock(&self.inner);
        let drop = (log_id.index + 1).saturating_sub(g.first_index) as usize;
        let drop = drop.min(g.entries.len());
        g.entries.drain(..drop);
        g.first_index = log_id.index + 1;
        g.last_purged = Some(log_id);
        Ok(())
    }
}

// ------------------------------------------------------------ state machine

/// What the state machine holds: how many proposals it applied, where it
/// is, and the latest snapshot.
#[derive(Debug, Default)]
struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    applied_proposals: u64,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// An in-memory [`RaftStateMachine`] that counts applied proposals; clones
/// share one state (the clone is the snapshot builder).
#[derive(Debug, Clone, Default)]
pub struct CountingSm {
    inner: Arc<Mutex<SmInner>>,
}

impl CountingSm {
    /// Proposals (normal entries) applied so far, snapshots included.
    pub fn applied_proposals(&self) -> u64 {
        lock(&self.inner).applied_proposals
    }

    /// Snapshots this state machine built.
    pub fn snapshots_built(&self) -> u64 {
        lock(&self.inner).snapshots_built
    }
}

/// Decodes a snapshot's data (the applied-proposal count).
pub fn decode_snapshot(data: &[u8]) -> Result<u64, AnyError> {
    let bytes: [u8; SNAPSHOT_LEN_BYTES] = data.try_into().map_err(|_| {
        AnyError::error(format!(
            "snapshot data is {} bytes, expected {SNAPSHOT_LEN_BYTES}",
            data.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

impl RaftSnapshotBuilder<TypeConfig> for CountingSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Fault> {
        let mut g = lock(&self.inner);
        let id = match g.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshots_built),
            None => format!("none-{}", g.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.membership.clone(),
            snapshot_id: id,
        };
        let data = g.applied_proposals.to_le_bytes().to_vec();
        g.snapshot = Some((meta.clone(), data.clone()));
        g.snapshots_built += 1;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for CountingSm {
    type SnapshotBuilder = CountingSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), Fault> {
        let g = lock(&self.inner);
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, Fault>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut g = lock(&self.inner);
        let mut responses = Vec::new();
        for e in entries {
            g.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Proposal) => g.applied_proposals += 1,
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            responses.push(());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Fault> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Fault> {
        let data = snapshot.into_inner();
        let applied = decode_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        let mut g = lock(&self.inner);
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.applied_proposals = applied;
        g.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Fault> {
        let g = lock(&self.inner);
        Ok(g.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

// ------------------------------------------------------------------ network

/// The in-process "network": a table of node handles; an RPC is a direct
/// call on the target's [`Raft`] handle. A node missing from the table is
/// unreachable (tests use that to cut a node off).
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<RwLock<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    /// Adds (or reconnects) a node.
    pub fn connect(&self, id: NodeId, raft: Raft) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, raft);
    }

    /// Removes a node: RPCs to it fail as unreachable until it is connected
    /// again.
    pub fn disconnect(&self, id: NodeId) -> Option<Raft> {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    fn get(&self, id: NodeId) -> Result<Raft, Unreachable> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::new(&AnyError::error(format!("node {id} disconnected"))))
    }
}

/// One node's connection to `target` through the [`Router`].
pub struct Conn {
    target: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        Conn {
            target,
            router: self.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Conn {
    /// Turns the target's own error into a remote error; a target that has
    /// shut down is reported as a network error so the sender retries.
    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            RaftError::Fatal(f) => RPCError::Network(NetworkError::new(&f)),
            other => RPCError::RemoteError(RemoteError::new(self.target, other)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let raft = self
            .router
            .get(self.target)
            .map_err(RPCError::Unreachable)?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self
            .router
            .get(self.target)
            .map_err(RPCError::Unreachable)?;
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let raft = self
            .router
            .get(self.target)
            .map_err(RPCError::Unreachable)?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

// ------------------------------------------------------------------ cluster

/// Errors of setting up or running a bench cluster.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A parameter is out of its documented range.
    #[error("bad parameter: {0}")]
    Param(String),
    /// openraft refused or failed something.
    #[error("openraft: {0}")]
    Raft(String),
}

fn raft_err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Raft(format!("{what}: {e}"))
}

/// openraft configuration of the bench: openraft's defaults (heartbeat
/// 50 ms, election timeout 150–300 ms, `max_payload_entries` 300, 1,000
/// entries kept behind a snapshot) except the snapshot interval, which is
/// set to ha-raft's bench (a snapshot every `snapshot_every` applied
/// entries) so both sides compact equally often.
pub fn bench_config(snapshot_every: u64, max_payload_entries: u64) -> Result<Config, BenchError> {
    Config {
        cluster_name: "openraft-compare".to_string(),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_payload_entries,
        ..Config::default()
    }
    .validate()
    .map_err(|e| BenchError::Param(e.to_string()))
}

/// One node of a bench cluster.
pub struct Node {
    /// The node's handle.
    pub raft: Raft,
    /// Its log store (shared with openraft).
    pub log: MemLog,
    /// Its state machine (shared with openraft).
    pub sm: CountingSm,
}

/// `members` openraft nodes in this process, initialized, with a leader.
pub struct Cluster {
    /// The nodes, by id `1..=members`.
    pub nodes: BTreeMap<NodeId, Node>,
    /// The network joining them.
    pub router: Router,
}

impl Cluster {
    /// Starts `members` nodes with `config`, initializes node 1 with all of
    /// them as voters and waits until a leader is elected.
    pub async fn start(members: u64, config: Config) -> Result<Self, BenchError> {
        if !(1..=MAX_MEMBERS).contains(&members) {
            return Err(BenchError::Param(format!(
                "members must be 1..={MAX_MEMBERS}, got {members}"
            )));
        }
        let config = Arc::new(config);
        let router = Router::default();
        let mut nodes = BTreeMap::new();
        for id in 1..=members {
            let log = MemLog::default();
            let sm = CountingSm::default();
            let raft = Raft::new(id, config.clone(), router.clone(), log.clone(), sm.clone())
                .await
                .map_err(|e| raft_err("start node", e))?;
            router.connect(id, raft.clone());
            nodes.insert(id, Node { raft, log, sm });
        }
        let voters: BTreeSet<NodeId> = (1..=members).collect();
        let first = nodes
            .get(&1)
            .ok_or_else(|| BenchError::Param("node 1 missing".into()))?;
        first
            .raft
            .initialize(voters)
            .await
            .map_err(|e| raft_err("initialize", e))?;
        let cluster = Self { nodes, router };
        cluster.leader().await?;
        Ok(cluster)
    }

    /// The current leader's handle (waits up to [`ELECTION_WAIT_MS`]).
    pub async fn leader(&self) -> Result<Raft, BenchError> {
        let first = self
            .nodes
            .values()
            .next()
            .ok_or_else(|| BenchError::Param("empty cluster".into()))?;
        let m = first
            .raft
            .wait(Some(Duration::from_millis(ELECTION_WAIT_MS)))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| raft_err("wait for a leader", e))?;
        let id = m
            .current_leader
            .ok_or_else(|| BenchError::Raft("no leader".into()))?;
        let leader = self
            .nodes
            .get(&id)
            .ok_or_else(|| BenchError::Raft(format!("leader {id} is not a member")))?;
        leader
            .raft
            .wait(Some(Duration::from_millis(ELECTION_WAIT_MS)))
            .state(ServerState::Leader, "the leader knows it leads")
            .await
            .map_err(|e| raft_err("wait for leadership", e))?;
        Ok(leader.raft.clone())
    }

    /// Commits `ops` empty proposals on the leader with `clients` of them
    /// outstanding at a time (each client proposes again as soon as its
    /// previous proposal is applied) and returns the wall time it took.
    pub async fn round(&self, clients: u64, ops: u64) -> Result<Duration, BenchError> {
        if !(1..=MAX_CLIENTS).contains(&clients) {
            return Err(BenchError::Param(format!(
                "clients must be 1..={MAX_CLIENTS}, got {clients}"
            )));
        }
        if !(1..=MAX_OPS_PER_ROUND).contains(&ops) {
            return Err(BenchError::Param(format!(
                "ops must be 1..={MAX_OPS_PER_ROUND}, got {ops}"
            )));
        }
        let leader = self.leader().await?;
        let issued = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients.min(ops) {
            let leader = leader.clone();
            let issued = issued.clone();
            tasks.push(tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::Relaxed) < ops {
                    leader
                        .client_write(Proposal)
                        .await
                        .map_err(|e| raft_err("client_write", e))?;
                }
                Ok::<(), BenchError>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| raft_err("client task", e))??;
        }
        Ok(start.elapsed())
    }

    /// Shuts every node down.
    pub async fn shutdown(self) -> Result<(), BenchError> {
        for node in self.nodes.values() {
            node.raft
                .shutdown()
                .await
                .map_err(|e| raft_err("shutdown", e))?;
        }
        Ok(())
    }
}

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/self/stat`
/// (fixed at 100 by the kernel ABI on x86-64).
pub const USER_HZ: u64 = 100;

/// CPU time this process (all threads) has used so far, user + system, in
/// milliseconds; `None` where `/proc/self/stat` is missing or unreadable.
pub fn process_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ms(&stat)
}

/// Parses user + system CPU time (milliseconds) out of a
/// `/proc/<pid>/stat` line.
pub fn parse_cpu_ms(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields after the last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000 / USER_HZ)
}

/// Measured rounds of one point.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Wall time of every measured round.
    pub rounds: Vec<Duration>,
    /// Proposals per round.
    pub ops_per_round: u64,
    /// Process CPU time (all threads) spent in the measured rounds, if
    /// the platform reports it.
    pub cpu_ms: Option<u64>,
}

impl Measurement {
    /// Proposals per second over all measured rounds (total / total).
    pub fn ops_per_s(&self) -> f64 {
        let total: Duration = self.rounds.iter().sum();
        if total.is_zero() {
            return 0.0;
        }
        (self.ops_per_round * self.rounds.len() as u64) as f64 / total.as_secs_f64()
    }

    /// Process CPU time per proposal in nanoseconds, if known.
    pub fn cpu_ns_per_op(&self) -> Option<f64> {
        let ops = self.ops_per_round * self.rounds.len() as u64;
        if ops == 0 {
            return None;
        }
        self.cpu_ms.map(|ms| ms as f64 * 1e6 / ops as f64)
    }

    /// Slowest and fastest round, in proposals per second.
    pub fn min_max_ops_per_s(&self) -> (f64, f64) {
        let per = |d: &Duration| self.ops_per_round as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);
        let min = self.rounds.iter().map(per).fold(f64::INFINITY, f64::min);
        let max = self.rounds.iter().map(per).fold(0.0, f64::max);
        (min, max)
    }
}

/// How long to run one point, like criterion's settings in ha-raft's bench
/// (warm up, then measure; whole rounds only).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Run rounds unmeasured for at least this long first.
    pub warmup_ms: u64,
    /// Then measure rounds until this much time has passed…
    pub measure_ms: u64,
    /// …but at least this many rounds…
    pub min_rounds: u32,
    /// …and at most this many.
    pub max_rounds: u32,
}

/// Runs one point on an already started cluster.
pub async fn measure(
    cluster: &Cluster,
    clients: u64,
    ops: u64,
    schedule: Schedule,
) -> Result<Measurement, BenchError> {
    if schedule.min_rounds == 0 || schedule.min_rounds > schedule.max_rounds {
        return Err(BenchError::Param(format!(
            "need 1 <= min_rounds <= max_rounds, got {} and {}",
            schedule.min_rounds, schedule.max_rounds
        )));
    }
    let warm = Instant::now();
    let mut warm_rounds = 0;
    while warm_rounds == 0
        || (warm.elapsed() < Duration::from_millis(schedule.warmup_ms)
            && warm_rounds < schedule.max_rounds)
    {
        cluster.round(clients, ops).await?;
        warm_rounds += 1;
    }
    let mut m = Measurement {
        rounds: Vec::new(),
        ops_per_round: ops,
        cpu_ms: None,
    };
    let cpu_start = process_cpu_ms();
    let measure_for = Duration::from_millis(schedule.measure_ms);
    let mut spent = Duration::ZERO;
    while (m.rounds.len() as u32) < schedule.max_rounds
        && (spent < measure_for || (m.rounds.len() as u32) < schedule.min_rounds)
    {
        let d = cluster.round(clients, ops).await?;
        spent += d;
        m.rounds.push(d);
    }
    m.cpu_ms = cpu_start
        .zip(process_cpu_ms())
        .map(|(a, b)| b.saturating_sub(a));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Schedule {
        Schedule {
            warmup_ms: 0,
            measure_ms: 0,
            min_rounds: 2,
            max_rounds: 2,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_proposal_is_applied_on_every_member() {
        let cluster = Cluster::start(3, bench_config(50_000, 300).unwrap())
            .await
            .unwrap();
        let m = measure(&cluster, 16, 500, quick()).await.unwrap();
        assert_eq!(m.rounds.len(), 2);
        assert!(m.ops_per_s() > 0.0);
        // Warm-up round + 2 measured rounds of 500.
        let want = 3 * 500;
        let leader = cluster.leader().await.unwrap();
        let leader_id = leader.metrics().borrow().id;
        assert_eq!(cluster.nodes[&leader_id].sm.applied_proposals(), want);
        for node in cluster.nodes.values() {
            let last = leader.metrics().borrow().last_applied.map(|l| l.index);
            node.raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(last, "follower caught up")
                .await
                .unwrap();
            assert_eq!(node.sm.applied_proposals(), want);
        }
        cluster.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_off_follower_catches_up_through_a_snapshot() {
        // Snapshot every 50 entries and keep none behind it, so a follower
        // that misses 300 entries can only catch up by installing one.
        let mut config = bench_config(50, 300).unwrap();
        config.max_in_snapshot_log_to_keep = 0;
        let cluster = Cluster::start(3, config).await.unwrap();
        let leader = cluster.leader().await.unwrap();
        let leader_id = leader.metrics().borrow().id;
        let lagger = (1..=3).find(|&id| id != leader_id).unwrap();
        let handle = cluster.router.disconnect(lagger).unwrap();
        cluster.round(4, 300).await.unwrap();
        // Snapshots are built and the log purged in the background.
        leader
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= 250),
                "leader purged",
            )
            .await
            .unwrap();
        assert!(cluster.nodes[&leader_id].log.len() < 300);
        cluster.router.connect(lagger, handle);
        let last = leader.metrics().borrow().last_applied.map(|l| l.index);
        let node = &cluster.nodes[&lagger];
        node.raft
            .wait(Some(Duration::from_secs(20)))
            .applied_index_at_least(last, "lagger caught up")
            .await
            .unwrap();
        assert_eq!(node.sm.applied_proposals(), 300);
        assert!(node.raft.metrics().borrow().snapshot.is_some());
        cluster.shutdown().await.unwrap();
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 3";
        assert_eq!(parse_cpu_ms(line), Some(2_800));
        assert_eq!(parse_cpu_ms("42 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ms("no parenthesis"), None);
        assert!(process_cpu_ms().is_some());
    }

    #[test]
    fn a_snapshot_of_the_wrong_length_is_refused() {
        assert_eq!(decode_snapshot(&7u64.to_le_bytes()).unwrap(), 7);
        assert!(decode_snapshot(&[1, 2, 3]).is_err());
        assert!(decode_snapshot(&[]).is_err());
    }

    #[test]
    fn log_ranges_clip_to_what_is_stored() {
        let mut inner = LogInner {
            first_index: 5,
            ..LogInner::default()
        };
        for i in 5..10 {
            inner.entries.push_back(Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Proposal),
            });
        }
        let idx = |v: Vec<Entry<TypeConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(inner.range(&(0..7))), vec![5, 6]);
        assert_eq!(idx(inner.range(&(8..=100))), vec![8, 9]);
        assert_eq!(idx(inner.range(&(..))), vec![5, 6, 7, 8, 9]);
        assert!(inner.range(&(10..20)).is_empty());
        assert!(inner.range(&(7..7)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_parameters_are_refused() {
        assert!(
            Cluster::start(0, bench_config(50_000, 300).unwrap())
                .await
                .is_err()
        );
        let cluster = Cluster::start(1, bench_config(50_000, 300).unwrap())
            .await
            .unwrap();
        assert!(cluster.round(0, 10).await.is_err());
        assert!(cluster.round(1, 0).await.is_err());
        assert!(cluster.round(1, MAX_OPS_PER_ROUND + 1).await.is_err());
        assert_eq!(cluster.nodes[&1].sm.applied_proposals(), 0);
        let bad = Schedule {
            min_rounds: 3,
            max_rounds: 2,
            ..quick()
        };
        assert!(measure(&cluster, 1, 1, bad).await.is_err());
        cluster.shutdown().await.unwrap();
    }
}
