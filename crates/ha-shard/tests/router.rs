//! Router properties: a range asks every shard it needs exactly once, a
//! scatter-gather over those shards returns every key in the range exactly
//! once, and key → shard is pinned (the same after a restart, on every
//! machine, in every release).

use std::collections::{BTreeMap, BTreeSet};

use ha_core::GroupId;
use ha_ring::Cluster;
use ha_ring::hash::HashFn;
use ha_shard::map::ShardMap;
use ha_shard::router::{KeyRange, Router};
use proptest::prelude::*;

/// Short keys over a small alphabet, so ranges often contain keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(b'/'), any::<u8>()],
        0..5,
    )
}

/// Pinned key → shard vectors (XXH64 seed 0, then jump hash; shard ids
/// start at 1). Checked once against an independent implementation of
/// jump hash. A change here is a data-moving incompatibility: add a new
/// `HashFn` version instead of editing these.
#[test]
fn key_to_shard_is_pinned() {
    let r16 = Router::new(HashFn::V1, 16).unwrap();
    for (k, g) in [
        ("", 8),
        ("a", 9),
        ("/registry/pods/default/web-0", 4),
        ("/locks/leader", 12),
        ("key-42", 6),
        ("\0", 13),
    ] {
        assert_eq!(r16.shard_for_key(k.as_bytes()), GroupId(g), "{k:?}");
    }
    let r1000 = Router::new(HashFn::V1, 1000).unwrap();
    for (k, g) in [
        ("", 333),
        ("a", 895),
        ("/registry/pods/default/web-0", 905),
        ("/locks/leader", 631),
        ("key-42", 192),
    ] {
        assert_eq!(r1000.shard_for_key(k.as_bytes()), GroupId(g), "{k:?}");
    }
    // One shard: everything on shard 1 (the etcd semantics of one group).
    let one = Router::new(HashFn::V1, 1).unwrap();
    assert_eq!(one.shard_for_key(b"anything"), GroupId(1));
}

fn range_of<'a>(kind: u8, a: &'a [u8], b: &'a [u8]) -> KeyRange<'a> {
    match kind % 3 {
        0 => KeyRange::Key(a),
        1 => KeyRange::Range { start: a, end: b },
        _ => KeyRange::From(a),
    }
}

proptest! {
    #[test]
    fn a_range_asks_each_needed_shard_once_and_gathers_each_key_once(
        shards in 1u32..=64,
        keys in proptest::collection::btree_set(key(), 0..200),
        kind in any::<u8>(),
        a in key(),
        b in key(),
    ) {
        let router = Router::new(HashFn::V1, shards).unwrap();
        // Each shard stores its own keys, as its consensus group would.
        let mut stores: BTreeMap<GroupId, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for k in &keys {
            stores.entry(router.shard_for_key(k)).or_default().insert(k.clone());
        }
        let range = range_of(kind, &a, &b);
        let asked: Vec<GroupId> = router.shards_for_range(range).collect();
        prop_assert_eq!(router.shards_for_range(range).len(), asked.len());
        // Ascending, so no shard twice.
        prop_assert!(asked.windows(2).all(|w| w[0] < w[1]), "{:?}", asked);
        prop_assert!(asked.iter().all(|g| (1..=u64::from(shards)).contains(&g.0)));
        // Scatter-gather: every key in the range exactly once.
        let mut gathered: Vec<Vec<u8>> = Vec::new();
        for g in &asked {
            if let Some(store) = stores.get(g) {
                gathered.extend(store.iter().filter(|k| range.contains(k)).cloned());
            }
        }
        gathered.sort();
        let want: Vec<Vec<u8>> = keys.iter().filter(|k| range.contains(k)).cloned().collect();
        prop_assert_eq!(gathered, want);
        // A range that can hold two keys asks every shard.
        let wide = match range {
            KeyRange::Key(_) => false,
            KeyRange::From(_) => true,
            KeyRange::Range { start, end } => {
                let mut second = start.to_vec();
                second.extend_from_slice(&[0, 0]);
                second.as_slice() < end
            }
        };
        if wide {
            prop_assert_eq!(asked.len(), shards as usize);
        }
    }

    #[test]
    fn key_to_shard_survives_a_restart(
        shards in 1u64..=128,
        keys in proptest::collection::vec(key(), 1..50),
    ) {
        let map = ShardMap::new(shards, 3, &Cluster::uniform(5).unwrap()).unwrap();
        let restarted = ShardMap::decode(&map.encode()).unwrap();
        let (a, b) = (map.router(), restarted.router());
        let fresh = Router::new(HashFn::V1, shards as u32).unwrap();
        for k in &keys {
            prop_assert_eq!(a.shard_for_key(k), b.shard_for_key(k));
            prop_assert_eq!(a.shard_for_key(k), fresh.shard_for_key(k));
        }
    }
}
