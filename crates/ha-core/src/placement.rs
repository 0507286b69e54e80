//! The [`Placement`] contract: which shard holds a key, and which nodes hold
//! a shard. Implemented by `ha-ring`.

use crate::types::{GroupId, NodeId};

/// Why a placement could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No nodes to place on.
    #[error("no nodes")]
    NoNodes,
    /// More replicas asked for than there are nodes.
    #[error("replication factor {replicas} exceeds the {nodes} available nodes")]
    NotEnoughNodes {
        /// Replicas asked for.
        replicas: usize,
        /// Nodes available.
        nodes: usize,
    },
    /// Any other invalid input, described.
    #[error("invalid placement input: {0}")]
    Invalid(String),
}

/// Key → shard, shard → ordered replica set. Must be deterministic: the same
/// inputs give the same answer on every machine and Rust release.
pub trait Placement {
    /// The shard (consensus group) that owns `key`.
    fn shard_for_key(&self, key: &[u8]) -> GroupId;

    /// `replicas` distinct nodes for `shard`, preferred leader first.
    fn replicas(&self, shard: GroupId, replicas: usize) -> Result<Vec<NodeId>, PlacementError>;
}
