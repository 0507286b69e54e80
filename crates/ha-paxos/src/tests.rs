//! Unit tests of the safety core, on a small in-test cluster: message
//! routing with cut links, a durable store per node (what Readys wrote),
//! a toy state machine (the list of applied entries) and snapshot
//! streaming.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ha_core::consensus::{Consensus, MembershipChange, ReadState, Recovered, Role};
use ha_core::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Millis, NodeId,
    SnapshotMeta, Term,
};

use crate::message::{Accept, Message, Prepare, ballot};
use crate::{Config, Paxos};

/// Most Readys and deliveries one `pump` carries out (bounds a livelock).
const PUMP_STEPS_MAX: usize = 200_000;

fn test_config() -> Config {
    Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        accept_retransmit_ms: 60,
        prepare_timeout_ms: 150,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        snapshot_trailing_entries: 0,
        ..Config::default()
    }
}

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

fn normal(b: Term, slot: u64, data: &'static [u8]) -> Entry {
    Entry {
        log_id: LogId {
            term: b,
            index: LogIndex(slot),
        },
        payload: EntryPayload::Normal(Bytes::from_static(data)),
    }
}

struct Node {
    px: Paxos,
    /// What the node's Readys made durable.
    store: BTreeMap<LogIndex, Entry>,
    hs: HardState,
    snap_meta: Option<SnapshotMeta>,
    /// Toy state machine: every entry applied, from slot 1.
    applied: Vec<Entry>,
    /// A snapshot streamed to this node, staged until its Ready installs it.
    staged: Option<Vec<Entry>>,
    reads: Vec<ReadState>,
    /// Readys that asked for a durable write of nothing but a new commit
    /// point (each would cost an fsync of its own).
    commit_only_writes: usize,
}

enum Delivery {
    Msg(Message),
    Snapshot(Vec<Entry>, Message),
}

struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    queue: VecDeque<(NodeId, NodeId, Delivery)>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    now: Millis,
    cfg: Config,
    bootstrap: Membership,
    /// Every entry any node applied, by slot: a slot's value never changes.
    chosen: BTreeMap<LogIndex, EntryPayload>,
}

impl Cluster {
    fn new(voters: &[u64]) -> Self {
        Self::with_config(voters, test_config())
    }

    fn with_config(voters: &[u64], cfg: Config) -> Self {
        let bootstrap = Membership::new(ids(voters));
        let mut c = Self {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            now: 0,
            cfg,
            bootstrap: bootstrap.clone(),
            chosen: BTreeMap::new(),
        };
        for &v in voters {
            c.add_node(NodeId(v), Recovered::default(), bootstrap.clone());
        }
        c
    }

    fn add_node(&mut self, id: NodeId, rec: Recovered, bootstrap: Membership) {
        let store = rec.entries.iter().map(|e| (e.index(), e.clone())).collect();
        let hs = rec.hard_state;
        let mut px = match Paxos::new(id, self.cfg.clone(), rec, bootstrap, 42) {
            Ok(p) => p,
            Err(e) => panic!("{id:?}: {e}"),
        };
        px.tick(self.now);
        self.nodes.insert(
            id,
            Node {
                px,
                store,
                hs,
                snap_meta: None,
                applied: Vec::new(),
                staged: None,
                reads: Vec::new(),
                commit_only_writes: 0,
            },
        );
    }

    fn node(&self, id: u64) -> &Node {
        match self.nodes.get(&NodeId(id)) {
            Some(n) => n,
            None => panic!("no node {id}"),
        }
    }

    fn px(&mut self, id: u64) -> &mut Paxos {
        match self.nodes.get_mut(&NodeId(id)) {
            Some(n) => &mut n.px,
            None => panic!("no node {id}"),
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.px.role() == Role::Leader)
            .map(|n| n.px.id())
            .collect()
    }

    fn record_applied(&mut self, id: NodeId, entries: &[Entry]) {
        for e in entries {
            match self.chosen.get(&e.index()) {
                Some(p) => assert_eq!(
                    p,
                    &e.payload,
                    "{id:?} applied a different value at {:?}",
                    e.index()
                ),
                None => {
                    self.chosen.insert(e.index(), e.payload.clone());
                }
            }
        }
    }

    /// Carries out Readys and delivers messages until nothing moves.
    fn pump(&mut self) {
        for _ in 0..PUMP_STEPS_MAX {
            let mut busy = false;
            let node_ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in node_ids {
                let Some(n) = self.nodes.get_mut(&id) else {
                    continue;
                };
                if !n.px.has_ready() {
                    continue;
                }
                busy = true;
                let rd = n.px.ready();
                if let Some(meta) = &rd.snapshot {
                    let staged = n.staged.take().unwrap_or_default();
                    n.store = n.store.split_off(&meta.last_log_id.index.next());
                    n.snap_meta = Some(meta.clone());
                    n.applied = staged;
                }
                for e in &rd.entries {
                    n.store.insert(e.index(), e.clone());
                }
                if let Some(hs) = rd.hard_state {
                    if hs.term == n.hs.term
                        && rd.entries.is_empty()
                        && rd.snapshot.is_none()
                        && rd.purge_to.is_none()
                    {
                        n.commit_only_writes += 1;
                    }
                    n.hs = hs;
                }
                if let Some(p) = rd.purge_to {
                    n.store = n.store.split_off(&p.next());
                }
                let mut out = Vec::new();
                for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                    out.push((id, m.to, Delivery::Msg(m.msg)));
                }
                for s in rd.send_snapshots {
                    let upto = s.meta.last_log_id.index.0 as usize;
                    let data = n.applied[..upto.min(n.applied.len())].to_vec();
                    out.push((id, s.to, Delivery::Snapshot(data, s.header)));
                }
                n.applied.extend(rd.committed.iter().cloned());
                let last = n.applied.last().map_or(LogIndex(0), Entry::index);
                n.reads.extend(rd.reads);
                n.px.applied(last);
                n.px.advance(rd.number);
                let committed = rd.committed;
                self.record_applied(id, &committed);
                self.queue.extend(out);
            }
            while let Some((from, to, d)) = self.queue.pop_front() {
                busy = true;
                if self.isolated.contains(&from) || self.isolated.contains(&to) {
                    continue;
                }
                let Some(n) = self.nodes.get_mut(&to) else {
                    continue;
                };
                match d {
                    Delivery::Msg(m) => n.px.step(from, m),
                    Delivery::Snapshot(data, header) => {
                        n.staged = Some(data);
                        n.px.step(from, header);
                    }
                }
            }
            if !busy {
                return;
            }
        }
        panic!("cluster did not settle within {PUMP_STEPS_MAX} steps");
    }

    /// Advances time by `ms` in 10 ms ticks, pumping after each.
    fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            let now = self.now;
            for n in self.nodes.values_mut() {
                n.px.tick(now);
            }
            self.pump();
        }
    }

    /// Runs until a single leader exists (at most `max_ms`).
    fn elect(&mut self, max_ms: Millis) -> NodeId {
        let end = self.now + max_ms;
        while self.now < end {
            self.run_for(10);
            let l = self.leaders();
            if l.len() == 1 && !self.isolated.contains(&l[0]) {
                return l[0];
            }
        }
        panic!("no leader within {max_ms} ms");
    }

    /// Proposes on the leader and runs until it is applied there.
    fn commit(&mut self, leader: NodeId, data: &'static [u8]) -> LogId {
        let id = match self.px(leader.0).propose(Bytes::from_static(data)) {
            Ok(id) => id,
            Err(e) => panic!("proposal refused: {e}"),
        };
        for _ in 0..100 {
            self.run_for(10);
            if self.node(leader.0).px.commit_index() >= id.index {
                return id;
            }
        }
        panic!("{id:?} not committed");
    }

    /// Restarts a node from what its Readys made durable.
    fn restart(&mut self, id: u64) {
        let Some(n) = self.nodes.remove(&NodeId(id)) else {
            panic!("no node {id}");
        };
        let rec = Recovered {
            hard_state: n.hs,
            snapshot: n.snap_meta.clone(),
            entries: n.store.values().cloned().collect(),
        };
        let applied = n.applied;
        self.add_node(NodeId(id), rec, self.bootstrap.clone());
        if let Some(n) = self.nodes.get_mut(&NodeId(id)) {
            // The toy state machine survives (as a real one would, from its
            // own snapshot); replayed entries are idempotent.
            n.applied = applied;
        }
    }
}

/// Makes node `id` run phase 1 (at most three times: a refusal teaches
/// it the ballot to beat) until it leads.
fn campaign_until_leader(c: &mut Cluster, id: u64) {
    for _ in 0..3 {
        c.px(id).campaign_for_test();
        c.pump();
        if c.leaders() == vec![NodeId(id)] {
            return;
        }
    }
    panic!("n{id} did not win phase 1");
}

fn payload_at(c: &Cluster, node: u64, slot: u64) -> Option<EntryPayload> {
    c.node(node)
        .applied
        .iter()
        .find(|e| e.index() == LogIndex(slot))
        .map(|e| e.payload.clone())
}

#[test]
fn a_single_node_commits_after_phase_one() {
    let mut c = Cluster::new(&[1]);
    let l = c.elect(2_000);
    assert_eq!(l, NodeId(1));
    let id = c.commit(l, b"x");
    assert_eq!(
        payload_at(&c, 1, id.index.0),
        Some(EntryPayload::Normal(Bytes::from_static(b"x")))
    );
}

#[test]
fn a_commit_point_change_alone_is_never_written_and_is_relearned_after_restarts() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect(2_000);
    let mut last = LogId::default();
    for _ in 0..20 {
        last = c.commit(leader, b"v");
    }
    // Heartbeats carry the commit point to the followers.
    c.run_for(200);
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(
            n.commit_only_writes, 0,
            "node {id} wrote a commit point alone"
        );
        assert!(
            n.px.commit_index() >= last.index,
            "node {id} did not learn the commit"
        );
        // What is stored may lag: it rode along with the last slot write.
        assert!(n.hs.commit <= n.px.commit_index());
    }
    // Every node restarts from what it stored; the commit point is learned
    // again and nothing chosen changes (`record_applied` checks each slot).
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.elect(2_000);
    let next = c.commit(leader, b"after");
    c.run_for(200);
    for id in 1..=3 {
        assert!(c.node(id).px.commit_index() >= next.index, "node {id}");
        assert_eq!(c.node(id).commit_only_writes, 0, "node {id}");
    }
    assert!(next.index > last.index);
}

#[test]
fn a_chosen_value_is_never_changed_by_later_ballots() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let id = c.commit(l, b"chosen");
    let value = EntryPayload::Normal(Bytes::from_static(b"chosen"));
    // Depose leaders one after another; every later ballot must keep the
    // value at that slot (the cluster also asserts it for every apply).
    let mut ballots = vec![c.node(l.0).px.ballot()];
    let mut current = l;
    for round in 0..4 {
        c.isolated.insert(current);
        let next = c.elect(3_000);
        assert_ne!(next, current, "round {round}");
        let b = c.node(next.0).px.ballot();
        assert!(b > *ballots.last().unwrap_or(&Term(0)));
        ballots.push(b);
        c.commit(next, b"later");
        assert_eq!(
            c.node(next.0).px.entry(id.index).map(|e| e.payload.clone()),
            Some(value.clone()),
            "the leader of {b:?} holds the chosen value"
        );
        c.isolated.remove(&current);
        current = next;
    }
    c.run_for(500);
    for n in [1, 2, 3] {
        assert_eq!(payload_at(&c, n, id.index.0), Some(value.clone()), "n{n}");
    }
}

/// A reachable history: node 1 accepted `A` at slot 1 in a low ballot
/// (of node 2), then promised node 3's higher ballot, in which node 3
/// accepted `B` there. Node 1's phase 1 hears from node 3 (node 2 is cut
/// off) and must adopt `B` — the value of the highest ballot — over its own
/// `A`, and re-propose it in its own ballot. The same holds with the roles
/// of own and reported values swapped (second case).
#[test]
fn phase_one_adopts_the_highest_ballot_value() {
    let low = ballot(1, NodeId(2));
    let high = ballot(2, NodeId(3));
    let rec = |promised: Term, e: Option<Entry>| Recovered {
        hard_state: HardState {
            term: promised,
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries: e.into_iter().collect(),
    };
    let a = EntryPayload::Normal(Bytes::from_static(b"A"));
    let b_value = EntryPayload::Normal(Bytes::from_static(b"B"));
    for own_is_high in [false, true] {
        let bootstrap = Membership::new(ids(&[1, 2, 3]));
        let mut c = Cluster::with_config(&[], test_config());
        c.bootstrap = bootstrap.clone();
        let (own, other) = if own_is_high {
            (normal(high, 1, b"B"), normal(low, 1, b"A"))
        } else {
            (normal(low, 1, b"A"), normal(high, 1, b"B"))
        };
        c.add_node(NodeId(1), rec(high, Some(own)), bootstrap.clone());
        c.add_node(NodeId(2), rec(low, None), bootstrap.clone());
        c.add_node(NodeId(3), rec(high, Some(other)), bootstrap);
        c.isolated.insert(NodeId(2));
        campaign_until_leader(&mut c, 1);
        let b = c.px(1).ballot();
        assert!(b > high, "the winning ballot {b:?} is above every promise");
        assert_eq!(
            c.node(1)
                .px
                .entry(LogIndex(1))
                .map(|e| (e.term(), e.payload.clone())),
            Some((b, b_value.clone())),
            "adopted and re-stamped with the leader's ballot"
        );
        c.isolated.clear();
        c.run_for(200);
        for n in [1, 2, 3] {
            assert_eq!(payload_at(&c, n, 1), Some(b_value.clone()), "n{n}");
            assert_ne!(payload_at(&c, n, 1), Some(a.clone()));
        }
    }
}

/// Acceptor 3 holds slot 3 only (slots 1 and 2 were never accepted
/// anywhere); node 1's phase 1 hears from it (node 2 is cut off), so the
/// new leader re-proposes slot 3 and fills 1 and 2 with no-ops, and the log
/// applies in order.
#[test]
fn phase_one_fills_gaps_with_noops() {
    let old = ballot(1, NodeId(3));
    let bootstrap = Membership::new(ids(&[1, 2, 3]));
    let mut c = Cluster::with_config(&[], test_config());
    c.bootstrap = bootstrap.clone();
    c.add_node(NodeId(1), Recovered::default(), bootstrap.clone());
    c.add_node(NodeId(2), Recovered::default(), bootstrap.clone());
    c.add_node(
        NodeId(3),
        Recovered {
            hard_state: HardState {
                term: old,
                vote: None,
                commit: LogIndex(0),
            },
            snapshot: None,
            entries: vec![normal(old, 3, b"C")],
        },
        bootstrap,
    );
    c.isolated.insert(NodeId(2));
    campaign_until_leader(&mut c, 1);
    c.run_for(200);
    let applied: Vec<EntryPayload> = c
        .node(1)
        .applied
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    assert_eq!(
        applied,
        vec![
            EntryPayload::Blank,
            EntryPayload::Blank,
            EntryPayload::Normal(Bytes::from_static(b"C")),
        ]
    );
    // The next proposal goes after the recovered slots.
    let id = c.commit(NodeId(1), b"D");
    assert_eq!(id.index, LogIndex(4));
}

/// Two proposers start phase 1 at the same moment, with interleaved
/// messages; one ballot wins, the other backs off, and the cluster commits.
#[test]
fn duelling_proposers_converge() {
    for seed_shift in 0..5u64 {
        let mut c = Cluster::new(&[1, 2, 3]);
        c.run_for(10 * seed_shift);
        // Both campaign now; their Prepares cross in the network.
        c.px(1).campaign_for_test();
        c.px(2).campaign_for_test();
        c.pump();
        let l = c.elect(3_000);
        assert_eq!(c.leaders().len(), 1);
        c.commit(l, b"after the duel");
        // Both duelling ballots are distinct and the winner's is promised
        // by everyone it reached.
        let b = c.node(l.0).px.ballot();
        for n in [1, 2, 3] {
            assert!(c.node(n).px.ballot() <= b || c.leaders() == vec![l]);
        }
    }
}

#[test]
fn a_stale_leader_is_refused_and_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let old = c.elect(2_000);
    c.isolated.insert(old);
    let new = c.elect(3_000);
    assert_ne!(old, new);
    c.isolated.remove(&old);
    // The old leader's heartbeats get Nacks; it follows the new ballot.
    c.run_for(400);
    assert_eq!(c.leaders(), vec![new]);
    assert_eq!(c.node(old.0).px.role(), Role::Follower);
    // Its proposals are refused with a hint.
    assert!(c.px(old.0).propose(Bytes::from_static(b"late")).is_err());
}

/// A node cut off for many timeouts only asks (PrePrepare) and never
/// raises its ballot, so when it returns the leader keeps its ballot.
#[test]
fn a_returning_node_does_not_depose_a_healthy_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let b = c.node(l.0).px.ballot();
    let f = if l == NodeId(1) { NodeId(2) } else { NodeId(1) };
    c.isolated.insert(f);
    c.run_for(2_000);
    assert_eq!(
        c.node(f.0).px.ballot(),
        b,
        "no ballot was raised while cut off"
    );
    c.isolated.remove(&f);
    c.run_for(500);
    assert_eq!(c.leaders(), vec![l]);
    assert_eq!(c.node(l.0).px.ballot(), b);
    c.commit(l, b"still leading");
}

#[test]
fn malformed_accepts_change_nothing() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(2_000);
    let before = c.node(3).px.status();
    let promised = c.node(3).px.ballot();
    let b = Term(promised.0 + (1 << 32)); // a higher ballot of node 1's id space
    let b = ballot(crate::message::ballot_round(b), NodeId(1));
    // Gap between slots.
    let gap = Accept {
        ballot: b,
        entries: vec![normal(b, 50, b"x"), normal(b, 52, b"y")],
        commit: LogIndex(0),
        round: 1,
    };
    c.px(3).step(NodeId(1), Message::Accept(gap));
    // Entry stamped with another ballot.
    let stamped = Accept {
        ballot: b,
        entries: vec![normal(Term(1), 50, b"x")],
        commit: LogIndex(0),
        round: 1,
    };
    c.px(3).step(NodeId(1), Message::Accept(stamped));
    // A ballot that does not belong to its sender.
    let forged = Accept {
        ballot: b,
        entries: vec![normal(b, 50, b"x")],
        commit: LogIndex(0),
        round: 1,
    };
    c.px(3).step(NodeId(2), Message::Accept(forged));
    // An invalid membership value.
    let bad_config = Accept {
        ballot: b,
        entries: vec![Entry {
            log_id: LogId {
                term: b,
                index: LogIndex(50),
            },
            payload: EntryPayload::Membership(Box::default()),
        }],
        commit: LogIndex(0),
        round: 1,
    };
    c.px(3).step(NodeId(1), Message::Accept(bad_config));
    // A Prepare claiming slot 0.
    c.px(3).step(
        NodeId(1),
        Message::Prepare(Prepare {
            ballot: b,
            from: LogIndex(0),
            transfer: true,
        }),
    );
    assert_eq!(c.node(3).px.status(), before);
    assert_eq!(c.node(3).px.ballot(), promised);
    assert!(c.node(3).px.entry(LogIndex(50)).is_none());
}

#[test]
fn accepts_far_beyond_the_commit_point_are_not_held() {
    let cfg = Config {
        max_slots_ahead: 8_192,
        ..test_config()
    };
    let mut c = Cluster::with_config(&[1, 2, 3], cfg);
    c.elect(2_000);
    let b = ballot(1_000, NodeId(1));
    let far = Accept {
        ballot: b,
        entries: vec![normal(b, 1_000_000, b"far")],
        commit: LogIndex(0),
        round: 1,
    };
    c.px(3).step(NodeId(1), Message::Accept(far));
    assert!(c.node(3).px.entry(LogIndex(1_000_000)).is_none());
}

#[test]
fn promises_are_chunked_and_the_candidate_collects_every_chunk() {
    let cfg = Config {
        max_entries_per_msg: 2,
        max_recv_entries_per_msg: 2,
        ..test_config()
    };
    let old = ballot(1, NodeId(3));
    let bootstrap = Membership::new(ids(&[1, 2, 3]));
    let mut c = Cluster::with_config(&[], cfg);
    c.bootstrap = bootstrap.clone();
    let data: [&'static [u8]; 7] = [b"a", b"b", b"c", b"d", b"e", b"f", b"g"];
    let entries: Vec<Entry> = (1..=7)
        .map(|i| normal(old, i, data[i as usize - 1]))
        .collect();
    let rec = Recovered {
        hard_state: HardState {
            term: old,
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries,
    };
    c.add_node(NodeId(1), Recovered::default(), bootstrap.clone());
    c.add_node(NodeId(2), Recovered::default(), bootstrap.clone());
    c.add_node(NodeId(3), rec, bootstrap);
    c.isolated.insert(NodeId(2)); // node 1 needs node 3's whole answer
    campaign_until_leader(&mut c, 1);
    c.run_for(300);
    let got: Vec<EntryPayload> = c
        .node(1)
        .applied
        .iter()
        .map(|e| e.payload.clone())
        .collect();
    let want: Vec<EntryPayload> = data
        .iter()
        .map(|d| EntryPayload::Normal(Bytes::from_static(d)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn acceptors_hold_slots_out_of_order_and_recover_them_after_restart() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let b = c.node(l.0).px.ballot();
    let follower = [1u64, 2, 3].into_iter().find(|n| *n != l.0).unwrap_or(2);
    // Slot 9 arrives before slots 7 and 8.
    for slots in [[9u64, 9], [7, 8]] {
        let entries: Vec<Entry> = (slots[0]..=slots[1]).map(|s| normal(b, s, b"o")).collect();
        c.px(follower).step(
            l,
            Message::Accept(Accept {
                ballot: b,
                entries,
                commit: LogIndex(0),
                round: 0,
            }),
        );
    }
    c.queue.clear(); // drop the answers to the forged accepts
    c.pump();
    c.queue.clear();
    let stored: Vec<u64> = c.node(follower).store.keys().map(|i| i.0).collect();
    assert!(stored.contains(&9) && stored.contains(&7), "{stored:?}");
    c.restart(follower);
    for s in [7, 8, 9] {
        assert_eq!(
            c.node(follower).px.entry(LogIndex(s)).map(|e| e.term()),
            Some(b),
            "slot {s} survives the restart"
        );
    }
}

#[test]
fn promised_ballot_is_durable_before_the_promise_is_sent() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let b = ballot(5, NodeId(1));
    c.px(2).step(
        NodeId(1),
        Message::Prepare(Prepare {
            ballot: b,
            from: LogIndex(1),
            transfer: true,
        }),
    );
    let rd = c.px(2).ready();
    assert!(rd.messages.is_empty(), "nothing leaves before persisting");
    assert_eq!(rd.hard_state.map(|h| h.term), Some(b));
    assert!(
        rd.persisted_messages
            .iter()
            .any(|m| matches!(m.msg, Message::Promise(_)))
    );
}

#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    c.commit(l, b"w");
    let others: Vec<NodeId> = ids(&[1, 2, 3]).into_iter().filter(|n| *n != l).collect();
    for o in &others {
        c.isolated.insert(*o);
    }
    if let Err(e) = c.px(l.0).read_index(7) {
        panic!("read refused: {e}");
    }
    c.run_for(100);
    assert!(c.node(l.0).reads.is_empty(), "no quorum confirmed the read");
    c.isolated.clear();
    c.run_for(100);
    let reads = &c.node(l.0).reads;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].ctx, 7);
    assert!(reads[0].index >= c.node(l.0).px.commit_index().min(reads[0].index));
    // A follower's read is forwarded and answered.
    let f = others[0];
    if let Err(e) = c.px(f.0).read_index(8) {
        panic!("follower read refused: {e}");
    }
    c.run_for(100);
    assert!(c.node(f.0).reads.iter().any(|r| r.ctx == 8));
}

#[test]
fn lease_reads_need_no_round_until_the_lease_ends() {
    let cfg = Config {
        lease_read: true,
        lease_drift_margin_ms: 20,
        ..test_config()
    };
    let mut c = Cluster::with_config(&[1, 2, 3], cfg);
    let l = c.elect(2_000);
    c.commit(l, b"w");
    c.run_for(60); // a heartbeat round acknowledged by a quorum
    assert!(c.node(l.0).px.lease_valid());
    for n in [1u64, 2, 3] {
        if NodeId(n) != l {
            c.isolated.insert(NodeId(n));
        }
    }
    if let Err(e) = c.px(l.0).read_index(1) {
        panic!("{e}");
    }
    c.pump();
    assert!(
        c.node(l.0).reads.iter().any(|r| r.ctx == 1),
        "served from the lease while the followers are unreachable"
    );
    // Past election_timeout_min_ms - margin without acknowledgements, the
    // lease is gone and a read waits for a quorum round.
    c.run_for(150);
    assert!(!c.node(l.0).px.lease_valid());
    if c.node(l.0).px.role() == Role::Leader {
        if let Err(e) = c.px(l.0).read_index(2) {
            panic!("{e}");
        }
        c.pump();
        assert!(!c.node(l.0).reads.iter().any(|r| r.ctx == 2));
    }
}

#[test]
fn leader_transfer_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    c.commit(l, b"before");
    let to = if l == NodeId(3) { NodeId(2) } else { NodeId(3) };
    if let Err(e) = c.px(l.0).transfer_leader(to) {
        panic!("transfer refused: {e}");
    }
    c.run_for(300);
    assert_eq!(c.leaders(), vec![to]);
    c.commit(to, b"after");
}

#[test]
fn a_purged_follower_catches_up_from_a_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let lagging = if l == NodeId(3) { NodeId(2) } else { NodeId(3) };
    c.isolated.insert(lagging);
    for _ in 0..10 {
        c.commit(l, b"v");
    }
    let idx = c.node(l.0).px.commit_index();
    let last = c.node(l.0).px.entry(idx).map(|e| e.log_id);
    let Some(last) = last else {
        panic!("leader lacks its committed slot");
    };
    c.px(l.0).snapshot_built(SnapshotMeta {
        last_log_id: last,
        membership: Membership::default(),
    });
    c.run_for(50);
    assert!(c.node(l.0).px.log_start() >= idx);
    c.isolated.remove(&lagging);
    // The snapshot sent while the link was down is re-sent after
    // snapshot_send_timeout_ms.
    c.run_for(1_500);
    assert!(c.node(lagging.0).px.commit_index() >= idx);
    assert_eq!(
        c.node(lagging.0).applied.len() as u64,
        c.node(l.0).applied.len() as u64
    );
}

#[test]
fn a_candidate_behind_a_snapshot_backs_off() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let lagging = if l == NodeId(3) { NodeId(2) } else { NodeId(3) };
    c.isolated.insert(lagging);
    for _ in 0..5 {
        c.commit(l, b"v");
    }
    for n in [1u64, 2, 3] {
        if NodeId(n) == lagging {
            continue;
        }
        let idx = c.node(n).px.commit_index();
        if let Some(last) = c.node(n).px.entry(idx).map(|e| e.log_id) {
            c.px(n).snapshot_built(SnapshotMeta {
                last_log_id: last,
                membership: Membership::default(),
            });
        }
    }
    c.run_for(20);
    // The leader dies; the lagging node comes back and campaigns first.
    c.isolated.insert(l);
    c.isolated.remove(&lagging);
    c.px(lagging.0).campaign_for_test();
    c.pump();
    assert_ne!(c.node(lagging.0).px.role(), Role::Leader);
    let new = c.elect(3_000);
    assert_ne!(new, lagging, "only a current node can lead");
    c.run_for(500);
    assert_eq!(
        c.node(lagging.0).px.commit_index(),
        c.node(new.0).px.commit_index()
    );
}

#[test]
fn membership_changes_take_effect_once_chosen() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    c.add_node(NodeId(4), Recovered::default(), Membership::default());
    let id = match c
        .px(l.0)
        .change_membership(MembershipChange::AddLearner(NodeId(4)))
    {
        Ok(id) => id,
        Err(e) => panic!("{e}"),
    };
    // One change at a time.
    assert!(
        c.px(l.0)
            .change_membership(MembershipChange::AddLearner(NodeId(5)))
            .is_err()
    );
    c.run_for(200);
    assert!(c.node(l.0).px.commit_index() >= id.index);
    assert_eq!(c.node(4).px.status().role, Role::Learner);
    // Promote node 4, with node 4 cut off: the configuration entry needs a
    // quorum of the new configuration {1,2,3,4} as well as of the old, and
    // the slots after it wait.
    let others: Vec<NodeId> = ids(&[1, 2, 3]).into_iter().filter(|n| *n != l).collect();
    c.isolated.insert(NodeId(4));
    c.isolated.insert(others[0]);
    let g = match c
        .px(l.0)
        .change_membership(MembershipChange::Promote(NodeId(4)))
    {
        Ok(id) => id,
        Err(e) => panic!("{e}"),
    };
    let after = match c.px(l.0).propose(Bytes::from_static(b"after")) {
        Ok(id) => id,
        Err(e) => panic!("{e}"),
    };
    c.run_for(100);
    assert!(
        c.node(l.0).px.commit_index() < g.index,
        "old quorum alone must not choose the change"
    );
    c.isolated.remove(&NodeId(4));
    c.run_for(300);
    assert!(c.node(l.0).px.commit_index() >= after.index);
    assert!(
        c.node(l.0)
            .px
            .committed_membership()
            .voters
            .contains(&NodeId(4))
    );
    c.isolated.clear();
    // Remove the leader: it hands over and steps down.
    if let Err(e) = c.px(l.0).change_membership(MembershipChange::Remove(l)) {
        panic!("{e}");
    }
    c.run_for(1_000);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], l);
    c.commit(leaders[0], b"without the old leader");
}

/// Node 2 accepted (in an earlier ballot) a configuration entry that
/// replaces {1,2,3} with {2,4,5}. A phase 1 that adopts it must also hear
/// from a quorum of {2,4,5}: slots after it may have been chosen by that
/// quorum alone. With nodes 4 and 5 cut off node 1 cannot lead, even with
/// promises from a quorum of {1,2,3}; once node 4 answers, it can.
#[test]
fn phase_one_needs_a_quorum_of_every_adopted_configuration() {
    let old = ballot(1, NodeId(2));
    let bootstrap = Membership::new(ids(&[1, 2, 3]));
    let target = Membership::new(ids(&[2, 4, 5]));
    let mut c = Cluster::with_config(&[], test_config());
    c.bootstrap = bootstrap.clone();
    let hs = HardState {
        term: old,
        vote: None,
        commit: LogIndex(0),
    };
    c.add_node(
        NodeId(1),
        Recovered {
            hard_state: hs,
            ..Recovered::default()
        },
        bootstrap.clone(),
    );
    c.add_node(
        NodeId(2),
        Recovered {
            hard_state: hs,
            snapshot: None,
            entries: vec![Entry {
                log_id: LogId {
                    term: old,
                    index: LogIndex(1),
                },
                payload: EntryPayload::Membership(Box::new(target.clone())),
            }],
        },
        bootstrap.clone(),
    );
    c.add_node(NodeId(3), Recovered::default(), bootstrap.clone());
    for n in [4, 5] {
        c.add_node(NodeId(n), Recovered::default(), Membership::default());
    }
    c.isolated.extend([NodeId(4), NodeId(5)]);
    for _ in 0..3 {
        c.px(1).campaign_for_test();
        c.pump();
    }
    assert!(
        c.leaders().is_empty(),
        "a quorum of the old configuration alone must not suffice"
    );
    c.isolated.remove(&NodeId(4));
    c.px(1).campaign_for_test();
    c.pump();
    // Node 1 completed phase 1: it re-proposed the configuration in its own
    // ballot and got it chosen (by quorums of both configurations) — after
    // which it is no longer a voter, so it handed over and stepped down.
    let slot1 = c.node(1).px.entry(LogIndex(1)).cloned();
    let Some(slot1) = slot1 else {
        panic!("node 1 lacks slot 1");
    };
    assert_eq!(crate::message::ballot_node(slot1.term()), NodeId(1));
    assert!(slot1.term() > old);
    assert_eq!(
        slot1.payload,
        EntryPayload::Membership(Box::new(target.clone()))
    );
    assert!(c.node(1).px.commit_index() >= LogIndex(1));
    assert_eq!(c.node(1).px.committed_membership(), &target);
    assert_ne!(c.node(1).px.role(), Role::Leader);
    let l = c.elect(3_000);
    assert!(
        target.voters.contains(&l),
        "the new leader {l:?} is in {{2,4,5}}"
    );
}

/// `Replace` moves to an arbitrary configuration in one entry (no joint
/// step): the entry needs a quorum of the old and of the new voters, and
/// only then do later slots count the new voters alone.
#[test]
fn replace_changes_the_configuration_in_one_entry() {
    let mut c = Cluster::new(&[1, 2, 3]);
    for n in [4, 5] {
        c.add_node(NodeId(n), Recovered::default(), Membership::default());
    }
    let l = c.elect(2_000);
    let keep = if l == NodeId(1) { 1 } else { l.0 };
    let target = Membership::new(ids(&[keep, 4, 5]));
    // New voters 4 and 5 cut off: the old quorum alone cannot choose it.
    c.isolated.extend([NodeId(4), NodeId(5)]);
    let g = match c
        .px(l.0)
        .change_membership(MembershipChange::Replace(target.clone()))
    {
        Ok(id) => id,
        Err(e) => panic!("{e}"),
    };
    c.run_for(100);
    assert!(c.node(l.0).px.commit_index() < g.index);
    c.isolated.clear();
    c.run_for(1_000);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    let l2 = leaders[0];
    assert!(c.node(l2.0).px.commit_index() >= g.index);
    assert_eq!(c.node(l2.0).px.committed_membership(), &target);
    // The two removed nodes no longer count: cut them off and commit.
    for n in [1u64, 2, 3] {
        if n != keep {
            c.isolated.insert(NodeId(n));
        }
    }
    let l3 = c.elect(3_000);
    assert!(target.voters.contains(&l3));
    c.commit(l3, b"new configuration only");
}

/// Installing a snapshot drops only the slots it covers: a value accepted
/// above it is acceptor state a later phase 1 may need, and stays.
#[test]
fn a_snapshot_install_keeps_accepted_slots_above_it() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    let b = c.node(l.0).px.ballot();
    let f = if l == NodeId(3) { 2 } else { 3 };
    c.px(f).step(
        l,
        Message::Accept(Accept {
            ballot: b,
            entries: vec![normal(b, 50, b"ahead")],
            commit: LogIndex(0),
            round: 0,
        }),
    );
    c.px(f).step(
        l,
        Message::InstallSnapshot {
            ballot: b,
            meta: SnapshotMeta {
                last_log_id: LogId {
                    term: b,
                    index: LogIndex(10),
                },
                membership: Membership::default(),
            },
        },
    );
    let px = &c.node(f).px;
    assert_eq!(px.commit_index(), LogIndex(10));
    assert_eq!(px.log_start(), LogIndex(10));
    assert_eq!(
        px.entry(LogIndex(50)).map(|e| e.payload.clone()),
        Some(EntryPayload::Normal(Bytes::from_static(b"ahead")))
    );
    let rd = c.px(f).ready();
    assert_eq!(rd.snapshot.map(|m| m.last_log_id.index), Some(LogIndex(10)));
    assert!(rd.entries.iter().any(|e| e.index() == LogIndex(50)));
    assert_eq!(
        rd.truncate_from, None,
        "nothing above the snapshot is truncated"
    );
}

#[test]
fn recovery_rejects_impossible_state() {
    let b = ballot(1, NodeId(1));
    let rec = Recovered {
        hard_state: HardState {
            term: Term(0),
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries: vec![normal(b, 1, b"x")],
    };
    let r = Paxos::new(NodeId(1), test_config(), rec, Membership::new(ids(&[1])), 1);
    assert!(matches!(r, Err(crate::PaxosError::Recovered(_))));
    let far = Recovered {
        hard_state: HardState {
            term: b,
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries: vec![normal(b, 1 << 40, b"corrupt")],
    };
    let r = Paxos::new(NodeId(1), test_config(), far, Membership::new(ids(&[1])), 1);
    assert!(matches!(r, Err(crate::PaxosError::Recovered(_))));
    let r = Paxos::new(
        NodeId(1 << 40),
        test_config(),
        Recovered::default(),
        Membership::new(ids(&[1])),
        1,
    );
    assert!(matches!(r, Err(crate::PaxosError::BadId(_))));
}

#[test]
fn followers_at_the_same_slot_get_the_same_batch_stamped_with_the_ballot() {
    let mut c = Cluster::new(&[1, 2, 3, 4]);
    let l = c.elect(3_000);
    c.commit(l, b"warm-up");
    let ballot = c.node(l.0).px.ballot();
    let mut slots = Vec::new();
    for data in [&b"a"[..], b"b", b"c"] {
        match c.px(l.0).propose(Bytes::from_static(data)) {
            Ok(id) => slots.push(id.index),
            Err(e) => panic!("proposal refused: {e}"),
        }
    }
    assert!(c.px(l.0).has_ready());
    let rd = c.px(l.0).ready();
    let mut batches = BTreeMap::new();
    for m in rd.messages.iter().chain(&rd.persisted_messages) {
        if let Message::Accept(a) = &m.msg
            && !a.entries.is_empty()
        {
            batches.insert(m.to, a.entries.clone());
        }
    }
    assert_eq!(batches.len(), 3, "one Accept per follower: {batches:?}");
    for (to, entries) in &batches {
        let got: Vec<LogIndex> = entries.iter().map(Entry::index).collect();
        assert_eq!(got, slots, "{to:?}");
        assert!(entries.iter().all(|e| e.term() == ballot), "{to:?}");
        let payloads: Vec<&EntryPayload> = entries.iter().map(|e| &e.payload).collect();
        assert_eq!(
            payloads,
            [b"a", b"b", b"c"]
                .iter()
                .map(|d| EntryPayload::Normal(Bytes::from_static(&d[..])))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>(),
            "{to:?}"
        );
    }
    c.px(l.0).advance(rd.number);
    c.run_for(100);
    assert!(c.node(l.0).px.commit_index() >= slots[2]);
}

#[test]
fn an_accept_straddling_the_commit_point_and_the_window_stores_only_the_open_slots_in_it() {
    let cfg = Config {
        max_entries_per_msg: 2,
        max_slots_ahead: 3,
        ..test_config()
    };
    let mut c = Cluster::with_config(&[1, 2, 3], cfg);
    let l = c.elect(2_000);
    c.commit(l, b"one");
    c.commit(l, b"two");
    c.run_for(100);
    let f = [1u64, 2, 3].into_iter().find(|n| *n != l.0).unwrap_or(2);
    let commit = c.node(f).px.commit_index().0;
    assert!(commit >= 2, "the follower learned both values: {commit}");
    let b = c.node(l.0).px.ballot();
    let old: Vec<Option<Entry>> = (commit - 1..=commit)
        .map(|s| c.node(f).px.entry(LogIndex(s)).cloned())
        .collect();
    let entries: Vec<Entry> = (commit - 1..=commit + 5)
        .map(|s| normal(b, s, b"new"))
        .collect();
    c.px(f).step(
        l,
        Message::Accept(Accept {
            ballot: b,
            entries,
            commit: LogIndex(0),
            round: 0,
        }),
    );
    c.queue.clear();
    // Chosen slots keep their values.
    for (s, want) in (commit - 1..=commit).zip(&old) {
        assert_eq!(c.node(f).px.entry(LogIndex(s)), want.as_ref(), "slot {s}");
    }
    // Open slots within max_slots_ahead of the commit point are accepted.
    for s in commit + 1..=commit + 3 {
        assert_eq!(
            c.node(f).px.entry(LogIndex(s)),
            Some(&normal(b, s, b"new")),
            "slot {s}"
        );
    }
    // The rest is beyond the window.
    for s in commit + 4..=commit + 5 {
        assert!(c.node(f).px.entry(LogIndex(s)).is_none(), "slot {s}");
    }
    assert_eq!(c.node(f).px.last_index(), LogIndex(commit + 3));
}

#[test]
fn a_value_accepted_over_an_unchosen_configuration_drops_that_configuration() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let l = c.elect(2_000);
    c.commit(l, b"one");
    c.run_for(100);
    let f = [1u64, 2, 3].into_iter().find(|n| *n != l.0).unwrap_or(2);
    let other = [1u64, 2, 3]
        .into_iter()
        .find(|n| *n != l.0 && *n != f)
        .unwrap_or(3);
    let slot = LogIndex(c.node(f).px.last_index().0 + 1);
    let b = c.node(l.0).px.ballot();
    let three = c.node(f).px.membership().clone();
    let four = Membership::new(ids(&[1, 2, 3, 4]));
    let config = Entry {
        log_id: LogId {
            term: b,
            index: slot,
        },
        payload: EntryPayload::Membership(Box::new(four.clone())),
    };
    c.px(f).step(
        l,
        Message::Accept(Accept {
            ballot: b,
            entries: vec![config],
            commit: LogIndex(0),
            round: 0,
        }),
    );
    assert_eq!(c.node(f).px.membership(), &four);
    // A higher ballot's leader recovered another value for that slot (and
    // sends the slot after it too, in one batch).
    let b2 = ballot(crate::message::ballot_round(b) + 1, NodeId(other));
    c.px(f).step(
        NodeId(other),
        Message::Accept(Accept {
            ballot: b2,
            entries: vec![normal(b2, slot.0, b"x"), normal(b2, slot.0 + 1, b"y")],
            commit: LogIndex(0),
            round: 0,
        }),
    );
    c.queue.clear();
    assert_eq!(c.node(f).px.membership(), &three);
    assert_eq!(c.node(f).px.entry(slot), Some(&normal(b2, slot.0, b"x")));
}
