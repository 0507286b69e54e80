//! # ha-ring
//!
//! Placement for the `ha` toolbox: which shard holds a key, which nodes hold
//! a shard, and what must move when nodes join, leave or change weight. Pure
//! computation — no IO, no clocks, no randomness — and every hash is pinned
//! ([`hash::HashFn`]), so the same inputs give the same placement on every
//! machine and Rust release.
//!
//! ## Which algorithm when
//!
//! | need | use | lookup | movement on change |
//! |---|---|---|---|
//! | key → shard, shards numbered `0..n` that only grow | [`jump::ShardMap`] (jump hash) | O(log n), no memory | minimal when appending shards |
//! | shard → R replicas, a few hundred/thousand shards (**recommended**, what `ha-node` uses) | [`table::ShardTable`] via [`placement::TablePlacement`] | O(1) (table) | minimal: a leave moves only the leaver's replicas, a join only moves replicas onto the joiner; load within one replica of the weighted share |
//! | stateless key → R replicas with weights and zones, moderate n | [`rendezvous::Rendezvous`] (weighted HRW) | O(n) | minimal; weights exact |
//! | stateless key → node(s) at large n, fast | [`ring::HashRing`] (virtual nodes) | O(1) expected | minimal; balance ≈ 1 ± 1/√vnodes |
//! | cap every node at (1+ε)× its share for a batch of items | [`bounded::BoundedLoad`] | ring walk | near-minimal (cascades past full nodes) |
//! | fastest key → node with arbitrary removals, state kept by caller | [`anchor::AnchorHash`] | O(1) expected | minimal on removal and re-add, history-dependent |
//!
//! All of them take **pre-hashed** `u64` keys; hash bytes with
//! [`hash::HashFn::hash_bytes`]. Replica lists put the preferred leader first
//! and spread across zones, then racks, when the cluster has enough of them.
//!
//! ## Example
//!
//! ```
//! use ha_core::placement::Placement;
//! use ha_ring::{Cluster, NodeSpec};
//! use ha_ring::hash::HashFn;
//! use ha_ring::jump::ShardMap;
//! use ha_ring::placement::TablePlacement;
//!
//! // Six nodes in three zones; node 6 has twice the capacity.
//! let cluster = Cluster::new([
//!     NodeSpec::new(1).zone("a"), NodeSpec::new(2).zone("a"),
//!     NodeSpec::new(3).zone("b"), NodeSpec::new(4).zone("b"),
//!     NodeSpec::new(5).zone("c"), NodeSpec::new(6).zone("c").weight(2),
//! ])?;
//! // 32 shards (group ids 1..=32), 3 replicas each.
//! let placement = TablePlacement::new(ShardMap::new(HashFn::V1, 1, 32)?, &cluster, 3)?;
//! let shard = placement.shard_for_key(b"/users/alice");
//! let replicas = placement.replicas(shard, 3)?; // leader first, one per zone
//! assert_eq!(replicas.len(), 3);
//!
//! // Node 3 dies: rebalance and get the copy plan.
//! let next = placement.table().rebalance(&cluster.without_node(3.into())?)?;
//! let plan = placement.table().plan_to(&next);
//! assert!(plan.moves.iter().all(|m| m.from == 3.into()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Limits
//!
//! Every size is bounded by a named constant: [`MAX_NODES`],
//! [`MAX_WEIGHT`], [`MAX_REPLICAS`], [`cluster::MAX_LABEL_BYTES`],
//! [`ring::MAX_RING_POINTS`], [`jump::MAX_SHARDS`],
//! [`table::MAX_TABLE_SHARDS`], [`anchor::MAX_ANCHOR_BUCKETS`],
//! [`bounded::MAX_BOUNDED_ITEMS`]. Bad input is a [`RingError`] and changes
//! nothing.

pub mod anchor;
pub mod bounded;
pub mod cluster;
pub mod hash;
pub mod jump;
pub mod movement;
pub mod placement;
pub mod rendezvous;
pub mod ring;
pub mod table;

pub use cluster::{Cluster, MAX_NODES, MAX_REPLICAS, MAX_WEIGHT, NodeSpec, RingError};

use ha_core::NodeId;

/// A pre-hashed key → its single owner.
pub trait NodeLocator {
    /// The node owning `key_hash`.
    fn node(&self, key_hash: u64) -> NodeId;
}

/// A pre-hashed key → an ordered list of distinct replica nodes.
pub trait ReplicaLocator {
    /// Writes `replicas` distinct nodes for `key_hash` into `out` (cleared
    /// first), preferred leader first. Errors: `replicas` is 0, above
    /// [`MAX_REPLICAS`], or above the number of nodes.
    fn replicas_into(
        &self,
        key_hash: u64,
        replicas: usize,
        out: &mut Vec<NodeId>,
    ) -> Result<(), RingError>;

    /// Like [`ReplicaLocator::replicas_into`], into a new vector.
    fn replicas(&self, key_hash: u64, replicas: usize) -> Result<Vec<NodeId>, RingError> {
        let mut out = Vec::with_capacity(replicas.min(MAX_REPLICAS));
        self.replicas_into(key_hash, replicas, &mut out)?;
        Ok(out)
    }
}
