//! The balanced shard table: the recommended shard → replicas placement for a
//! fixed set of shards (consensus groups).
//!
//! Hashing alone cannot give both tight balance and minimal movement for a
//! few hundred shards: with 256 shards × 3 replicas on 10 nodes the busiest
//! node under rendezvous hashing carries about 1.2× the mean. The table keeps
//! the assignment explicitly (the placement controller persists it in the
//! metadata group) and [`ShardTable::rebalance`] changes it incrementally:
//!
//! 1. Replicas on nodes that left are dropped; every other replica stays.
//! 2. A shard whose replicas share a zone while an unused zone exists — and
//!    its free slots cannot bring enough new zones — drops its
//!    least-preferred duplicate (failure domains beat balance).
//! 3. Holes are filled, choosing by (new zone, below floor `⌊S·wᵢ/W⌋`
//!    with `S` = shards × R, below ceiling `⌈S·wᵢ/W⌉`, new rack, rendezvous
//!    score) — so lost replicas go to nodes that are short, in the zones the
//!    shard is missing.
//! 4. While a node is below its floor, a replica moves to it from the node
//!    furthest above its target; then while a node is above its ceiling, a
//!    replica moves from it to the node furthest below target. A move never
//!    reduces the shard's zone/rack spread, and goes to a node that joined
//!    or gained weight — or out of a node that lost weight — so nodes that
//!    merely stayed never trade replicas.
//! 5. The preferred leader (first replica) is rebalanced so each node leads
//!    about its weighted share of shards, keeping leaders where they are when
//!    they are within their share.
//!
//! Result: per-node load within one replica of its weighted share (peak/mean
//! → 1 as shards grow), removal moves only the departed node's replicas, and
//! a join moves only replicas onto the new node — unless zone rules force
//! otherwise. Rendezvous scores break every tie, so the outcome is a pure
//! function of the previous table and the new membership.

use std::collections::{BTreeMap, BTreeSet};

use ha_core::{GroupId, NodeId};

use crate::cluster::{Cluster, RingError, check_replication_factor};
use crate::hash::HashFn;
use crate::movement::{MovePlan, plan};
use crate::rendezvous::Rendezvous;

/// Most shards a table may hold. Rebalancing costs O(shards × R × nodes).
pub const MAX_TABLE_SHARDS: usize = 1 << 16;

/// Shard → ordered replica list, balanced by weight.
///
/// ```
/// use ha_core::GroupId;
/// use ha_ring::{Cluster, NodeSpec};
/// use ha_ring::table::ShardTable;
/// let zones = ["a", "b", "c"];
/// let cluster = Cluster::new((1..=9u64).map(|i| NodeSpec::new(i).zone(zones[i as usize % 3])))?;
/// let table = ShardTable::new(&cluster, (1..=64).map(GroupId), 3)?;
/// assert_eq!(table.replicas_of(GroupId(5)).map(|r| r.len()), Some(3));
///
/// // Node 4 fails: only its replicas move.
/// let smaller = cluster.without_node(4.into())?;
/// let next = table.rebalance(&smaller)?;
/// let plan = table.plan_to(&next);
/// assert!(plan.moves.iter().all(|m| m.from == 4.into()));
/// # Ok::<(), ha_ring::RingError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTable {
    replicas: usize,
    shards: BTreeMap<GroupId, Vec<NodeId>>,
    /// Weights of the membership this table was balanced for (empty for a
    /// restored or new table: then every node counts as joining).
    members: BTreeMap<NodeId, u32>,
}

fn spread(cluster: &Cluster, row: &[usize]) -> (usize, usize) {
    let zones: BTreeSet<u32> = row.iter().map(|&i| cluster.zone_at(i)).collect();
    let racks: BTreeSet<u32> = row.iter().map(|&i| cluster.rack_at(i)).collect();
    (zones.len(), racks.len())
}

impl ShardTable {
    /// Places `shards` (R replicas each) on `cluster` from scratch.
    ///
    /// Errors: no shards, more than [`MAX_TABLE_SHARDS`], duplicate shard
    /// ids, or a replication factor the cluster cannot serve.
    pub fn new(
        cluster: &Cluster,
        shards: impl IntoIterator<Item = GroupId>,
        replicas: usize,
    ) -> Result<Self, RingError> {
        let mut map = BTreeMap::new();
        for s in shards {
            if map.len() >= MAX_TABLE_SHARDS {
                return Err(RingError::LimitExceeded {
                    what: "table shards",
                    value: map.len() as u64 + 1,
                    max: MAX_TABLE_SHARDS as u64,
                });
            }
            if map.insert(s, Vec::new()).is_some() {
                return Err(RingError::InvalidParameter(format!(
                    "duplicate shard {s:?}"
                )));
            }
        }
        Self::from_assignments(replicas, map)?.rebalance(cluster)
    }

    /// Restores a table (e.g. one read back from storage). Replica lists may
    /// be short or name nodes that have left; [`ShardTable::rebalance`] fixes
    /// both. Errors: no shards, too many, `replicas` out of
    /// `1..=MAX_REPLICAS`, a list longer than `replicas`, or a node twice in
    /// one list.
    pub fn from_assignments(
        replicas: usize,
        shards: BTreeMap<GroupId, Vec<NodeId>>,
    ) -> Result<Self, RingError> {
        check_replication_factor(replicas)?;
        if shards.is_empty() {
            return Err(RingError::InvalidParameter(
                "a table needs at least one shard".into(),
            ));
        }
        if shards.len() > MAX_TABLE_SHARDS {
            return Err(RingError::LimitExceeded {
                what: "table shards",
                value: shards.len() as u64,
                max: MAX_TABLE_SHARDS as u64,
            });
        }
        for (s, row) in &shards {
            if row.len() > replicas {
                return Err(RingError::InvalidParameter(format!(
                    "shard {s:?} lists {} replicas, more than {replicas}",
                    row.len()
                )));
            }
            let distinct: BTreeSet<&NodeId> = row.iter().collect();
            if distinct.len() != row.len() {
                return Err(RingError::InvalidParameter(format!(
                    "shard {s:?} lists a node twice"
                )));
            }
        }
        Ok(Self {
            replicas,
            shards,
            members: BTreeMap::new(),
        })
    }

    /// Restores a table saved with [`ShardTable::assignments`] and
    /// [`ShardTable::members`] (e.g. read back from the metadata group), so
    /// the next [`ShardTable::rebalance`] knows which nodes merely stayed.
    /// Validates like [`ShardTable::from_assignments`]; also rejects a zero
    /// or too-large weight and the reserved node id 0 in `members`.
    pub fn restore(
        replicas: usize,
        shards: BTreeMap<GroupId, Vec<NodeId>>,
        members: BTreeMap<NodeId, u32>,
    ) -> Result<Self, RingError> {
        for (&id, &w) in &members {
            if id == NodeId(0) {
                return Err(RingError::ReservedNodeId);
            }
            if w == 0 {
                return Err(RingError::ZeroWeight(id));
            }
            if w > crate::cluster::MAX_WEIGHT {
                return Err(RingError::WeightTooLarge {
                    node: id,
                    weight: w,
                    max: crate::cluster::MAX_WEIGHT,
                });
            }
        }
        if members.len() > crate::cluster::MAX_NODES {
            return Err(RingError::TooManyNodes {
                count: members.len(),
                max: crate::cluster::MAX_NODES,
            });
        }
        let mut t = Self::from_assignments(replicas, shards)?;
        t.members = members;
        Ok(t)
    }

    /// The replication factor.
    pub fn replication(&self) -> usize {
        self.replicas
    }

    /// Replicas of `shard`, preferred leader first.
    pub fn replicas_of(&self, shard: GroupId) -> Option<&[NodeId]> {
        self.shards.get(&shard).map(Vec::as_slice)
    }

    /// The whole assignment.
    pub fn assignments(&self) -> &BTreeMap<GroupId, Vec<NodeId>> {
        &self.shards
    }

    /// Replicas held by each node.
    pub fn loads(&self) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for row in self.shards.values() {
            for n in row {
                *m.entry(*n).or_default() += 1;
            }
        }
        m
    }

    /// Node weights of the membership this table was last balanced for.
    pub fn members(&self) -> &BTreeMap<NodeId, u32> {
        &self.members
    }

    /// Shards each node is preferred leader of.
    pub fn leader_loads(&self) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for row in self.shards.values() {
            if let Some(n) = row.first() {
                *m.entry(*n).or_default() += 1;
            }
        }
        m
    }

    /// The moves from this table to `next`.
    pub fn plan_to(&self, next: &ShardTable) -> MovePlan {
        plan(&self.shards, &next.shards)
    }

    /// The table for a new membership, changing as little as balance and
    /// failure domains allow (see the module docs). `self` is unchanged.
    ///
    /// Errors: the replication factor exceeds the cluster's nodes.
    pub fn rebalance(&self, cluster: &Cluster) -> Result<ShardTable, RingError> {
        cluster.check_replicas(self.replicas)?;
        let n = cluster.len();
        let m = self.shards.len();
        let r = self.replicas;
        let hrw = Rendezvous::new(cluster.clone());
        let shard_ids: Vec<GroupId> = self.shards.keys().copied().collect();
        let hashes: Vec<u64> = shard_ids.iter().map(|s| HashFn::V1.hash_u64(s.0)).collect();

        // Targets: weighted share of S = m·r slots, at most one per shard.
        let exact = water_fill(cluster, (m * r) as f64, m as f64);
        let floor: Vec<usize> = exact.iter().map(|e| (e + 1e-9).floor() as usize).collect();
        let ceil: Vec<usize> = exact.iter().map(|e| (e - 1e-9).ceil() as usize).collect();

        // 1. Keep replicas on surviving nodes.
        let mut rows: Vec<Vec<usize>> = self
            .shards
            .values()
            .map(|row| row.iter().filter_map(|id| cluster.index_of(*id)).collect())
            .collect();
        let old_leader: Vec<Option<usize>> = rows.iter().map(|row| row.first().copied()).collect();

        // 2. Zone repair.
        let zones_total = cluster.zone_count();
        for (s, row) in rows.iter_mut().enumerate() {
            for _ in 0..r {
                let (zones, _) = spread(cluster, row);
                // Holes can each bring a new zone; repair only what they
                // cannot (so a leave never drops a surviving replica).
                let reachable = zones + (r - row.len());
                if zones == row.len() || reachable >= r.min(zones_total) {
                    break;
                }
                // Least-preferred member whose zone is shared in this row.
                let victim = row
                    .iter()
                    .enumerate()
                    .filter(|&(_, &i)| {
                        row.iter()
                            .filter(|&&j| cluster.zone_at(j) == cluster.zone_at(i))
                            .count()
                            > 1
                    })
                    .min_by(|a, b| {
                        hrw.rank_score(hashes[s], *a.1)
                            .total_cmp(&hrw.rank_score(hashes[s], *b.1))
                            .then(b.0.cmp(&a.0))
                    })
                    .map(|(pos, _)| pos);
                match victim {
                    Some(pos) => {
                        row.remove(pos);
                    }
                    None => break,
                }
            }
        }

        let mut loads = vec![0usize; n];
        for row in &rows {
            for &i in row {
                loads[i] += 1;
            }
        }

        // 3. Fill holes.
        for (s, row) in rows.iter_mut().enumerate() {
            while row.len() < r {
                // At most MAX_REPLICAS entries: a Vec beats a set here.
                let zones: Vec<u32> = row.iter().map(|&i| cluster.zone_at(i)).collect();
                let racks: Vec<u32> = row.iter().map(|&i| cluster.rack_at(i)).collect();
                let best = (0..n)
                    .filter(|i| !row.contains(i))
                    .map(|i| {
                        let key = (
                            !zones.contains(&cluster.zone_at(i)),
                            loads[i] < floor[i],
                            loads[i] < ceil[i],
                            !racks.contains(&cluster.rack_at(i)),
                        );
                        (key, hrw.rank_score(hashes[s], i), i)
                    })
                    .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(b.2.cmp(&a.2)));
                let Some((_, _, i)) = best else {
                    break; // unreachable: r <= n was checked
                };
                row.push(i);
                loads[i] += 1;
            }
        }

        // 4. Top up nodes below their floor from the nodes furthest above
        //    target, then drain nodes above their ceiling into nodes below
        //    theirs. Every transfer lowers a deficit or an excess by one, so
        //    each phase ends within m·r transfers.
        //    Transfers between nodes that stayed do not belong to a leave or
        //    a join, so a transfer must go to a *growing* node (joined, or
        //    weight raised) — except out of a *shrinking* one (weight
        //    lowered), which may drain into any node below its ceiling.
        //    Hence a leave moves only the leaver's replicas.
        let prev = |i: usize| self.members.get(&cluster.ids()[i]).copied();
        let growing: Vec<bool> = (0..n)
            .map(|i| prev(i).is_none_or(|w| cluster.weight_at(i) > w))
            .collect();
        let shrinking: Vec<bool> = (0..n)
            .map(|i| prev(i).is_some_and(|w| cluster.weight_at(i) < w))
            .collect();
        let dev = |loads: &[usize], i: usize| loads[i] as f64 - exact[i];
        let mut stuck = vec![false; n];
        for _ in 0..(m * r + n) {
            let Some(rcp) = (0..n)
                .filter(|&i| loads[i] < floor[i] && !stuck[i] && growing[i])
                .min_by(|&a, &b| dev(&loads, a).total_cmp(&dev(&loads, b)).then(a.cmp(&b)))
            else {
                break;
            };
            let mut donors: Vec<usize> = (0..n).filter(|&i| loads[i] > floor[i]).collect();
            // (recipients are growing nodes only, see below)
            donors.sort_by(|&a, &b| dev(&loads, b).total_cmp(&dev(&loads, a)).then(a.cmp(&b)));
            let moved = donors
                .iter()
                .any(|&d| transfer(cluster, &hrw, &hashes, &mut rows, &mut loads, d, rcp));
            if !moved {
                stuck[rcp] = true;
            }
        }
        let mut stuck = vec![false; n];
        for _ in 0..(m * r + n) {
            let Some(d) = (0..n)
                .filter(|&i| loads[i] > ceil[i] && !stuck[i])
                .max_by(|&a, &b| dev(&loads, a).total_cmp(&dev(&loads, b)).then(b.cmp(&a)))
            else {
                break;
            };
            let mut rcps: Vec<usize> = (0..n)
                .filter(|&i| loads[i] < ceil[i] && (growing[i] || shrinking[d]))
                .collect();
            rcps.sort_by(|&a, &b| dev(&loads, a).total_cmp(&dev(&loads, b)).then(a.cmp(&b)));
            let moved = rcps
                .iter()
                .any(|&rcp| transfer(cluster, &hrw, &hashes, &mut rows, &mut loads, d, rcp));
            if !moved {
                stuck[d] = true;
            }
        }

        // 5. Preferred leaders.
        let lead_target = water_fill(cluster, m as f64, m as f64);
        let lead_cap: Vec<usize> = lead_target
            .iter()
            .map(|e| (e - 1e-9).ceil() as usize)
            .collect();
        let mut leads = vec![0usize; n];
        let mut decided = vec![false; m];
        for (s, row) in rows.iter().enumerate() {
            if let (Some(l), Some(&first)) = (old_leader[s], row.first())
                && l == first
                && leads[l] < lead_cap[l]
            {
                leads[l] += 1;
                decided[s] = true;
            }
        }
        for (s, row) in rows.iter_mut().enumerate() {
            if decided[s] || row.is_empty() {
                continue;
            }
            let pick = row
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    let fa = leads[*a.1] as f64 / lead_target[*a.1].max(1e-9);
                    let fb = leads[*b.1] as f64 / lead_target[*b.1].max(1e-9);
                    fa.total_cmp(&fb).then(a.0.cmp(&b.0))
                })
                .map(|(pos, _)| pos)
                .unwrap_or(0);
            let node = row.remove(pick);
            row.insert(0, node);
            leads[node] += 1;
        }

        // Repair: leaders above their ceiling hand over to a co-replica below
        // its ceiling; then nodes below their floor take over from a leader
        // above its floor. Each swap lowers an excess or a deficit by one.
        let lead_floor: Vec<usize> = lead_target
            .iter()
            .map(|e| (e + 1e-9).floor() as usize)
            .collect();
        for d in 0..n {
            for row in rows.iter_mut() {
                if leads[d] <= lead_cap[d] {
                    break;
                }
                if row.first() != Some(&d) {
                    continue;
                }
                if let Some(pos) = (1..row.len()).find(|&p| leads[row[p]] < lead_cap[row[p]]) {
                    let x = row.remove(pos);
                    row.insert(0, x);
                    leads[d] -= 1;
                    leads[x] += 1;
                }
            }
        }
        for x in 0..n {
            for row in rows.iter_mut() {
                if leads[x] >= lead_floor[x] {
                    break;
                }
                let Some(pos) = row.iter().position(|&j| j == x) else {
                    continue;
                };
                let l = row[0];
                if pos > 0 && leads[l] > lead_floor[l] {
                    row.remove(pos);
                    row.insert(0, x);
                    leads[l] -= 1;
                    leads[x] += 1;
                }
            }
        }

        let ids = cluster.ids();
        let shards = shard_ids
            .into_iter()
            .zip(rows)
            .map(|(s, row)| (s, row.into_iter().map(|i| ids[i]).collect()))
            .collect();
        let members = cluster
            .ids()
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, cluster.weight_at(i)))
            .collect();
        Ok(ShardTable {
            replicas: r,
            shards,
            members,
        })
    }
}

/// Moves one replica from `d` to `rcp`: the shard of `d`'s that `rcp`
/// prefers most (rendezvous score) among those not holding `rcp` and whose
/// zone/rack spread the move does not reduce. Returns whether it moved one.
fn transfer(
    cluster: &Cluster,
    hrw: &Rendezvous,
    hashes: &[u64],
    rows: &mut [Vec<usize>],
    loads: &mut [usize],
    d: usize,
    rcp: usize,
) -> bool {
    let mut best: Option<(f64, usize, usize)> = None;
    for (s, row) in rows.iter().enumerate() {
        let Some(pos) = row.iter().position(|&j| j == d) else {
            continue;
        };
        if row.contains(&rcp) {
            continue;
        }
        let before = spread(cluster, row);
        let mut after_row = row.clone();
        after_row[pos] = rcp;
        if spread(cluster, &after_row) < before {
            continue;
        }
        let score = hrw.rank_score(hashes[s], rcp);
        if best.is_none_or(|(b, _, _)| score > b) {
            best = Some((score, s, pos));
        }
    }
    match best {
        Some((_, s, pos)) => {
            rows[s][pos] = rcp;
            loads[d] -= 1;
            loads[rcp] += 1;
            true
        }
        None => false,
    }
}

/// Weighted shares of `total` over the nodes, none above `per_node_max`
/// (excess is redistributed to the others by weight).
fn water_fill(cluster: &Cluster, total: f64, per_node_max: f64) -> Vec<f64> {
    let n = cluster.len();
    let mut share = vec![0.0; n];
    let mut capped = vec![false; n];
    for _ in 0..=n {
        let assigned: f64 = (0..n).filter(|&i| capped[i]).map(|i| share[i]).sum();
        let free_w: f64 = (0..n)
            .filter(|&i| !capped[i])
            .map(|i| f64::from(cluster.weight_at(i)))
            .sum();
        if free_w <= 0.0 {
            break;
        }
        let mut changed = false;
        for i in 0..n {
            if capped[i] {
                continue;
            }
            let s = (total - assigned) * f64::from(cluster.weight_at(i)) / free_w;
            if s > per_node_max {
                share[i] = per_node_max;
                capped[i] = true;
                changed = true;
            } else {
                share[i] = s;
            }
        }
        if !changed {
            break;
        }
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeSpec;

    fn zoned(n: u64, zones: u64) -> Cluster {
        Cluster::new((1..=n).map(|i| NodeSpec::new(i).zone(format!("z{}", i % zones)))).unwrap()
    }

    #[test]
    fn fresh_table_is_balanced_and_zone_spread() {
        let c = zoned(12, 3);
        let t = ShardTable::new(&c, (1..=256).map(GroupId), 3).unwrap();
        let loads = t.loads();
        assert_eq!(loads.len(), 12);
        assert_eq!(loads.values().sum::<usize>(), 768);
        assert!(loads.values().all(|&l| l == 64), "{loads:?}");
        for row in t.assignments().values() {
            let zones: BTreeSet<String> = row
                .iter()
                .map(|id| c.specs()[c.index_of(*id).unwrap()].zone.clone())
                .collect();
            assert_eq!(zones.len(), 3);
        }
        let leads = t.leader_loads();
        assert!(leads.values().all(|&l| (21..=22).contains(&l)), "{leads:?}");
    }

    #[test]
    fn join_moves_only_onto_new_node_and_leave_only_off_old() {
        let c = Cluster::uniform(10).unwrap();
        let t = ShardTable::new(&c, (1..=200).map(GroupId), 3).unwrap();
        let bigger = c.with_node(NodeSpec::new(11)).unwrap();
        let t2 = t.rebalance(&bigger).unwrap();
        let p = t.plan_to(&t2);
        assert!(p.moves.iter().all(|m| m.to == NodeId(11)), "{p:?}");
        assert_eq!(p.moves.len(), 600 / 11); // floor(600/11) = 54: exactly the ideal
        let smaller = c.without_node(NodeId(3)).unwrap();
        let t3 = t.rebalance(&smaller).unwrap();
        let p = t.plan_to(&t3);
        assert!(p.moves.iter().all(|m| m.from == NodeId(3)));
        assert_eq!(p.moves.len(), 60);
        assert!(t3.loads().values().all(|&l| (66..=67).contains(&l)));
    }

    #[test]
    fn weight_changes_move_only_to_or_from_that_node() {
        let c = Cluster::uniform(6).unwrap();
        let t = ShardTable::new(&c, (1..=120).map(GroupId), 3).unwrap();
        let heavier =
            Cluster::new((1..=6u64).map(|i| NodeSpec::new(i).weight(if i == 2 { 2 } else { 1 })))
                .unwrap();
        let t2 = t.rebalance(&heavier).unwrap();
        let p = t.plan_to(&t2);
        assert!(!p.moves.is_empty());
        assert!(p.moves.iter().all(|m| m.to == NodeId(2)), "{p:?}");
        // 360 slots, weight 2 of 7: floor(102.86) = 102 replicas on node 2.
        assert_eq!(t2.loads()[&NodeId(2)], 102);
        let lighter = t2.rebalance(&c).unwrap();
        let p = t2.plan_to(&lighter);
        assert!(p.moves.iter().all(|m| m.from == NodeId(2)), "{p:?}");
        assert!(lighter.loads().values().all(|&l| l == 60));
    }

    #[test]
    fn restored_table_rebalances_like_the_original() {
        let c = Cluster::uniform(5).unwrap();
        let t = ShardTable::new(&c, (1..=40).map(GroupId), 3).unwrap();
        let back = ShardTable::restore(3, t.assignments().clone(), t.members().clone()).unwrap();
        assert_eq!(back, t);
        let smaller = c.without_node(NodeId(2)).unwrap();
        assert_eq!(
            back.rebalance(&smaller).unwrap(),
            t.rebalance(&smaller).unwrap()
        );
        let bad = BTreeMap::from([(NodeId(1), 0u32)]);
        assert_eq!(
            ShardTable::restore(3, t.assignments().clone(), bad).unwrap_err(),
            RingError::ZeroWeight(NodeId(1))
        );
        let reserved = BTreeMap::from([(NodeId(0), 1u32)]);
        assert!(ShardTable::restore(3, t.assignments().clone(), reserved).is_err());
    }

    #[test]
    fn bad_tables_are_rejected() {
        let c = Cluster::uniform(3).unwrap();
        assert!(ShardTable::new(&c, std::iter::empty(), 3).is_err());
        assert!(ShardTable::new(&c, [GroupId(1)], 4).is_err());
        assert!(ShardTable::new(&c, [GroupId(1), GroupId(1)], 1).is_err());
        let dup = BTreeMap::from([(GroupId(1), vec![NodeId(1), NodeId(1)])]);
        assert!(ShardTable::from_assignments(2, dup).is_err());
        let long = BTreeMap::from([(GroupId(1), vec![NodeId(1), NodeId(2)])]);
        assert!(ShardTable::from_assignments(1, long).is_err());
    }

    #[test]
    fn heavy_node_gets_at_most_one_replica_per_shard() {
        let c = Cluster::new([
            NodeSpec::new(1).weight(100),
            NodeSpec::new(2),
            NodeSpec::new(3),
            NodeSpec::new(4),
        ])
        .unwrap();
        let t = ShardTable::new(&c, (1..=30).map(GroupId), 2).unwrap();
        assert_eq!(t.loads()[&NodeId(1)], 30);
        assert_eq!(t.loads().values().sum::<usize>(), 60);
    }
}
