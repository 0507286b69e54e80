//! Configuration of a simulated run: cluster shape, network, disk, clients,
//! faults and checks. Everything is plain data; together with a seed it
//! determines the run.

use std::path::PathBuf;

use crate::consensus::MembershipChange;
use crate::testkit::linearizability::CheckConfig;
use crate::testkit::rng::SimRng;
use crate::types::{GroupId, Millis, NodeId};

/// A random delay distribution, in virtual milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delay {
    /// Always the same.
    Constant(Millis),
    /// Uniform in `min_ms..=max_ms`.
    Uniform {
        /// Shortest delay.
        min_ms: Millis,
        /// Longest delay.
        max_ms: Millis,
    },
    /// Usually uniform in `min_ms..=max_ms`; with probability `tail_ppm`
    /// (parts per million) uniform in `max_ms..=tail_max_ms` instead — the
    /// occasional very late packet or slow fsync.
    LongTail {
        /// Shortest delay.
        min_ms: Millis,
        /// Longest usual delay.
        max_ms: Millis,
        /// Probability of a tail delay, parts per million.
        tail_ppm: u32,
        /// Longest tail delay.
        tail_max_ms: Millis,
    },
}

impl Delay {
    /// Draws one delay.
    pub fn sample(&self, rng: &mut SimRng) -> Millis {
        match *self {
            Delay::Constant(ms) => ms,
            Delay::Uniform { min_ms, max_ms } => rng.range_inclusive(min_ms, max_ms),
            Delay::LongTail {
                min_ms,
                max_ms,
                tail_ppm,
                tail_max_ms,
            } => {
                if rng.chance_ppm(tail_ppm) {
                    rng.range_inclusive(max_ms, tail_max_ms)
                } else {
                    rng.range_inclusive(min_ms, max_ms)
                }
            }
        }
    }
}

/// The simulated network between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// One-way latency of a message.
    pub delay: Delay,
    /// Probability a message is lost, parts per million.
    pub drop_ppm: u32,
    /// Probability a message is delivered twice, parts per million.
    pub duplicate_ppm: u32,
    /// Probability a message gets an extra delay of up to
    /// `reorder_extra_max_ms`, overtaking later ones, parts per million.
    pub reorder_ppm: u32,
    /// Largest extra delay of a reordered message.
    pub reorder_extra_max_ms: Millis,
    /// Most messages in flight at once; more are dropped (and counted).
    pub in_flight_max: usize,
    /// Most messages queued for a paused node; more are dropped. Messages
    /// to a paused node wait (as in a socket buffer) and are delivered in
    /// order when it resumes; messages to a crashed node are lost.
    pub paused_inbox_max: usize,
}

impl NetConfig {
    /// Draws how many copies of one message the network delivers: 0 (lost,
    /// with probability `drop_ppm`), else 2 (duplicated, with probability
    /// `duplicate_ppm`) or 1.
    pub fn sample_copies(&self, rng: &mut SimRng) -> u32 {
        if rng.chance_ppm(self.drop_ppm) {
            0
        } else if rng.chance_ppm(self.duplicate_ppm) {
            2
        } else {
            1
        }
    }

    /// Draws the one-way delay of one message copy: a [`Delay`] sample,
    /// plus 1..=`reorder_extra_max_ms` for a copy reordered (with
    /// probability `reorder_ppm`).
    pub fn sample_delay(&self, rng: &mut SimRng) -> Millis {
        let delay = self.delay.sample(rng);
        if rng.chance_ppm(self.reorder_ppm) {
            delay + rng.range_inclusive(1, self.reorder_extra_max_ms.max(1))
        } else {
            delay
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            delay: Delay::Uniform {
                min_ms: 1,
                max_ms: 10,
            },
            drop_ppm: 10_000,
            duplicate_ppm: 5_000,
            reorder_ppm: 10_000,
            reorder_extra_max_ms: 50,
            in_flight_max: 100_000,
            paused_inbox_max: 10_000,
        }
    }
}

/// The simulated disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Time from issuing a Ready's write to its fsync completing. While it
    /// runs, the Ready's messages are already on the wire (persist and send
    /// overlap); a crash in this window loses the write.
    pub persist_latency: Delay,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            persist_latency: Delay::Uniform {
                min_ms: 0,
                max_ms: 3,
            },
        }
    }
}

/// The simulated clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Number of clients; each has one operation outstanding at a time.
    pub count: u64,
    /// Number of keys (`k0`, `k1`, …); few keys mean more conflicts.
    pub keys: u64,
    /// An operation not answered within this time is recorded with an
    /// unknown outcome and the client moves on.
    pub op_timeout_ms: Millis,
    /// Pause between an answer and the next operation.
    pub think: Delay,
    /// Wait before retrying after a refusal (not the leader, node down).
    pub retry_backoff_ms: Millis,
    /// Share of reads served through `read_index` instead of the log,
    /// parts per million.
    pub read_index_ppm: u32,
    /// Most operations one client issues in a run.
    pub ops_max_per_client: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            count: 3,
            keys: 3,
            op_timeout_ms: 500,
            think: Delay::Uniform {
                min_ms: 0,
                max_ms: 20,
            },
            retry_backoff_ms: 20,
            read_index_ppm: 500_000,
            ops_max_per_client: 10_000,
        }
    }
}

/// How to cut the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionSpec {
    /// These nodes on one side, everyone else on the other (both ways).
    Split(Vec<NodeId>),
    /// Messages from `from` to `to` are lost; the other direction works.
    OneWay {
        /// Senders cut off.
        from: Vec<NodeId>,
        /// Receivers they cannot reach.
        to: Vec<NodeId>,
    },
    /// A random majority and minority, both ways.
    MajorityMinority,
    /// Two halves that only one bridge node connects (it sees both).
    Bridge,
    /// The node currently leading (as its status says) is cut off from all.
    IsolateLeader,
    /// One of the above chosen at random.
    Random,
}

/// Something that happens to the cluster at a given time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the network (replaces the current cut).
    Partition(PartitionSpec),
    /// Restore every link.
    Heal,
    /// Power-fail a node: its protocol and state machine are dropped and its
    /// unsynced writes lost.
    Crash(NodeId),
    /// Crash whichever node currently leads.
    CrashLeader,
    /// Start a crashed node from its synced store.
    Restart(NodeId),
    /// Stop a node's clock and inbox (like SIGSTOP).
    Pause(NodeId),
    /// Pause whichever node currently leads.
    PauseLeader,
    /// Resume a paused node.
    Resume(NodeId),
    /// Ask the current leader for a membership change.
    ChangeMembership(MembershipChange),
    /// Ask the current leader to hand over to this node.
    TransferLeader(NodeId),
}

/// A fault at a fixed virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When.
    pub at_ms: Millis,
    /// What.
    pub fault: Fault,
}

/// The random fault schedule drawn from the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisConfig {
    /// Whether random faults happen at all.
    pub enabled: bool,
    /// Time between random faults.
    pub interval: Delay,
    /// How long a fault lasts before it is undone (heal, restart, resume).
    pub fault_duration: Delay,
    /// Draw partitions.
    pub partitions: bool,
    /// Draw crashes (followed by restarts).
    pub crashes: bool,
    /// Draw pauses (followed by resumes).
    pub pauses: bool,
    /// Draw membership changes (adding spare nodes, promoting, removing).
    pub membership_changes: bool,
    /// Draw leader transfers.
    pub leader_transfers: bool,
    /// Most nodes crashed or paused at once (default: a minority).
    pub max_faulty_nodes: Option<u64>,
}

impl Default for NemesisConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Delay::Uniform {
                min_ms: 100,
                max_ms: 600,
            },
            fault_duration: Delay::Uniform {
                min_ms: 50,
                max_ms: 800,
            },
            partitions: true,
            crashes: true,
            pauses: true,
            membership_changes: false,
            leader_transfers: false,
            max_faulty_nodes: None,
        }
    }
}

/// Which properties are checked. Protocols that do not promise one (Paxos
/// logs have gaps and per-slot ballots) switch it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checks {
    /// At most one node is leader in any one term / ballot.
    pub one_leader_per_term: bool,
    /// Two logs with an entry of the same `LogId` agree on every entry up
    /// to it (also makes state-machine safety compare whole entries, not
    /// only payloads).
    pub log_matching: bool,
    /// A leader of a term newer than every term seen when an entry was
    /// committed holds that entry.
    pub leader_completeness: bool,
    /// A committed entry is held durably by enough nodes that every quorum
    /// of the committed configuration includes one of them — checked when
    /// it is first applied, and again whenever durable state shrinks
    /// (crash, truncation, snapshot install).
    pub committed_durable: bool,
    /// The client history is linearizable.
    pub linearizability: bool,
    /// Once faults are healed, operations complete again.
    pub progress_after_heal: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            one_leader_per_term: true,
            log_matching: true,
            leader_completeness: true,
            committed_durable: true,
            linearizability: true,
            progress_after_heal: true,
        }
    }
}

/// Whether and where to record the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// Record every event and message of every run (costs time). When
    /// false, a failing run is re-run with the same seed to record it.
    pub always: bool,
    /// Most lines kept; older lines are dropped first.
    pub lines_max: usize,
    /// Directory to write a failing run's trace to (also taken from the
    /// `HA_SIM_TRACE_DIR` environment variable when unset).
    pub dir: Option<PathBuf>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            always: false,
            lines_max: 200_000,
            dir: None,
        }
    }
}

/// A whole simulated run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Initial voters, `n1..=n{nodes}`.
    pub nodes: u64,
    /// Extra nodes started outside the configuration, for membership
    /// changes (`n{nodes+1}…`).
    pub spare_nodes: u64,
    /// The group id used for the log store.
    pub group: GroupId,
    /// Length of the faulty phase.
    pub duration_ms: Millis,
    /// After the faulty phase every fault is undone (heal, resume, restart)
    /// and clients go on for this long.
    pub settle_ms: Millis,
    /// Interval between ticks of each node.
    pub tick_interval_ms: Millis,
    /// Network.
    pub net: NetConfig,
    /// Disk.
    pub disk: DiskConfig,
    /// Clients.
    pub clients: ClientConfig,
    /// Random faults.
    pub nemesis: NemesisConfig,
    /// Faults at fixed times (in addition to random ones).
    pub schedule: Vec<ScheduledFault>,
    /// Build a snapshot and report it with `snapshot_built` after this many
    /// entries applied since the last one (`None`: never).
    pub snapshot_every_entries: Option<u64>,
    /// Properties checked.
    pub checks: Checks,
    /// Linearizability checker limits.
    pub checker: CheckConfig,
    /// Trace recording.
    pub trace: TraceConfig,
    /// Most events one run may process (bounds a livelocked run).
    pub events_max: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            spare_nodes: 0,
            group: GroupId(1),
            duration_ms: 3_000,
            settle_ms: 2_000,
            tick_interval_ms: 10,
            net: NetConfig::default(),
            disk: DiskConfig::default(),
            clients: ClientConfig::default(),
            nemesis: NemesisConfig::default(),
            schedule: Vec::new(),
            snapshot_every_entries: None,
            checks: Checks::default(),
            checker: CheckConfig::default(),
            trace: TraceConfig::default(),
            events_max: 5_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_their_ranges() {
        let mut rng = SimRng::new(3);
        let u = Delay::Uniform {
            min_ms: 5,
            max_ms: 9,
        };
        let t = Delay::LongTail {
            min_ms: 1,
            max_ms: 2,
            tail_ppm: 500_000,
            tail_max_ms: 100,
        };
        let mut tail_seen = false;
        for _ in 0..1_000 {
            assert!((5..=9).contains(&u.sample(&mut rng)));
            let d = t.sample(&mut rng);
            assert!((1..=100).contains(&d));
            tail_seen |= d > 2;
        }
        assert!(tail_seen, "a 50% tail never showed in 1,000 draws");
        assert_eq!(Delay::Constant(7).sample(&mut rng), 7);
    }
}
