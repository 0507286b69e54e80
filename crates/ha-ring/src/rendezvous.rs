//! Weighted rendezvous hashing (highest random weight, Thaler & Ravishankar),
//! with logarithmic weighting (Schindelhauer & Schomaker; "weighted
//! rendezvous" as used by Ceph's straw2 and others).
//!
//! For a key `k` and node `i` with weight `wᵢ`, let `uᵢ ∈ (0,1)` be uniform
//! from `combine(k, seedᵢ)`. The node's score is `wᵢ / −ln(uᵢ)`; the key's
//! owner is the highest score and its replica order is the score order.
//! `−ln(uᵢ)/wᵢ` is exponential with rate `wᵢ`, so node `i` wins with
//! probability exactly `wᵢ / Σw` — weights are honoured precisely, and
//! changing one node's weight moves keys only to or from that node.
//!
//! Lookup is O(n) per key: use it for shard → replicas (shards are few and
//! the result can be cached), not for per-request key → node at large n.

use ha_core::NodeId;

use crate::cluster::{Cluster, RingError, pick_spread};
use crate::hash::{combine, neg_ln_unit, node_seed};
use crate::{MAX_REPLICAS, NodeLocator, ReplicaLocator};

/// Seed domain of rendezvous node seeds ("hrw" in ASCII).
pub const HRW_DOMAIN: u64 = 0x0068_7277;

/// Most best-scoring candidates the allocation-free replica path keeps on
/// the stack (`4 × MAX_REPLICAS`). Clusters up to this size are ranked in
/// full without allocating; larger ones rank the best
/// `max(4 × replicas, 16)` and fall back to a full (allocating) ranking
/// only when the zone/rack passes need to look further down.
pub const TOP_CANDIDATES_MAX: usize = 4 * MAX_REPLICAS;

/// Weighted rendezvous over a [`Cluster`].
///
/// ```
/// use ha_ring::{Cluster, NodeLocator, ReplicaLocator};
/// use ha_ring::rendezvous::Rendezvous;
/// let hrw = Rendezvous::new(Cluster::uniform(5)?);
/// let r = hrw.replicas(42, 3)?;
/// assert_eq!(r[0], hrw.node(42));
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Rendezvous {
    cluster: Cluster,
    seeds: Vec<u64>,
    weights: Vec<f64>,
    /// All weights equal: scores compare as integers (see [`Rendezvous::score`]).
    uniform: bool,
}

impl Rendezvous {
    /// Builds the per-node seeds.
    pub fn new(cluster: Cluster) -> Self {
        let seeds = cluster
            .ids()
            .iter()
            .map(|id| node_seed(id.0, HRW_DOMAIN))
            .collect();
        let weights = (0..cluster.len())
            .map(|i| f64::from(cluster.weight_at(i)))
            .collect();
        let uniform = (1..cluster.len()).all(|i| cluster.weight_at(i) == cluster.weight_at(0));
        Self {
            cluster,
            seeds,
            weights,
            uniform,
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The score of node index `i` for `key_hash` (higher wins). Pinned:
    /// `weight / neg_ln_unit(h)` with `h = combine(key_hash,
    /// node_seed(id, HRW_DOMAIN))`.
    ///
    /// When all weights are equal the ranking is *defined* as the order of
    /// `h >> 12` (the 52 bits `neg_ln_unit` reads; `w / −ln u` is increasing
    /// in `u`), compared as integers — the same order without any floating
    /// point, and about 10× faster. Ties (equal values) go to the lower node
    /// id in both cases.
    #[inline]
    pub fn score(&self, key_hash: u64, i: usize) -> f64 {
        self.weights[i] / neg_ln_unit(combine(key_hash, self.seeds[i]))
    }

    /// A value ordered exactly like [`Rendezvous::score`] (ties included up
    /// to float rounding), cheaper for equal weights: the 52-bit integer
    /// score as `f64` (exact below 2^53).
    #[inline]
    pub(crate) fn rank_score(&self, key_hash: u64, i: usize) -> f64 {
        if self.uniform {
            self.int_score(key_hash, i) as f64
        } else {
            self.score(key_hash, i)
        }
    }

    #[inline]
    fn int_score(&self, key_hash: u64, i: usize) -> u64 {
        combine(key_hash, self.seeds[i]) >> 12
    }

    /// Dense node indices in descending score order (ties: lower node id
    /// first), written to `out`.
    pub fn ranking(&self, key_hash: u64, out: &mut Vec<usize>) {
        self.ranking_top(key_hash, self.seeds.len(), out);
    }

    /// The first `k` entries of [`Rendezvous::ranking`] (partial selection:
    /// O(n + k log k) instead of a full sort).
    pub fn ranking_top(&self, key_hash: u64, k: usize, out: &mut Vec<usize>) {
        fn top<T: Copy>(
            mut scored: Vec<(T, usize)>,
            k: usize,
            cmp: impl Fn(&(T, usize), &(T, usize)) -> std::cmp::Ordering,
            out: &mut Vec<usize>,
        ) {
            let k = k.min(scored.len());
            if k == 0 {
                return;
            }
            if k < scored.len() {
                scored.select_nth_unstable_by(k - 1, &cmp);
                scored.truncate(k);
            }
            scored.sort_unstable_by(&cmp);
            out.extend(scored.iter().map(|&(_, i)| i));
        }
        out.clear();
        let n = self.seeds.len();
        if self.uniform {
            let scored = (0..n).map(|i| (self.int_score(key_hash, i), i)).collect();
            top(scored, k, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)), out);
        } else {
            let scored = (0..n).map(|i| (self.score(key_hash, i), i)).collect();
            top(
                scored,
                k,
                |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)),
                out,
            );
        }
    }

    /// The best `k` (at most [`TOP_CANDIDATES_MAX`]) nodes in ranking order
    /// as `(order key, dense index)`, written to the front of `buf`; returns
    /// how many. One pass, insertion into a sorted stack array: after the
    /// first `k` nodes, a node costs one comparison unless it beats the
    /// current k-th. Same order as [`Rendezvous::ranking`].
    fn top_candidates(
        &self,
        key_hash: u64,
        k: usize,
        buf: &mut [(u64, u32); TOP_CANDIDATES_MAX],
    ) -> usize {
        #[inline(always)]
        fn select(
            n: usize,
            k: usize,
            buf: &mut [(u64, u32); TOP_CANDIDATES_MAX],
            key: impl Fn(usize) -> u64,
        ) -> usize {
            let k = k.min(n).min(TOP_CANDIDATES_MAX);
            if k == 0 {
                return 0;
            }
            let mut len = 0usize;
            for i in 0..n {
                let s = key(i);
                if len == k {
                    // Equal keys rank the lower index (seen earlier) first.
                    if s <= buf[k - 1].0 {
                        continue;
                    }
                    len -= 1;
                }
                let mut j = len;
                while j > 0 && buf[j - 1].0 < s {
                    buf[j] = buf[j - 1];
                    j -= 1;
                }
                buf[j] = (s, i as u32);
                len += 1;
            }
            len
        }
        let n = self.seeds.len();
        if self.uniform {
            select(n, k, buf, |i| self.int_score(key_hash, i))
        } else {
            // Scores are positive and finite (weight >= 1, 0 < -ln u <= 37),
            // and positive IEEE doubles order like their bit patterns.
            select(n, k, buf, |i| self.score(key_hash, i).to_bits())
        }
    }

    /// Heap bytes held per node table.
    pub fn heap_bytes(&self) -> usize {
        self.seeds.capacity() * 8 + self.weights.capacity() * 8
    }
}

impl NodeLocator for Rendezvous {
    #[inline]
    fn node(&self, key_hash: u64) -> NodeId {
        let mut best = 0usize;
        if self.uniform {
            let mut best_score = 0u64;
            for i in 0..self.seeds.len() {
                let s = self.int_score(key_hash, i);
                if i == 0 || s > best_score {
                    best_score = s;
                    best = i;
                }
            }
        } else {
            let mut best_score = f64::NEG_INFINITY;
            for i in 0..self.seeds.len() {
                let s = self.score(key_hash, i);
                if s > best_score {
                    best_score = s;
                    best = i;
                }
            }
        }
        self.cluster.ids()[best]
    }
}

impl ReplicaLocator for Rendezvous {
    /// The highest-scoring node first, then by score, preferring new zones,
    /// then new racks.
    fn replicas_into(
        &self,
        key_hash: u64,
        replicas: usize,
        out: &mut Vec<NodeId>,
    ) -> Result<(), RingError> {
        self.cluster.check_replicas(replicas)?;
        let n = self.seeds.len();
        // Small clusters: the full order fits on the stack. Larger ones: try
        // the best few first; fall back to the full order only when the
        // zone/rack passes need to look further down.
        let k = if n <= TOP_CANDIDATES_MAX {
            n
        } else {
            (4 * replicas).clamp(16, TOP_CANDIDATES_MAX)
        };
        let mut buf = [(0u64, 0u32); TOP_CANDIDATES_MAX];
        let len = self.top_candidates(key_hash, k, &mut buf);
        let prefix = || {
            buf[..len]
                .iter()
                .enumerate()
                .map(|(r, &(_, i))| (r as u32, i as usize))
        };
        // With the full order (len == n) every pass completes.
        if pick_spread(&self.cluster, replicas, prefix, out) || len == n {
            return Ok(());
        }
        let mut order = Vec::new();
        self.ranking(key_hash, &mut order);
        let full = || order.iter().enumerate().map(|(r, &i)| (r as u32, i));
        let _complete = pick_spread(&self.cluster, replicas, full, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeSpec;
    use crate::cluster::pick_spread;
    use crate::hash::fmix64;

    #[test]
    fn node_is_top_of_ranking() {
        let hrw = Rendezvous::new(
            Cluster::new((1..=9).map(|i| NodeSpec::new(i).weight(i as u32))).unwrap(),
        );
        let mut order = Vec::new();
        for k in 0..500u64 {
            let h = fmix64(k);
            hrw.ranking(h, &mut order);
            assert_eq!(hrw.cluster().ids()[order[0]], hrw.node(h));
            assert_eq!(order.len(), 9);
        }
    }

    #[test]
    fn integer_ranking_matches_float_ranking_for_equal_weights() {
        let uniform = Rendezvous::new(Cluster::uniform(50).unwrap());
        let mut float = uniform.clone();
        float.uniform = false;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for k in 0..300u64 {
            let h = fmix64(k);
            uniform.ranking(h, &mut a);
            float.ranking(h, &mut b);
            assert_eq!(a, b);
            assert_eq!(uniform.node(h), float.node(h));
        }
    }

    #[test]
    fn partial_ranking_gives_the_same_replicas_as_the_full_order() {
        let zones = ["a", "b", "a", "a", "c"];
        let labelled = |n: u64| {
            Cluster::new((1..=n).map(|i| {
                NodeSpec::new(i)
                    .weight(1 + (i % 3) as u32)
                    .zone(zones[(i % 5) as usize])
                    .rack(format!("r{}", i % 7))
            }))
            .unwrap()
        };
        let clusters = [
            // Fits the stack buffer: full order, no fallback.
            labelled(60),
            // Larger: best-k prefix, falling back when zones run out.
            labelled(200),
            Cluster::uniform(150).unwrap(),
            // Two zones only: 5 replicas need the rack and fill passes.
            Cluster::new((1..=100u64).map(|i| NodeSpec::new(i).zone(zones[(i % 2) as usize])))
                .unwrap(),
            // One node in a second zone: the best 16 rarely hold it, so the
            // zone pass falls back to the full order.
            Cluster::new((1..=200u64).map(|i| {
                NodeSpec::new(i)
                    .zone(if i == 7 { "b" } else { "a" })
                    .rack("r")
            }))
            .unwrap(),
        ];
        for c in clusters {
            let n = c.len();
            let hrw = Rendezvous::new(c.clone());
            let mut order = Vec::new();
            let mut full = Vec::new();
            for k in 0..150u64 {
                let h = fmix64(k);
                hrw.ranking(h, &mut order);
                for r in [1usize, 3, 5] {
                    let fast = hrw.replicas(h, r).unwrap();
                    let _ = pick_spread(
                        &c,
                        r,
                        || order.iter().enumerate().map(|(x, &i)| (x as u32, i)),
                        &mut full,
                    );
                    assert_eq!(fast, full, "n {n} key {k} replicas {r}");
                }
                let mut top = Vec::new();
                hrw.ranking_top(h, 7, &mut top);
                assert_eq!(top.as_slice(), &order[..7]);
                let mut buf = [(0u64, 0u32); TOP_CANDIDATES_MAX];
                for k in [1usize, 16, 60, 64] {
                    let len = hrw.top_candidates(h, k, &mut buf);
                    assert_eq!(len, k.min(n));
                    let got: Vec<usize> = buf[..len].iter().map(|&(_, i)| i as usize).collect();
                    assert_eq!(got.as_slice(), &order[..len]);
                }
            }
        }
    }

    #[test]
    fn weight_change_moves_keys_only_to_or_from_that_node() {
        let a = Cluster::new((1..=6).map(NodeSpec::new)).unwrap();
        let b = Cluster::new((1..=6).map(|i| NodeSpec::new(i).weight(if i == 3 { 3 } else { 1 })))
            .unwrap();
        let (ha, hb) = (Rendezvous::new(a), Rendezvous::new(b));
        let mut gained = 0;
        for k in 0..20_000u64 {
            let h = fmix64(k);
            let (x, y) = (ha.node(h), hb.node(h));
            if x != y {
                assert_eq!(
                    y,
                    NodeId(3),
                    "weight increase of node 3 moved a key elsewhere"
                );
                gained += 1;
            }
        }
        assert!(gained > 0);
    }
}
