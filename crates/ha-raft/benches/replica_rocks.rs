//! Raft on durable storage: a 3-node cluster of `Replica<MemKv>` drivers
//! running `Raft`, each node with its own `RocksLogStore` (real fsync on
//! every Ready that persists), connected by the in-memory transport, all in
//! one process on one tokio runtime.
//!
//! `clients` concurrent clients each keep one `Put` (100-byte value)
//! outstanding on the leader; a proposal is answered once it is committed
//! (fsync'd on a majority) and applied on the leader. Criterion reports
//! proposals/s; after each client count the bench prints the commit
//! latency (p50/p99/max over every proposal it timed, warm-up included) and
//! the leader's fsyncs per proposal.
//!
//! `cargo bench -p ha-raft --features bench-rocksdb --bench replica_rocks`
//!
//! The stores live in temporary directories under `HA_BENCH_DIR` (default:
//! the system temp dir); put them on the disk you want to measure.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ha_core::consensus::Role;
use ha_core::kv::{KvCommand, MemKv};
use ha_core::replica::{Replica, ReplicaConfig, ReplicaHandle};
use ha_core::storage::{LogStore, RocksLogStore, RocksOptions};
use ha_core::transport::{MemNetwork, MemNetworkConfig};
use ha_core::{Bytes, GroupId, Membership, NodeId};
use ha_raft::{Config, Raft};

/// Cluster size.
const MEMBERS: u64 = 3;
/// Client counts measured.
const CLIENTS: [u64; 2] = [1, 256];
/// Longest wait for a leader before the bench gives up.
const ELECTION_WAIT_MAX: Duration = Duration::from_secs(30);

struct Cluster {
    replicas: Vec<Replica<MemKv>>,
    stores: Vec<Arc<RocksLogStore>>,
    leader: usize,
    _dirs: Vec<tempfile::TempDir>,
}

fn put(i: u64) -> Bytes {
    KvCommand::Put {
        key: Bytes::from(format!("key-{i:012}")),
        value: Bytes::from(vec![b'v'; 100]),
    }
    .encode()
}

async fn start_cluster() -> Cluster {
    let base = std::env::var_os("HA_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let membership = Membership::new((1..=MEMBERS).map(NodeId));
    let net = MemNetwork::new(MemNetworkConfig::default()).expect("network config");
    let mut replicas = Vec::new();
    let mut stores = Vec::new();
    let mut dirs = Vec::new();
    for id in 1..=MEMBERS {
        let dir = tempfile::tempdir_in(&base).expect("bench temp dir");
        let store =
            Arc::new(RocksLogStore::open(dir.path(), RocksOptions::default()).expect("open store"));
        let recovered = store.recover(GroupId(0)).expect("recover");
        let raft = Raft::new(
            NodeId(id),
            Config::default(),
            recovered,
            membership.clone(),
            id,
        )
        .expect("raft config");
        let (transport, inbound) = net.join(NodeId(id)).expect("join network");
        let replica = Replica::start(
            ReplicaConfig::default(),
            raft,
            Arc::clone(&store) as Arc<dyn LogStore>,
            MemKv::default(),
            Arc::new(transport),
            inbound,
        )
        .expect("replica config");
        replicas.push(replica);
        stores.push(store);
        dirs.push(dir);
    }
    let deadline = Instant::now() + ELECTION_WAIT_MAX;
    let leader = loop {
        assert!(Instant::now() < deadline, "no leader elected");
        let mut found = None;
        for (i, r) in replicas.iter().enumerate() {
            if let Ok(s) = r.handle().status().await
                && s.protocol.role == Role::Leader
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            // The leader's no-op must commit before it serves proposals
            // without refusing; one proposal that succeeds shows it did.
            if replicas[i].handle().propose(put(u64::MAX)).await.is_ok() {
                break i;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Cluster {
        replicas,
        stores,
        leader,
        _dirs: dirs,
    }
}

/// Runs `ops` proposals from `clients` concurrent tasks on the leader,
/// recording each proposal's latency; returns the elapsed time.
async fn run(
    h: &ReplicaHandle<MemKv>,
    ops: u64,
    clients: u64,
    latencies: &Mutex<Vec<Duration>>,
) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity((ops / clients + 1) as usize);
            let mut i = c;
            while i < ops {
                let t = Instant::now();
                black_box(h.propose(put(i)).await.expect("proposal commits"));
                mine.push(t.elapsed());
                i += clients;
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(all);
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cluster = rt.block_on(start_cluster());
    let leader = cluster.replicas[cluster.leader].handle();
    let leader_store = Arc::clone(&cluster.stores[cluster.leader]);
    let mut g = c.benchmark_group("raft_3_members_rocksdb_propose");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for clients in CLIENTS {
        let latencies = Mutex::new(Vec::new());
        let (mut ops_total, mut elapsed_total) = (0u64, Duration::ZERO);
        let fsyncs_before = leader_store.stats().fsyncs;
        g.bench_with_input(
            BenchmarkId::new("clients", clients),
            &clients,
            |b, &clients| {
                b.iter_custom(|iters| {
                    // At least one op per client so every client runs.
                    let ops = iters.max(clients);
                    let took = rt.block_on(run(&leader, ops, clients, &latencies));
                    ops_total += ops;
                    elapsed_total += took;
                    took.mul_f64(iters as f64 / ops as f64)
                });
            },
        );
        let fsyncs = leader_store.stats().fsyncs - fsyncs_before;
        let mut l = latencies.into_inner().unwrap_or_else(|p| p.into_inner());
        l.sort_unstable();
        println!(
            "clients={clients}: {:.0} proposals/s; commit latency p50 {:?}, p99 {:?}, max {:?} \
             ({} proposals); leader fsyncs per proposal {:.3}",
            ops_total as f64 / elapsed_total.as_secs_f64().max(1e-9),
            percentile(&l, 0.50),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or_default(),
            l.len(),
            fsyncs as f64 / (l.len().max(1)) as f64,
        );
    }
    g.finish();
    rt.block_on(async {
        for r in cluster.replicas {
            r.shutdown().await.expect("clean shutdown");
        }
    });
    drop(cluster.stores);
}

criterion_group!(benches, bench);
criterion_main!(benches);
