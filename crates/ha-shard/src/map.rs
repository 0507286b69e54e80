//! The shard map: which consensus groups exist, who replicates each one, the
//! placement the controller is steering towards, and the only ways any of it
//! changes ([`Step`]s, applied by [`ShardMap::apply`]).
//!
//! The map is the replicated state of the metadata group (group 0). Every
//! change is a [`Step`] proposed to that group and applied, in log order, on
//! every member; [`ShardMap::apply`] is deterministic and never panics, so
//! all members hold the same map.

use std::collections::{BTreeMap, BTreeSet};

use ha_core::codec::{self, CodecError};
use ha_core::{GroupId, Membership, NodeId};
use ha_ring::hash::HashFn;
use ha_ring::table::ShardTable;
use ha_ring::{Cluster, RingError};
use serde::{Deserialize, Serialize};

use crate::router::Router;

/// Most shards a cluster may be created with (`--shards N`, `1..=MAX_SHARDS`).
/// Every shard is a full consensus group (a log, a state machine, heartbeats)
/// on each of its replicas, so a member hosts about `shards × R / members`
/// of them; 4,096 keeps that in the low thousands even on small clusters.
pub const MAX_SHARDS: u32 = 4096;

/// Largest replication factor (`--replication R`). Consensus groups larger
/// than seven voters only add write latency.
pub const MAX_REPLICATION: usize = 7;

/// Most replicas (voters + learners) one shard may list at any time: R
/// voters, plus one incoming replica per voter during moves.
pub const MAX_SHARD_MEMBERS: usize = 2 * MAX_REPLICATION;

/// Most cluster members the map and the controller accept.
pub const MAX_MEMBERS: usize = 1024;

/// Largest encoded shard map or step [`ShardMap::decode`] /
/// [`Step::decode`] accept, in bytes. A full map (4,096 shards, R = 7,
/// every shard mid-move) encodes to well under 1 MiB.
pub const MAX_MAP_BYTES: usize = 4 << 20;

/// Group id of the first data shard. Group 0 is the metadata group, which
/// holds this map; data shards are `FIRST_SHARD..FIRST_SHARD + shards`.
pub const FIRST_SHARD: u64 = 1;

/// Upper bound for the map's counters (version, target epoch, shard
/// epochs) accepted on decode. Each step adds one, so from any accepted
/// map another 2^63 steps fit before a counter could overflow (about
/// 292,000 years at one step per microsecond).
pub const MAX_COUNTER: u64 = 1 << 63;

/// The schema version of the encoded map and steps (inside the codec frame,
/// whose own version byte covers the framing).
pub const SHARD_MAP_SCHEMA: u32 = 1;

/// Why a shard map could not be built or decoded. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// A shard count outside `1..=MAX_SHARDS`.
    #[error("shard count {0} is outside 1..={MAX_SHARDS}")]
    ShardCount(u64),
    /// A replication factor outside `1..=MAX_REPLICATION`.
    #[error("replication factor {0} is outside 1..={MAX_REPLICATION}")]
    Replication(usize),
    /// More members than [`MAX_MEMBERS`].
    #[error("{0} members exceed the limit {MAX_MEMBERS}")]
    TooManyMembers(usize),
    /// The placement could not be computed (e.g. fewer members than R).
    #[error("placement: {0}")]
    Placement(#[from] RingError),
    /// Encoded bytes longer than [`MAX_MAP_BYTES`].
    #[error("encoded shard map is {len} bytes, above the limit {MAX_MAP_BYTES}")]
    TooLarge {
        /// Bytes given.
        len: usize,
    },
    /// The bytes are not a valid frame (torn, corrupt, wrong type).
    #[error("cannot decode shard map: {0}")]
    Codec(#[from] CodecError),
    /// A schema version this build does not read.
    #[error("unsupported shard map schema {found} (this build reads {SHARD_MAP_SCHEMA})")]
    Schema {
        /// Schema found.
        found: u32,
    },
    /// A key hash version this build does not know.
    #[error("unknown key hash version {0}")]
    UnknownHash(u32),
    /// Decoded content that breaks an invariant of the map.
    #[error("invalid shard map: {0}")]
    Invalid(String),
}

/// Why a [`Step`] was refused. A refused step changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The shard does not exist.
    #[error("unknown shard {0:?}")]
    UnknownShard(GroupId),
    /// The step was computed against another configuration of the shard
    /// (a deposed controller, a reordered or replayed step).
    #[error("stale step for {shard:?}: computed at epoch {expected}, shard is at {found}")]
    StaleEpoch {
        /// The shard.
        shard: GroupId,
        /// Epoch the step expects.
        expected: u64,
        /// The shard's epoch.
        found: u64,
    },
    /// A [`Step::SetTarget`] computed against another target.
    #[error("stale target: computed at target epoch {expected}, map is at {found}")]
    StaleTarget {
        /// Target epoch the step expects.
        expected: u64,
        /// The map's target epoch.
        found: u64,
    },
    /// Promote of a node that does not replicate the shard.
    #[error("{member:?} is not a learner of {shard:?}")]
    NotALearner {
        /// The shard.
        shard: GroupId,
        /// The node.
        member: NodeId,
    },
    /// Leader transfer to a node that does not vote in the shard.
    #[error("{member:?} is not a voter of {shard:?}")]
    NotAVoter {
        /// The shard.
        shard: GroupId,
        /// The node.
        member: NodeId,
    },
    /// Removing the last voter would leave the shard without a quorum.
    #[error("{member:?} is the last voter of {shard:?}")]
    LastVoter {
        /// The shard.
        shard: GroupId,
        /// The node.
        member: NodeId,
    },
    /// The shard already lists [`MAX_SHARD_MEMBERS`] replicas.
    #[error("{0:?} already has {MAX_SHARD_MEMBERS} replicas")]
    TooManyReplicas(GroupId),
    /// The reserved node id 0.
    #[error("node id 0 is reserved")]
    ReservedNode,
    /// A target that does not fit the map (wrong shard count or row length,
    /// duplicates, a node missing from the member list, bad weights).
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// Bytes that do not decode as a step.
    #[error("cannot decode step: {0}")]
    Decode(String),
}

/// One change to the shard map. The controller emits them; ha-node carries
/// each out on the shard's own consensus group (membership change or leader
/// transfer) and then records it by proposing it to the metadata group,
/// where every member runs [`ShardMap::apply`].
///
/// Every step is **idempotent**: applying a step whose effect is already
/// present is a no-op ([`Applied::AlreadyApplied`]). Steps that change a
/// shard's configuration carry the shard's `epoch` they were computed at;
/// one whose effect is absent and whose epoch is stale is refused
/// ([`StepError::StaleEpoch`]), so a deposed controller or a replayed old
/// step can never undo newer work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Replace the placement target (after a member was declared dead or
    /// joined): `rows[i]` are the R replicas of shard `FIRST_SHARD + i`,
    /// preferred leader first, balanced for `members` (id → weight).
    SetTarget {
        /// The map's target epoch this was computed from.
        target_epoch: u64,
        /// Member weights the target was balanced for.
        members: BTreeMap<NodeId, u32>,
        /// One row of R distinct members per shard.
        rows: Vec<Vec<NodeId>>,
    },
    /// Start replicating `shard` on `member` as a non-voting learner
    /// (it catches up from a snapshot and the log).
    AddLearner {
        /// The shard.
        shard: GroupId,
        /// The new replica.
        member: NodeId,
        /// The shard's configuration epoch this was computed at.
        epoch: u64,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// The shard.
        shard: GroupId,
        /// The learner.
        member: NodeId,
        /// The shard's configuration epoch this was computed at.
        epoch: u64,
    },
    /// Stop replicating `shard` on `member` (voter or learner).
    RemoveReplica {
        /// The shard.
        shard: GroupId,
        /// The replica to drop.
        member: NodeId,
        /// The shard's configuration epoch this was computed at.
        epoch: u64,
    },
    /// Hand the shard's leadership to the voter `to`.
    TransferLeader {
        /// The shard.
        shard: GroupId,
        /// The new leader.
        to: NodeId,
    },
}

impl Step {
    /// The shard a per-shard step concerns; `None` for [`Step::SetTarget`].
    pub fn shard(&self) -> Option<GroupId> {
        match self {
            Step::SetTarget { .. } => None,
            Step::AddLearner { shard, .. }
            | Step::Promote { shard, .. }
            | Step::RemoveReplica { shard, .. }
            | Step::TransferLeader { shard, .. } => Some(*shard),
        }
    }

    /// Encodes as a codec frame (to propose to the metadata group).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(&(SHARD_MAP_SCHEMA, self))
    }

    /// Decodes a frame written by [`Step::encode`]. Bad bytes are an error,
    /// never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Step, StepError> {
        if bytes.len() > MAX_MAP_BYTES {
            return Err(StepError::Decode(format!(
                "{} bytes exceed the limit {MAX_MAP_BYTES}",
                bytes.len()
            )));
        }
        let (schema, step): (u32, Step) =
            codec::decode(bytes).map_err(|e| StepError::Decode(e.to_string()))?;
        if schema != SHARD_MAP_SCHEMA {
            return Err(StepError::Decode(format!("unsupported schema {schema}")));
        }
        Ok(step)
    }
}

/// What [`ShardMap::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The map changed (its version went up).
    Changed,
    /// The step's effect was already present; nothing changed.
    AlreadyApplied,
}

/// One shard: its current replicas, configuration epoch, leader hint and the
/// replicas the controller is moving it towards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    id: GroupId,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    epoch: u64,
    leader: Option<NodeId>,
    target: Vec<NodeId>,
}

impl ShardState {
    /// The shard's group id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// Voting replicas.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// Non-voting replicas (moves in progress: catching up).
    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// Configuration epoch: starts at 1, +1 on every applied membership step.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last known leader (a hint: it may have changed since).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The R replicas the controller is moving this shard to, preferred
    /// leader first.
    pub fn target(&self) -> &[NodeId] {
        &self.target
    }

    /// Whether `node` replicates the shard (voter or learner).
    pub fn has_replica(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Whether the shard is where the target says (voters = target, no
    /// learners).
    pub fn is_settled(&self) -> bool {
        self.learners.is_empty()
            && self.voters.len() == self.target.len()
            && self.target.iter().all(|n| self.voters.contains(n))
    }

    /// The shard's configuration as the consensus layer sees it.
    pub fn membership(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            voters_outgoing: None,
            learners: self.learners.clone(),
        }
    }
}

/// The replicated shard map (see the module docs).
///
/// ```
/// use ha_ring::Cluster;
/// use ha_shard::map::ShardMap;
/// let map = ShardMap::new(16, 3, &Cluster::uniform(5)?)?;
/// assert_eq!(map.shard_count(), 16);
/// let back = ShardMap::decode(&map.encode())?;
/// assert_eq!(back, map);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    hash: HashFn,
    replication: usize,
    version: u64,
    target_epoch: u64,
    target_members: BTreeMap<NodeId, u32>,
    shards: Vec<ShardState>,
}

/// The encoded form (plain data; validated by [`ShardMap::from_wire`]).
#[derive(Serialize, Deserialize)]
struct WireMap {
    schema: u32,
    hash_version: u32,
    replication: u32,
    version: u64,
    target_epoch: u64,
    target_members: Vec<(NodeId, u32)>,
    shards: Vec<WireShard>,
}

#[derive(Serialize, Deserialize)]
struct WireShard {
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    epoch: u64,
    leader: Option<NodeId>,
    target: Vec<NodeId>,
}

fn check_shards(shards: u64) -> Result<u32, ShardMapError> {
    match u32::try_from(shards) {
        Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(n),
        _ => Err(ShardMapError::ShardCount(shards)),
    }
}

fn check_replication(replication: usize) -> Result<(), ShardMapError> {
    if (1..=MAX_REPLICATION).contains(&replication) {
        Ok(())
    } else {
        Err(ShardMapError::Replication(replication))
    }
}

/// Checks one target row: `replication` distinct members of `members`.
fn check_row(
    row: &[NodeId],
    replication: usize,
    members: &BTreeMap<NodeId, u32>,
) -> Result<(), String> {
    if row.len() != replication {
        return Err(format!(
            "a row has {} replicas, expected {replication}",
            row.len()
        ));
    }
    for (i, n) in row.iter().enumerate() {
        if row[..i].contains(n) {
            return Err(format!("{n:?} is listed twice in a row"));
        }
        if !members.contains_key(n) {
            return Err(format!("{n:?} is in a row but not a member"));
        }
    }
    Ok(())
}

/// Checks member weights (size, reserved id, weight range).
fn check_members(members: &BTreeMap<NodeId, u32>) -> Result<(), String> {
    if members.len() > MAX_MEMBERS {
        return Err(format!(
            "{} members exceed the limit {MAX_MEMBERS}",
            members.len()
        ));
    }
    for (&id, &w) in members {
        if id == NodeId(0) {
            return Err("node id 0 is reserved".into());
        }
        if w == 0 || w > ha_ring::MAX_WEIGHT {
            return Err(format!(
                "{id:?} has weight {w}, outside 1..={}",
                ha_ring::MAX_WEIGHT
            ));
        }
    }
    Ok(())
}

impl ShardMap {
    /// A new cluster's map: `shards` groups (ids `FIRST_SHARD..`), each on
    /// `replication` distinct members of `cluster`, balanced by weight and
    /// spread over zones ([`ShardTable`]); every shard starts settled (its
    /// voters are its target) at epoch 1, with no leader known.
    ///
    /// Errors: `shards` outside `1..=MAX_SHARDS`, `replication` outside
    /// `1..=MAX_REPLICATION` or above the member count, more than
    /// [`MAX_MEMBERS`] members.
    pub fn new(shards: u64, replication: usize, cluster: &Cluster) -> Result<Self, ShardMapError> {
        let count = check_shards(shards)?;
        check_replication(replication)?;
        if cluster.len() > MAX_MEMBERS {
            return Err(ShardMapError::TooManyMembers(cluster.len()));
        }
        let ids = (0..u64::from(count)).map(|i| GroupId(FIRST_SHARD + i));
        let table = ShardTable::new(cluster, ids, replication)?;
        let shards = table
            .assignments()
            .iter()
            .map(|(&id, row)| ShardState {
                id,
                voters: row.iter().copied().collect(),
                learners: BTreeSet::new(),
                epoch: 1,
                leader: None,
                target: row.clone(),
            })
            .collect();
        Ok(Self {
            hash: HashFn::V1,
            replication,
            version: 1,
            target_epoch: 1,
            target_members: table.members().clone(),
            shards,
        })
    }

    /// Number of data shards.
    pub fn shard_count(&self) -> u32 {
        // At most MAX_SHARDS (checked on construction and decode).
        self.shards.len() as u32
    }

    /// The replication factor R.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// The pinned key hash.
    pub fn hash_fn(&self) -> HashFn {
        self.hash
    }

    /// Bumped on every change; lets routers and caches notice a new map.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bumped on every [`Step::SetTarget`].
    pub fn target_epoch(&self) -> u64 {
        self.target_epoch
    }

    /// Member weights the current target was balanced for — the members the
    /// controller last counted as live.
    pub fn target_members(&self) -> &BTreeMap<NodeId, u32> {
        &self.target_members
    }

    /// All shards, by id.
    pub fn shards(&self) -> &[ShardState] {
        &self.shards
    }

    /// One shard.
    pub fn shard(&self, id: GroupId) -> Option<&ShardState> {
        let i = id.0.checked_sub(FIRST_SHARD)?;
        self.shards.get(usize::try_from(i).ok()?)
    }

    fn shard_mut(&mut self, id: GroupId) -> Result<&mut ShardState, StepError> {
        let i =
            id.0.checked_sub(FIRST_SHARD)
                .and_then(|i| usize::try_from(i).ok())
                .ok_or(StepError::UnknownShard(id))?;
        self.shards.get_mut(i).ok_or(StepError::UnknownShard(id))
    }

    /// The key router for this map.
    pub fn router(&self) -> Router {
        Router::from_map(self)
    }

    /// Replicas (voters + learners) per node.
    pub fn loads(&self) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for s in &self.shards {
            for n in s.voters.iter().chain(&s.learners) {
                *m.entry(*n).or_default() += 1;
            }
        }
        m
    }

    /// Shards led per node (by leader hint).
    pub fn leader_loads(&self) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for s in &self.shards {
            if let Some(l) = s.leader {
                *m.entry(l).or_default() += 1;
            }
        }
        m
    }

    /// The target as a shard → row map (the shape [`ShardTable`] uses).
    pub fn target_rows(&self) -> BTreeMap<GroupId, Vec<NodeId>> {
        self.shards
            .iter()
            .map(|s| (s.id, s.target.clone()))
            .collect()
    }

    /// Shards not yet at their target (moves in progress or pending).
    pub fn unsettled(&self) -> impl Iterator<Item = &ShardState> + '_ {
        self.shards.iter().filter(|s| !s.is_settled())
    }

    /// Records an observed leader of `shard` (`None`: no leader known).
    /// Returns whether the hint changed. Errors: unknown shard, or a leader
    /// that is not a voter of the shard.
    pub fn observe_leader(
        &mut self,
        shard: GroupId,
        leader: Option<NodeId>,
    ) -> Result<bool, StepError> {
        let s = self.shard_mut(shard)?;
        if let Some(l) = leader
            && !s.voters.contains(&l)
        {
            return Err(StepError::NotAVoter { shard, member: l });
        }
        if s.leader == leader {
            return Ok(false);
        }
        s.leader = leader;
        self.version += 1;
        Ok(true)
    }

    /// Applies one step (see [`Step`] for idempotence and epochs). Never
    /// panics; an error changes nothing.
    pub fn apply(&mut self, step: &Step) -> Result<Applied, StepError> {
        let applied = match step {
            Step::SetTarget {
                target_epoch,
                members,
                rows,
            } => self.apply_target(*target_epoch, members, rows)?,
            Step::AddLearner {
                shard,
                member,
                epoch,
            } => {
                let (shard, member) = (*shard, *member);
                let s = self.shard_mut(shard)?;
                let done = s.has_replica(member);
                change(s, *epoch, done, |s| {
                    if member == NodeId(0) {
                        return Err(StepError::ReservedNode);
                    }
                    if s.voters.len() + s.learners.len() >= MAX_SHARD_MEMBERS {
                        return Err(StepError::TooManyReplicas(shard));
                    }
                    s.learners.insert(member);
                    Ok(())
                })?
            }
            Step::Promote {
                shard,
                member,
                epoch,
            } => {
                let (shard, member) = (*shard, *member);
                let s = self.shard_mut(shard)?;
                let done = s.voters.contains(&member);
                change(s, *epoch, done, |s| {
                    if !s.learners.remove(&member) {
                        return Err(StepError::NotALearner { shard, member });
                    }
                    s.voters.insert(member);
                    Ok(())
                })?
            }
            Step::RemoveReplica {
                shard,
                member,
                epoch,
            } => {
                let (shard, member) = (*shard, *member);
                let s = self.shard_mut(shard)?;
                let done = !s.has_replica(member);
                change(s, *epoch, done, |s| {
                    if s.voters.len() == 1 && s.voters.contains(&member) {
                        return Err(StepError::LastVoter { shard, member });
                    }
                    s.voters.remove(&member);
                    s.learners.remove(&member);
                    if s.leader == Some(member) {
                        s.leader = None;
                    }
                    Ok(())
                })?
            }
            Step::TransferLeader { shard, to } => {
                let s = self.shard_mut(*shard)?;
                if s.leader == Some(*to) {
                    return Ok(Applied::AlreadyApplied);
                }
                if !s.voters.contains(to) {
                    return Err(StepError::NotAVoter {
                        shard: *shard,
                        member: *to,
                    });
                }
                s.leader = Some(*to);
                Applied::Changed
            }
        };
        if applied == Applied::Changed {
            self.version += 1;
        }
        Ok(applied)
    }

    fn apply_target(
        &mut self,
        target_epoch: u64,
        members: &BTreeMap<NodeId, u32>,
        rows: &[Vec<NodeId>],
    ) -> Result<Applied, StepError> {
        if *members == self.target_members
            && rows.len() == self.shards.len()
            && rows.iter().zip(&self.shards).all(|(r, s)| *r == s.target)
        {
            return Ok(Applied::AlreadyApplied);
        }
        if target_epoch != self.target_epoch {
            return Err(StepError::StaleTarget {
                expected: target_epoch,
                found: self.target_epoch,
            });
        }
        check_members(members).map_err(StepError::InvalidTarget)?;
        if rows.len() != self.shards.len() {
            return Err(StepError::InvalidTarget(format!(
                "{} rows for {} shards",
                rows.len(),
                self.shards.len()
            )));
        }
        for row in rows {
            check_row(row, self.replication, members).map_err(StepError::InvalidTarget)?;
        }
        for (s, row) in self.shards.iter_mut().zip(rows) {
            s.target.clone_from(row);
        }
        self.target_members.clone_from(members);
        self.target_epoch += 1;
        Ok(Applied::Changed)
    }

    /// Encodes the map as a codec frame (versioned, checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireMap {
            schema: SHARD_MAP_SCHEMA,
            hash_version: self.hash.version(),
            // At most MAX_REPLICATION.
            replication: self.replication as u32,
            version: self.version,
            target_epoch: self.target_epoch,
            target_members: self.target_members.iter().map(|(&n, &w)| (n, w)).collect(),
            shards: self
                .shards
                .iter()
                .map(|s| WireShard {
                    voters: s.voters.iter().copied().collect(),
                    learners: s.learners.iter().copied().collect(),
                    epoch: s.epoch,
                    leader: s.leader,
                    target: s.target.clone(),
                })
                .collect(),
        };
        codec::encode(&wire)
    }

    /// Decodes and validates a map written by [`ShardMap::encode`]. Bad
    /// bytes or content that breaks an invariant are an error, never a
    /// panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShardMapError> {
        if bytes.len() > MAX_MAP_BYTES {
            return Err(ShardMapError::TooLarge { len: bytes.len() });
        }
        let wire: WireMap = codec::decode(bytes)?;
        Self::from_wire(wire)
    }

    fn from_wire(w: WireMap) -> Result<Self, ShardMapError> {
        if w.schema != SHARD_MAP_SCHEMA {
            return Err(ShardMapError::Schema { found: w.schema });
        }
        let hash = HashFn::from_version(w.hash_version)
            .ok_or(ShardMapError::UnknownHash(w.hash_version))?;
        let replication = usize::try_from(w.replication).unwrap_or(usize::MAX);
        check_replication(replication)?;
        check_shards(w.shards.len() as u64)?;
        let invalid = ShardMapError::Invalid;
        if w.version >= MAX_COUNTER || w.target_epoch >= MAX_COUNTER {
            return Err(invalid(format!(
                "version {} or target epoch {} is not below {MAX_COUNTER}",
                w.version, w.target_epoch
            )));
        }
        let mut target_members = BTreeMap::new();
        for (n, weight) in w.target_members {
            if target_members.insert(n, weight).is_some() {
                return Err(invalid(format!("member {n:?} listed twice")));
            }
        }
        check_members(&target_members).map_err(invalid)?;
        let mut shards = Vec::with_capacity(w.shards.len());
        for (i, ws) in w.shards.into_iter().enumerate() {
            let id = GroupId(FIRST_SHARD + i as u64);
            let voters: BTreeSet<NodeId> = ws.voters.iter().copied().collect();
            let learners: BTreeSet<NodeId> = ws.learners.iter().copied().collect();
            if voters.len() != ws.voters.len() || learners.len() != ws.learners.len() {
                return Err(invalid(format!("{id:?} lists a replica twice")));
            }
            if voters.is_empty() {
                return Err(invalid(format!("{id:?} has no voters")));
            }
            if voters.len() + learners.len() > MAX_SHARD_MEMBERS {
                return Err(invalid(format!(
                    "{id:?} lists more than {MAX_SHARD_MEMBERS} replicas"
                )));
            }
            if let Some(n) = voters.intersection(&learners).next() {
                return Err(invalid(format!("{n:?} is voter and learner of {id:?}")));
            }
            if voters.contains(&NodeId(0)) || learners.contains(&NodeId(0)) {
                return Err(invalid("node id 0 is reserved".into()));
            }
            if let Some(l) = ws.leader
                && !voters.contains(&l)
            {
                return Err(invalid(format!("leader {l:?} of {id:?} is not a voter")));
            }
            if ws.epoch == 0 || ws.epoch >= MAX_COUNTER {
                return Err(invalid(format!(
                    "{id:?} has epoch {}, outside 1..{MAX_COUNTER}",
                    ws.epoch
                )));
            }
            check_row(&ws.target, replication, &target_members)
                .map_err(|e| invalid(format!("target of {id:?}: {e}")))?;
            shards.push(ShardState {
                id,
                voters,
                learners,
                epoch: ws.epoch,
                leader: ws.leader,
                target: ws.target,
            });
        }
        Ok(Self {
            hash,
            replication,
            version: w.version,
            target_epoch: w.target_epoch,
            target_members,
            shards,
        })
    }
}

/// The common shape of a membership step: a no-op when its effect is
/// present (`done`), refused at a stale epoch, otherwise `f` (which checks
/// before it mutates, so an error changes nothing) and an epoch bump.
fn change(
    s: &mut ShardState,
    epoch: u64,
    done: bool,
    f: impl FnOnce(&mut ShardState) -> Result<(), StepError>,
) -> Result<Applied, StepError> {
    if done {
        return Ok(Applied::AlreadyApplied);
    }
    check_epoch(s, epoch)?;
    f(s)?;
    s.epoch += 1;
    Ok(Applied::Changed)
}

/// A table for operators (`ha-node ctl shards`): one line per shard with
/// its epoch, leader, voters, learners (moves in progress) and the target
/// when the shard is not there yet (`=` when it is).
///
/// ```text
/// shard  epoch  leader  voters                  learners        target
/// g1     3      n2      n1 n2 n4                n5              n2 n4 n5
/// ```
impl std::fmt::Display for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn ids<'a>(set: impl Iterator<Item = &'a NodeId>) -> String {
            let v: Vec<String> = set.map(|n| format!("{n:?}")).collect();
            if v.is_empty() {
                "-".into()
            } else {
                v.join(" ")
            }
        }
        writeln!(
            f,
            "map v{} · {} shards · R={} · target epoch {} · {} unsettled",
            self.version,
            self.shards.len(),
            self.replication,
            self.target_epoch,
            self.unsettled().count()
        )?;
        writeln!(
            f,
            "{:<7}{:<7}{:<8}{:<24}{:<16}target",
            "shard", "epoch", "leader", "voters", "learners"
        )?;
        for s in &self.shards {
            let leader = s.leader.map_or("-".to_string(), |l| format!("{l:?}"));
            let target = if s.is_settled() {
                "=".to_string()
            } else {
                ids(s.target.iter())
            };
            writeln!(
                f,
                "{:<7}{:<7}{:<8}{:<24}{:<16}{}",
                format!("{:?}", s.id),
                s.epoch,
                leader,
                ids(s.voters.iter()),
                ids(s.learners.iter()),
                target
            )?;
        }
        Ok(())
    }
}

fn check_epoch(s: &ShardState, epoch: u64) -> Result<(), StepError> {
    if s.epoch == epoch {
        Ok(())
    } else {
        Err(StepError::StaleEpoch {
            shard: s.id,
            expected: epoch,
            found: s.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        ShardMap::new(16, 3, &Cluster::uniform(5).unwrap()).unwrap()
    }

    #[test]
    fn new_map_is_settled_balanced_and_validated() {
        let m = map();
        assert_eq!(m.shard_count(), 16);
        assert!(m.shards().iter().all(ShardState::is_settled));
        assert!(m.shards().iter().all(|s| s.voters().len() == 3));
        // 48 replicas on 5 members: 9 or 10 each.
        assert!(m.loads().values().all(|&l| (9..=10).contains(&l)));
        let c = Cluster::uniform(5).unwrap();
        assert_eq!(
            ShardMap::new(0, 3, &c).unwrap_err(),
            ShardMapError::ShardCount(0)
        );
        assert_eq!(
            ShardMap::new(u64::from(MAX_SHARDS) + 1, 3, &c).unwrap_err(),
            ShardMapError::ShardCount(u64::from(MAX_SHARDS) + 1)
        );
        assert_eq!(
            ShardMap::new(4, 0, &c).unwrap_err(),
            ShardMapError::Replication(0)
        );
        assert_eq!(
            ShardMap::new(4, MAX_REPLICATION + 1, &c).unwrap_err(),
            ShardMapError::Replication(MAX_REPLICATION + 1)
        );
        assert!(matches!(
            ShardMap::new(4, 6, &c).unwrap_err(),
            ShardMapError::Placement(RingError::NotEnoughNodes { .. })
        ));
    }

    #[test]
    fn membership_steps_follow_epochs_and_are_idempotent() {
        let mut m = map();
        let g = GroupId(3);
        let s = m.shard(g).unwrap().clone();
        let outsider = (1..=5).map(NodeId).find(|n| !s.has_replica(*n)).unwrap();
        let victim = *s.voters().iter().next().unwrap();
        let step = |kind: u8, member: NodeId, epoch: u64| match kind {
            0 => Step::AddLearner {
                shard: g,
                member,
                epoch,
            },
            1 => Step::Promote {
                shard: g,
                member,
                epoch,
            },
            _ => Step::RemoveReplica {
                shard: g,
                member,
                epoch,
            },
        };
        // Each change once, then again (a no-op that changes nothing).
        let mut after = Vec::new();
        for (kind, member, epoch) in [(0, outsider, 1), (1, outsider, 2), (2, victim, 3)] {
            // The same change computed at an older epoch is stale.
            if epoch > 1 {
                let before = m.clone();
                assert!(matches!(
                    m.apply(&step(kind, member, epoch - 1)),
                    Err(StepError::StaleEpoch { .. })
                ));
                assert_eq!(m, before);
            }
            assert_eq!(m.apply(&step(kind, member, epoch)), Ok(Applied::Changed));
            let once = m.clone();
            assert_eq!(
                m.apply(&step(kind, member, epoch)),
                Ok(Applied::AlreadyApplied)
            );
            assert_eq!(m, once);
            after.push(m.shard(g).unwrap().clone());
        }
        assert!(after[0].learners().contains(&outsider));
        assert!(after[1].voters().contains(&outsider) && after[1].voters().len() == 4);
        assert!(!after[2].has_replica(victim));
        // Replaying the old AddLearner for the removed node cannot resurrect it.
        assert!(matches!(
            m.apply(&step(0, victim, 1)),
            Err(StepError::StaleEpoch { .. })
        ));
        assert_eq!(m.shard(g).unwrap().epoch(), 4);
        assert!(!m.shard(g).unwrap().has_replica(victim));
    }

    #[test]
    fn bad_steps_change_nothing() {
        let mut m = map();
        let before = m.clone();
        let g = GroupId(1);
        let voters: Vec<NodeId> = m.shard(g).unwrap().voters().iter().copied().collect();
        let outsider = (1..=5).map(NodeId).find(|n| !voters.contains(n)).unwrap();
        let cases = [
            Step::AddLearner {
                shard: GroupId(0),
                member: NodeId(1),
                epoch: 1,
            },
            Step::AddLearner {
                shard: GroupId(17),
                member: NodeId(1),
                epoch: 1,
            },
            Step::AddLearner {
                shard: g,
                member: NodeId(0),
                epoch: 1,
            },
            Step::Promote {
                shard: g,
                member: outsider,
                epoch: 1,
            },
            Step::TransferLeader {
                shard: g,
                to: outsider,
            },
            Step::SetTarget {
                target_epoch: 1,
                members: m.target_members().clone(),
                rows: vec![],
            },
            Step::SetTarget {
                target_epoch: 7,
                members: BTreeMap::new(),
                rows: vec![],
            },
        ];
        for step in &cases {
            assert!(m.apply(step).is_err(), "{step:?}");
            assert_eq!(m, before, "{step:?}");
        }
        // Down to one voter, then the last one cannot go.
        let mut epoch = 1;
        for v in &voters[..2] {
            let step = Step::RemoveReplica {
                shard: g,
                member: *v,
                epoch,
            };
            assert_eq!(m.apply(&step), Ok(Applied::Changed));
            epoch += 1;
        }
        let last = Step::RemoveReplica {
            shard: g,
            member: voters[2],
            epoch,
        };
        assert!(matches!(m.apply(&last), Err(StepError::LastVoter { .. })));
    }

    #[test]
    fn decode_rejects_bad_bytes_and_bad_content() {
        let m = map();
        let bytes = m.encode();
        assert_eq!(ShardMap::decode(&bytes).unwrap(), m);
        assert!(matches!(
            ShardMap::decode(&bytes[..bytes.len() - 1]),
            Err(ShardMapError::Codec(_))
        ));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        assert!(matches!(
            ShardMap::decode(&flipped),
            Err(ShardMapError::Codec(_))
        ));
        assert!(matches!(
            ShardMap::decode(&vec![0u8; MAX_MAP_BYTES + 1]),
            Err(ShardMapError::TooLarge { .. })
        ));
        // Well-framed but invalid content.
        let wire = |f: &dyn Fn(&mut WireMap)| {
            let mut w: WireMap = codec::decode(&bytes).unwrap();
            f(&mut w);
            ShardMap::decode(&codec::encode(&w))
        };
        assert_eq!(
            wire(&|w| w.schema = 9).unwrap_err(),
            ShardMapError::Schema { found: 9 }
        );
        assert_eq!(
            wire(&|w| w.hash_version = 77).unwrap_err(),
            ShardMapError::UnknownHash(77)
        );
        assert_eq!(
            wire(&|w| w.replication = 0).unwrap_err(),
            ShardMapError::Replication(0)
        );
        assert_eq!(
            wire(&|w| w.shards.clear()).unwrap_err(),
            ShardMapError::ShardCount(0)
        );
        let invalid: [&dyn Fn(&mut WireMap); 10] = [
            &|w| w.version = MAX_COUNTER,
            &|w| w.target_epoch = u64::MAX,
            &|w| w.shards[3].epoch = MAX_COUNTER,
            &|w| w.shards[0].voters.clear(),
            &|w| {
                let v = w.shards[0].voters[0];
                w.shards[0].learners.push(v);
            },
            &|w| w.shards[0].leader = Some(NodeId(99)),
            &|w| w.shards[0].target.pop().map(drop).unwrap_or(()),
            &|w| w.shards[0].epoch = 0,
            &|w| w.target_members.push((NodeId(0), 1)),
            &|w| {
                let v = w.shards[1].voters[0];
                w.shards[1].voters.push(v);
            },
        ];
        for f in invalid {
            assert!(matches!(wire(f), Err(ShardMapError::Invalid(_))));
        }
    }

    #[test]
    fn display_shows_moves_in_progress() {
        let mut m = map();
        let g = GroupId(2);
        let s = m.shard(g).unwrap().clone();
        let outsider = (1..=5).map(NodeId).find(|n| !s.has_replica(*n)).unwrap();
        m.apply(&Step::AddLearner {
            shard: g,
            member: outsider,
            epoch: 1,
        })
        .unwrap();
        let text = m.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 16);
        assert!(lines[0].contains("16 shards") && lines[0].contains("1 unsettled"));
        let row = lines[3];
        assert!(row.starts_with("g2 "), "{row}");
        assert!(row.contains(&format!("{outsider:?}")), "{row}");
        assert!(lines[2].starts_with("g1 ") && lines[2].ends_with('='));
    }

    #[test]
    fn steps_roundtrip_through_the_codec() {
        let m = map();
        let steps = [
            Step::SetTarget {
                target_epoch: 1,
                members: m.target_members().clone(),
                rows: m.shards().iter().map(|s| s.target().to_vec()).collect(),
            },
            Step::AddLearner {
                shard: GroupId(2),
                member: NodeId(4),
                epoch: 9,
            },
            Step::TransferLeader {
                shard: GroupId(2),
                to: NodeId(1),
            },
        ];
        for s in &steps {
            assert_eq!(Step::decode(&s.encode()).as_ref(), Ok(s));
        }
        let mut b = steps[1].encode();
        b[2] ^= 1;
        assert!(matches!(Step::decode(&b), Err(StepError::Decode(_))));
        assert!(Step::decode(&[]).is_err());
    }
}
