//! AnchorHash (Mendelson, Vargaftik, Barabash, Lorenz, Keslassy, Orda;
//! IEEE/ACM ToN 2021): O(1)-expected lookup, arbitrary removal, minimal
//! disruption.
//!
//! **Why AnchorHash** rather than Maglev or MementoHash: Maglev's table gives
//! O(1) lookups but remaps a few percent of keys between *surviving* nodes on
//! every change (collateral moves), which a placement controller would turn
//! into needless replica copies. MementoHash is minimal too, but its lookup is
//! jump hash (O(log n)) plus the replacement chain. AnchorHash is minimal on
//! removal and on re-addition, and its expected lookup is O(1 + ln(a/w)) hash
//! steps for `a` buckets of capacity and `w` working buckets — a single step
//! when nothing has been removed. Its price is a capacity `a` fixed up front
//! and 16 bytes of state per bucket.
//!
//! Weights are whole buckets: a node of weight `w` owns `w` buckets, so
//! shares are exact ratios of integers. Bucket ids are handed out from the
//! removal stack, so the structure is *history-dependent*: two instances that
//! saw the same sequence of `add_node`/`remove_node` calls agree; persist the
//! call sequence (or the bucket table) if several processes must agree.

use std::collections::BTreeMap;

use ha_core::NodeId;

use crate::NodeLocator;
use crate::cluster::{Cluster, MAX_WEIGHT, NodeSpec, RingError};
use crate::hash::{combine, fmix64, reduce};

/// Most buckets (capacity) an [`AnchorHash`] may have: 16 Mi buckets use
/// about 320 MiB, so stay far below it.
pub const MAX_ANCHOR_BUCKETS: u32 = 1 << 24;
/// Seed domain of the per-bucket rehash ("anchor" in ASCII).
pub const ANCHOR_DOMAIN: u64 = 0x616E_6368_6F72;

/// AnchorHash over weighted nodes.
///
/// ```
/// use ha_ring::{Cluster, NodeLocator, NodeSpec};
/// use ha_ring::anchor::AnchorHash;
/// let mut a = AnchorHash::new(&Cluster::uniform(4)?, 64)?;
/// let before = a.node(777);
/// a.remove_node(before)?;
/// assert_ne!(a.node(777), before); // only keys of the removed node move
/// a.add_node(NodeSpec::new(9))?;
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AnchorHash {
    capacity: u32,
    /// `A[b]`: 0 if working, else the working-set size right after removal.
    removed_at: Vec<u32>,
    /// `K[b]`: the bucket that took `b`'s place when it was removed.
    successor: Vec<u32>,
    /// `W[i]`: bucket at working position `i`.
    working: Vec<u32>,
    /// `L[b]`: working position of bucket `b`.
    location: Vec<u32>,
    /// `R`: removed buckets, most recently removed on top.
    removed: Vec<u32>,
    /// `N`: number of working buckets.
    n_working: u32,
    /// Node owning each bucket (`NodeId(0)` for unowned buckets).
    owner: Vec<NodeId>,
    /// Buckets of each node, in the order they were taken.
    buckets: BTreeMap<NodeId, (NodeSpec, Vec<u32>)>,
}

impl AnchorHash {
    /// Builds AnchorHash with `capacity` buckets; node `i` (in id order)
    /// takes `weightᵢ` buckets. Errors: capacity 0 or above
    /// [`MAX_ANCHOR_BUCKETS`], or total weight above capacity.
    pub fn new(cluster: &Cluster, capacity: u32) -> Result<Self, RingError> {
        if capacity == 0 || capacity > MAX_ANCHOR_BUCKETS {
            return Err(RingError::LimitExceeded {
                what: "anchor capacity (buckets)",
                value: u64::from(capacity),
                max: u64::from(MAX_ANCHOR_BUCKETS),
            });
        }
        if cluster.total_weight() > u64::from(capacity) {
            return Err(RingError::LimitExceeded {
                what: "total weight (buckets) vs anchor capacity",
                value: cluster.total_weight(),
                max: u64::from(capacity),
            });
        }
        let a = capacity as usize;
        let w = cluster.total_weight() as u32;
        let ident: Vec<u32> = (0..capacity).collect();
        let mut removed_at = vec![0u32; a];
        let mut removed = Vec::with_capacity(a);
        for b in (w..capacity).rev() {
            removed.push(b);
            removed_at[b as usize] = b;
        }
        let mut owner = vec![NodeId(0); a];
        let mut buckets = BTreeMap::new();
        let mut next = 0u32;
        for (i, spec) in cluster.specs().iter().enumerate() {
            let n = cluster.weight_at(i);
            let list: Vec<u32> = (next..next + n).collect();
            for &b in &list {
                owner[b as usize] = spec.id;
            }
            next += n;
            buckets.insert(spec.id, (spec.clone(), list));
        }
        Ok(Self {
            capacity,
            removed_at,
            successor: ident.clone(),
            working: ident.clone(),
            location: ident,
            removed,
            n_working: w,
            owner,
            buckets,
        })
    }

    /// The capacity in buckets.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Working buckets (= sum of member weights).
    pub fn working_buckets(&self) -> u32 {
        self.n_working
    }

    /// Member ids, ascending.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.buckets.keys().copied()
    }

    /// The members as a validated [`Cluster`].
    pub fn cluster(&self) -> Result<Cluster, RingError> {
        Cluster::new(self.buckets.values().map(|(s, _)| s.clone()))
    }

    /// Heap bytes of the lookup state.
    pub fn heap_bytes(&self) -> usize {
        self.removed_at.capacity() * 4
            + self.successor.capacity() * 4
            + self.working.capacity() * 4
            + self.location.capacity() * 4
            + self.removed.capacity() * 4
            + self.owner.capacity() * 8
    }

    /// The working bucket of `key_hash` (the paper's `GETBUCKET`).
    #[inline]
    pub fn bucket(&self, key_hash: u64) -> u32 {
        let mut b = reduce(key_hash, u64::from(self.capacity)) as u32;
        // Each outer step strictly shrinks A[b], so this ends within
        // `capacity` steps; expected 1 + ln(a / w).
        while self.removed_at[b as usize] > 0 {
            let ab = self.removed_at[b as usize];
            let mut h = reduce(
                combine(key_hash, fmix64(u64::from(b) ^ ANCHOR_DOMAIN)),
                u64::from(ab),
            ) as u32;
            while self.removed_at[h as usize] >= ab {
                h = self.successor[h as usize];
            }
            b = h;
        }
        b
    }

    /// Adds a node taking `spec.weight` buckets. Errors (nothing changed):
    /// duplicate or reserved id, bad weight, not enough free capacity.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<(), RingError> {
        if spec.id == NodeId(0) {
            return Err(RingError::ReservedNodeId);
        }
        if self.buckets.contains_key(&spec.id) {
            return Err(RingError::DuplicateNode(spec.id));
        }
        if spec.weight == 0 {
            return Err(RingError::ZeroWeight(spec.id));
        }
        if spec.weight > MAX_WEIGHT {
            return Err(RingError::WeightTooLarge {
                node: spec.id,
                weight: spec.weight,
                max: MAX_WEIGHT,
            });
        }
        if spec.weight as usize > self.removed.len() {
            return Err(RingError::LimitExceeded {
                what: "anchor buckets needed vs free",
                value: u64::from(spec.weight),
                max: self.removed.len() as u64,
            });
        }
        let mut list = Vec::with_capacity(spec.weight as usize);
        for _ in 0..spec.weight {
            let Some(b) = self.removed.pop() else {
                break; // unreachable: free capacity was checked above
            };
            let n = self.n_working as usize;
            self.removed_at[b as usize] = 0;
            let at_n = self.working[n];
            self.location[at_n as usize] = self.n_working;
            let lb = self.location[b as usize] as usize;
            self.working[lb] = b;
            self.successor[b as usize] = b;
            self.n_working += 1;
            self.owner[b as usize] = spec.id;
            list.push(b);
        }
        self.buckets.insert(spec.id, (spec, list));
        Ok(())
    }

    /// Removes a node and all its buckets; only its keys move. Errors
    /// (nothing changed): unknown node, or it is the last node.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), RingError> {
        if !self.buckets.contains_key(&id) {
            return Err(RingError::UnknownNode(id));
        }
        if self.buckets.len() == 1 {
            return Err(RingError::NoNodes);
        }
        let Some((_, list)) = self.buckets.remove(&id) else {
            return Err(RingError::UnknownNode(id));
        };
        for &b in list.iter().rev() {
            self.removed.push(b);
            self.n_working -= 1;
            let n = self.n_working;
            self.removed_at[b as usize] = n;
            let last = self.working[n as usize];
            let lb = self.location[b as usize];
            self.successor[b as usize] = last;
            self.working[lb as usize] = last;
            self.location[last as usize] = lb;
            self.owner[b as usize] = NodeId(0);
        }
        Ok(())
    }
}

impl NodeLocator for AnchorHash {
    #[inline]
    fn node(&self, key_hash: u64) -> NodeId {
        self.owner[self.bucket(key_hash) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| fmix64(i ^ 0xA5A5))
    }

    #[test]
    fn removal_and_readdition_are_minimal() {
        let mut a = AnchorHash::new(&Cluster::uniform(20).unwrap(), 40).unwrap();
        let before: Vec<NodeId> = keys(50_000).map(|k| a.node(k)).collect();
        a.remove_node(NodeId(7)).unwrap();
        a.remove_node(NodeId(13)).unwrap();
        let after: Vec<NodeId> = keys(50_000).map(|k| a.node(k)).collect();
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                assert!(
                    x == &NodeId(7) || x == &NodeId(13),
                    "collateral move {x:?}->{y:?}"
                );
            }
            assert!(y != &NodeId(7) && y != &NodeId(13));
        }
        a.add_node(NodeSpec::new(13)).unwrap();
        let again: Vec<NodeId> = keys(50_000).map(|k| a.node(k)).collect();
        for (x, y) in after.iter().zip(&again) {
            if x != y {
                assert_eq!(*y, NodeId(13));
            }
        }
    }

    #[test]
    fn bad_operations_change_nothing() {
        let mut a = AnchorHash::new(&Cluster::uniform(2).unwrap(), 3).unwrap();
        assert!(matches!(
            a.add_node(NodeSpec::new(5).weight(2)),
            Err(RingError::LimitExceeded { .. })
        ));
        assert_eq!(
            a.add_node(NodeSpec::new(1)),
            Err(RingError::DuplicateNode(NodeId(1)))
        );
        assert_eq!(
            a.add_node(NodeSpec::new(6).weight(0)),
            Err(RingError::ZeroWeight(NodeId(6)))
        );
        assert_eq!(
            a.remove_node(NodeId(9)),
            Err(RingError::UnknownNode(NodeId(9)))
        );
        a.remove_node(NodeId(1)).unwrap();
        assert_eq!(a.remove_node(NodeId(2)), Err(RingError::NoNodes));
        assert_eq!(a.working_buckets(), 1);
        assert!(AnchorHash::new(&Cluster::uniform(5).unwrap(), 4).is_err());
        assert!(AnchorHash::new(&Cluster::uniform(1).unwrap(), 0).is_err());
    }

    #[test]
    fn balance_is_near_uniform_after_many_removals() {
        let mut a = AnchorHash::new(&Cluster::uniform(100).unwrap(), 200).unwrap();
        for id in (2..=100).step_by(3) {
            a.remove_node(NodeId(id)).unwrap();
        }
        let n = a.nodes().count();
        let mut counts: BTreeMap<NodeId, u32> = BTreeMap::new();
        let total = 200_000u64;
        for k in keys(total) {
            *counts.entry(a.node(k)).or_default() += 1;
        }
        assert_eq!(counts.len(), n);
        let mean = total as f64 / n as f64;
        let peak = f64::from(*counts.values().max().unwrap());
        assert!(peak / mean < 1.15, "peak/mean {}", peak / mean);
    }
}
