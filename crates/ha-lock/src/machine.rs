//! [`LockMachine`]: the `ha_core::StateMachine` over the MVCC store.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use ha_core::codec;
use ha_core::state_machine::{
    Applied as Entry, ChunkSource, SnapshotSource, StateMachine, StateMachineError, VecChunks,
};
use ha_core::types::{LogId, Membership, SnapshotMeta};

use crate::api::{
    Applied, CampaignResponse, Event, KeyValue, LeaderKey, LeaseStatus, LeaseTimeToLiveResponse,
    Limits, LimitsError, LockError, LockResponse, RangeRequest, RangeResponse, decode_command,
    encode_applied, owner_key,
};
use crate::store::{Exec, Journal, LeaseRecord, Record, Rev, State};

/// Version of the snapshot layout (inside the codec frames).
const SNAPSHOT_FORMAT: u32 = 1;

/// Per-record bytes charged on top of key and value when cutting snapshot
/// chunks (revisions, counters, framing).
const SNAPSHOT_RECORD_OVERHEAD_BYTES: usize = 64;

/// Receives the events of every apply that produced some (watch fan-out).
pub type EventSink = Box<dyn FnMut(i64, &[Event]) + Send>;

/// Where the machine keeps its state durable.
enum Backend {
    /// Nothing durable (tests, embedding, a node that rebuilds from its log).
    Memory,
    /// Column family `sm` of a RocksDB shared with the log store.
    #[cfg(feature = "rocksdb")]
    Rocks(crate::rocks::RocksState),
}

/// The coordination state machine: MVCC key space, leases, locks and
/// elections. See the crate docs for semantics, limits and invariants.
pub struct LockMachine {
    state: State,
    limits: Limits,
    last_applied: LogId,
    membership: Membership,
    journal: Journal,
    sink: Option<EventSink>,
    backend: Backend,
    /// The sidecar ([`StateMachine::stage_sidecar`]) and whether it was
    /// staged since it was last stored.
    sidecar: Option<Bytes>,
    sidecar_dirty: bool,
}

impl std::fmt::Debug for LockMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockMachine")
            .field("revision", &self.state.revision)
            .field("compact_revision", &self.state.compact_revision)
            .field("keys", &self.state.index.len())
            .field("leases", &self.state.leases.len())
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

/// First chunk of a snapshot.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapHeader {
    pub format: u32,
    pub last_log_id: LogId,
    pub membership: Membership,
    pub revision: i64,
    pub compact_revision: i64,
    pub records: u64,
    pub leases: u64,
}

/// A later chunk of a snapshot, as written (borrowing the state).
#[derive(Serialize)]
enum SnapChunkRef<'a> {
    Records(Vec<(&'a Rev, &'a Record)>),
    Leases(Vec<LeaseRecord>),
}

/// A later chunk of a snapshot, as read.
#[derive(Deserialize)]
enum SnapChunk {
    Records(Vec<(Rev, Record)>),
    Leases(Vec<LeaseRecord>),
}

struct Snapshot {
    meta: SnapshotMeta,
    chunks: VecChunks,
}

impl ChunkSource for Snapshot {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        self.chunks.next_chunk()
    }
}

impl SnapshotSource for Snapshot {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }
}

impl LockMachine {
    /// A machine keeping its state in memory only.
    pub fn in_memory(limits: Limits) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(Self::with_parts(
            limits,
            State::default(),
            LogId::default(),
            Membership::default(),
            Backend::Memory,
            None,
        ))
    }

    fn with_parts(
        limits: Limits,
        state: State,
        last_applied: LogId,
        membership: Membership,
        backend: Backend,
        sidecar: Option<Bytes>,
    ) -> Self {
        LockMachine {
            state,
            limits,
            last_applied,
            membership,
            journal: Journal::default(),
            sink: None,
            backend,
            sidecar,
            sidecar_dirty: false,
        }
    }

    /// A machine persisting its state in column family `sm` of `db` (the
    /// node's one RocksDB, e.g. `RocksLogStore::db()`), under `group`'s key
    /// prefix, recovering whatever state `group` has there.
    ///
    /// The applies between two [`StateMachine::flush`]es are one RocksDB
    /// `WriteBatch` (the changed records, leases and `last_applied`),
    /// written with the WAL on: a process crash loses nothing flushed, and
    /// what was applied but not flushed is applied again from the log. [`StateMachine::snapshot`] fsyncs the WAL first, so
    /// the log may be purged up to a snapshot's index even across power
    /// loss.
    #[cfg(feature = "rocksdb")]
    pub fn open_rocks(
        db: std::sync::Arc<rocksdb::DB>,
        group: ha_core::types::GroupId,
        limits: Limits,
    ) -> Result<Self, StateMachineError> {
        limits
            .validate()
            .map_err(|e| StateMachineError::Storage(format!("invalid limits: {e}")))?;
        let (rocks, loaded) = crate::rocks::RocksState::open(db, group)?;
        Ok(Self::with_parts(
            limits,
            loaded.state,
            loaded.last_applied,
            loaded.membership,
            Backend::Rocks(rocks),
            loaded.sidecar,
        ))
    }

    /// The limits the machine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The revision of the last change (1 before any, as in etcd).
    pub fn current_revision(&self) -> i64 {
        self.state.revision
    }

    /// The revision history was compacted at (0 = never).
    pub fn compact_revision(&self) -> i64 {
        self.state.compact_revision
    }

    /// Range read; at `req.revision` when non-zero (errors:
    /// [`LockError::Compacted`], [`LockError::FutureRevision`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, LockError> {
        self.state
            .range_at(req, self.state.revision, i64::MAX, &self.limits)
    }

    /// Changes with revision `>= start_revision` of keys in
    /// `[key, range_end)` (etcd range conventions), oldest first, with
    /// `prev_kv` when still in history. At most `max_events`, except that a
    /// revision's events are never split (a watcher resumes at the next
    /// revision). [`LockError::Compacted`] if `start_revision <=` the
    /// compact revision.
    pub fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<Vec<Event>, LockError> {
        self.state
            .events_since(start_revision, key, range_end, max_events)
    }

    /// A lease's remaining TTL (as last replicated), granted TTL and keys.
    pub fn lease_time_to_live(&self, id: i64, with_keys: bool) -> LeaseTimeToLiveResponse {
        self.state.lease_time_to_live(id, with_keys)
    }

    /// Every lease, in id order (what a new leader's lessor starts from).
    pub fn leases(&self) -> Vec<LeaseStatus> {
        self.state.lease_list()
    }

    /// The lock's owner: the key under `name/` with the lowest create
    /// revision.
    pub fn lock_owner(&self, name: &[u8]) -> Option<KeyValue> {
        self.state.first_created(name)
    }

    /// The election's leader (lowest create revision under `name/`); its
    /// value is the key's value (read it with [`LockMachine::range`]).
    pub fn election_leader(&self, name: &[u8]) -> Option<LeaderKey> {
        self.state.first_created(name).map(|kv| LeaderKey {
            name: Bytes::copy_from_slice(name),
            key: kv.key,
            rev: kv.create_revision,
            lease: kv.lease,
        })
    }

    /// Where a lock request of `lease` on `name` stands now — the re-check
    /// a node does before telling a waiting client it holds the lock:
    /// `acquired` with the fencing token once the owner key is the oldest
    /// under `name/`; [`LockError::LeaseNotFound`] if the lease is gone
    /// (expired or revoked: its key was deleted, the lock is NOT held);
    /// [`LockError::NotLockOwner`] if the lease lives but the key was
    /// deleted (unlocked).
    pub fn lock_status(&self, name: &[u8], lease: i64) -> Result<LockResponse, LockError> {
        if !self.state.leases.contains_key(&lease) {
            return Err(LockError::LeaseNotFound { id: lease });
        }
        let key = owner_key(name, lease);
        let mine = self
            .state
            .get(&key, i64::MAX)
            .ok_or(LockError::NotLockOwner)?;
        let acquired = self.state.first_created(name).is_some_and(|o| o.key == key);
        Ok(LockResponse {
            key,
            acquired,
            token: if acquired { mine.create_revision } else { 0 },
        })
    }

    /// Where a campaign of `lease` in election `name` stands now (the same
    /// re-check as [`LockMachine::lock_status`]): `elected` once its key is
    /// the oldest under `name/`.
    pub fn campaign_status(&self, name: &[u8], lease: i64) -> Result<CampaignResponse, LockError> {
        let l = self.lock_status(name, lease)?;
        let rev = self
            .state
            .get(&l.key, i64::MAX)
            .map_or(0, |kv| kv.create_revision);
        Ok(CampaignResponse {
            leader: LeaderKey {
                name: Bytes::copy_from_slice(name),
                key: l.key,
                rev,
                lease,
            },
            elected: l.acquired,
        })
    }

    /// Installs the watch fan-out: called after every apply that produced
    /// events, with the store revision after it. Not replicated, not in
    /// snapshots; a replay below `last_applied` calls nothing.
    pub fn set_event_sink(&mut self, sink: EventSink) {
        self.sink = Some(sink);
    }

    /// Executes one command's bytes; returns the outcome and the events.
    fn execute(&mut self, index: u64, bytes: &[u8]) -> (Applied, Vec<Event>) {
        if bytes.len() > self.limits.max_request_bytes {
            let err = LockError::RequestTooLarge {
                size: bytes.len(),
                max: self.limits.max_request_bytes,
            };
            self.journal = Journal::default();
            return (
                Applied {
                    revision: self.state.revision,
                    result: Err(err),
                },
                Vec::new(),
            );
        }
        let cmd = match decode_command(bytes) {
            Ok(c) => c,
            Err(e) => {
                self.journal = Journal::default();
                return (
                    Applied {
                        revision: self.state.revision,
                        result: Err(e),
                    },
                    Vec::new(),
                );
            }
        };
        let mut exec = Exec::new(&mut self.state, &self.limits, index, &mut self.journal);
        let result = exec.run(cmd);
        let events = std::mem::take(&mut exec.events);
        (
            Applied {
                revision: self.state.revision,
                result,
            },
            events,
        )
    }

    fn persist(&mut self) -> Result<(), StateMachineError> {
        match &mut self.backend {
            Backend::Memory => {}
            #[cfg(feature = "rocksdb")]
            Backend::Rocks(r) => r.stage_apply(
                &self.state,
                &self.journal,
                self.last_applied,
                &self.membership,
                self.sidecar.as_ref().filter(|_| self.sidecar_dirty),
            )?,
        }
        self.sidecar_dirty = false;
        Ok(())
    }

    /// The snapshot chunks of the current state (deterministic: equal
    /// states give equal bytes).
    fn snapshot_chunks(&self) -> Vec<Bytes> {
        let header = SnapHeader {
            format: SNAPSHOT_FORMAT,
            last_log_id: self.last_applied,
            membership: self.membership.clone(),
            revision: self.state.revision,
            compact_revision: self.state.compact_revision,
            records: self.state.records.len() as u64,
            leases: self.state.leases.len() as u64,
        };
        let mut chunks = vec![Bytes::from(codec::encode(&header))];
        let budget = self.limits.snapshot_chunk_bytes;
        let mut batch: Vec<(&Rev, &Record)> = Vec::new();
        let mut batch_bytes = 0usize;
        for (rev, rec) in &self.state.records {
            batch_bytes += SNAPSHOT_RECORD_OVERHEAD_BYTES
                + rec.key.len() * 2
                + rec.kv.as_ref().map_or(0, |kv| kv.value.len());
            batch.push((rev, rec));
            if batch_bytes >= budget {
                chunks
                    .push(codec::encode(&SnapChunkRef::Records(std::mem::take(&mut batch))).into());
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            chunks.push(codec::encode(&SnapChunkRef::Records(batch)).into());
        }
        let per_chunk = (budget / SNAPSHOT_RECORD_OVERHEAD_BYTES).max(1);
        for leases in self.state.lease_records().chunks(per_chunk) {
            chunks.push(codec::encode(&SnapChunkRef::Leases(leases.to_vec())).into());
        }
        chunks
    }

    /// Decodes and checks a streamed snapshot into a state.
    fn read_snapshot(
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(State, SnapHeader), StateMachineError> {
        let corrupt = |e: codec::CodecError| StateMachineError::CorruptSnapshot(e.to_string());
        let first = chunks
            .next_chunk()?
            .ok_or_else(|| StateMachineError::CorruptSnapshot("empty snapshot".into()))?;
        let header: SnapHeader = codec::decode(&first).map_err(corrupt)?;
        if header.format != SNAPSHOT_FORMAT {
            return Err(StateMachineError::CorruptSnapshot(format!(
                "snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
                header.format
            )));
        }
        if header.last_log_id != meta.last_log_id {
            return Err(StateMachineError::CorruptSnapshot(format!(
                "snapshot covers {:?}, expected {:?}",
                header.last_log_id, meta.last_log_id
            )));
        }
        let mut records: BTreeMap<Rev, Record> = BTreeMap::new();
        let mut leases: Vec<LeaseRecord> = Vec::new();
        while let Some(chunk) = chunks.next_chunk()? {
            match codec::decode::<SnapChunk>(&chunk).map_err(corrupt)? {
                SnapChunk::Records(rs) => {
                    for (rev, rec) in rs {
                        if records.insert(rev, rec).is_some() {
                            return Err(StateMachineError::CorruptSnapshot(format!(
                                "record {rev:?} twice"
                            )));
                        }
                    }
                }
                SnapChunk::Leases(ls) => leases.extend(ls),
            }
            if records.len() as u64 > header.records || leases.len() as u64 > header.leases {
                return Err(StateMachineError::CorruptSnapshot(
                    "snapshot carries more than its header promised".into(),
                ));
            }
        }
        if records.len() as u64 != header.records || leases.len() as u64 != header.leases {
            return Err(StateMachineError::CorruptSnapshot(format!(
                "snapshot promised {} records and {} leases, carried {} and {}",
                header.records,
                header.leases,
                records.len(),
                leases.len()
            )));
        }
        let state = State::rebuild(header.revision, header.compact_revision, records, leases)
            .map_err(StateMachineError::CorruptSnapshot)?;
        Ok((state, header))
    }
}

impl StateMachine for LockMachine {
    fn apply(&mut self, log_id: LogId, entry: Entry<'_>) -> Result<Bytes, StateMachineError> {
        if log_id.index <= self.last_applied.index {
            return Ok(Bytes::new());
        }
        let (out, events) = match entry {
            Entry::Blank => {
                self.journal = Journal::default();
                (Bytes::new(), Vec::new())
            }
            Entry::Membership(m) => {
                self.journal = Journal::default();
                self.membership = m.clone();
                (Bytes::new(), Vec::new())
            }
            Entry::Command(bytes) => {
                let (applied, events) = self.execute(log_id.index.get(), bytes);
                (encode_applied(&applied), events)
            }
        };
        self.last_applied = log_id;
        self.persist()?;
        if !events.is_empty()
            && let Some(sink) = self.sink.as_mut()
        {
            sink(self.state.revision, &events);
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<(), StateMachineError> {
        match &mut self.backend {
            Backend::Memory => Ok(()),
            #[cfg(feature = "rocksdb")]
            Backend::Rocks(r) => r.flush(&self.state, self.last_applied, &self.membership),
        }
    }

    fn last_applied(&self) -> LogId {
        self.last_applied
    }

    fn snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        self.flush()?;
        match &self.backend {
            Backend::Memory => {}
            #[cfg(feature = "rocksdb")]
            Backend::Rocks(r) => r.sync()?,
        }
        Ok(Box::new(Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                membership: self.membership.clone(),
            },
            chunks: VecChunks::new(self.snapshot_chunks()),
        }))
    }

    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        chunks: &mut dyn ChunkSource,
    ) -> Result<(), StateMachineError> {
        let (state, _header) = Self::read_snapshot(meta, chunks)?;
        match &mut self.backend {
            Backend::Memory => {}
            #[cfg(feature = "rocksdb")]
            Backend::Rocks(r) => r.write_all(
                &state,
                meta.last_log_id,
                &meta.membership,
                self.sidecar.as_ref(),
            )?,
        }
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.membership.clone();
        self.sidecar_dirty = false;
        Ok(())
    }

    fn keeps_sidecar(&self) -> bool {
        true
    }

    fn stage_sidecar(&mut self, blob: Bytes) -> Result<(), StateMachineError> {
        self.sidecar = Some(blob);
        self.sidecar_dirty = true;
        Ok(())
    }

    fn sidecar(&self) -> Option<Bytes> {
        self.sidecar.clone()
    }
}

#[cfg(test)]
pub(crate) fn snapshot_bytes(m: &LockMachine) -> Vec<u8> {
    m.snapshot_chunks().concat()
}

/// The snapshot bytes without `last_applied`: equal iff the replicated
/// state (keys, history, leases, revisions, membership) is equal.
#[cfg(test)]
pub(crate) fn state_fingerprint(m: &LockMachine) -> Vec<u8> {
    let mut out = codec::encode(&(m.state.revision, m.state.compact_revision, &m.membership));
    for c in &m.snapshot_chunks()[1..] {
        out.extend_from_slice(c);
    }
    out
}
