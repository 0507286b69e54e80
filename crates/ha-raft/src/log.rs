//! The in-memory Raft log: the entries after the last compaction point.

use ha_core::{Entry, LogId, LogIndex, Term};

/// Entries `start.index + 1 ..= last`, plus the id of the entry just before
/// them (the compaction point: a snapshot's last entry, or `0-0`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RaftLog {
    start: LogId,
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log whose entries follow `start`. `entries` must be contiguous
    /// after it (checked by the caller).
    pub(crate) fn new(start: LogId, entries: Vec<Entry>) -> Self {
        Self { start, entries }
    }

    /// The compaction point.
    pub(crate) fn start(&self) -> LogId {
        self.start
    }

    /// Id of the last entry (the compaction point when empty).
    pub(crate) fn last_id(&self) -> LogId {
        self.entries.last().map_or(self.start, |e| e.log_id)
    }

    /// Index of the last entry.
    pub(crate) fn last_index(&self) -> LogIndex {
        self.last_id().index
    }

    /// Term of the entry at `index`, if known (the compaction point's term
    /// is known; anything before it is not).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.entry(index).map(Entry::term)
    }

    /// The entry at `index`, if held.
    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let off = index.0.checked_sub(self.start.index.0 + 1)?;
        self.entries.get(usize::try_from(off).ok()?)
    }

    /// Position of `index` in `entries` (index must be held).
    fn pos(&self, index: LogIndex) -> usize {
        (index.0 - self.start.index.0 - 1) as usize
    }

    /// Entries `lo..=hi` that are held (clamped to the held range).
    pub(crate) fn slice(&self, lo: LogIndex, hi: LogIndex) -> &[Entry] {
        let lo = lo.max(self.start.index.next());
        let hi = hi.min(self.last_index());
        if lo > hi {
            return &[];
        }
        &self.entries[self.pos(lo)..=self.pos(hi)]
    }

    /// Appends one entry; its index must be `last_index + 1`.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index(), self.last_index().next());
        self.entries.push(entry);
    }

    /// Removes every entry with index `>= from` (`from` must be above the
    /// compaction point).
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        debug_assert!(from > self.start.index);
        if from <= self.last_index() {
            let p = self.pos(from);
            self.entries.truncate(p);
        }
    }

    /// Drops every entry up to and including `to`, which must be held.
    pub(crate) fn compact_to(&mut self, to: LogIndex) {
        if to <= self.start.index || to > self.last_index() {
            return;
        }
        let Some(term) = self.term(to) else { return };
        let p = self.pos(to);
        self.entries.drain(..=p);
        self.start = LogId { term, index: to };
    }

    /// Replaces everything with an empty log starting after `start`.
    pub(crate) fn reset(&mut self, start: LogId) {
        self.entries.clear();
        self.start = start;
    }

    /// For a rejected append at `index` whose leader term there is `term`:
    /// the last entry at or below `index` whose term is at most `term` (the
    /// compaction point at worst).
    pub(crate) fn conflict_hint(&self, index: LogIndex, term: Term) -> LogId {
        let mut i = index.min(self.last_index());
        while i > self.start.index {
            match self.entry(i) {
                Some(e) if e.term() <= term => return e.log_id,
                _ => i = i.prev(),
            }
        }
        self.start
    }

    /// Number of held entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ha_core::EntryPayload;

    fn log(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| Entry {
                log_id: LogId::new(*t, i as u64 + 1),
                payload: EntryPayload::Blank,
            })
            .collect();
        RaftLog::new(LogId::default(), entries)
    }

    #[test]
    fn terms_slices_and_compaction() {
        let mut l = log(&[1, 1, 2, 3, 3]);
        assert_eq!(l.last_id(), LogId::new(3, 5));
        assert_eq!(l.term(LogIndex(0)), Some(Term(0)));
        assert_eq!(l.term(LogIndex(3)), Some(Term(2)));
        assert_eq!(l.term(LogIndex(6)), None);
        assert_eq!(l.slice(LogIndex(2), LogIndex(9)).len(), 4);
        l.compact_to(LogIndex(3));
        assert_eq!(l.start(), LogId::new(2, 3));
        assert_eq!(l.term(LogIndex(2)), None);
        assert_eq!(l.term(LogIndex(3)), Some(Term(2)));
        assert_eq!(l.slice(LogIndex(1), LogIndex(4)).len(), 1);
        l.truncate_from(LogIndex(5));
        assert_eq!(l.last_id(), LogId::new(3, 4));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        // follower 1 1 2 2 2 2, leader has term 3 at index 6
        let l = log(&[1, 1, 2, 2, 2, 2]);
        assert_eq!(l.conflict_hint(LogIndex(6), Term(1)), LogId::new(1, 2));
        assert_eq!(l.conflict_hint(LogIndex(9), Term(5)), LogId::new(2, 6));
        assert_eq!(l.conflict_hint(LogIndex(6), Term(0)), LogId::default());
    }
}
