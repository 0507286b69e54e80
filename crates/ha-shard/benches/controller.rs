//! Controller planning cost at 1,000 shards × 100 members (R = 3):
//! a quiet map, the re-target after a member dies (an ha-ring rebalance),
//! the first move batch after it, leader spreading from a skewed start, and
//! a map encode + decode; plus key routing.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ha_ring::{Cluster, NodeSpec};
use ha_shard::controller::{ClusterView, Controller, ControllerConfig, MemberStatus};
use ha_shard::map::ShardMap;

const SHARDS: u64 = 1000;
const MEMBERS: u64 = 100;

fn view(now_ms: u64, dead: Option<u64>) -> ClusterView {
    ClusterView {
        now_ms,
        observing_since_ms: 0,
        members: (1..=MEMBERS)
            .map(|i| {
                let spec = NodeSpec::new(i).zone(["a", "b", "c"][(i % 3) as usize]);
                MemberStatus::heard(spec, 0, if Some(i) == dead { 0 } else { now_ms })
            })
            .collect(),
        caught_up: BTreeSet::new(),
    }
}

fn bench(c: &mut Criterion) {
    let cluster = Cluster::new(
        (1..=MEMBERS).map(|i| NodeSpec::new(i).zone(["a", "b", "c"][(i % 3) as usize])),
    )
    .unwrap();
    let mut map = ShardMap::new(SHARDS, 3, &cluster).unwrap();
    // Leaders where the balanced table prefers them (the steady state).
    let mut skewed = map.clone();
    for s in map.shards().to_vec() {
        map.observe_leader(s.id(), Some(s.target()[0])).unwrap();
        // The lowest id leads: members 1..=3 lead far above the cap.
        let lowest = *s.voters().iter().next().unwrap();
        skewed.observe_leader(s.id(), Some(lowest)).unwrap();
    }
    let ctl = Controller::new(ControllerConfig::default()).unwrap();
    let quiet = view(60_000, None);
    // Spread the leaders fully first: a quiet map has nothing to do.
    for _ in 0..1000 {
        let plan = ctl.plan(&map, &quiet).unwrap();
        if plan.steps.is_empty() {
            break;
        }
        for step in &plan.steps {
            map.apply(step).unwrap();
        }
    }
    assert!(ctl.plan(&map, &quiet).unwrap().steps.is_empty());
    let one_dead = view(60_000, Some(7));
    let retarget = ctl.plan(&map, &one_dead).unwrap();
    assert_eq!(retarget.steps.len(), 1);
    let mut moved = map.clone();
    moved.apply(&retarget.steps[0]).unwrap();

    // Fairness and movement, printed with the timings.
    let loads = map.loads();
    let mean = (SHARDS * 3) as f64 / MEMBERS as f64;
    let peak = *loads.values().max().unwrap() as f64;
    let leads = map.leader_loads();
    let dead_load = map.loads()[&ha_core::NodeId(7)];
    let ha_shard::map::Step::SetTarget { rows, .. } = &retarget.steps[0] else {
        unreachable!("a death is re-planned as one SetTarget")
    };
    let changed: usize = map
        .shards()
        .iter()
        .zip(rows)
        .map(|(s, row)| row.iter().filter(|n| !s.target().contains(n)).count())
        .sum();
    eprintln!(
        "fairness {SHARDS} shards x R=3 on {MEMBERS} members: replicas peak/mean {:.3} \
         ({peak} / {mean:.1}); leaders max {} min {} (cap {}); member 7 dies: \
         {changed} replicas re-placed for the {dead_load} it held",
        peak / mean,
        leads.values().max().unwrap(),
        leads.values().min().unwrap(),
        SHARDS.div_ceil(MEMBERS),
    );

    let mut g = c.benchmark_group("controller_1000x100");
    g.bench_function("plan_quiet", |b| {
        b.iter(|| ctl.plan(black_box(&map), black_box(&quiet)).unwrap())
    });
    g.bench_function("plan_retarget_after_death", |b| {
        b.iter(|| ctl.plan(black_box(&map), black_box(&one_dead)).unwrap())
    });
    g.bench_function("plan_moves_after_death", |b| {
        b.iter(|| ctl.plan(black_box(&moved), black_box(&one_dead)).unwrap())
    });
    g.bench_function("plan_spread_skewed_leaders", |b| {
        b.iter(|| ctl.plan(black_box(&skewed), black_box(&quiet)).unwrap())
    });
    g.bench_function("encode_decode_map", |b| {
        b.iter(|| ShardMap::decode(&black_box(&map).encode()).unwrap())
    });
    g.finish();

    let router = map.router();
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("/registry/pods/ns-{i}/pod").into_bytes())
        .collect();
    c.bench_function("router_shard_for_key_1000", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            router.shard_for_key(black_box(&keys[i]))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
