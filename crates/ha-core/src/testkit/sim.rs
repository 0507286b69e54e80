//! The deterministic cluster simulator and its runner.
//!
//! One thread runs N nodes of any [`Consensus`] implementation against a
//! virtual clock. Every source of nondeterminism — network latency, loss,
//! duplication, reordering, disk latency, fault schedule, client choices,
//! the protocols' own seeds — is drawn from one [`SimRng`] seeded by the
//! run's `u64` seed, and all collections iterate in a fixed order, so a seed
//! reproduces a run exactly, trace and all.
//!
//! # The driver emulation
//!
//! For each node the simulator plays the `Replica` driver exactly in the
//! order [`crate::consensus`] documents: it sends `Ready::messages` at once,
//! issues the snapshot/truncate/entries/hard-state/purge write to the node's
//! [`MemLogStore`] (unsynced) and completes it with a sync after the
//! configured persist latency; only then does it send
//! `Ready::persisted_messages`, install a staged snapshot, apply
//! `Ready::committed` to the node's [`MemKv`], answer reads that the applied
//! index allows, and call `advance`. A node takes its next Ready only after
//! the previous one completed.
//!
//! # Crash and restart
//!
//! A crash drops the protocol instance, the state machine and everything in
//! memory (pending proposals, staged snapshots, queued messages), and calls
//! [`MemLogStore::crash`], losing the write in flight. The node's latest
//! snapshot (built or installed; its data and meta) is modelled as durable.
//! A restart builds a fresh protocol from `store.recover(group)` — with the
//! durable snapshot's meta when it is newer than the store's — and a fresh
//! `MemKv` loaded from that snapshot (or empty); the protocol then hands out
//! the committed entries after it again, and the simulator re-applies them
//! (idempotent replay). Nothing is replayed behind the protocol's back.
//!
//! # Clients
//!
//! Clients talk to nodes directly (client links are not partitioned). A
//! client sends to the node it believes leads, follows `NotLeader` hints and
//! rotates through nodes when there is none or the node is down; refusals
//! are not recorded (nothing happened). An accepted request is recorded as
//! invoked; it completes when the proposing node applies the entry carrying
//! its [`TaggedCommand`] (or answers its read), and becomes *unknown* when
//! it times out, its node crashes, or its log index is taken by another
//! entry. Unknown operations may still take effect later; the
//! linearizability checker allows for that.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::consensus::{
    Consensus, MembershipChange, Outbound, ProposeError, ReadCtx, Ready, Recovered, Role,
    SnapshotSend, Status,
};
use crate::kv::{KvCommand, KvResponse, MemKv};
use crate::request::TaggedCommand;
use crate::state_machine::{Applied, StateMachine, VecChunks};
use crate::storage::{LogStore, LogWrite, MemLogStore};
use crate::testkit::config::{Fault, PartitionSpec, SimConfig};
use crate::testkit::history::{KvHistory, Operation, ShowBytes, random_kv_command, show_command};
use crate::testkit::linearizability::{self, CheckError, CheckStats, KvModel};
use crate::testkit::rng::SimRng;
use crate::types::{
    Entry, EntryPayload, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};

/// Builds protocol instances for the simulator.
///
/// Implemented for every `Fn(NodeId, &Membership, Recovered, u64) -> C`:
/// the node's id, the cluster's initial configuration, what the node found
/// in its store, and a seed for the protocol's randomness.
pub trait ProtocolFactory {
    /// The protocol built.
    type Protocol: Consensus;
    /// Builds the instance for node `id` (at first start and every restart).
    fn build(
        &self,
        id: NodeId,
        initial: &Membership,
        recovered: Recovered,
        seed: u64,
    ) -> Self::Protocol;
}

impl<C, F> ProtocolFactory for F
where
    C: Consensus,
    F: Fn(NodeId, &Membership, Recovered, u64) -> C,
{
    type Protocol = C;
    fn build(&self, id: NodeId, initial: &Membership, recovered: Recovered, seed: u64) -> C {
        self(id, initial, recovered, seed)
    }
}

/// One node as invariants see it.
pub struct NodeView<'a, C> {
    /// The node.
    pub id: NodeId,
    /// The running protocol, `None` while crashed.
    pub protocol: Option<&'a C>,
    /// The node's state machine.
    pub kv: &'a MemKv,
    /// Whether the node is paused.
    pub paused: bool,
}

/// Read-only view of the cluster handed to extra invariants.
pub struct ClusterView<'a, C> {
    /// Virtual time.
    pub now_ms: Millis,
    /// Every node, in id order.
    pub nodes: Vec<NodeView<'a, C>>,
}

/// An extra invariant a protocol crate registers: `Err(why)` fails the run.
pub type Invariant<C> = Box<dyn Fn(&ClusterView<'_, C>) -> Result<(), String>>;

/// Counters of a finished run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Virtual time at the end.
    pub end_ms: Millis,
    /// Events processed.
    pub events: u64,
    /// Client operations that completed.
    pub ops_completed: u64,
    /// Client operations recorded with an unknown outcome.
    pub ops_unknown: u64,
    /// Requests refused (not leader, node down) and retried.
    pub refusals: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages lost (random drop, partition, crashed receiver, limits).
    pub messages_dropped: u64,
    /// Messages delivered twice.
    pub messages_duplicated: u64,
    /// Crashes.
    pub crashes: u64,
    /// Pauses.
    pub pauses: u64,
    /// Partitions.
    pub partitions: u64,
    /// Snapshots transferred between nodes.
    pub snapshots_sent: u64,
    /// Distinct (term, leader) pairs seen.
    pub leaders_seen: u64,
    /// Highest index applied anywhere.
    pub applied_max: LogIndex,
    /// Linearizability check statistics (when checked).
    pub check: Option<CheckStats>,
    /// The trace, when recorded (see [`TraceConfig`](super::config::TraceConfig)).
    pub trace: Option<Vec<String>>,
}

/// What went wrong in a failed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A safety invariant broke.
    Invariant {
        /// Which one.
        name: String,
        /// What was seen.
        detail: String,
    },
    /// The client history is not linearizable (or could not be judged).
    Linearizability(CheckError),
    /// No operation completed after every fault was healed.
    NoProgress {
        /// When faults were healed.
        healed_at_ms: Millis,
    },
    /// The protocol broke the driver contract (e.g. asked to install a
    /// snapshot that was never staged).
    Contract {
        /// The node.
        node: NodeId,
        /// What it did.
        detail: String,
    },
    /// The run hit its event limit (a livelock or an oversized config).
    EventLimit {
        /// The limit.
        events: u64,
    },
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Invariant { name, detail } => {
                write!(f, "invariant `{name}` broke: {detail}")
            }
            FailureKind::Linearizability(e) => write!(f, "{e}"),
            FailureKind::NoProgress { healed_at_ms } => write!(
                f,
                "no client operation completed after every fault was healed at t={healed_at_ms}ms"
            ),
            FailureKind::Contract { node, detail } => {
                write!(
                    f,
                    "protocol on {node:?} broke the driver contract: {detail}"
                )
            }
            FailureKind::EventLimit { events } => write!(f, "event limit of {events} reached"),
        }
    }
}

/// A failed run: the seed that reproduces it, what broke, and the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed; `run(seed, same config)` reproduces the failure.
    pub seed: u64,
    /// Virtual time of the failure.
    pub at_ms: Millis,
    /// What broke.
    pub kind: FailureKind,
    /// Events and messages up to the failure, one line each (the last
    /// `lines_max`).
    pub trace: Vec<String>,
    /// Trace lines dropped from the front to respect the limit.
    pub trace_dropped: u64,
    /// Where the trace was written, if it was.
    pub trace_file: Option<PathBuf>,
}

/// Trace lines shown by `Display` for a failure.
pub const FAILURE_DISPLAY_TRACE_LINES: usize = 60;

/// Characters of each trace line shown by `Display` for a failure (the
/// trace file has them whole).
pub const FAILURE_DISPLAY_LINE_CHARS_MAX: usize = 400;

impl Failure {
    /// Writes the whole trace to `dir/ha-sim-seed-<seed>.trace` and returns
    /// the path.
    pub fn write_trace(&self, dir: &Path) -> io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("ha-sim-seed-{}.trace", self.seed));
        let mut text = format!("# seed {}: {}\n", self.seed, self.kind);
        if self.trace_dropped > 0 {
            text.push_str(&format!(
                "# ({} earlier lines dropped)\n",
                self.trace_dropped
            ));
        }
        for l in &self.trace {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation failed: seed {} at t={}ms",
            self.seed, self.at_ms
        )?;
        writeln!(f, "{}", self.kind)?;
        if let Some(p) = &self.trace_file {
            writeln!(f, "full trace: {}", p.display())?;
        } else {
            writeln!(
                f,
                "(set HA_SIM_TRACE_DIR to write the full trace to a file)"
            )?;
        }
        let skip = self.trace.len().saturating_sub(FAILURE_DISPLAY_TRACE_LINES);
        writeln!(f, "last {} trace lines:", self.trace.len() - skip)?;
        for l in &self.trace[skip..] {
            match l.char_indices().nth(FAILURE_DISPLAY_LINE_CHARS_MAX) {
                Some((cut, _)) => writeln!(f, "  {} …", &l[..cut])?,
                None => writeln!(f, "  {l}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// A protocol factory plus extra invariants: the object protocol crates
/// run their suites with.
///
/// ```ignore
/// let harness = Harness::new(|id, initial: &Membership, recovered, seed| {
///     MyProtocol::new(id, initial.clone(), recovered, seed)
/// })
/// .with_invariant("my-rule", |view| Ok(()));
/// harness.run_seeds(0..100, &SimConfig::default())?;
/// ```
pub struct Harness<F: ProtocolFactory> {
    factory: F,
    invariants: Vec<(String, Invariant<F::Protocol>)>,
}

/// Summary of many seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedsSummary {
    /// Seeds run.
    pub runs: u64,
    /// Client operations completed, over all runs.
    pub ops_completed: u64,
    /// Client operations with unknown outcome, over all runs.
    pub ops_unknown: u64,
    /// Crashes, over all runs.
    pub crashes: u64,
}

impl<F: ProtocolFactory> Harness<F> {
    /// A harness without extra invariants.
    pub fn new(factory: F) -> Self {
        Self {
            factory,
            invariants: Vec::new(),
        }
    }

    /// Adds an invariant checked after every step.
    pub fn with_invariant(
        mut self,
        name: &str,
        check: impl Fn(&ClusterView<'_, F::Protocol>) -> Result<(), String> + 'static,
    ) -> Self {
        self.invariants.push((name.to_owned(), Box::new(check)));
        self
    }

    /// Runs one seed. On failure the run is repeated with the trace on (the
    /// same seed gives the same run), and the trace is written to
    /// `config.trace.dir` or `$HA_SIM_TRACE_DIR` when either is set.
    pub fn run(&self, seed: u64, config: &SimConfig) -> Result<Report, Failure> {
        let first = Sim::new(self, seed, config, config.trace.always).run();
        let mut failure = match first {
            Ok(r) => return Ok(r),
            Err(f) if config.trace.always => f,
            Err(f) => {
                let again = Sim::new(self, seed, config, true).run();
                match again {
                    Err(f2) if f2.kind == f.kind && f2.at_ms == f.at_ms => f2,
                    Err(f2) => Failure {
                        kind: FailureKind::Invariant {
                            name: "determinism".into(),
                            detail: format!(
                                "seed {seed} failed differently when re-run with tracing: first `{}` \
                                 at {}ms, then `{}` at {}ms",
                                f.kind, f.at_ms, f2.kind, f2.at_ms
                            ),
                        },
                        ..f2
                    },
                    Ok(_) => Failure {
                        kind: FailureKind::Invariant {
                            name: "determinism".into(),
                            detail: format!(
                                "seed {seed} failed (`{}`) but passed when re-run with tracing",
                                f.kind
                            ),
                        },
                        ..f
                    },
                }
            }
        };
        let dir = config
            .trace
            .dir
            .clone()
            .or_else(|| std::env::var_os("HA_SIM_TRACE_DIR").map(PathBuf::from));
        if let Some(dir) = dir
            && let Ok(p) = failure.write_trace(&dir)
        {
            failure.trace_file = Some(p);
        }
        Err(failure)
    }

    /// Runs every seed in `seeds`, stopping at the first failure.
    pub fn run_seeds(
        &self,
        seeds: std::ops::Range<u64>,
        config: &SimConfig,
    ) -> Result<SeedsSummary, Failure> {
        let mut s = SeedsSummary::default();
        for seed in seeds {
            let r = self.run(seed, config)?;
            s.runs += 1;
            s.ops_completed += r.ops_completed;
            s.ops_unknown += r.ops_unknown;
            s.crashes += r.crashes;
        }
        Ok(s)
    }
}

/// Runs one seed of `config` with protocols from `factory`:
/// `run(seed, &config, &factory)`. See [`Harness::run`].
pub fn run<F: ProtocolFactory>(
    seed: u64,
    config: &SimConfig,
    factory: F,
) -> Result<Report, Failure> {
    Harness::new(factory).run(seed, config)
}

// ---------------------------------------------------------------------------

/// A write being persisted, and what to do once it is durable.
struct InFlight<M> {
    number: u64,
    write: LogWrite,
    snapshot: Option<(SnapshotMeta, Vec<Bytes>)>,
    persisted_messages: Vec<Outbound<M>>,
    committed: Vec<Entry>,
    reads: Vec<crate::consensus::ReadState>,
}

/// A log as the simulator last wrote it (or synced it), mirroring the
/// store, for the invariant checks.
#[derive(Clone, Debug, Default)]
struct ShadowLog {
    entries: BTreeMap<LogIndex, Entry>,
    snapshot_index: LogIndex,
}

impl ShadowLog {
    fn apply(&mut self, w: &LogWrite) {
        if let Some(meta) = &w.snapshot {
            self.entries = self.entries.split_off(&meta.last_log_id.index.next());
            self.snapshot_index = self.snapshot_index.max(meta.last_log_id.index);
        }
        if let Some(from) = w.truncate_from {
            self.entries.split_off(&from);
        }
        for e in &w.entries {
            self.entries.insert(e.index(), e.clone());
        }
        if let Some(to) = w.purge_to {
            self.entries = self.entries.split_off(&to.next());
            self.snapshot_index = self.snapshot_index.max(to);
        }
    }
}

struct PendingProp {
    client: usize,
    op: usize,
    index: LogIndex,
}

struct Node<C: Consensus> {
    id: NodeId,
    store: MemLogStore,
    proto: Option<C>,
    kv: MemKv,
    paused: bool,
    incarnation: u64,
    inflight: Option<InFlight<C::Message>>,
    /// A persist finished while paused; completes on resume.
    persist_done_while_paused: bool,
    held: VecDeque<(NodeId, Payload<C::Message>)>,
    staged: BTreeMap<LogId, (SnapshotMeta, Vec<Bytes>)>,
    /// The latest snapshot built or installed (modelled as durable).
    durable_snapshot: Option<(SnapshotMeta, Vec<Bytes>)>,
    /// A few earlier ones, so a transfer the protocol asked for before a
    /// newer snapshot was built still sends exactly what it named.
    older_snapshots: VecDeque<(SnapshotMeta, Vec<Bytes>)>,
    written: ShadowLog,
    durable: ShadowLog,
    props: BTreeMap<u64, PendingProp>,
    props_by_index: BTreeMap<LogIndex, u64>,
    reads: BTreeMap<ReadCtx, (usize, usize)>,
    ready_reads: Vec<(LogIndex, ReadCtx)>,
    applied_since_snapshot: u64,
    last_ready_number: u64,
}

impl<C: Consensus> Node<C> {
    fn up(&self) -> bool {
        self.proto.is_some()
    }
}

#[derive(Clone)]
enum Payload<M> {
    Msg(M),
    Snapshot {
        meta: SnapshotMeta,
        chunks: Vec<Bytes>,
        header: M,
    },
}

enum Ev<M> {
    /// A node's tick; stale after a crash (the incarnation changed).
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        payload: Payload<M>,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
    },
    ClientGo(usize),
    ClientTimeout {
        client: usize,
        op: usize,
    },
    Fault(Fault),
    Nemesis,
    EndChaos,
}

struct Client {
    leader_guess: usize,
    /// `(history index, node index, proposal seq or read ctx, is_read)`.
    waiting: Option<(usize, usize, u64, bool)>,
    retry: Option<KvCommand>,
    issued: u64,
    counter: u64,
    last_seen: BTreeMap<Bytes, Option<Bytes>>,
}

struct CommitInfo {
    entry: Entry,
    max_term_seen: Term,
}

struct Sim<'h, F: ProtocolFactory> {
    h: &'h Harness<F>,
    cfg: &'h SimConfig,
    seed: u64,
    rng: SimRng,
    now: Millis,
    seq: u64,
    events: BTreeMap<(Millis, u64), Ev<<F::Protocol as Consensus>::Message>>,
    nodes: Vec<Node<F::Protocol>>,
    initial: Membership,
    clients: Vec<Client>,
    history: KvHistory,
    blocked: BTreeSet<(NodeId, NodeId)>,
    in_flight: usize,
    prop_seq: u64,
    read_ctx: u64,
    committed: BTreeMap<LogIndex, CommitInfo>,
    committed_membership: (LogIndex, Membership),
    leaders: BTreeMap<Term, NodeId>,
    max_term_seen: Term,
    leader_checks: BTreeSet<usize>,
    chaos_end: Millis,
    healed: bool,
    report: Report,
    tracing: bool,
    trace: VecDeque<String>,
    trace_dropped: u64,
}

type StepResult = Result<(), FailureKind>;

impl<'h, F: ProtocolFactory> Sim<'h, F> {
    fn new(h: &'h Harness<F>, seed: u64, cfg: &'h SimConfig, tracing: bool) -> Self {
        let mut rng = SimRng::new(seed);
        let initial = Membership::new((1..=cfg.nodes).map(NodeId));
        let total = cfg.nodes + cfg.spare_nodes;
        let mut nodes = Vec::new();
        for i in 1..=total {
            let id = NodeId(i);
            let proto = h
                .factory
                .build(id, &initial, Recovered::default(), rng.next_u64());
            nodes.push(Node {
                id,
                store: MemLogStore::new(),
                proto: Some(proto),
                kv: MemKv::default(),
                paused: false,
                incarnation: 0,
                inflight: None,
                persist_done_while_paused: false,
                held: VecDeque::new(),
                staged: BTreeMap::new(),
                durable_snapshot: None,
                older_snapshots: VecDeque::new(),
                written: ShadowLog::default(),
                durable: ShadowLog::default(),
                props: BTreeMap::new(),
                props_by_index: BTreeMap::new(),
                reads: BTreeMap::new(),
                ready_reads: Vec::new(),
                applied_since_snapshot: 0,
                last_ready_number: 0,
            });
        }
        let clients = (0..cfg.clients.count)
            .map(|c| Client {
                leader_guess: (c % total.max(1)) as usize,
                waiting: None,
                retry: None,
                issued: 0,
                counter: 0,
                last_seen: BTreeMap::new(),
            })
            .collect();
        let mut sim = Sim {
            h,
            cfg,
            seed,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            committed_membership: (LogIndex(0), initial.clone()),
            initial,
            clients,
            history: Vec::new(),
            blocked: BTreeSet::new(),
            in_flight: 0,
            prop_seq: 0,
            read_ctx: 0,
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            max_term_seen: Term(0),
            leader_checks: BTreeSet::new(),
            chaos_end: cfg.duration_ms,
            healed: false,
            report: Report {
                seed,
                ..Report::default()
            },
            tracing,
            trace: VecDeque::new(),
            trace_dropped: 0,
        };
        for i in 0..sim.nodes.len() {
            let phase = sim.rng.below(cfg.tick_interval_ms.max(1));
            sim.push(
                phase,
                Ev::Tick {
                    node: i,
                    incarnation: 0,
                },
            );
        }
        for c in 0..sim.clients.len() {
            let t = sim.rng.below(20);
            sim.push(t, Ev::ClientGo(c));
        }
        for f in &cfg.schedule {
            sim.push(f.at_ms, Ev::Fault(f.fault.clone()));
        }
        if cfg.nemesis.enabled {
            let t = cfg.nemesis.interval.sample(&mut sim.rng);
            sim.push(t, Ev::Nemesis);
        }
        sim.push(cfg.duration_ms, Ev::EndChaos);
        sim
    }

    fn push(&mut self, at: Millis, ev: Ev<<F::Protocol as Consensus>::Message>) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    fn tr(&mut self, line: impl FnOnce() -> String) {
        if !self.tracing {
            return;
        }
        let l = format!("t={:06} {}", self.now, line());
        self.trace.push_back(l);
        if self.trace.len() > self.cfg.trace.lines_max {
            self.trace.pop_front();
            self.trace_dropped += 1;
        }
    }

    fn fail(&mut self, kind: FailureKind) -> Failure {
        self.tr(|| format!("FAILURE: {kind}"));
        Failure {
            seed: self.seed,
            at_ms: self.now,
            kind,
            trace: std::mem::take(&mut self.trace).into(),
            trace_dropped: self.trace_dropped,
            trace_file: None,
        }
    }

    fn idx(&self, id: NodeId) -> Option<usize> {
        let i = id.0.checked_sub(1)? as usize;
        (i < self.nodes.len()).then_some(i)
    }

    fn run(mut self) -> Result<Report, Failure> {
        let end = self.cfg.duration_ms + self.cfg.settle_ms;
        while let Some(((t, _), ev)) = self.events.pop_first() {
            if t > end {
                break;
            }
            self.now = t;
            self.report.events += 1;
            if self.report.events > self.cfg.events_max {
                let k = FailureKind::EventLimit {
                    events: self.cfg.events_max,
                };
                return Err(self.fail(k));
            }
            if let Err(k) = self.handle(ev) {
                return Err(self.fail(k));
            }
            if let Err(k) = self.after_step() {
                return Err(self.fail(k));
            }
        }
        self.now = end;
        self.finish()
    }

    fn finish(mut self) -> Result<Report, Failure> {
        // Operations still outstanding end with unknown outcome.
        for client in &mut self.clients {
            if client.waiting.take().is_some() {
                self.report.ops_unknown += 1;
            }
        }
        self.report.end_ms = self.now;
        if self.cfg.checks.committed_durable
            && let Err(k) = self.check_all_committed_durable()
        {
            return Err(self.fail(k));
        }
        if let Err(k) = self.check_convergence() {
            return Err(self.fail(k));
        }
        if self.cfg.checks.progress_after_heal && self.cfg.clients.count > 0 {
            let healed_at = self.chaos_end;
            let progressed = self
                .history
                .iter()
                .any(|o| o.invoked_at >= healed_at && o.completed_at.is_some());
            if !progressed {
                return Err(self.fail(FailureKind::NoProgress {
                    healed_at_ms: healed_at,
                }));
            }
        }
        if self.cfg.checks.linearizability {
            match linearizability::check(&KvModel, &self.history, &self.cfg.checker) {
                Ok(stats) => self.report.check = Some(stats),
                Err(e) => return Err(self.fail(FailureKind::Linearizability(e))),
            }
        }
        if self.tracing {
            self.report.trace = Some(std::mem::take(&mut self.trace).into());
        }
        Ok(self.report)
    }

    // ----- events --------------------------------------------------------

    fn handle(&mut self, ev: Ev<<F::Protocol as Consensus>::Message>) -> StepResult {
        match ev {
            Ev::Tick {
                node: i,
                incarnation,
            } => {
                let next = self.now + self.cfg.tick_interval_ms.max(1);
                if !self.nodes[i].up() || self.nodes[i].incarnation != incarnation {
                    return Ok(()); // a restart starts a new chain of ticks
                }
                self.push(
                    next,
                    Ev::Tick {
                        node: i,
                        incarnation,
                    },
                );
                if self.nodes[i].paused {
                    return Ok(());
                }
                let now = self.now;
                if let Some(p) = self.nodes[i].proto.as_mut() {
                    p.tick(now);
                }
                self.drive(i)?;
                self.observe(i)
            }
            Ev::Deliver { from, to, payload } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.deliver(from, to, payload)
            }
            Ev::PersistDone { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return Ok(()); // the node crashed meanwhile; the write is lost
                }
                if self.nodes[node].paused {
                    self.nodes[node].persist_done_while_paused = true;
                    return Ok(());
                }
                self.complete_persist(node)?;
                self.drive(node)?;
                self.observe(node)
            }
            Ev::ClientGo(c) => self.client_go(c),
            Ev::ClientTimeout { client, op } => {
                self.client_timeout(client, op);
                Ok(())
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Nemesis => self.nemesis(),
            Ev::EndChaos => {
                self.tr(|| "end of faults: heal, resume and restart everything".into());
                self.healed = true;
                self.fault(Fault::Heal)?;
                for i in 0..self.nodes.len() {
                    let id = self.nodes[i].id;
                    if self.nodes[i].paused {
                        self.fault(Fault::Resume(id))?;
                    }
                    if !self.nodes[i].up() {
                        self.fault(Fault::Restart(id))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn deliver(
        &mut self,
        from: NodeId,
        to: NodeId,
        payload: Payload<<F::Protocol as Consensus>::Message>,
    ) -> StepResult {
        let Some(i) = self.idx(to) else {
            self.report.messages_dropped += 1;
            return Ok(());
        };
        if self.blocked.contains(&(from, to)) {
            self.report.messages_dropped += 1;
            self.tr(|| format!("{from:?}→{to:?} lost to the partition"));
            return Ok(());
        }
        if !self.nodes[i].up() {
            self.report.messages_dropped += 1;
            self.tr(|| format!("{from:?}→{to:?} lost: {to:?} is down"));
            return Ok(());
        }
        if self.nodes[i].paused {
            if self.nodes[i].held.len() >= self.cfg.net.paused_inbox_max {
                self.report.messages_dropped += 1;
            } else {
                self.nodes[i].held.push_back((from, payload));
            }
            return Ok(());
        }
        self.step_node(i, from, payload)?;
        self.drive(i)?;
        self.observe(i)
    }

    fn step_node(
        &mut self,
        i: usize,
        from: NodeId,
        payload: Payload<<F::Protocol as Consensus>::Message>,
    ) -> StepResult {
        let to = self.nodes[i].id;
        match payload {
            Payload::Msg(m) => {
                self.tr(|| format!("{from:?}→{to:?} {m:?}"));
                if let Some(p) = self.nodes[i].proto.as_mut() {
                    p.step(from, m);
                }
            }
            Payload::Snapshot {
                meta,
                chunks,
                header,
            } => {
                self.tr(|| {
                    format!(
                        "{from:?}→{to:?} snapshot {:?} ({} chunks) staged, header {header:?}",
                        meta.last_log_id,
                        chunks.len()
                    )
                });
                self.nodes[i]
                    .staged
                    .insert(meta.last_log_id, (meta.clone(), chunks));
                // Bound staged snapshots per node: keep the newest few.
                while self.nodes[i].staged.len() > STAGED_SNAPSHOTS_MAX {
                    self.nodes[i].staged.pop_first();
                }
                if let Some(p) = self.nodes[i].proto.as_mut() {
                    p.step(from, header);
                }
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        from: NodeId,
        to: NodeId,
        payload: Payload<<F::Protocol as Consensus>::Message>,
    ) {
        self.report.messages_sent += 1;
        let copies = self.cfg.net.sample_copies(&mut self.rng);
        match copies {
            0 => {
                self.report.messages_dropped += 1;
                self.tr(|| format!("{from:?}→{to:?} dropped by the network"));
                return;
            }
            2 => self.report.messages_duplicated += 1,
            _ => {}
        }
        for _ in 0..copies {
            if self.in_flight >= self.cfg.net.in_flight_max {
                self.report.messages_dropped += 1;
                continue;
            }
            let delay = self.cfg.net.sample_delay(&mut self.rng);
            self.in_flight += 1;
            let at = self.now + delay;
            self.push(
                at,
                Ev::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    // ----- the driver ----------------------------------------------------

    /// Takes and carries out Readies while the node has one and no write is
    /// in flight.
    fn drive(&mut self, i: usize) -> StepResult {
        for _ in 0..READIES_PER_STEP_MAX {
            if self.nodes[i].paused || self.nodes[i].inflight.is_some() {
                return Ok(());
            }
            let rd = match self.nodes[i].proto.as_mut() {
                Some(p) if p.has_ready() => p.ready(),
                _ => return Ok(()),
            };
            self.start_ready(i, rd)?;
        }
        Ok(())
    }

    fn start_ready(
        &mut self,
        i: usize,
        rd: Ready<<F::Protocol as Consensus>::Message>,
    ) -> StepResult {
        let id = self.nodes[i].id;
        if rd.number <= self.nodes[i].last_ready_number {
            return Err(FailureKind::Contract {
                node: id,
                detail: format!(
                    "Ready number {} not above the previous {}",
                    rd.number, self.nodes[i].last_ready_number
                ),
            });
        }
        self.nodes[i].last_ready_number = rd.number;
        self.tr(|| {
            format!(
                "{id:?} ready #{}: {} msgs, {} entries{}{}{}, {} persisted msgs, {} committed, {} reads, {} snapshot sends{}",
                rd.number,
                rd.messages.len(),
                rd.entries.len(),
                rd.truncate_from.map(|t| format!(", truncate from {t:?}")).unwrap_or_default(),
                rd.hard_state.map(|h| format!(", {h:?}")).unwrap_or_default(),
                rd.snapshot.as_ref().map(|s| format!(", install snapshot {:?}", s.last_log_id)).unwrap_or_default(),
                rd.persisted_messages.len(),
                rd.committed.len(),
                rd.reads.len(),
                rd.send_snapshots.len(),
                rd.purge_to.map(|p| format!(", purge to {p:?}")).unwrap_or_default(),
            )
        });
        for m in rd.messages {
            self.send(id, m.to, Payload::Msg(m.msg));
        }
        for s in rd.send_snapshots {
            self.send_snapshot(i, s)?;
        }
        let snapshot = match &rd.snapshot {
            None => None,
            Some(meta) => match self.take_staged(i, meta) {
                Some(staged) => Some(staged),
                None => {
                    return Err(FailureKind::Contract {
                        node: id,
                        detail: format!(
                            "Ready asks to install snapshot {:?}, which was never staged",
                            meta.last_log_id
                        ),
                    });
                }
            },
        };
        let write = LogWrite {
            snapshot: rd.snapshot.clone(),
            truncate_from: rd.truncate_from,
            entries: rd.entries,
            hard_state: rd.hard_state,
            purge_to: rd.purge_to,
            sync: false,
        };
        if !write.is_empty() {
            if let Err(e) = self.nodes[i].store.write(self.cfg.group, write.clone()) {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("log store refused the write: {e}"),
                });
            }
            self.nodes[i].written.apply(&write);
            if self.cfg.checks.log_matching {
                let written: Vec<LogIndex> = write.entries.iter().map(|e| e.index()).collect();
                self.check_log_matching(i, &written)?;
            }
        }
        self.nodes[i].inflight = Some(InFlight {
            number: rd.number,
            write,
            snapshot,
            persisted_messages: rd.persisted_messages,
            committed: rd.committed,
            reads: rd.reads,
        });
        let latency = if self.nodes[i]
            .inflight
            .as_ref()
            .is_some_and(|f| f.write.is_empty())
        {
            0
        } else {
            self.cfg.disk.persist_latency.sample(&mut self.rng)
        };
        if latency == 0 {
            self.complete_persist(i)
        } else {
            let inc = self.nodes[i].incarnation;
            self.push(
                self.now + latency,
                Ev::PersistDone {
                    node: i,
                    incarnation: inc,
                },
            );
            Ok(())
        }
    }

    /// The staged snapshot to install for `meta`: the one with exactly that
    /// `LogId`, or else the oldest staged one covering more (a sender may
    /// stream a newer snapshot than the header names, as the contract
    /// allows; the state machine then skips the replayed entries it already
    /// covers).
    fn take_staged(&mut self, i: usize, meta: &SnapshotMeta) -> Option<(SnapshotMeta, Vec<Bytes>)> {
        let staged = &mut self.nodes[i].staged;
        if let Some(s) = staged.remove(&meta.last_log_id) {
            return Some(s);
        }
        let key = staged
            .keys()
            .find(|k| k.index >= meta.last_log_id.index)
            .copied()?;
        let s = staged.remove(&key);
        let id = self.nodes[i].id;
        self.tr(|| {
            format!(
                "{id:?} installs staged snapshot {key:?} for the requested {:?}",
                meta.last_log_id
            )
        });
        s
    }

    fn send_snapshot(
        &mut self,
        i: usize,
        s: SnapshotSend<<F::Protocol as Consensus>::Message>,
    ) -> StepResult {
        let id = self.nodes[i].id;
        let n = &self.nodes[i];
        let exact = n
            .durable_snapshot
            .iter()
            .chain(n.older_snapshots.iter())
            .find(|(m, _)| m.last_log_id == s.meta.last_log_id)
            .cloned();
        let Some((meta, chunks)) = exact.or_else(|| n.durable_snapshot.clone()) else {
            return Err(FailureKind::Contract {
                node: id,
                detail: format!(
                    "asked to send snapshot {:?} to {:?} but never built or installed one",
                    s.meta.last_log_id, s.to
                ),
            });
        };
        if meta.last_log_id.index < s.meta.last_log_id.index {
            return Err(FailureKind::Contract {
                node: id,
                detail: format!(
                    "asked to send snapshot {:?} but the latest is older ({:?})",
                    s.meta.last_log_id, meta.last_log_id
                ),
            });
        }
        self.report.snapshots_sent += 1;
        self.send(
            id,
            s.to,
            Payload::Snapshot {
                meta,
                chunks,
                header: s.header,
            },
        );
        Ok(())
    }

    fn complete_persist(&mut self, i: usize) -> StepResult {
        let Some(f) = self.nodes[i].inflight.take() else {
            return Ok(());
        };
        let id = self.nodes[i].id;
        let mut shrank = false;
        if !f.write.is_empty() {
            if let Err(e) = self.nodes[i].store.sync() {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("log store sync failed: {e}"),
                });
            }
            self.nodes[i].durable.apply(&f.write);
            shrank = f.write.truncate_from.is_some() || f.write.snapshot.is_some();
        }
        if let Some((meta, chunks)) = f.snapshot {
            let mut src = VecChunks::new(chunks.iter().cloned());
            if let Err(e) = self.nodes[i].kv.install_snapshot(&meta, &mut src) {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("staged snapshot does not install: {e}"),
                });
            }
            self.tr(|| format!("{id:?} installed snapshot {:?}", meta.last_log_id));
            self.keep_snapshot(i, meta, chunks);
            self.nodes[i].applied_since_snapshot = 0;
        }
        for m in f.persisted_messages {
            self.send(id, m.to, Payload::Msg(m.msg));
        }
        let mut applied_any = false;
        for e in f.committed {
            self.apply(i, e)?;
            applied_any = true;
        }
        for r in f.reads {
            self.nodes[i].ready_reads.push((r.index, r.ctx));
        }
        self.answer_reads(i);
        let applied = self.nodes[i].kv.last_applied().index;
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.advance(f.number);
            if applied_any {
                p.applied(applied);
            }
        }
        if let Some(every) = self.cfg.snapshot_every_entries
            && self.nodes[i].applied_since_snapshot >= every.max(1)
        {
            self.build_snapshot(i)?;
        }
        if shrank && self.cfg.checks.committed_durable {
            self.check_all_committed_durable()?;
        }
        Ok(())
    }

    fn keep_snapshot(&mut self, i: usize, meta: SnapshotMeta, chunks: Vec<Bytes>) {
        let n = &mut self.nodes[i];
        if let Some(old) = n.durable_snapshot.take() {
            n.older_snapshots.push_back(old);
            while n.older_snapshots.len() >= SNAPSHOTS_KEPT_MAX {
                n.older_snapshots.pop_front();
            }
        }
        n.durable_snapshot = Some((meta, chunks));
    }

    fn build_snapshot(&mut self, i: usize) -> StepResult {
        let id = self.nodes[i].id;
        let mut src = match self.nodes[i].kv.snapshot() {
            Ok(s) => s,
            Err(e) => {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("state machine snapshot failed: {e}"),
                });
            }
        };
        let meta = src.meta().clone();
        let mut chunks = Vec::new();
        loop {
            match src.next_chunk() {
                Ok(Some(c)) => chunks.push(c),
                Ok(None) => break,
                Err(e) => {
                    return Err(FailureKind::Contract {
                        node: id,
                        detail: format!("state machine snapshot failed: {e}"),
                    });
                }
            }
        }
        self.tr(|| format!("{id:?} built snapshot {:?}", meta.last_log_id));
        self.keep_snapshot(i, meta.clone(), chunks);
        self.nodes[i].applied_since_snapshot = 0;
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.snapshot_built(meta);
        }
        Ok(())
    }

    fn apply(&mut self, i: usize, e: Entry) -> StepResult {
        let id = self.nodes[i].id;
        let last = self.nodes[i].kv.last_applied().index;
        self.check_state_machine_safety(i, &e)?;
        if e.index() <= last {
            return Ok(()); // replay of what the state machine already has
        }
        if e.index() != last.next() {
            return Err(FailureKind::Invariant {
                name: "apply-in-order".into(),
                detail: format!(
                    "{id:?} was asked to apply {:?} right after {last:?}",
                    e.log_id
                ),
            });
        }
        let (tag, result) = match &e.payload {
            EntryPayload::Blank => (None, self.nodes[i].kv.apply(e.log_id, Applied::Blank)),
            EntryPayload::Membership(m) => {
                if e.index() > self.committed_membership.0 {
                    self.committed_membership = (e.index(), Membership::clone(m));
                }
                (
                    None,
                    self.nodes[i].kv.apply(e.log_id, Applied::Membership(m)),
                )
            }
            EntryPayload::Normal(bytes) => match TaggedCommand::decode(bytes) {
                Ok(tc) => {
                    let r = self.nodes[i].kv.apply(e.log_id, Applied::Command(&tc.data));
                    (Some(tc), r)
                }
                Err(_) => (
                    None,
                    self.nodes[i].kv.apply(e.log_id, Applied::Command(bytes)),
                ),
            },
        };
        let out = match result {
            Ok(out) => out,
            Err(err) => {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("state machine failed to apply {:?}: {err}", e.log_id),
                });
            }
        };
        self.nodes[i].applied_since_snapshot += 1;
        if e.index() > self.report.applied_max {
            self.report.applied_max = e.index();
        }
        // Match the entry to this node's pending proposal.
        let mine = tag.as_ref().filter(|t| t.proposer == id).map(|t| t.seq);
        if let Some(seq) = self.nodes[i].props_by_index.remove(&e.index())
            && Some(seq) != mine
        {
            // Another entry took the proposal's index: it was dropped,
            // as far as this driver can tell.
            if let Some(p) = self.nodes[i].props.remove(&seq) {
                self.tr(|| {
                    format!(
                        "{id:?} proposal for op #{} lost its index {:?}",
                        p.op, p.index
                    )
                });
                self.give_up(p.client, p.op);
            }
        }
        if let Some(seq) = mine
            && let Some(p) = self.nodes[i].props.remove(&seq)
        {
            self.nodes[i].props_by_index.remove(&p.index);
            match KvResponse::decode(&out) {
                Ok(resp) => self.complete_op(p.client, p.op, resp),
                Err(err) => {
                    return Err(FailureKind::Contract {
                        node: id,
                        detail: format!("state machine answer does not decode: {err}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn answer_reads(&mut self, i: usize) {
        let applied = self.nodes[i].kv.last_applied().index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.nodes[i].ready_reads)
            .into_iter()
            .partition(|(idx, _)| *idx <= applied);
        self.nodes[i].ready_reads = waiting;
        for (_, ctx) in ready {
            if let Some((client, op)) = self.nodes[i].reads.remove(&ctx) {
                let key = self.history[op].input.key().clone();
                let value = self.nodes[i].kv.get(&key).cloned();
                self.complete_op(client, op, KvResponse::Value(value));
            }
        }
    }

    // ----- clients -------------------------------------------------------

    fn client_go(&mut self, c: usize) -> StepResult {
        let end = self.cfg.duration_ms + self.cfg.settle_ms;
        if self.clients[c].waiting.is_some()
            || self.clients[c].issued >= self.cfg.clients.ops_max_per_client
            || self.now >= end
        {
            return Ok(());
        }
        let cmd = match self.clients[c].retry.take() {
            Some(cmd) => cmd,
            None => {
                self.clients[c].counter += 1;
                let tag = format!("c{c}-{}", self.clients[c].counter);
                let mut cmd = random_kv_command(&mut self.rng, self.cfg.clients.keys, &tag);
                if let KvCommand::Cas { key, expect, .. } = &mut cmd
                    && self.rng.below(4) != 0
                    && let Some(v) = self.clients[c].last_seen.get(key)
                {
                    *expect = v.clone();
                }
                cmd
            }
        };
        let n = self.clients[c].leader_guess % self.nodes.len().max(1);
        let node_id = self.nodes[n].id;
        if !self.nodes[n].up() || self.nodes[n].paused {
            self.refused(c, cmd, None);
            return Ok(());
        }
        let via_read_index = matches!(cmd, KvCommand::Get { .. })
            && self.rng.chance_ppm(self.cfg.clients.read_index_ppm);
        let op = self.history.len();
        let res = if via_read_index {
            self.read_ctx += 1;
            let ctx = self.read_ctx;
            let r = match self.nodes[n].proto.as_mut() {
                Some(p) => p.read_index(ctx),
                None => Err(ProposeError::NotLeader { leader: None }),
            };
            r.map(|()| {
                self.nodes[n].reads.insert(ctx, (c, op));
                (ctx, true, LogIndex(0))
            })
        } else {
            self.prop_seq += 1;
            let seq = self.prop_seq;
            let tc = TaggedCommand {
                proposer: node_id,
                seq,
                data: cmd.encode(),
            };
            let r = match self.nodes[n].proto.as_mut() {
                Some(p) => p.propose(tc.encode()),
                None => Err(ProposeError::NotLeader { leader: None }),
            };
            r.map(|log_id| {
                self.nodes[n].props.insert(
                    seq,
                    PendingProp {
                        client: c,
                        op,
                        index: log_id.index,
                    },
                );
                self.nodes[n].props_by_index.insert(log_id.index, seq);
                (seq, false, log_id.index)
            })
        };
        match res {
            Ok((token, is_read, index)) => {
                self.tr(|| {
                    format!(
                        "client {c} → {node_id:?} op #{op}: {}{}",
                        show_command(&cmd),
                        if is_read {
                            " (read_index)".to_owned()
                        } else {
                            format!(" at {index:?}")
                        }
                    )
                });
                self.history
                    .push(Operation::unknown(c as u64, self.now, cmd));
                self.clients[c].issued += 1;
                self.clients[c].waiting = Some((op, n, token, is_read));
                let at = self.now + self.cfg.clients.op_timeout_ms;
                self.push(at, Ev::ClientTimeout { client: c, op });
                self.drive(n)?;
                self.observe(n)
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.refused(c, cmd, leader);
                Ok(())
            }
            Err(e) => {
                self.tr(|| format!("client {c} refused by {node_id:?}: {e}"));
                self.refused(c, cmd, Some(node_id));
                Ok(())
            }
        }
    }

    fn refused(&mut self, c: usize, cmd: KvCommand, hint: Option<NodeId>) {
        self.report.refusals += 1;
        let next = match hint.and_then(|h| self.idx(h)) {
            Some(i) if i != self.clients[c].leader_guess => i,
            _ => (self.clients[c].leader_guess + 1) % self.nodes.len().max(1),
        };
        self.clients[c].leader_guess = next;
        self.clients[c].retry = Some(cmd);
        let at = self.now + self.cfg.clients.retry_backoff_ms.max(1);
        self.push(at, Ev::ClientGo(c));
    }

    fn complete_op(&mut self, c: usize, op: usize, resp: KvResponse) {
        let Some((waiting_op, ..)) = self.clients[c].waiting else {
            return;
        };
        if waiting_op != op {
            return; // answered after the client gave up on it
        }
        self.clients[c].waiting = None;
        let key = self.history[op].input.key().clone();
        let seen = match (&self.history[op].input, &resp) {
            (_, KvResponse::Value(v)) => Some(v.clone()),
            (KvCommand::Put { value, .. }, KvResponse::Written { .. }) => Some(Some(value.clone())),
            (KvCommand::Delete { .. }, KvResponse::Written { .. }) => Some(None),
            (KvCommand::Cas { value, .. }, KvResponse::Cas { ok: true, .. }) => {
                Some(Some(value.clone()))
            }
            (_, KvResponse::Cas { current, .. }) => Some(current.clone()),
            _ => None,
        };
        if let Some(v) = seen {
            self.clients[c].last_seen.insert(key, v);
        }
        self.tr(|| format!("client {c} op #{op} → {resp:?}"));
        self.history[op].completed_at = Some(self.now);
        self.history[op].output = Some(resp);
        self.report.ops_completed += 1;
        let think = self.cfg.clients.think.sample(&mut self.rng);
        self.push(self.now + think, Ev::ClientGo(c));
    }

    /// The client stops waiting for `op`: its outcome stays unknown.
    fn give_up(&mut self, c: usize, op: usize) {
        let Some((waiting_op, n, token, is_read)) = self.clients[c].waiting else {
            return;
        };
        if waiting_op != op {
            return;
        }
        self.clients[c].waiting = None;
        if is_read {
            self.nodes[n].reads.remove(&token);
        } else if let Some(p) = self.nodes[n].props.remove(&token) {
            self.nodes[n].props_by_index.remove(&p.index);
        }
        self.report.ops_unknown += 1;
        self.tr(|| format!("client {c} op #{op}: outcome unknown"));
        self.clients[c].leader_guess = (self.clients[c].leader_guess + 1) % self.nodes.len().max(1);
        let at = self.now + self.cfg.clients.retry_backoff_ms.max(1);
        self.push(at, Ev::ClientGo(c));
    }

    fn client_timeout(&mut self, c: usize, op: usize) {
        if matches!(self.clients[c].waiting, Some((w, ..)) if w == op) {
            self.tr(|| format!("client {c} op #{op} timed out"));
            self.give_up(c, op);
        }
    }

    // ----- faults --------------------------------------------------------

    fn leader(&self) -> Option<usize> {
        // The live leader with the highest term.
        let mut best: Option<(Term, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(p) = &n.proto {
                let s = p.status();
                if s.role == Role::Leader && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn faulty(&self) -> u64 {
        self.nodes.iter().filter(|n| !n.up() || n.paused).count() as u64
    }

    fn fault(&mut self, f: Fault) -> StepResult {
        self.tr(|| format!("fault: {f:?}"));
        match f {
            Fault::Partition(spec) => {
                self.partition(spec);
                Ok(())
            }
            Fault::Heal => {
                self.blocked.clear();
                Ok(())
            }
            Fault::Crash(id) => match self.idx(id) {
                Some(i) => self.crash(i),
                None => Ok(()),
            },
            Fault::CrashLeader => match self.leader() {
                Some(i) => self.crash(i),
                None => Ok(()),
            },
            Fault::Restart(id) => match self.idx(id) {
                Some(i) => self.restart(i),
                None => Ok(()),
            },
            Fault::Pause(id) => {
                if let Some(i) = self.idx(id)
                    && self.nodes[i].up()
                    && !self.nodes[i].paused
                {
                    self.nodes[i].paused = true;
                    self.report.pauses += 1;
                }
                Ok(())
            }
            Fault::PauseLeader => {
                if let Some(i) = self.leader()
                    && !self.nodes[i].paused
                {
                    self.nodes[i].paused = true;
                    self.report.pauses += 1;
                }
                Ok(())
            }
            Fault::Resume(id) => match self.idx(id) {
                Some(i) => self.resume(i),
                None => Ok(()),
            },
            Fault::ChangeMembership(change) => {
                if let Some(i) = self.leader() {
                    let r = self.nodes[i]
                        .proto
                        .as_mut()
                        .map(|p| p.change_membership(change));
                    let id = self.nodes[i].id;
                    self.tr(|| format!("{id:?} change_membership → {r:?}"));
                    self.drive(i)?;
                    self.observe(i)?;
                }
                Ok(())
            }
            Fault::TransferLeader(to) => {
                if let Some(i) = self.leader() {
                    let r = self.nodes[i].proto.as_mut().map(|p| p.transfer_leader(to));
                    let id = self.nodes[i].id;
                    self.tr(|| format!("{id:?} transfer_leader({to:?}) → {r:?}"));
                    self.drive(i)?;
                    self.observe(i)?;
                }
                Ok(())
            }
        }
    }

    fn partition(&mut self, spec: PartitionSpec) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        self.blocked.clear();
        self.report.partitions += 1;
        let both = |blocked: &mut BTreeSet<(NodeId, NodeId)>, a: &[NodeId], b: &[NodeId]| {
            for x in a {
                for y in b {
                    blocked.insert((*x, *y));
                    blocked.insert((*y, *x));
                }
            }
        };
        match spec {
            PartitionSpec::Split(side) => {
                let other: Vec<NodeId> =
                    ids.iter().copied().filter(|n| !side.contains(n)).collect();
                both(&mut self.blocked, &side, &other);
            }
            PartitionSpec::OneWay { from, to } => {
                for x in &from {
                    for y in &to {
                        if x != y {
                            self.blocked.insert((*x, *y));
                        }
                    }
                }
            }
            PartitionSpec::MajorityMinority => {
                let mut shuffled = ids.clone();
                self.rng.shuffle(&mut shuffled);
                let minority = shuffled.len() / 2;
                let (a, b) = shuffled.split_at(minority);
                both(&mut self.blocked, a, b);
            }
            PartitionSpec::Bridge => {
                let mut shuffled = ids.clone();
                self.rng.shuffle(&mut shuffled);
                if let Some((bridge, rest)) = shuffled.split_first() {
                    let half = rest.len() / 2;
                    let (a, b) = rest.split_at(half);
                    both(&mut self.blocked, a, b);
                    let bridge = *bridge;
                    self.tr(|| format!("bridge node {bridge:?}, sides {a:?} | {b:?}"));
                }
            }
            PartitionSpec::IsolateLeader => {
                if let Some(i) = self.leader() {
                    let l = self.nodes[i].id;
                    let others: Vec<NodeId> = ids.iter().copied().filter(|n| *n != l).collect();
                    both(&mut self.blocked, &[l], &others);
                }
            }
            PartitionSpec::Random => {
                let spec = match self.rng.below(5) {
                    0 => PartitionSpec::MajorityMinority,
                    1 => PartitionSpec::Bridge,
                    2 => PartitionSpec::IsolateLeader,
                    3 => {
                        let mut shuffled = ids.clone();
                        self.rng.shuffle(&mut shuffled);
                        let k = self.rng.range_inclusive(1, (ids.len() as u64).max(1)) as usize;
                        let split = self.rng.below(k as u64) as usize;
                        let (from, to) = shuffled[..k].split_at(split);
                        PartitionSpec::OneWay {
                            from: from.to_vec(),
                            to: to.to_vec(),
                        }
                    }
                    _ => {
                        let mut shuffled = ids.clone();
                        self.rng.shuffle(&mut shuffled);
                        let k = self.rng.below(ids.len() as u64) as usize;
                        PartitionSpec::Split(shuffled[..k].to_vec())
                    }
                };
                self.tr(|| format!("random partition: {spec:?}"));
                self.partition(spec);
                return;
            }
        }
        let cut: Vec<String> = self
            .blocked
            .iter()
            .map(|(a, b)| format!("{a:?}↛{b:?}"))
            .collect();
        self.tr(|| format!("links cut: {}", cut.join(" ")));
    }

    fn crash(&mut self, i: usize) -> StepResult {
        if !self.nodes[i].up() {
            return Ok(());
        }
        self.report.crashes += 1;
        let n = &mut self.nodes[i];
        n.store.crash();
        n.proto = None;
        n.kv = MemKv::default();
        n.paused = false;
        n.incarnation += 1;
        n.inflight = None;
        n.persist_done_while_paused = false;
        n.held.clear();
        n.staged.clear();
        n.written = n.durable.clone();
        n.ready_reads.clear();
        n.applied_since_snapshot = 0;
        let props: Vec<(usize, usize)> = std::mem::take(&mut n.props)
            .into_values()
            .map(|p| (p.client, p.op))
            .collect();
        n.props_by_index.clear();
        let reads: Vec<(usize, usize)> = std::mem::take(&mut n.reads).into_values().collect();
        for (c, op) in props.into_iter().chain(reads) {
            self.give_up(c, op);
        }
        if self.cfg.checks.committed_durable {
            self.check_all_committed_durable()?;
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> StepResult {
        if self.nodes[i].up() {
            return Ok(());
        }
        let id = self.nodes[i].id;
        let mut recovered = match self.nodes[i].store.recover(self.cfg.group) {
            Ok(r) => r,
            Err(e) => {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("log store recovery failed: {e}"),
                });
            }
        };
        let mut kv = MemKv::default();
        if let Some((meta, chunks)) = self.nodes[i].durable_snapshot.clone() {
            let newer = recovered
                .snapshot
                .as_ref()
                .is_none_or(|s| s.last_log_id.index < meta.last_log_id.index);
            if newer {
                recovered
                    .entries
                    .retain(|e| e.index() > meta.last_log_id.index);
                recovered.snapshot = Some(meta.clone());
            }
            let mut src = VecChunks::new(chunks);
            if let Err(e) = kv.install_snapshot(&meta, &mut src) {
                return Err(FailureKind::Contract {
                    node: id,
                    detail: format!("durable snapshot does not install on restart: {e}"),
                });
            }
        }
        self.tr(|| {
            format!(
                "{id:?} restarts: {:?}, snapshot {:?}, {} entries",
                recovered.hard_state,
                recovered.snapshot.as_ref().map(|s| s.last_log_id),
                recovered.entries.len()
            )
        });
        let seed = self.rng.next_u64();
        let proto = self.h.factory.build(id, &self.initial, recovered, seed);
        let n = &mut self.nodes[i];
        n.proto = Some(proto);
        n.kv = kv;
        n.paused = false;
        n.incarnation += 1;
        n.last_ready_number = 0;
        let at = self.now + self.cfg.tick_interval_ms.max(1);
        let incarnation = self.nodes[i].incarnation;
        self.push(
            at,
            Ev::Tick {
                node: i,
                incarnation,
            },
        );
        self.drive(i)?;
        self.observe(i)
    }

    fn resume(&mut self, i: usize) -> StepResult {
        if !self.nodes[i].paused {
            return Ok(());
        }
        self.nodes[i].paused = false;
        if std::mem::take(&mut self.nodes[i].persist_done_while_paused) {
            self.complete_persist(i)?;
        }
        let held: Vec<_> = std::mem::take(&mut self.nodes[i].held)
            .into_iter()
            .collect();
        for (from, payload) in held {
            if !self.nodes[i].up() {
                break;
            }
            self.step_node(i, from, payload)?;
            self.drive(i)?;
        }
        self.drive(i)?;
        self.observe(i)
    }

    fn nemesis(&mut self) -> StepResult {
        if self.now >= self.chaos_end || !self.cfg.nemesis.enabled {
            return Ok(());
        }
        let nm = &self.cfg.nemesis;
        let next = self.now + nm.interval.sample(&mut self.rng).max(1);
        self.push(next, Ev::Nemesis);
        let mut kinds = Vec::new();
        if nm.partitions {
            kinds.push(0);
        }
        if nm.crashes {
            kinds.push(1);
        }
        if nm.pauses {
            kinds.push(2);
        }
        if nm.membership_changes {
            kinds.push(3);
        }
        if nm.leader_transfers {
            kinds.push(4);
        }
        let Some(&kind) = self.rng.pick(&kinds) else {
            return Ok(());
        };
        let duration = nm.fault_duration.sample(&mut self.rng);
        let max_faulty = nm
            .max_faulty_nodes
            .unwrap_or(self.cfg.nodes.saturating_sub(1) / 2);
        match kind {
            0 => {
                self.fault(Fault::Partition(PartitionSpec::Random))?;
                self.push(self.now + duration, Ev::Fault(Fault::Heal));
            }
            1 | 2 => {
                if self.faulty() >= max_faulty {
                    return Ok(());
                }
                let candidates: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].up() && !self.nodes[i].paused)
                    .collect();
                let leader = self.leader();
                let target = if leader.is_some() && self.rng.below(2) == 0 {
                    leader
                } else {
                    self.rng.pick(&candidates).copied()
                };
                let Some(i) = target else { return Ok(()) };
                let id = self.nodes[i].id;
                if kind == 1 {
                    self.fault(Fault::Crash(id))?;
                    self.push(self.now + duration, Ev::Fault(Fault::Restart(id)));
                } else {
                    self.fault(Fault::Pause(id))?;
                    self.push(self.now + duration, Ev::Fault(Fault::Resume(id)));
                }
            }
            3 => {
                let Some(l) = self.leader() else {
                    return Ok(());
                };
                let Some(p) = &self.nodes[l].proto else {
                    return Ok(());
                };
                let m = p.status().membership;
                let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
                let outside: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|n| !m.all_nodes().contains(n))
                    .collect();
                let learners: Vec<NodeId> = m.learners.iter().copied().collect();
                let voters: Vec<NodeId> = m.voters.iter().copied().collect();
                let change = if let Some(&n) = self.rng.pick(&learners) {
                    MembershipChange::Promote(n)
                } else if let (Some(&n), true) = (self.rng.pick(&outside), self.rng.below(2) == 0) {
                    MembershipChange::AddLearner(n)
                } else if voters.len() as u64 > self.cfg.nodes {
                    match self.rng.pick(&voters) {
                        Some(&n) => MembershipChange::Remove(n),
                        None => return Ok(()),
                    }
                } else if let Some(&n) = self.rng.pick(&outside) {
                    MembershipChange::AddVoter(n)
                } else {
                    return Ok(());
                };
                self.fault(Fault::ChangeMembership(change))?;
            }
            _ => {
                let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
                if let Some(&to) = self.rng.pick(&ids) {
                    self.fault(Fault::TransferLeader(to))?;
                }
            }
        }
        Ok(())
    }

    // ----- invariants ----------------------------------------------------

    /// Looks at node `i`'s status after it took a step.
    fn observe(&mut self, i: usize) -> StepResult {
        let Some(p) = &self.nodes[i].proto else {
            return Ok(());
        };
        let s: Status = p.status();
        if s.term > self.max_term_seen {
            self.max_term_seen = s.term;
        }
        if s.role == Role::Leader {
            match self.leaders.get(&s.term) {
                Some(&other) if other != s.id && self.cfg.checks.one_leader_per_term => {
                    return Err(FailureKind::Invariant {
                        name: "one-leader-per-term".into(),
                        detail: format!("{:?} and {:?} both lead term {:?}", other, s.id, s.term),
                    });
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(s.term, s.id);
                    self.report.leaders_seen += 1;
                    let (id, term) = (s.id, s.term);
                    self.tr(|| format!("{id:?} leads term {term:?}"));
                    if self.cfg.checks.leader_completeness {
                        self.leader_checks.insert(i);
                    }
                }
            }
        }
        Ok(())
    }

    fn after_step(&mut self) -> StepResult {
        // Leader completeness, once the new leader's log is fully handed out.
        let pending: Vec<usize> = self.leader_checks.iter().copied().collect();
        for i in pending {
            let n = &self.nodes[i];
            let Some(p) = &n.proto else {
                self.leader_checks.remove(&i);
                continue;
            };
            if n.inflight.is_some() || p.has_ready() {
                continue;
            }
            self.leader_checks.remove(&i);
            let s = p.status();
            if s.role != Role::Leader {
                continue;
            }
            for (idx, info) in &self.committed {
                if s.term <= info.max_term_seen || *idx <= n.written.snapshot_index {
                    continue;
                }
                if n.durable_snapshot
                    .as_ref()
                    .is_some_and(|(m, _)| m.last_log_id.index >= *idx)
                {
                    continue;
                }
                let holds = n
                    .written
                    .entries
                    .get(idx)
                    .is_some_and(|e| e.payload == info.entry.payload);
                if !holds {
                    return Err(FailureKind::Invariant {
                        name: "leader-completeness".into(),
                        detail: format!(
                            "{:?} leads term {:?} without the entry committed at {idx:?} ({:?}), \
                             committed when the newest term seen was {:?}",
                            s.id, s.term, info.entry.log_id, info.max_term_seen
                        ),
                    });
                }
            }
        }
        if !self.h.invariants.is_empty() {
            let view = ClusterView {
                now_ms: self.now,
                nodes: self
                    .nodes
                    .iter()
                    .map(|n| NodeView {
                        id: n.id,
                        protocol: n.proto.as_ref(),
                        kv: &n.kv,
                        paused: n.paused,
                    })
                    .collect(),
            };
            for (name, check) in &self.h.invariants {
                if let Err(detail) = check(&view) {
                    return Err(FailureKind::Invariant {
                        name: name.clone(),
                        detail,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_state_machine_safety(&mut self, i: usize, e: &Entry) -> StepResult {
        let id = self.nodes[i].id;
        match self.committed.get(&e.index()) {
            Some(info) => {
                let same = if self.cfg.checks.log_matching {
                    info.entry == *e
                } else {
                    info.entry.payload == e.payload
                };
                if !same {
                    return Err(FailureKind::Invariant {
                        name: "state-machine-safety".into(),
                        detail: format!(
                            "{id:?} applies {} at index {:?}, where {} was applied before",
                            show_entry(e),
                            e.index(),
                            show_entry(&info.entry),
                        ),
                    });
                }
                Ok(())
            }
            None => {
                self.committed.insert(
                    e.index(),
                    CommitInfo {
                        entry: e.clone(),
                        max_term_seen: self.max_term_seen,
                    },
                );
                if self.cfg.checks.committed_durable {
                    self.check_committed_durable(e.index())?;
                }
                Ok(())
            }
        }
    }

    fn holds_durably(&self, n: &Node<F::Protocol>, idx: LogIndex, payload: &EntryPayload) -> bool {
        n.durable.snapshot_index >= idx
            || n.durable_snapshot
                .as_ref()
                .is_some_and(|(m, _)| m.last_log_id.index >= idx)
            || n.durable
                .entries
                .get(&idx)
                .is_some_and(|e| e.payload == *payload)
    }

    fn check_committed_durable(&self, idx: LogIndex) -> StepResult {
        let Some(info) = self.committed.get(&idx) else {
            return Ok(());
        };
        let holders: BTreeSet<NodeId> = self
            .nodes
            .iter()
            .filter(|n| self.holds_durably(n, idx, &info.entry.payload))
            .map(|n| n.id)
            .collect();
        let m = &self.committed_membership.1;
        if m.is_quorum(|n| !holders.contains(&n)) {
            return Err(FailureKind::Invariant {
                name: "committed-entry-durable".into(),
                detail: format!(
                    "committed entry {} is durable only on {holders:?}; voters {:?} lack it — a \
                     quorum that could lose it",
                    show_entry(&info.entry),
                    m.all_voters().difference(&holders).collect::<Vec<_>>()
                ),
            });
        }
        Ok(())
    }

    /// Replicas that applied up to the same index hold the same data
    /// (catches a snapshot that installs different state than the log
    /// would have produced).
    fn check_convergence(&self) -> StepResult {
        let mut by_index: BTreeMap<LogIndex, &Node<F::Protocol>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.up()) {
            let idx = n.kv.last_applied().index;
            match by_index.get(&idx) {
                None => {
                    by_index.insert(idx, n);
                }
                Some(first) => {
                    if !first.kv.iter().eq(n.kv.iter()) {
                        let diff = first
                            .kv
                            .iter()
                            .zip(n.kv.iter())
                            .find(|(a, b)| a != b)
                            .map(|((k, _), _)| {
                                format!(" (first difference at key {})", ShowBytes(k))
                            })
                            .unwrap_or_default();
                        return Err(FailureKind::Invariant {
                            name: "replica-convergence".into(),
                            detail: format!(
                                "{:?} and {:?} both applied up to {idx:?} but hold different data{diff}",
                                first.id, n.id
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn check_all_committed_durable(&self) -> StepResult {
        for idx in self.committed.keys() {
            self.check_committed_durable(*idx)?;
        }
        Ok(())
    }

    /// Log matching between node `i`'s log (as written) and every other's,
    /// checked incrementally. The property "two logs with an entry of the
    /// same `LogId` agree on it and on everything before it" follows by
    /// induction from the local rule "same `LogId` at `j` ⇒ equal entries,
    /// and equal `LogId`s at `j - 1` where both hold one". A write at index
    /// `x` changes only the rule's instances at `x` and `x + 1`, so only
    /// those are checked: O(entries written × nodes) per write.
    fn check_log_matching(&self, i: usize, written: &[LogIndex]) -> StepResult {
        let a = &self.nodes[i];
        for b in &self.nodes {
            if b.id == a.id {
                continue;
            }
            for &x in written {
                for j in [x, x.next()] {
                    let (Some(ea), Some(eb)) =
                        (a.written.entries.get(&j), b.written.entries.get(&j))
                    else {
                        continue;
                    };
                    if ea.log_id != eb.log_id {
                        continue;
                    }
                    let prev_differs = j.0 > 1
                        && match (
                            a.written.entries.get(&j.prev()),
                            b.written.entries.get(&j.prev()),
                        ) {
                            (Some(pa), Some(pb)) => pa.log_id != pb.log_id,
                            _ => false,
                        };
                    if ea != eb || prev_differs {
                        return Err(FailureKind::Invariant {
                            name: "log-matching".into(),
                            detail: format!(
                                "{:?} and {:?} both hold an entry {:?} but {}: {} vs {}",
                                a.id,
                                b.id,
                                ea.log_id,
                                if ea != eb {
                                    "with different payloads"
                                } else {
                                    "their logs differ just before it"
                                },
                                show_entry(
                                    a.written
                                        .entries
                                        .get(&j.prev())
                                        .filter(|_| prev_differs)
                                        .unwrap_or(ea)
                                ),
                                show_entry(
                                    b.written
                                        .entries
                                        .get(&j.prev())
                                        .filter(|_| prev_differs)
                                        .unwrap_or(eb)
                                ),
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// A log entry for humans: the client command it carries, decoded.
pub fn show_entry(e: &Entry) -> String {
    format!("{:?} {}", e.log_id, show_payload(&e.payload))
}

/// A payload for humans: tagged KV commands are decoded.
pub fn show_payload(p: &EntryPayload) -> String {
    match p {
        EntryPayload::Blank => "blank".to_owned(),
        EntryPayload::Membership(m) => format!("{m:?}"),
        EntryPayload::Normal(bytes) => match TaggedCommand::decode(bytes) {
            Ok(tc) => match KvCommand::decode(&tc.data) {
                Ok(cmd) => format!("[{:?}#{}] {}", tc.proposer, tc.seq, show_command(&cmd)),
                Err(_) => format!(
                    "[{:?}#{}] {} opaque bytes",
                    tc.proposer,
                    tc.seq,
                    tc.data.len()
                ),
            },
            Err(_) => format!("{} untagged bytes", bytes.len()),
        },
    }
}

/// Readies one node may carry out in one step without a write in flight
/// (a protocol that keeps producing empty Readies would otherwise spin).
pub const READIES_PER_STEP_MAX: usize = 64;

/// Snapshots kept per node (the latest and a few before it).
pub const SNAPSHOTS_KEPT_MAX: usize = 3;

/// Snapshots staged per node (the newest are kept).
pub const STAGED_SNAPSHOTS_MAX: usize = 4;
