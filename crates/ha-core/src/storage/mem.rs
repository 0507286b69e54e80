//! [`MemLogStore`]: an in-memory [`LogStore`] that models durability.
//!
//! It keeps two copies of every group: what was written, and what was
//! synced. [`MemLogStore::crash`] throws the unsynced part away, exactly what
//! a power loss does to a real disk (unsynced writes vanish whole, never
//! torn), so tests and the simulator can check that nothing acknowledged is
//! lost.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;

use super::{LogStore, LogWrite, StorageError, StorageResult};
use crate::types::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupLog {
    entries: BTreeMap<LogIndex, Entry>,
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
}

impl GroupLog {
    fn apply(&mut self, w: &LogWrite) {
        if let Some(meta) = &w.snapshot {
            let keep = self.entries.split_off(&meta.last_log_id.index.next());
            self.entries = keep;
            self.snapshot = Some(meta.clone());
        }
        if let Some(from) = w.truncate_from {
            self.entries.split_off(&from);
        }
        for e in &w.entries {
            self.entries.insert(e.index(), e.clone());
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
        if let Some(to) = w.purge_to {
            self.entries = self.entries.split_off(&to.next());
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    written: HashMap<GroupId, GroupLog>,
    synced: HashMap<GroupId, GroupLog>,
    /// Writes applied to `written` but not yet to `synced`, in order. A sync
    /// replays them onto `synced` (cost proportional to what was written,
    /// not to the log's size); a crash drops them.
    unsynced: Vec<(GroupId, LogWrite)>,
    syncs: u64,
}

impl Inner {
    fn make_durable(&mut self) {
        for (group, w) in self.unsynced.drain(..) {
            self.synced.entry(group).or_default().apply(&w);
        }
        self.syncs += 1;
    }
}

/// An in-memory log store for tests and embedding. Thread-safe.
///
/// ```
/// use ha_core::storage::{LogStore, LogWrite, MemLogStore};
/// use ha_core::{Entry, EntryPayload, GroupId, LogId, LogIndex};
///
/// let store = MemLogStore::new();
/// let e = Entry { log_id: LogId::new(1, 1), payload: EntryPayload::Blank };
/// store.write(GroupId(1), LogWrite { entries: vec![e.clone()], sync: false, ..Default::default() }).unwrap();
/// store.crash(); // the unsynced append is gone
/// assert_eq!(store.entry(GroupId(1), LogIndex(1)).unwrap(), None);
/// ```
#[derive(Debug, Default)]
pub struct MemLogStore {
    inner: Mutex<Inner>,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses every write not yet synced, as a crash would.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.unsynced.clear();
        inner.written = inner.synced.clone();
    }

    /// Number of syncs performed (synced writes and `sync` calls).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Forgets everything `group` has (written, synced and pending), as
    /// `RocksLogStore::delete_group` does on disk.
    pub fn delete_group(&self, group: GroupId) {
        let mut inner = self.lock();
        inner.written.remove(&group);
        inner.synced.remove(&group);
        inner.unsynced.retain(|(g, _)| *g != group);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later readers could misread (each write is applied to a
        // clone-free map in one call), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore for MemLogStore {
    fn write(&self, group: GroupId, write: LogWrite) -> StorageResult<()> {
        let mut inner = self.lock();
        inner.written.entry(group).or_default().apply(&write);
        let sync = write.sync;
        inner.unsynced.push((group, write));
        if sync {
            // A sync makes every earlier write of every group durable.
            inner.make_durable();
        }
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        self.lock().make_durable();
        Ok(())
    }

    fn entries(&self, group: GroupId, range: Range<LogIndex>) -> StorageResult<Vec<Entry>> {
        if range.start > range.end {
            return Err(StorageError::Invalid(format!(
                "range start {:?} after end {:?}",
                range.start, range.end
            )));
        }
        let inner = self.lock();
        Ok(inner
            .written
            .get(&group)
            .map(|g| g.entries.range(range).map(|(_, e)| e.clone()).collect())
            .unwrap_or_default())
    }

    fn bounds(&self, group: GroupId) -> StorageResult<Option<(LogIndex, LogIndex)>> {
        let inner = self.lock();
        Ok(inner.written.get(&group).and_then(|g| {
            let lo = g.entries.keys().next()?;
            let hi = g.entries.keys().next_back()?;
            Some((*lo, *hi))
        }))
    }

    fn hard_state(&self, group: GroupId) -> StorageResult<HardState> {
        Ok(self
            .lock()
            .written
            .get(&group)
            .map(|g| g.hard_state)
            .unwrap_or_default())
    }

    fn snapshot_meta(&self, group: GroupId) -> StorageResult<Option<SnapshotMeta>> {
        Ok(self
            .lock()
            .written
            .get(&group)
            .and_then(|g| g.snapshot.clone()))
    }
}
