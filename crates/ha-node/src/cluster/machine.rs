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
//! ## Restart
//!
//! The machine's own applied index starts at 0 on every start: the log is
//! replayed through it, rebuilding the member table; the application skips
//! what it already applied (the `StateMachine` idempotence rule) or rebuilds
//! itself if it lives in memory. Hence the node never purges its log
//! (`ReplicaConfig::snapshot_every_entries` stays `None`).
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
//! ## Snapshot format
//!
//! The first chunk is a codec frame of [`MetaSnapshot`] (the member table);
//! the application's chunks follow unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ha_core::codec;
use ha_core::state_machine::{
    Applied, ChunkSource, SnapshotSource, StateMachine, StateMachineError,
};
use ha_core::{LogId, SnapshotMeta};
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

/// First snapshot chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaSnapshot {
    /// The member table at the snapshot.
    pub table: MemberTable,
}

/// The node's state machine: the member table around the application `S`.
pub struct ClusterMachine<S> {
    inner: S,
    table: MemberTable,
    last_applied: LogId,
    view: Arc<watch::Sender<Arc<MemberTable>>>,
}

impl<S: StateMachine> ClusterMachine<S> {
    /// Wraps `inner`; table changes are published on `view`.
    pub fn new(inner: S, view: Arc<watch::Sender<Arc<MemberTable>>>) -> Self {
        view.send_replace(Arc::new(MemberTable::default()));
        Self {
            inner,
            table: MemberTable::default(),
            last_applied: LogId::default(),
            view,
        }
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
        let out = match entry {
            Applied::Command(bytes) => match bytes.split_first() {
                Some((&TAG_META, rest)) => {
                    let resp = self.apply_meta(rest, log_id.index.0);
                    self.inner.apply(log_id, Applied::Blank)?;
                    Bytes::from(codec::encode(&resp))
                }
                Some((&TAG_APP, rest)) => self.inner.apply(log_id, Applied::Command(rest))?,
                _ => self.inner.apply(log_id, Applied::Command(bytes))?,
            },
            other => self.inner.apply(log_id, other)?,
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

    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        let inner = self.inner.snapshot()?;
        let header = Bytes::from(codec::encode(&MetaSnapshot {
            table: self.table.clone(),
        }));
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
        let header: MetaSnapshot = codec::decode(&first)
            .map_err(|e| StateMachineError::CorruptSnapshot(format!("member table: {e}")))?;
        self.inner.install_snapshot(meta, chunks)?;
        self.table = header.table;
        self.last_applied = meta.last_log_id;
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
        ClusterMachine::new(MemKv::default(), Arc::new(tx))
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

    #[test]
    fn app_and_meta_commands_share_the_log() {
        let mut m = machine();
        let boot = MetaCommand::Bootstrap {
            cluster_id: 9,
            members: vec![member(1, "a", "https://a:1")],
        };
        assert!(matches!(meta(&mut m, 1, boot.clone()), MetaResponse::Ok(v) if v.len() == 1));
        let put = KvCommand::Put {
            key: "k".into(),
            value: "v".into(),
        };
        let out = m
            .apply(
                LogId::new(1, 2),
                Applied::Command(&app_entry(&put.encode())),
            )
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
        let mut m = machine();
        meta(
            &mut m,
            1,
            MetaCommand::Bootstrap {
                cluster_id: 9,
                members: vec![member(1, "a", "https://a:1")],
            },
        );
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
        let boot = MetaCommand::Bootstrap {
            cluster_id: 9,
            members: vec![member(1, "a", "https://a:1")],
        };
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
        let mut m = machine();
        let founder = member(crate::ids::member_id("t", "a").0, "a", "https://a:1");
        meta(
            &mut m,
            1,
            MetaCommand::Bootstrap {
                cluster_id: 9,
                members: vec![founder.clone()],
            },
        );
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
        let mut m = machine();
        // Make the first candidate id of the add at index 3 a tombstone and
        // the second one a current member: the add must take the third.
        let url = "https://n:1".to_string();
        let cand =
            |attempt| crate::ids::fresh_member_id(9, std::slice::from_ref(&url), 3, attempt).0;
        meta(
            &mut m,
            1,
            MetaCommand::Bootstrap {
                cluster_id: 9,
                members: vec![
                    member(cand(0), "x", "https://x:1"),
                    member(cand(1), "y", "https://y:1"),
                ],
            },
        );
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

    #[test]
    fn snapshot_carries_table_and_application() {
        let mut m = machine();
        meta(
            &mut m,
            1,
            MetaCommand::Bootstrap {
                cluster_id: 9,
                members: vec![member(1, "a", "https://a:1")],
            },
        );
        let put = KvCommand::Put {
            key: "k".into(),
            value: "v".into(),
        };
        m.apply(
            LogId::new(1, 2),
            Applied::Command(&app_entry(&put.encode())),
        )
        .unwrap();
        let mut snap = m.snapshot().unwrap();
        let meta_ = snap.meta().clone();
        let mut other = machine();
        other.install_snapshot(&meta_, snap.as_mut()).unwrap();
        assert_eq!(other.table(), m.table());
        assert_eq!(other.inner(), m.inner());
        assert_eq!(other.last_applied(), LogId::new(1, 2));
    }
}
