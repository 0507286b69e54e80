//! Proposals per second through an in-process Multi-Paxos cluster: the test kit's
//! shared in-memory bench ([`ha_core::testkit::bench`]), the same harness,
//! points (1/3/5 members × 1/64/256/1,000/4,000 clients), payloads (empty
//! proposals) and batch limits as every other protocol's `propose` bench,
//! so the protocols compare point for point.
//!
//! `cargo bench -p ha-paxos --bench propose`

use criterion::{Criterion, criterion_group, criterion_main};
use ha_core::consensus::Recovered;
use ha_core::testkit::bench::criterion_propose;
use ha_paxos::{Config, Paxos};

/// Pipelining and batch limits shared with the other protocols' benches.
fn config() -> Config {
    Config {
        max_inflight_msgs: 1_024,
        max_entries_per_msg: 8_192,
        snapshot_trailing_entries: 1_000,
        ..Config::default()
    }
}

fn bench(c: &mut Criterion) {
    criterion_propose(c, |id, initial| {
        Paxos::new(id, config(), Recovered::default(), initial.clone(), id.0)
            .unwrap_or_else(|e| panic!("bench config: {e}"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
