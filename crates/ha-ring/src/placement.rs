//! [`ha_core::placement::Placement`] implementations: key → shard by jump
//! hash, shard → replicas by a [`ShardTable`] (recommended) or by any
//! [`ReplicaLocator`] (ring, rendezvous).

use ha_core::placement::{Placement, PlacementError};
use ha_core::{GroupId, NodeId};

use crate::ReplicaLocator;
use crate::cluster::RingError;
use crate::jump::ShardMap;
use crate::table::ShardTable;

/// The recommended placement: jump hash for key → shard, a balanced
/// [`ShardTable`] for shard → replicas.
///
/// ```
/// use ha_core::placement::Placement;
/// use ha_ring::{Cluster, hash::HashFn, jump::ShardMap, placement::TablePlacement};
/// let shards = ShardMap::new(HashFn::V1, 1, 8)?;
/// let p = TablePlacement::new(shards, &Cluster::uniform(5)?, 3)?;
/// let g = p.shard_for_key(b"k");
/// let nodes = p.replicas(g, 3)?;
/// assert_eq!(nodes.len(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlacement {
    shards: ShardMap,
    table: ShardTable,
}

impl TablePlacement {
    /// Builds a fresh table for every shard of `shards`.
    pub fn new(
        shards: ShardMap,
        cluster: &crate::Cluster,
        replicas: usize,
    ) -> Result<Self, RingError> {
        let table = ShardTable::new(cluster, shards.shards(), replicas)?;
        Ok(Self { shards, table })
    }

    /// Wraps an existing table. Errors: the table does not hold exactly the
    /// shards of `shards`.
    pub fn from_table(shards: ShardMap, table: ShardTable) -> Result<Self, RingError> {
        let want: Vec<GroupId> = shards.shards().collect();
        let have: Vec<GroupId> = table.assignments().keys().copied().collect();
        if want != have {
            return Err(RingError::InvalidParameter(
                "table shards do not match the shard map".into(),
            ));
        }
        Ok(Self { shards, table })
    }

    /// The table.
    pub fn table(&self) -> &ShardTable {
        &self.table
    }

    /// The key → shard map.
    pub fn shard_map(&self) -> &ShardMap {
        &self.shards
    }
}

impl Placement for TablePlacement {
    fn shard_for_key(&self, key: &[u8]) -> GroupId {
        self.shards.shard_for_key(key)
    }

    /// The first `replicas` of the shard's table row. Errors: unknown shard,
    /// or more replicas than the table keeps.
    fn replicas(&self, shard: GroupId, replicas: usize) -> Result<Vec<NodeId>, PlacementError> {
        let row = self
            .table
            .replicas_of(shard)
            .ok_or(RingError::UnknownShard(shard.0))?;
        if replicas == 0 {
            return Err(RingError::ZeroReplicas.into());
        }
        if replicas > row.len() {
            return Err(PlacementError::NotEnoughNodes {
                replicas,
                nodes: row.len(),
            });
        }
        Ok(row[..replicas].to_vec())
    }
}

/// Jump hash for key → shard and any [`ReplicaLocator`] for shard →
/// replicas, with the shard id hashed by the shard map's [`HashFn`]
/// (its 8 little-endian bytes).
///
/// [`HashFn`]: crate::hash::HashFn
///
/// ```
/// use ha_core::placement::Placement;
/// use ha_ring::{Cluster, hash::HashFn, jump::ShardMap, placement::LocatorPlacement};
/// use ha_ring::rendezvous::Rendezvous;
/// let p = LocatorPlacement::new(ShardMap::new(HashFn::V1, 1, 4)?, Rendezvous::new(Cluster::uniform(3)?));
/// assert_eq!(p.replicas(ha_core::GroupId(2), 2)?.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LocatorPlacement<L> {
    shards: ShardMap,
    locator: L,
}

impl<L: ReplicaLocator> LocatorPlacement<L> {
    /// Combines a shard map and a locator.
    pub fn new(shards: ShardMap, locator: L) -> Self {
        Self { shards, locator }
    }

    /// The locator.
    pub fn locator(&self) -> &L {
        &self.locator
    }
}

impl<L: ReplicaLocator> Placement for LocatorPlacement<L> {
    fn shard_for_key(&self, key: &[u8]) -> GroupId {
        self.shards.shard_for_key(key)
    }

    fn replicas(&self, shard: GroupId, replicas: usize) -> Result<Vec<NodeId>, PlacementError> {
        let h = self.shards.hash_fn().hash_u64(shard.0);
        Ok(self.locator.replicas(h, replicas)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cluster;
    use crate::hash::HashFn;
    use crate::ring::{HashRing, RingConfig};

    #[test]
    fn table_placement_answers_and_rejects_bad_requests() {
        let map = ShardMap::new(HashFn::V1, 1, 8).unwrap();
        let p = TablePlacement::new(map, &Cluster::uniform(4).unwrap(), 3).unwrap();
        let g = p.shard_for_key(b"key");
        assert!((1..=8).contains(&g.get()));
        let r = p.replicas(g, 2).unwrap();
        assert_eq!(r.as_slice(), &p.table().replicas_of(g).unwrap()[..2]);
        assert_eq!(
            p.replicas(g, 4).unwrap_err(),
            PlacementError::NotEnoughNodes {
                replicas: 4,
                nodes: 3
            }
        );
        assert!(matches!(p.replicas(g, 0), Err(PlacementError::Invalid(_))));
        assert!(matches!(
            p.replicas(GroupId(99), 1),
            Err(PlacementError::Invalid(_))
        ));
        let other = ShardMap::new(HashFn::V1, 1, 9).unwrap();
        assert!(TablePlacement::from_table(other, p.table().clone()).is_err());
        assert!(TablePlacement::from_table(map, p.table().clone()).is_ok());
    }

    #[test]
    fn locator_placement_maps_errors() {
        let map = ShardMap::new(HashFn::V1, 0, 4).unwrap();
        let ring = HashRing::new(Cluster::uniform(2).unwrap(), RingConfig::default()).unwrap();
        let p = LocatorPlacement::new(map, ring);
        assert_eq!(p.replicas(GroupId(1), 2).unwrap().len(), 2);
        assert_eq!(
            p.replicas(GroupId(1), 3).unwrap_err(),
            PlacementError::NotEnoughNodes {
                replicas: 3,
                nodes: 2
            }
        );
    }
}
