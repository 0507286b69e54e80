//! Linearizability checker speed: a 10,000-operation KV history over 100
//! keys from 16 concurrent clients (target: under 2 s).
//!
//! `cargo bench -p ha-core --features testkit --bench checker`

use criterion::{Criterion, criterion_group, criterion_main};
use ha_core::testkit::history::{SequentialHistoryConfig, sequential_kv_history};
use ha_core::testkit::linearizability::{CheckConfig, KvModel, check};

fn bench_checker(c: &mut Criterion) {
    let cfg = SequentialHistoryConfig {
        ops: 10_000,
        keys: 100,
        clients: 16,
        widen_max: 50,
        unknown_percent: 2,
    };
    let history = sequential_kv_history(1, &cfg);
    let check_cfg = CheckConfig::default();
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    group.bench_function("kv_10k_ops_100_keys_16_clients", |b| {
        b.iter(|| {
            let stats = check(&KvModel, &history, &check_cfg);
            assert!(
                stats.is_ok(),
                "generated history must be linearizable: {stats:?}"
            );
            stats
        })
    });
    // Same history, all keys folded into one (no P-compositionality
    // benefit): shows what splitting per key buys.
    let few_keys = SequentialHistoryConfig {
        ops: 2_000,
        keys: 1,
        ..cfg
    };
    let one_key = sequential_kv_history(2, &few_keys);
    group.bench_function("kv_2k_ops_1_key_16_clients", |b| {
        b.iter(|| {
            let stats = check(&KvModel, &one_key, &check_cfg);
            assert!(stats.is_ok(), "{stats:?}");
            stats
        })
    });
    group.finish();
}

criterion_group!(benches, bench_checker);
criterion_main!(benches);
