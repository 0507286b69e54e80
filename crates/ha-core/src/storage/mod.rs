//! The durable log: the [`LogStore`] contract and its implementations.
//!
//! One store serves every group a node hosts; every call names its
//! [`GroupId`]. All writes of one [`LogWrite`] are applied atomically: after a
//! crash either all of it or none of it is visible. A write with
//! `sync: true` returns only once it is fsync'd ("persisted"); the driver
//! never acknowledges anything that is not.

use std::ops::Range;

use crate::codec::CodecError;
use crate::types::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

pub mod mem;
pub use mem::MemLogStore;

#[cfg(any(test, feature = "testkit"))]
pub mod conformance;

#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksLogStore, RocksOptions};

/// One atomic change to a group's log. Applied in field order: snapshot
/// reset, truncate, entries, hard state, purge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// Record a snapshot and drop every entry at or below its index.
    pub snapshot: Option<SnapshotMeta>,
    /// Delete every entry with index `>=` this.
    pub truncate_from: Option<LogIndex>,
    /// Entries to put (overwriting any entry at the same index). May be out
    /// of order or have gaps.
    pub entries: Vec<Entry>,
    /// Hard state to save.
    pub hard_state: Option<HardState>,
    /// Delete every entry with index `<=` this.
    pub purge_to: Option<LogIndex>,
    /// Whether to fsync before returning. Unsynced writes may be lost by a
    /// crash (all together, never torn), until a later synced write or
    /// [`LogStore::sync`].
    pub sync: bool,
}

impl LogWrite {
    /// A synced write appending `entries`.
    pub fn append(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            sync: true,
            ..Self::default()
        }
    }

    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.truncate_from.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.purge_to.is_none()
    }
}

/// Storage failures. Corruption is reported, never returned as data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Stored bytes failed their checksum or did not decode.
    #[error("corrupt {what} in group {group} at index {index:?}: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Group it belongs to.
        group: GroupId,
        /// Index for entries.
        index: Option<LogIndex>,
        /// The decode failure.
        #[source]
        source: CodecError,
    },
    /// A stored entry's own index disagrees with the key it is stored under.
    #[error("entry stored at {key:?} in group {group} claims index {found:?}")]
    Misplaced {
        /// Group.
        group: GroupId,
        /// Index the key says.
        key: LogIndex,
        /// Index the entry says.
        found: LogIndex,
    },
    /// An invalid request (e.g. a range larger than the read limit).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The underlying engine failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// The store is closed or its writer thread has stopped.
    #[error("store closed")]
    Closed,
}

/// Result alias for storage calls.
pub type StorageResult<T> = Result<T, StorageError>;

/// Called exactly once with the outcome of a write started by
/// [`LogStore::write_queued`], possibly on a thread of the store.
pub type WriteDone = Box<dyn FnOnce(StorageResult<()>) + Send>;

/// A write [`LogStore::write_queued`] did not start, given back whole.
pub struct NotQueued {
    /// The write, untouched.
    pub write: LogWrite,
    /// Its callback, not called.
    pub done: WriteDone,
}

/// A durable, multi-group replicated-log store.
///
/// Calls are blocking (RocksDB is); async callers use
/// `tokio::task::spawn_blocking`, or [`LogStore::write_queued`] where the
/// store supports it. Concurrent writers are allowed and share fsyncs
/// (group commit) where the implementation supports it.
pub trait LogStore: Send + Sync + 'static {
    /// Applies `write` atomically; when `write.sync`, returns after fsync.
    fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()>;

    /// Starts `write` without blocking the caller, with the same meaning as
    /// [`write`](Self::write): `done` is called exactly once with the
    /// outcome — when the write is applied (and fsync'd if `write.sync`), or
    /// with the error — from whichever thread completes it, possibly before
    /// this returns. `done` must not block.
    ///
    /// Gives `write` and `done` back untouched ([`NotQueued`]; nothing
    /// started) when the store cannot take the write without blocking — its
    /// queue is full, or it has no queue at all (the default): the caller
    /// then uses [`write`](Self::write) on a thread that may block. Writes started
    /// this way and by `write` are applied in the order they were started.
    fn write_queued(
        &self,
        group: GroupId,
        write: LogWrite,
        done: WriteDone,
    ) -> Result<(), Box<NotQueued>> {
        let _ = group;
        Err(Box::new(NotQueued { write, done }))
    }

    /// Makes every earlier write of every group durable.
    fn sync(&self) -> StorageResult<()>;

    /// The entries with index in `range` that are present, in ascending
    /// index order (Paxos logs may have gaps).
    fn entries(&self, group: GroupId, range: Range<LogIndex>) -> StorageResult<Vec<Entry>>;

    /// The entry at `index`, if present.
    fn entry(&self, group: GroupId, index: LogIndex) -> StorageResult<Option<Entry>> {
        Ok(self.entries(group, index..index.next())?.into_iter().next())
    }

    /// Lowest and highest stored entry index, or `None` when the log is empty.
    fn bounds(&self, group: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>>;

    /// Saved hard state (default if never saved).
    fn hard_state(&self, group: GroupId) -> StorageResult<HardState>;

    /// Last recorded snapshot meta.
    fn snapshot_meta(&self, group: GroupId) -> StorageResult<Option<SnapshotMeta>>;

    /// Everything the protocol needs on start.
    fn recover(&self, group: GroupId) -> StorageResult<crate::consensus::Recovered> {
        let hard_state = self.hard_state(group)?;
        let snapshot = self.snapshot_meta(group)?;
        let entries = match self.bounds(group)? {
            Some((lo, hi)) => self.entries(group, lo..hi.next())?,
            None => Vec::new(),
        };
        Ok(crate::consensus::Recovered {
            hard_state,
            snapshot,
            entries,
        })
    }
}
