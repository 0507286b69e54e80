//! Hash ring with virtual nodes and weights (Karger et al. consistent
//! hashing), with an O(1)-expected lookup index.
//!
//! Every node owns `weight × vnodes_per_weight` points on a 64-bit circle; a
//! key belongs to the first point at or after its hash (clockwise, wrapping).
//! Point positions are `xxh64(node_id_le ‖ vnode_le, seed = RING_DOMAIN)`;
//! points are sorted by `(position, node id, vnode)`, so ties are broken the
//! same way whatever order nodes were listed in.
//!
//! Lookup does not binary-search: a table of `2^bits ≥ points / 4` entries
//! maps the top bits of the key hash to the first candidate point, after
//! which a short linear scan (about two 16-byte points, usually inside one
//! cache line) finds the successor.

use ha_core::NodeId;

use crate::cluster::{Cluster, RingError, pick_spread};
use crate::hash::xxh64;
use crate::{NodeLocator, ReplicaLocator};

/// Seed of the ring's point hash (an arbitrary fixed constant; "ring" in ASCII).
pub const RING_DOMAIN: u64 = 0x7269_6E67;
/// Most points (virtual nodes over all nodes) a ring may have. A ring costs
/// at most 18 bytes per point (16 point + up to 2 index), so 4 Mi points use
/// at most 72 MiB.
pub const MAX_RING_POINTS: u64 = 1 << 22;
/// Target points per lookup-index slot (a power of two). Four 16-byte
/// points are one 64-byte cache line: a lookup reads one index entry and
/// then, on average, two points of the same line.
const POINTS_PER_INDEX_SLOT: u64 = 4;
/// Largest `vnodes_per_weight`.
pub const MAX_VNODES_PER_WEIGHT: u32 = 65_536;
/// Default virtual nodes per unit of weight. With 160 points per node the
/// busiest of 100 equal nodes carries roughly 1.2–1.3× the mean key load;
/// raise it for better balance at the cost of memory and build time.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 160;

/// One point on the ring: 16 bytes, four to a cache line, so the successor
/// search and the start of a replica walk usually touch a single line.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Position on the circle.
    hash: u64,
    /// Dense index of the owning node.
    owner: u32,
    /// Interned zone of the owner (a copy of `Cluster::zone_at(owner)`, kept
    /// here so the replica walk compares zones without another lookup; it
    /// fills what would otherwise be padding).
    zone: u32,
}

/// Ring parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Points per unit of node weight, `1..=MAX_VNODES_PER_WEIGHT`.
    pub vnodes_per_weight: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            vnodes_per_weight: DEFAULT_VNODES_PER_WEIGHT,
        }
    }
}

/// A consistent-hash ring with virtual nodes.
///
/// ```
/// use ha_ring::{Cluster, NodeLocator, NodeSpec, ReplicaLocator};
/// use ha_ring::ring::{HashRing, RingConfig};
/// let cluster = Cluster::new([
///     NodeSpec::new(1).zone("a"), NodeSpec::new(2).zone("b"),
///     NodeSpec::new(3).zone("c").weight(2),
/// ])?;
/// let ring = HashRing::new(cluster, RingConfig::default())?;
/// let owner = ring.node(0x1234_5678_9ABC_DEF0);
/// let replicas = ring.replicas(0x1234_5678_9ABC_DEF0, 3)?;
/// assert_eq!(replicas[0], owner); // preferred leader = ring owner
/// assert_eq!(replicas.len(), 3);
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HashRing {
    cluster: Cluster,
    config: RingConfig,
    /// Points by ascending position, each with its owner next to it so a
    /// lookup and the start of a replica walk touch one cache line.
    points: Vec<Point>,
    /// `index[j]` = first point with position `>= j << shift`.
    index: Vec<u32>,
    shift: u32,
}

impl HashRing {
    /// Builds the ring. Errors: bad `vnodes_per_weight`, or more than
    /// [`MAX_RING_POINTS`] points.
    pub fn new(cluster: Cluster, config: RingConfig) -> Result<Self, RingError> {
        if config.vnodes_per_weight == 0 || config.vnodes_per_weight > MAX_VNODES_PER_WEIGHT {
            return Err(RingError::InvalidParameter(format!(
                "vnodes_per_weight must be in 1..={MAX_VNODES_PER_WEIGHT}, got {}",
                config.vnodes_per_weight
            )));
        }
        let total = cluster
            .total_weight()
            .saturating_mul(u64::from(config.vnodes_per_weight));
        if total > MAX_RING_POINTS {
            return Err(RingError::LimitExceeded {
                what: "ring points (sum of weights x vnodes_per_weight)",
                value: total,
                max: MAX_RING_POINTS,
            });
        }
        let mut points: Vec<(u64, NodeId, u32, u32)> = Vec::with_capacity(total as usize);
        for (i, &id) in cluster.ids().iter().enumerate() {
            let n = cluster.weight_at(i) * config.vnodes_per_weight;
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&id.0.to_le_bytes());
            for v in 0..n {
                buf[8..].copy_from_slice(&u64::from(v).to_le_bytes());
                points.push((xxh64(&buf, RING_DOMAIN), id, v, i as u32));
            }
        }
        points.sort_unstable_by_key(|&(h, id, v, _)| (h, id, v));
        let points: Vec<Point> = points
            .iter()
            .map(|p| Point {
                hash: p.0,
                owner: p.3,
                zone: cluster.zone_at(p.3 as usize),
            })
            .collect();
        // About POINTS_PER_INDEX_SLOT points per slot: the index stays a
        // quarter of the points' size (cache-resident longer), and the
        // scan after it stays inside one or two cache lines of points.
        let slots = (points.len() as u64).div_ceil(POINTS_PER_INDEX_SLOT);
        let bits = (64 - slots.leading_zeros()).clamp(1, 23);
        let shift = 64 - bits;
        let mut index = vec![0u32; 1usize << bits];
        let mut pos = 0usize;
        for (j, slot) in index.iter_mut().enumerate() {
            let start = (j as u64) << shift;
            while pos < points.len() && points[pos].hash < start {
                pos += 1;
            }
            *slot = pos as u32;
        }
        Ok(Self {
            cluster,
            config,
            points,
            index,
            shift,
        })
    }

    /// The cluster this ring was built from.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The configuration.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Number of points.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// Heap bytes held by the ring's lookup structures (points and index).
    pub fn heap_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<Point>() + self.index.capacity() * 4
    }

    /// Position of the first point at or after `key_hash` (wrapping).
    #[inline]
    pub(crate) fn successor(&self, key_hash: u64) -> usize {
        let mut pos = self.index[(key_hash >> self.shift) as usize] as usize;
        let len = self.points.len();
        while pos < len && self.points[pos].hash < key_hash {
            pos += 1;
        }
        if pos == len { 0 } else { pos }
    }

    /// Dense node index of the owner of point `pos`.
    #[inline]
    pub(crate) fn owner_at(&self, pos: usize) -> usize {
        self.points[pos].owner as usize
    }

    /// Walks the ring clockwise from `start`, yielding `(step, node index)`
    /// for every point once.
    pub(crate) fn walk(&self, start: usize) -> impl Iterator<Item = (u32, usize)> + '_ {
        let len = self.points.len();
        let (tail, head) = self.points.split_at(start);
        head.iter()
            .chain(tail.iter())
            .take(len)
            .enumerate()
            .map(|(i, p)| (i as u32, p.owner as usize))
    }
}

impl NodeLocator for HashRing {
    #[inline]
    fn node(&self, key_hash: u64) -> NodeId {
        self.cluster.ids()[self.owner_at(self.successor(key_hash))]
    }
}

impl ReplicaLocator for HashRing {
    /// The owner first, then the next distinct nodes clockwise, preferring
    /// new zones, then new racks.
    fn replicas_into(
        &self,
        key_hash: u64,
        replicas: usize,
        out: &mut Vec<NodeId>,
    ) -> Result<(), RingError> {
        self.cluster.check_replicas(replicas)?;
        let start = self.successor(key_hash);
        if replicas <= self.cluster.zone_count() {
            // Enough zones for one replica per zone: the zone pass of
            // `pick_spread` alone fills the set, in walk order, so the walk
            // can stop at the `replicas`-th new zone. (Unlabelled nodes are
            // a zone each, so this is the common path.)
            self.replicas_one_per_zone(start, replicas, out);
        } else {
            // The walk visits every node, so every pass completes.
            let _complete = pick_spread(&self.cluster, replicas, || self.walk(start), out);
        }
        Ok(())
    }
}

impl HashRing {
    /// The first `replicas` owners clockwise from point `start` whose zones
    /// are pairwise distinct — what [`pick_spread`] returns when the cluster
    /// has at least `replicas` zones, without its generic passes. The caller
    /// has checked `1 <= replicas <= min(MAX_REPLICAS, zone_count)`, so one
    /// lap always finds them; the lap bound only guards that invariant.
    #[inline]
    fn replicas_one_per_zone(&self, start: usize, replicas: usize, out: &mut Vec<NodeId>) {
        let ids = self.cluster.ids();
        let replicas = replicas.min(crate::MAX_REPLICAS);
        let mut zones = [0u32; crate::MAX_REPLICAS];
        out.clear();
        let first = self.points[start];
        zones[0] = first.zone;
        out.push(ids[first.owner as usize]);
        let mut len = 1usize;
        if len >= replicas {
            return;
        }
        let (head, tail) = self.points.split_at(start);
        // `tail[0]` is `first`; then the rest of the lap.
        for p in tail[1..].iter().chain(head.iter()) {
            if zones[..len].contains(&p.zone) {
                continue;
            }
            zones[len] = p.zone;
            len += 1;
            out.push(ids[p.owner as usize]);
            if len >= replicas {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeSpec;
    use crate::hash::fmix64;

    #[test]
    fn lookup_index_agrees_with_binary_search() {
        let ring = HashRing::new(Cluster::uniform(37).unwrap(), RingConfig::default()).unwrap();
        for i in 0..20_000u64 {
            let h = fmix64(i);
            let want = match ring.points.binary_search_by_key(&h, |p| p.hash) {
                Ok(p) => p,
                Err(p) if p == ring.points.len() => 0,
                Err(p) => p,
            };
            assert_eq!(ring.successor(h), want);
        }
        assert_eq!(ring.successor(u64::MAX), 0);
        assert_eq!(ring.successor(0), 0);
    }

    /// The one-replica-per-zone walk returns exactly what the generic
    /// `pick_spread` passes return over the full ring walk.
    #[test]
    fn zone_walk_matches_generic_spread() {
        let zones = ["a", "b", "c", "d", "e"];
        let clusters = [
            Cluster::uniform(50).unwrap(),
            Cluster::new((1..=40u64).map(|i| {
                NodeSpec::new(i)
                    .weight(1 + (i % 3) as u32)
                    .zone(zones[(i % 3) as usize])
                    .rack(format!("r{}", i % 4))
            }))
            .unwrap(),
            Cluster::new((1..=30u64).map(|i| NodeSpec::new(i).zone(zones[(i % 5) as usize])))
                .unwrap(),
            // Two labelled zones plus unlabelled nodes (a zone each).
            Cluster::new((1..=12u64).map(|i| {
                let n = NodeSpec::new(i);
                if i <= 8 {
                    n.zone(zones[(i % 2) as usize])
                } else {
                    n
                }
            }))
            .unwrap(),
        ];
        let mut fast = Vec::new();
        let mut generic = Vec::new();
        for c in clusters {
            let ring = HashRing::new(
                c.clone(),
                RingConfig {
                    vnodes_per_weight: 20,
                },
            )
            .unwrap();
            for k in 0..3_000u64 {
                let h = fmix64(k);
                for r in 1..=c.len().min(6) {
                    ring.replicas_into(h, r, &mut fast).unwrap();
                    let start = ring.successor(h);
                    assert!(pick_spread(&c, r, || ring.walk(start), &mut generic));
                    assert_eq!(fast, generic, "key {k} replicas {r}");
                    assert_eq!(fast[0], ring.node(h));
                }
            }
        }
    }

    #[test]
    fn rejects_bad_config() {
        let c = Cluster::uniform(3).unwrap();
        assert!(
            HashRing::new(
                c.clone(),
                RingConfig {
                    vnodes_per_weight: 0
                }
            )
            .is_err()
        );
        let heavy = Cluster::new([NodeSpec::new(1).weight(1_000_000)]).unwrap();
        assert!(matches!(
            HashRing::new(heavy, RingConfig::default()),
            Err(RingError::LimitExceeded { .. })
        ));
        let ring = HashRing::new(c, RingConfig::default()).unwrap();
        assert!(ring.replicas(1, 4).is_err());
        assert!(ring.replicas(1, 0).is_err());
    }

    #[test]
    fn single_node_owns_everything() {
        let ring = HashRing::new(
            Cluster::uniform(1).unwrap(),
            RingConfig {
                vnodes_per_weight: 1,
            },
        )
        .unwrap();
        for h in [0u64, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(ring.node(h), NodeId(1));
        }
    }
}
