//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
//! SODA 2018).
//!
//! Items are placed one by one, in the order given, on the ring: an item goes
//! to the first node clockwise from its hash whose load is below its capacity
//! `cᵢ = ⌈(1+ε) · m · wᵢ / W⌉` for `m` items. So no node ever holds more than
//! `(1+ε)` times its fair share (plus rounding to a whole item), while most
//! items still land on their plain ring owner. The price: a membership change
//! can cascade a few extra moves past full nodes, so movement is close to,
//! not exactly, minimal.

use ha_core::NodeId;

use crate::cluster::RingError;
use crate::ring::HashRing;

/// Most items one [`BoundedLoad::assign`] call places.
pub const MAX_BOUNDED_ITEMS: usize = 1 << 24;
/// Largest ε accepted (ε = 10 already means "11× the mean").
pub const MAX_EPSILON: f64 = 10.0;

/// Bounded-load assignment over a [`HashRing`].
///
/// ```
/// use ha_ring::Cluster;
/// use ha_ring::bounded::BoundedLoad;
/// use ha_ring::ring::{HashRing, RingConfig};
/// let ring = HashRing::new(Cluster::uniform(10)?, RingConfig::default())?;
/// let b = BoundedLoad::new(ring, 0.05)?;
/// let items: Vec<u64> = (0..1000u64).map(ha_ring::hash::fmix64).collect();
/// let owners = b.assign(&items)?;
/// let max = (1..=10u64).map(|n| owners.iter().filter(|o| o.get() == n).count()).max();
/// assert!(max <= Some(105));
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BoundedLoad {
    ring: HashRing,
    epsilon: f64,
}

impl BoundedLoad {
    /// Wraps a ring. Errors: `epsilon` not in `(0, MAX_EPSILON]`.
    pub fn new(ring: HashRing, epsilon: f64) -> Result<Self, RingError> {
        if !(epsilon > 0.0 && epsilon <= MAX_EPSILON) {
            return Err(RingError::InvalidParameter(format!(
                "epsilon must be in (0, {MAX_EPSILON}], got {epsilon}"
            )));
        }
        Ok(Self { ring, epsilon })
    }

    /// The ring.
    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    /// Capacity of each node (dense index order) for `items` items.
    pub fn capacities(&self, items: usize) -> Vec<u64> {
        let c = self.ring.cluster();
        let total = c.total_weight() as f64;
        (0..c.len())
            .map(|i| {
                let share = items as f64 * f64::from(c.weight_at(i)) / total;
                ((1.0 + self.epsilon) * share).ceil() as u64
            })
            .collect()
    }

    /// Places `item_hashes` in order; `result[j]` is the node of item `j`.
    /// Errors: more than [`MAX_BOUNDED_ITEMS`] items.
    pub fn assign(&self, item_hashes: &[u64]) -> Result<Vec<NodeId>, RingError> {
        if item_hashes.len() > MAX_BOUNDED_ITEMS {
            return Err(RingError::LimitExceeded {
                what: "bounded-load items",
                value: item_hashes.len() as u64,
                max: MAX_BOUNDED_ITEMS as u64,
            });
        }
        let caps = self.capacities(item_hashes.len());
        let mut loads = vec![0u64; caps.len()];
        let ids = self.ring.cluster().ids();
        let mut out = Vec::with_capacity(item_hashes.len());
        for &h in item_hashes {
            let start = self.ring.successor(h);
            // Σ caps ≥ (1+ε)·m > items placed so far, so a node with room
            // exists and the walk (bounded by one lap) finds it.
            let mut chosen = None;
            for (_, node) in self.ring.walk(start) {
                if loads[node] < caps[node] {
                    chosen = Some(node);
                    break;
                }
            }
            let node = match chosen {
                Some(n) => n,
                None => self.ring.owner_at(start),
            };
            loads[node] += 1;
            out.push(ids[node]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, NodeSpec};
    use crate::hash::fmix64;
    use crate::ring::RingConfig;

    #[test]
    fn weighted_peak_is_bounded() {
        let c = Cluster::new((1..=8).map(|i| NodeSpec::new(i).weight(1 + (i as u32 % 3)))).unwrap();
        let ring = HashRing::new(
            c.clone(),
            RingConfig {
                vnodes_per_weight: 40,
            },
        )
        .unwrap();
        let b = BoundedLoad::new(ring, 0.02).unwrap();
        let items: Vec<u64> = (0..20_000u64).map(fmix64).collect();
        let owners = b.assign(&items).unwrap();
        let caps = b.capacities(items.len());
        for (i, id) in c.ids().iter().enumerate() {
            let load = owners.iter().filter(|o| *o == id).count() as u64;
            assert!(load <= caps[i], "node {id:?} load {load} cap {}", caps[i]);
            let fair = 20_000.0 * f64::from(c.weight_at(i)) / c.total_weight() as f64;
            assert!(load as f64 <= fair * 1.02 + 1.0);
        }
    }

    #[test]
    fn rejects_bad_epsilon() {
        let ring = HashRing::new(Cluster::uniform(2).unwrap(), RingConfig::default()).unwrap();
        assert!(BoundedLoad::new(ring.clone(), 0.0).is_err());
        assert!(BoundedLoad::new(ring.clone(), f64::NAN).is_err());
        assert!(BoundedLoad::new(ring, 11.0).is_err());
    }
}
