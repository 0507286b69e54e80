//! The shared simulation suite: one set of scenarios every protocol runs,
//! with the same fault mixes, seed counts, seed ranges and checks, so two
//! protocols that pass it have passed the same thing by construction.
//!
//! A protocol crate describes itself once with [`SuiteProtocol`] (how to
//! build a node, which checks its logs support, an optional local
//! invariant) and instantiates the whole suite in its `tests/sim.rs` with
//! [`sim_suite!`](crate::sim_suite):
//!
//! ```ignore
//! struct MySuite;
//! impl ha_core::testkit::suite::SuiteProtocol for MySuite {
//!     type Protocol = MyProtocol;
//!     fn name(&self) -> &'static str { "mine" } // HA_MINE_SIM_SEEDS, ha-mine
//!     fn build(&self, node: NodeStart<'_>, options: &ProtocolOptions) -> MyProtocol { … }
//! }
//! ha_core::sim_suite!(MySuite);
//! ```
//!
//! # Scenarios
//!
//! [`Scenario::ALL`] — each one a `#[test]` of the same name:
//!
//! | scenario | nodes | faults |
//! |---|---|---|
//! | [`ThreeNodes`](Scenario::ThreeNodes) | 3 | partitions (incl. one-way), crashes/restarts, pauses |
//! | [`FiveNodes`](Scenario::FiveNodes) | 5 | the same |
//! | [`Membership`](Scenario::Membership) | 3 + 2 spare | the same + membership changes + leader transfers |
//! | [`Snapshots`](Scenario::Snapshots) | 3 + 1 spare | the same + membership changes, a snapshot every 15 entries (compaction, catch-up by snapshot), lease reads |
//! | [`Everything`](Scenario::Everything) | 5 + 2 spare | all of the above, a snapshot every 25 entries |
//! | [`AsymmetricLossy`](Scenario::AsymmetricLossy) | 3 | scheduled one-way partitions (leader deaf, leader mute) on a network losing, duplicating and reordering many messages, plus the random faults |
//!
//! Every scenario runs on a network that loses, duplicates and reorders
//! messages, with half the clients' reads going through `read_index`
//! (linearizable reads); every simulated step is checked against the
//! safety invariants of [`Checks`] and the protocol's own invariant, the
//! client history against linearizability, and every run must make
//! progress once its faults are healed.
//!
//! # Seeds
//!
//! `HA_<NAME>_SIM_SEEDS=n` runs `n` seeds *per scenario* (default: each
//! scenario's [`default_seeds`](Scenario::default_seeds)); `HA_<NAME>_SIM_BASE=b`
//! shifts the range. Scenario `s` runs seeds `s.seed_offset() + b ..
//! s.seed_offset() + b + n`, so every scenario has its own seeds and a
//! failing seed is rerun alone with the command the failure prints. A value
//! that is not a whole number (or zero seeds) is an error, not a silent
//! default.

use std::fmt;

use thiserror::Error;

use crate::consensus::{Consensus, Recovered};
use crate::testkit::config::{
    Checks, Delay, Fault, NemesisConfig, NetConfig, PartitionSpec, ScheduledFault, SimConfig,
};
use crate::testkit::sim::{ClusterView, Failure, Harness, SeedsSummary};
use crate::types::{Membership, Millis, NodeId};

/// What a scenario asks of the protocol beyond the cluster shape. The
/// protocol maps it onto its own config.
#[derive(Clone, Debug, PartialEq, Eq)]
///
/// The timings are the suite's, the same for every protocol so their runs
/// compare: a protocol maps each to its own config field of that meaning.
pub struct ProtocolOptions {
    /// Serve `read_index` from a leader lease instead of a quorum round.
    pub lease_read: bool,
    /// Clock drift margin subtracted from the lease, in milliseconds.
    pub lease_drift_margin_ms: Millis,
    /// Randomized election timeout: lower bound, in milliseconds.
    pub election_timeout_min_ms: Millis,
    /// Randomized election timeout: upper bound, in milliseconds.
    pub election_timeout_max_ms: Millis,
    /// Leader heartbeat interval, in milliseconds.
    pub heartbeat_interval_ms: Millis,
    /// Resend of unacknowledged replication (append / accept), in
    /// milliseconds.
    pub replicate_retransmit_ms: Millis,
    /// Leader transfer gives up after this, in milliseconds.
    pub transfer_timeout_ms: Millis,
    /// A snapshot send not acknowledged within this is retried, in
    /// milliseconds.
    pub snapshot_send_timeout_ms: Millis,
    /// Entries kept behind a snapshot for followers just behind it.
    pub snapshot_trailing_entries: u64,
}

impl Default for ProtocolOptions {
    fn default() -> Self {
        Self {
            lease_read: false,
            lease_drift_margin_ms: 20,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 30,
            replicate_retransmit_ms: 60,
            transfer_timeout_ms: 300,
            snapshot_send_timeout_ms: 500,
            snapshot_trailing_entries: 5,
        }
    }
}

/// Everything the simulator knows when it starts (or restarts) a node.
#[derive(Debug)]
pub struct NodeStart<'a> {
    /// The node.
    pub id: NodeId,
    /// The cluster's initial configuration.
    pub initial: &'a Membership,
    /// What the node found in its store.
    pub recovered: Recovered,
    /// Seed for the protocol's randomness.
    pub seed: u64,
}

/// A protocol under the shared suite: the factory plus what the suite
/// cannot know about it.
pub trait SuiteProtocol: 'static {
    /// The protocol built.
    type Protocol: Consensus;

    /// Lower-case protocol name (`"raft"`). The suite reads
    /// `HA_<NAME>_SIM_SEEDS` and `HA_<NAME>_SIM_BASE`, and its reproduce
    /// line names the package `ha-<name>`.
    fn name(&self) -> &'static str;

    /// Builds a node at first start and at every restart, with the
    /// scenario's options.
    fn build(&self, node: NodeStart<'_>, options: &ProtocolOptions) -> Self::Protocol;

    /// The properties checked. Default: all of them; a protocol switches
    /// off only what it does not promise (Paxos logs have gaps and per-slot
    /// ballots, so no log matching).
    fn checks(&self) -> Checks {
        Checks::default()
    }

    /// A rule of the protocol's own, checked after every simulated step
    /// (keep it O(nodes): it runs millions of times). Default: none.
    fn local_invariant(_view: &ClusterView<'_, Self::Protocol>) -> Result<(), String> {
        Ok(())
    }
}

/// One scenario of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// 3 nodes; partitions, crashes and pauses.
    ThreeNodes,
    /// 5 nodes; partitions, crashes and pauses.
    FiveNodes,
    /// 3 nodes + 2 spare; adds membership changes and leader transfers.
    Membership,
    /// 3 nodes + 1 spare; snapshots every 15 entries, lease reads,
    /// membership changes.
    Snapshots,
    /// 5 nodes + 2 spare; everything, snapshots every 25 entries.
    Everything,
    /// 3 nodes; scheduled one-way partitions around the leader on a lossy,
    /// duplicating, reordering network, plus the random faults.
    AsymmetricLossy,
}

/// Upper bound on seeds per scenario a run may ask for, so a typo in the
/// environment cannot start a run of years.
pub const SEEDS_PER_SCENARIO_MAX: u64 = 1_000_000;

impl Scenario {
    /// Every scenario, in the order the suite runs them.
    pub const ALL: [Scenario; 6] = [
        Scenario::ThreeNodes,
        Scenario::FiveNodes,
        Scenario::Membership,
        Scenario::Snapshots,
        Scenario::Everything,
        Scenario::AsymmetricLossy,
    ];

    /// Short name, used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ThreeNodes => "3",
            Scenario::FiveNodes => "5",
            Scenario::Membership => "membership",
            Scenario::Snapshots => "snapshots",
            Scenario::Everything => "everything",
            Scenario::AsymmetricLossy => "asymmetric-lossy",
        }
    }

    /// Name of the `#[test]` [`sim_suite!`](crate::sim_suite) generates.
    pub fn test_name(self) -> &'static str {
        match self {
            Scenario::ThreeNodes => "sim_three_nodes_with_partitions_crashes_and_pauses",
            Scenario::FiveNodes => "sim_five_nodes_with_partitions_crashes_and_pauses",
            Scenario::Membership => "sim_membership_changes_and_leader_transfers",
            Scenario::Snapshots => "sim_snapshots_and_lease_reads",
            Scenario::Everything => "sim_five_nodes_everything_at_once",
            Scenario::AsymmetricLossy => "sim_asymmetric_partitions_on_a_lossy_network",
        }
    }

    /// Seeds run when the environment does not say (sized so the whole
    /// suite stays around 20 s of CPU in a debug build).
    pub fn default_seeds(self) -> u64 {
        match self {
            Scenario::ThreeNodes => 50,
            Scenario::FiveNodes => 25,
            Scenario::Membership => 40,
            Scenario::Snapshots => 25,
            Scenario::Everything => 10,
            Scenario::AsymmetricLossy => 25,
        }
    }

    /// First seed of the scenario before `HA_<NAME>_SIM_BASE` is added:
    /// scenarios draw from disjoint ranges of 2^32 seeds.
    pub fn seed_offset(self) -> u64 {
        let slot = match self {
            Scenario::ThreeNodes => 0,
            Scenario::FiveNodes => 1,
            Scenario::Membership => 2,
            Scenario::Snapshots => 3,
            Scenario::Everything => 4,
            Scenario::AsymmetricLossy => 5,
        };
        slot << 32
    }

    /// What the scenario asks of the protocol.
    pub fn protocol_options(self) -> ProtocolOptions {
        ProtocolOptions {
            lease_read: self == Scenario::Snapshots,
            ..ProtocolOptions::default()
        }
    }

    /// The simulator configuration, before the protocol's [`Checks`].
    pub fn sim_config(self) -> SimConfig {
        let faults = NemesisConfig {
            partitions: true,
            crashes: true,
            pauses: true,
            ..NemesisConfig::default()
        };
        let with_changes = NemesisConfig {
            membership_changes: true,
            leader_transfers: true,
            ..faults.clone()
        };
        match self {
            Scenario::ThreeNodes => SimConfig {
                nodes: 3,
                nemesis: faults,
                ..SimConfig::default()
            },
            Scenario::FiveNodes => SimConfig {
                nodes: 5,
                nemesis: faults,
                ..SimConfig::default()
            },
            Scenario::Membership => SimConfig {
                nodes: 3,
                spare_nodes: 2,
                nemesis: with_changes,
                ..SimConfig::default()
            },
            Scenario::Snapshots => SimConfig {
                nodes: 3,
                spare_nodes: 1,
                snapshot_every_entries: Some(15),
                nemesis: NemesisConfig {
                    membership_changes: true,
                    ..faults
                },
                ..SimConfig::default()
            },
            Scenario::Everything => SimConfig {
                nodes: 5,
                spare_nodes: 2,
                snapshot_every_entries: Some(25),
                nemesis: with_changes,
                ..SimConfig::default()
            },
            Scenario::AsymmetricLossy => SimConfig {
                nodes: 3,
                net: NetConfig {
                    delay: Delay::LongTail {
                        min_ms: 1,
                        max_ms: 10,
                        tail_ppm: 20_000,
                        tail_max_ms: 120,
                    },
                    drop_ppm: 50_000,
                    duplicate_ppm: 30_000,
                    reorder_ppm: 100_000,
                    reorder_extra_max_ms: 80,
                    ..NetConfig::default()
                },
                nemesis: NemesisConfig {
                    interval: Delay::Uniform {
                        min_ms: 300,
                        max_ms: 900,
                    },
                    ..faults
                },
                schedule: one_way_schedule(),
                ..SimConfig::default()
            },
        }
    }
}

/// The scheduled faults of [`Scenario::AsymmetricLossy`]: `n1` goes mute
/// (it hears everyone, nothing it sends arrives), then deaf (it sends, hears
/// nothing), then `n2` the same; each cut lasts 400 ms and is healed before
/// the next. Whichever node leads, it is either cut or facing a cut peer
/// (and the random nemesis, partitions included, runs on top).
fn one_way_schedule() -> Vec<ScheduledFault> {
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let cuts = [
        (vec![n1], vec![n2, n3]),
        (vec![n2, n3], vec![n1]),
        (vec![n2], vec![n1, n3]),
        (vec![n1, n3], vec![n2]),
    ];
    let mut out = Vec::new();
    for (i, (from, to)) in cuts.into_iter().enumerate() {
        let at_ms = 300 + 650 * i as Millis;
        out.push(ScheduledFault {
            at_ms,
            fault: Fault::Partition(PartitionSpec::OneWay { from, to }),
        });
        out.push(ScheduledFault {
            at_ms: at_ms + 400,
            fault: Fault::Heal,
        });
    }
    out
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a scenario did not pass.
#[derive(Debug, Error)]
pub enum SuiteError {
    /// An environment variable does not hold a usable number.
    #[error("{var}={value:?}: {why}")]
    BadEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A seed failed; `reproduce` is the command that reruns it alone.
    #[error("scenario {scenario} failed; reproduce with\n  {reproduce}\n{failure}")]
    Failed {
        /// The scenario.
        scenario: Scenario,
        /// The failed run (seed, what broke, trace).
        failure: Box<Failure>,
        /// A shell command rerunning exactly that seed.
        reproduce: String,
    },
    /// Every seed passed its checks, yet no client operation completed in
    /// any of them: the scenario tested nothing.
    #[error("scenario {scenario}: {seeds} seeds passed but no client operation completed")]
    NoWork {
        /// The scenario.
        scenario: Scenario,
        /// Seeds run.
        seeds: u64,
    },
}

/// The seed range a scenario runs, read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedPlan {
    /// `HA_<NAME>_SIM_BASE` (0 when unset).
    pub base: u64,
    /// Seeds to run.
    pub count: u64,
    /// The seeds themselves (offset + base ..).
    pub seeds: std::ops::Range<u64>,
}

/// Environment variable names of a protocol: `(seeds, base)`.
pub fn env_vars(name: &str) -> (String, String) {
    let upper = name.to_ascii_uppercase();
    (
        format!("HA_{upper}_SIM_SEEDS"),
        format!("HA_{upper}_SIM_BASE"),
    )
}

fn parse_env(var: &str, value: Option<String>, default: u64) -> Result<u64, SuiteError> {
    let Some(value) = value else {
        return Ok(default);
    };
    value.trim().parse::<u64>().map_err(|_| SuiteError::BadEnv {
        var: var.to_owned(),
        value,
        why: "not a whole number",
    })
}

/// Works out a scenario's seeds from the values of `HA_<NAME>_SIM_SEEDS`
/// and `HA_<NAME>_SIM_BASE` (`None`: unset).
pub fn seed_plan(
    name: &str,
    scenario: Scenario,
    seeds_value: Option<String>,
    base_value: Option<String>,
) -> Result<SeedPlan, SuiteError> {
    let (seeds_var, base_var) = env_vars(name);
    let count = parse_env(&seeds_var, seeds_value.clone(), scenario.default_seeds())?;
    if count == 0 || count > SEEDS_PER_SCENARIO_MAX {
        return Err(SuiteError::BadEnv {
            var: seeds_var,
            value: seeds_value.unwrap_or_default(),
            why: "seeds per scenario must be 1..=1,000,000",
        });
    }
    let base = parse_env(&base_var, base_value.clone(), 0)?;
    let first = scenario.seed_offset().checked_add(base);
    let end = first.and_then(|f| f.checked_add(count));
    let (Some(first), Some(end)) = (first, end) else {
        return Err(SuiteError::BadEnv {
            var: base_var,
            value: base_value.unwrap_or_default(),
            why: "the seed range overflows u64",
        });
    };
    Ok(SeedPlan {
        base,
        count,
        seeds: first..end,
    })
}

/// The command that reruns `seed` of `scenario` alone.
pub fn reproduce_command(name: &str, scenario: Scenario, seed: u64) -> String {
    let (seeds_var, base_var) = env_vars(name);
    let base = seed.saturating_sub(scenario.seed_offset());
    format!(
        "{base_var}={base} {seeds_var}=1 HA_SIM_TRACE_DIR=/tmp/ha-sim-traces \
         cargo test --release -p ha-{name} --test sim -- --exact {}",
        scenario.test_name()
    )
}

/// Runs `plan`'s seeds of `scenario` for `protocol`, stopping at the first
/// failure.
pub fn run_plan<P: SuiteProtocol>(
    protocol: &P,
    scenario: Scenario,
    plan: &SeedPlan,
) -> Result<SeedsSummary, SuiteError> {
    let options = scenario.protocol_options();
    let harness = Harness::new(
        |id: NodeId, initial: &Membership, recovered: Recovered, seed: u64| {
            let node = NodeStart {
                id,
                initial,
                recovered,
                seed,
            };
            protocol.build(node, &options)
        },
    )
    .with_invariant(&format!("{}-local", protocol.name()), P::local_invariant);
    let sim = SimConfig {
        checks: protocol.checks(),
        ..scenario.sim_config()
    };
    let summary = harness
        .run_seeds(plan.seeds.clone(), &sim)
        .map_err(|failure| SuiteError::Failed {
            scenario,
            reproduce: reproduce_command(protocol.name(), scenario, failure.seed),
            failure: Box::new(failure),
        })?;
    if summary.ops_completed == 0 {
        return Err(SuiteError::NoWork {
            scenario,
            seeds: summary.runs,
        });
    }
    Ok(summary)
}

/// Runs `scenario` for `protocol` over the seeds the environment asks for.
pub fn run_scenario<P: SuiteProtocol>(
    protocol: &P,
    scenario: Scenario,
) -> Result<SeedsSummary, SuiteError> {
    let (seeds_var, base_var) = env_vars(protocol.name());
    let plan = seed_plan(
        protocol.name(),
        scenario,
        std::env::var(&seeds_var).ok(),
        std::env::var(&base_var).ok(),
    )?;
    run_plan(protocol, scenario, &plan)
}

/// The body of each test [`sim_suite!`](crate::sim_suite) generates: runs
/// the scenario, prints its summary, and panics (failing the test) with
/// the seed, the reproduce command and the trace tail when it fails.
pub fn run_scenario_or_panic<P: SuiteProtocol>(protocol: &P, scenario: Scenario) {
    match run_scenario(protocol, scenario) {
        Ok(s) => eprintln!(
            "{} {scenario}: {} seeds, {} ops completed, {} unknown, {} crashes",
            protocol.name(),
            s.runs,
            s.ops_completed,
            s.ops_unknown,
            s.crashes
        ),
        Err(e) => panic!("{} {e}", protocol.name()),
    }
}

/// Instantiates the shared simulation suite for a protocol: one `#[test]`
/// per [`Scenario`], named by [`Scenario::test_name`]. The argument is an
/// expression of a type implementing [`SuiteProtocol`].
#[macro_export]
macro_rules! sim_suite {
    ($protocol:expr) => {
        $crate::sim_suite!(@tests $protocol;
            sim_three_nodes_with_partitions_crashes_and_pauses => ThreeNodes,
            sim_five_nodes_with_partitions_crashes_and_pauses => FiveNodes,
            sim_membership_changes_and_leader_transfers => Membership,
            sim_snapshots_and_lease_reads => Snapshots,
            sim_five_nodes_everything_at_once => Everything,
            sim_asymmetric_partitions_on_a_lossy_network => AsymmetricLossy,
        );
    };
    (@tests $protocol:expr; $($test:ident => $scenario:ident,)*) => {
        $(
            #[test]
            fn $test() {
                $crate::testkit::suite::run_scenario_or_panic(
                    &$protocol,
                    $crate::testkit::suite::Scenario::$scenario,
                );
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::consensus::{Consensus, Status};
    use crate::consensus::{MembershipChange, ProposeError, ReadCtx, Ready, ReadyNumber, Role};
    use crate::testkit::sim::FailureKind;
    use crate::types::{LogId, LogIndex, SnapshotMeta, Term};

    /// A protocol that never leads and refuses everything: the suite must
    /// report it (no progress after healing) with a command to rerun it.
    struct Mute {
        id: NodeId,
        membership: Membership,
    }

    impl Consensus for Mute {
        type Message = ();
        fn id(&self) -> NodeId {
            self.id
        }
        fn tick(&mut self, _now: Millis) {}
        fn step(&mut self, _from: NodeId, _msg: ()) {}
        fn propose(&mut self, _data: Bytes) -> Result<LogId, ProposeError> {
            Err(ProposeError::NotLeader { leader: None })
        }
        fn read_index(&mut self, _ctx: ReadCtx) -> Result<(), ProposeError> {
            Err(ProposeError::NotLeader { leader: None })
        }
        fn change_membership(&mut self, _c: MembershipChange) -> Result<LogId, ProposeError> {
            Err(ProposeError::NotLeader { leader: None })
        }
        fn transfer_leader(&mut self, _to: NodeId) -> Result<(), ProposeError> {
            Err(ProposeError::NotLeader { leader: None })
        }
        fn has_ready(&self) -> bool {
            false
        }
        fn ready(&mut self) -> Ready<()> {
            Ready::empty(1)
        }
        fn advance(&mut self, _number: ReadyNumber) {}
        fn applied(&mut self, _index: LogIndex) {}
        fn snapshot_built(&mut self, _meta: SnapshotMeta) {}
        fn status(&self) -> Status {
            Status {
                id: self.id,
                role: Role::Follower,
                term: Term(0),
                leader: None,
                commit: LogIndex(0),
                last_index: LogIndex(0),
                membership: self.membership.clone(),
            }
        }
    }

    struct MuteSuite;

    impl SuiteProtocol for MuteSuite {
        type Protocol = Mute;
        fn name(&self) -> &'static str {
            "mute"
        }
        fn build(&self, node: NodeStart<'_>, _options: &ProtocolOptions) -> Mute {
            Mute {
                id: node.id,
                membership: node.initial.clone(),
            }
        }
    }

    #[test]
    fn env_values_pick_the_seed_range() {
        let s = Scenario::Membership;
        let plan = seed_plan("raft", s, None, None).unwrap();
        assert_eq!(plan.count, s.default_seeds());
        assert_eq!(plan.seeds, 2 << 32..(2 << 32) + s.default_seeds());
        let plan = seed_plan("raft", s, Some("7".into()), Some("100".into())).unwrap();
        assert_eq!(plan.seeds, (2 << 32) + 100..(2 << 32) + 107);
        assert_eq!(
            env_vars("paxos"),
            ("HA_PAXOS_SIM_SEEDS".into(), "HA_PAXOS_SIM_BASE".into())
        );
    }

    #[test]
    fn bad_env_values_are_errors_not_defaults() {
        let s = Scenario::ThreeNodes;
        for (seeds, base, var) in [
            (Some("lots"), None, "HA_RAFT_SIM_SEEDS"),
            (Some("0"), None, "HA_RAFT_SIM_SEEDS"),
            (Some("-3"), None, "HA_RAFT_SIM_SEEDS"),
            (Some("2000000"), None, "HA_RAFT_SIM_SEEDS"),
            (None, Some("x"), "HA_RAFT_SIM_BASE"),
            (None, Some("18446744073709551615"), "HA_RAFT_SIM_BASE"),
        ] {
            let got = seed_plan("raft", s, seeds.map(Into::into), base.map(Into::into));
            match got {
                Err(SuiteError::BadEnv { var: v, .. }) => assert_eq!(v, var),
                other => panic!("{seeds:?}/{base:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn scenarios_have_distinct_names_tests_and_seed_ranges() {
        let mut names = std::collections::BTreeSet::new();
        let mut offsets = std::collections::BTreeSet::new();
        for s in Scenario::ALL {
            assert!(names.insert(s.test_name()), "{s}");
            assert!(names.insert(s.name()), "{s}");
            assert!(offsets.insert(s.seed_offset()), "{s}");
            let cfg = s.sim_config();
            assert!(cfg.nemesis.enabled && cfg.nemesis.crashes && cfg.nemesis.partitions);
            assert!(cfg.net.drop_ppm > 0 && cfg.net.duplicate_ppm > 0 && cfg.net.reorder_ppm > 0);
            assert!(cfg.clients.read_index_ppm > 0, "{s}: no read_index reads");
        }
        let asym = Scenario::AsymmetricLossy.sim_config();
        assert!(
            asym.schedule
                .iter()
                .any(|f| matches!(f.fault, Fault::Partition(PartitionSpec::OneWay { .. })))
        );
        assert!(Scenario::Snapshots.protocol_options().lease_read);
        assert!(
            Scenario::Snapshots
                .sim_config()
                .snapshot_every_entries
                .is_some()
        );
    }

    #[test]
    fn a_protocol_that_never_serves_fails_with_a_command_rerunning_its_seed() {
        let s = Scenario::ThreeNodes;
        let plan = seed_plan("mute", s, Some("1".into()), Some("41".into())).unwrap();
        match run_plan(&MuteSuite, s, &plan) {
            Err(SuiteError::Failed {
                scenario,
                failure,
                reproduce,
            }) => {
                assert_eq!(scenario, s);
                assert_eq!(failure.seed, s.seed_offset() + 41);
                assert!(
                    matches!(failure.kind, FailureKind::NoProgress { .. }),
                    "{failure}"
                );
                assert!(
                    reproduce.starts_with("HA_MUTE_SIM_BASE=41 HA_MUTE_SIM_SEEDS=1 "),
                    "{reproduce}"
                );
                assert!(reproduce.contains("-p ha-mute --test sim"), "{reproduce}");
                assert!(reproduce.ends_with(s.test_name()), "{reproduce}");
            }
            other => panic!("the mute protocol passed: {other:?}"),
        }
    }
}
