//! Cluster membership as placement sees it: nodes with weights and failure
//! domains, validated once so the algorithms never see bad input.

use std::collections::{BTreeMap, BTreeSet};

use ha_core::NodeId;
use ha_core::placement::PlacementError;

/// Most nodes a [`Cluster`] may hold.
pub const MAX_NODES: usize = 65_536;
/// Largest weight a node may have. Weights are relative capacities (a node of
/// weight 2 gets twice the keys of a node of weight 1).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest replication factor any algorithm here serves (replica sets are
/// built in a fixed-size buffer, without allocation).
pub const MAX_REPLICAS: usize = 16;
/// Longest zone or rack label, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Why placement input was rejected. Nothing is changed when an error is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The node list is empty.
    #[error("no nodes")]
    NoNodes,
    /// More replicas were asked for than there are nodes.
    #[error("replication factor {replicas} exceeds the {nodes} available nodes")]
    NotEnoughNodes {
        /// Replicas asked for.
        replicas: usize,
        /// Nodes available.
        nodes: usize,
    },
    /// A replication factor of zero.
    #[error("replication factor must be at least 1")]
    ZeroReplicas,
    /// The same node id appears twice.
    #[error("duplicate node id {0}")]
    DuplicateNode(NodeId),
    /// `NodeId(0)` is reserved for "nobody".
    #[error("node id 0 is reserved")]
    ReservedNodeId,
    /// A node with weight zero (remove the node instead).
    #[error("node {0} has weight 0")]
    ZeroWeight(NodeId),
    /// A weight above [`MAX_WEIGHT`].
    #[error("node {node} has weight {weight}, above the limit {max}")]
    WeightTooLarge {
        /// The node.
        node: NodeId,
        /// Its weight.
        weight: u32,
        /// The limit.
        max: u32,
    },
    /// More nodes than [`MAX_NODES`] (or a per-algorithm limit).
    #[error("{count} nodes exceed the limit {max}")]
    TooManyNodes {
        /// Nodes given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A zone or rack label longer than [`MAX_LABEL_BYTES`].
    #[error("label of node {0} is longer than {MAX_LABEL_BYTES} bytes")]
    LabelTooLong(NodeId),
    /// A node that is not a member.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// A shard the table does not hold.
    #[error("unknown shard {0}")]
    UnknownShard(u64),
    /// An algorithm's size limit was exceeded (virtual nodes, buckets, shards).
    #[error("{what}: {value} exceeds the limit {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The requested value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A configuration parameter out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}

impl From<RingError> for PlacementError {
    fn from(e: RingError) -> Self {
        match e {
            RingError::NoNodes => PlacementError::NoNodes,
            RingError::NotEnoughNodes { replicas, nodes } => {
                PlacementError::NotEnoughNodes { replicas, nodes }
            }
            other => PlacementError::Invalid(other.to_string()),
        }
    }
}

/// One node as the caller describes it.
///
/// ```
/// use ha_ring::NodeSpec;
/// let n = NodeSpec::new(7).weight(2).zone("eu-1a").rack("r12");
/// assert_eq!(n.id.get(), 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's identity.
    pub id: NodeId,
    /// Relative capacity, `1..=MAX_WEIGHT`.
    pub weight: u32,
    /// Failure domain: zone label (empty = unknown, treated as its own zone
    /// per node so unlabelled nodes never count as co-located).
    pub zone: String,
    /// Failure domain inside a zone: rack label (empty = unknown).
    pub rack: String,
}

impl NodeSpec {
    /// A node of weight 1 with no failure-domain labels.
    pub fn new(id: impl Into<NodeId>) -> Self {
        Self {
            id: id.into(),
            weight: 1,
            zone: String::new(),
            rack: String::new(),
        }
    }
    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
    /// Sets the zone label.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }
    /// Sets the rack label.
    pub fn rack(mut self, rack: impl Into<String>) -> Self {
        self.rack = rack.into();
        self
    }
}

/// A validated node set, sorted by node id (so nothing depends on the order
/// the caller listed them in), with failure domains interned to small ids.
///
/// ```
/// use ha_ring::{Cluster, NodeSpec, RingError};
/// let c = Cluster::new([NodeSpec::new(2).zone("a"), NodeSpec::new(1).zone("b")])?;
/// assert_eq!(c.len(), 2);
/// assert_eq!(c.zone_count(), 2);
/// assert_eq!(Cluster::new([NodeSpec::new(1), NodeSpec::new(1)]).unwrap_err(),
///            RingError::DuplicateNode(1.into()));
/// # Ok::<(), RingError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    ids: Vec<NodeId>,
    weights: Vec<u32>,
    zones: Vec<u32>,
    racks: Vec<u32>,
    zone_count: usize,
    rack_count: usize,
    total_weight: u64,
    specs: Vec<NodeSpec>,
}

impl Cluster {
    /// Validates and normalises a node list.
    ///
    /// Errors: [`RingError::NoNodes`], [`RingError::DuplicateNode`],
    /// [`RingError::ReservedNodeId`], [`RingError::ZeroWeight`],
    /// [`RingError::WeightTooLarge`], [`RingError::TooManyNodes`],
    /// [`RingError::LabelTooLong`].
    pub fn new(nodes: impl IntoIterator<Item = NodeSpec>) -> Result<Self, RingError> {
        let mut specs: Vec<NodeSpec> = Vec::new();
        for n in nodes {
            if specs.len() >= MAX_NODES {
                return Err(RingError::TooManyNodes {
                    count: specs.len() + 1,
                    max: MAX_NODES,
                });
            }
            specs.push(n);
        }
        if specs.is_empty() {
            return Err(RingError::NoNodes);
        }
        specs.sort_by_key(|n| n.id);
        for w in specs.windows(2) {
            if w[0].id == w[1].id {
                return Err(RingError::DuplicateNode(w[0].id));
            }
        }
        for n in &specs {
            if n.id == NodeId(0) {
                return Err(RingError::ReservedNodeId);
            }
            if n.weight == 0 {
                return Err(RingError::ZeroWeight(n.id));
            }
            if n.weight > MAX_WEIGHT {
                return Err(RingError::WeightTooLarge {
                    node: n.id,
                    weight: n.weight,
                    max: MAX_WEIGHT,
                });
            }
            if n.zone.len() > MAX_LABEL_BYTES || n.rack.len() > MAX_LABEL_BYTES {
                return Err(RingError::LabelTooLong(n.id));
            }
        }
        // Intern labels. An empty zone is unique per node; an empty rack is
        // unique per node too (unknown racks are never assumed shared).
        let mut zone_ids: BTreeMap<String, u32> = BTreeMap::new();
        let mut rack_ids: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut zones = Vec::with_capacity(specs.len());
        let mut racks = Vec::with_capacity(specs.len());
        for n in &specs {
            let zkey = if n.zone.is_empty() {
                format!("\0node{}", n.id.0)
            } else {
                n.zone.clone()
            };
            let next = zone_ids.len() as u32;
            zones.push(*zone_ids.entry(zkey.clone()).or_insert(next));
            let rkey = if n.rack.is_empty() {
                format!("\0node{}", n.id.0)
            } else {
                n.rack.clone()
            };
            let next = rack_ids.len() as u32;
            racks.push(*rack_ids.entry((zkey, rkey)).or_insert(next));
        }
        Ok(Self {
            ids: specs.iter().map(|n| n.id).collect(),
            weights: specs.iter().map(|n| n.weight).collect(),
            total_weight: specs.iter().map(|n| u64::from(n.weight)).sum(),
            zone_count: zone_ids.len(),
            rack_count: rack_ids.len(),
            zones,
            racks,
            specs,
        })
    }

    /// `n` nodes with ids `1..=n`, weight 1, no labels. Handy for tests and
    /// examples.
    pub fn uniform(n: usize) -> Result<Self, RingError> {
        Self::new((1..=n as u64).map(NodeSpec::new))
    }

    /// Number of nodes (never 0).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Always `false`: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Node ids in ascending order; index `i` is the node's dense index.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The node specs, sorted by id.
    pub fn specs(&self) -> &[NodeSpec] {
        &self.specs
    }

    /// Weight of the node at dense index `i`.
    pub fn weight_at(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// Interned zone of the node at dense index `i`.
    pub fn zone_at(&self, i: usize) -> u32 {
        self.zones[i]
    }

    /// Interned rack of the node at dense index `i` (racks are per zone).
    pub fn rack_at(&self, i: usize) -> u32 {
        self.racks[i]
    }

    /// Distinct zones (unlabelled nodes count one zone each).
    pub fn zone_count(&self) -> usize {
        self.zone_count
    }

    /// Distinct racks (unlabelled nodes count one rack each).
    pub fn rack_count(&self) -> usize {
        self.rack_count
    }

    /// Sum of weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Dense index of a node id.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.index_of(id).is_some()
    }

    /// The member ids as a set.
    pub fn id_set(&self) -> BTreeSet<NodeId> {
        self.ids.iter().copied().collect()
    }

    /// Checks a replication factor against this cluster.
    pub fn check_replicas(&self, replicas: usize) -> Result<(), RingError> {
        check_replication_factor(replicas)?;
        if replicas > self.len() {
            return Err(RingError::NotEnoughNodes {
                replicas,
                nodes: self.len(),
            });
        }
        Ok(())
    }

    /// A copy with `spec` added. Errors as [`Cluster::new`].
    pub fn with_node(&self, spec: NodeSpec) -> Result<Self, RingError> {
        Self::new(self.specs.iter().cloned().chain(std::iter::once(spec)))
    }

    /// A copy without `id`. Errors: unknown node, or no nodes left.
    pub fn without_node(&self, id: NodeId) -> Result<Self, RingError> {
        if !self.contains(id) {
            return Err(RingError::UnknownNode(id));
        }
        Self::new(self.specs.iter().filter(|n| n.id != id).cloned())
    }
}

/// Picks up to `replicas` distinct nodes from a preference order, spreading
/// them across failure domains when possible, and writes them to `out` in
/// preference order (so the most preferred node is always first).
///
/// Pass 1 takes nodes whose zone *and* rack are new; pass 2 nodes whose rack
/// is new; pass 3 any unpicked node. Each pass walks the preference order
/// from the start, so the result depends only on that order.
///
/// `pref()` must return an iterator over `(rank, dense node index)` in
/// preference order (duplicates allowed) that visits every node. The caller
/// has checked `1 <= replicas <= min(MAX_REPLICAS, cluster.len())`.
/// Allocation-free apart from `out`.
///
/// Returns whether every pass reached its target. When `pref` yields only a
/// prefix of the full preference order and this returns `true`, the result
/// equals what the full order gives (each pass stopped inside the prefix).
pub(crate) fn pick_spread<I, F>(
    cluster: &Cluster,
    replicas: usize,
    mut pref: F,
    out: &mut Vec<NodeId>,
) -> bool
where
    I: Iterator<Item = (u32, usize)>,
    F: FnMut() -> I,
{
    let replicas = replicas.min(MAX_REPLICAS);
    let mut buf = [(0u32, 0usize); MAX_REPLICAS];
    let mut len = 0usize;
    let want_zones = replicas.min(cluster.zone_count());
    let mut complete = true;
    for pass in 0..3 {
        let target = match pass {
            0 => want_zones,
            1 => replicas.min(cluster.rack_count()),
            _ => replicas,
        };
        if len >= target {
            continue;
        }
        for (rank, idx) in pref() {
            let picked = &buf[..len];
            if picked.iter().any(|&(_, n)| n == idx) {
                continue;
            }
            let ok = match pass {
                0 => {
                    let z = cluster.zones[idx];
                    !picked.iter().any(|&(_, n)| cluster.zones[n] == z)
                }
                1 => {
                    let r = cluster.racks[idx];
                    !picked.iter().any(|&(_, n)| cluster.racks[n] == r)
                }
                _ => true,
            };
            if ok {
                buf[len] = (rank, idx);
                len += 1;
                if len >= target {
                    break;
                }
            }
        }
        complete &= len >= target;
    }
    let picked = &mut buf[..len];
    picked.sort_unstable();
    out.clear();
    out.extend(picked.iter().map(|&(_, n)| cluster.ids[n]));
    complete
}

/// Checks that a replication factor is in `1..=MAX_REPLICAS`, independent
/// of any cluster's size.
pub(crate) fn check_replication_factor(replicas: usize) -> Result<(), RingError> {
    if replicas == 0 {
        return Err(RingError::ZeroReplicas);
    }
    if replicas > MAX_REPLICAS {
        return Err(RingError::LimitExceeded {
            what: "replication factor",
            value: replicas as u64,
            max: MAX_REPLICAS as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        assert_eq!(
            Cluster::new(Vec::<NodeSpec>::new()).unwrap_err(),
            RingError::NoNodes
        );
        assert_eq!(
            Cluster::new([NodeSpec::new(3), NodeSpec::new(3)]).unwrap_err(),
            RingError::DuplicateNode(NodeId(3))
        );
        assert_eq!(
            Cluster::new([NodeSpec::new(0)]).unwrap_err(),
            RingError::ReservedNodeId
        );
        assert_eq!(
            Cluster::new([NodeSpec::new(4).weight(0)]).unwrap_err(),
            RingError::ZeroWeight(NodeId(4))
        );
        assert!(matches!(
            Cluster::new([NodeSpec::new(4).weight(MAX_WEIGHT + 1)]),
            Err(RingError::WeightTooLarge { .. })
        ));
        assert_eq!(
            Cluster::new([NodeSpec::new(5).zone("z".repeat(MAX_LABEL_BYTES + 1))]).unwrap_err(),
            RingError::LabelTooLong(NodeId(5))
        );
        let c = Cluster::uniform(3).unwrap();
        assert_eq!(
            c.check_replicas(4).unwrap_err(),
            RingError::NotEnoughNodes {
                replicas: 4,
                nodes: 3
            }
        );
        assert_eq!(c.check_replicas(0).unwrap_err(), RingError::ZeroReplicas);
        assert_eq!(
            c.without_node(NodeId(9)).unwrap_err(),
            RingError::UnknownNode(NodeId(9))
        );
        let p: PlacementError = RingError::NoNodes.into();
        assert_eq!(p, PlacementError::NoNodes);
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let a = Cluster::new([
            NodeSpec::new(3).zone("x"),
            NodeSpec::new(1).zone("y"),
            NodeSpec::new(2).zone("x"),
        ])
        .unwrap();
        let b = Cluster::new([
            NodeSpec::new(1).zone("y"),
            NodeSpec::new(2).zone("x"),
            NodeSpec::new(3).zone("x"),
        ])
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.zone_count(), 2);
        assert_eq!(a.rack_count(), 3);
    }

    #[test]
    fn pick_spread_prefers_new_zones_then_fills() {
        let c = Cluster::new([
            NodeSpec::new(1).zone("a"),
            NodeSpec::new(2).zone("a"),
            NodeSpec::new(3).zone("b"),
            NodeSpec::new(4).zone("b"),
        ])
        .unwrap();
        let order = [0usize, 1, 2, 3];
        let mut out = Vec::new();
        pick_spread(
            &c,
            3,
            || order.iter().enumerate().map(|(r, &n)| (r as u32, n)),
            &mut out,
        );
        // Node 1 (zone a), node 3 (zone b), then the next preferred: node 2;
        // reported in preference order.
        assert_eq!(out, vec![NodeId(1), NodeId(2), NodeId(3)]);
    }
}
