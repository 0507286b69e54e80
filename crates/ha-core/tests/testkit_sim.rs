//! Acceptance tests of the simulator, run on two toy protocols kept here:
//!
//! * `Toy { broken: false }` — a single static leader (n1) with synchronous
//!   quorum replication: it sends an entry to followers only once the entry
//!   is durable on its own disk, followers acknowledge only durable entries,
//!   and an entry commits once a quorum acknowledged it. Correct (but never
//!   available while n1 is down).
//! * `Toy { broken: true }` — the same leader "optimised" to acknowledge a
//!   proposal at once and write it to disk lazily on its next tick: it
//!   acknowledges before any quorum (even itself) has the entry.
//!
//! * `Toy { follower_reads: true }` — followers answer `read_index` from
//!   their own commit index instead of sending clients to the leader: stale
//!   reads that no log invariant sees, only the history.
//!
//! The broken one must be caught within 1,000 seeds; the correct one must
//! pass 10,000 seeds. A seed takes ~50 ms in an unoptimised test build on
//! the shared 2-core machine, so the default run does 1,000 seeds (~1 min
//! of CPU) and the full acceptance run is
//! `HA_SIM_SEEDS=10000 cargo test --release -p ha-core --features testkit --test testkit_sim`.
#![cfg(feature = "testkit")]

use std::collections::BTreeMap;

use bytes::Bytes;
use ha_core::consensus::{
    Consensus, MembershipChange, Outbound, ProposeError, ReadCtx, ReadState, Ready, ReadyNumber,
    Recovered, Role, SnapshotSend, Status,
};
use ha_core::testkit::{
    Checks, Delay, FailureKind, Fault, Harness, NemesisConfig, PartitionSpec, ScheduledFault,
    SimConfig, TraceConfig,
};
use ha_core::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Millis, NodeId, SnapshotMeta, Term,
};
use serde::{Deserialize, Serialize};

const LEADER: NodeId = NodeId(1);
/// Entries per Append message.
const APPEND_ENTRIES_MAX: usize = 64;
/// Leader retransmission / heartbeat interval.
const HEARTBEAT_MS: Millis = 30;

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ToyMsg {
    /// Entries after `prev` and the leader's commit index.
    Append {
        prev: LogIndex,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    /// The sender durably holds every entry up to `last`.
    Ack { last: LogIndex },
    /// Header of a snapshot transfer (the data travels beside it).
    Snapshot { meta: SnapshotMeta },
}

struct Toy {
    id: NodeId,
    members: Membership,
    broken: bool,
    follower_reads: bool,
    /// Entries after `base`.
    log: Vec<Entry>,
    /// Index covered by the latest snapshot (built or installed).
    base: SnapshotMeta,
    /// Snapshot to install with the next Ready.
    install: Option<SnapshotMeta>,
    /// Prefix to purge with the next Ready.
    purge: Option<LogIndex>,
    snapshots_out: Vec<SnapshotSend<ToyMsg>>,
    /// Last index durable on this node's disk.
    persisted: LogIndex,
    commit: LogIndex,
    /// Last index handed out in `Ready::committed`.
    emitted: LogIndex,
    acked: BTreeMap<NodeId, LogIndex>,
    msgs: Vec<Outbound<ToyMsg>>,
    pmsgs: Vec<Outbound<ToyMsg>>,
    unwritten: Vec<Entry>,
    /// Broken mode: entries acknowledged but not yet handed out for writing.
    lazy: Vec<Entry>,
    hard_state: Option<HardState>,
    reads: Vec<ReadState>,
    number: ReadyNumber,
    /// `(ready number, last index it writes)` while a Ready is out.
    out: Option<(ReadyNumber, LogIndex)>,
    last_heartbeat: Millis,
}

impl Toy {
    fn new(id: NodeId, initial: &Membership, rec: Recovered, broken: bool) -> Self {
        let base = rec.snapshot.unwrap_or_default();
        let b = base.last_log_id.index;
        let log: Vec<Entry> = rec.entries.into_iter().filter(|e| e.index() > b).collect();
        let last = log.last().map_or(b, |e| e.index());
        let commit = rec.hard_state.commit.min(last).max(b);
        Toy {
            id,
            members: initial.clone(),
            broken,
            follower_reads: false,
            log,
            base,
            install: None,
            purge: None,
            snapshots_out: Vec::new(),
            persisted: last,
            commit,
            emitted: b,
            acked: BTreeMap::new(),
            msgs: Vec::new(),
            pmsgs: Vec::new(),
            unwritten: Vec::new(),
            lazy: Vec::new(),
            hard_state: None,
            reads: Vec::new(),
            number: 0,
            out: None,
            last_heartbeat: 0,
        }
    }

    fn last(&self) -> LogIndex {
        self.log
            .last()
            .map_or(self.base.last_log_id.index, |e| e.index())
    }

    fn entries_after(&self, after: LogIndex, upto: LogIndex) -> Vec<Entry> {
        self.log
            .iter()
            .filter(|e| e.index() > after && e.index() <= upto)
            .take(APPEND_ENTRIES_MAX)
            .cloned()
            .collect()
    }

    fn recompute_commit(&mut self) {
        let me = self.id;
        let persisted = self.persisted;
        let acked = &self.acked;
        let q = LogIndex(self.members.quorum_min(|n| {
            if n == me {
                persisted.0
            } else {
                acked.get(&n).map_or(0, |i| i.0)
            }
        }));
        if q > self.commit {
            self.commit = q;
            self.hard_state = Some(HardState {
                term: Term(1),
                vote: None,
                commit: q,
            });
        }
    }

    fn replicate(&mut self, to_persisted_msgs: bool) {
        let peers: Vec<NodeId> = self
            .members
            .voters
            .iter()
            .copied()
            .filter(|n| *n != self.id)
            .collect();
        for p in peers {
            let prev = self.acked.get(&p).copied().unwrap_or(LogIndex(0));
            if prev < self.base.last_log_id.index {
                // The entries it needs were compacted: send the snapshot.
                self.snapshots_out.push(SnapshotSend {
                    to: p,
                    meta: self.base.clone(),
                    header: ToyMsg::Snapshot {
                        meta: self.base.clone(),
                    },
                });
                continue;
            }
            let entries = self.entries_after(prev, self.persisted);
            let m = Outbound {
                to: p,
                msg: ToyMsg::Append {
                    prev,
                    entries,
                    commit: self.commit,
                },
            };
            if to_persisted_msgs {
                self.pmsgs.push(m)
            } else {
                self.msgs.push(m)
            }
        }
    }

    fn committable(&self) -> LogIndex {
        // Only what is (or, with this Ready, will be) on this node's disk.
        let written = self
            .unwritten
            .last()
            .map_or(self.persisted, |e| e.index().max(self.persisted));
        if self.broken {
            self.commit
        } else {
            self.commit.min(written)
        }
    }
}

impl Consensus for Toy {
    type Message = ToyMsg;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self, now: Millis) {
        if self.id != LEADER || now < self.last_heartbeat + HEARTBEAT_MS {
            return;
        }
        self.last_heartbeat = now;
        // Broken mode: the lazily batched entries finally go to disk.
        self.unwritten.append(&mut self.lazy);
        self.replicate(false);
    }

    fn step(&mut self, from: NodeId, msg: ToyMsg) {
        match msg {
            ToyMsg::Append {
                prev,
                entries,
                commit,
            } => {
                if self.id == LEADER || from != LEADER {
                    return;
                }
                if prev <= self.last() {
                    let mut appended = false;
                    for e in entries {
                        if e.index() == self.last().next() {
                            self.log.push(e.clone());
                            self.unwritten.push(e);
                            appended = true;
                        }
                    }
                    if appended {
                        let last = self.last();
                        self.pmsgs.push(Outbound {
                            to: LEADER,
                            msg: ToyMsg::Ack { last },
                        });
                    }
                }
                let c = commit.min(self.last());
                if c > self.commit {
                    self.commit = c;
                }
                self.msgs.push(Outbound {
                    to: LEADER,
                    msg: ToyMsg::Ack {
                        last: self.persisted,
                    },
                });
            }
            ToyMsg::Snapshot { meta } => {
                if self.id == LEADER || from != LEADER || meta.last_log_id.index <= self.last() {
                    return;
                }
                let idx = meta.last_log_id.index;
                self.log.clear();
                self.unwritten.clear();
                self.base = meta.clone();
                self.install = Some(meta);
                self.commit = self.commit.max(idx);
                self.emitted = self.emitted.max(idx);
                self.pmsgs.push(Outbound {
                    to: LEADER,
                    msg: ToyMsg::Ack { last: idx },
                });
            }
            ToyMsg::Ack { last } => {
                if self.id != LEADER || !self.members.is_voter(from) {
                    return;
                }
                let a = self.acked.entry(from).or_default();
                *a = (*a).max(last);
                self.recompute_commit();
            }
        }
    }

    fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        if self.id != LEADER {
            return Err(ProposeError::NotLeader {
                leader: Some(LEADER),
            });
        }
        let index = self
            .last()
            .next()
            .max(self.lazy.last().map_or(LogIndex(0), |e| e.index().next()));
        let e = Entry {
            log_id: LogId {
                term: Term(1),
                index,
            },
            payload: EntryPayload::Normal(data),
        };
        self.log.push(e.clone());
        if self.broken {
            // "Optimisation": acknowledge now, write later.
            self.lazy.push(e);
            self.commit = index;
            self.hard_state = Some(HardState {
                term: Term(1),
                vote: None,
                commit: index,
            });
        } else {
            self.unwritten.push(e);
        }
        Ok(LogId {
            term: Term(1),
            index,
        })
    }

    fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError> {
        if self.id != LEADER && !self.follower_reads {
            return Err(ProposeError::NotLeader {
                leader: Some(LEADER),
            });
        }
        self.reads.push(ReadState {
            ctx,
            index: self.commit,
        });
        Ok(())
    }

    fn change_membership(&mut self, _change: MembershipChange) -> Result<LogId, ProposeError> {
        Err(ProposeError::Invalid(
            "the toy has a static membership".into(),
        ))
    }

    fn transfer_leader(&mut self, _to: NodeId) -> Result<(), ProposeError> {
        Err(ProposeError::Invalid("the toy has a static leader".into()))
    }

    fn has_ready(&self) -> bool {
        self.out.is_none()
            && (!self.msgs.is_empty()
                || !self.pmsgs.is_empty()
                || !self.unwritten.is_empty()
                || self.hard_state.is_some()
                || !self.reads.is_empty()
                || self.install.is_some()
                || self.purge.is_some()
                || !self.snapshots_out.is_empty()
                || self.committable() > self.emitted)
    }

    fn ready(&mut self) -> Ready<ToyMsg> {
        self.number += 1;
        let mut rd = Ready::empty(self.number);
        let upto = self.committable();
        rd.committed = self
            .log
            .iter()
            .filter(|e| e.index() > self.emitted && e.index() <= upto)
            .cloned()
            .collect();
        self.emitted = self.emitted.max(upto);
        rd.messages = std::mem::take(&mut self.msgs);
        rd.persisted_messages = std::mem::take(&mut self.pmsgs);
        rd.entries = std::mem::take(&mut self.unwritten);
        rd.hard_state = self.hard_state.take();
        rd.reads = std::mem::take(&mut self.reads);
        rd.snapshot = self.install.take();
        rd.purge_to = self.purge.take();
        rd.send_snapshots = std::mem::take(&mut self.snapshots_out);
        let mut writes_to = rd
            .entries
            .last()
            .map_or(self.persisted, |e| e.index().max(self.persisted));
        if let Some(s) = &rd.snapshot {
            writes_to = writes_to.max(s.last_log_id.index);
        }
        self.out = Some((self.number, writes_to));
        if self.id == LEADER && !rd.entries.is_empty() {
            // Tell followers once this write is durable here.
            let wrote = rd.entries.clone();
            for p in self
                .members
                .voters
                .iter()
                .copied()
                .filter(|n| *n != self.id)
            {
                let prev = wrote[0].index().prev();
                rd.persisted_messages.push(Outbound {
                    to: p,
                    msg: ToyMsg::Append {
                        prev,
                        entries: wrote.iter().take(APPEND_ENTRIES_MAX).cloned().collect(),
                        commit: self.commit,
                    },
                });
            }
        }
        rd
    }

    fn advance(&mut self, number: ReadyNumber) {
        if let Some((n, to)) = self.out
            && n == number
        {
            self.out = None;
            self.persisted = self.persisted.max(to);
            if self.id == LEADER {
                self.recompute_commit();
            }
        }
    }

    fn applied(&mut self, _index: LogIndex) {}

    fn snapshot_built(&mut self, meta: SnapshotMeta) {
        let idx = meta.last_log_id.index;
        if idx <= self.base.last_log_id.index || idx > self.persisted {
            return;
        }
        self.log.retain(|e| e.index() > idx);
        self.base = meta;
        self.purge = Some(idx);
    }

    fn status(&self) -> Status {
        let leading = self.id == LEADER;
        Status {
            id: self.id,
            role: if leading {
                Role::Leader
            } else {
                Role::Follower
            },
            term: Term(1),
            leader: Some(LEADER),
            commit: self.commit,
            last_index: self.last(),
            membership: self.members.clone(),
        }
    }
}

fn correct(id: NodeId, initial: &Membership, rec: Recovered, _seed: u64) -> Toy {
    Toy::new(id, initial, rec, false)
}

fn stale_reader(id: NodeId, initial: &Membership, rec: Recovered, _seed: u64) -> Toy {
    Toy {
        follower_reads: true,
        ..Toy::new(id, initial, rec, false)
    }
}

fn broken(id: NodeId, initial: &Membership, rec: Recovered, _seed: u64) -> Toy {
    Toy::new(id, initial, rec, true)
}

/// A short, fault-heavy run: each seed is cheap so thousands fit a test.
fn short_config() -> SimConfig {
    SimConfig {
        duration_ms: 600,
        settle_ms: 400,
        nemesis: NemesisConfig {
            interval: Delay::Uniform {
                min_ms: 40,
                max_ms: 150,
            },
            fault_duration: Delay::Uniform {
                min_ms: 20,
                max_ms: 200,
            },
            ..NemesisConfig::default()
        },
        clients: ha_core::testkit::ClientConfig {
            op_timeout_ms: 150,
            ..Default::default()
        },
        ..SimConfig::default()
    }
}

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("HA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn correct_toy_passes_many_seeds() {
    // 10,000 seeds is the acceptance bar (HA_SIM_SEEDS=10000); the default
    // is smaller to fit the debug test budget, see the module docs.
    let seeds = seeds_from_env(1_000);
    let summary = Harness::new(correct)
        .run_seeds(0..seeds, &short_config())
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(summary.runs, seeds);
    assert!(
        summary.ops_completed > seeds * 5,
        "too little work done: {summary:?}"
    );
    assert!(
        summary.crashes > seeds / 10,
        "the nemesis barely crashed anything: {summary:?}"
    );
}

#[test]
fn correct_toy_with_snapshots_passes() {
    // Snapshots every few entries: followers that fall behind get the
    // leader's snapshot streamed, staged and installed; restarts load it.
    let cfg = SimConfig {
        snapshot_every_entries: Some(8),
        ..short_config()
    };
    let h = Harness::new(correct);
    let mut sent = 0;
    for seed in 0..seeds_from_env(300) {
        let r = h.run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        sent += r.snapshots_sent;
    }
    assert!(sent > 0, "no snapshot was ever transferred");
}

#[test]
fn broken_toy_is_caught_within_1000_seeds() {
    let h = Harness::new(broken);
    let cfg = short_config();
    let failure = (0..1_000).find_map(|seed| h.run(seed, &cfg).err());
    let f = failure.expect("the broken toy survived 1,000 seeds");
    assert!(matches!(f.kind, FailureKind::Invariant { .. }), "{f}");
    assert!(!f.trace.is_empty());
    let shown = f.to_string();
    assert!(shown.contains(&format!("seed {}", f.seed)));
    // Display keeps trace lines short; the file keeps them whole.
    let limit = ha_core::testkit::sim::FAILURE_DISPLAY_LINE_CHARS_MAX + 8;
    assert!(
        shown.lines().skip(3).all(|l| l.chars().count() <= limit),
        "{shown}"
    );
}

#[test]
fn stale_follower_reads_are_caught_by_the_checker() {
    let h = Harness::new(stale_reader);
    let cfg = short_config();
    let f = (0..1_000)
        .find_map(|seed| h.run(seed, &cfg).err())
        .expect("stale reads not caught within 1,000 seeds");
    match &f.kind {
        FailureKind::Linearizability(
            ha_core::testkit::linearizability::CheckError::NotLinearizable(ce),
        ) => {
            // The counter-example names a read.
            assert!(ce.to_string().contains("get "), "{ce}");
        }
        other => panic!("caught for the wrong reason: {other}\n{f}"),
    }
}

#[test]
fn broken_toy_is_caught_by_the_history_alone() {
    // With the durability invariant off, the lost acknowledged writes must
    // still show: as a state-machine-safety violation (a reused index) or
    // a non-linearizable history.
    let h = Harness::new(broken);
    let cfg = SimConfig {
        checks: Checks {
            committed_durable: false,
            ..Checks::default()
        },
        ..short_config()
    };
    let f = (0..1_000)
        .find_map(|seed| h.run(seed, &cfg).err())
        .expect("not caught within 1,000 seeds");
    match &f.kind {
        FailureKind::Linearizability(_) => {}
        FailureKind::Invariant { name, .. } if name == "state-machine-safety" => {}
        other => panic!("caught for the wrong reason: {other}\n{f}"),
    }
}

#[test]
fn same_seed_gives_byte_identical_trace() {
    let cfg = SimConfig {
        trace: TraceConfig {
            always: true,
            ..TraceConfig::default()
        },
        ..short_config()
    };
    let h = Harness::new(correct);
    for seed in [1, 7, 42] {
        let a = h.run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        let b = h.run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        let (ta, tb) = (
            a.trace.clone().unwrap_or_default().join("\n"),
            b.trace.clone().unwrap_or_default().join("\n"),
        );
        assert!(ta.len() > 1_000, "trace suspiciously short");
        assert_eq!(ta.as_bytes(), tb.as_bytes(), "seed {seed} diverged");
        assert_eq!(a, b);
    }
    // And different seeds give different runs.
    let x = h.run(1, &cfg).unwrap_or_else(|f| panic!("{f}"));
    let y = h.run(2, &cfg).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(x.trace, y.trace);
}

#[test]
fn scheduled_faults_happen_when_asked() {
    let cfg = SimConfig {
        nemesis: NemesisConfig {
            enabled: false,
            ..NemesisConfig::default()
        },
        schedule: vec![
            ScheduledFault {
                at_ms: 100,
                fault: Fault::Partition(PartitionSpec::IsolateLeader),
            },
            ScheduledFault {
                at_ms: 200,
                fault: Fault::Heal,
            },
            ScheduledFault {
                at_ms: 250,
                fault: Fault::CrashLeader,
            },
            ScheduledFault {
                at_ms: 350,
                fault: Fault::Restart(LEADER),
            },
            ScheduledFault {
                at_ms: 400,
                fault: Fault::Pause(NodeId(2)),
            },
            ScheduledFault {
                at_ms: 450,
                fault: Fault::Resume(NodeId(2)),
            },
            ScheduledFault {
                at_ms: 460,
                fault: Fault::Partition(PartitionSpec::Bridge),
            },
            ScheduledFault {
                at_ms: 500,
                fault: Fault::Partition(PartitionSpec::OneWay {
                    from: vec![NodeId(2)],
                    to: vec![LEADER],
                }),
            },
        ],
        trace: TraceConfig {
            always: true,
            ..TraceConfig::default()
        },
        ..short_config()
    };
    let r = Harness::new(correct)
        .run(3, &cfg)
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.crashes, 1);
    assert_eq!(r.pauses, 1);
    assert_eq!(r.partitions, 3);
    let trace = r.trace.unwrap_or_default().join("\n");
    assert!(trace.contains("n1 restarts"), "restart not traced");
    assert!(
        trace.contains("n1↛n2") && trace.contains("n2↛n1"),
        "isolation not traced"
    );
    assert!(r.ops_completed > 10, "{} ops completed", r.ops_completed);
}

#[test]
fn extra_invariants_run_after_every_step() {
    // A protocol-specific rule: followers never claim a commit beyond their log.
    let h = Harness::new(correct).with_invariant("commit-within-log", |view| {
        for n in &view.nodes {
            if let Some(p) = n.protocol {
                let s = p.status();
                if s.commit > s.last_index {
                    return Err(format!(
                        "{:?} commit {:?} beyond last {:?}",
                        n.id, s.commit, s.last_index
                    ));
                }
            }
        }
        Ok(())
    });
    h.run_seeds(0..20, &short_config())
        .unwrap_or_else(|f| panic!("{f}"));
    // And a rule that cannot hold is reported with its name.
    let h = Harness::new(correct).with_invariant("no-leader-ever", |view| {
        if view
            .nodes
            .iter()
            .any(|n| n.protocol.is_some_and(|p| p.status().role == Role::Leader))
        {
            Err("a leader exists".into())
        } else {
            Ok(())
        }
    });
    let f = h.run(0, &short_config()).expect_err("invariant must fire");
    assert!(
        matches!(&f.kind, FailureKind::Invariant { name, .. } if name == "no-leader-ever"),
        "{f}"
    );
}

#[test]
fn failure_trace_is_written_when_asked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = SimConfig {
        trace: TraceConfig {
            dir: Some(dir.path().to_path_buf()),
            ..TraceConfig::default()
        },
        ..short_config()
    };
    let h = Harness::new(broken);
    let f = (0..1_000)
        .find_map(|seed| h.run(seed, &cfg).err())
        .expect("broken toy caught");
    let path = f.trace_file.clone().expect("trace file written");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    assert!(text.starts_with(&format!("# seed {}", f.seed)));
    assert!(text.lines().count() > 10);
}

#[test]
fn membership_and_transfer_events_reach_the_leader() {
    // The toy refuses both; what is tested is that the scheduled events are
    // delivered to the current leader and their answers traced.
    let cfg = SimConfig {
        nemesis: NemesisConfig {
            enabled: false,
            ..NemesisConfig::default()
        },
        schedule: vec![
            ScheduledFault {
                at_ms: 100,
                fault: Fault::ChangeMembership(MembershipChange::AddLearner(NodeId(4))),
            },
            ScheduledFault {
                at_ms: 120,
                fault: Fault::TransferLeader(NodeId(2)),
            },
        ],
        spare_nodes: 1,
        trace: TraceConfig {
            always: true,
            ..TraceConfig::default()
        },
        ..short_config()
    };
    let r = Harness::new(correct)
        .run(11, &cfg)
        .unwrap_or_else(|f| panic!("{f}"));
    let trace = r.trace.unwrap_or_default().join("\n");
    assert!(
        trace.contains("n1 change_membership → Some(Err(Invalid("),
        "{trace}"
    );
    assert!(trace.contains("n1 transfer_leader(n2) → Some(Err(Invalid("));
}

#[test]
fn isolated_leader_stalls_writes_until_healed() {
    // n1 cut off from both followers for 300 ms: nothing commits, clients'
    // operations time out with unknown outcome, and all is well after heal.
    let cfg = SimConfig {
        nemesis: NemesisConfig {
            enabled: false,
            ..NemesisConfig::default()
        },
        net: ha_core::testkit::NetConfig {
            drop_ppm: 0,
            duplicate_ppm: 0,
            ..Default::default()
        },
        schedule: vec![
            ScheduledFault {
                at_ms: 100,
                fault: Fault::Partition(PartitionSpec::Split(vec![LEADER])),
            },
            ScheduledFault {
                at_ms: 400,
                fault: Fault::Heal,
            },
        ],
        ..short_config()
    };
    let r = Harness::new(correct)
        .run(5, &cfg)
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(
        r.ops_unknown >= 1,
        "operations during the partition must time out: {r:?}"
    );
    assert!(r.ops_completed > 20, "{r:?}");
}

#[test]
fn hostile_network_drops_duplicates_and_reorders_yet_the_correct_toy_passes() {
    let cfg = SimConfig {
        net: ha_core::testkit::NetConfig {
            delay: Delay::LongTail {
                min_ms: 1,
                max_ms: 8,
                tail_ppm: 50_000,
                tail_max_ms: 120,
            },
            drop_ppm: 150_000,
            duplicate_ppm: 150_000,
            reorder_ppm: 200_000,
            reorder_extra_max_ms: 60,
            ..Default::default()
        },
        ..short_config()
    };
    let h = Harness::new(correct);
    let (mut dropped, mut duplicated, mut completed) = (0, 0, 0);
    for seed in 0..30 {
        let r = h.run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        dropped += r.messages_dropped;
        duplicated += r.messages_duplicated;
        completed += r.ops_completed;
    }
    assert!(
        dropped > 100 && duplicated > 100,
        "dropped {dropped}, duplicated {duplicated}"
    );
    assert!(completed > 300, "only {completed} operations completed");
}
