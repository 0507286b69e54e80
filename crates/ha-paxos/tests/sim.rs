//! Multi-Paxos through the ha-core test kit's deterministic simulator, with
//! the same scenarios, seed counts and fault mixes as ha-raft's suite: 3-
//! and 5-node clusters under message loss, duplication, reordering,
//! partitions, crashes that lose unsynced writes, pauses, membership
//! changes, leader transfers and snapshots. After every step the kit checks
//! one leader per ballot, leader completeness (a new leader holds every
//! chosen value once its phase 1 is done), state-machine safety (a slot's
//! chosen value never changes) and durability of chosen entries; at the end,
//! linearizability of the KV history and progress once faults heal. Log
//! matching is switched off: Paxos logs have gaps and per-slot ballots.
//!
//! The default run (150 seeds, the same counts as ha-raft's suite, about
//! 17 s of CPU in a debug build) is sized for CI on two cores. More seeds:
//! `HA_PAXOS_SIM_SEEDS=10000 cargo test -p ha-paxos --release --test sim`
//! (the number is per scenario; `HA_PAXOS_SIM_BASE=n` shifts the seed
//! range); a failing seed is printed with its trace (`HA_SIM_TRACE_DIR=dir`
//! writes the whole trace to a file).

use ha_core::Membership;
use ha_core::NodeId;
use ha_core::consensus::{Recovered, Role};
use ha_core::testkit::{Checks, ClusterView, Harness, NemesisConfig, SimConfig};
use ha_paxos::{Config, Paxos};

fn paxos_config() -> Config {
    Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        accept_retransmit_ms: 60,
        prepare_timeout_ms: 150,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        snapshot_trailing_entries: 5,
        ..Config::default()
    }
}

fn factory(cfg: Config) -> impl Fn(NodeId, &Membership, Recovered, u64) -> Paxos {
    move |id, initial, recovered, seed| match Paxos::new(
        id,
        cfg.clone(),
        recovered,
        initial.clone(),
        seed,
    ) {
        Ok(p) => p,
        Err(e) => panic!("node {id:?} cannot start: {e}"),
    }
}

/// Seeds per scenario: `HA_PAXOS_SIM_SEEDS` or the default.
fn seeds(default: u64) -> u64 {
    std::env::var("HA_PAXOS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Rules the kit cannot know: a node's commit point never passes the slots
/// it holds, the slot at the commit point is held (or compacted), and a
/// leader's ballot is the one it owns. Reads accessors only (no `status()`,
/// which clones the membership) and is O(1) per node: it runs after every
/// simulated step.
fn paxos_invariants(view: &ClusterView<'_, Paxos>) -> Result<(), String> {
    for n in &view.nodes {
        let Some(p) = n.protocol else { continue };
        let commit = p.commit_index();
        if commit > p.last_index() {
            return Err(format!(
                "{:?}: commit {commit:?} beyond last slot {:?}",
                n.id,
                p.last_index()
            ));
        }
        if commit > p.log_start() && p.entry(commit).is_none() {
            return Err(format!(
                "{:?}: the slot at commit {commit:?} is not held",
                n.id
            ));
        }
        if p.role() == Role::Leader && ha_paxos::message::ballot_node(p.ballot()) != n.id {
            return Err(format!(
                "{:?} leads ballot {:?} it does not own",
                n.id,
                p.ballot()
            ));
        }
    }
    Ok(())
}

fn checks() -> Checks {
    Checks {
        log_matching: false,
        ..Checks::default()
    }
}

fn run(name: &str, cfg: Config, sim: &SimConfig, count: u64) {
    let harness = Harness::new(factory(cfg)).with_invariant("paxos-local", paxos_invariants);
    let offset: u64 = std::env::var("HA_PAXOS_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let base = offset
        + match name {
            "3" => 0,
            "5" => 1 << 32,
            "membership" => 2 << 32,
            "snapshots" => 3 << 32,
            _ => 4 << 32,
        };
    let sim = SimConfig {
        checks: checks(),
        ..sim.clone()
    };
    match harness.run_seeds(base..base + count, &sim) {
        Ok(s) => {
            assert_eq!(s.runs, count);
            assert!(s.ops_completed > 0, "{name}: clients made progress");
            eprintln!(
                "{name}: {count} seeds, {} ops completed, {} unknown, {} crashes",
                s.ops_completed, s.ops_unknown, s.crashes
            );
        }
        Err(f) => panic!("scenario {name} failed:\n{f}"),
    }
}

fn faults() -> NemesisConfig {
    NemesisConfig {
        partitions: true,
        crashes: true,
        pauses: true,
        ..NemesisConfig::default()
    }
}

#[test]
fn sim_three_nodes_with_partitions_crashes_and_pauses() {
    let sim = SimConfig {
        nodes: 3,
        nemesis: faults(),
        ..SimConfig::default()
    };
    run("3", paxos_config(), &sim, seeds(50));
}

#[test]
fn sim_five_nodes_with_partitions_crashes_and_pauses() {
    let sim = SimConfig {
        nodes: 5,
        nemesis: faults(),
        ..SimConfig::default()
    };
    run("5", paxos_config(), &sim, seeds(25));
}

#[test]
fn sim_membership_changes_and_leader_transfers() {
    let sim = SimConfig {
        nodes: 3,
        spare_nodes: 2,
        nemesis: NemesisConfig {
            membership_changes: true,
            leader_transfers: true,
            ..faults()
        },
        ..SimConfig::default()
    };
    run("membership", paxos_config(), &sim, seeds(40));
}

#[test]
fn sim_snapshots_and_lease_reads() {
    let sim = SimConfig {
        nodes: 3,
        spare_nodes: 1,
        snapshot_every_entries: Some(15),
        nemesis: NemesisConfig {
            membership_changes: true,
            ..faults()
        },
        ..SimConfig::default()
    };
    let cfg = Config {
        lease_read: true,
        lease_drift_margin_ms: 20,
        ..paxos_config()
    };
    run("snapshots", cfg, &sim, seeds(25));
}

#[test]
fn sim_five_nodes_everything_at_once() {
    let sim = SimConfig {
        nodes: 5,
        spare_nodes: 2,
        snapshot_every_entries: Some(25),
        nemesis: NemesisConfig {
            membership_changes: true,
            leader_transfers: true,
            ..faults()
        },
        ..SimConfig::default()
    };
    run("everything", paxos_config(), &sim, seeds(10));
}
