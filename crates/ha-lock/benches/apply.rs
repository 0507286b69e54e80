//! Applied commands per second: put, txn (compare-and-swap) and lock
//! acquire/release, on the RocksDB state store and in memory.
//!
//! One element = one applied command (decode + execute + one WriteBatch on
//! RocksDB, WAL on, not fsync'd per apply). Every 10,000 commands the
//! history is compacted to the current revision (counted in the time, not
//! as an element) so memory and the DB stay bounded over long runs.
//!
//! `cargo bench -p ha-lock --features rocksdb --bench apply` (both stores),
//! `cargo bench -p ha-lock --bench apply` (memory only: no RocksDB build).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ha_core::state_machine::{Applied as Entry, StateMachine};
use ha_core::types::LogId;
use ha_lock::LockMachine;
use ha_lock::api::*;

/// Distinct keys the put and txn workloads cycle through.
const KEYS: usize = 10_000;
/// Value size of the put and txn workloads.
const VALUE_BYTES: usize = 100;
/// Commands between two compactions.
const COMPACT_EVERY: u64 = 10_000;

struct Runner {
    m: LockMachine,
    index: u64,
    lease: i64,
    /// What must outlive the machine (the RocksDB store and its tempdir).
    _keep: Vec<Box<dyn std::any::Any>>,
}

impl Runner {
    fn memory() -> Self {
        Self::init(
            LockMachine::in_memory(Limits::default()).expect("limits"),
            Vec::new(),
        )
    }

    #[cfg(feature = "rocksdb")]
    fn rocks() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            ha_core::storage::RocksLogStore::open(dir.path(), Default::default()).expect("open");
        let m = LockMachine::open_rocks(store.db(), ha_core::types::GroupId(1), Limits::default())
            .expect("open sm");
        // drop order: the machine first (field order), then store, then dir
        Self::init(m, vec![Box::new(store), Box::new(dir)])
    }

    fn init(m: LockMachine, keep: Vec<Box<dyn std::any::Any>>) -> Self {
        let mut r = Runner {
            m,
            index: 0,
            lease: 0,
            _keep: keep,
        };
        let out = r.apply(&encode_command(&Command::LeaseGrant(LeaseGrantRequest {
            id: 0,
            ttl_ms: 3_600_000,
        })));
        match decode_applied(&out).expect("decode").result {
            Ok(Response::LeaseGrant(g)) => r.lease = g.id,
            other => panic!("grant failed: {other:?}"),
        }
        r
    }

    fn apply(&mut self, cmd: &[u8]) -> Bytes {
        self.index += 1;
        let out = self
            .m
            .apply(LogId::new(1, self.index), Entry::Command(cmd))
            .expect("apply");
        if self.index.is_multiple_of(COMPACT_EVERY) {
            let rev = self.m.current_revision();
            if rev > self.m.compact_revision() {
                self.index += 1;
                let c = encode_command(&Command::Compact(CompactionRequest { revision: rev }));
                self.m
                    .apply(LogId::new(1, self.index), Entry::Command(&c))
                    .expect("compact");
            }
        }
        out
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key/{:06}", i % KEYS))
}

fn puts() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| {
            encode_command(&Command::Put(PutRequest {
                key: key(i),
                value: Bytes::from(vec![b'v'; VALUE_BYTES]),
                ..Default::default()
            }))
        })
        .collect()
}

/// Compare-and-swap: if the key's version is still 0 put it, else put a
/// second key — one compare and one put per command, both branches used.
fn txns() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| {
            let put = |k: Bytes| {
                RequestOp::Put(PutRequest {
                    key: k,
                    value: Bytes::from(vec![b't'; VALUE_BYTES]),
                    ..Default::default()
                })
            };
            encode_command(&Command::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key(i),
                    target: CompareTarget::Version(0),
                    ..Default::default()
                }],
                success: vec![put(key(i))],
                failure: vec![put(Bytes::from(format!("other/{:06}", i % KEYS)))],
            }))
        })
        .collect()
}

/// A store to measure: its name and how to make a runner on it.
type Store = (&'static str, fn() -> Runner);

/// The stores measured: RocksDB (with the feature) and memory.
fn stores() -> Vec<Store> {
    vec![
        #[cfg(feature = "rocksdb")]
        ("rocks", Runner::rocks as fn() -> Runner),
        ("memory", Runner::memory),
    ]
}

fn bench_workload(c: &mut Criterion, name: &str, cmds: impl Fn(&Runner) -> Vec<Bytes>) {
    let mut g = c.benchmark_group(format!("apply_{name}"));
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    for (store, make) in stores() {
        let mut r = make();
        let list = cmds(&r);
        let mut next = 0usize;
        g.bench_function(store, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let out = r.apply(&list[next % list.len()]);
                    black_box(out);
                    next += 1;
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_workload(c, "put", |_| puts());
    bench_workload(c, "txn_cas", |_| txns());
    // lock acquire (uncontended, fresh owner key each time) then release:
    // the list alternates Lock and Unlock, one element per command.
    bench_workload(c, "lock_unlock", |r| {
        let mut v = Vec::new();
        for i in 0..1000 {
            let name = Bytes::from(format!("lock/{i}"));
            v.push(encode_command(&Command::Lock {
                name: name.clone(),
                lease: r.lease,
            }));
            v.push(encode_command(&Command::Unlock {
                key: owner_key(&name, r.lease),
            }));
        }
        v
    });
}

criterion_group!(apply, benches);
criterion_main!(apply);
