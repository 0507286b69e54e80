//! Multi-Paxos through the ha-core test kit's shared simulation suite
//! ([`ha_core::testkit::suite`]): the same scenarios, fault mixes, seed
//! counts and checks as ha-raft's, one `#[test]` per scenario. Log matching
//! is switched off (Paxos logs have gaps and per-slot ballots); one leader
//! per ballot, leader completeness, state-machine safety, durability of
//! chosen entries, linearizability and progress after healing are checked.
//!
//! Seeds: `HA_PAXOS_SIM_SEEDS=n` per scenario (six scenarios),
//! `HA_PAXOS_SIM_BASE=b` shifts the range; a failing seed prints the
//! command that reruns it alone and its trace (`HA_SIM_TRACE_DIR=dir`
//! writes the whole trace to a file). `cargo xtask sim --protocol paxos
//! --seeds N` runs the suite in release.

use ha_core::consensus::Role;
use ha_core::testkit::suite::{NodeStart, ProtocolOptions, SuiteProtocol};
use ha_core::testkit::{Checks, ClusterView};
use ha_paxos::{Config, Paxos};

struct PaxosSuite;

impl SuiteProtocol for PaxosSuite {
    type Protocol = Paxos;

    fn name(&self) -> &'static str {
        "paxos"
    }

    fn build(&self, node: NodeStart<'_>, options: &ProtocolOptions) -> Paxos {
        let cfg = Config {
            election_timeout_min_ms: options.election_timeout_min_ms,
            election_timeout_max_ms: options.election_timeout_max_ms,
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            accept_retransmit_ms: options.replicate_retransmit_ms,
            // Phase 1 gives up after the shortest election timeout.
            prepare_timeout_ms: options.election_timeout_min_ms,
            transfer_timeout_ms: options.transfer_timeout_ms,
            snapshot_send_timeout_ms: options.snapshot_send_timeout_ms,
            snapshot_trailing_entries: options.snapshot_trailing_entries,
            lease_read: options.lease_read,
            lease_drift_margin_ms: options.lease_drift_margin_ms,
            ..Config::default()
        };
        let id = node.id;
        Paxos::new(id, cfg, node.recovered, node.initial.clone(), node.seed)
            .unwrap_or_else(|e| panic!("node {id:?} cannot start: {e}"))
    }

    fn checks(&self) -> Checks {
        Checks {
            log_matching: false,
            ..Checks::default()
        }
    }

    /// A node's commit point never passes the slots it holds, the slot at
    /// the commit point is held (or compacted), and a leader's ballot is
    /// one it owns. O(1) per node: it runs after every simulated step.
    fn local_invariant(view: &ClusterView<'_, Paxos>) -> Result<(), String> {
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
}

ha_core::sim_suite!(PaxosSuite);
