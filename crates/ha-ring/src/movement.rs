//! Movement plans: what must be copied when placement changes.

use std::collections::{BTreeMap, BTreeSet};

use ha_core::{GroupId, NodeId};

use crate::{NodeLocator, ReplicaLocator, RingError};

/// One replica move: `shard`'s copy on `from` is replaced by a copy on `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Move {
    /// The shard.
    pub shard: GroupId,
    /// Node losing the replica.
    pub from: NodeId,
    /// Node gaining it.
    pub to: NodeId,
}

/// The difference between two placements of the same shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MovePlan {
    /// Replica moves, by shard then position.
    pub moves: Vec<Move>,
    /// Replicas added without a matching removal (replication factor grew,
    /// or a shard is new): `(shard, to)`.
    pub added: Vec<(GroupId, NodeId)>,
    /// Replicas dropped without a replacement: `(shard, from)`.
    pub dropped: Vec<(GroupId, NodeId)>,
}

impl MovePlan {
    /// Moves whose source and destination both belong to `survivors` — the
    /// nodes present before and after, i.e. moves that the membership change
    /// itself did not force ("collateral").
    pub fn collateral(&self, survivors: &BTreeSet<NodeId>) -> usize {
        self.moves
            .iter()
            .filter(|m| survivors.contains(&m.from) && survivors.contains(&m.to))
            .count()
    }

    /// Total replica copies this plan needs (moves + additions).
    pub fn copies(&self) -> usize {
        self.moves.len() + self.added.len()
    }
}

/// The minimal plan turning `old` into `new` (shard → replica list).
///
/// For each shard, replicas in both lists stay put (order changes are
/// leadership moves, not copies); the others are paired in list order into
/// `(from, to)` moves. No plan reaching `new` from `old` copies fewer
/// replicas, because every node in `new` but not in `old` needs a copy.
///
/// ```
/// use std::collections::BTreeMap;
/// use ha_core::{GroupId, NodeId};
/// use ha_ring::movement::{plan, Move};
/// let old = BTreeMap::from([(GroupId(1), vec![NodeId(1), NodeId(2)])]);
/// let new = BTreeMap::from([(GroupId(1), vec![NodeId(2), NodeId(3)])]);
/// let p = plan(&old, &new);
/// assert_eq!(p.moves, vec![Move { shard: GroupId(1), from: NodeId(1), to: NodeId(3) }]);
/// ```
pub fn plan(
    old: &BTreeMap<GroupId, Vec<NodeId>>,
    new: &BTreeMap<GroupId, Vec<NodeId>>,
) -> MovePlan {
    let empty: Vec<NodeId> = Vec::new();
    let mut out = MovePlan::default();
    let shards: BTreeSet<GroupId> = old.keys().chain(new.keys()).copied().collect();
    for shard in shards {
        let o = old.get(&shard).unwrap_or(&empty);
        let n = new.get(&shard).unwrap_or(&empty);
        let gone: Vec<NodeId> = o.iter().filter(|x| !n.contains(x)).copied().collect();
        let came: Vec<NodeId> = n.iter().filter(|x| !o.contains(x)).copied().collect();
        let paired = gone.len().min(came.len());
        for i in 0..paired {
            out.moves.push(Move {
                shard,
                from: gone[i],
                to: came[i],
            });
        }
        out.added
            .extend(came[paired..].iter().map(|&to| (shard, to)));
        out.dropped
            .extend(gone[paired..].iter().map(|&from| (shard, from)));
    }
    out
}

/// The plan for moving `shards` (id, hash) from one stateless replica
/// placement to another, `replicas` per shard. Errors as
/// [`ReplicaLocator::replicas`].
///
/// ```
/// use ha_core::GroupId;
/// use ha_ring::{Cluster, hash::HashFn, movement::plan_locators, rendezvous::Rendezvous};
/// let old = Rendezvous::new(Cluster::uniform(5)?);
/// let new = Rendezvous::new(Cluster::uniform(4)?); // node 5 left
/// let shards = (1..=32).map(|g| (GroupId(g), HashFn::V1.hash_u64(g)));
/// let p = plan_locators(&old, &new, shards, 3)?;
/// assert!(p.moves.iter().all(|m| m.from.get() == 5));
/// # Ok::<(), ha_ring::RingError>(())
/// ```
pub fn plan_locators<A: ReplicaLocator + ?Sized, B: ReplicaLocator + ?Sized>(
    old: &A,
    new: &B,
    shards: impl IntoIterator<Item = (GroupId, u64)>,
    replicas: usize,
) -> Result<MovePlan, RingError> {
    let mut before = BTreeMap::new();
    let mut after = BTreeMap::new();
    for (g, h) in shards {
        before.insert(g, old.replicas(h, replicas)?);
        after.insert(g, new.replicas(h, replicas)?);
    }
    Ok(plan(&before, &after))
}

/// How keys moved between two single-owner placements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyMovement {
    /// Keys examined.
    pub keys: u64,
    /// Keys whose owner changed.
    pub moved: u64,
    /// Moved keys whose old and new owner both survive (were neither removed
    /// nor added): moves the change did not force.
    pub collateral: u64,
}

/// Compares two locators over the same keys. `survivors` are the nodes in
/// both memberships.
pub fn key_movement<A: NodeLocator + ?Sized, B: NodeLocator + ?Sized>(
    old: &A,
    new: &B,
    keys: impl IntoIterator<Item = u64>,
    survivors: &BTreeSet<NodeId>,
) -> KeyMovement {
    let mut m = KeyMovement::default();
    for k in keys {
        m.keys += 1;
        let (a, b) = (old.node(k), new.node(k));
        if a != b {
            m.moved += 1;
            if survivors.contains(&a) && survivors.contains(&b) {
                m.collateral += 1;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_pairs_and_reports_growth() {
        let old = BTreeMap::from([
            (GroupId(1), vec![NodeId(1), NodeId(2), NodeId(3)]),
            (GroupId(2), vec![NodeId(1)]),
            (GroupId(3), vec![NodeId(4)]),
        ]);
        let new = BTreeMap::from([
            (GroupId(1), vec![NodeId(3), NodeId(1), NodeId(2)]),
            (GroupId(2), vec![NodeId(5), NodeId(6)]),
            (GroupId(4), vec![NodeId(7)]),
        ]);
        let p = plan(&old, &new);
        assert_eq!(
            p.moves,
            vec![Move {
                shard: GroupId(2),
                from: NodeId(1),
                to: NodeId(5)
            }]
        );
        assert_eq!(
            p.added,
            vec![(GroupId(2), NodeId(6)), (GroupId(4), NodeId(7))]
        );
        assert_eq!(p.dropped, vec![(GroupId(3), NodeId(4))]);
        assert_eq!(p.copies(), 3);
        let survivors: BTreeSet<NodeId> = [NodeId(1), NodeId(5)].into();
        assert_eq!(p.collateral(&survivors), 1);
    }
}
