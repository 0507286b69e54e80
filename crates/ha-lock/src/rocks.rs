//! The RocksDB state store (feature `rocksdb`).
//!
//! The machine keeps its working state in memory (like etcd's in-memory
//! tree index) and makes it durable in column family `sm` of the node's one
//! RocksDB (shared with `RocksLogStore`, so one WAL and one process-wide
//! write path serve log and state). Sharing the DB, not owning a second
//! one, keeps a single WAL to fsync and one set of RocksDB background
//! threads per node.
//!
//! # Layout (column family `sm`)
//!
//! | key | value |
//! |---|---|
//! | group (u64 BE) ‖ `1` | codec frame of [`Meta`]: last applied, membership, revision, compact revision |
//! | group (u64 BE) ‖ `2` ‖ main (u64 BE) ‖ sub (u64 BE) | codec frame of a record (key + value or tombstone) |
//! | group (u64 BE) ‖ `3` ‖ lease id (u64 BE) | codec frame of a lease (TTL, remaining) |
//! | group (u64 BE) ‖ `4` | codec frame of the sidecar blob (`StateMachine::stage_sidecar`), if one was stored |
//!
//! The applies between two [`flush`](RocksState::flush)es (the replica
//! driver flushes after every apply batch) are **one** `WriteBatch`: the
//! records they added, the records compaction removed, the leases they
//! touched and the meta with the last `last_applied` (and the sidecar, when an
//! apply stored a new one) — so the durable state
//! is always the state after some whole entry, never between two, and a
//! batch of entries costs one RocksDB write, not one per entry. A staged
//! batch larger than [`MAX_STAGED_BYTES`] is written early, so memory stays
//! bounded whoever drives the machine. Recovery reads the group's meta,
//! records and leases and rebuilds the index and lease key sets, checking
//! every checksum and invariant (`StateMachineError::Storage` otherwise).

use std::sync::Arc;

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use ha_core::codec;
use ha_core::state_machine::StateMachineError;
use ha_core::storage::rocks::CF_SM;
use ha_core::types::{GroupId, LogId, Membership};

use crate::store::{Journal, LeaseRecord, Record, Rev, State};

const TAG_META: u8 = 1;
const TAG_RECORD: u8 = 2;
const TAG_LEASE: u8 = 3;
const TAG_SIDECAR: u8 = 4;

/// The durable meta of one group's state machine.
#[derive(Serialize, Deserialize)]
struct Meta {
    last_applied: LogId,
    membership: Membership,
    revision: i64,
    compact_revision: i64,
}

/// What [`RocksState::open`] recovered.
pub(crate) struct Loaded {
    pub state: State,
    pub last_applied: LogId,
    pub membership: Membership,
    pub sidecar: Option<bytes::Bytes>,
}

/// Staged writes larger than this are written at the next apply without
/// waiting for a flush.
pub const MAX_STAGED_BYTES: usize = 16 << 20;

/// A group's handle on column family `sm`.
pub(crate) struct RocksState {
    db: Arc<DB>,
    group: GroupId,
    /// Writes of the applies since the last flush, without the meta.
    staged: WriteBatch,
    /// Whether an apply happened since the last flush (the meta must be
    /// written even when no record changed: `last_applied` moved).
    dirty: bool,
    /// Set when a staged batch could not be written: its writes are lost
    /// from memory, so no later write may claim a `last_applied` past them.
    /// Every later write fails with this; reopening recovers the durable
    /// state and the log replays the rest.
    failed: Option<String>,
}

fn storage(e: impl std::fmt::Display) -> StateMachineError {
    StateMachineError::Storage(e.to_string())
}

/// Column family `sm` of `db`.
fn sm_cf(db: &DB) -> Result<&ColumnFamily, StateMachineError> {
    db.cf_handle(CF_SM)
        .ok_or_else(|| storage("sm family missing"))
}

/// The key prefix of `group`'s keys with `tag`.
fn key_prefix(group: GroupId, tag: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&group.get().to_be_bytes());
    k.push(tag);
    k
}

/// Adds `group`'s meta (`last_applied`, membership, `state`'s revisions)
/// to `wb`, in column family `cf`.
fn put_meta(
    wb: &mut WriteBatch,
    cf: &ColumnFamily,
    group: GroupId,
    state: &State,
    last_applied: LogId,
    membership: &Membership,
) {
    let meta = Meta {
        last_applied,
        membership: membership.clone(),
        revision: state.revision,
        compact_revision: state.compact_revision,
    };
    wb.put_cf(cf, key_prefix(group, TAG_META), codec::encode(&meta));
}

/// Adds `group`'s sidecar `blob` to `wb`, in column family `cf`.
fn put_sidecar(wb: &mut WriteBatch, cf: &ColumnFamily, group: GroupId, blob: &bytes::Bytes) {
    wb.put_cf(cf, key_prefix(group, TAG_SIDECAR), codec::encode(blob));
}

impl RocksState {
    fn prefix(&self, tag: u8) -> Vec<u8> {
        key_prefix(self.group, tag)
    }

    fn record_key(&self, rev: Rev) -> Vec<u8> {
        let mut k = self.prefix(TAG_RECORD);
        k.extend_from_slice(&(rev.main as u64).to_be_bytes());
        k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
        k
    }

    fn lease_key(&self, id: i64) -> Vec<u8> {
        let mut k = self.prefix(TAG_LEASE);
        k.extend_from_slice(&(id as u64).to_be_bytes());
        k
    }

    /// Opens `group`'s state in `db` (which must have the `sm` family) and
    /// loads it (empty if the group has none).
    pub fn open(db: Arc<DB>, group: GroupId) -> Result<(Self, Loaded), StateMachineError> {
        if db.cf_handle(CF_SM).is_none() {
            return Err(storage(format!("column family {CF_SM} missing")));
        }
        let me = RocksState {
            db,
            group,
            staged: WriteBatch::default(),
            dirty: false,
            failed: None,
        };
        let loaded = me.load()?;
        Ok((me, loaded))
    }

    fn scan(
        &self,
        tag: u8,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StateMachineError>,
    ) -> Result<(), StateMachineError> {
        let cf = sm_cf(&self.db)?;
        let prefix = self.prefix(tag);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(&prefix) {
                break;
            }
            f(&k[prefix.len()..], &v)?;
        }
        Ok(())
    }

    /// Whether the group has any key with `tag`.
    fn has_any(&self, tag: u8) -> Result<bool, StateMachineError> {
        let cf = sm_cf(&self.db)?;
        let prefix = self.prefix(tag);
        match self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
            .next()
        {
            Some(item) => Ok(item.map_err(storage)?.0.starts_with(&prefix)),
            None => Ok(false),
        }
    }

    fn load(&self) -> Result<Loaded, StateMachineError> {
        let cf = sm_cf(&self.db)?;
        let Some(meta_bytes) = self.db.get_cf(cf, self.prefix(TAG_META)).map_err(storage)? else {
            // Every batch writes the meta, so records without it are not
            // ours to interpret: refuse rather than mix them into a new state.
            let stray = self.has_any(TAG_RECORD)?
                || self.has_any(TAG_LEASE)?
                || self.has_any(TAG_SIDECAR)?;
            if stray {
                return Err(storage(format!(
                    "group {} has state-machine records but no meta: refusing to start from an empty state",
                    self.group
                )));
            }
            return Ok(Loaded {
                state: State::default(),
                last_applied: LogId::default(),
                membership: Membership::default(),
                sidecar: None,
            });
        };
        let meta: Meta =
            codec::decode(&meta_bytes).map_err(|e| storage(format!("sm meta: {e}")))?;
        let mut records = std::collections::BTreeMap::new();
        self.scan(TAG_RECORD, |k, v| {
            if k.len() != 16 {
                return Err(storage(format!("sm record key of {} bytes", k.len())));
            }
            let mut main = [0u8; 8];
            let mut sub = [0u8; 8];
            main.copy_from_slice(&k[..8]);
            sub.copy_from_slice(&k[8..]);
            let rev = Rev {
                main: u64::from_be_bytes(main) as i64,
                sub: u64::from_be_bytes(sub) as i64,
            };
            let rec: Record =
                codec::decode(v).map_err(|e| storage(format!("sm record {rev:?}: {e}")))?;
            records.insert(rev, rec);
            Ok(())
        })?;
        let mut leases = Vec::new();
        self.scan(TAG_LEASE, |k, v| {
            let l: LeaseRecord = codec::decode(v).map_err(|e| storage(format!("sm lease: {e}")))?;
            if k.len() != 8 || k != (l.id as u64).to_be_bytes() {
                return Err(storage(format!(
                    "sm lease {} stored under a wrong key",
                    l.id
                )));
            }
            leases.push(l);
            Ok(())
        })?;
        let state = State::rebuild(meta.revision, meta.compact_revision, records, leases)
            .map_err(|e| storage(format!("sm state: {e}")))?;
        let sidecar = match self
            .db
            .get_cf(cf, self.prefix(TAG_SIDECAR))
            .map_err(storage)?
        {
            Some(v) => Some(
                codec::decode::<bytes::Bytes>(&v)
                    .map_err(|e| storage(format!("sm sidecar: {e}")))?,
            ),
            None => None,
        };
        Ok(Loaded {
            state,
            last_applied: meta.last_applied,
            membership: meta.membership,
            sidecar,
        })
    }

    /// Stages the changes of one apply (from `journal`); they become
    /// durable, with the meta naming `last_applied`, at the next
    /// [`flush`](Self::flush) — or at once when the staged batch has grown
    /// past [`MAX_STAGED_BYTES`].
    pub fn stage_apply(
        &mut self,
        state: &State,
        journal: &Journal,
        last_applied: LogId,
        membership: &Membership,
        sidecar: Option<&bytes::Bytes>,
    ) -> Result<(), StateMachineError> {
        self.check_usable()?;
        let cf = sm_cf(&self.db)?;
        for rev in &journal.removed_records {
            self.staged.delete_cf(cf, self.record_key(*rev));
        }
        for rev in &journal.put_records {
            if let Some(rec) = state.records.get(rev) {
                self.staged
                    .put_cf(cf, self.record_key(*rev), codec::encode(rec));
            }
        }
        for id in &journal.leases {
            match state.leases.get(id) {
                Some(l) => self.staged.put_cf(
                    cf,
                    self.lease_key(*id),
                    codec::encode(&LeaseRecord {
                        id: *id,
                        ttl_ms: l.ttl_ms,
                        remaining_ms: l.remaining_ms,
                    }),
                ),
                None => self.staged.delete_cf(cf, self.lease_key(*id)),
            }
        }
        if let Some(blob) = sidecar {
            put_sidecar(&mut self.staged, cf, self.group, blob);
        }
        self.dirty = true;
        if self.staged.size_in_bytes() > MAX_STAGED_BYTES {
            self.flush(state, last_applied, membership)?;
        }
        Ok(())
    }

    /// Writes the staged applies and the meta (`last_applied`, membership,
    /// revisions) as one batch, WAL on (a process crash loses nothing
    /// flushed). Nothing to do when nothing was applied since the last
    /// flush. A failed write leaves the store refusing every later write
    /// (the staged writes are gone; reopening recovers the durable state
    /// and the log replays the rest).
    pub fn flush(
        &mut self,
        state: &State,
        last_applied: LogId,
        membership: &Membership,
    ) -> Result<(), StateMachineError> {
        self.check_usable()?;
        if !self.dirty {
            return Ok(());
        }
        let cf = sm_cf(&self.db)?;
        put_meta(
            &mut self.staged,
            cf,
            self.group,
            state,
            last_applied,
            membership,
        );
        let wb = std::mem::take(&mut self.staged);
        self.dirty = false;
        self.db.write(wb).map_err(|e| {
            let why = format!("writing applied state failed: {e}");
            self.failed = Some(why.clone());
            storage(why)
        })
    }

    fn check_usable(&self) -> Result<(), StateMachineError> {
        match &self.failed {
            Some(why) => Err(storage(format!(
                "state store unusable after an earlier failure ({why}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    /// Replaces the group's whole state (snapshot install) and its sidecar,
    /// synced, as one batch. Staged applies are discarded: the snapshot
    /// supersedes them.
    pub fn write_all(
        &mut self,
        state: &State,
        last_applied: LogId,
        membership: &Membership,
        sidecar: Option<&bytes::Bytes>,
    ) -> Result<(), StateMachineError> {
        let cf = sm_cf(&self.db)?;
        let mut wb = WriteBatch::default();
        let from = self.prefix(0);
        let to = self.prefix(u8::MAX);
        wb.delete_range_cf(cf, from, to);
        for (rev, rec) in &state.records {
            wb.put_cf(cf, self.record_key(*rev), codec::encode(rec));
        }
        for l in state.lease_records() {
            wb.put_cf(cf, self.lease_key(l.id), codec::encode(&l));
        }
        if let Some(blob) = sidecar {
            put_sidecar(&mut wb, cf, self.group, blob);
        }
        put_meta(&mut wb, cf, self.group, state, last_applied, membership);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(storage)?;
        // The snapshot replaced everything the staged applies touched.
        self.staged = WriteBatch::default();
        self.dirty = false;
        self.failed = None;
        Ok(())
    }

    /// Makes every write so far durable across power loss.
    pub fn sync(&self) -> Result<(), StateMachineError> {
        self.db.flush_wal(true).map_err(storage)
    }
}
