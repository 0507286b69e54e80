//! Side-by-side benchmark of ha-ring against the consistent-hashing crates
//! people use (issue 6). Run: `cargo bench -p ha-ring --bench compare`.
//!
//! Two parts run in one process, on the same pre-hashed `u64` keys:
//!
//! 1. Criterion benches `lookup/<algo>/<n>` and `replicas3/<algo>/<n>`
//!    (per-key time; set `HA_RING_SKIP_CRITERION=1` to skip).
//! 2. A report (set `HA_RING_SKIP_REPORT=1` to skip): lookup median and p99
//!    ns/op from batched timings, balance (peak/mean and coefficient of
//!    variation over 1M keys, with the random-assignment baseline), movement
//!    on +1 node, −1 random node, −10% and −50% of nodes as a ratio to the
//!    ideal plus collateral moves, memory per node, update cost; then shard →
//!    node balance and movement for shard placement. It prints a table and
//!    writes `docs/bench/ha-ring-compare.csv` and `.svg`.
//!
//! `HA_RING_BENCH_QUICK=1` shrinks key counts and sizes for a smoke run;
//! `HA_RING_BENCH_ONLY=<substring>` keeps only matching algorithms (the CSV
//! and SVG are then partial too).
//!
//! Comparison crates hash the `u64` key with their own hasher (that is how
//! they are used); ha-ring takes the pre-hashed key as is. Both are what a
//! caller holding a 64-bit key hash would pay.

use std::alloc::System;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ha_core::{GroupId, NodeId};
use ha_ring::anchor::AnchorHash;
use ha_ring::hash::{fmix64, reduce};
use ha_ring::jump::jump_hash;
use ha_ring::rendezvous::Rendezvous;
use ha_ring::ring::{HashRing, RingConfig};
use ha_ring::table::ShardTable;
use ha_ring::{Cluster, NodeLocator, NodeSpec, ReplicaLocator};
use maglev::ConsistentHasher as _;
use rendezvous_hash::Node as _;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Virtual nodes per node for every ring (ours and the crates').
const VNODES: u32 = 160;

fn quick() -> bool {
    std::env::var_os("HA_RING_BENCH_QUICK").is_some()
}

fn sizes() -> Vec<usize> {
    if quick() {
        vec![10, 100, 1000]
    } else {
        vec![10, 100, 1_000, 10_000]
    }
}

fn keys(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| fmix64(i ^ 0x5EED_0F4B_EBC4))
        .collect()
}

fn cluster(ids: &[u64]) -> Cluster {
    Cluster::new(ids.iter().map(|&i| NodeSpec::new(i))).expect("bench cluster")
}

/// One algorithm under test, keyed by node ids.
trait Algo: Sized {
    const NAME: &'static str;
    const OURS: bool;
    /// O(n) lookups: the report uses fewer keys for them at large n.
    const LINEAR: bool = false;
    /// Largest n the algorithm can be built for on this machine.
    const MAX_NODES: usize = usize::MAX;
    fn build(ids: &[u64]) -> Self;
    fn lookup(&self, key: u64) -> u64;
    /// Adds `id`; `after` is the full new id list. Default: rebuild.
    fn add(&mut self, after: &[u64], _id: u64) {
        *self = Self::build(after);
    }
    /// Removes `gone`; `after` is the full new id list. Default: rebuild.
    fn remove_many(&mut self, after: &[u64], _gone: &[u64]) {
        *self = Self::build(after);
    }
    /// Writes three distinct replicas; false if unsupported.
    fn replicas3(&self, _key: u64, _out: &mut Vec<NodeId>) -> bool {
        false
    }
}

struct OurRing(HashRing);
impl Algo for OurRing {
    const NAME: &'static str = "ha-ring ring(160)";
    const OURS: bool = true;
    fn build(ids: &[u64]) -> Self {
        Self(
            HashRing::new(
                cluster(ids),
                RingConfig {
                    vnodes_per_weight: VNODES,
                },
            )
            .expect("ring"),
        )
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.node(key).get()
    }
    fn replicas3(&self, key: u64, out: &mut Vec<NodeId>) -> bool {
        self.0.replicas_into(key, 3, out).expect("n >= 3");
        true
    }
}

struct OurAnchor(AnchorHash);
impl Algo for OurAnchor {
    const NAME: &'static str = "ha-ring anchor";
    const OURS: bool = true;
    fn build(ids: &[u64]) -> Self {
        // Capacity n + 1: room for the +1 scenario.
        Self(AnchorHash::new(&cluster(ids), ids.len() as u32 + 1).expect("anchor"))
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.node(key).get()
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.add_node(NodeSpec::new(id)).expect("capacity");
    }
    fn remove_many(&mut self, _after: &[u64], gone: &[u64]) {
        for &g in gone {
            self.0.remove_node(NodeId(g)).expect("member");
        }
    }
}

struct OurHrw(Rendezvous);
impl Algo for OurHrw {
    const NAME: &'static str = "ha-ring hrw";
    const OURS: bool = true;
    const LINEAR: bool = true;
    fn build(ids: &[u64]) -> Self {
        Self(Rendezvous::new(cluster(ids)))
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.node(key).get()
    }
    fn replicas3(&self, key: u64, out: &mut Vec<NodeId>) -> bool {
        self.0.replicas_into(key, 3, out).expect("n >= 3");
        true
    }
}

struct OurJump(Vec<u64>);
impl Algo for OurJump {
    const NAME: &'static str = "ha-ring jump";
    const OURS: bool = true;
    fn build(ids: &[u64]) -> Self {
        Self(ids.to_vec())
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0[jump_hash(key, self.0.len() as u32) as usize]
    }
}

struct CrateHashring(hashring::HashRing<(u64, u32)>);
impl Algo for CrateHashring {
    const NAME: &'static str = "hashring(160)";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        let mut r = hashring::HashRing::new();
        r.batch_add(
            ids.iter()
                .flat_map(|&i| (0..VNODES).map(move |v| (i, v)))
                .collect(),
        );
        Self(r)
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.get(&key).map_or(0, |n| n.0)
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.batch_add((0..VNODES).map(|v| (id, v)).collect());
    }
    fn remove_many(&mut self, after: &[u64], gone: &[u64]) {
        // Each point removal shifts the whole Vec; past a few nodes a rebuild
        // (same deterministic hasher, same result) is far cheaper.
        if gone.len() > 4 {
            *self = Self::build(after);
            return;
        }
        for &g in gone {
            for v in 0..VNODES {
                self.0.remove(&(g, v));
            }
        }
    }
}

/// hashring with one point per node, the way its docs use it: the only
/// comparison crate with a replica walk (`get_with_replicas`).
struct CrateHashringPlain(hashring::HashRing<u64>);
impl Algo for CrateHashringPlain {
    const NAME: &'static str = "hashring(1)";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        let mut r = hashring::HashRing::new();
        r.batch_add(ids.to_vec());
        Self(r)
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.add(id);
    }
    fn remove_many(&mut self, _after: &[u64], gone: &[u64]) {
        for g in gone {
            self.0.remove(g);
        }
    }
    fn replicas3(&self, key: u64, out: &mut Vec<NodeId>) -> bool {
        out.clear();
        // get_with_replicas(k, 2) returns the owner plus 2 successors.
        if let Some(v) = self.0.get_with_replicas(&key, 2) {
            out.extend(v.into_iter().map(NodeId));
        }
        true
    }
}

#[derive(Clone)]
struct CNode(u64);
impl conhash::Node for CNode {
    fn name(&self) -> String {
        format!("node-{}", self.0)
    }
}

struct CrateConhash(conhash::ConsistentHash<CNode>);
impl Algo for CrateConhash {
    const NAME: &'static str = "conhash(160)";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        let mut r = conhash::ConsistentHash::new();
        for &i in ids {
            r.add(&CNode(i), VNODES as usize);
        }
        Self(r)
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.get(&key.to_le_bytes()).map_or(0, |n| n.0)
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.add(&CNode(id), VNODES as usize);
    }
    fn remove_many(&mut self, _after: &[u64], gone: &[u64]) {
        for &g in gone {
            self.0.remove(&CNode(g));
        }
    }
}

/// Table size fixed at 100 × the initial n (its default for that n), kept
/// across membership changes as Maglev deployments do.
struct CrateMaglev(maglev::Maglev<u64>, usize);
impl Algo for CrateMaglev {
    const NAME: &'static str = "maglev";
    const OURS: bool = false;
    /// Its build materialises n permutations of a ~100·n table: 80 GB at 10k.
    const MAX_NODES: usize = 1_000;
    fn build(ids: &[u64]) -> Self {
        let cap = ids.len() * 100;
        Self(maglev::Maglev::with_capacity(ids.to_vec(), cap), cap)
    }
    fn add(&mut self, after: &[u64], _id: u64) {
        self.0 = maglev::Maglev::with_capacity(after.to_vec(), self.1);
    }
    fn remove_many(&mut self, after: &[u64], _gone: &[u64]) {
        self.0 = maglev::Maglev::with_capacity(after.to_vec(), self.1);
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }
}

type SipBuild = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// With a fixed-key SipHash (its default `RandomState` would reseed per
/// instance and make the movement comparison meaningless).
struct CrateAnchor(anchorhash::AnchorHash<u64, u64, SipBuild>);
impl Algo for CrateAnchor {
    const NAME: &'static str = "anchorhash";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        Self(
            anchorhash::Builder::with_hasher(SipBuild::default())
                .with_resources(ids.to_vec())
                .build(ids.len() as u16 + 1),
        )
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0.get_resource(key).copied().unwrap_or(0)
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.add_resource(id).expect("capacity");
    }
    fn remove_many(&mut self, _after: &[u64], gone: &[u64]) {
        for g in gone {
            self.0.remove_resource(g).expect("member");
        }
    }
}

struct CrateJumphash(jumphash::JumpHasher, Vec<u64>);
impl Algo for CrateJumphash {
    const NAME: &'static str = "jumphash";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        Self(jumphash::JumpHasher::new_with_keys(1, 2), ids.to_vec())
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.1[self.0.slot(&key, self.1.len() as u32) as usize]
    }
}

struct CrateJch(Vec<u64>);
impl Algo for CrateJch {
    const NAME: &'static str = "jump-consistent-hash";
    const OURS: bool = false;
    fn build(ids: &[u64]) -> Self {
        Self(ids.to_vec())
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0[jump_consistent_hash::hash(key, self.0.len()) as usize]
    }
}

struct CrateRendezvous(
    rendezvous_hash::RendezvousNodes<
        rendezvous_hash::IdNode<u64>,
        rendezvous_hash::DefaultNodeHasher,
    >,
);
impl Algo for CrateRendezvous {
    const NAME: &'static str = "rendezvous_hash";
    const OURS: bool = false;
    const LINEAR: bool = true;
    fn build(ids: &[u64]) -> Self {
        let mut r = rendezvous_hash::RendezvousNodes::default();
        for &i in ids {
            r.insert(rendezvous_hash::IdNode::new(i));
        }
        Self(r)
    }
    #[inline]
    fn lookup(&self, key: u64) -> u64 {
        self.0
            .calc_candidates(&key)
            .next()
            .map_or(0, |n| *n.node_id())
    }
    fn add(&mut self, _after: &[u64], id: u64) {
        self.0.insert(rendezvous_hash::IdNode::new(id));
    }
    fn remove_many(&mut self, _after: &[u64], gone: &[u64]) {
        for g in gone {
            self.0.remove(g);
        }
    }
    fn replicas3(&self, key: u64, out: &mut Vec<NodeId>) -> bool {
        out.clear();
        out.extend(
            self.0
                .calc_candidates(&key)
                .take(3)
                .map(|n| NodeId(*n.node_id())),
        );
        true
    }
}

/// `HA_RING_BENCH_ONLY=<substring>`: run only algorithms whose name contains it.
fn selected(name: &str) -> bool {
    std::env::var("HA_RING_BENCH_ONLY").map_or(true, |f| name.contains(&f))
}

fn ids_for(n: usize) -> Vec<u64> {
    (1..=n as u64).collect()
}

// ---------------------------------------------------------------- criterion

fn crit_one<A: Algo>(c: &mut Criterion, n: usize, probe: &[u64]) {
    if !selected(A::NAME) || n > A::MAX_NODES || (A::LINEAR && n > 1_000 && quick()) {
        return;
    }
    let ids = ids_for(n);
    let a = A::build(&ids);
    let mut g = c.benchmark_group(format!("lookup/{n}"));
    g.throughput(Throughput::Elements(probe.len() as u64));
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.sample_size(20);
    g.bench_function(BenchmarkId::from_parameter(A::NAME), |b| {
        b.iter(|| {
            for &k in probe {
                black_box(a.lookup(black_box(k)));
            }
        })
    });
    g.finish();
    let mut out = Vec::with_capacity(3);
    if n >= 3 && a.replicas3(probe[0], &mut out) {
        let mut g = c.benchmark_group(format!("replicas3/{n}"));
        g.throughput(Throughput::Elements(probe.len() as u64));
        g.warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(1));
        g.sample_size(20);
        g.bench_function(BenchmarkId::from_parameter(A::NAME), |b| {
            b.iter(|| {
                for &k in probe {
                    a.replicas3(black_box(k), &mut out);
                    black_box(&out);
                }
            })
        });
        g.finish();
    }
}

fn criterion_part() {
    let mut c = Criterion::default().configure_from_args();
    let probe: Vec<u64> = keys(64);
    for n in sizes() {
        crit_one::<OurAnchor>(&mut c, n, &probe);
        crit_one::<OurRing>(&mut c, n, &probe);
        crit_one::<OurJump>(&mut c, n, &probe);
        crit_one::<OurHrw>(&mut c, n, &probe);
        crit_one::<CrateHashring>(&mut c, n, &probe);
        crit_one::<CrateHashringPlain>(&mut c, n, &probe);
        crit_one::<CrateConhash>(&mut c, n, &probe);
        crit_one::<CrateMaglev>(&mut c, n, &probe);
        crit_one::<CrateAnchor>(&mut c, n, &probe);
        crit_one::<CrateJumphash>(&mut c, n, &probe);
        crit_one::<CrateJch>(&mut c, n, &probe);
        crit_one::<CrateRendezvous>(&mut c, n, &probe);
    }
    c.final_summary();
}

// ------------------------------------------------------------------- report

#[derive(Default, Clone)]
struct Row {
    algo: &'static str,
    ours: bool,
    n: usize,
    keys: usize,
    median_ns: f64,
    p99_ns: f64,
    r3_median_ns: Option<f64>,
    r3_p99_ns: Option<f64>,
    peak_mean: f64,
    cv: f64,
    base_peak_mean: f64,
    base_cv: f64,
    /// (ratio to ideal, collateral) for +1, -1, -10%, -50%.
    moves: [(f64, u64); 4],
    mem_bytes_per_node: f64,
    add_us: f64,
    remove_us: f64,
}

/// Per-op latency distribution: many batches, each timed as a whole.
fn latency(mut f: impl FnMut(u64), keys: &[u64]) -> (f64, f64) {
    let t = Instant::now();
    for &k in &keys[..64] {
        f(k);
    }
    let est_ns = t.elapsed().as_nanos() as f64 / 64.0;
    let batch = ((20_000.0 / est_ns.max(1.0)) as usize).clamp(1, 256);
    let budget = Duration::from_millis(if quick() { 100 } else { 400 });
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut i = 0usize;
    while samples.len() < 5_000 && (start.elapsed() < budget || samples.len() < 20) {
        let t = Instant::now();
        for _ in 0..batch {
            f(keys[i % keys.len()]);
            i += 1;
        }
        samples.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    (q(0.5), q(0.99))
}

fn balance(owners: &[u64], n: usize, ids: &[u64]) -> (f64, f64) {
    let mut counts = std::collections::HashMap::with_capacity(n);
    for &id in ids {
        counts.insert(id, 0u64);
    }
    for o in owners {
        *counts.entry(*o).or_insert(0) += 1;
    }
    let mean = owners.len() as f64 / n as f64;
    let peak = counts.values().copied().max().unwrap_or(0) as f64;
    let var = counts
        .values()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    (peak / mean, var.sqrt() / mean)
}

fn pick_victims(ids: &[u64], count: usize, salt: u64) -> Vec<u64> {
    let mut v: Vec<(u64, u64)> = ids.iter().map(|&i| (fmix64(i ^ salt), i)).collect();
    v.sort_unstable();
    v.into_iter().take(count).map(|x| x.1).collect()
}

fn report_one<A: Algo>(n: usize, all_keys: &[u64]) -> Option<Row> {
    if !selected(A::NAME) || n > A::MAX_NODES {
        return None;
    }
    let ids = ids_for(n);
    let key_count = if A::LINEAR {
        all_keys.len().min(50_000_000 / n)
    } else {
        all_keys.len()
    };
    let ks = &all_keys[..key_count];
    eprintln!("report: {} n={n} keys={key_count}", A::NAME);

    let region = Region::new(GLOBAL);
    let a = A::build(&ids);
    let st = region.change();
    let mem = (st.bytes_allocated as f64 + st.bytes_reallocated as f64
        - st.bytes_deallocated as f64)
        / n as f64;

    let (median_ns, p99_ns) = latency(
        |k| {
            black_box(a.lookup(black_box(k)));
        },
        ks,
    );
    let mut out = Vec::with_capacity(3);
    let (r3_median_ns, r3_p99_ns) = if n >= 3 && a.replicas3(ks[0], &mut out) {
        let (m, p) = latency(
            |k| {
                a.replicas3(black_box(k), &mut out);
                black_box(&out);
            },
            ks,
        );
        (Some(m), Some(p))
    } else {
        (None, None)
    };

    let owners: Vec<u64> = ks.iter().map(|&k| a.lookup(k)).collect();
    let (peak_mean, cv) = balance(&owners, n, &ids);
    let random: Vec<u64> = ks
        .iter()
        .map(|&k| ids[reduce(fmix64(k ^ 0xBA5E), n as u64) as usize])
        .collect();
    let (base_peak_mean, base_cv) = balance(&random, n, &ids);

    // Movement scenarios.
    let mut moves = [(0.0, 0u64); 4];
    let next_id = n as u64 + 1;
    let removals = [1usize, 1, (n / 10).max(1), (n / 2).max(1)];
    let mut add_us = 0.0;
    let mut remove_us = 0.0;
    for (s, &count) in removals.iter().enumerate() {
        let mut b = A::build(&ids);
        let (after, gone): (Vec<u64>, Vec<u64>) = if s == 0 {
            let mut after = ids.clone();
            after.push(next_id);
            let t = Instant::now();
            b.add(&after, next_id);
            add_us = t.elapsed().as_secs_f64() * 1e6;
            (after, Vec::new())
        } else {
            let gone = pick_victims(&ids, count, s as u64);
            let gone_set: BTreeSet<u64> = gone.iter().copied().collect();
            let after: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|i| !gone_set.contains(i))
                .collect();
            let t = Instant::now();
            b.remove_many(&after, &gone);
            if s == 1 {
                remove_us = t.elapsed().as_secs_f64() * 1e6;
            }
            (after, gone)
        };
        let gone_set: BTreeSet<u64> = gone.iter().copied().collect();
        let after_set: BTreeSet<u64> = after.iter().copied().collect();
        let mut moved = 0u64;
        let mut collateral = 0u64;
        for (k, &o) in ks.iter().zip(&owners) {
            let x = b.lookup(*k);
            if x != o {
                moved += 1;
                if !gone_set.contains(&o) && after_set.contains(&x) && x != next_id {
                    collateral += 1;
                }
            }
        }
        let ideal = if s == 0 {
            key_count as f64 / (n + 1) as f64
        } else {
            owners.iter().filter(|o| gone_set.contains(o)).count() as f64
        };
        moves[s] = (moved as f64 / ideal.max(1.0), collateral);
    }

    Some(Row {
        algo: A::NAME,
        ours: A::OURS,
        n,
        keys: key_count,
        median_ns,
        p99_ns,
        r3_median_ns,
        r3_p99_ns,
        peak_mean,
        cv,
        base_peak_mean,
        base_cv,
        moves,
        mem_bytes_per_node: mem,
        add_us,
        remove_us,
    })
}

/// Shard → node placement: balance and movement of replica sets.
struct ShardRow {
    scheme: &'static str,
    n: usize,
    shards: usize,
    peak_mean: f64,
    leader_peak_mean: f64,
    leave_ratio: f64,
    leave_collateral: usize,
    join_ratio: f64,
    join_collateral: usize,
    build_ms: f64,
}

fn shard_rows(n: usize) -> Vec<ShardRow> {
    const R: usize = 3;
    // Recommended: at least ~50 replicas per node.
    let shards = (50 * n).div_ceil(R).max(1024);
    let ids = ids_for(n);
    let c = cluster(&ids);
    let gone = pick_victims(&ids, 1, 99)[0];
    let smaller = c.without_node(NodeId(gone)).expect("n > 1");
    let bigger = c.with_node(NodeSpec::new(n as u64 + 1)).expect("new id");
    let shard_ids: Vec<GroupId> = (1..=shards as u64).map(GroupId).collect();
    let mut rows = Vec::new();

    let stats = |t: &std::collections::BTreeMap<GroupId, Vec<NodeId>>, nodes: usize| {
        let mut load = std::collections::HashMap::new();
        let mut lead = std::collections::HashMap::new();
        for row in t.values() {
            for x in row {
                *load.entry(*x).or_insert(0usize) += 1;
            }
            if let Some(l) = row.first() {
                *lead.entry(*l).or_insert(0usize) += 1;
            }
        }
        let mean = (t.len() * R) as f64 / nodes as f64;
        let lmean = t.len() as f64 / nodes as f64;
        (
            *load.values().max().unwrap_or(&0) as f64 / mean,
            *lead.values().max().unwrap_or(&0) as f64 / lmean,
        )
    };
    let movement = |old: &std::collections::BTreeMap<GroupId, Vec<NodeId>>,
                    new: &std::collections::BTreeMap<GroupId, Vec<NodeId>>,
                    ideal: f64,
                    survivors: &BTreeSet<NodeId>| {
        let p = ha_ring::movement::plan(old, new);
        (
            p.moves.len() as f64 / ideal.max(1.0),
            p.collateral(survivors),
        )
    };
    let surv_leave: BTreeSet<NodeId> = smaller.id_set();
    let surv_join: BTreeSet<NodeId> = c.id_set();

    // Balanced table (recommended).
    let t0 = Instant::now();
    let table = ShardTable::new(&c, shard_ids.iter().copied(), R).expect("table");
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (peak_mean, leader_peak_mean) = stats(table.assignments(), n);
    let lost = table.loads().get(&NodeId(gone)).copied().unwrap_or(0) as f64;
    let leave = table.rebalance(&smaller).expect("rebalance");
    let (leave_ratio, leave_collateral) =
        movement(table.assignments(), leave.assignments(), lost, &surv_leave);
    let join = table.rebalance(&bigger).expect("rebalance");
    let join_ideal = ((shards * R) as f64 / (n + 1) as f64).floor();
    let (join_ratio, join_collateral) = movement(
        table.assignments(),
        join.assignments(),
        join_ideal,
        &surv_join,
    );
    rows.push(ShardRow {
        scheme: "ha-ring table",
        n,
        shards,
        peak_mean,
        leader_peak_mean,
        leave_ratio,
        leave_collateral,
        join_ratio,
        join_collateral,
        build_ms,
    });

    // Stateless schemes: replicas of each shard's hash, one locator per
    // membership.
    let stateless = |scheme: &'static str,
                     make: &dyn Fn(&Cluster) -> Box<dyn ReplicaLocator>|
     -> ShardRow {
        let place = |cl: &Cluster| -> std::collections::BTreeMap<GroupId, Vec<NodeId>> {
            let loc = make(cl);
            shard_ids
                .iter()
                .map(|g| {
                    let h = ha_ring::hash::HashFn::V1.hash_u64(g.0);
                    (*g, loc.replicas(h, R).expect("replicas"))
                })
                .collect()
        };
        let t0 = Instant::now();
        let old = place(&c);
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (peak_mean, leader_peak_mean) = stats(&old, n);
        let lost = old.values().filter(|r| r.contains(&NodeId(gone))).count() as f64;
        let (leave_ratio, leave_collateral) = movement(&old, &place(&smaller), lost, &surv_leave);
        let (join_ratio, join_collateral) = movement(&old, &place(&bigger), join_ideal, &surv_join);
        ShardRow {
            scheme,
            n,
            shards,
            peak_mean,
            leader_peak_mean,
            leave_ratio,
            leave_collateral,
            join_ratio,
            join_collateral,
            build_ms,
        }
    };
    rows.push(stateless("ha-ring hrw", &|cl| {
        Box::new(Rendezvous::new(cl.clone()))
    }));
    rows.push(stateless("ha-ring ring(160)", &|cl| {
        Box::new(HashRing::new(cl.clone(), RingConfig::default()).expect("ring"))
    }));
    rows
}

fn svg_chart(rows: &[Row]) -> String {
    // Grouped bars: lookup median ns (log scale) per algorithm, one bar per n.
    let algos: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for r in rows {
            if !v.contains(&r.algo) {
                v.push(r.algo);
            }
        }
        v
    };
    let ns: Vec<usize> = sizes();
    let colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2"];
    let (w, h, left, bottom, top) = (1100.0, 520.0, 70.0, 140.0, 40.0);
    let plot_h = h - bottom - top;
    let group_w = (w - left - 20.0) / algos.len() as f64;
    let bar_w = group_w / (ns.len() as f64 + 1.0);
    let (lo, hi) = (0.0f64, 6.0f64); // log10 ns: 1 ns .. 1 ms
    let y = |v: f64| top + plot_h * (1.0 - (v.max(1.0).log10() - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="16" text-anchor="middle">Lookup latency, median ns/op (log scale), pre-hashed u64 keys</text>"#,
        w / 2.0
    );
    for p in 0..=6 {
        let yy = y(10f64.powi(p));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - 20.0,
            left - 6.0,
            yy + 4.0,
            ["1", "10", "100", "1µs", "10µs", "100µs", "1ms"][p as usize]
        );
    }
    for (gi, algo) in algos.iter().enumerate() {
        let gx = left + gi as f64 * group_w;
        for (ni, n) in ns.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.algo == *algo && r.n == *n) {
                let x = gx + (ni as f64 + 0.5) * bar_w;
                let yy = y(r.median_ns);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} n={}: {:.1} ns</title></rect>"#,
                    bar_w * 0.9,
                    top + plot_h - yy,
                    colors[ni % colors.len()],
                    algo,
                    n,
                    r.median_ns
                );
            }
        }
        let tx = gx + group_w / 2.0;
        // Staggered horizontal labels (three rows) so long names never overlap.
        let ty = top + plot_h + 16.0 + 15.0 * (gi % 3) as f64;
        let weight = if algo.starts_with("ha-ring") {
            "bold"
        } else {
            "normal"
        };
        let _ = writeln!(
            s,
            r#"<text x="{tx:.1}" y="{ty:.1}" font-size="11" font-weight="{weight}" text-anchor="middle">{algo}</text>"#
        );
    }
    for (ni, n) in ns.iter().enumerate() {
        let x = left + 10.0 + ni as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">n = {n}</text>"#,
            h - 24.0,
            colors[ni % colors.len()],
            x + 16.0,
            h - 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn report() {
    let key_total = if quick() { 100_000 } else { 1_000_000 };
    let all_keys = keys(key_total);
    let mut rows: Vec<Row> = Vec::new();
    for n in sizes() {
        rows.extend(report_one::<OurAnchor>(n, &all_keys));
        rows.extend(report_one::<OurRing>(n, &all_keys));
        rows.extend(report_one::<OurJump>(n, &all_keys));
        rows.extend(report_one::<OurHrw>(n, &all_keys));
        rows.extend(report_one::<CrateHashring>(n, &all_keys));
        rows.extend(report_one::<CrateHashringPlain>(n, &all_keys));
        rows.extend(report_one::<CrateConhash>(n, &all_keys));
        rows.extend(report_one::<CrateMaglev>(n, &all_keys));
        rows.extend(report_one::<CrateAnchor>(n, &all_keys));
        rows.extend(report_one::<CrateJumphash>(n, &all_keys));
        rows.extend(report_one::<CrateJch>(n, &all_keys));
        rows.extend(report_one::<CrateRendezvous>(n, &all_keys));
    }

    let mut csv = String::from(
        "algo,ours,n,keys,lookup_median_ns,lookup_p99_ns,replicas3_median_ns,replicas3_p99_ns,peak_mean,cv,random_peak_mean,random_cv,move_add1_ratio,move_add1_collateral,move_rm1_ratio,move_rm1_collateral,move_rm10pct_ratio,move_rm10pct_collateral,move_rm50pct_ratio,move_rm50pct_collateral,mem_bytes_per_node,add_node_us,remove_node_us\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.1}"));
    for r in &rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.2},{:.2},{},{},{:.4},{:.4},{:.4},{:.4},{:.3},{},{:.3},{},{:.3},{},{:.3},{},{:.0},{:.1},{:.1}",
            r.algo,
            r.ours,
            r.n,
            r.keys,
            r.median_ns,
            r.p99_ns,
            opt(r.r3_median_ns),
            opt(r.r3_p99_ns),
            r.peak_mean,
            r.cv,
            r.base_peak_mean,
            r.base_cv,
            r.moves[0].0,
            r.moves[0].1,
            r.moves[1].0,
            r.moves[1].1,
            r.moves[2].0,
            r.moves[2].1,
            r.moves[3].0,
            r.moves[3].1,
            r.mem_bytes_per_node,
            r.add_us,
            r.remove_us
        );
    }

    println!("\n## key → node (pre-hashed u64 keys)\n");
    println!(
        "| algo | n | keys | lookup median/p99 ns | replicas3 median/p99 ns | peak/mean (random) | CV (random) | +1 | −1 | −10% | −50% | mem B/node | add µs | remove µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let mv = |i: usize| format!("{:.3}/{}", r.moves[i].0, r.moves[i].1);
        let r3 = match (r.r3_median_ns, r.r3_p99_ns) {
            (Some(m), Some(p)) => format!("{m:.0}/{p:.0}"),
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {:.1}/{:.1} | {} | {:.3} ({:.3}) | {:.4} ({:.4}) | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} |",
            r.algo,
            r.n,
            r.keys,
            r.median_ns,
            r.p99_ns,
            r3,
            r.peak_mean,
            r.base_peak_mean,
            r.cv,
            r.base_cv,
            mv(0),
            mv(1),
            mv(2),
            mv(3),
            r.mem_bytes_per_node,
            r.add_us,
            r.remove_us
        );
    }
    println!(
        "\n(movement cells: moved keys / ideal, then collateral moves between surviving nodes)"
    );

    // Targets at n = 1000.
    let at = |name: &str, n: usize| rows.iter().find(|r| r.algo == name && r.n == n);
    let fastest_crate = rows
        .iter()
        .filter(|r| !r.ours && r.n == 1_000)
        .min_by(|a, b| a.median_ns.total_cmp(&b.median_ns));
    if let (Some(ours), Some(best)) = (at("ha-ring anchor", 1_000), fastest_crate) {
        println!(
            "\ntarget lookup@1000: ha-ring anchor {:.1} ns vs fastest crate {} {:.1} ns → ratio {:.2} ({})",
            ours.median_ns,
            best.algo,
            best.median_ns,
            ours.median_ns / best.median_ns,
            if ours.median_ns <= best.median_ns {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    if let Some(r) = at("ha-ring ring(160)", 1_000) {
        let m = r.r3_median_ns.unwrap_or(f64::NAN);
        println!(
            "target replicas3@1000 ≤ 200 ns: ha-ring ring {m:.0} ns ({})",
            if m <= 200.0 { "met" } else { "MISSED" }
        );
    }

    println!("\n## shard → 3 replicas\n");
    println!(
        "| scheme | n | shards | replica peak/mean | leader peak/mean | leave moves/ideal | leave collateral | join moves/ideal | join collateral | build ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut shard_csv = String::from(
        "scheme,n,shards,peak_mean,leader_peak_mean,leave_ratio,leave_collateral,join_ratio,join_collateral,build_ms\n",
    );
    let filtered = std::env::var_os("HA_RING_BENCH_ONLY").is_some();
    let shard_sizes: Vec<usize> = if filtered && !selected("shard") {
        Vec::new()
    } else if quick() {
        vec![10, 100]
    } else {
        vec![10, 100, 1_000]
    };
    for n in shard_sizes {
        eprintln!("report: shard placement n={n}");
        for r in shard_rows(n) {
            println!(
                "| {} | {} | {} | {:.4} | {:.4} | {:.3} | {} | {:.3} | {} | {:.1} |",
                r.scheme,
                r.n,
                r.shards,
                r.peak_mean,
                r.leader_peak_mean,
                r.leave_ratio,
                r.leave_collateral,
                r.join_ratio,
                r.join_collateral,
                r.build_ms
            );
            let _ = writeln!(
                shard_csv,
                "{},{},{},{:.4},{:.4},{:.3},{},{:.3},{},{:.1}",
                r.scheme,
                r.n,
                r.shards,
                r.peak_mean,
                r.leader_peak_mean,
                r.leave_ratio,
                r.leave_collateral,
                r.join_ratio,
                r.join_collateral,
                r.build_ms
            );
        }
    }

    if filtered {
        eprintln!("HA_RING_BENCH_ONLY is set: not overwriting the CSV/SVG files");
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bench");
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, body)) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    };
    write("ha-ring-compare.csv", &csv);
    write("ha-ring-shards.csv", &shard_csv);
    write("ha-ring-compare.svg", &svg_chart(&rows));
}

fn main() {
    if std::env::var_os("HA_RING_SKIP_CRITERION").is_none() {
        criterion_part();
    }
    if std::env::var_os("HA_RING_SKIP_REPORT").is_none() {
        report();
    }
}
