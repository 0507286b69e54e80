//! Step idempotence: from any reachable map, applying any step twice has
//! exactly the effect of applying it once, and a refused step changes
//! nothing. Maps are reached by random walks of steps (valid and invalid,
//! current and stale epochs, new targets for random member sets).

use std::collections::BTreeMap;

use ha_core::{GroupId, NodeId};
use ha_ring::Cluster;
use ha_ring::table::ShardTable;
use ha_shard::map::{Applied, ShardMap, Step};
use proptest::prelude::*;

const SHARDS: u64 = 8;

/// A step built from random numbers against the current map: shard ids
/// `0..=SHARDS + 1` (so some are unknown), members `0..=8` or one of the
/// shard's replicas, epochs at or below the shard's current one.
fn make_step(map: &ShardMap, kind: u8, shard: u64, member: u64, back: u64, pick: u64) -> Step {
    let g = GroupId(shard);
    let current = map.shard(g).map_or(1, |s| s.epoch());
    let epoch = current.saturating_sub(back);
    // Half the time, one of the shard's own replicas (so promotions and
    // removals hit), otherwise any id.
    let own: Vec<NodeId> = map
        .shard(g)
        .map(|s| s.voters().iter().chain(s.learners()).copied().collect())
        .unwrap_or_default();
    let member = match own.len() {
        n if n > 0 && pick & 1 == 1 => own[(pick >> 8) as usize % n],
        _ => NodeId(member),
    };
    match kind % 6 {
        0 => Step::AddLearner {
            shard: g,
            member,
            epoch,
        },
        1 => Step::Promote {
            shard: g,
            member,
            epoch,
        },
        2 => Step::RemoveReplica {
            shard: g,
            member,
            epoch,
        },
        3 => Step::TransferLeader {
            shard: g,
            to: member,
        },
        4 => {
            // A target for a random member subset of 3..=8 members.
            let n = 3 + pick % 6;
            let ids = (1..=8u64)
                .filter(|i| (pick >> i) & 1 == 1 || *i <= 3)
                .take(n as usize);
            let cluster = Cluster::new(ids.map(ha_ring::NodeSpec::new)).unwrap();
            let table = ShardTable::restore(3, map.target_rows(), map.target_members().clone())
                .unwrap()
                .rebalance(&cluster)
                .unwrap();
            Step::SetTarget {
                target_epoch: map.target_epoch().saturating_sub(back % 2),
                members: table.members().clone(),
                rows: table.assignments().values().cloned().collect(),
            }
        }
        _ => Step::SetTarget {
            target_epoch: map.target_epoch(),
            members: BTreeMap::from([(member, 1)]),
            rows: vec![vec![member; 3]; SHARDS as usize],
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn applying_any_step_twice_equals_applying_it_once(
        ops in proptest::collection::vec(
            (any::<u8>(), 0u64..=SHARDS + 1, 0u64..=8, prop_oneof![Just(0u64), 0u64..4], any::<u64>()),
            1..80,
        ),
    ) {
        let mut map = ShardMap::new(SHARDS, 3, &Cluster::uniform(5).unwrap()).unwrap();
        for (kind, shard, member, back, pick) in ops {
            let step = make_step(&map, kind, shard, member, back, pick);
            let mut once = map.clone();
            let first = once.apply(&step);
            let mut twice = once.clone();
            let second = twice.apply(&step);
            prop_assert_eq!(&twice, &once, "{:?}", step);
            match first {
                Ok(Applied::Changed) => {
                    prop_assert_eq!(second, Ok(Applied::AlreadyApplied));
                    prop_assert!(once.version() > map.version());
                }
                Ok(Applied::AlreadyApplied) => prop_assert_eq!(&once, &map),
                Err(e) => {
                    prop_assert_eq!(&once, &map, "refused step {:?} ({}) changed the map", step, e);
                }
            }
            // Whatever happened, the map stays valid and encodable.
            let decoded = ShardMap::decode(&once.encode());
            prop_assert_eq!(decoded.as_ref(), Ok(&once));
            map = once;
        }
    }
}

proptest! {
    /// Decoders see bytes from disk and network: garbage is an error, never
    /// a panic, and any single flipped bit of a valid encoding is caught.
    #[test]
    fn decoders_reject_garbage_and_bit_flips(
        garbage in proptest::collection::vec(any::<u8>(), 0..512),
        bit in any::<usize>(),
    ) {
        let _ = ShardMap::decode(&garbage);
        let _ = Step::decode(&garbage);
        let map = ShardMap::new(SHARDS, 3, &Cluster::uniform(5).unwrap()).unwrap();
        let mut bytes = map.encode();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(ShardMap::decode(&bytes).is_err());
        let step = Step::AddLearner { shard: GroupId(2), member: NodeId(4), epoch: 3 };
        let mut bytes = step.encode();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Step::decode(&bytes).is_err());
    }
}
