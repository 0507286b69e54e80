//! Group commit of `RocksLogStore`: synced single-entry appends of 256-byte
//! entries from 1, 16 and 256 concurrent appenders, each to its own group.
//!
//! Criterion reports appends/s (`thrpt`, one element = one synced append);
//! after each appender count the bench prints fsyncs/s and appends per fsync
//! from the store's counters, and at the end the 256-vs-1 throughput ratio
//! (target: at least 20×, i.e. group commit works).
//!
//! Run: `cargo bench -p ha-core --features rocksdb --bench log_store`.
//! The store lives in a temporary directory under `HA_BENCH_DIR` (default:
//! the system temp dir); put it on the disk you want to measure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ha_core::storage::{LogStore, LogWrite, RocksLogStore, RocksOptions};
use ha_core::{Entry, EntryPayload, GroupId, LogId};

/// Payload bytes per entry.
const ENTRY_BYTES: usize = 256;
/// Concurrent appender counts measured.
const APPENDERS: [u64; 3] = [1, 16, 256];

/// Totals of one appender count over every timed run (warm-up included).
#[derive(Clone, Copy, Default)]
struct Totals {
    elapsed: Duration,
    writes: u64,
    fsyncs: u64,
}

fn synced_appends(c: &mut Criterion) {
    let base = std::env::var_os("HA_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("bench temp dir");
    let store = Arc::new(RocksLogStore::open(dir.path(), RocksOptions::default()).expect("open"));
    let payload = Bytes::from(vec![0xab; ENTRY_BYTES]);
    let mut results: Vec<(u64, Totals)> = Vec::new();

    let mut group = c.benchmark_group("rocks_log_store_synced_append_256B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for n in APPENDERS {
        // Next index per appender; kept across runs so every append extends
        // its group's log.
        let next: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(1)).collect());
        let totals = Mutex::new(Totals::default());
        group.bench_with_input(BenchmarkId::new("appenders", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let remaining = AtomicU64::new(iters);
                let start_line = Barrier::new(n as usize + 1);
                let before = store.stats();
                let mut started = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..n {
                        let (store, next, payload) = (&store, &next, &payload);
                        let (remaining, start_line) = (&remaining, &start_line);
                        s.spawn(move || {
                            let g = GroupId(n * 1000 + t);
                            start_line.wait();
                            while remaining
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                                    r.checked_sub(1)
                                })
                                .is_ok()
                            {
                                let index = next[t as usize].fetch_add(1, Ordering::Relaxed);
                                let e = Entry {
                                    log_id: LogId::new(1, index),
                                    payload: EntryPayload::Normal(payload.clone()),
                                };
                                store.write(g, LogWrite::append(vec![e])).expect("append");
                            }
                        });
                    }
                    start_line.wait();
                    started = Instant::now();
                });
                let elapsed = started.elapsed();
                let after = store.stats();
                let mut tot = totals.lock().unwrap_or_else(|p| p.into_inner());
                tot.elapsed += elapsed;
                tot.writes += after.writes - before.writes;
                tot.fsyncs += after.fsyncs - before.fsyncs;
                elapsed
            });
        });
        let t = *totals.lock().unwrap_or_else(|p| p.into_inner());
        let secs = t.elapsed.as_secs_f64().max(1e-9);
        println!(
            "appenders={n}: {:.0} appends/s, {:.0} fsyncs/s, {:.1} appends per fsync \
             ({} appends, {} fsyncs in {:.2}s)",
            t.writes as f64 / secs,
            t.fsyncs as f64 / secs,
            t.writes as f64 / (t.fsyncs.max(1)) as f64,
            t.writes,
            t.fsyncs,
            secs
        );
        results.push((n, t));
    }
    group.finish();
    let rate = |n: u64| {
        results
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, t)| t.writes as f64 / t.elapsed.as_secs_f64().max(1e-9))
    };
    if let (Some(one), Some(many)) = (rate(1), rate(256)) {
        let ratio = many / one.max(1e-9);
        println!(
            "group commit: 256 appenders / 1 appender = {ratio:.1}x (target >= 20x: {})",
            if ratio >= 20.0 { "met" } else { "NOT met" }
        );
    }
}

criterion_group!(benches, synced_appends);
criterion_main!(benches);
