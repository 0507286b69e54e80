//! Proposals per second through an in-process Multi-Paxos cluster — the
//! same shape as ha-raft's `propose` bench, so the two protocols compare
//! point for point in one table.
//!
//! `members` in-memory nodes in one process, `clients` concurrent clients
//! each keeping one empty proposal outstanding (a client proposes again as
//! soon as its previous proposal is applied on the leader). One iteration
//! commits `OPS` proposals; criterion reports the time per iteration and
//! the throughput in elements (= operations) per second.
//!
//! The nodes run on one thread: a Ready's entries go to an in-memory slot
//! array (slots may arrive out of order), messages go through an in-memory
//! queue, and every node reports a snapshot every `SNAPSHOT_EVERY` applied
//! entries so memory stays bounded.
//!
//! `cargo bench -p ha-paxos --bench propose`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ha_core::consensus::{Consensus, Recovered, Role};
use ha_core::{Bytes, Entry, LogIndex, Membership, NodeId, SnapshotMeta};
use ha_paxos::{Config, Message, Paxos};

/// Operations committed per measured iteration.
const OPS: u64 = 20_000;
/// A node reports a snapshot after this many applied entries.
const SNAPSHOT_EVERY: u64 = 50_000;

struct Node {
    px: Paxos,
    /// The node's durable slots (in memory), from `log_start`.
    log: VecDeque<Option<Entry>>,
    log_start: u64,
    applied: LogIndex,
    since_snapshot: u64,
    membership: Membership,
}

impl Node {
    fn store(&mut self, e: Entry) {
        let Some(pos) = e.index().0.checked_sub(self.log_start) else {
            return;
        };
        let pos = pos as usize;
        if pos < self.log.len() {
            self.log[pos] = Some(e);
        } else {
            while self.log.len() < pos {
                self.log.push_back(None);
            }
            self.log.push_back(Some(e));
        }
    }
}

struct Cluster {
    nodes: Vec<Node>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    now_ms: u64,
}

fn config() -> Config {
    Config {
        max_inflight_msgs: 1_024,
        max_entries_per_msg: 8_192,
        snapshot_trailing_entries: 1_000,
        ..Config::default()
    }
}

impl Cluster {
    fn new(members: u64) -> Self {
        let m = Membership::new((1..=members).map(NodeId));
        let nodes = (1..=members)
            .map(|id| Node {
                px: Paxos::new(NodeId(id), config(), Recovered::default(), m.clone(), id)
                    .unwrap_or_else(|e| panic!("bench config: {e}")),
                log: VecDeque::new(),
                log_start: 1,
                applied: LogIndex(0),
                since_snapshot: 0,
                membership: m.clone(),
            })
            .collect();
        let mut c = Self {
            nodes,
            queue: VecDeque::new(),
            now_ms: 0,
        };
        for n in &mut c.nodes {
            n.px.tick(0);
        }
        // Let time pass until a leader has finished phase 1.
        for _ in 0..1_000 {
            c.now_ms += 50;
            let now = c.now_ms;
            for n in &mut c.nodes {
                n.px.tick(now);
            }
            c.pump(&mut |_| {});
            if c.leader().is_some() {
                return c;
            }
        }
        panic!("no leader elected");
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.px.role() == Role::Leader)
    }

    /// Carries out Readys and delivers messages until the cluster is idle;
    /// `on_apply` sees the number of entries the leader applied.
    fn pump(&mut self, on_apply: &mut dyn FnMut(u64)) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                while n.px.has_ready() {
                    busy = true;
                    let rd = n.px.ready();
                    let from = n.px.id();
                    for m in rd.messages {
                        self.queue.push_back((from, m.to, m.msg));
                    }
                    if let Some(s) = &rd.snapshot {
                        n.log.clear();
                        n.log_start = s.last_log_id.index.0 + 1;
                    }
                    for e in rd.entries {
                        n.store(e);
                    }
                    if let Some(p) = rd.purge_to {
                        let drop = (p.0 + 1).saturating_sub(n.log_start) as usize;
                        n.log.drain(..drop.min(n.log.len()));
                        n.log_start = n.log_start.max(p.0 + 1);
                    }
                    for m in rd.persisted_messages {
                        self.queue.push_back((from, m.to, m.msg));
                    }
                    let applied = rd.committed.len() as u64;
                    if let Some(e) = rd.committed.last() {
                        n.applied = e.index();
                    }
                    black_box(&rd.committed);
                    n.px.applied(n.applied);
                    n.px.advance(rd.number);
                    if n.px.role() == Role::Leader {
                        on_apply(applied);
                    }
                    n.since_snapshot += applied;
                    if n.since_snapshot >= SNAPSHOT_EVERY {
                        n.since_snapshot = 0;
                        if let Some(e) = n.px.entry(n.applied) {
                            let meta = SnapshotMeta {
                                last_log_id: e.log_id,
                                membership: n.membership.clone(),
                            };
                            n.px.snapshot_built(meta);
                        }
                    }
                }
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                busy = true;
                self.nodes[(to.0 - 1) as usize].px.step(from, msg);
            }
            if !busy {
                return;
            }
        }
    }

    /// Commits `ops` proposals with `clients` outstanding at a time.
    fn run(&mut self, clients: u64, ops: u64) {
        let Some(l) = self.leader() else {
            panic!("leader lost");
        };
        let mut issued = 0u64;
        let mut done = 0u64;
        while done < ops {
            // Every client without an outstanding proposal proposes.
            while issued - done < clients && issued < ops {
                match self.nodes[l].px.propose(Bytes::new()) {
                    Ok(_) => issued += 1,
                    Err(e) => panic!("proposal refused: {e}"),
                }
            }
            let mut completed = 0;
            self.pump(&mut |n| completed += n);
            done += completed;
            if completed == 0 {
                // Nothing moved: let time pass (heartbeats, retransmits).
                self.now_ms += 10;
                let now = self.now_ms;
                for n in &mut self.nodes {
                    n.px.tick(now);
                }
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("propose");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(OPS));
    for members in [1u64, 3, 5] {
        for clients in [1u64, 64, 256, 1_000, 4_000] {
            let id = BenchmarkId::new(format!("members_{members}"), format!("clients_{clients}"));
            g.bench_with_input(id, &(members, clients), |b, &(members, clients)| {
                let mut cluster = Cluster::new(members);
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        cluster.run(clients, OPS);
                    }
                    t.elapsed()
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
