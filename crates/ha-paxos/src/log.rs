//! [`SlotLog`]: an acceptor's slots above its snapshot, indexed by slot.
//!
//! Two parts: the **prefix**, every slot from right after the snapshot up
//! to the first hole, held contiguously in a ring buffer (O(1) lookup and
//! append, and ranges of it are plain slices, so batches are copied, not
//! walked slot by slot); and the slots accepted **out of order** beyond the
//! first hole, in an ordered map. A slot that fills the first hole moves
//! every slot that now follows without a gap into the prefix. The caller
//! bounds how far ahead a slot may be (`Config::max_slots_ahead`), which
//! bounds the map.

use std::collections::{BTreeMap, VecDeque};

use ha_core::{Entry, LogIndex};

/// Entries by slot, from `start + 1` on.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlotLog {
    /// Slots at or below this are compacted away.
    start: LogIndex,
    /// Slots `start + 1 ..= start + prefix.len()`, every one held.
    prefix: VecDeque<Entry>,
    /// Held slots above the prefix; never the slot right after it (that
    /// one is moved into the prefix).
    ahead: BTreeMap<LogIndex, Entry>,
}

impl SlotLog {
    /// An empty log after `start`.
    pub(crate) fn new(start: LogIndex) -> Self {
        Self {
            start,
            prefix: VecDeque::new(),
            ahead: BTreeMap::new(),
        }
    }

    /// Position of `slot` in the prefix, if it lies in it.
    fn pos(&self, slot: LogIndex) -> Option<usize> {
        let off = slot.0.checked_sub(self.start.0.checked_add(1)?)?;
        let off = usize::try_from(off).ok()?;
        (off < self.prefix.len()).then_some(off)
    }

    /// The compaction point.
    pub(crate) fn start(&self) -> LogIndex {
        self.start
    }

    /// Every slot from the compaction point up to here is held (the
    /// compaction point itself when the slot after it is a hole).
    pub(crate) fn filled_to(&self) -> LogIndex {
        LogIndex(self.start.0 + self.prefix.len() as u64)
    }

    /// The highest slot held, if any.
    pub(crate) fn last(&self) -> Option<LogIndex> {
        match self.ahead.last_key_value() {
            Some((s, _)) => Some(*s),
            None if self.prefix.is_empty() => None,
            None => Some(self.filled_to()),
        }
    }

    /// The entry at `slot`.
    pub(crate) fn get(&self, slot: LogIndex) -> Option<&Entry> {
        match self.pos(slot) {
            Some(p) => self.prefix.get(p),
            None => self.ahead.get(&slot),
        }
    }

    /// Stores `e` at its slot (overwriting); ignored at or below the
    /// compaction point.
    #[inline]
    pub(crate) fn insert(&mut self, e: Entry) {
        if e.index() == self.filled_to().next() && self.ahead.is_empty() {
            // The common case: the next slot, in order.
            self.prefix.push_back(e);
        } else {
            self.insert_anywhere(e);
        }
    }

    fn insert_anywhere(&mut self, e: Entry) {
        let slot = e.index();
        if slot <= self.start {
            return;
        }
        if let Some(p) = self.pos(slot) {
            self.prefix[p] = e;
            return;
        }
        if slot != self.filled_to().next() {
            self.ahead.insert(slot, e);
            return;
        }
        self.prefix.push_back(e);
        self.absorb();
    }

    /// Stores a batch of entries with contiguous ascending slots
    /// (overwriting), as [`Self::insert`] of each in turn would; a batch
    /// that starts right after the prefix is moved in as one block.
    pub(crate) fn insert_run(&mut self, entries: impl ExactSizeIterator<Item = Entry>) {
        let mut entries = entries.peekable();
        let Some(first) = entries.peek().map(Entry::index) else {
            return;
        };
        if first == self.filled_to().next() && self.ahead.is_empty() {
            self.prefix.extend(entries);
        } else {
            for e in entries {
                self.insert_anywhere(e);
            }
        }
    }

    /// Moves the out-of-order slots that now follow the prefix into it.
    fn absorb(&mut self) {
        let mut next = self.filled_to().next();
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != next {
                break;
            }
            self.prefix.push_back(entry.remove());
            next = next.next();
        }
    }

    /// The prefix slots in `from..=to` as at most two slices, ascending
    /// and without gaps (empty where the range misses the prefix).
    pub(crate) fn prefix_slices(&self, from: LogIndex, to: LogIndex) -> (&[Entry], &[Entry]) {
        let from = from.max(self.start.next());
        let to = to.min(self.filled_to());
        if from > to {
            return (&[], &[]);
        }
        let (Some(lo), Some(hi)) = (self.pos(from), self.pos(to)) else {
            return (&[], &[]);
        };
        let (a, b) = self.prefix.as_slices();
        if hi < a.len() {
            (&a[lo..=hi], &[])
        } else if lo >= a.len() {
            (&b[lo - a.len()..=hi - a.len()], &[])
        } else {
            (&a[lo..], &b[..=hi - a.len()])
        }
    }

    /// The held entries with slot in `from..=to`, ascending.
    pub(crate) fn range(&self, from: LogIndex, to: LogIndex) -> impl Iterator<Item = &Entry> {
        let (a, b) = self.prefix_slices(from, to);
        let above = from.max(self.filled_to().next());
        let ahead = (above <= to)
            .then(|| self.ahead.range(above..=to).map(|(_, e)| e))
            .into_iter()
            .flatten();
        a.iter().chain(b).chain(ahead)
    }

    /// Appends clones of the held entries with slot in `from..=to` to
    /// `out`, ascending: the prefix part as slice copies.
    pub(crate) fn clone_range_into(&self, from: LogIndex, to: LogIndex, out: &mut Vec<Entry>) {
        let (a, b) = self.prefix_slices(from, to);
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        let above = from.max(self.filled_to().next());
        if above <= to {
            out.extend(self.ahead.range(above..=to).map(|(_, e)| e.clone()));
        }
    }

    /// Drops every slot at or below `to` and moves the compaction point
    /// there.
    pub(crate) fn compact_to(&mut self, to: LogIndex) {
        if to <= self.start {
            return;
        }
        let n = usize::try_from(to.0 - self.start.0).unwrap_or(usize::MAX);
        if n < self.prefix.len() {
            self.prefix.drain(..n);
            self.start = to;
            return;
        }
        self.prefix.clear();
        self.ahead = self.ahead.split_off(&to.next());
        self.start = to;
        self.absorb();
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

    fn slots<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<u64> {
        it.map(|e| e.index().0).collect()
    }

    #[test]
    fn holds_slots_out_of_order_and_compacts() {
        let mut l = SlotLog::new(LogIndex(10));
        l.insert(e(14));
        l.insert(e(12));
        l.insert(e(5)); // below the start: ignored
        assert_eq!(l.last(), Some(LogIndex(14)));
        assert_eq!(l.filled_to(), LogIndex(10), "slot 11 is a hole");
        assert!(l.get(LogIndex(13)).is_none());
        assert!(l.get(LogIndex(12)).is_some());
        assert_eq!(slots(l.range(LogIndex(0), LogIndex(100))), vec![12, 14]);
        assert!(slots(l.range(LogIndex(13), LogIndex(13))).is_empty());
        l.compact_to(LogIndex(12));
        assert_eq!(l.start(), LogIndex(12));
        assert!(l.get(LogIndex(12)).is_none());
        assert_eq!(l.last(), Some(LogIndex(14)));
        assert_eq!(l.filled_to(), LogIndex(12));
        l.compact_to(LogIndex(20));
        assert_eq!(l.last(), None);
        l.insert(e(21));
        assert_eq!(l.last(), Some(LogIndex(21)));
        assert_eq!(l.filled_to(), LogIndex(21));
    }

    #[test]
    fn filling_the_first_hole_joins_the_slots_after_it() {
        let mut l = SlotLog::new(LogIndex(0));
        for s in [1, 2, 4, 5, 7] {
            l.insert(e(s));
        }
        assert_eq!(l.filled_to(), LogIndex(2));
        l.insert(e(3));
        assert_eq!(l.filled_to(), LogIndex(5), "4 and 5 joined the prefix");
        assert_eq!(l.last(), Some(LogIndex(7)));
        let (a, b) = l.prefix_slices(LogIndex(2), LogIndex(9));
        assert_eq!(slots(a.iter().chain(b)), vec![2, 3, 4, 5]);
        let mut out = Vec::new();
        l.clone_range_into(LogIndex(4), LogIndex(7), &mut out);
        assert_eq!(slots(out.iter()), vec![4, 5, 7]);
        // Overwrites stay in place, in the prefix and beyond it.
        let mut e4 = e(4);
        e4.log_id.term = ha_core::Term(9);
        l.insert(e4);
        let mut e7 = e(7);
        e7.log_id.term = ha_core::Term(9);
        l.insert(e7);
        assert_eq!(l.get(LogIndex(4)).map(Entry::term), Some(ha_core::Term(9)));
        assert_eq!(l.get(LogIndex(7)).map(Entry::term), Some(ha_core::Term(9)));
        assert_eq!(
            slots(l.range(LogIndex(1), LogIndex(7))),
            vec![1, 2, 3, 4, 5, 7]
        );
        // Compacting past the prefix keeps later slots and joins them.
        l.compact_to(LogIndex(6));
        assert_eq!(l.filled_to(), LogIndex(7));
        assert_eq!(slots(l.range(LogIndex(0), LogIndex(100))), vec![7]);
    }

    #[test]
    fn prefix_slices_span_the_ring_buffer_wrap() {
        let mut l = SlotLog::new(LogIndex(0));
        for s in 1..=6 {
            l.insert(e(s));
        }
        // Compact and refill so the ring buffer's contents wrap around.
        l.compact_to(LogIndex(4));
        for s in 7..=12 {
            l.insert(e(s));
        }
        assert!(!l.prefix.as_slices().1.is_empty(), "the buffer wraps");
        for (from, to) in [(5, 12), (6, 9), (9, 12), (1, 100), (12, 12), (13, 20)] {
            let (a, b) = l.prefix_slices(LogIndex(from), LogIndex(to));
            let want: Vec<u64> = (from.max(5)..=to.min(12)).collect();
            assert_eq!(slots(a.iter().chain(b)), want, "{from}..={to}");
        }
    }
}
