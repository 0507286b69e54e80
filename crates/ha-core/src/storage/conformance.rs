//! The [`LogStore`] conformance suite: one set of behavioural checks every
//! implementation must pass.
//!
//! Compiled for tests and under feature `testkit`, so other crates can run it
//! against their own stores. An implementation plugs in through a
//! [`Harness`], which makes fresh stores and "reopens" one (restart after a
//! crash: for [`MemLogStore`](super::MemLogStore), `crash()` on the same
//! instance; for a disk store, drop and open the same directory). Each check
//! panics with a message naming the case and the expectation that failed.
//!
//! ```
//! use ha_core::storage::MemLogStore;
//! use ha_core::storage::conformance::{self, FnHarness};
//!
//! let mut h = FnHarness::new(MemLogStore::new, |s: MemLogStore| {
//!     s.crash();
//!     s
//! });
//! conformance::run_all(&mut h);
//! ```

use std::sync::Arc;

use bytes::Bytes;

use super::{LogStore, LogWrite, StorageError};
use crate::types::{
    Entry, EntryPayload, GroupId, HardState, LogId, LogIndex, Membership, NodeId, SnapshotMeta,
    Term,
};

/// Makes and reopens the stores under test.
pub trait Harness {
    /// The store type.
    type Store: LogStore;
    /// A new, empty store, independent of every other one.
    fn fresh(&mut self) -> Self::Store;
    /// Simulates a crash and restart of `store`: afterwards every synced
    /// write must be visible; unsynced ones may be lost, each whole.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

/// A [`Harness`] from two closures.
#[derive(Debug)]
pub struct FnHarness<F, R> {
    fresh: F,
    reopen: R,
}

impl<S, F, R> FnHarness<F, R>
where
    S: LogStore,
    F: FnMut() -> S,
    R: FnMut(S) -> S,
{
    /// `fresh` makes an empty store; `reopen` crashes and restarts one.
    pub fn new(fresh: F, reopen: R) -> Self {
        Self { fresh, reopen }
    }
}

impl<S, F, R> Harness for FnHarness<F, R>
where
    S: LogStore,
    F: FnMut() -> S,
    R: FnMut(S) -> S,
{
    type Store = S;
    fn fresh(&mut self) -> S {
        (self.fresh)()
    }
    fn reopen(&mut self, store: S) -> S {
        (self.reopen)(store)
    }
}

/// A named conformance case.
pub type Case<H> = (&'static str, fn(&mut H));

/// Every case of the suite, by name.
pub fn cases<H: Harness>() -> Vec<Case<H>> {
    vec![
        ("empty_store", empty_store::<H> as fn(&mut H)),
        (
            "append_and_read_ranges",
            append_and_read_ranges::<H> as fn(&mut H),
        ),
        (
            "payload_kinds_roundtrip",
            payload_kinds_roundtrip::<H> as fn(&mut H),
        ),
        ("overwrite_suffix", overwrite_suffix::<H> as fn(&mut H)),
        (
            "out_of_order_slots_with_gaps",
            out_of_order_slots_with_gaps::<H> as fn(&mut H),
        ),
        ("truncate", truncate::<H> as fn(&mut H)),
        ("purge", purge::<H> as fn(&mut H)),
        ("hard_state", hard_state::<H> as fn(&mut H)),
        (
            "snapshot_meta_reset",
            snapshot_meta_reset::<H> as fn(&mut H),
        ),
        (
            "one_write_applies_in_field_order",
            one_write_applies_in_field_order::<H> as fn(&mut H),
        ),
        (
            "groups_are_isolated",
            groups_are_isolated::<H> as fn(&mut H),
        ),
        (
            "reopen_keeps_synced_writes",
            reopen_keeps_synced_writes::<H> as fn(&mut H),
        ),
        (
            "unsynced_write_is_atomic_across_reopen",
            unsynced_write_is_atomic_across_reopen::<H> as fn(&mut H),
        ),
        ("concurrent_writers", concurrent_writers::<H> as fn(&mut H)),
        (
            "invalid_range_is_refused",
            invalid_range_is_refused::<H> as fn(&mut H),
        ),
    ]
}

/// Runs every case, each on fresh stores. Panics on the first failure; the
/// case name is printed to stderr before it runs.
pub fn run_all<H: Harness>(h: &mut H) {
    for (name, case) in cases::<H>() {
        eprintln!("log store conformance: {name}");
        case(h);
    }
}

const G: GroupId = GroupId(1);

/// The payload the suite writes for `(index, term)`: distinct per entry so a
/// wrong or stale entry is noticed.
fn payload(index: u64, term: u64) -> Bytes {
    Bytes::from(format!("entry {index} of term {term}").into_bytes())
}

/// A normal entry with the suite's payload.
fn ent(index: u64, term: u64) -> Entry {
    Entry {
        log_id: LogId::new(term, index),
        payload: EntryPayload::Normal(payload(index, term)),
    }
}

fn ents(indexes: impl IntoIterator<Item = u64>, term: u64) -> Vec<Entry> {
    indexes.into_iter().map(|i| ent(i, term)).collect()
}

fn append<S: LogStore>(s: &S, g: GroupId, entries: Vec<Entry>) {
    s.write(g, LogWrite::append(entries))
        .unwrap_or_else(|e| panic!("append to {g:?} failed: {e}"));
}

fn write<S: LogStore>(s: &S, g: GroupId, w: LogWrite) {
    s.write(g, w)
        .unwrap_or_else(|e| panic!("write to {g:?} failed: {e}"));
}

fn read<S: LogStore>(s: &S, g: GroupId, lo: u64, hi_exclusive: u64) -> Vec<Entry> {
    s.entries(g, LogIndex(lo)..LogIndex(hi_exclusive))
        .unwrap_or_else(|e| panic!("entries({g:?}, {lo}..{hi_exclusive}) failed: {e}"))
}

fn bounds<S: LogStore>(s: &S, g: GroupId) -> Option<(u64, u64)> {
    s.bounds(g)
        .unwrap_or_else(|e| panic!("bounds({g:?}) failed: {e}"))
        .map(|(a, b)| (a.0, b.0))
}

fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index().0, e.term().0)).collect()
}

fn snap(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(term, index),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

/// A new store has no entries, default hard state and no snapshot.
pub fn empty_store<H: Harness>(h: &mut H) {
    let s = h.fresh();
    assert_eq!(bounds(&s, G), None, "empty: bounds");
    assert!(read(&s, G, 0, 100).is_empty(), "empty: entries");
    assert_eq!(s.entry(G, LogIndex(1)).ok().flatten(), None, "empty: entry");
    assert_eq!(
        s.hard_state(G).ok(),
        Some(HardState::default()),
        "empty: hard state"
    );
    assert_eq!(s.snapshot_meta(G).ok(), Some(None), "empty: snapshot meta");
    let r = s
        .recover(G)
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    assert!(r.entries.is_empty() && r.snapshot.is_none() && r.hard_state == HardState::default());
}

/// Appended entries come back exactly, for whole and partial ranges.
pub fn append_and_read_ranges<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=5, 1));
    append(&s, G, ents(6..=10, 2));
    let mut want = ents(1..=5, 1);
    want.extend(ents(6..=10, 2));
    assert_eq!(read(&s, G, 1, 11), want, "whole range");
    assert_eq!(read(&s, G, 0, 1000), want, "range wider than the log");
    assert_eq!(read(&s, G, 3, 5), want[2..4].to_vec(), "range 3..5");
    assert!(read(&s, G, 5, 5).is_empty(), "empty range 5..5");
    assert!(read(&s, G, 11, 20).is_empty(), "range after the log");
    assert!(read(&s, G, 1, u64::MAX).len() == 10, "range up to u64::MAX");
    assert_eq!(bounds(&s, G), Some((1, 10)), "bounds");
    assert_eq!(
        s.entry(G, LogIndex(7)).ok().flatten(),
        Some(ent(7, 2)),
        "entry 7"
    );
    assert_eq!(s.entry(G, LogIndex(11)).ok().flatten(), None, "entry 11");
    let r = s
        .recover(G)
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    assert_eq!(r.entries, want, "recover returns the log");
}

/// Blank, large normal and membership payloads round-trip unchanged.
pub fn payload_kinds_roundtrip<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut m = Membership::new([NodeId(1), NodeId(2)]);
    m.voters_outgoing = Some([NodeId(2), NodeId(3)].into_iter().collect());
    m.learners.insert(NodeId(9));
    let want = vec![
        Entry {
            log_id: LogId::new(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: LogId::new(1, 2),
            payload: EntryPayload::Normal(Bytes::from(big)),
        },
        Entry {
            log_id: LogId::new(1, 3),
            payload: EntryPayload::Membership(Box::new(m)),
        },
        Entry {
            log_id: LogId::new(1, 4),
            payload: EntryPayload::Normal(Bytes::new()),
        },
    ];
    append(&s, G, want.clone());
    assert_eq!(read(&s, G, 1, 5), want, "payloads round-trip");
}

/// Raft conflict resolution: truncate a suffix and write new entries; an
/// entry put at an existing index replaces it.
pub fn overwrite_suffix<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=10, 1));
    write(
        &s,
        G,
        LogWrite {
            truncate_from: Some(LogIndex(6)),
            entries: ents(6..=8, 2),
            sync: true,
            ..LogWrite::default()
        },
    );
    let mut want = ents(1..=5, 1);
    want.extend(ents(6..=8, 2));
    assert_eq!(read(&s, G, 1, 100), want, "suffix replaced, old tail gone");
    assert_eq!(bounds(&s, G), Some((1, 8)), "bounds after overwrite");

    // A plain put over an existing index replaces that one entry only.
    append(&s, G, vec![ent(3, 3)]);
    want[2] = ent(3, 3);
    assert_eq!(read(&s, G, 1, 100), want, "single slot replaced");
}

/// Paxos writes slots out of order and leaves gaps; reads return what is
/// present, in index order.
pub fn out_of_order_slots_with_gaps<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, vec![ent(5, 1), ent(2, 1), ent(9, 1)]);
    append(&s, G, vec![ent(7, 2)]);
    assert_eq!(
        ids(&read(&s, G, 0, 100)),
        vec![(2, 1), (5, 1), (7, 2), (9, 1)],
        "present slots in order"
    );
    assert_eq!(bounds(&s, G), Some((2, 9)), "bounds span the gaps");
    assert_eq!(s.entry(G, LogIndex(3)).ok().flatten(), None, "gap at 3");
    assert_eq!(
        ids(&read(&s, G, 3, 8)),
        vec![(5, 1), (7, 2)],
        "range over gaps"
    );
    // Filling a gap later.
    append(&s, G, vec![ent(3, 3)]);
    assert_eq!(
        ids(&read(&s, G, 0, 100)),
        vec![(2, 1), (3, 3), (5, 1), (7, 2), (9, 1)],
        "gap filled"
    );
    let r = s
        .recover(G)
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    assert_eq!(
        ids(&r.entries),
        ids(&read(&s, G, 0, 100)),
        "recover with gaps"
    );
}

/// `truncate_from` drops every entry at or above the index, nothing below.
pub fn truncate<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=10, 1));
    let tr = |from: u64| LogWrite {
        truncate_from: Some(LogIndex(from)),
        sync: true,
        ..LogWrite::default()
    };
    write(&s, G, tr(100));
    assert_eq!(bounds(&s, G), Some((1, 10)), "truncate past the end: no-op");
    write(&s, G, tr(4));
    assert_eq!(read(&s, G, 0, 100), ents(1..=3, 1), "truncate from 4");
    assert_eq!(bounds(&s, G), Some((1, 3)), "bounds after truncate");
    write(&s, G, tr(1));
    assert_eq!(bounds(&s, G), None, "truncate from 1 empties the log");
    append(&s, G, ents(1..=2, 2));
    assert_eq!(read(&s, G, 0, 100), ents(1..=2, 2), "append after truncate");
}

/// `purge_to` drops every entry at or below the index and nothing else.
pub fn purge<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=10, 1));
    let hs = HardState {
        term: Term(4),
        vote: Some(NodeId(2)),
        commit: LogIndex(9),
    };
    write(
        &s,
        G,
        LogWrite {
            hard_state: Some(hs),
            sync: true,
            ..LogWrite::default()
        },
    );
    let pg = |to: u64| LogWrite {
        purge_to: Some(LogIndex(to)),
        sync: true,
        ..LogWrite::default()
    };
    write(&s, G, pg(3));
    assert_eq!(bounds(&s, G), Some((4, 10)), "bounds after purge to 3");
    assert_eq!(read(&s, G, 1, 5), vec![ent(4, 1)], "purged prefix is gone");
    write(&s, G, pg(2));
    assert_eq!(bounds(&s, G), Some((4, 10)), "purge below first: no-op");
    write(&s, G, pg(20));
    assert_eq!(bounds(&s, G), None, "purge past the end empties the log");
    assert_eq!(s.hard_state(G).ok(), Some(hs), "purge keeps the hard state");
    append(&s, G, ents(21..=22, 2));
    assert_eq!(bounds(&s, G), Some((21, 22)), "append after purge");
}

/// Hard state is saved per group, replaced by the next save, and survives
/// a reopen when synced.
pub fn hard_state<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let hs1 = HardState {
        term: Term(3),
        vote: Some(NodeId(1)),
        commit: LogIndex(0),
    };
    let hs2 = HardState {
        term: Term(5),
        vote: None,
        commit: LogIndex(17),
    };
    let save = |s: &H::Store, g: GroupId, hs: HardState| {
        write(
            s,
            g,
            LogWrite {
                hard_state: Some(hs),
                sync: true,
                ..LogWrite::default()
            },
        )
    };
    save(&s, G, hs1);
    assert_eq!(s.hard_state(G).ok(), Some(hs1), "saved");
    save(&s, G, hs2);
    save(&s, GroupId(2), hs1);
    assert_eq!(s.hard_state(G).ok(), Some(hs2), "replaced");
    assert_eq!(s.hard_state(GroupId(2)).ok(), Some(hs1), "per group");
    assert_eq!(
        s.hard_state(GroupId(3)).ok(),
        Some(HardState::default()),
        "unsaved group"
    );
    let s = h.reopen(s);
    assert_eq!(s.hard_state(G).ok(), Some(hs2), "survives reopen");
    assert_eq!(s.hard_state(GroupId(2)).ok(), Some(hs1), "other group too");
    let r = s
        .recover(G)
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    assert_eq!(r.hard_state, hs2, "recover returns it");
}

/// Installing a snapshot records its meta and drops the log up to it.
pub fn snapshot_meta_reset<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=10, 1));
    let m1 = snap(6, 1);
    write(
        &s,
        G,
        LogWrite {
            snapshot: Some(m1.clone()),
            sync: true,
            ..LogWrite::default()
        },
    );
    assert_eq!(
        s.snapshot_meta(G).ok(),
        Some(Some(m1.clone())),
        "meta saved"
    );
    assert_eq!(bounds(&s, G), Some((7, 10)), "log up to 6 dropped");
    assert_eq!(read(&s, G, 0, 100), ents(7..=10, 1), "rest intact");

    // A snapshot beyond the log (follower catching up) empties it.
    let m2 = snap(15, 3);
    write(
        &s,
        G,
        LogWrite {
            snapshot: Some(m2.clone()),
            sync: true,
            ..LogWrite::default()
        },
    );
    assert_eq!(bounds(&s, G), None, "snapshot past the log empties it");
    append(&s, G, ents(16..=17, 3));
    let s = h.reopen(s);
    assert_eq!(
        s.snapshot_meta(G).ok(),
        Some(Some(m2.clone())),
        "latest meta"
    );
    assert_eq!(read(&s, G, 0, 100), ents(16..=17, 3), "log after snapshot");
    let r = s
        .recover(G)
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    assert_eq!(r.snapshot, Some(m2), "recover returns the meta");
    assert_eq!(r.entries, ents(16..=17, 3), "recover returns the log");
}

/// A write with every part applies them in the documented order:
/// snapshot reset, truncate, entries, hard state, purge.
pub fn one_write_applies_in_field_order<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=8, 1));
    let hs = HardState {
        term: Term(2),
        vote: Some(NodeId(3)),
        commit: LogIndex(5),
    };
    write(
        &s,
        G,
        LogWrite {
            snapshot: Some(snap(2, 1)),
            truncate_from: Some(LogIndex(5)),
            // Index 1 is re-put after the snapshot reset dropped it, then
            // purged again by purge_to; 5..=7 replace the truncated tail.
            entries: vec![ent(1, 2), ent(5, 2), ent(6, 2), ent(7, 2)],
            hard_state: Some(hs),
            purge_to: Some(LogIndex(3)),
            sync: true,
        },
    );
    assert_eq!(
        ids(&read(&s, G, 0, 100)),
        vec![(4, 1), (5, 2), (6, 2), (7, 2)],
        "field order"
    );
    assert_eq!(s.hard_state(G).ok(), Some(hs), "hard state");
    assert_eq!(s.snapshot_meta(G).ok(), Some(Some(snap(2, 1))), "meta");

    // Entries put in the same write as a purge that covers them are purged.
    write(
        &s,
        G,
        LogWrite {
            entries: ents(8..=9, 2),
            purge_to: Some(LogIndex(8)),
            sync: true,
            ..LogWrite::default()
        },
    );
    assert_eq!(ids(&read(&s, G, 0, 100)), vec![(9, 2)], "purge after put");
}

/// Truncate, purge and snapshot of one group never touch another, including
/// the neighbouring ids and the extremes.
pub fn groups_are_isolated<H: Harness>(h: &mut H) {
    let s = h.fresh();
    let groups = [GroupId(0), GroupId(1), GroupId(2), GroupId(u64::MAX)];
    for (n, g) in groups.iter().enumerate() {
        append(&s, *g, ents(1..=6, n as u64 + 1));
    }
    write(
        &s,
        GroupId(1),
        LogWrite {
            truncate_from: Some(LogIndex(0)),
            sync: true,
            ..LogWrite::default()
        },
    );
    write(
        &s,
        GroupId(2),
        LogWrite {
            purge_to: Some(LogIndex(u64::MAX - 1)),
            sync: true,
            ..LogWrite::default()
        },
    );
    write(
        &s,
        GroupId(0),
        LogWrite {
            snapshot: Some(snap(3, 1)),
            sync: true,
            ..LogWrite::default()
        },
    );
    assert_eq!(bounds(&s, GroupId(1)), None, "group 1 truncated");
    assert_eq!(bounds(&s, GroupId(2)), None, "group 2 purged");
    assert_eq!(
        read(&s, GroupId(0), 0, 100),
        ents(4..=6, 1),
        "group 0 snapshot"
    );
    assert_eq!(
        read(&s, GroupId(u64::MAX), 0, 100),
        ents(1..=6, 4),
        "last group untouched"
    );
    assert_eq!(
        s.snapshot_meta(GroupId(1)).ok(),
        Some(None),
        "meta per group"
    );
}

/// Synced writes, and unsynced ones followed by `sync()`, survive a crash.
pub fn reopen_keeps_synced_writes<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=5, 1));
    write(
        &s,
        GroupId(2),
        LogWrite {
            entries: ents(1..=3, 7),
            sync: false,
            ..LogWrite::default()
        },
    );
    s.sync().unwrap_or_else(|e| panic!("sync failed: {e}"));
    let s = h.reopen(s);
    assert_eq!(
        read(&s, G, 0, 100),
        ents(1..=5, 1),
        "synced append survives"
    );
    assert_eq!(
        read(&s, GroupId(2), 0, 100),
        ents(1..=3, 7),
        "write + sync() survives"
    );
    // The reopened store keeps working, and survives another restart.
    append(&s, G, ents(6..=7, 2));
    let s = h.reopen(s);
    let mut want = ents(1..=5, 1);
    want.extend(ents(6..=7, 2));
    assert_eq!(read(&s, G, 0, 100), want, "second restart");
}

/// An unsynced write may be lost by a crash, but only whole: entries, hard
/// state and purge of one write are all visible or none is.
pub fn unsynced_write_is_atomic_across_reopen<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=4, 1));
    let hs = HardState {
        term: Term(9),
        vote: Some(NodeId(1)),
        commit: LogIndex(6),
    };
    write(
        &s,
        G,
        LogWrite {
            truncate_from: Some(LogIndex(3)),
            entries: ents(3..=6, 9),
            hard_state: Some(hs),
            purge_to: Some(LogIndex(1)),
            sync: false,
            ..LogWrite::default()
        },
    );
    let s = h.reopen(s);
    let got = ids(&read(&s, G, 0, 100));
    let before = ids(&ents(1..=4, 1));
    let after = ids(&[ent(2, 1), ent(3, 9), ent(4, 9), ent(5, 9), ent(6, 9)]);
    let got_hs = s.hard_state(G).ok();
    if got == before {
        assert_eq!(
            got_hs,
            Some(HardState::default()),
            "lost whole: hard state too"
        );
    } else {
        assert_eq!(got, after, "kept whole: every entry");
        assert_eq!(got_hs, Some(hs), "kept whole: hard state too");
    }
}

/// Many threads writing synced appends to their own groups all land, in
/// order, and each caller sees its write as soon as it returns.
pub fn concurrent_writers<H: Harness>(h: &mut H) {
    const THREADS: u64 = 8;
    const WRITES: u64 = 25;
    let s = Arc::new(h.fresh());
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let s = Arc::clone(&s);
        handles.push(std::thread::spawn(move || {
            let g = GroupId(100 + t);
            for i in 1..=WRITES {
                append(&*s, g, vec![ent(i, t + 1)]);
                assert_eq!(
                    s.entry(g, LogIndex(i)).ok().flatten(),
                    Some(ent(i, t + 1)),
                    "read own write"
                );
            }
        }));
    }
    for handle in handles {
        if handle.join().is_err() {
            panic!("a writer thread failed");
        }
    }
    let Ok(s) = Arc::try_unwrap(s) else {
        panic!("store still shared after joining writers");
    };
    let s = h.reopen(s);
    for t in 0..THREADS {
        let g = GroupId(100 + t);
        assert_eq!(read(&s, g, 0, 1000), ents(1..=WRITES, t + 1), "group {g:?}");
    }
}

/// A reversed range is refused with `Invalid`; nothing is returned.
pub fn invalid_range_is_refused<H: Harness>(h: &mut H) {
    let s = h.fresh();
    append(&s, G, ents(1..=3, 1));
    let r = s.entries(G, LogIndex(3)..LogIndex(1));
    assert!(
        matches!(r, Err(StorageError::Invalid(_))),
        "reversed range: {r:?}"
    );
    assert_eq!(read(&s, G, 0, 10), ents(1..=3, 1), "store unchanged");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemLogStore;

    fn mem_harness() -> impl Harness<Store = MemLogStore> {
        FnHarness::new(MemLogStore::new, |s: MemLogStore| {
            s.crash();
            s
        })
    }

    #[test]
    fn mem_log_store_passes_the_suite() {
        run_all(&mut mem_harness());
    }

    /// The suite must catch a store that loses synced data on reopen.
    #[test]
    fn suite_detects_a_store_that_forgets() {
        let mut h = FnHarness::new(MemLogStore::new, |_s: MemLogStore| MemLogStore::new());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reopen_keeps_synced_writes(&mut h)
        }));
        assert!(caught.is_err(), "a forgetting store passed");
    }
}
