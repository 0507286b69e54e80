//! Model-based property test (acceptance of #7): random command sequences
//! applied to the machine and to a simple reference model give identical
//! results, revisions, events, reads at every revision, and history.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ha_lock::LockMachine;
use ha_lock::api::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_model(cmds in proptest::collection::vec(command(), 1..60), reads in proptest::collection::vec(range(), 8)) {
        let mut m = LockMachine::in_memory(Limits::default()).unwrap();
        let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink = seen.clone();
        m.set_event_sink(Box::new(move |rev, evs| {
            assert!(evs.iter().all(|e| e.kv.mod_revision == rev));
            sink.lock().unwrap().extend_from_slice(evs)
        }));
        let mut model = Model::new();
        for (i, c) in cmds.iter().enumerate() {
            let got = apply(&mut m, i as u64 + 1, c);
            let want = model.apply(c);
            prop_assert_eq!(&got, &want, "command {} {:?}", i, c);
            prop_assert_eq!(m.current_revision(), model.revision());
            prop_assert_eq!(m.compact_revision(), model.compact);
            for r in &reads {
                prop_assert_eq!(m.range(r), model.range_in(r, model.revision(), None), "read {:?}", r);
            }
        }
        prop_assert_eq!(&*seen.lock().unwrap(), &model.events);
        // every uncompacted revision reads like the model
        for rev in model.compact.max(1)..=model.revision() {
            let r = RangeRequest { revision: rev, ..all_keys() };
            prop_assert_eq!(m.range(&r), model.range_in(&r, model.revision(), None));
        }
        // history after the compact revision equals the model's events
        let start = model.compact + 1;
        let want: Vec<Event> = model.events.iter().filter(|e| e.kv.mod_revision >= start).cloned().collect();
        prop_assert_eq!(m.events_since(start, b"\0", b"\0", usize::MAX).unwrap(), want);
        // leases agree
        let leases: Vec<(i64, i64, i64)> = m.leases().iter().map(|l| (l.id, l.ttl_ms, l.remaining_ms)).collect();
        let model_leases: Vec<(i64, i64, i64)> = model.leases.iter().map(|(id, (t, r))| (*id, *t, *r)).collect();
        prop_assert_eq!(leases, model_leases);
    }

    /// A snapshot installed elsewhere gives the same bytes and answers.
    #[test]
    fn snapshot_install_is_faithful(cmds in proptest::collection::vec(command(), 1..40)) {
        let mut m = LockMachine::in_memory(Limits { snapshot_chunk_bytes: 64, ..Limits::default() }).unwrap();
        for (i, c) in cmds.iter().enumerate() {
            apply(&mut m, i as u64 + 1, c);
        }
        let bytes = snapshot_bytes(&mut m);
        let mut s = ha_core::state_machine::StateMachine::snapshot(&mut m).unwrap();
        let meta = s.meta().clone();
        let mut other = LockMachine::in_memory(Limits { snapshot_chunk_bytes: 64, ..Limits::default() }).unwrap();
        ha_core::state_machine::StateMachine::install_snapshot(&mut other, &meta, s.as_mut()).unwrap();
        prop_assert_eq!(snapshot_bytes(&mut other), bytes);
        prop_assert_eq!(other.range(&all_keys()), m.range(&all_keys()));
        let next = Command::Put(PutRequest { key: "a".into(), value: "n".into(), ..Default::default() });
        let idx = cmds.len() as u64 + 1;
        prop_assert_eq!(apply(&mut other, idx, &next), apply(&mut m, idx, &next));
    }
}

/// Snapshot chunks after the header (which carries `last_applied`).
fn state_chunks(m: &mut LockMachine) -> Vec<bytes::Bytes> {
    let mut s = ha_core::state_machine::StateMachine::snapshot(m).unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().unwrap() {
        out.push(c);
    }
    out.remove(0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Every command that fails (locks, elections, leases, txns included)
    /// leaves revision, compact revision, keys, history and leases as they
    /// were — byte for byte in the snapshot.
    #[test]
    fn errors_change_nothing(cmds in proptest::collection::vec(any_command(), 1..60)) {
        let mut m = LockMachine::in_memory(Limits { max_value_bytes: 1, ..Limits::default() }).unwrap();
        for (i, c) in cmds.iter().enumerate() {
            let before = state_chunks(&mut m);
            let (rev, compact) = (m.current_revision(), m.compact_revision());
            let a = apply(&mut m, i as u64 + 1, c);
            if a.result.is_err() {
                prop_assert_eq!(a.revision, rev);
                prop_assert_eq!((m.current_revision(), m.compact_revision()), (rev, compact));
                prop_assert_eq!(state_chunks(&mut m), before, "{:?} -> {:?}", c, a.result);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Hostile command bytes (garbage, or a valid frame with a flipped bit)
    /// are a `Malformed` error that changes nothing — never a panic.
    #[test]
    fn hostile_command_bytes_are_refused(
        cmd in any_command(),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        bit in 0usize..4096,
    ) {
        let mut m = LockMachine::in_memory(Limits::default()).unwrap();
        apply(&mut m, 1, &Command::Put(PutRequest { key: "a".into(), value: "1".into(), ..Default::default() }));
        let before = state_chunks(&mut m);
        let mut flipped = encode_command(&cmd).to_vec();
        let bit = bit % (flipped.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        for (i, bytes) in [garbage, flipped].iter().enumerate() {
            let out = ha_core::state_machine::StateMachine::apply(
                &mut m,
                ha_core::types::LogId::new(1, 2 + i as u64),
                ha_core::state_machine::Applied::Command(bytes),
            ).unwrap();
            let a = decode_applied(&out).unwrap();
            prop_assert!(matches!(a.result, Err(LockError::Malformed(_))), "{:?}", a.result);
            prop_assert_eq!(state_chunks(&mut m), before.clone());
        }
    }

    /// A snapshot with any flipped bit is refused and the old state kept.
    #[test]
    fn corrupt_snapshots_are_refused(cmds in proptest::collection::vec(any_command(), 1..30), pick in any::<usize>(), bit in any::<usize>()) {
        let mut m = LockMachine::in_memory(Limits { snapshot_chunk_bytes: 128, ..Limits::default() }).unwrap();
        for (i, c) in cmds.iter().enumerate() {
            apply(&mut m, i as u64 + 1, c);
        }
        let mut s = ha_core::state_machine::StateMachine::snapshot(&mut m).unwrap();
        let meta = s.meta().clone();
        let mut chunks = Vec::new();
        while let Some(c) = s.next_chunk().unwrap() {
            chunks.push(c.to_vec());
        }
        let ci = pick % chunks.len();
        let bit = bit % (chunks[ci].len() * 8);
        chunks[ci][bit / 8] ^= 1 << (bit % 8);
        let mut target = LockMachine::in_memory(Limits::default()).unwrap();
        apply(&mut target, 1, &Command::Put(PutRequest { key: "keep".into(), ..Default::default() }));
        let keep = snapshot_bytes(&mut target);
        let mut src = ha_core::state_machine::VecChunks::new(chunks.into_iter().map(bytes::Bytes::from));
        prop_assert!(ha_core::state_machine::StateMachine::install_snapshot(&mut target, &meta, &mut src).is_err());
        prop_assert_eq!(snapshot_bytes(&mut target), keep);
    }
}
