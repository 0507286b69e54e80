//! The metadata group's state machine: the [`ShardMap`] as an
//! [`ha_core::state_machine::StateMachine`], so group 0 replicates it with
//! the same `Replica` driver, log store and protocols as every data shard.
//!
//! Commands are [`MetaCommand`] codec frames: `Init` creates the map once
//! (the bootstrap node proposes it as group 0's first command), `Step`
//! records a placement step, `ObserveLeader` records a shard's leader.
//! Every command answers with a [`MetaResponse`] frame. Bad bytes, a step
//! before `Init`, a refused step — all are answered with an error response
//! and change nothing; `apply` itself never fails on command content.

use ha_core::Bytes;
use ha_core::codec::{self, CodecError};
use ha_core::state_machine::{
    Applied as Entry, ChunkSource, SnapshotSource, StateMachine, StateMachineError, VecChunks,
};
use ha_core::{GroupId, LogId, Membership, NodeId, SnapshotMeta};
use ha_ring::{Cluster, NodeSpec};
use serde::{Deserialize, Serialize};

use crate::map::{Applied, MAX_MAP_BYTES, MAX_MEMBERS, SHARD_MAP_SCHEMA, ShardMap, Step};

/// Largest snapshot chunk the metadata machine produces, in bytes (the
/// encoded map is split into chunks of this size).
pub const META_SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

/// One member in an [`MetaCommand::Init`] (plain data for the codec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    /// Member id.
    pub id: NodeId,
    /// Relative capacity.
    pub weight: u32,
    /// Zone label ("" = unknown).
    pub zone: String,
    /// Rack label ("" = unknown).
    pub rack: String,
}

impl From<&NodeSpec> for MemberSpec {
    fn from(n: &NodeSpec) -> Self {
        Self {
            id: n.id,
            weight: n.weight,
            zone: n.zone.clone(),
            rack: n.rack.clone(),
        }
    }
}

/// A command of the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create the map: `shards` shards of `replication` replicas placed on
    /// `members` ([`ShardMap::new`]). Applying it again with the same
    /// arguments is a no-op; with others it is refused.
    Init {
        /// `--shards N`.
        shards: u64,
        /// `--replication R`.
        replication: u32,
        /// The founding members.
        members: Vec<MemberSpec>,
    },
    /// Record a placement step ([`ShardMap::apply`]).
    Step(Step),
    /// Record a shard's observed leader ([`ShardMap::observe_leader`]).
    ObserveLeader {
        /// The shard.
        shard: GroupId,
        /// Its leader, if any.
        leader: Option<NodeId>,
    },
}

impl MetaCommand {
    /// Encodes as a codec frame (what to propose to group 0).
    pub fn encode(&self) -> Bytes {
        codec::encode(&(SHARD_MAP_SCHEMA, self)).into()
    }

    /// Decodes a frame written by [`MetaCommand::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MAP_BYTES {
            return Err(format!(
                "{} bytes exceed the limit {MAX_MAP_BYTES}",
                bytes.len()
            ));
        }
        let (schema, cmd): (u32, MetaCommand) = codec::decode(bytes).map_err(|e| e.to_string())?;
        if schema != SHARD_MAP_SCHEMA {
            return Err(format!("unsupported schema {schema}"));
        }
        Ok(cmd)
    }
}

/// The answer to a [`MetaCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// The map changed.
    Changed,
    /// The command's effect was already present; nothing changed.
    AlreadyApplied,
    /// The command was valid data but refused (stale step, no map yet,
    /// conflicting `Init`, …); nothing changed.
    Refused(String),
    /// The bytes are not a command; nothing changed.
    BadCommand(String),
}

impl MetaResponse {
    /// Encodes as a codec frame.
    pub fn encode(&self) -> Bytes {
        codec::encode(self).into()
    }

    /// Decodes a frame written by [`MetaResponse::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

/// The metadata state machine (see the module docs).
///
/// ```
/// use ha_core::state_machine::{Applied, StateMachine};
/// use ha_core::LogId;
/// use ha_ring::NodeSpec;
/// use ha_shard::meta::{MemberSpec, MetaCommand, MetaMachine, MetaResponse};
///
/// let mut sm = MetaMachine::default();
/// let init = MetaCommand::Init {
///     shards: 8,
///     replication: 3,
///     members: (1..=3u64).map(|i| MemberSpec::from(&NodeSpec::new(i))).collect(),
/// };
/// let out = sm.apply(LogId::new(1, 1), Applied::Command(&init.encode()))?;
/// assert_eq!(MetaResponse::decode(&out)?, MetaResponse::Changed);
/// assert_eq!(sm.map().map(|m| m.shard_count()), Some(8));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaMachine {
    map: Option<ShardMap>,
    init: Option<(u64, u32, Vec<MemberSpec>)>,
    last_applied: LogId,
    membership: Membership,
}

/// First snapshot chunk: what follows and how long it is.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    schema: u32,
    meta: SnapshotMeta,
    init: Option<(u64, u32, Vec<MemberSpec>)>,
    map_bytes: u64,
}

struct MetaSnapshot {
    meta: SnapshotMeta,
    chunks: VecChunks,
}

impl ChunkSource for MetaSnapshot {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        self.chunks.next_chunk()
    }
}

impl SnapshotSource for MetaSnapshot {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }
}

impl MetaMachine {
    /// The shard map, once `Init` was applied.
    pub fn map(&self) -> Option<&ShardMap> {
        self.map.as_ref()
    }

    fn execute(&mut self, cmd: MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::Init {
                shards,
                replication,
                members,
            } => {
                let args = (shards, replication, members);
                if let Some(existing) = &self.init {
                    return if *existing == args {
                        MetaResponse::AlreadyApplied
                    } else {
                        MetaResponse::Refused("the shard map exists already".into())
                    };
                }
                if args.2.len() > MAX_MEMBERS {
                    return MetaResponse::Refused(format!(
                        "{} members exceed the limit {MAX_MEMBERS}",
                        args.2.len()
                    ));
                }
                let specs = args.2.iter().map(|m| {
                    NodeSpec::new(m.id)
                        .weight(m.weight)
                        .zone(m.zone.clone())
                        .rack(m.rack.clone())
                });
                let built = Cluster::new(specs)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        let r = usize::try_from(replication).unwrap_or(usize::MAX);
                        ShardMap::new(shards, r, &c).map_err(|e| e.to_string())
                    });
                match built {
                    Ok(map) => {
                        self.map = Some(map);
                        self.init = Some(args);
                        MetaResponse::Changed
                    }
                    Err(e) => MetaResponse::Refused(e),
                }
            }
            MetaCommand::Step(step) => match self.map.as_mut() {
                None => MetaResponse::Refused("no shard map yet (Init first)".into()),
                Some(map) => match map.apply(&step) {
                    Ok(Applied::Changed) => MetaResponse::Changed,
                    Ok(Applied::AlreadyApplied) => MetaResponse::AlreadyApplied,
                    Err(e) => MetaResponse::Refused(e.to_string()),
                },
            },
            MetaCommand::ObserveLeader { shard, leader } => match self.map.as_mut() {
                None => MetaResponse::Refused("no shard map yet (Init first)".into()),
                Some(map) => match map.observe_leader(shard, leader) {
                    Ok(true) => MetaResponse::Changed,
                    Ok(false) => MetaResponse::AlreadyApplied,
                    Err(e) => MetaResponse::Refused(e.to_string()),
                },
            },
        }
    }
}

impl StateMachine for MetaMachine {
    fn apply(&mut self, log_id: LogId, entry: Entry<'_>) -> Result<Bytes, StateMachineError> {
        if log_id.index <= self.last_applied.index {
            // Replayed after a restart: already in the state.
            return Ok(Bytes::new());
        }
        self.last_applied = log_id;
        let response = match entry {
            Entry::Blank => return Ok(Bytes::new()),
            Entry::Membership(m) => {
                self.membership = m.clone();
                return Ok(Bytes::new());
            }
            Entry::Command(bytes) => match MetaCommand::decode(bytes) {
                Ok(cmd) => self.execute(cmd),
                Err(e) => MetaResponse::BadCommand(e),
            },
        };
        Ok(response.encode())
    }

    fn last_applied(&self) -> LogId {
        self.last_applied
    }

    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            membership: self.membership.clone(),
        };
        let map = self.map.as_ref().map(ShardMap::encode).unwrap_or_default();
        let header = SnapshotHeader {
            schema: SHARD_MAP_SCHEMA,
            meta: meta.clone(),
            init: self.init.clone(),
            map_bytes: map.len() as u64,
        };
        let mut chunks = vec![Bytes::from(codec::encode(&header))];
        chunks.extend(
            map.chunks(META_SNAPSHOT_CHUNK_BYTES)
                .map(Bytes::copy_from_slice),
        );
        Ok(Box::new(MetaSnapshot {
            meta,
            chunks: VecChunks::new(chunks),
        }))
    }

    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        let corrupt = StateMachineError::CorruptSnapshot;
        let first = chunks
            .next_chunk()?
            .ok_or_else(|| corrupt("empty snapshot".into()))?;
        let header: SnapshotHeader =
            codec::decode(&first).map_err(|e: CodecError| corrupt(e.to_string()))?;
        if header.schema != SHARD_MAP_SCHEMA {
            return Err(corrupt(format!("unsupported schema {}", header.schema)));
        }
        if header.meta.last_log_id != meta.last_log_id {
            return Err(corrupt(format!(
                "snapshot covers {:?}, expected {:?}",
                header.meta.last_log_id, meta.last_log_id
            )));
        }
        if header.map_bytes > MAX_MAP_BYTES as u64 {
            return Err(corrupt(format!(
                "map of {} bytes exceeds the limit {MAX_MAP_BYTES}",
                header.map_bytes
            )));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next_chunk()? {
            if bytes.len() + chunk.len() > header.map_bytes as usize {
                return Err(corrupt("snapshot longer than its header says".into()));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != header.map_bytes {
            return Err(corrupt(format!(
                "snapshot promised {} map bytes, carried {}",
                header.map_bytes,
                bytes.len()
            )));
        }
        let map = match (&header.init, bytes.is_empty()) {
            (None, true) => None,
            (Some(_), false) => Some(ShardMap::decode(&bytes).map_err(|e| corrupt(e.to_string()))?),
            _ => return Err(corrupt("init record and map disagree".into())),
        };
        self.map = map;
        self.init = header.init;
        self.last_applied = meta.last_log_id;
        self.membership = meta.membership.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(sm: &mut MetaMachine, index: u64, c: &MetaCommand) -> MetaResponse {
        let out = sm
            .apply(LogId::new(1, index), Entry::Command(&c.encode()))
            .unwrap();
        MetaResponse::decode(&out).unwrap()
    }

    fn init() -> MetaCommand {
        MetaCommand::Init {
            shards: 16,
            replication: 3,
            members: (1..=5u64)
                .map(|i| MemberSpec::from(&NodeSpec::new(i)))
                .collect(),
        }
    }

    #[test]
    fn init_steps_and_leaders_are_applied_once() {
        let mut sm = MetaMachine::default();
        let step = Step::TransferLeader {
            shard: GroupId(1),
            to: NodeId(1),
        };
        assert!(matches!(
            cmd(&mut sm, 1, &MetaCommand::Step(step)),
            MetaResponse::Refused(_)
        ));
        assert_eq!(cmd(&mut sm, 2, &init()), MetaResponse::Changed);
        assert_eq!(cmd(&mut sm, 3, &init()), MetaResponse::AlreadyApplied);
        let other = MetaCommand::Init {
            shards: 8,
            replication: 3,
            members: vec![],
        };
        assert!(matches!(cmd(&mut sm, 4, &other), MetaResponse::Refused(_)));
        let map = sm.map().unwrap().clone();
        assert_eq!(
            map,
            ShardMap::new(16, 3, &Cluster::uniform(5).unwrap()).unwrap()
        );
        let g = GroupId(1);
        let leader = *map.shard(g).unwrap().voters().iter().next().unwrap();
        let observe = MetaCommand::ObserveLeader {
            shard: g,
            leader: Some(leader),
        };
        assert_eq!(cmd(&mut sm, 5, &observe), MetaResponse::Changed);
        assert_eq!(cmd(&mut sm, 6, &observe), MetaResponse::AlreadyApplied);
        // A replayed log entry (index already applied) does nothing.
        let before = sm.clone();
        let other_leader = *map.shard(g).unwrap().voters().iter().last().unwrap();
        let replay = MetaCommand::ObserveLeader {
            shard: g,
            leader: Some(other_leader),
        };
        let out = sm
            .apply(LogId::new(1, 6), Entry::Command(&replay.encode()))
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(sm, before);
        // Garbage is answered, not applied.
        let out = sm
            .apply(LogId::new(1, 7), Entry::Command(b"\x01garbage"))
            .unwrap();
        assert!(matches!(
            MetaResponse::decode(&out).unwrap(),
            MetaResponse::BadCommand(_)
        ));
        assert_eq!(sm.map(), before.map());
        assert_eq!(sm.last_applied(), LogId::new(1, 7));
    }

    #[test]
    fn snapshots_roundtrip_and_corruption_keeps_the_old_state() {
        let mut sm = MetaMachine::default();
        // Before Init: an empty snapshot roundtrips too.
        let mut snap = sm.snapshot().unwrap();
        let meta = snap.meta().clone();
        let mut fresh = MetaMachine::default();
        fresh.install_snapshot(&meta, &mut *snap).unwrap();
        assert_eq!(fresh, sm);

        let big = MetaCommand::Init {
            shards: 1000,
            replication: 3,
            members: (1..=20u64)
                .map(|i| MemberSpec::from(&NodeSpec::new(i).zone(format!("z{}", i % 3))))
                .collect(),
        };
        assert_eq!(cmd(&mut sm, 1, &big), MetaResponse::Changed);
        let mut snap = sm.snapshot().unwrap();
        let meta = snap.meta().clone();
        let mut chunks = Vec::new();
        while let Some(c) = snap.next_chunk().unwrap() {
            assert!(c.len() <= META_SNAPSHOT_CHUNK_BYTES || chunks.is_empty());
            chunks.push(c);
        }
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        let mut copy = MetaMachine::default();
        copy.install_snapshot(&meta, &mut VecChunks::new(chunks.clone()))
            .unwrap();
        assert_eq!(copy, sm);
        // Any chunking of the map bytes reassembles (the transport may
        // re-chunk).
        let map_bytes: Vec<u8> = chunks[1..].iter().flat_map(|c| c.to_vec()).collect();
        let mut rechunked = vec![chunks[0].clone()];
        rechunked.extend(map_bytes.chunks(997).map(Bytes::copy_from_slice));
        assert!(rechunked.len() > 3);
        let mut again = MetaMachine::default();
        again
            .install_snapshot(&meta, &mut VecChunks::new(rechunked))
            .unwrap();
        assert_eq!(again, sm);

        // Corruptions: a missing chunk, a flipped byte, a wrong meta.
        let kept = copy.clone();
        let mut short = chunks.clone();
        short.pop();
        let mut flipped = chunks.clone();
        let mut b = flipped[1].to_vec();
        b[10] ^= 0xff;
        flipped[1] = b.into();
        let mut extra = chunks.clone();
        extra.push(Bytes::from_static(b"more"));
        for bad in [short, flipped, extra, vec![]] {
            assert!(
                copy.install_snapshot(&meta, &mut VecChunks::new(bad))
                    .is_err()
            );
            assert_eq!(copy, kept);
        }
        let mut other = meta.clone();
        other.last_log_id = LogId::new(9, 9);
        assert!(
            copy.install_snapshot(&other, &mut VecChunks::new(chunks))
                .is_err()
        );
        assert_eq!(copy, kept);
    }
}
