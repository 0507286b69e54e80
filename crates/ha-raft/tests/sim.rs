//! Raft through the ha-core test kit's shared simulation suite
//! ([`ha_core::testkit::suite`]): the same scenarios, fault mixes, seed
//! counts and checks as every other protocol, one `#[test]` per scenario.
//! Every check is on, log matching included.
//!
//! Seeds: `HA_RAFT_SIM_SEEDS=n` per scenario (six scenarios),
//! `HA_RAFT_SIM_BASE=b` shifts the range; a failing seed prints the command
//! that reruns it alone and its trace (`HA_SIM_TRACE_DIR=dir` writes the
//! whole trace to a file). `cargo xtask sim --protocol raft --seeds N` runs
//! the suite in release.

use ha_core::testkit::ClusterView;
use ha_core::testkit::suite::{NodeStart, ProtocolOptions, SuiteProtocol};
use ha_raft::{Config, Raft};

struct RaftSuite;

impl SuiteProtocol for RaftSuite {
    type Protocol = Raft;

    fn name(&self) -> &'static str {
        "raft"
    }

    fn build(&self, node: NodeStart<'_>, options: &ProtocolOptions) -> Raft {
        let cfg = Config {
            election_timeout_min_ms: options.election_timeout_min_ms,
            election_timeout_max_ms: options.election_timeout_max_ms,
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            append_retransmit_ms: options.replicate_retransmit_ms,
            transfer_timeout_ms: options.transfer_timeout_ms,
            snapshot_send_timeout_ms: options.snapshot_send_timeout_ms,
            snapshot_trailing_entries: options.snapshot_trailing_entries,
            lease_read: options.lease_read,
            lease_drift_margin_ms: options.lease_drift_margin_ms,
            ..Config::default()
        };
        let id = node.id;
        Raft::new(id, cfg, node.recovered, node.initial.clone(), node.seed)
            .unwrap_or_else(|e| panic!("node {id:?} cannot start: {e}"))
    }

    /// A node's commit index never exceeds its last log index, and no log
    /// term is above the node's current term. Reads accessors only
    /// (`status()` clones the membership; this runs after every step).
    fn local_invariant(view: &ClusterView<'_, Raft>) -> Result<(), String> {
        for n in &view.nodes {
            let Some(r) = n.protocol else { continue };
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
}

ha_core::sim_suite!(RaftSuite);
