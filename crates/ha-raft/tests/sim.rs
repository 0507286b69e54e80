//! Raft through the ha-core test kit's deterministic simulator: many seeds
//! of 3- and 5-node clusters under message loss, duplication, reordering,
//! partitions, crashes that lose unsynced writes, pauses, membership
//! changes, leader transfers and snapshots. After every step the kit checks
//! election safety, log matching, leader completeness and durability of
//! committed entries; at the end, linearizability of the KV history and
//! progress once faults heal.
//!
//! The default run (150 seeds, about 85 s of CPU in a debug build) is
//! sized for the debug test step on two cores. `HA_RAFT_SIM_SEEDS` sets the
//! seeds *per scenario* (five scenarios), so CI's release step covers
//! 10,000 seeds with
//! `HA_RAFT_SIM_SEEDS=2000 cargo test -p ha-raft --release --test sim`
//! (about 150 s of CPU: 11–21 ms per seed in a release build, see
//! `docs/BENCHMARKS.md`). `HA_RAFT_SIM_BASE=n` shifts the seed range; a
//! failing seed is printed with its trace (`HA_SIM_TRACE_DIR=dir` writes the
//! whole trace to a file).

use ha_core::Membership;
use ha_core::NodeId;
use ha_core::consensus::Recovered;
use ha_core::testkit::{Harness, NemesisConfig, SimConfig};
use ha_raft::{Config, Raft};

fn raft_config() -> Config {
    Config {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        heartbeat_interval_ms: 30,
        append_retransmit_ms: 60,
        transfer_timeout_ms: 300,
        snapshot_send_timeout_ms: 500,
        snapshot_trailing_entries: 5,
        ..Config::default()
    }
}

fn factory(cfg: Config) -> impl Fn(NodeId, &Membership, Recovered, u64) -> Raft {
    move |id, initial, recovered, seed| match Raft::new(
        id,
        cfg.clone(),
        recovered,
        initial.clone(),
        seed,
    ) {
        Ok(r) => r,
        Err(e) => panic!("node {id:?} cannot start: {e}"),
    }
}

/// Seeds per scenario: `HA_RAFT_SIM_SEEDS` or the default.
fn seeds(default: u64) -> u64 {
    std::env::var("HA_RAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Invariant the kit cannot know: a Raft node's commit index never exceeds
/// its last log index, and a leader's term is at least every log term it
/// holds.
fn raft_invariants(view: &ha_core::testkit::ClusterView<'_, Raft>) -> Result<(), String> {
    for n in &view.nodes {
        let Some(r) = n.protocol else { continue };
        // The accessors, not `status()`: this runs after every simulated
        // step and `status()` clones the membership.
        let (commit, last, term) = (r.commit_index(), r.last_log_id(), r.term());
        if commit > last.index {
            return Err(format!(
                "{:?}: commit {commit:?} beyond last index {:?}",
                n.id, last.index
            ));
        }
        if last.term > term {
            return Err(format!(
                "{:?}: log term {:?} above current term {term:?}",
                n.id, last.term
            ));
        }
    }
    Ok(())
}

fn run(name: &str, cfg: Config, sim: &SimConfig, count: u64) {
    let harness = Harness::new(factory(cfg)).with_invariant("raft-local", raft_invariants);
    let offset: u64 = std::env::var("HA_RAFT_SIM_BASE")
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
    match harness.run_seeds(base..base + count, sim) {
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
    run("3", raft_config(), &sim, seeds(50));
}

#[test]
fn sim_five_nodes_with_partitions_crashes_and_pauses() {
    let sim = SimConfig {
        nodes: 5,
        nemesis: faults(),
        ..SimConfig::default()
    };
    run("5", raft_config(), &sim, seeds(25));
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
    run("membership", raft_config(), &sim, seeds(40));
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
        ..raft_config()
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
    run("everything", raft_config(), &sim, seeds(10));
}
