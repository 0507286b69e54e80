//! RocksDB state store (acceptance of #7): the same committed log applied to
//! a memory and a RocksDB machine gives byte-identical snapshots, also after
//! reopening (recovery) and after a snapshot install.

mod common;

use common::*;
use ha_core::state_machine::{Applied as Entry, StateMachine};
use ha_core::storage::RocksLogStore;
use ha_core::storage::rocks::CF_SM;
use ha_core::types::{GroupId, LogId, Membership, NodeId};
use ha_lock::LockMachine;
use ha_lock::api::*;
use proptest::prelude::*;

fn limits() -> Limits {
    // a small history window, so auto-compaction (and its record deletes
    // in the WriteBatch) runs often
    Limits {
        snapshot_chunk_bytes: 256,
        history_retention_revisions: 5,
        ..Limits::default()
    }
}

fn open(store: &RocksLogStore, group: u64) -> LockMachine {
    LockMachine::open_rocks(store.db(), GroupId(group), limits()).expect("open rocks")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_rocks_replay_to_identical_snapshots(cmds in proptest::collection::vec(any_command(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
        let mut mem = LockMachine::in_memory(limits()).unwrap();
        let mut rocks = open(&store, 7);
        // a second group in the same family must not interfere
        let mut other_group = open(&store, 8);
        apply(&mut other_group, 1, &Command::Put(PutRequest { key: "a".into(), value: "g8".into(), ..Default::default() }));
        let half = cmds.len() / 2;
        for (i, c) in cmds[..half].iter().enumerate() {
            prop_assert_eq!(apply(&mut mem, i as u64 + 1, c), apply(&mut rocks, i as u64 + 1, c));
        }
        let idx = half as u64 + 1;
        mem.apply(LogId::new(2, idx), Entry::Membership(&Membership::new([NodeId(1), NodeId(2)]))).unwrap();
        rocks.apply(LogId::new(2, idx), Entry::Membership(&Membership::new([NodeId(1), NodeId(2)]))).unwrap();
        prop_assert_eq!(snapshot_bytes(&mut mem), snapshot_bytes(&mut rocks));
        // crash + reopen: recovered state is the same, replay below last_applied is a no-op
        drop(rocks);
        let mut rocks = open(&store, 7);
        prop_assert_eq!(rocks.last_applied(), LogId::new(2, idx));
        prop_assert_eq!(snapshot_bytes(&mut mem), snapshot_bytes(&mut rocks));
        if let Some(c) = cmds.first() {
            let out = rocks.apply(LogId::new(1, 1), Entry::Command(&encode_command(c))).unwrap();
            prop_assert!(out.is_empty());
        }
        for (i, c) in cmds[half..].iter().enumerate() {
            let index = idx + 1 + i as u64;
            prop_assert_eq!(apply(&mut mem, index, c), apply(&mut rocks, index, c));
        }
        let want = snapshot_bytes(&mut mem);
        prop_assert_eq!(&snapshot_bytes(&mut rocks), &want);
        drop(rocks);
        let mut rocks = open(&store, 7);
        prop_assert_eq!(&snapshot_bytes(&mut rocks), &want);
        // install the memory snapshot into group 8, reopen, same bytes
        let mut snap = mem.snapshot().unwrap();
        let meta = snap.meta().clone();
        other_group.install_snapshot(&meta, snap.as_mut()).unwrap();
        drop(other_group);
        let mut g8 = open(&store, 8);
        prop_assert_eq!(&snapshot_bytes(&mut g8), &want);
        prop_assert_eq!(g8.range(&all_keys()), mem.range(&all_keys()));
    }
}

/// A raw key/value pair of the DB.
type KvPair = (Box<[u8]>, Box<[u8]>);

#[test]
fn corrupt_state_on_disk_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
    let mut m = open(&store, 3);
    apply(
        &mut m,
        1,
        &Command::Put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        }),
    );
    m.flush().unwrap();
    drop(m);
    let db = store.db();
    let cf = db.cf_handle(CF_SM).unwrap();
    // flip a byte in every value of group 3
    let mut prefix = 3u64.to_be_bytes().to_vec();
    prefix.push(2);
    let entries: Vec<KvPair> = db
        .prefix_iterator_cf(cf, &prefix)
        .map(|r| r.unwrap())
        .take_while(|(k, _)| k.starts_with(&prefix))
        .collect();
    assert!(!entries.is_empty());
    for (k, v) in entries {
        let mut v = v.to_vec();
        v[1] ^= 0x55;
        db.put_cf(cf, k, v).unwrap();
    }
    let err = LockMachine::open_rocks(store.db(), GroupId(3), limits()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn records_without_meta_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
    let mut m = open(&store, 4);
    apply(
        &mut m,
        1,
        &Command::Put(PutRequest {
            key: "k".into(),
            ..Default::default()
        }),
    );
    m.flush().unwrap();
    drop(m);
    let db = store.db();
    let cf = db.cf_handle(CF_SM).unwrap();
    let mut meta_key = 4u64.to_be_bytes().to_vec();
    meta_key.push(1);
    db.delete_cf(cf, meta_key).unwrap();
    let err = LockMachine::open_rocks(store.db(), GroupId(4), limits()).unwrap_err();
    assert!(err.to_string().contains("no meta"), "{err}");
    // other groups are unaffected
    let fresh = open(&store, 5);
    assert_eq!(fresh.current_revision(), 1);
}

fn put(key: &str, value: Vec<u8>) -> Command {
    Command::Put(PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: value.into(),
        ..Default::default()
    })
}

/// Applies are staged and written by `flush` as one batch: a crash (drop
/// without flush) keeps exactly what was flushed, and replaying the rest
/// from the log gives the state a machine that never crashed has.
#[test]
fn a_crash_keeps_what_was_flushed_and_replay_restores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
    let mut mem = LockMachine::in_memory(limits()).unwrap();
    let mut m = open(&store, 9);
    let cmds: Vec<Command> = (0..6)
        .map(|i| put(&format!("k{i}"), vec![i as u8; 10]))
        .collect();
    for (i, c) in cmds[..3].iter().enumerate() {
        assert_eq!(
            apply(&mut mem, i as u64 + 1, c),
            apply(&mut m, i as u64 + 1, c)
        );
    }
    m.flush().unwrap();
    for (i, c) in cmds[3..].iter().enumerate() {
        let index = i as u64 + 4;
        assert_eq!(apply(&mut mem, index, c), apply(&mut m, index, c));
    }
    drop(m); // crash: the last three were applied but never flushed
    let mut m = open(&store, 9);
    assert_eq!(m.last_applied(), LogId::new(1, 3), "flushed state only");
    assert_eq!(m.range(&all_keys()).unwrap().kvs.len(), 3);
    for (i, c) in cmds.iter().enumerate() {
        // the log replays from its start: below last_applied a no-op
        let out = m
            .apply(
                LogId::new(1, i as u64 + 1),
                Entry::Command(&encode_command(c)),
            )
            .unwrap();
        assert_eq!(out.is_empty(), i < 3, "entry {}", i + 1);
    }
    m.flush().unwrap();
    drop(m);
    let mut m = open(&store, 9);
    assert_eq!(m.last_applied(), LogId::new(1, 6));
    assert_eq!(snapshot_bytes(&mut m), snapshot_bytes(&mut mem));
}

/// A driver that never flushes still cannot grow the staged batch without
/// bound: past its size limit it is written at the next apply.
#[test]
fn a_large_staged_batch_is_written_without_waiting_for_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
    let mut m = LockMachine::open_rocks(store.db(), GroupId(10), Limits::default()).unwrap();
    let value = vec![7u8; 1 << 20];
    for i in 1..=20u64 {
        apply(&mut m, i, &put(&format!("big{i}"), value.clone()));
    }
    drop(m);
    let m = LockMachine::open_rocks(store.db(), GroupId(10), Limits::default()).unwrap();
    let kept = m.last_applied().index.get();
    assert!(
        (16..20).contains(&kept),
        "20 MiB staged: one early write after the 16 MiB limit, got last applied {kept}"
    );
}

/// The sidecar is stored with the apply that follows its staging (same
/// batch as `last_applied`), survives a reopen, is kept across a snapshot
/// install (or replaced by one staged before it), and an apply below
/// `last_applied` stores nothing.
#[test]
fn sidecar_is_stored_with_the_next_apply_and_survives_reopen_and_install() {
    use ha_core::Bytes;
    let dir = tempfile::tempdir().unwrap();
    let store = RocksLogStore::open(dir.path(), Default::default()).unwrap();
    let put = |k: &'static str| {
        Command::Put(PutRequest {
            key: k.into(),
            value: "v".into(),
            ..Default::default()
        })
    };
    let mut m = open(&store, 9);
    assert!(m.keeps_sidecar());
    assert_eq!(m.sidecar(), None);
    apply(&mut m, 1, &put("a"));
    m.flush().unwrap();
    m.stage_sidecar(Bytes::from_static(b"table-2")).unwrap();
    // A replayed entry does not move last_applied: nothing is stored yet.
    m.apply(LogId::new(1, 1), Entry::Blank).unwrap();
    m.flush().unwrap();
    drop(m);
    let mut m = open(&store, 9);
    assert_eq!(m.sidecar(), None, "staged, never stored");
    m.stage_sidecar(Bytes::from_static(b"table-2")).unwrap();
    m.apply(LogId::new(1, 2), Entry::Blank).unwrap();
    apply(&mut m, 3, &put("b"));
    m.flush().unwrap();
    drop(m);
    let mut m = open(&store, 9);
    assert_eq!(m.last_applied(), LogId::new(1, 3));
    assert_eq!(m.sidecar(), Some(Bytes::from_static(b"table-2")));

    // Install m's snapshot into group 10, with a staged sidecar.
    let mut g10 = open(&store, 10);
    g10.stage_sidecar(Bytes::from_static(b"from-snapshot"))
        .unwrap();
    let mut snap = m.snapshot().unwrap();
    let meta = snap.meta().clone();
    g10.install_snapshot(&meta, snap.as_mut()).unwrap();
    drop(g10);
    let g10 = open(&store, 10);
    assert_eq!(g10.last_applied(), LogId::new(1, 3));
    assert_eq!(g10.sidecar(), Some(Bytes::from_static(b"from-snapshot")));
    // Without a staged one, an install keeps the current sidecar.
    let mut snap = m.snapshot().unwrap();
    let meta = snap.meta().clone();
    m.install_snapshot(&meta, snap.as_mut()).unwrap();
    drop(m);
    assert_eq!(
        open(&store, 9).sidecar(),
        Some(Bytes::from_static(b"table-2"))
    );
}
