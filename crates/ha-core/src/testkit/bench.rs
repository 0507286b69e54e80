//! The in-memory proposal-throughput bench every protocol runs, so two
//! protocols compare point for point on the same code.
//!
//! [`ProposeCluster`] runs `members` nodes of any [`Consensus`] on one
//! thread: a Ready's messages go to an in-memory queue, its entries to an
//! in-memory slot array per node (slots may arrive out of order, as Paxos
//! acceptors write them; Raft's contiguous appends are the special case),
//! nothing is fsync'd, and every node reports a snapshot each
//! [`SNAPSHOT_EVERY_ENTRIES`] applied entries so memory stays bounded.
//! `clients` concurrent clients each keep one empty proposal outstanding on
//! the leader (a client proposes again as soon as its previous proposal is
//! applied there). So a measurement is the cost of the protocol itself —
//! every node's share of it on one core — not of a runtime or a disk.
//!
//! With the `bench` feature, [`criterion_propose`] is the whole criterion
//! bench: [`MEMBERS`] × [`CLIENTS`] points, [`OPS_PER_ITERATION`]
//! proposals per iteration, throughput in operations per second. A
//! protocol's `benches/propose.rs` only says how to build a node.

use std::collections::VecDeque;

use bytes::Bytes;
use thiserror::Error;

use crate::consensus::{Consensus, ProposeError, Ready, Role};
use crate::types::{Entry, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta};

/// Proposals committed per measured iteration.
pub const OPS_PER_ITERATION: u64 = 20_000;
/// A node reports a snapshot after this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 50_000;
/// Cluster sizes measured.
pub const MEMBERS: [u64; 3] = [1, 3, 5];
/// Concurrent clients measured.
pub const CLIENTS: [u64; 5] = [1, 64, 256, 1_000, 4_000];
/// Virtual time that passes per round while waiting for a leader.
pub const ELECTION_ROUND_MS: Millis = 50;
/// Rounds waited for a leader before giving up.
pub const ELECTION_ROUNDS_MAX: u64 = 1_000;
/// Virtual time that passes when a round commits nothing (heartbeats,
/// retransmits).
pub const IDLE_TICK_MS: Millis = 10;
/// Consecutive rounds without a commit before a run gives up.
pub const IDLE_TICKS_MAX: u64 = 10_000;
/// Readys carried out plus messages delivered in one pump before the
/// cluster is declared livelocked.
pub const PUMP_STEPS_MAX: u64 = 100_000_000;

/// Why the bench cluster could not go on.
#[derive(Debug, Error)]
pub enum BenchError {
    /// No leader emerged.
    #[error("no leader after {rounds} election rounds")]
    NoLeader {
        /// Rounds waited.
        rounds: u64,
    },
    /// The leader stopped leading during a run (the bench has no faults,
    /// so this is a protocol bug or a config that times out under load).
    #[error("the leader lost its leadership")]
    LeaderLost,
    /// The leader refused a proposal.
    #[error("proposal refused: {0}")]
    Refused(ProposeError),
    /// Nothing committed for [`IDLE_TICKS_MAX`] rounds, or a pump did not
    /// quiesce within [`PUMP_STEPS_MAX`] steps.
    #[error("stalled: {0}")]
    Stalled(&'static str),
}

/// A node's durable slots, from `start`.
struct SlotLog {
    slots: VecDeque<Option<Entry>>,
    start: u64,
}

impl SlotLog {
    fn store(&mut self, e: Entry) {
        let Some(pos) = e.index().0.checked_sub(self.start) else {
            return;
        };
        let Ok(pos) = usize::try_from(pos) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(pos) {
            *slot = Some(e);
        } else {
            self.slots.resize(pos, None);
            self.slots.push_back(Some(e));
        }
    }

    fn truncate_from(&mut self, index: LogIndex) {
        let keep = index.0.saturating_sub(self.start);
        self.slots
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }

    fn purge_to(&mut self, index: LogIndex) {
        let drop = (index.0 + 1).saturating_sub(self.start);
        let drop = usize::try_from(drop).unwrap_or(usize::MAX);
        self.slots.drain(..drop.min(self.slots.len()));
        self.start = self.start.max(index.0 + 1);
    }

    fn reset_after(&mut self, index: LogIndex) {
        self.slots.clear();
        self.start = index.0 + 1;
    }
}

struct BenchNode<C> {
    proto: C,
    log: SlotLog,
    applied: Option<LogId>,
    since_snapshot: u64,
    membership: Membership,
}

/// `members` nodes of one protocol in one process, on one thread.
pub struct ProposeCluster<C: Consensus> {
    nodes: Vec<BenchNode<C>>,
    queue: VecDeque<(NodeId, NodeId, C::Message)>,
    now_ms: Millis,
    leader: usize,
}

impl<C: Consensus> ProposeCluster<C> {
    /// Builds nodes `n1..=n{members}` with `build(id, initial membership)`
    /// and waits until one leads.
    pub fn new(
        members: u64,
        mut build: impl FnMut(NodeId, &Membership) -> C,
    ) -> Result<Self, BenchError> {
        let m = Membership::new((1..=members).map(NodeId));
        let nodes = (1..=members)
            .map(|id| BenchNode {
                proto: build(NodeId(id), &m),
                log: SlotLog {
                    slots: VecDeque::new(),
                    start: 1,
                },
                applied: None,
                since_snapshot: 0,
                membership: m.clone(),
            })
            .collect();
        let mut c = Self {
            nodes,
            queue: VecDeque::new(),
            now_ms: 0,
            leader: 0,
        };
        c.tick_all();
        for _ in 0..ELECTION_ROUNDS_MAX {
            c.now_ms += ELECTION_ROUND_MS;
            c.tick_all();
            c.pump(&mut |_| {})?;
            // A pump runs until the cluster is idle, so a leader found
            // here has finished its election (Raft: its no-op is
            // committed; Paxos: phase 1 is done).
            if let Some(l) = c.find_leader() {
                c.leader = l;
                return Ok(c);
            }
        }
        Err(BenchError::NoLeader {
            rounds: ELECTION_ROUNDS_MAX,
        })
    }

    fn find_leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.proto.status().role == Role::Leader)
    }

    fn tick_all(&mut self) {
        let now = self.now_ms;
        for n in &mut self.nodes {
            n.proto.tick(now);
        }
    }

    /// Carries out one Ready of node `i`; returns the entries it applied.
    fn carry_out(&mut self, i: usize, rd: Ready<C::Message>) -> u64 {
        let n = &mut self.nodes[i];
        let from = n.proto.id();
        for m in rd.messages {
            self.queue.push_back((from, m.to, m.msg));
        }
        if let Some(s) = &rd.snapshot {
            n.log.reset_after(s.last_log_id.index);
        }
        if let Some(t) = rd.truncate_from {
            n.log.truncate_from(t);
        }
        for e in rd.entries {
            n.log.store(e);
        }
        if let Some(p) = rd.purge_to {
            n.log.purge_to(p);
        }
        for m in rd.persisted_messages {
            self.queue.push_back((from, m.to, m.msg));
        }
        let applied = rd.committed.len() as u64;
        if let Some(e) = rd.committed.last() {
            n.applied = Some(e.log_id);
            n.proto.applied(e.index());
        }
        std::hint::black_box(&rd.committed);
        n.proto.advance(rd.number);
        n.since_snapshot += applied;
        if n.since_snapshot >= SNAPSHOT_EVERY_ENTRIES
            && let Some(last_log_id) = n.applied
        {
            n.since_snapshot = 0;
            n.proto.snapshot_built(SnapshotMeta {
                last_log_id,
                membership: n.membership.clone(),
            });
        }
        applied
    }

    /// Carries out Readys and delivers messages until the cluster is idle;
    /// `on_leader_apply` sees the number of entries the leader applied.
    fn pump(&mut self, on_leader_apply: &mut dyn FnMut(u64)) -> Result<(), BenchError> {
        let mut steps = 0u64;
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                while self.nodes[i].proto.has_ready() {
                    busy = true;
                    steps += 1;
                    let rd = self.nodes[i].proto.ready();
                    let applied = self.carry_out(i, rd);
                    if i == self.leader {
                        on_leader_apply(applied);
                    }
                }
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                busy = true;
                steps += 1;
                let idx = usize::try_from(to.0.wrapping_sub(1)).unwrap_or(usize::MAX);
                if let Some(n) = self.nodes.get_mut(idx) {
                    n.proto.step(from, msg);
                }
            }
            if !busy {
                return Ok(());
            }
            if steps > PUMP_STEPS_MAX {
                return Err(BenchError::Stalled("a pump did not quiesce"));
            }
        }
    }

    /// Commits `ops` proposals (as counted by the leader's applied entries)
    /// with `clients` outstanding at a time.
    pub fn run(&mut self, clients: u64, ops: u64) -> Result<(), BenchError> {
        if self.nodes[self.leader].proto.status().role != Role::Leader {
            return Err(BenchError::LeaderLost);
        }
        let (mut issued, mut done, mut idle) = (0u64, 0u64, 0u64);
        while done < ops {
            // Every client without an outstanding proposal proposes.
            while issued - done.min(issued) < clients && issued < ops {
                self.nodes[self.leader]
                    .proto
                    .propose(Bytes::new())
                    .map_err(BenchError::Refused)?;
                issued += 1;
            }
            let mut completed = 0;
            self.pump(&mut |n| completed += n)?;
            done += completed;
            if completed == 0 {
                idle += 1;
                if idle > IDLE_TICKS_MAX {
                    return Err(BenchError::Stalled("nothing committed"));
                }
                // Nothing moved: let time pass (heartbeats, retransmits).
                self.now_ms += IDLE_TICK_MS;
                self.tick_all();
            } else {
                idle = 0;
            }
        }
        Ok(())
    }
}

/// Environment variable choosing the clock [`criterion_propose`] measures
/// with: unset or `wall` for elapsed time, `cpu` for the bench thread's
/// on-CPU time (from `/proc/thread-self/schedstat`, Linux only). On a
/// machine shared with other work, CPU time takes out most of the time the
/// bench spends waiting for a core; caches and memory bandwidth stay
/// shared, so it is less noisy, not noise-free.
pub const CLOCK_ENV: &str = "HA_BENCH_CLOCK";

/// The clock a measurement uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchClock {
    /// Elapsed (wall-clock) time.
    Wall,
    /// The calling thread's on-CPU time.
    ThreadCpu,
}

impl BenchClock {
    /// Reads [`CLOCK_ENV`]; an unknown value, or `cpu` where the thread's
    /// CPU time cannot be read, is an error naming the problem.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(CLOCK_ENV).as_deref() {
            Err(_) | Ok("wall") => Ok(BenchClock::Wall),
            Ok("cpu") => match thread_cpu_ns() {
                Some(_) => Ok(BenchClock::ThreadCpu),
                None => Err(format!(
                    "{CLOCK_ENV}=cpu: cannot read /proc/thread-self/schedstat"
                )),
            },
            Ok(other) => Err(format!("{CLOCK_ENV}={other:?}: expected `wall` or `cpu`")),
        }
    }

    /// Runs `f` and returns how long it took on this clock (`None` if the
    /// CPU clock could not be read).
    pub fn measure(self, f: impl FnOnce()) -> Option<std::time::Duration> {
        match self {
            BenchClock::Wall => {
                let t = std::time::Instant::now();
                f();
                Some(t.elapsed())
            }
            BenchClock::ThreadCpu => {
                let before = thread_cpu_ns()?;
                f();
                let after = thread_cpu_ns()?;
                Some(std::time::Duration::from_nanos(
                    after.saturating_sub(before),
                ))
            }
        }
    }
}

/// The calling thread's on-CPU time in nanoseconds (first field of
/// `/proc/thread-self/schedstat`), `None` where that file is missing or
/// unreadable.
pub fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// The whole criterion bench (group `propose`, one benchmark per
/// [`MEMBERS`] × [`CLIENTS`] point, ids `members_M/clients_C`): nodes come
/// from `build(id, initial membership)`, time is measured on the clock
/// [`CLOCK_ENV`] names. A cluster that cannot run, or a bad clock setting,
/// panics the bench with the reason.
#[cfg(feature = "bench")]
pub fn criterion_propose<C: Consensus>(
    c: &mut criterion::Criterion,
    build: impl Fn(NodeId, &Membership) -> C,
) {
    use criterion::{BenchmarkId, Throughput};
    use std::time::Duration;

    let clock = BenchClock::from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("propose");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(OPS_PER_ITERATION));
    for members in MEMBERS {
        for clients in CLIENTS {
            let id = BenchmarkId::new(format!("members_{members}"), format!("clients_{clients}"));
            g.bench_with_input(id, &(members, clients), |b, &(members, clients)| {
                let mut cluster = ProposeCluster::new(members, &build)
                    .unwrap_or_else(|e| panic!("{members} members: {e}"));
                b.iter_custom(|iters| {
                    let run = || {
                        for _ in 0..iters {
                            if let Err(e) = cluster.run(clients, OPS_PER_ITERATION) {
                                panic!("{members} members, {clients} clients: {e}");
                            }
                        }
                    };
                    clock
                        .measure(run)
                        .unwrap_or_else(|| panic!("the {clock:?} clock became unreadable"))
                });
            });
        }
    }
    g.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryPayload, Term};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId {
                term: Term(1),
                index: LogIndex(index),
            },
            payload: EntryPayload::Normal(Bytes::new()),
        }
    }

    fn held(log: &SlotLog) -> Vec<u64> {
        log.slots.iter().flatten().map(|e| e.index().0).collect()
    }

    #[test]
    fn slot_log_takes_slots_out_of_order_truncates_and_purges() {
        let mut log = SlotLog {
            slots: VecDeque::new(),
            start: 1,
        };
        log.store(entry(3));
        log.store(entry(1));
        assert_eq!(held(&log), [1, 3]);
        assert_eq!(log.slots.len(), 3, "slot 2 is a gap");
        log.store(entry(2));
        log.store(entry(4));
        log.truncate_from(LogIndex(4));
        assert_eq!(held(&log), [1, 2, 3]);
        log.purge_to(LogIndex(2));
        assert_eq!((held(&log), log.start), (vec![3], 3));
        log.store(entry(2)); // below the start: ignored
        assert_eq!(held(&log), [3]);
        log.reset_after(LogIndex(10));
        assert!(log.slots.is_empty());
        assert_eq!(log.start, 11);
    }

    #[test]
    fn a_run_commits_the_ops_asked_for_and_snapshots_bound_the_log() {
        use crate::solo::{Solo, SoloConfig};
        let mut c = ProposeCluster::new(1, |id, _m| {
            Solo::new(SoloConfig::new(id), Default::default()).unwrap()
        })
        .unwrap();
        let before = c.nodes[0].proto.status().commit;
        let ops = SNAPSHOT_EVERY_ENTRIES + 500;
        c.run(64, ops).unwrap();
        let after = c.nodes[0].proto.status().commit;
        assert!(after.0 >= before.0 + ops, "{before:?} -> {after:?}");
        assert!(c.nodes[0].since_snapshot < SNAPSHOT_EVERY_ENTRIES);
    }

    #[test]
    fn the_cpu_clock_counts_work_not_sleep() {
        let Some(_) = thread_cpu_ns() else {
            return; // not Linux: nothing to check
        };
        let slept = BenchClock::ThreadCpu
            .measure(|| std::thread::sleep(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(slept < std::time::Duration::from_millis(25), "{slept:?}");
        let wall = BenchClock::Wall
            .measure(|| std::thread::sleep(std::time::Duration::from_millis(20)))
            .unwrap();
        assert!(wall >= std::time::Duration::from_millis(20));
    }
}
