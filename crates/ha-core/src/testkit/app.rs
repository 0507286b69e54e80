//! [`AppCluster`]: a step-driven simulated cluster of any protocol
//! replicating any [`StateMachine`], for testing *applications* (a lock
//! service, a coordination API) on a real protocol.
//!
//! [`Harness`](super::Harness) runs a protocol against the kit's KV
//! machine and KV clients and checks the protocol. An application test
//! needs its own state machine and its own actors (clients with their own
//! timers, a leader-side loop proposing commands, a resource checking
//! fencing tokens), so here the test owns the loop: it calls
//! [`AppCluster::run_until`] to let the cluster run to a virtual time,
//! reads what happened ([`AppCluster::take_outputs`]: entries applied on
//! every node with their responses, linearizable reads that became safe),
//! acts (propose, read, crash, restart, partition) and repeats.
//!
//! The node emulation follows the driver contract of
//! [`crate::consensus`] the way [`sim`](super::sim) does: `Ready::messages`
//! go out at once; the write goes to the node's [`MemLogStore`] unsynced and
//! is synced after the configured disk latency; only then are
//! `persisted_messages` sent, a staged snapshot installed, committed
//! entries applied and `advance` called. A crash drops the protocol, the
//! state machine and the unsynced write; the node's latest snapshot is
//! durable; a restart rebuilds the protocol from the store and the machine
//! from that snapshot, and the protocol hands the committed entries after
//! it out again (idempotent replay). The network drops, duplicates, delays
//! and reorders messages as [`NetConfig`] says, and partitions cut links.
//!
//! One check runs on every apply: every node applies the same entry at the
//! same index (state-machine safety); applications check their own
//! invariants on the outputs. Every random choice comes from one
//! [`SimRng`] seeded by the caller, and every collection iterates in a
//! fixed order, so a seed reproduces a run.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::consensus::{Consensus, Outbound, ProposeError, ReadCtx, Ready, Status};
use crate::request::TaggedCommand;
use crate::state_machine::{Applied, StateMachine, VecChunks};
use crate::storage::{LogStore, LogWrite, MemLogStore};
use crate::testkit::config::{DiskConfig, NetConfig};
use crate::testkit::rng::SimRng;
use crate::testkit::sim::ProtocolFactory;
use crate::types::{
    Entry, EntryPayload, GroupId, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta,
};

/// Shape of an [`AppCluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppClusterConfig {
    /// Voters of the cluster (ids `1..=nodes`).
    pub nodes: u64,
    /// The group id the log store is written under.
    pub group: GroupId,
    /// Period of every node's protocol tick.
    pub tick_interval_ms: Millis,
    /// The network between nodes.
    pub net: NetConfig,
    /// The disk of every node.
    pub disk: DiskConfig,
    /// A node builds a snapshot after applying this many entries since its
    /// last one (`None`: never; the log then grows for the whole run).
    pub snapshot_every_entries: Option<u64>,
    /// Most events one [`AppCluster::run_until`] call processes; reaching
    /// it is an error (a livelock, or a step far too long for the config).
    pub events_per_run_max: u64,
    /// Most outputs kept between two [`AppCluster::take_outputs`] calls;
    /// more is an error (the test forgot to drain them).
    pub outputs_max: usize,
}

impl Default for AppClusterConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            group: GroupId(1),
            tick_interval_ms: 10,
            net: NetConfig::default(),
            disk: DiskConfig::default(),
            snapshot_every_entries: Some(64),
            events_per_run_max: 1_000_000,
            outputs_max: 1_000_000,
        }
    }
}

/// Something that happened in the cluster, for the test to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppOutput {
    /// `node` applied the entry `log_id`.
    Applied {
        /// The node that applied it.
        node: NodeId,
        /// The entry.
        log_id: LogId,
        /// `(proposer, seq)` of a command proposed through
        /// [`AppCluster::propose`]; `None` for blanks and membership.
        tag: Option<(NodeId, u64)>,
        /// The command bytes (empty for blanks and membership).
        command: Bytes,
        /// What the state machine answered.
        response: Bytes,
    },
    /// A read requested with [`AppCluster::read_index`] on `node` is now
    /// linearizable: `node`'s state machine has applied far enough.
    ReadReady {
        /// The node.
        node: NodeId,
        /// The token given to `read_index`.
        ctx: ReadCtx,
    },
}

/// Why an [`AppCluster`] stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppClusterError {
    /// A protocol or state machine broke the driver contract.
    #[error("{node:?} broke the driver contract at t={at_ms}ms: {detail}")]
    Contract {
        /// The node.
        node: NodeId,
        /// Virtual time.
        at_ms: Millis,
        /// What happened.
        detail: String,
    },
    /// Two nodes applied different entries at one index.
    #[error("state-machine safety broke at t={at_ms}ms: {detail}")]
    Safety {
        /// Virtual time.
        at_ms: Millis,
        /// What was seen.
        detail: String,
    },
    /// [`AppClusterConfig::events_per_run_max`] or
    /// [`AppClusterConfig::outputs_max`] was reached.
    #[error("limit reached at t={at_ms}ms: {what}")]
    Limit {
        /// Virtual time.
        at_ms: Millis,
        /// Which limit.
        what: String,
    },
}

/// Called on every apply with the virtual time, the [`AppOutput::Applied`]
/// about to be queued and the node's state machine as the entry left it
/// (outputs are read later, when the machine may have moved on).
pub type ApplyHook<S> = Box<dyn FnMut(Millis, &AppOutput, &S)>;

/// Snapshot data and its meta.
type SnapshotData = (SnapshotMeta, Vec<Bytes>);

enum Payload<M> {
    Msg(M),
    Snapshot { data: SnapshotData, header: M },
}

impl<M: Clone> Clone for Payload<M> {
    fn clone(&self) -> Self {
        match self {
            Payload::Msg(m) => Payload::Msg(m.clone()),
            Payload::Snapshot { data, header } => Payload::Snapshot {
                data: data.clone(),
                header: header.clone(),
            },
        }
    }
}

enum Ev<M> {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver {
        from: NodeId,
        to: usize,
        payload: Payload<M>,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
    },
}

/// A Ready's work that waits for its write to be durable.
struct Pending<M> {
    number: u64,
    write_empty: bool,
    snapshot: Option<SnapshotData>,
    persisted_messages: Vec<Outbound<M>>,
    committed: Vec<Entry>,
    reads: Vec<crate::consensus::ReadState>,
}

struct AppNode<C: Consensus, S> {
    id: NodeId,
    store: MemLogStore,
    proto: Option<C>,
    machine: Option<S>,
    incarnation: u64,
    pending: Option<Pending<C::Message>>,
    staged: BTreeMap<LogId, SnapshotData>,
    durable_snapshot: Option<SnapshotData>,
    waiting_reads: Vec<(LogIndex, ReadCtx)>,
    applied_since_snapshot: u64,
}

/// Snapshots staged per node (the newest are kept).
pub const APP_STAGED_SNAPSHOTS_MAX: usize = 4;

/// Readies one node carries out in one step without a write in flight.
pub const APP_READIES_PER_STEP_MAX: usize = 64;

/// A simulated cluster of protocol `F::Protocol` replicating state machines
/// `S`, driven step by step by the test. See the [module docs](self).
pub struct AppCluster<F: ProtocolFactory, S: StateMachine> {
    factory: F,
    make_machine: Box<dyn Fn(NodeId) -> S>,
    cfg: AppClusterConfig,
    initial: Membership,
    rng: SimRng,
    now: Millis,
    seq: u64,
    events: BTreeMap<(Millis, u64), Ev<<F::Protocol as Consensus>::Message>>,
    nodes: Vec<AppNode<F::Protocol, S>>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    prop_seq: u64,
    /// What was applied at each index first (payload), for the safety check.
    applied_at: BTreeMap<LogIndex, EntryPayload>,
    outputs: Vec<AppOutput>,
    /// A driver failure met while handling an input call, reported by the
    /// next `run_until`.
    deferred_error: Option<AppClusterError>,
    apply_hook: Option<ApplyHook<S>>,
    crashes: u64,
}

impl<F: ProtocolFactory, S: StateMachine> AppCluster<F, S> {
    /// A cluster of `cfg.nodes` fresh nodes; `make_machine` builds an empty
    /// state machine (at start and on every restart, before the durable
    /// snapshot is installed). Everything random follows from `seed`.
    pub fn new(
        factory: F,
        make_machine: impl Fn(NodeId) -> S + 'static,
        cfg: AppClusterConfig,
        seed: u64,
    ) -> Self {
        let mut rng = SimRng::new(seed);
        let initial = Membership::new((1..=cfg.nodes).map(NodeId));
        let mut nodes = Vec::new();
        for i in 1..=cfg.nodes {
            let id = NodeId(i);
            let proto = factory.build(id, &initial, Default::default(), rng.next_u64());
            nodes.push(AppNode {
                id,
                store: MemLogStore::new(),
                proto: Some(proto),
                machine: Some(make_machine(id)),
                incarnation: 0,
                pending: None,
                staged: BTreeMap::new(),
                durable_snapshot: None,
                waiting_reads: Vec::new(),
                applied_since_snapshot: 0,
            });
        }
        let mut c = AppCluster {
            factory,
            make_machine: Box::new(make_machine),
            cfg,
            initial,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            blocked: BTreeSet::new(),
            prop_seq: 0,
            applied_at: BTreeMap::new(),
            outputs: Vec::new(),
            deferred_error: None,
            apply_hook: None,
            crashes: 0,
        };
        for i in 0..c.nodes.len() {
            let phase = c.rng.below(c.cfg.tick_interval_ms.max(1));
            c.push(
                phase,
                Ev::Tick {
                    node: i,
                    incarnation: 0,
                },
            );
        }
        c
    }

    /// Installs the hook called on every apply (see [`ApplyHook`]).
    pub fn set_apply_hook(&mut self, hook: ApplyHook<S>) {
        self.apply_hook = Some(hook);
    }

    /// Virtual time.
    pub fn now_ms(&self) -> Millis {
        self.now
    }

    /// Every node id, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    fn idx(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0.checked_sub(1)?).ok()?;
        (i < self.nodes.len()).then_some(i)
    }

    fn push(&mut self, at: Millis, ev: Ev<<F::Protocol as Consensus>::Message>) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    fn contract(&self, node: NodeId, detail: String) -> AppClusterError {
        AppClusterError::Contract {
            node,
            at_ms: self.now,
            detail,
        }
    }

    /// Whether `node` is running (not crashed).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.idx(node)
            .is_some_and(|i| self.nodes[i].proto.is_some())
    }

    /// `node`'s protocol status (`None` while crashed).
    pub fn status(&self, node: NodeId) -> Option<Status> {
        let i = self.idx(node)?;
        self.nodes[i].proto.as_ref().map(|p| p.status())
    }

    /// `node`'s state machine (`None` while crashed).
    pub fn machine(&self, node: NodeId) -> Option<&S> {
        let i = self.idx(node)?;
        self.nodes[i].machine.as_ref()
    }

    /// `node`'s state machine, mutably, for calls that take `&mut` without
    /// changing the replicated state (building a snapshot to compare
    /// replicas). Changing the state through it breaks the run.
    pub fn machine_mut(&mut self, node: NodeId) -> Option<&mut S> {
        let i = self.idx(node)?;
        self.nodes[i].machine.as_mut()
    }

    /// The running node that claims leadership with the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.proto.as_ref().map(|p| p.status()))
            .filter(|s| s.role == crate::consensus::Role::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.id)
    }

    /// Outputs since the last call, in the order they happened.
    pub fn take_outputs(&mut self) -> Vec<AppOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// Proposes `data` on `node`, tagged `(node, seq)`; returns the seq and
    /// the log id the protocol gave it. The outcome shows up as an
    /// [`AppOutput::Applied`] with that tag (possibly never: the entry may
    /// be dropped).
    pub fn propose(&mut self, node: NodeId, data: Bytes) -> Result<(u64, LogId), ProposeError> {
        let Some(i) = self.idx(node) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        self.prop_seq += 1;
        let seq = self.prop_seq;
        let tc = TaggedCommand {
            proposer: node,
            seq,
            data,
        };
        let r = match self.nodes[i].proto.as_mut() {
            Some(p) => p.propose(tc.encode()),
            None => Err(ProposeError::NotLeader { leader: None }),
        };
        let log_id = r?;
        self.drive_now(i);
        Ok((seq, log_id))
    }

    /// Asks `node` for a linearizable read; [`AppOutput::ReadReady`] with
    /// `ctx` follows once it is safe (possibly never).
    pub fn read_index(&mut self, node: NodeId, ctx: ReadCtx) -> Result<(), ProposeError> {
        let Some(i) = self.idx(node) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        match self.nodes[i].proto.as_mut() {
            Some(p) => p.read_index(ctx)?,
            None => return Err(ProposeError::NotLeader { leader: None }),
        }
        self.drive_now(i);
        Ok(())
    }

    /// Drives a node right after an input, recording a failure as an error
    /// output for the next `run_until` (inputs return the protocol's
    /// answer, not driver failures).
    fn drive_now(&mut self, i: usize) {
        if let Err(e) = self.drive(i) {
            self.deferred_error = Some(e);
        }
    }

    /// Power-fails `node`: protocol, state machine, staged snapshots and the
    /// write in flight are lost; its latest snapshot and synced log stay.
    pub fn crash(&mut self, node: NodeId) {
        let Some(i) = self.idx(node) else { return };
        if self.nodes[i].proto.is_none() {
            return;
        }
        self.crashes += 1;
        let n = &mut self.nodes[i];
        n.store.crash();
        n.proto = None;
        n.machine = None;
        n.incarnation += 1;
        n.pending = None;
        n.staged.clear();
        n.waiting_reads.clear();
        n.applied_since_snapshot = 0;
    }

    /// Starts a crashed `node` from its synced log and durable snapshot.
    pub fn restart(&mut self, node: NodeId) -> Result<(), AppClusterError> {
        let Some(i) = self.idx(node) else {
            return Ok(());
        };
        if self.nodes[i].proto.is_some() {
            return Ok(());
        }
        let mut recovered = self.nodes[i]
            .store
            .recover(self.cfg.group)
            .map_err(|e| self.contract(node, format!("log store recovery failed: {e}")))?;
        let mut machine = (self.make_machine)(node);
        if let Some((meta, chunks)) = self.nodes[i].durable_snapshot.clone() {
            if recovered
                .snapshot
                .as_ref()
                .is_none_or(|s| s.last_log_id.index < meta.last_log_id.index)
            {
                recovered
                    .entries
                    .retain(|e| e.index() > meta.last_log_id.index);
                recovered.snapshot = Some(meta.clone());
            }
            machine
                .install_snapshot(&meta, &mut VecChunks::new(chunks))
                .map_err(|e| self.contract(node, format!("durable snapshot: {e}")))?;
        }
        let seed = self.rng.next_u64();
        let proto = self.factory.build(node, &self.initial, recovered, seed);
        let n = &mut self.nodes[i];
        n.proto = Some(proto);
        n.machine = Some(machine);
        n.incarnation += 1;
        let incarnation = n.incarnation;
        let at = self.now + self.cfg.tick_interval_ms.max(1);
        self.push(
            at,
            Ev::Tick {
                node: i,
                incarnation,
            },
        );
        self.drive(i)
    }

    /// Cuts every link between `side` and the other nodes (both ways),
    /// replacing any earlier cut.
    pub fn partition(&mut self, side: &[NodeId]) {
        self.blocked.clear();
        for a in self.node_ids() {
            for b in self.node_ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Sets the message loss rate (parts per million) from now on.
    pub fn set_drop_ppm(&mut self, ppm: u32) {
        self.cfg.net.drop_ppm = ppm;
    }

    /// Processes every event up to virtual time `until_ms` (inclusive) and
    /// moves the clock there.
    pub fn run_until(&mut self, until_ms: Millis) -> Result<(), AppClusterError> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        let mut processed = 0u64;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until_ms {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            processed += 1;
            if processed > self.cfg.events_per_run_max {
                return Err(AppClusterError::Limit {
                    at_ms: self.now,
                    what: format!("{} events in one run_until", self.cfg.events_per_run_max),
                });
            }
            self.handle(ev)?;
            if let Some(e) = self.deferred_error.take() {
                return Err(e);
            }
            if self.outputs.len() > self.cfg.outputs_max {
                return Err(AppClusterError::Limit {
                    at_ms: self.now,
                    what: format!("{} outputs not taken", self.cfg.outputs_max),
                });
            }
        }
        self.now = self.now.max(until_ms);
        Ok(())
    }

    fn handle(
        &mut self,
        ev: Ev<<F::Protocol as Consensus>::Message>,
    ) -> Result<(), AppClusterError> {
        match ev {
            Ev::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].proto.is_none() {
                    return Ok(());
                }
                let next = self.now + self.cfg.tick_interval_ms.max(1);
                self.push(next, Ev::Tick { node, incarnation });
                let now = self.now;
                if let Some(p) = self.nodes[node].proto.as_mut() {
                    p.tick(now);
                }
                self.drive(node)
            }
            Ev::Deliver { from, to, payload } => {
                let to_id = self.nodes[to].id;
                if self.blocked.contains(&(from, to_id)) {
                    return Ok(());
                }
                let n = &mut self.nodes[to];
                let Some(p) = n.proto.as_mut() else {
                    return Ok(()); // lost: the receiver is down
                };
                match payload {
                    Payload::Msg(m) => p.step(from, m),
                    Payload::Snapshot { data, header } => {
                        n.staged.insert(data.0.last_log_id, data);
                        while n.staged.len() > APP_STAGED_SNAPSHOTS_MAX {
                            n.staged.pop_first();
                        }
                        p.step(from, header);
                    }
                }
                self.drive(to)
            }
            Ev::PersistDone { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return Ok(()); // crashed meanwhile: the write is lost
                }
                self.finish_ready(node)?;
                self.drive(node)
            }
        }
    }

    fn send(
        &mut self,
        from: NodeId,
        to: NodeId,
        payload: Payload<<F::Protocol as Consensus>::Message>,
    ) {
        let Some(to) = self.idx(to) else { return };
        for _ in 0..self.cfg.net.sample_copies(&mut self.rng) {
            let at = self.now + self.cfg.net.sample_delay(&mut self.rng);
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

    /// Takes and starts Readies while node `i` has one and no write waits.
    fn drive(&mut self, i: usize) -> Result<(), AppClusterError> {
        for _ in 0..APP_READIES_PER_STEP_MAX {
            if self.nodes[i].pending.is_some() {
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
    ) -> Result<(), AppClusterError> {
        let id = self.nodes[i].id;
        for m in rd.messages {
            self.send(id, m.to, Payload::Msg(m.msg));
        }
        for s in rd.send_snapshots {
            let Some(data) = self.nodes[i].durable_snapshot.clone() else {
                return Err(self.contract(id, "asked to send a snapshot it never built".into()));
            };
            if data.0.last_log_id.index < s.meta.last_log_id.index {
                return Err(self.contract(
                    id,
                    format!(
                        "asked to send snapshot {:?}, the latest is {:?}",
                        s.meta.last_log_id, data.0.last_log_id
                    ),
                ));
            }
            self.send(
                id,
                s.to,
                Payload::Snapshot {
                    data,
                    header: s.header,
                },
            );
        }
        let snapshot = match &rd.snapshot {
            None => None,
            Some(meta) => {
                let staged = &mut self.nodes[i].staged;
                let key = staged
                    .keys()
                    .find(|k| k.index >= meta.last_log_id.index)
                    .copied();
                match key.and_then(|k| staged.remove(&k)) {
                    Some(s) => Some(s),
                    None => {
                        return Err(self.contract(
                            id,
                            format!("install of unstaged snapshot {:?}", meta.last_log_id),
                        ));
                    }
                }
            }
        };
        let write = LogWrite {
            snapshot: rd.snapshot,
            truncate_from: rd.truncate_from,
            entries: rd.entries,
            hard_state: rd.hard_state,
            purge_to: rd.purge_to,
            sync: false,
        };
        let write_empty = write.is_empty();
        if !write_empty {
            self.nodes[i]
                .store
                .write(self.cfg.group, write)
                .map_err(|e| self.contract(id, format!("log store refused a write: {e}")))?;
        }
        self.nodes[i].pending = Some(Pending {
            number: rd.number,
            write_empty,
            snapshot,
            persisted_messages: rd.persisted_messages,
            committed: rd.committed,
            reads: rd.reads,
        });
        let latency = if write_empty {
            0
        } else {
            self.cfg.disk.persist_latency.sample(&mut self.rng)
        };
        if latency == 0 {
            self.finish_ready(i)
        } else {
            let incarnation = self.nodes[i].incarnation;
            self.push(
                self.now + latency,
                Ev::PersistDone {
                    node: i,
                    incarnation,
                },
            );
            Ok(())
        }
    }

    /// The write of node `i`'s Ready is durable: carry out the rest.
    fn finish_ready(&mut self, i: usize) -> Result<(), AppClusterError> {
        let Some(p) = self.nodes[i].pending.take() else {
            return Ok(());
        };
        let id = self.nodes[i].id;
        if !p.write_empty {
            self.nodes[i]
                .store
                .sync()
                .map_err(|e| self.contract(id, format!("log store sync failed: {e}")))?;
        }
        if let Some((meta, chunks)) = p.snapshot {
            let Some(m) = self.nodes[i].machine.as_mut() else {
                return Err(self.contract(id, "no state machine".into()));
            };
            if let Err(e) = m.install_snapshot(&meta, &mut VecChunks::new(chunks.iter().cloned())) {
                return Err(self.contract(id, format!("staged snapshot: {e}")));
            }
            self.nodes[i].durable_snapshot = Some((meta, chunks));
            self.nodes[i].applied_since_snapshot = 0;
        }
        for m in p.persisted_messages {
            self.send(id, m.to, Payload::Msg(m.msg));
        }
        let applied_any = !p.committed.is_empty();
        for e in p.committed {
            self.apply(i, e)?;
        }
        for r in p.reads {
            self.nodes[i].waiting_reads.push((r.index, r.ctx));
        }
        let applied = self.nodes[i]
            .machine
            .as_ref()
            .map_or(LogIndex(0), |m| m.last_applied().index);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.nodes[i].waiting_reads)
            .into_iter()
            .partition(|(idx, _)| *idx <= applied);
        self.nodes[i].waiting_reads = waiting;
        for (_, ctx) in ready {
            self.outputs.push(AppOutput::ReadReady { node: id, ctx });
        }
        if let Some(proto) = self.nodes[i].proto.as_mut() {
            proto.advance(p.number);
            if applied_any {
                proto.applied(applied);
            }
        }
        if let Some(every) = self.cfg.snapshot_every_entries
            && self.nodes[i].applied_since_snapshot >= every.max(1)
        {
            self.build_snapshot(i)?;
        }
        Ok(())
    }

    fn build_snapshot(&mut self, i: usize) -> Result<(), AppClusterError> {
        let id = self.nodes[i].id;
        let Some(m) = self.nodes[i].machine.as_mut() else {
            return Err(self.contract(id, "no state machine".into()));
        };
        let mut src = match m.snapshot() {
            Ok(s) => s,
            Err(e) => return Err(self.contract(id, format!("snapshot failed: {e}"))),
        };
        let meta = src.meta().clone();
        let mut chunks = Vec::new();
        while let Some(c) = src
            .next_chunk()
            .map_err(|e| self.contract(id, format!("snapshot chunk failed: {e}")))?
        {
            chunks.push(c);
        }
        self.nodes[i].durable_snapshot = Some((meta.clone(), chunks));
        self.nodes[i].applied_since_snapshot = 0;
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.snapshot_built(meta);
        }
        Ok(())
    }

    fn apply(&mut self, i: usize, e: Entry) -> Result<(), AppClusterError> {
        let id = self.nodes[i].id;
        match self.applied_at.get(&e.index()) {
            Some(first) if *first != e.payload => {
                return Err(AppClusterError::Safety {
                    at_ms: self.now,
                    detail: format!(
                        "{id:?} applies {:?} at {:?}, another node applied a different entry there",
                        e.log_id,
                        e.index()
                    ),
                });
            }
            Some(_) => {}
            None => {
                self.applied_at.insert(e.index(), e.payload.clone());
            }
        }
        let Some(m) = self.nodes[i].machine.as_mut() else {
            return Ok(());
        };
        let last = m.last_applied().index;
        if e.index() <= last {
            return Ok(()); // replay of what the machine already has
        }
        if e.index() != last.next() {
            return Err(self.contract(
                id,
                format!("asked to apply {:?} right after {last:?}", e.log_id),
            ));
        }
        let (tag, command, result) = match &e.payload {
            EntryPayload::Blank => (None, Bytes::new(), m.apply(e.log_id, Applied::Blank)),
            EntryPayload::Membership(mb) => (
                None,
                Bytes::new(),
                m.apply(e.log_id, Applied::Membership(mb)),
            ),
            EntryPayload::Normal(bytes) => match TaggedCommand::decode(bytes) {
                Ok(tc) => {
                    let r = m.apply(e.log_id, Applied::Command(&tc.data));
                    (Some((tc.proposer, tc.seq)), tc.data, r)
                }
                Err(_) => (
                    None,
                    bytes.clone(),
                    m.apply(e.log_id, Applied::Command(bytes)),
                ),
            },
        };
        // Flushed after every entry, as a driver whose batches are one
        // entry long would.
        let result = result.and_then(|r| m.flush().map(|()| r));
        let response =
            result.map_err(|err| self.contract(id, format!("apply {:?}: {err}", e.log_id)))?;
        self.nodes[i].applied_since_snapshot += 1;
        let out = AppOutput::Applied {
            node: id,
            log_id: e.log_id,
            tag,
            command,
            response,
        };
        if let (Some(hook), Some(m)) = (self.apply_hook.as_mut(), self.nodes[i].machine.as_ref()) {
            hook(self.now, &out, m);
        }
        self.outputs.push(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Recovered;
    use crate::kv::{KvCommand, KvResponse, MemKv};
    use crate::solo::{Solo, SoloConfig};

    type SoloFactory = fn(NodeId, &Membership, Recovered, u64) -> Solo;

    fn solo(id: NodeId, _initial: &Membership, recovered: Recovered, _seed: u64) -> Solo {
        match Solo::new(SoloConfig::new(id), recovered) {
            Ok(s) => s,
            Err(e) => panic!("solo: {e}"),
        }
    }

    fn one_node(snapshot_every_entries: Option<u64>) -> AppCluster<SoloFactory, MemKv> {
        let cfg = AppClusterConfig {
            nodes: 1,
            snapshot_every_entries,
            ..AppClusterConfig::default()
        };
        AppCluster::new(solo as SoloFactory, |_| MemKv::default(), cfg, 7)
    }

    fn put(k: &str, v: &str) -> Bytes {
        KvCommand::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    /// Runs until `node` leads (bounded).
    fn until_leader(c: &mut AppCluster<SoloFactory, MemKv>) -> NodeId {
        for _ in 0..100 {
            if let Some(l) = c.leader() {
                return l;
            }
            let t = c.now_ms() + 10;
            c.run_until(t).unwrap();
        }
        panic!("no leader");
    }

    #[test]
    fn proposals_apply_with_their_tag_and_the_hook_sees_the_state() {
        let mut c = one_node(None);
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = std::rc::Rc::clone(&seen);
        c.set_apply_hook(Box::new(move |_now, out, kv: &MemKv| {
            if let AppOutput::Applied { log_id, .. } = out {
                sink.borrow_mut()
                    .push((log_id.index, kv.get(b"k").cloned()));
            }
        }));
        let n = until_leader(&mut c);
        let (seq1, id1) = c.propose(n, put("k", "1")).unwrap();
        let (seq2, _) = c.propose(n, put("k", "2")).unwrap();
        c.run_until(c.now_ms() + 50).unwrap();
        let applied: Vec<_> = c
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                AppOutput::Applied {
                    tag: Some(tag),
                    log_id,
                    response,
                    ..
                } => Some((tag, log_id, KvResponse::decode(&response).unwrap())),
                _ => None,
            })
            .collect();
        assert_eq!(applied.len(), 2);
        assert_eq!(applied[0].0, (n, seq1));
        assert_eq!(applied[0].1, id1);
        assert_eq!(applied[0].2, KvResponse::Written { prev: None });
        assert_eq!(applied[1].0, (n, seq2));
        // The hook ran right after each apply, before the next one.
        let seen = seen.borrow();
        let at = |i: LogIndex| seen.iter().find(|(x, _)| *x == i).map(|(_, v)| v.clone());
        assert_eq!(at(id1.index), Some(Some(Bytes::from_static(b"1"))));
        assert_eq!(
            c.machine(n).unwrap().get(b"k"),
            Some(&Bytes::from_static(b"2"))
        );
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_a_restart_replays_it() {
        // (No snapshots: Solo only restarts from a snapshot that names its
        // membership, and the KV machine records none without a
        // membership entry.)
        let mut c = one_node(None);
        let n = until_leader(&mut c);
        for i in 0..5 {
            c.propose(n, put("k", &i.to_string())).unwrap();
        }
        c.run_until(c.now_ms() + 50).unwrap();
        c.crash(n);
        assert!(!c.is_up(n) && c.machine(n).is_none() && c.status(n).is_none());
        assert!(matches!(
            c.propose(n, put("k", "x")),
            Err(ProposeError::NotLeader { .. })
        ));
        c.take_outputs();
        c.restart(n).unwrap();
        until_leader(&mut c);
        c.run_until(c.now_ms() + 50).unwrap();
        // Rebuilt by replaying the synced log.
        assert_eq!(
            c.machine(n).unwrap().get(b"k"),
            Some(&Bytes::from_static(b"4"))
        );
        assert_eq!(c.crashes(), 1);
    }

    #[test]
    fn read_index_reports_when_the_read_is_safe() {
        let mut c = one_node(None);
        let n = until_leader(&mut c);
        c.propose(n, put("k", "v")).unwrap();
        c.read_index(n, 42).unwrap();
        c.run_until(c.now_ms() + 50).unwrap();
        let outs = c.take_outputs();
        let read_at = outs
            .iter()
            .position(|o| *o == AppOutput::ReadReady { node: n, ctx: 42 });
        let put_at = outs
            .iter()
            .position(|o| matches!(o, AppOutput::Applied { tag: Some(_), .. }));
        assert!(read_at.is_some() && put_at < read_at, "{outs:?}");
    }

    #[test]
    fn the_event_limit_stops_a_run() {
        let cfg = AppClusterConfig {
            nodes: 1,
            events_per_run_max: 5,
            ..AppClusterConfig::default()
        };
        let mut c = AppCluster::new(solo as SoloFactory, |_| MemKv::default(), cfg, 1);
        assert!(matches!(
            c.run_until(10_000),
            Err(AppClusterError::Limit { .. })
        ));
    }
}
