//! [`SlotLog`]: an acceptor's slots above its snapshot, indexed by slot.
//!
//! A ring buffer of optional entries starting right after the snapshot:
//! O(1) lookup and append, holes for slots accepted out of order. The
//! caller bounds how far ahead a slot may be (`Config::max_slots_ahead`),
//! which bounds the holes: each costs `size_of::<Option<Entry>>()` bytes.

use std::collections::VecDeque;

use ha_core::{Entry, LogIndex};

/// Entries by slot, from `start + 1` on; the last position is always held.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotLog {
    /// Slots at or below this are compacted away.
    start: LogIndex,
    slots: VecDeque<Option<Entry>>,
}

impl SlotLog {
    /// An empty log after `start`.
    pub(crate) fn new(start: LogIndex) -> Self {
        Self {
            start,
            slots: VecDeque::new(),
        }
    }

    fn pos(&self, slot: LogIndex) -> Option<usize> {
        let off = slot.0.checked_sub(self.start.0.checked_add(1)?)?;
        usize::try_from(off).ok()
    }

    /// The compaction point.
    pub(crate) fn start(&self) -> LogIndex {
        self.start
    }

    /// The highest slot held, if any.
    pub(crate) fn last(&self) -> Option<LogIndex> {
        if self.slots.is_empty() {
            None
        } else {
            Some(LogIndex(self.start.0 + self.slots.len() as u64))
        }
    }

    /// The entry at `slot`.
    pub(crate) fn get(&self, slot: LogIndex) -> Option<&Entry> {
        self.slots.get(self.pos(slot)?)?.as_ref()
    }

    /// Stores `e` at its slot (overwriting); ignored at or below the
    /// compaction point.
    pub(crate) fn insert(&mut self, e: Entry) {
        let Some(p) = self.pos(e.index()) else {
            return;
        };
        if p < self.slots.len() {
            self.slots[p] = Some(e);
        } else {
            while self.slots.len() < p {
                self.slots.push_back(None);
            }
            self.slots.push_back(Some(e));
        }
    }

    /// The held entries with slot in `from..=to`, ascending.
    pub(crate) fn range(&self, from: LogIndex, to: LogIndex) -> impl Iterator<Item = &Entry> {
        let lo = self.pos(from.max(self.start.next())).unwrap_or(0);
        let hi = match self.pos(to) {
            Some(p) => (p + 1).min(self.slots.len()),
            None => 0,
        };
        self.slots.range(lo.min(hi)..hi).filter_map(Option::as_ref)
    }

    /// Drops every slot at or below `to` and moves the compaction point
    /// there.
    pub(crate) fn compact_to(&mut self, to: LogIndex) {
        if to <= self.start {
            return;
        }
        let n = self.pos(to).map_or(0, |p| p + 1).min(self.slots.len());
        self.slots.drain(..n);
        if self.slots.front().is_none() && n == 0 {
            self.slots.clear();
        }
        self.start = to;
        // Keep the invariant that the last position is held.
        while matches!(self.slots.back(), Some(None)) {
            self.slots.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::{EntryPayload, LogId};

    fn e(slot: u64) -> Entry {
        Entry {
            log_id: LogId::new(1, slot),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn holds_slots_out_of_order_and_compacts() {
        let mut l = SlotLog::new(LogIndex(10));
        l.insert(e(14));
        l.insert(e(12));
        l.insert(e(5)); // below the start: ignored
        assert_eq!(l.last(), Some(LogIndex(14)));
        assert!(l.get(LogIndex(13)).is_none());
        assert!(l.get(LogIndex(12)).is_some());
        let got: Vec<u64> = l
            .range(LogIndex(0), LogIndex(100))
            .map(|e| e.index().0)
            .collect();
        assert_eq!(got, vec![12, 14]);
        let got: Vec<u64> = l
            .range(LogIndex(13), LogIndex(13))
            .map(|e| e.index().0)
            .collect();
        assert!(got.is_empty());
        l.compact_to(LogIndex(12));
        assert_eq!(l.start(), LogIndex(12));
        assert!(l.get(LogIndex(12)).is_none());
        assert_eq!(l.last(), Some(LogIndex(14)));
        l.compact_to(LogIndex(20));
        assert_eq!(l.last(), None);
        l.insert(e(21));
        assert_eq!(l.last(), Some(LogIndex(21)));
    }
}
