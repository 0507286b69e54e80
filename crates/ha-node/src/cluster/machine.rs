//! [`ClusterMachine`]: the state machine the replica runs. It multiplexes
//! ha-node's cluster metadata (the member table) and the application's
//! commands in one log and one snapshot, so the application (e.g.
//! `ha_lock::LockMachine`) never sees members.
//!
//! ## Entry format
//!
//! A command entry's first byte says whose it is:
//!
//! - [`TAG_APP`] (0): the rest goes to the application unchanged;
//! - [`TAG_META`] (1): the rest is a codec-encoded [`MetaCommand`]; the
//!   application sees a `Blank` at that index (its applied index moves).
//!
//! Any other payload (empty, unknown tag: written by another tool or
//! corrupt) goes to the application whole, which answers it with its own
//! "bad command" response — a pure function of the committed bytes, so every
//! replica decides alike.
//!
//! ## Durability and restart
//!
//! The member table is part of the application's durable state: it is the
//! application's *sidecar* ([`StateMachine::stage_sidecar`]). Whenever a
//! meta entry changes the table, the new table (encoded as
//! [`encode_table`]) is staged and stored by the application's apply of
//! that same entry (a `Blank` at its index), in the same atomic write as
//! the application's `last_applied` (ha-lock: one RocksDB `WriteBatch`). So
//! the stored table always belongs to the stored applied index, and on
//! start the machine loads it ([`ClusterMachine::new`]) and resumes at the
//! application's applied index: only the log after it is replayed, and the
//! node may purge its log behind snapshots. The consensus configuration
//! as of the applied index is stored alongside ([`StoredState`]; staged at
//! every configuration entry too), so that a protocol restarted after its
//! log was purged behind a local snapshot (which the log store does not
//! record) starts from the application's state as its snapshot
//! ([`ClusterMachine::resume_point`], [`resume_from`]).
//!
//! Two cases fall back to replaying the whole log (the table is rebuilt
//! from index 1; the application skips what it has): an application that
//! keeps no sidecar ([`StateMachine::keeps_sidecar`] false), and a data dir
//! whose application state was written without a table (by a build before
//! the table was stored; those builds never purged the log). In the second
//! case the rebuilt table is stored with the first entry the application
//! applies; until the table is stored, [`ClusterMachine::snapshot`] is
//! refused, so the log is not purged before the table is durable.
//!
//! ## Member ids
//!
//! Founding members come with ids derived from their names
//! ([`ids::member_id`](crate::ids::member_id)). A member added at run time
//! ([`MetaCommand::AddNewMember`]) gets its id *here*, when the entry is
//! applied: [`ids::fresh_member_id`](crate::ids::fresh_member_id) of the
//! cluster id, its peer URLs and the entry's log index, bumped until it is
//! neither a current member nor a tombstone. Every replica applies the same
//! entry at the same index, so all assign the same id.
//!
//! Invariant: an id is admitted at most once in a cluster's life. A removed
//! member's id becomes a tombstone ([`MemberTable::removed`]); no add can
//! produce it again, and the node refuses messages and requests from it.
//! (A member that comes back with an empty data dir has forgotten its votes
//! and promises; under its old id it could vote twice in a term.)
//!
//! ## Stored format
//!
//! The table is stored and sent as [`encode_table`]: a codec frame of
//! `(format, frame of StoredState)`, with format [`STORED_TABLE_FORMAT`]; a table of
//! another format is refused with an error naming both versions (a newer
//! build wrote it), never guessed at.
//!
//! A snapshot's first chunk is the stored table; the application's chunks
//! follow unchanged. The table is checked before the application's state is
//! touched, so a snapshot with a table this build cannot read changes
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ha_core::codec;
use ha_core::state_machine::{
    Applied, ChunkSource, SnapshotSource, StateMachine, StateMachineError,
};
use ha_core::{LogId, LogIndex, Membership, SnapshotMeta};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// First byte of an application command entry.
pub const TAG_APP: u8 = 0;
/// First byte of a cluster-metadata command entry.
pub const TAG_META: u8 = 1;
/// Most members the table holds; an add beyond it is refused.
pub const MAX_MEMBERS: usize = 64;
/// Longest name, URL list entry count and URL accepted in a member record
/// (the config limits, checked again here because the log may hold anything).
pub const MAX_MEMBER_NAME_BYTES: usize = crate::config::MAX_NAME_BYTES;
/// Most URLs per list in a member record.
pub const MAX_MEMBER_URLS: usize = crate::config::MAX_URLS;
/// Longest URL in a member record.
pub const MAX_MEMBER_URL_BYTES: usize = crate::config::MAX_URL_BYTES;
/// Most tombstones (ids of removed members) the table remembers; beyond it
/// the oldest removal is forgotten. 8 bytes each plus the index of the
/// removal: at most about 1 MiB of table. A forgotten id can come back only
/// through a 32-bit hash collision of a later add, and only matters if the
/// removed process still runs after this many later removals.
pub const MAX_TOMBSTONES: usize = 65_536;
/// Ids tried for one added member before the add is refused (each a fresh
/// hash; more than a few collisions means something else is wrong).
pub const MAX_FRESH_ID_ATTEMPTS: u32 = 64;
/// Version of the stored member table ([`encode_table`]): the application's
/// sidecar and the first chunk of every snapshot. Bump it whenever the
/// encoding of [`StoredState`] changes. Format 2 added the replicated shard
/// map; a table without one is still written as format 1, so a cluster that
/// never had a shard map stays readable by builds from before it.
pub const STORED_TABLE_FORMAT: u32 = 2;
/// The format written while the table has no shard map (see
/// [`STORED_TABLE_FORMAT`]).
const STORED_TABLE_FORMAT_V1: u32 = 1;

/// What the node stores with the application's state and sends as a
/// snapshot's first chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The member table.
    pub table: MemberTable,
    /// The consensus configuration as of the same applied index (what a
    /// protocol restarted from this state takes as its snapshot's).
    pub membership: Membership,
}

/// The stored form: its format, then the state's own codec frame (so the
/// format can be read whatever the state's shape).
#[derive(Serialize, Deserialize)]
struct StoredTable {
    format: u32,
    body: Bytes,
}

/// Format 1 of [`StoredState`]: the table before the shard map.
#[derive(Serialize, Deserialize)]
struct StoredStateV1 {
    table: MemberTableV1,
    membership: Membership,
}

/// Format 1 of [`MemberTable`].
#[derive(Serialize, Deserialize)]
struct MemberTableV1 {
    initialized: bool,
    cluster_id: u64,
    members: BTreeMap<u64, Member>,
    removed: BTreeMap<u64, u64>,
}

/// Encodes `state` as stored (sidecar) and sent (snapshot header): format 1
/// while the table has no shard map, else [`STORED_TABLE_FORMAT`].
pub fn encode_table(state: &StoredState) -> Bytes {
    let (format, body) = if state.table.shard_map.is_none() {
        let t = &state.table;
        let v1 = StoredStateV1 {
            table: MemberTableV1 {
                initialized: t.initialized,
                cluster_id: t.cluster_id,
                members: t.members.clone(),
                removed: t.removed.clone(),
            },
            membership: state.membership.clone(),
        };
        (STORED_TABLE_FORMAT_V1, codec::encode(&v1))
    } else {
        (STORED_TABLE_FORMAT, codec::encode(state))
    };
    Bytes::from(codec::encode(&StoredTable {
        format,
        body: Bytes::from(body),
    }))
}

/// Decodes a stored table; a bad frame or another format is an error that
/// says which.
pub fn decode_table(bytes: &[u8]) -> Result<StoredState, String> {
    let stored: StoredTable =
        codec::decode(bytes).map_err(|e| format!("stored member table: {e}"))?;
    match stored.format {
        STORED_TABLE_FORMAT_V1 => {
            let v1: StoredStateV1 =
                codec::decode(&stored.body).map_err(|e| format!("stored member table: {e}"))?;
            Ok(StoredState {
                table: MemberTable {
                    initialized: v1.table.initialized,
                    cluster_id: v1.table.cluster_id,
                    members: v1.table.members,
                    removed: v1.table.removed,
                    shard_map: None,
                },
                membership: v1.membership,
            })
        }
        STORED_TABLE_FORMAT => {
            codec::decode(&stored.body).map_err(|e| format!("stored member table: {e}"))
        }
        other => Err(format!(
            "stored member table has format {other}, this build reads formats \
             {STORED_TABLE_FORMAT_V1}..={STORED_TABLE_FORMAT} (written by a newer ha-node?)"
        )),
    }
}

/// Makes `recovered` (what the log store holds) start at `base`, the state
/// the application resumes from ([`ClusterMachine::resume_point`]), when
/// the store's log does not reach it on its own: the log was purged behind
/// a locally built snapshot (the store records only installed snapshots),
/// or a snapshot newer than the protocol's was installed. Entries at or
/// below `base` are dropped (the state covers them); the protocol re-learns
/// anything missing after it from the leader. Otherwise `recovered` is left
/// as it is (its entries stay available to lagging members).
pub fn resume_from(recovered: &mut ha_core::consensus::Recovered, base: &SnapshotMeta) {
    let snap = recovered
        .snapshot
        .as_ref()
        .map_or(LogIndex(0), |s| s.last_log_id.index);
    let at = base.last_log_id.index;
    if at <= snap {
        return;
    }
    let first = recovered.entries.iter().map(|e| e.index()).min();
    let last = recovered.entries.iter().map(|e| e.index()).max();
    let reaches = first.is_some_and(|f| f <= snap.next()) && last.is_some_and(|l| l >= at);
    if reaches {
        return;
    }
    recovered.entries.retain(|e| e.index() > at);
    recovered.snapshot = Some(base.clone());
}

/// One member of the cluster, as the replicated table records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Name (empty until a member added by URL publishes itself).
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (empty until the member publishes them).
    pub client_urls: Vec<String>,
    /// Whether it is a non-voting learner.
    pub is_learner: bool,
}

impl Member {
    fn check(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("member id 0 is reserved".into());
        }
        if self.name.len() > MAX_MEMBER_NAME_BYTES {
            return Err(format!(
                "member name longer than {MAX_MEMBER_NAME_BYTES} bytes"
            ));
        }
        for list in [&self.peer_urls, &self.client_urls] {
            if list.len() > MAX_MEMBER_URLS {
                return Err(format!("more than {MAX_MEMBER_URLS} URLs"));
            }
            if list.iter().any(|u| u.len() > MAX_MEMBER_URL_BYTES) {
                return Err(format!("URL longer than {MAX_MEMBER_URL_BYTES} bytes"));
            }
        }
        Ok(())
    }
}

/// The replicated member table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTable {
    /// Whether the founding [`MetaCommand::Bootstrap`] has been applied.
    pub initialized: bool,
    /// The cluster's id (0 before bootstrap).
    pub cluster_id: u64,
    /// Members by id.
    pub members: BTreeMap<u64, Member>,
    /// Tombstones: ids of removed members, with the log index of the
    /// removal. Never admitted again (bounded by [`MAX_TOMBSTONES`]).
    pub removed: BTreeMap<u64, u64>,
    /// The replicated shard map of a sharded cluster (`--shards N > 1`):
    /// set once by [`MetaCommand::ShardInit`], then changed only by
    /// [`MetaCommand::ShardStep`]s. `None` with one shard (and in a sharded
    /// cluster until the first controller proposes it).
    #[serde(with = "shard_map_codec")]
    pub shard_map: Option<Arc<ha_shard::ShardMap>>,
}

/// The shard map inside the table is stored in its own validated,
/// versioned codec ([`ha_shard::ShardMap::encode`]).
mod shard_map_codec {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &Option<Arc<ha_shard::ShardMap>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.as_ref().map(|m| m.encode()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<ha_shard::ShardMap>>, D::Error> {
        let bytes: Option<Vec<u8>> = Option::deserialize(d)?;
        bytes
            .map(|b| {
                ha_shard::ShardMap::decode(&b)
                    .map(Arc::new)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

impl MemberTable {
    /// Members in id order.
    pub fn list(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Whether `id` belonged to a member that was removed.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains_key(&id)
    }

    /// The member advertising one of `peer_urls`, if any.
    pub fn by_peer_urls(&self, peer_urls: &[String]) -> Option<&Member> {
        self.members
            .values()
            .find(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)))
    }

    fn tombstone(&mut self, id: u64, index: u64) {
        self.removed.insert(id, index);
        while self.removed.len() > MAX_TOMBSTONES {
            let oldest = self
                .removed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| *id);
            match oldest {
                Some(old) => self.removed.remove(&old),
                None => break,
            };
        }
    }

    fn check_new_member(&self, m: &Member) -> Result<(), String> {
        m.check()?;
        if self.members.contains_key(&m.id) {
            return Err(format!("member {:x} already exists", m.id));
        }
        if self.is_removed(m.id) {
            return Err(format!(
                "member id {:x} was removed from this cluster and is never admitted again",
                m.id
            ));
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(format!("the cluster already has {MAX_MEMBERS} members"));
        }
        if let Some(u) = m
            .peer_urls
            .iter()
            .find(|u| self.members.values().any(|o| o.peer_urls.contains(u)))
        {
            return Err(format!("peer URL {u} is already used by a member"));
        }
        Ok(())
    }
}

/// A cluster-metadata command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Founds the table (proposed by the first leader of a new cluster);
    /// ignored once the table is initialized.
    Bootstrap {
        /// Cluster id.
        cluster_id: u64,
        /// Founding members.
        members: Vec<Member>,
    },
    /// Adds a member with the id it carries (before the consensus
    /// membership change). Written by builds before fresh ids; still
    /// applied (refused for a removed id) so that such logs replay alike.
    AddMember(Member),
    /// Removes a member (after the consensus membership change).
    RemoveMember {
        /// Its id.
        id: u64,
    },
    /// Marks a learner as voter (after the consensus promotion).
    PromoteMember {
        /// Its id.
        id: u64,
    },
    /// A member announces its name and client URLs.
    Publish {
        /// Its id.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs.
        client_urls: Vec<String>,
    },
    /// Adds a member (before the consensus membership change) under a
    /// fresh id the table assigns (see the [module docs](self)); answered
    /// with [`MetaResponse::Added`].
    AddNewMember {
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Whether it joins as a non-voting learner.
        is_learner: bool,
    },
    /// Creates the replicated shard map (its [`ha_shard::ShardMap::encode`]
    /// bytes) if the table has none; applied again with any map it is a
    /// no-op (the first one stays).
    ShardInit {
        /// The encoded map.
        map: Vec<u8>,
    },
    /// Records a placement step ([`ha_shard::Step::encode`]) the
    /// controller carried out on the shard's group. A stale or invalid step
    /// is refused and changes nothing.
    ShardStep {
        /// The encoded step.
        step: Vec<u8>,
    },
}

impl MetaCommand {
    /// The entry payload: [`TAG_META`] then the codec frame.
    pub fn encode_entry(&self) -> Bytes {
        let mut out = vec![TAG_META];
        out.extend_from_slice(&codec::encode(self));
        out.into()
    }
}

/// An application command as an entry payload: [`TAG_APP`] then the bytes.
pub fn app_entry(cmd: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(cmd.len() + 1);
    out.push(TAG_APP);
    out.extend_from_slice(cmd);
    out.into()
}

/// The answer to a [`MetaCommand`] (codec-encoded response bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied; the table after it.
    Ok(Vec<Member>),
    /// Refused; nothing changed.
    Refused(String),
    /// [`MetaCommand::AddNewMember`] applied: the new member (with its
    /// id) and the table after it.
    Added {
        /// The new member.
        member: Member,
        /// All members.
        members: Vec<Member>,
    },
}

/// The node's state machine: the member table around the application `S`.
pub struct ClusterMachine<S> {
    inner: S,
    table: MemberTable,
    /// The consensus configuration as of `last_applied`.
    membership: Membership,
    last_applied: LogId,
    view: Arc<watch::Sender<Arc<MemberTable>>>,
    /// Whether the application stores the table as its sidecar.
    keeps_table: bool,
    /// Whether the stored table belongs to the application's applied index
    /// (false while a table is rebuilt by replay; see the module docs).
    table_stored: bool,
}

impl<S: StateMachine> ClusterMachine<S> {
    /// Wraps `inner`, loading the member table `inner` stored with its
    /// applied state (see the [module docs](self)); table changes are
    /// published on `view`. A stored table that does not decode, or of
    /// another [`STORED_TABLE_FORMAT`], is an error.
    pub fn new(
        inner: S,
        view: Arc<watch::Sender<Arc<MemberTable>>>,
    ) -> Result<Self, StateMachineError> {
        let keeps_table = inner.keeps_sidecar();
        let applied = inner.last_applied();
        let (stored, last_applied, table_stored) = match inner.sidecar().filter(|_| keeps_table) {
            Some(blob) => (
                decode_table(&blob).map_err(StateMachineError::Storage)?,
                applied,
                true,
            ),
            // Nothing applied yet: nothing to rebuild; the (empty) table is
            // stored with the first apply.
            None if applied == LogId::default() => (StoredState::default(), applied, false),
            // Application state without a table: rebuild it by replay.
            None => (StoredState::default(), LogId::default(), false),
        };
        let StoredState { table, membership } = stored;
        view.send_replace(Arc::new(table.clone()));
        Ok(Self {
            inner,
            table,
            membership,
            last_applied,
            view,
            keeps_table,
            table_stored,
        })
    }

    /// The application.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the application.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The member table.
    pub fn table(&self) -> &MemberTable {
        &self.table
    }

    fn publish(&self) {
        self.view.send_replace(Arc::new(self.table.clone()));
    }

    /// Where the node resumes after a restart: the applied index the
    /// stored table belongs to, with the configuration as of it (`None`
    /// while the table is rebuilt by replay or never stored). See
    /// [`resume_from`].
    pub fn resume_point(&self) -> Option<SnapshotMeta> {
        (self.keeps_table && self.table_stored && self.last_applied != LogId::default()).then(
            || SnapshotMeta {
                last_log_id: self.last_applied,
                membership: self.membership.clone(),
            },
        )
    }

    fn stored_state(&self) -> StoredState {
        StoredState {
            table: self.table.clone(),
            membership: self.membership.clone(),
        }
    }

    /// Stages the table to be stored with the application's next apply.
    fn stage_table(&mut self) -> Result<(), StateMachineError> {
        self.inner
            .stage_sidecar(encode_table(&self.stored_state()))?;
        self.table_stored = true;
        Ok(())
    }

    fn apply_meta(&mut self, bytes: &[u8], index: u64) -> MetaResponse {
        let cmd: MetaCommand = match codec::decode(bytes) {
            Ok(c) => c,
            Err(e) => return MetaResponse::Refused(format!("undecodable meta command: {e}")),
        };
        let t = &mut self.table;
        if !t.initialized && !matches!(cmd, MetaCommand::Bootstrap { .. }) {
            return MetaResponse::Refused(
                "the member table is not bootstrapped yet; retry shortly".into(),
            );
        }
        let mut added: Option<Member> = None;
        let result: Result<(), String> = match cmd {
            MetaCommand::Bootstrap {
                cluster_id,
                members,
            } => {
                if t.initialized {
                    Ok(())
                } else if members.is_empty() || members.len() > MAX_MEMBERS {
                    Err(format!("bootstrap needs 1..={MAX_MEMBERS} members"))
                } else if let Some(e) = members.iter().find_map(|m| m.check().err()) {
                    Err(e)
                } else {
                    t.initialized = true;
                    t.cluster_id = cluster_id;
                    t.members = members.into_iter().map(|m| (m.id, m)).collect();
                    Ok(())
                }
            }
            MetaCommand::AddMember(m) => t.check_new_member(&m).map(|()| {
                t.members.insert(m.id, m);
            }),
            MetaCommand::AddNewMember {
                peer_urls,
                is_learner,
            } => {
                let cluster_id = t.cluster_id;
                let fresh = (0..MAX_FRESH_ID_ATTEMPTS)
                    .map(|attempt| {
                        crate::ids::fresh_member_id(cluster_id, &peer_urls, index, attempt).0
                    })
                    .find(|id| !t.members.contains_key(id) && !t.is_removed(*id));
                match fresh {
                    None => Err(format!(
                        "no unused member id after {MAX_FRESH_ID_ATTEMPTS} attempts"
                    )),
                    Some(id) => {
                        let m = Member {
                            id,
                            name: String::new(),
                            peer_urls,
                            client_urls: Vec::new(),
                            is_learner,
                        };
                        t.check_new_member(&m).map(|()| {
                            t.members.insert(id, m.clone());
                            added = Some(m);
                        })
                    }
                }
            }
            MetaCommand::RemoveMember { id } => match t.members.remove(&id) {
                Some(_) => {
                    t.tombstone(id, index);
                    Ok(())
                }
                None => Err(format!("member {id:x} not found")),
            },
            MetaCommand::PromoteMember { id } => match t.members.get_mut(&id) {
                Some(m) => {
                    m.is_learner = false;
                    Ok(())
                }
                None => Err(format!("member {id:x} not found")),
            },
            MetaCommand::Publish {
                id,
                name,
                client_urls,
            } => match t.members.get(&id) {
                Some(m) => {
                    let updated = Member {
                        name,
                        client_urls,
                        ..m.clone()
                    };
                    match updated.check() {
                        Ok(()) => {
                            t.members.insert(id, updated);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Err(format!("member {id:x} not found")),
            },
            MetaCommand::ShardInit { map } => match &t.shard_map {
                Some(_) => Ok(()),
                None => ha_shard::ShardMap::decode(&map)
                    .map(|m| t.shard_map = Some(Arc::new(m)))
                    .map_err(|e| format!("shard map: {e}")),
            },
            MetaCommand::ShardStep { step } => {
                match (&t.shard_map, ha_shard::Step::decode(&step)) {
                    (None, _) => Err("no shard map yet".into()),
                    (_, Err(e)) => Err(format!("shard step: {e}")),
                    (Some(current), Ok(step)) => {
                        let mut next = (**current).clone();
                        next.apply(&step)
                            .map(|_| t.shard_map = Some(Arc::new(next)))
                            .map_err(|e| format!("shard step {step:?}: {e}"))
                    }
                }
            }
        };
        match (result, added) {
            (Ok(()), Some(member)) => {
                self.publish();
                MetaResponse::Added {
                    member,
                    members: self.table.list(),
                }
            }
            (Ok(()), None) => {
                self.publish();
                MetaResponse::Ok(self.table.list())
            }
            (Err(e), _) => MetaResponse::Refused(e),
        }
    }
}

impl<S: StateMachine> StateMachine for ClusterMachine<S> {
    fn apply(&mut self, log_id: LogId, entry: Applied<'_>) -> Result<Bytes, StateMachineError> {
        if log_id.index <= self.last_applied.index {
            return Ok(Bytes::new());
        }
        // Whether the application applies this entry (it skips what it
        // already has: during a rebuild by replay, or after it installed a
        // snapshot newer than the protocol's).
        let inner_applies = log_id.index > self.inner.last_applied().index;
        if inner_applies && self.keeps_table && !self.table_stored {
            // A table rebuilt by replay has caught up with the application:
            // store it with this apply.
            self.stage_table()?;
        }
        let out = match entry {
            Applied::Command(bytes) => match bytes.split_first() {
                Some((&TAG_META, rest)) => {
                    let resp = self.apply_meta(rest, log_id.index.0);
                    if inner_applies
                        && self.keeps_table
                        && !matches!(resp, MetaResponse::Refused(_))
                    {
                        self.stage_table()?;
                    }
                    self.inner.apply(log_id, Applied::Blank)?;
                    Bytes::from(codec::encode(&resp))
                }
                Some((&TAG_APP, rest)) => self.inner.apply(log_id, Applied::Command(rest))?,
                _ => self.inner.apply(log_id, Applied::Command(bytes))?,
            },
            Applied::Membership(m) => {
                // Stored with the table, so a restart knows the
                // configuration at the applied index.
                self.membership = m.clone();
                if inner_applies && self.keeps_table {
                    self.stage_table()?;
                }
                self.inner.apply(log_id, Applied::Membership(m))?
            }
            Applied::Blank => self.inner.apply(log_id, Applied::Blank)?,
        };
        self.last_applied = log_id;
        Ok(out)
    }

    fn flush(&mut self) -> Result<(), StateMachineError> {
        self.inner.flush()
    }

    fn last_applied(&self) -> LogId {
        self.last_applied
    }

    /// Refused while the table is not stored with the application's state
    /// (an application without sidecars, or a rebuild by replay that has
    /// not caught up): a snapshot lets the log be purged, and the table
    /// could then not be rebuilt after a restart.
    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        if !self.keeps_table || !self.table_stored {
            return Err(StateMachineError::Storage(
                "the member table is not stored with the application state yet; \
                 no snapshot (the log is kept)"
                    .into(),
            ));
        }
        let inner = self.inner.snapshot()?;
        if inner.meta().last_log_id != self.last_applied {
            return Err(StateMachineError::Storage(format!(
                "application snapshot covers {:?}, member table {:?}",
                inner.meta().last_log_id,
                self.last_applied
            )));
        }
        let header = encode_table(&self.stored_state());
        Ok(Box::new(WrappedSnapshot {
            meta: inner.meta().clone(),
            header: Some(header),
            inner,
        }))
    }

    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        let first = chunks
            .next_chunk()?
            .ok_or_else(|| StateMachineError::CorruptSnapshot("empty snapshot".into()))?;
        // Checked before the application's state is touched.
        let stored = decode_table(&first).map_err(StateMachineError::CorruptSnapshot)?;
        let installed = StoredState {
            table: stored.table,
            // The snapshot's meta is authoritative for the configuration.
            membership: meta.membership.clone(),
        };
        if self.keeps_table {
            self.inner.stage_sidecar(encode_table(&installed))?;
        }
        if let Err(e) = self.inner.install_snapshot(meta, chunks) {
            if self.keeps_table && self.table_stored {
                // Keep the stored table the application's state has.
                self.inner
                    .stage_sidecar(encode_table(&self.stored_state()))?;
            }
            return Err(e);
        }
        self.table = installed.table;
        self.membership = installed.membership;
        self.last_applied = meta.last_log_id;
        self.table_stored = self.keeps_table;
        self.publish();
        Ok(())
    }
}

struct WrappedSnapshot {
    meta: SnapshotMeta,
    header: Option<Bytes>,
    inner: Box<dyn SnapshotSource>,
}

impl ChunkSource for WrappedSnapshot {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        match self.header.take() {
            Some(h) => Ok(Some(h)),
            None => self.inner.next_chunk(),
        }
    }
}

impl SnapshotSource for WrappedSnapshot {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::kv::{KvCommand, KvResponse, MemKv};

    fn machine() -> ClusterMachine<MemKv> {
        let (tx, _rx) = watch::channel(Arc::new(MemberTable::default()));
        ClusterMachine::new(MemKv::default(), Arc::new(tx)).unwrap()
    }

    fn member(id: u64, name: &str, url: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            is_learner: false,
        }
    }

    fn meta(m: &mut ClusterMachine<MemKv>, index: u64, cmd: MetaCommand) -> MetaResponse {
        let out = m
            .apply(LogId::new(1, index), Applied::Command(&cmd.encode_entry()))
            .unwrap();
        codec::decode(&out).unwrap()
    }

    /// Founds cluster 9 with `members`.
    fn bootstrap(members: Vec<Member>) -> MetaCommand {
        MetaCommand::Bootstrap {
            cluster_id: 9,
            members,
        }
    }

    /// Founds cluster 9 with the one member 1 (`a`).
    fn bootstrap_one() -> MetaCommand {
        bootstrap(vec![member(1, "a", "https://a:1")])
    }

    /// A machine that applied [`bootstrap`] of `members` at index 1.
    fn bootstrapped_with(members: Vec<Member>) -> ClusterMachine<MemKv> {
        let mut m = machine();
        meta(&mut m, 1, bootstrap(members));
        m
    }

    /// A machine that applied [`bootstrap_one`] at index 1.
    fn bootstrapped() -> ClusterMachine<MemKv> {
        bootstrapped_with(vec![member(1, "a", "https://a:1")])
    }

    fn put_entry(k: &str) -> Bytes {
        app_entry(
            &KvCommand::Put {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: "v".into(),
            }
            .encode(),
        )
    }

    #[test]
    fn app_and_meta_commands_share_the_log() {
        let mut m = machine();
        let boot = bootstrap_one();
        assert!(matches!(meta(&mut m, 1, boot.clone()), MetaResponse::Ok(v) if v.len() == 1));
        let out = m
            .apply(LogId::new(1, 2), Applied::Command(&put_entry("k")))
            .unwrap();
        assert_eq!(
            KvResponse::decode(&out).unwrap(),
            KvResponse::Written { prev: None }
        );
        assert_eq!(m.inner().last_applied(), LogId::new(1, 2));
        // A second bootstrap changes nothing.
        meta(
            &mut m,
            3,
            MetaCommand::Bootstrap {
                cluster_id: 10,
                members: vec![member(2, "b", "https://b:1")],
            },
        );
        assert_eq!(m.table().cluster_id, 9);
        assert_eq!(m.table().members.len(), 1);
        // Replay below the applied index is a no-op.
        let out = m
            .apply(LogId::new(1, 1), Applied::Command(&boot.encode_entry()))
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn changes_before_bootstrap_are_refused() {
        let mut m = machine();
        assert!(matches!(
            meta(&mut m, 1, MetaCommand::AddMember(member(2, "x", "https://x:1"))),
            MetaResponse::Refused(e) if e.contains("not bootstrapped")
        ));
        assert!(!m.table().initialized);
        assert!(m.table().members.is_empty());
    }

    #[test]
    fn bad_meta_commands_change_nothing() {
        let mut m = bootstrapped();
        let before = m.table().clone();
        assert!(matches!(
            meta(
                &mut m,
                2,
                MetaCommand::AddMember(member(1, "x", "https://x:1"))
            ),
            MetaResponse::Refused(_)
        ));
        assert!(matches!(
            meta(&mut m, 3, MetaCommand::AddMember(member(2, "x", "https://a:1"))),
            MetaResponse::Refused(e) if e.contains("already used")
        ));
        assert!(matches!(
            meta(&mut m, 4, MetaCommand::RemoveMember { id: 77 }),
            MetaResponse::Refused(_)
        ));
        let garbage = [TAG_META, 1, 2, 3];
        let out = m
            .apply(LogId::new(1, 5), Applied::Command(&garbage))
            .unwrap();
        assert!(matches!(
            codec::decode::<MetaResponse>(&out).unwrap(),
            MetaResponse::Refused(_)
        ));
        assert_eq!(m.table(), &before);
        assert_eq!(m.last_applied(), LogId::new(1, 5));
    }

    #[test]
    fn add_before_bootstrap_is_refused_and_bootstrap_still_founds_the_table() {
        let mut m = machine();
        assert!(matches!(
            meta(&mut m, 1, MetaCommand::AddMember(member(2, "", "https://b:1"))),
            MetaResponse::Refused(e) if e.contains("not bootstrapped")
        ));
        assert_eq!(m.table(), &MemberTable::default());
        let boot = bootstrap_one();
        assert!(matches!(meta(&mut m, 2, boot), MetaResponse::Ok(v) if v.len() == 1));
        assert!(matches!(
            meta(&mut m, 3, MetaCommand::AddMember(member(2, "", "https://b:1"))),
            MetaResponse::Ok(v) if v.len() == 2
        ));
    }

    fn add_new(m: &mut ClusterMachine<MemKv>, index: u64, url: &str) -> MetaResponse {
        meta(
            m,
            index,
            MetaCommand::AddNewMember {
                peer_urls: vec![url.into()],
                is_learner: true,
            },
        )
    }

    #[test]
    fn added_members_get_fresh_ids_and_removed_ids_are_never_admitted_again() {
        let founder = member(crate::ids::member_id("t", "a").0, "a", "https://a:1");
        let mut m = bootstrapped_with(vec![founder.clone()]);
        let MetaResponse::Added {
            member: first,
            members,
        } = add_new(&mut m, 2, "https://b:1")
        else {
            panic!("add refused")
        };
        assert_eq!(members.len(), 2);
        assert_eq!(
            first.id,
            crate::ids::fresh_member_id(9, &["https://b:1".into()], 2, 0).0,
            "assigned from the cluster id, the peer URLs and the entry's index"
        );
        assert!(first.is_learner && first.name.is_empty());

        // Remove it: its id becomes a tombstone.
        assert!(matches!(
            meta(&mut m, 3, MetaCommand::RemoveMember { id: first.id }),
            MetaResponse::Ok(v) if v.len() == 1
        ));
        assert!(m.table().is_removed(first.id));
        // The same peer URL added again gets another id.
        let MetaResponse::Added { member: second, .. } = add_new(&mut m, 4, "https://b:1") else {
            panic!("re-add refused")
        };
        assert_ne!(second.id, first.id);
        // A (legacy) add naming the removed id is refused and changes nothing.
        let before = m.table().clone();
        assert!(matches!(
            meta(&mut m, 5, MetaCommand::AddMember(member(first.id, "", "https://c:1"))),
            MetaResponse::Refused(e) if e.contains("never admitted again")
        ));
        assert_eq!(m.table(), &before);
        // A removed founding id is a tombstone too.
        meta(&mut m, 6, MetaCommand::RemoveMember { id: founder.id });
        assert!(m.table().is_removed(founder.id));
        assert!(matches!(
            meta(&mut m, 7, MetaCommand::AddMember(founder.clone())),
            MetaResponse::Refused(_)
        ));
    }

    #[test]
    fn fresh_id_skips_current_and_removed_ids() {
        // Make the first candidate id of the add at index 3 a tombstone and
        // the second one a current member: the add must take the third.
        let url = "https://n:1".to_string();
        let cand =
            |attempt| crate::ids::fresh_member_id(9, std::slice::from_ref(&url), 3, attempt).0;
        let mut m = bootstrapped_with(vec![
            member(cand(0), "x", "https://x:1"),
            member(cand(1), "y", "https://y:1"),
        ]);
        meta(&mut m, 2, MetaCommand::RemoveMember { id: cand(0) });
        let MetaResponse::Added { member: added, .. } = add_new(&mut m, 3, &url) else {
            panic!("add refused")
        };
        assert_eq!(added.id, cand(2));
    }

    #[test]
    fn tombstones_are_bounded_oldest_first() {
        let mut t = MemberTable::default();
        for i in 0..(MAX_TOMBSTONES as u64 + 3) {
            t.tombstone(i + 1, i + 10);
        }
        assert_eq!(t.removed.len(), MAX_TOMBSTONES);
        assert!(!t.is_removed(1) && !t.is_removed(3));
        assert!(t.is_removed(4) && t.is_removed(MAX_TOMBSTONES as u64 + 3));
    }

    fn rewrap(inner: MemKv) -> Result<ClusterMachine<MemKv>, StateMachineError> {
        let (tx, _rx) = watch::channel(Arc::new(MemberTable::default()));
        ClusterMachine::new(inner, Arc::new(tx))
    }

    #[test]
    fn restart_loads_the_table_stored_with_the_application() {
        let mut m = bootstrapped();
        m.apply(LogId::new(1, 2), Applied::Command(&put_entry("k")))
            .unwrap();
        add_new(&mut m, 3, "https://b:1");
        m.apply(LogId::new(1, 4), Applied::Command(&put_entry("k2")))
            .unwrap();
        let table = m.table().clone();
        assert_eq!(table.members.len(), 2);
        // The application stored the table with its state; a machine over
        // it resumes at its applied index, table included, without replay.
        let back = rewrap(m.into_inner()).unwrap();
        assert_eq!(back.table(), &table);
        assert_eq!(back.last_applied(), LogId::new(1, 4));
        let mut back = back;
        assert!(
            back.snapshot().is_ok(),
            "the table is stored: snapshots allowed"
        );
    }

    #[test]
    fn restart_resumes_from_the_stored_state_when_the_log_does_not_reach_it() {
        use ha_core::consensus::Recovered;
        use ha_core::types::{Entry, EntryPayload};
        let entries = |r: std::ops::RangeInclusive<u64>| -> Vec<Entry> {
            r.map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Blank,
            })
            .collect()
        };
        let voters = Membership::new([ha_core::NodeId(1), ha_core::NodeId(2)]);
        let base = SnapshotMeta {
            last_log_id: LogId::new(1, 50),
            membership: voters.clone(),
        };
        let rec = |snapshot: Option<u64>, e: Vec<Entry>| Recovered {
            hard_state: Default::default(),
            snapshot: snapshot.map(|i| SnapshotMeta {
                last_log_id: LogId::new(1, i),
                membership: Membership::default(),
            }),
            entries: e,
        };
        // Purged behind a local snapshot: 1..=40 gone, no snapshot recorded.
        let mut r = rec(None, entries(41..=60));
        resume_from(&mut r, &base);
        assert_eq!(r.snapshot, Some(base.clone()));
        assert_eq!(r.entries, entries(51..=60));
        // Everything purged.
        let mut r = rec(None, Vec::new());
        resume_from(&mut r, &base);
        assert_eq!((r.snapshot, r.entries.len()), (Some(base.clone()), 0));
        // An installed snapshot at 30 the state machine passed (it installed
        // a newer one), log ends before the state: resume from the state.
        let mut r = rec(Some(30), entries(31..=45));
        resume_from(&mut r, &base);
        assert_eq!((r.snapshot, r.entries.len()), (Some(base.clone()), 0));
        // A log that reaches the state is left whole (catch-up entries).
        for mut r in [rec(None, entries(1..=60)), rec(Some(30), entries(31..=60))] {
            let before = r.clone();
            resume_from(&mut r, &base);
            assert_eq!(r, before);
        }
        // The store's snapshot is at or past the state: nothing to do.
        let mut r = rec(Some(50), entries(51..=60));
        let before = r.clone();
        resume_from(&mut r, &base);
        assert_eq!(r, before);
    }

    #[test]
    fn a_fresh_machine_stores_its_table_with_the_first_apply() {
        let mut m = machine();
        assert!(m.snapshot().is_err(), "nothing stored yet");
        m.apply(LogId::new(1, 1), Applied::Blank).unwrap();
        assert_eq!(
            decode_table(&m.inner().sidecar().expect("stored with entry 1")).unwrap(),
            StoredState::default()
        );
        assert!(m.snapshot().is_ok());
        let back = rewrap(m.into_inner()).unwrap();
        assert_eq!(back.last_applied(), LogId::new(1, 1), "no replay needed");
    }

    #[test]
    fn the_configuration_is_stored_with_the_table() {
        let mut m = bootstrapped();
        let voters = Membership::new([ha_core::NodeId(1), ha_core::NodeId(2)]);
        m.apply(LogId::new(2, 2), Applied::Membership(&voters))
            .unwrap();
        m.apply(LogId::new(2, 3), Applied::Command(&put_entry("k")))
            .unwrap();
        let back = rewrap(m.into_inner()).unwrap();
        assert_eq!(
            back.resume_point(),
            Some(SnapshotMeta {
                last_log_id: LogId::new(2, 3),
                membership: voters,
            })
        );
        assert_eq!(machine().resume_point(), None, "nothing applied");
    }

    #[test]
    fn a_stored_table_of_another_format_is_refused() {
        let other = Bytes::from(codec::encode(&StoredTable {
            format: STORED_TABLE_FORMAT + 1,
            body: Bytes::from(codec::encode(&StoredState::default())),
        }));
        let e = decode_table(&other).unwrap_err();
        assert!(
            e.contains(&format!("format {}", STORED_TABLE_FORMAT + 1))
                && e.contains(&format!("reads formats 1..={STORED_TABLE_FORMAT}")),
            "{e}"
        );
        assert!(decode_table(b"junk").is_err());
        // At start: a clear error, not an empty table.
        let mut kv = MemKv::default();
        kv.apply(LogId::new(1, 1), Applied::Blank).unwrap();
        kv.stage_sidecar(other.clone()).unwrap();
        let e = rewrap(kv).err().expect("refused").to_string();
        assert!(e.contains("this build reads format"), "{e}");
        // In a snapshot: refused before the application's state is touched.
        let mut m = bootstrapped();
        let before = (m.table().clone(), m.inner().clone());
        let mut src = MemKv::default();
        src.apply(
            LogId::new(1, 5),
            Applied::Command(
                &KvCommand::Put {
                    key: "x".into(),
                    value: "y".into(),
                }
                .encode(),
            ),
        )
        .unwrap();
        let mut snap = src.snapshot().unwrap();
        let meta_ = snap.meta().clone();
        let mut chunks = vec![other];
        while let Some(c) = snap.next_chunk().unwrap() {
            chunks.push(c);
        }
        let e = m
            .install_snapshot(&meta_, &mut ha_core::state_machine::VecChunks::new(chunks))
            .unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
        assert_eq!((m.table().clone(), m.inner().clone()), before);
        assert_eq!(m.last_applied(), LogId::new(1, 1));
    }

    #[test]
    fn state_without_a_stored_table_is_rebuilt_by_replay_before_snapshots() {
        // An application that applied entries 1..=2 under a build that kept
        // the table only in the log.
        let boot = bootstrap_one();
        let mut kv = MemKv::default();
        kv.apply(LogId::new(1, 1), Applied::Blank).unwrap();
        kv.apply(
            LogId::new(1, 2),
            Applied::Command(
                &KvCommand::Put {
                    key: "k".into(),
                    value: "v".into(),
                }
                .encode(),
            ),
        )
        .unwrap();
        let mut m = rewrap(kv).unwrap();
        assert_eq!(m.last_applied(), LogId::default(), "replays from the start");
        assert!(!m.table().initialized);
        m.apply(LogId::new(1, 1), Applied::Command(&boot.encode_entry()))
            .unwrap();
        m.apply(LogId::new(1, 2), Applied::Command(&put_entry("k")))
            .unwrap();
        assert!(m.table().initialized, "rebuilt from the log");
        assert!(
            m.snapshot().is_err(),
            "no snapshot (no log purge) before the table is stored"
        );
        assert_eq!(m.inner().sidecar(), None);
        m.apply(LogId::new(1, 3), Applied::Command(&put_entry("k3")))
            .unwrap();
        assert_eq!(
            decode_table(&m.inner().sidecar().expect("stored"))
                .unwrap()
                .table,
            *m.table()
        );
        assert!(m.snapshot().is_ok());
        let table = m.table().clone();
        let back = rewrap(m.into_inner()).unwrap();
        assert_eq!(back.table(), &table);
        assert_eq!(back.last_applied(), LogId::new(1, 3));
    }

    #[test]
    fn snapshot_carries_table_and_application() {
        let mut m = bootstrapped();
        m.apply(LogId::new(1, 2), Applied::Command(&put_entry("k")))
            .unwrap();
        let mut snap = m.snapshot().unwrap();
        let meta_ = snap.meta().clone();
        let mut other = machine();
        other.install_snapshot(&meta_, snap.as_mut()).unwrap();
        assert_eq!(other.table(), m.table());
        assert_eq!(other.inner(), m.inner());
        assert_eq!(other.last_applied(), LogId::new(1, 2));
        // The installed table is stored with the installed state.
        assert_eq!(
            decode_table(&other.into_inner().sidecar().expect("stored"))
                .unwrap()
                .table,
            *m.table()
        );
    }

    fn founding_map() -> ha_shard::ShardMap {
        ha_shard::ShardMap::new(4, 3, &ha_ring::Cluster::uniform(4).unwrap()).unwrap()
    }

    #[test]
    fn the_shard_map_is_created_once_and_changed_only_by_valid_steps() {
        let mut m = bootstrapped();
        let map = founding_map();
        // A step before the map exists: refused.
        let step = ha_shard::Step::TransferLeader {
            shard: ha_core::GroupId(1),
            to: *map.shards()[0].voters().iter().next().unwrap(),
        };
        let refused = meta(
            &mut m,
            2,
            MetaCommand::ShardStep {
                step: step.encode(),
            },
        );
        assert!(matches!(refused, MetaResponse::Refused(e) if e.contains("no shard map")));
        assert_eq!(m.table().shard_map, None);
        // Bad map bytes: refused, nothing set.
        let bad = meta(
            &mut m,
            3,
            MetaCommand::ShardInit {
                map: b"junk".to_vec(),
            },
        );
        assert!(matches!(bad, MetaResponse::Refused(_)), "{bad:?}");
        assert_eq!(m.table().shard_map, None);
        assert!(matches!(
            meta(&mut m, 4, MetaCommand::ShardInit { map: map.encode() }),
            MetaResponse::Ok(_)
        ));
        assert_eq!(m.table().shard_map.as_deref(), Some(&map));
        // A second init (another map) changes nothing.
        let other = ha_shard::ShardMap::new(8, 3, &ha_ring::Cluster::uniform(4).unwrap()).unwrap();
        meta(
            &mut m,
            5,
            MetaCommand::ShardInit {
                map: other.encode(),
            },
        );
        assert_eq!(m.table().shard_map.as_deref(), Some(&map));
        // A valid step applies; a stale one (old epoch, effect absent) is
        // refused and changes nothing.
        let s1 = &map.shards()[0];
        let outsider = (1..=4u64)
            .map(ha_core::NodeId)
            .find(|n| !s1.has_replica(*n))
            .unwrap();
        let add = ha_shard::Step::AddLearner {
            shard: s1.id(),
            member: outsider,
            epoch: s1.epoch(),
        };
        assert!(matches!(
            meta(&mut m, 6, MetaCommand::ShardStep { step: add.encode() }),
            MetaResponse::Ok(_)
        ));
        let after = m.table().shard_map.clone().unwrap();
        assert!(after.shard(s1.id()).unwrap().learners().contains(&outsider));
        let victim = *s1.voters().iter().next().unwrap();
        let stale = ha_shard::Step::RemoveReplica {
            shard: s1.id(),
            member: victim,
            epoch: s1.epoch(),
        };
        let r = meta(
            &mut m,
            7,
            MetaCommand::ShardStep {
                step: stale.encode(),
            },
        );
        assert!(matches!(r, MetaResponse::Refused(_)), "{r:?}");
        assert_eq!(m.table().shard_map, Some(after));
        let r = meta(
            &mut m,
            8,
            MetaCommand::ShardStep {
                step: vec![1, 2, 3],
            },
        );
        assert!(matches!(r, MetaResponse::Refused(_)), "{r:?}");
    }

    #[test]
    fn a_table_without_shard_map_is_stored_in_format_1_and_with_one_in_format_2() {
        let mut state = StoredState {
            table: bootstrapped().table().clone(),
            membership: Membership::new([ha_core::NodeId(1)]),
        };
        let bytes = encode_table(&state);
        assert_eq!(codec::decode::<StoredTable>(&bytes).unwrap().format, 1);
        assert_eq!(decode_table(&bytes).unwrap(), state);
        state.table.shard_map = Some(Arc::new(founding_map()));
        let bytes = encode_table(&state);
        assert_eq!(codec::decode::<StoredTable>(&bytes).unwrap().format, 2);
        assert_eq!(decode_table(&bytes).unwrap(), state);
    }
}
