//! Replica driver throughput: `Replica<Solo>` + `MemKv` over an in-memory
//! log store whose synced writes cost a fixed, simulated fsync time.
//!
//! With one client every proposal waits for its own fsync; with many, the
//! proposals that arrive during an fsync share the next one (group commit),
//! so throughput should grow with the number of clients until the driver
//! itself is the bottleneck. The `fsync_0us` group measures pure driver
//! overhead.
//!
//! ```text
//! cargo bench -p ha-core --bench replica
//! ```

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ha_core::consensus::Recovered;
use ha_core::kv::{KvCommand, MemKv};
use ha_core::replica::{Replica, ReplicaConfig};
use ha_core::solo::{Solo, SoloConfig};
use ha_core::storage::{LogStore, LogWrite, MemLogStore, StorageResult};
use ha_core::transport::{MemNetwork, MemNetworkConfig};
use ha_core::{Bytes, Entry, GroupId, HardState, LogIndex, NodeId, SnapshotMeta};

/// A `MemLogStore` whose synced writes sleep for a fixed time, like an fsync.
struct SlowSync {
    inner: MemLogStore,
    fsync: Duration,
}

impl LogStore for SlowSync {
    fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()> {
        if write.sync && !self.fsync.is_zero() {
            std::thread::sleep(self.fsync);
        }
        self.inner.write(group, write)
    }
    fn sync(&self) -> StorageResult<()> {
        self.inner.sync()
    }
    fn entries(&self, group: GroupId, range: Range<LogIndex>) -> StorageResult<Vec<Entry>> {
        self.inner.entries(group, range)
    }
    fn bounds(&self, group: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>> {
        self.inner.bounds(group)
    }
    fn hard_state(&self, group: GroupId) -> StorageResult<HardState> {
        self.inner.hard_state(group)
    }
    fn snapshot_meta(&self, group: GroupId) -> StorageResult<Option<SnapshotMeta>> {
        self.inner.snapshot_meta(group)
    }
}

fn put(i: u64) -> Bytes {
    KvCommand::Put {
        key: Bytes::from(format!("key-{i:012}")),
        value: Bytes::from(vec![b'v'; 100]),
    }
    .encode()
}

/// Runs `ops` proposals from `clients` concurrent tasks on a fresh replica;
/// returns the time they took.
async fn run(ops: u64, clients: u64, fsync: Duration) -> Duration {
    let store = Arc::new(SlowSync {
        inner: MemLogStore::new(),
        fsync,
    });
    let net = MemNetwork::new(MemNetworkConfig::default()).expect("valid config");
    let (transport, inbound) = net.join(NodeId(1)).expect("fresh network");
    let solo = Solo::new(SoloConfig::new(NodeId(1)), Recovered::default()).expect("fresh");
    let replica = Replica::start(
        ReplicaConfig::default(),
        solo,
        store as Arc<dyn LogStore>,
        MemKv::default(),
        Arc::new(transport),
        inbound,
    )
    .expect("valid config");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let h = replica.handle();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < ops {
                black_box(h.propose(put(i)).await.expect("proposal commits"));
                i += clients;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed();
    replica.shutdown().await.expect("clean shutdown");
    elapsed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for fsync_us in [0u64, 1000] {
        let mut g = c.benchmark_group(format!("replica_solo_propose/fsync_{fsync_us}us"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(5));
        for clients in [1u64, 16, 256] {
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(
                BenchmarkId::new("clients", clients),
                &clients,
                |b, &clients| {
                    b.iter_custom(|iters| {
                        // At least one op per client so every client runs.
                        let ops = iters.max(clients);
                        let took = rt.block_on(run(ops, clients, Duration::from_micros(fsync_us)));
                        took.mul_f64(iters as f64 / ops as f64)
                    });
                },
            );
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
