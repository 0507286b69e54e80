//! A small in-test cluster: routes messages between `Raft` instances,
//! carries out Readys against `MemLogStore`, keeps a toy state machine (the
//! list of applied entries) and checks the Raft safety properties.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ha_core::consensus::{Consensus, ReadState, Role};
use ha_core::storage::{LogStore, LogWrite, MemLogStore};
use ha_core::{
    Bytes, Entry, EntryPayload, GroupId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};

use crate::rng::SplitMix64;
use crate::{Config, Message, Raft};

const GROUP: GroupId = GroupId(1);

/// A snapshot of the toy state machine: every entry applied so far.
#[derive(Clone, Debug)]
pub(crate) struct Snap {
    pub meta: SnapshotMeta,
    pub applied: Vec<Entry>,
}

pub(crate) struct Node {
    pub raft: Raft,
    pub store: MemLogStore,
    /// Toy state machine: the entries applied, in order (from index 1,
    /// including those restored from a snapshot).
    pub applied: Vec<Entry>,
    pub sm_membership: Membership,
    pub reads: Vec<ReadState>,
    pub staged: Option<Snap>,
    pub snap: Option<Snap>,
    /// Ready numbers not advanced yet (when a test holds them).
    pub hold: bool,
    pub held: Option<ha_core::consensus::Ready<Message>>,
}

pub(crate) enum Delivery {
    Msg(Message),
    Snapshot(Snap, Message),
}

pub(crate) struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: VecDeque<(NodeId, NodeId, Delivery)>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub now: Millis,
    pub cfg: Config,
    pub bootstrap: Membership,
    pub seed: u64,
    /// Messages dropped at random, per thousand.
    pub drop_per_mille: u64,
    /// Deliver in random order rather than FIFO.
    pub reorder: bool,
    pub rng: SplitMix64,
    /// Leader seen for each term (election safety).
    pub leaders: BTreeMap<Term, NodeId>,
    /// Every entry any node applied, by index (state machine safety).
    pub applied_global: BTreeMap<LogIndex, Entry>,
    pub delivered: u64,
}

pub(crate) fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

pub(crate) fn test_config() -> Config {
    Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        append_retransmit_ms: 60,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        ..Config::default()
    }
}

impl Cluster {
    pub fn new(n: u64, cfg: Config, seed: u64) -> Self {
        let members = Membership::new(ids(&(1..=n).collect::<Vec<_>>()));
        Self::with_members(members, &[], cfg, seed)
    }

    /// A cluster whose founders share `members`; `extra` nodes start empty
    /// (they join later).
    pub fn with_members(members: Membership, extra: &[u64], cfg: Config, seed: u64) -> Self {
        let mut c = Self {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: 0,
            cfg,
            bootstrap: members.clone(),
            seed,
            drop_per_mille: 0,
            reorder: false,
            rng: SplitMix64::new(seed ^ 0xdead_beef),
            leaders: BTreeMap::new(),
            applied_global: BTreeMap::new(),
            delivered: 0,
        };
        for id in members.all_nodes() {
            c.start_node(id, members.clone());
        }
        for &e in extra {
            c.start_node(NodeId(e), Membership::default());
        }
        for id in c.ids() {
            if let Some(n) = c.nodes.get_mut(&id) {
                n.raft.tick(0);
            }
        }
        c
    }

    fn start_node(&mut self, id: NodeId, bootstrap: Membership) {
        let store = MemLogStore::new();
        let raft = Raft::new(
            id,
            self.cfg.clone(),
            Default::default(),
            bootstrap.clone(),
            self.seed,
        )
        .expect("valid test config");
        self.nodes.insert(
            id,
            Node {
                raft,
                store,
                applied: Vec::new(),
                sm_membership: bootstrap,
                reads: Vec::new(),
                staged: None,
                snap: None,
                hold: false,
                held: None,
            },
        );
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn raft(&self, id: u64) -> &Raft {
        &self.nodes[&NodeId(id)].raft
    }

    pub fn raft_mut(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes.get_mut(&NodeId(id)).expect("node exists").raft
    }

    /// Restarts `id` from its store and its last snapshot, as after a crash.
    pub fn crash(&mut self, id: u64) {
        let id = NodeId(id);
        self.queue.retain(|(f, t, _)| *f != id && *t != id);
        let cfg = self.cfg.clone();
        let bootstrap = self.bootstrap.clone();
        let seed = self.seed.wrapping_add(self.now);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.store.crash();
        let recovered = node.store.recover(GROUP).expect("mem store");
        let boot = if node.sm_membership == Membership::default()
            && !bootstrap.all_nodes().contains(&id)
        {
            Membership::default()
        } else {
            bootstrap
        };
        node.raft = Raft::new(id, cfg, recovered.clone(), boot, seed).expect("recover");
        // The state machine restarts from the snapshot the store recorded.
        match (&recovered.snapshot, &node.snap) {
            (Some(meta), Some(s)) if s.meta == *meta => {
                node.applied = s.applied.clone();
                node.sm_membership = s.meta.membership.clone();
            }
            (Some(meta), _) => panic!("store has snapshot {meta:?} the state machine lost"),
            (None, _) => {
                node.applied.clear();
                node.sm_membership = self.bootstrap.clone();
            }
        }
        node.reads.clear();
        node.staged = None;
        node.held = None;
        node.hold = false;
        let now = self.now;
        node.raft.tick(now);
    }

    /// Builds a snapshot of `id`'s state machine and reports it.
    pub fn snapshot(&mut self, id: u64) {
        let node = self.nodes.get_mut(&NodeId(id)).expect("node");
        let Some(last) = node.applied.last() else {
            return;
        };
        let meta = SnapshotMeta {
            last_log_id: last.log_id,
            membership: node.sm_membership.clone(),
        };
        node.snap = Some(Snap {
            meta: meta.clone(),
            applied: node.applied.clone(),
        });
        // The driver records the snapshot in the store (a synced write).
        node.store
            .write(
                GROUP,
                LogWrite {
                    snapshot: Some(meta.clone()),
                    sync: true,
                    ..Default::default()
                },
            )
            .expect("mem store");
        node.raft.snapshot_built(meta);
    }

    /// Carries out every available Ready of node `id`.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..1_000 {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            if node.held.is_some() || !node.raft.has_ready() {
                return;
            }
            let rd = node.raft.ready();
            for m in &rd.messages {
                self.queue
                    .push_back((id, m.to, Delivery::Msg(m.msg.clone())));
            }
            if node.hold {
                node.held = Some(rd);
                return;
            }
            self.finish_ready(id, rd);
        }
        panic!("node {id:?} produced Readys forever");
    }

    /// Completes a Ready whose messages were already queued.
    fn finish_ready(&mut self, id: NodeId, rd: ha_core::consensus::Ready<Message>) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(meta) = &rd.snapshot {
            let staged = node.staged.take().expect("snapshot staged before install");
            assert_eq!(
                &staged.meta, meta,
                "installed snapshot differs from the staged one"
            );
            node.applied = staged.applied.clone();
            node.sm_membership = meta.membership.clone();
            node.snap = Some(staged);
        }
        node.store
            .write(
                GROUP,
                LogWrite {
                    snapshot: rd.snapshot.clone(),
                    truncate_from: rd.truncate_from,
                    entries: rd.entries.clone(),
                    hard_state: rd.hard_state,
                    purge_to: rd.purge_to,
                    sync: true,
                },
            )
            .expect("mem store");
        for m in &rd.persisted_messages {
            self.queue
                .push_back((id, m.to, Delivery::Msg(m.msg.clone())));
        }
        let node = self.nodes.get_mut(&id).expect("node");
        for e in &rd.committed {
            let expect = LogIndex(node.applied.len() as u64 + 1);
            assert_eq!(e.index(), expect, "{id:?} applies out of order");
            if let EntryPayload::Membership(m) = &e.payload {
                node.sm_membership = Membership::clone(m);
            }
            node.applied.push(e.clone());
            match self.applied_global.get(&e.index()) {
                Some(prev) => assert_eq!(
                    prev,
                    e,
                    "state machine safety: two entries applied at {:?}",
                    e.index()
                ),
                None => {
                    self.applied_global.insert(e.index(), e.clone());
                }
            }
        }
        node.reads.extend(rd.reads.iter().copied());
        for s in &rd.send_snapshots {
            let snap = node.snap.clone().expect("leader has a snapshot to send");
            assert!(snap.meta.last_log_id >= s.meta.last_log_id);
            self.queue
                .push_back((id, s.to, Delivery::Snapshot(snap, s.header.clone())));
        }
        let applied = LogIndex(node.applied.len() as u64);
        node.raft.applied(applied);
        node.raft.advance(rd.number);
    }

    /// Releases a held Ready of `id` and stops holding.
    pub fn release(&mut self, id: u64) {
        let id = NodeId(id);
        let node = self.nodes.get_mut(&id).expect("node");
        node.hold = false;
        if let Some(rd) = node.held.take() {
            self.finish_ready(id, rd);
        }
        self.process(id);
    }

    pub fn process_all(&mut self) {
        for id in self.ids() {
            self.process(id);
        }
        self.check_election_safety();
    }

    fn check_election_safety(&mut self) {
        for (id, n) in &self.nodes {
            if n.raft.role() == Role::Leader {
                let prev = self.leaders.entry(n.raft.term()).or_insert(*id);
                assert_eq!(
                    prev,
                    id,
                    "election safety: two leaders in {:?}",
                    n.raft.term()
                );
            }
        }
    }

    /// Delivers queued messages for which `keep` holds, dropping the
    /// others, until none are left (bounded).
    pub fn deliver_where(&mut self, keep: impl Fn(NodeId, NodeId, &Message) -> bool) {
        self.process_all();
        for _ in 0..100_000 {
            let Some((from, to, d)) = self.queue.pop_front() else {
                return;
            };
            let Delivery::Msg(m) = d else { continue };
            if !keep(from, to, &m) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&to) {
                node.raft.step(from, m);
            }
            self.process(to);
            self.check_election_safety();
        }
        panic!("messages never stopped");
    }

    /// Delivers queued messages until none are left (bounded).
    pub fn deliver(&mut self) {
        self.process_all();
        for _ in 0..200_000 {
            let item = if self.reorder && self.queue.len() > 1 {
                let i = self.rng.range(0, self.queue.len() as u64) as usize;
                self.queue.remove(i)
            } else {
                self.queue.pop_front()
            };
            let Some((from, to, d)) = item else {
                return;
            };
            if self.cut.contains(&(from, to)) || !self.nodes.contains_key(&to) {
                continue;
            }
            if self.drop_per_mille > 0 && self.rng.range(0, 1000) < self.drop_per_mille {
                continue;
            }
            self.delivered += 1;
            let node = self.nodes.get_mut(&to).expect("checked");
            match d {
                Delivery::Msg(m) => node.raft.step(from, m),
                Delivery::Snapshot(s, header) => {
                    node.staged = Some(s);
                    node.raft.step(from, header);
                }
            }
            self.process(to);
            self.check_election_safety();
        }
        panic!("messages never stopped");
    }

    /// Advances time by `ms` in steps of `step_ms`, delivering in between.
    pub fn run_for(&mut self, ms: Millis, step_ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + step_ms).min(end);
            let now = self.now;
            for n in self.nodes.values_mut() {
                n.raft.tick(now);
            }
            self.deliver();
        }
    }

    /// Runs until some node is leader (bounded); returns it.
    pub fn elect(&mut self) -> NodeId {
        for _ in 0..400 {
            if let Some(l) = self.leader() {
                return l;
            }
            self.run_for(10, 10);
        }
        panic!("no leader elected");
    }

    /// The leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.role() == Role::Leader)
            .max_by_key(|(_, n)| n.raft.term())
            .map(|(id, _)| *id)
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != NodeId(id) {
                self.cut.insert((NodeId(id), other));
                self.cut.insert((other, NodeId(id)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Proposes through the current leader.
    pub fn propose(&mut self, data: &str) -> Option<ha_core::LogId> {
        let l = self.leader()?;
        let r = self
            .nodes
            .get_mut(&l)
            .expect("leader exists")
            .raft
            .propose(Bytes::copy_from_slice(data.as_bytes()))
            .ok();
        self.process(l);
        r
    }

    /// Whether `id` applied an entry with this payload.
    pub fn applied_data(&self, id: u64) -> Vec<Bytes> {
        self.nodes[&NodeId(id)]
            .applied
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    /// Log matching and leader completeness over the in-memory logs.
    pub fn check_logs(&self) {
        let nodes: Vec<&Node> = self.nodes.values().collect();
        for a in &nodes {
            for b in &nodes {
                let lo = a
                    .raft
                    .log_start()
                    .index
                    .max(b.raft.log_start().index)
                    .next();
                let hi = a.raft.last_log_id().index.min(b.raft.last_log_id().index);
                let mut i = hi;
                // find the highest index with equal terms; everything below must match
                while i >= lo {
                    let (ea, eb) = (a.raft.entry(i), b.raft.entry(i));
                    if let (Some(ea), Some(eb)) = (ea, eb)
                        && ea.log_id == eb.log_id
                    {
                        for j in lo.0..=i.0 {
                            assert_eq!(
                                a.raft.entry(LogIndex(j)),
                                b.raft.entry(LogIndex(j)),
                                "log matching broken at {j}"
                            );
                        }
                        break;
                    }
                    i = i.prev();
                }
            }
        }
        let max_term = self.nodes.values().map(|n| n.raft.term()).max();
        if let Some(l) = self
            .leader()
            .filter(|l| Some(self.nodes[l].raft.term()) == max_term)
        {
            let lr = &self.nodes[&l].raft;
            for (idx, e) in &self.applied_global {
                if *idx > lr.log_start().index {
                    assert_eq!(
                        lr.entry(*idx),
                        Some(e),
                        "leader completeness: {l:?} lacks committed {idx:?}"
                    );
                }
            }
        }
    }
}
