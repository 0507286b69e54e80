//! Golden vectors: placement outputs for fixed inputs. If one of these
//! changes, every deployed cluster would remap keys on upgrade — so a change
//! here must come with a new `HashFn`/algorithm version, never an edit of the
//! expected values.

use std::fmt::Write;

use ha_core::GroupId;
use ha_core::placement::Placement;
use ha_ring::anchor::AnchorHash;
use ha_ring::hash::{HashFn, xxh64};
use ha_ring::jump::{ShardMap, jump_hash};
use ha_ring::placement::{LocatorPlacement, TablePlacement};
use ha_ring::rendezvous::Rendezvous;
use ha_ring::ring::{HashRing, RingConfig};
use ha_ring::{Cluster, NodeLocator, NodeSpec, ReplicaLocator};

fn cluster() -> Cluster {
    let zones = ["a", "b", "c"];
    Cluster::new((1..=9u64).map(|i| {
        NodeSpec::new(i * 10)
            .weight(1 + (i % 2) as u32)
            .zone(zones[(i % 3) as usize])
            .rack(format!("r{}", i % 4))
    }))
    .expect("valid cluster")
}

const KEYS: [&[u8]; 6] = [
    b"",
    b"a",
    b"abc",
    b"/users/alice",
    b"/registry/pods/x",
    b"0123456789abcdef0123456789abcdef!",
];

fn snapshot() -> String {
    let mut s = String::new();
    let c = cluster();
    let ring = HashRing::new(c.clone(), RingConfig::default()).expect("ring");
    let hrw = Rendezvous::new(c.clone());
    let mut anchor = AnchorHash::new(&c, 32).expect("anchor");
    anchor.remove_node(30.into()).expect("remove");
    let shards = ShardMap::new(HashFn::V1, 1, 16).expect("shard map");
    for k in KEYS {
        let h = HashFn::V1.hash_bytes(k);
        writeln!(
            s,
            "{:?} xxh64={:016x} seed7={:016x} jump100={} shard={} ring={} ring3={:?} hrw={} hrw3={:?} anchor={}",
            String::from_utf8_lossy(k),
            h,
            xxh64(k, 7),
            jump_hash(h, 100),
            shards.shard_for_key(k),
            ring.node(h),
            ring.replicas(h, 3).expect("r3"),
            hrw.node(h),
            hrw.replicas(h, 3).expect("r3"),
            anchor.node(h),
        )
        .expect("write to string");
    }
    let table = TablePlacement::new(shards, &c, 3).expect("table");
    for g in [1u64, 2, 7, 16] {
        writeln!(
            s,
            "table g{g}={:?}",
            table.replicas(GroupId(g), 3).expect("replicas")
        )
        .expect("write to string");
    }
    let uniform = Rendezvous::new(Cluster::uniform(7).expect("uniform"));
    for k in KEYS {
        let h = HashFn::V1.hash_bytes(k);
        writeln!(s, "uniform-hrw3={:?}", uniform.replicas(h, 3).expect("r3"))
            .expect("write to string");
    }
    let lp = LocatorPlacement::new(shards, hrw);
    writeln!(
        s,
        "hrw-placement g5={:?}",
        lp.replicas(GroupId(5), 3).expect("replicas")
    )
    .expect("write to string");
    s
}

const EXPECTED: &str = r#""" xxh64=ef46db3751d8e999 seed7=95f0626f6f0a4409 jump100=40 shard=8 ring=90 ring3=[n90, n80, n40] hrw=20 hrw3=[n20, n60, n10] anchor=50
"a" xxh64=d24ec4f1a98c6e5b seed7=dc6349d489e0f965 jump100=17 shard=9 ring=30 ring3=[n30, n20, n40] hrw=70 hrw3=[n70, n90, n50] anchor=50
"abc" xxh64=44bc2cf5ad770999 seed7=9e755206156676d7 jump100=24 shard=15 ring=40 ring3=[n40, n50, n60] hrw=50 hrw3=[n50, n30, n70] anchor=60
"/users/alice" xxh64=fbf1f9678e8929fc seed7=0319e20715070a18 jump100=11 shard=12 ring=30 ring3=[n30, n10, n50] hrw=20 hrw3=[n20, n40, n30] anchor=20
"/registry/pods/x" xxh64=eec022536e384840 seed7=2271a230b3f6d80b jump100=25 shard=7 ring=40 ring3=[n40, n50, n90] hrw=90 hrw3=[n90, n70, n80] anchor=80
"0123456789abcdef0123456789abcdef!" xxh64=8afff4daac4e677e seed7=c1efd54a62ef942f jump100=14 shard=15 ring=60 ring3=[n60, n70, n50] hrw=10 hrw3=[n10, n30, n50] anchor=70
table g1=[n10, n30, n50]
table g2=[n90, n70, n50]
table g7=[n40, n90, n50]
table g16=[n30, n70, n20]
uniform-hrw3=[n3, n6, n5]
uniform-hrw3=[n2, n5, n1]
uniform-hrw3=[n6, n1, n4]
uniform-hrw3=[n6, n4, n2]
uniform-hrw3=[n1, n6, n7]
uniform-hrw3=[n4, n3, n6]
hrw-placement g5=[n10, n20, n90]
"#;

#[test]
fn golden_vectors_fix_placement() {
    let got = snapshot();
    assert_eq!(got, EXPECTED, "placement output changed:\n{got}");
}

/// Jump hash is the published algorithm bit for bit: the values another
/// implementation documents, and agreement with it on many keys.
#[test]
fn jump_hash_matches_published_algorithm() {
    assert_eq!(jump_hash(0, 60), 0);
    assert_eq!(jump_hash(1, 60), 55);
    assert_eq!(jump_hash(2, 60), 46);
    let mut k = 1u64;
    for i in 0..5_000u64 {
        k = ha_ring::hash::fmix64(k ^ i);
        if k == u64::MAX {
            continue;
        }
        let n = 1 + (i % 2_000) as u32;
        assert_eq!(jump_hash(k, n), jump_consistent_hash::hash(k, n as usize));
    }
}
